"""JSL generation speed: batched vs one sentence at a time, KV cache on and off (issue 9, 4; issue 3 targets).

    python benchmarks/bench_jsl_generation.py --model outputs/jsl_seq2seq   # a trained folder
    python benchmarks/bench_jsl_generation.py                               # untrained, recommended size
    python benchmarks/bench_jsl_generation.py --quick                       # smoke run, ~15 s

Without `--model`, the model is built at the recommended size (d_model 128, 4 heads, 2 encoder + 2 decoder
layers, d_ff 512) with random weights and a tokenizer built from the corpus's training split. An untrained
model does not stop where a trained one would, so every generation is then forced to the mean reference gloss
count of the sentences + 1 (eos) new tokens; with a trained model generation stops at eos as in real use.
Greedy decoding throughout. Each figure times the user's whole path (tokenise, generate, decode) over the
corpus's test sentences, after warm-up, as the median of `--repeats`; p50/p95 latency pool every one-sentence
call of every repeat. The 20-gloss rows force exactly 20 new tokens (min_new_tokens = max_new_tokens = 20)
to show what the KV cache saves on long outputs (issue 3 target: cached >= 3x uncached).
"""

from __future__ import annotations

import argparse
import sys
import time

import common

from hftune.errors import exit_on_user_error


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


def translate(model, tokenizer, sentences: list[str], **generate_kwargs) -> list[str]:
    inputs = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
    output = model.generate(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], num_beams=1, do_sample=False,
        **generate_kwargs,
    )  # fmt: skip
    return tokenizer.batch_decode(output, skip_special_tokens=True)


def batched_rate(model, tokenizer, sentences, batch_size, args, **kwargs) -> tuple[float, list[float]]:
    def run() -> None:
        for start in range(0, len(sentences), batch_size):
            translate(model, tokenizer, sentences[start : start + batch_size], **kwargs)

    times = common.time_call(run, warmup=args.warmup, repeats=args.repeats)
    return len(sentences) / common.median(times), times


def single_rate(model, tokenizer, sentences, args, **kwargs) -> tuple[float, list[float]]:
    """(sentences/s median over repeats, every one-sentence latency of every repeat)."""
    for sentence in sentences[: max(args.warmup, 1)]:
        translate(model, tokenizer, [sentence], **kwargs)
    rates, latencies = [], []
    for _ in range(args.repeats):
        total = 0.0
        for sentence in sentences:
            started = time.perf_counter()
            translate(model, tokenizer, [sentence], **kwargs)
            elapsed = time.perf_counter() - started
            latencies.append(elapsed)
            total += elapsed
        rates.append(len(sentences) / total)
    return common.median(rates), latencies


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, default_repeats=5)
    parser.add_argument("--model", default=None, help="a trained JSL folder or Hub id (default: untrained)")
    parser.add_argument("--batch_size", type=int, default=64)
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

    rows = []
    for label, kwargs in (("natural length", natural), ("20 glosses", forced20)):
        for cache in (True, False):
            rate, _ = batched_rate(
                model, tokenizer, sentences, args.batch_size, args, use_cache=cache, **kwargs
            )
            rows.append({"outputs": label, "mode": f"batched ({args.batch_size})", "kv_cache": cache,
                         "sentences_per_second": rate})  # fmt: skip
            rate, latencies = single_rate(model, tokenizer, singles, args, use_cache=cache, **kwargs)
            rows.append({"outputs": label, "mode": "one at a time", "kv_cache": cache, "sentences_per_second": rate,
                         "p50_ms": 1000 * common.percentile(latencies, 50),
                         "p95_ms": 1000 * common.percentile(latencies, 95)})  # fmt: skip
            print(rows[-2], rows[-1], sep="\n", flush=True)

    def rate_of(outputs: str, mode: str, cache: bool) -> float:
        return next(
            r["sentences_per_second"]
            for r in rows
            if r["outputs"] == outputs and r["mode"].startswith(mode) and r["kv_cache"] == cache
        )

    summary = {
        "batched_vs_single": rate_of("natural length", "batched", True)
        / rate_of("natural length", "one", True),
        "kv_speedup_20_batched": rate_of("20 glosses", "batched", True)
        / rate_of("20 glosses", "batched", False),
        "kv_speedup_20_single": rate_of("20 glosses", "one", True) / rate_of("20 glosses", "one", False),
        "kv_speedup_natural_batched": rate_of("natural length", "batched", True)
        / rate_of("natural length", "batched", False),
    }
    single_cached = next(r for r in rows if r["outputs"] == "natural length" and r["mode"] == "one at a time"
                         and r["kv_cache"])  # fmt: skip
    table = common.markdown_table(
        ["outputs", "mode", "KV cache", "sentences/s", "p50 ms", "p95 ms"],
        [[r["outputs"], r["mode"], "on" if r["kv_cache"] else "off", r["sentences_per_second"],
          r.get("p50_ms", "-"), r.get("p95_ms", "-")] for r in rows],
    )  # fmt: skip
    config = model.config
    markdown = (
        f"Model: {'`' + args.model + '`' if args.model else 'untrained, recommended size'} (d_model {config.d_model}, "
        f"{config.num_heads} heads, {config.encoder_layers}+{config.decoder_layers} layers, d_ff {config.d_ff}); "
        f"{len(sentences)} {args.split} sentences; greedy; {length_note}; {threads} threads.\n\n{table}\n\n"
        f"- batched vs one at a time (KV cache on): **{summary['batched_vs_single']:.1f}x**\n"
        f"- KV cache speed-up, 20-gloss outputs: **{summary['kv_speedup_20_batched']:.2f}x** batched, "
        f"**{summary['kv_speedup_20_single']:.2f}x** one at a time (target >= 3x)\n"
        f"- one sentence, KV cache on: p50 **{single_cached['p50_ms']:.1f} ms**, p95 {single_cached['p95_ms']:.1f} ms "
        f"(target p50 < 20 ms); batched {rate_of('natural length', 'batched', True):.0f} sentences/s (target >= 200)"
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
