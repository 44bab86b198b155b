"""JSL generation speed: batched vs one sentence at a time, KV cache on and off (issue 9, 4; issue 3 targets).

    python benchmarks/bench_jsl_generation.py --model outputs/jsl_seq2seq   # a trained folder
    python benchmarks/bench_jsl_generation.py                               # untrained, recommended size
    python benchmarks/bench_jsl_generation.py --quick                       # smoke run, ~15 s

Without `--model`, the model is built at the recommended size (d_model 128, 4 heads, 2 encoder + 2 decoder
layers, d_ff 512) with random weights and a tokenizer built from the corpus's training split. An untrained
model does not stop where a trained one would, so every generation is then forced to the mean reference gloss
count of the sentences + 1 (eos) new tokens; with a trained model generation stops at eos as in real use.
Greedy decoding throughout. Each figure times the user's whole path, `hftune.jsl.translate.translate` (what
`hftune translate` runs: batches of similar length, tokenise, generate under inference mode, decode) over the
corpus's test sentences, after warm-up, as the median of `--repeats` rounds (a round runs every batched
configuration once, in turn); p50/p95 latency pool every one-sentence
call of every repeat. The 20-gloss rows force exactly 20 new tokens (min_new_tokens = max_new_tokens = 20)
to show what the KV cache saves on long outputs (issue 3 target: cached >= 3x uncached). Batched rows run at
each of `--batch_sizes`: `hftune translate`'s default (256) and 64. Every decoding step has a fixed
Python/dispatch cost that the cache does not remove, so the cache's share of the time, and its speed-up,
grow with the batch.
"""

from __future__ import annotations

import argparse
import sys
import time

import common

from hftune.errors import exit_on_user_error
from hftune.jsl.translate import DEFAULT_BATCH_SIZE, translate


def build_model(model: str | None):
    from hftune.jsl import JslSeq2SeqConfig, JslSeq2SeqForConditionalGeneration, JslTokenizer
    from hftune.jsl.artifacts import load_jsl_model
    from hftune.jsl.corpus import load_jsl_corpus

    if model:
        loaded, tokenizer = load_jsl_model(model, device="cpu")
        return loaded, tokenizer, True
    train = load_jsl_corpus("train")
    tokenizer = JslTokenizer.build_from_pairs(zip(train["ja"], train["gloss"], strict=True))
    config = JslSeq2SeqConfig(
        vocab_size=len(tokenizer), d_model=128, num_heads=4, encoder_layers=2, decoder_layers=2, d_ff=512
    )
    return JslSeq2SeqForConditionalGeneration(config).eval(), tokenizer, False


def batched_rates(model, tokenizer, sentences, configs: list[dict], args) -> list[float]:
    """Sentences/s of each config (translate() keyword arguments), median over `args.repeats` rounds.

    Every round runs each config once, in turn: a slow spell of the machine then hits all configs alike
    instead of the ones that happened to run during it, so the ratios between them stay fair."""
    seconds: list[list[float]] = [[] for _ in configs]
    for round_ in range(args.warmup + args.repeats):
        for index, kwargs in enumerate(configs):
            started = time.perf_counter()
            translate(sentences, model, tokenizer, **kwargs)
            if round_ >= args.warmup:
                seconds[index].append(time.perf_counter() - started)
    return [len(sentences) / common.median(times) for times in seconds]


def single_rate(model, tokenizer, sentences, args, **kwargs) -> tuple[float, list[float]]:
    """(sentences/s median over repeats, every one-sentence latency of every repeat)."""
    for sentence in sentences[: max(args.warmup, 1)]:
        translate([sentence], model, tokenizer, **kwargs)
    rates, latencies = [], []
    for _ in range(args.repeats):
        total = 0.0
        for sentence in sentences:
            started = time.perf_counter()
            translate([sentence], model, tokenizer, **kwargs)
            elapsed = time.perf_counter() - started
            latencies.append(elapsed)
            total += elapsed
        rates.append(len(sentences) / total)
    return common.median(rates), latencies


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, default_repeats=5)
    parser.add_argument("--model", default=None, help="a trained JSL folder or Hub id (default: untrained)")
    parser.add_argument(
        "--batch_sizes",
        type=int,
        nargs="+",
        default=[DEFAULT_BATCH_SIZE, 64],
        help="batched rows at each size; the first is the headline (default: hftune translate's, then 64)",
    )
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--sentences", type=int, default=None, help="use the first N sentences of the split")
    parser.add_argument("--single_sentences", type=int, default=100, help="sentences for one-at-a-time rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.sentences, args.single_sentences, args.repeats, args.warmup = 16, 4, 1, 1
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    from hftune.jsl.corpus import load_jsl_corpus
    from hftune.jsl.tokenization_jsl import target_tokens

    args = parse_args(argv)
    threads = common.setup(args.threads, args.seed)
    model, tokenizer, trained = build_model(args.model)
    split = load_jsl_corpus(args.split)
    sentences = list(split["ja"])[: args.sentences]
    references = list(split["gloss"])[: len(sentences)]
    singles = sentences[: args.single_sentences]
    if trained:
        natural = {"max_new_tokens": model.config.max_target_length}
        length_note = "trained model: generation stops at eos"
    else:
        n = round(sum(len(target_tokens(g)) for g in references) / len(references)) + 1
        natural = {"min_new_tokens": n, "max_new_tokens": n}
        length_note = f"untrained model: forced to {n} new tokens (mean reference gloss count + eos)"
    forced20 = {"min_new_tokens": 20, "max_new_tokens": 20}
    print(f"{len(sentences)} {args.split} sentences, {threads} threads; {length_note}", flush=True)

    lengths = {"natural length": natural, "20 glosses": forced20}
    batched = [
        (label, cache, size) for label in lengths for cache in (True, False) for size in args.batch_sizes
    ]
    rates = batched_rates(
        model,
        tokenizer,
        sentences,
        [{**lengths[label], "use_cache": cache, "batch_size": size} for label, cache, size in batched],
        args,
    )
    rows = [
        {"outputs": label, "mode": f"batched ({size})", "batch_size": size, "kv_cache": cache,
         "sentences_per_second": rate}
        for (label, cache, size), rate in zip(batched, rates, strict=True)
    ]  # fmt: skip
    for label, kwargs in lengths.items():
        for cache in (True, False):
            rate, latencies = single_rate(model, tokenizer, singles, args, use_cache=cache, **kwargs)
            rows.append({"outputs": label, "mode": "one at a time", "batch_size": 1, "kv_cache": cache,
                         "sentences_per_second": rate, "p50_ms": 1000 * common.percentile(latencies, 50),
                         "p95_ms": 1000 * common.percentile(latencies, 95)})  # fmt: skip
            print(rows[-1], flush=True)
    rows.sort(key=lambda r: (r["outputs"] != "natural length", not r["kv_cache"], r["batch_size"] == 1))

    def rate_of(outputs: str, batch_size: int, cache: bool) -> float:
        return next(
            r["sentences_per_second"]
            for r in rows
            if r["outputs"] == outputs and r["batch_size"] == batch_size and r["kv_cache"] == cache
        )

    default = args.batch_sizes[0]
    summary = {
        "batched_vs_single": rate_of("natural length", default, True) / rate_of("natural length", 1, True),
        "kv_speedup_20": {
            size: rate_of("20 glosses", size, True) / rate_of("20 glosses", size, False)
            for size in [*args.batch_sizes, 1]
        },
        "kv_speedup_natural": {
            size: rate_of("natural length", size, True) / rate_of("natural length", size, False)
            for size in [*args.batch_sizes, 1]
        },
    }
    single_cached = next(r for r in rows if r["outputs"] == "natural length" and r["batch_size"] == 1
                         and r["kv_cache"])  # fmt: skip
    table = common.markdown_table(
        ["outputs", "mode", "KV cache", "sentences/s", "p50 ms", "p95 ms"],
        [[r["outputs"], r["mode"], "on" if r["kv_cache"] else "off", r["sentences_per_second"],
          r.get("p50_ms", "-"), r.get("p95_ms", "-")] for r in rows],
    )  # fmt: skip
    speedups = ", ".join(
        f"**{summary['kv_speedup_20'][size]:.2f}x** at batch {size}" for size in args.batch_sizes
    )
    config = model.config
    markdown = (
        f"Model: {'`' + args.model + '`' if args.model else 'untrained, recommended size'} (d_model {config.d_model}, "
        f"{config.num_heads} heads, {config.encoder_layers}+{config.decoder_layers} layers, d_ff {config.d_ff}); "
        f"{len(sentences)} {args.split} sentences; greedy; {length_note}; {threads} threads; batch "
        f"{default} is `hftune translate`'s default.\n\n{table}\n\n"
        f"- batched ({default}) vs one at a time (KV cache on): **{summary['batched_vs_single']:.1f}x**\n"
        f"- KV cache speed-up, 20-gloss outputs: {speedups}, "
        f"{summary['kv_speedup_20'][1]:.2f}x one at a time (target >= 3x)\n"
        f"- one sentence, KV cache on: p50 **{single_cached['p50_ms']:.1f} ms**, p95 {single_cached['p95_ms']:.1f} ms "
        f"(target p50 < 20 ms); batched {rate_of('natural length', default, True):.0f} sentences/s (target >= 200)"
    )
    common.write_report(
        "jsl_generation",
        args.output_dir,
        markdown,
        {
            "model": args.model,
            "trained": trained,
            "length_note": length_note,
            "rows": rows,
            "summary": summary,
        },
        args.quick,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
