"""Japanese -> JSL gloss with a saved model: the `translate` function and the `hftune translate` verb.

    hftune translate --model outputs/jsl_seq2seq "ありがとう" "わたしはたべます"
    hftune translate --model org/jsl-seq2seq --input_file sentences.txt > glosses.txt
    cat sentences.txt | hftune translate --model outputs/jsl_seq2seq --num_beams 4

Every input line gives exactly one output line: empty input gives an empty line, characters the model never
saw become `<unk>` on the input side, and input longer than the model's `max_source_length` is truncated with
a warning on stderr. An input that is mostly characters the model never saw (more than `--max_unknown_share`
of them) is not translated: its line is empty and stderr says so, rather than the model inventing signs.
`--json` prints one JSON object per input instead, with the unknown characters and an `untranslated` flag.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hftune.config.checks import check_range
from hftune.errors import HftuneError
from hftune.hardware import resolve_device
from hftune.jsl.artifacts import load_jsl_model
from hftune.runtime import warn

# Sentences per generate() call. Each decoding step costs a fixed Python/dispatch overhead, large next to the
# arithmetic of a 1M-parameter model, so bigger batches spread it further: on 612 corpus sentences, 2 CPU
# threads, greedy, 1,343 sentences/s at 64, 1,797 at 128, 2,088 at 256 (BENCHMARKS.md, section 3).
DEFAULT_BATCH_SIZE = 256
# Above this share of never-seen characters an input is left untranslated: on 500 chatterbot-corpus sentences
# such inputs only ever produced glosses unrelated to the text.
DEFAULT_MAX_UNKNOWN_SHARE = 0.5


def unknown_characters(text: str, tokenizer) -> tuple[list[str], float]:
    """(characters of `text` the tokenizer maps to `<unk>`, their share of its characters; 0.0 when empty)."""
    tokens = tokenizer.tokenize(text)
    unknown = [t for t in tokens if tokenizer.convert_tokens_to_ids(t) == tokenizer.unk_token_id]
    return unknown, (len(unknown) / len(tokens) if tokens else 0.0)


def report(texts: Sequence[str], glosses: Sequence[str], tokenizer, max_unknown_share: float) -> list[dict]:
    """One record per input for `--json`: input, gloss, unknown characters (distinct, in order), their share,
    and whether the input was left untranslated for being mostly unknown."""
    records = []
    for text, gloss in zip(texts, glosses, strict=True):
        unknown, share = unknown_characters(text, tokenizer)
        records.append(
            {
                "input": text,
                "gloss": gloss,
                "unknown_characters": list(dict.fromkeys(unknown)),
                "unknown_share": round(share, 4),
                "untranslated": share > max_unknown_share,
            }
        )
    return records


def translate(
    texts: Sequence[str],
    model: torch.nn.Module,
    tokenizer,
    num_beams: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int | None = None,
    max_unknown_share: float = DEFAULT_MAX_UNKNOWN_SHARE,
    **generate_kwargs: Any,
) -> list[str]:
    """Gloss strings for `texts`, in order: tokens joined by single spaces, "" for empty or blank input.

    Batches are formed from inputs of similar length (less padding); `max_new_tokens=None` uses the model's
    generation config (its `max_target_length`). Over-long inputs are cut to `tokenizer.model_max_length`
    characters (end-of-sequence included) and reported once on stderr. `generate_kwargs` go to `generate()`
    as they are (e.g. `use_cache=False`, `min_new_tokens=20`: what the generation benchmark varies).
    Inputs with more than `max_unknown_share` unknown characters get "" and one warning (1.0 translates all).
    """
    if num_beams < 1:
        raise HftuneError(f"--num_beams {num_beams} must be at least 1 (1 = greedy decoding)")
    if batch_size < 1:
        raise HftuneError(f"--batch_size {batch_size} must be at least 1")
    limit = int(tokenizer.model_max_length)
    lengths = [len(tokenizer.tokenize(text)) for text in texts]
    too_long = [index for index, length in enumerate(lengths) if length + 1 > limit]
    if too_long:
        first = too_long[0]
        warn(
            f"{len(too_long)} input(s) longer than the model's {limit - 1} characters were truncated "
            f"(first: input {first + 1}, {lengths[first]} characters); split long sentences to translate them whole"
        )
    shares = [unknown_characters(text, tokenizer)[1] for text in texts]
    unknown = [index for index, share in enumerate(shares) if share > max_unknown_share]
    if unknown:
        first = unknown[0]
        warn(
            f"{len(unknown)} input(s) are mostly characters the model never saw and were left untranslated "
            f"(first: input {first + 1}, {shares[first]:.0%} unknown); the model knows only its corpus's characters"
        )
    outputs = [""] * len(texts)
    todo = sorted(
        (index for index, length in enumerate(lengths) if length > 0 and shares[index] <= max_unknown_share),
        key=lambda i: lengths[i],
    )
    generate_kwargs = {"num_beams": num_beams, "do_sample": False, **generate_kwargs}
    if max_new_tokens is not None:
        generate_kwargs["max_new_tokens"] = max_new_tokens
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in chunk],
                truncation=True,
                max_length=limit,
                padding=True,
                return_tensors="pt",
            ).to(device)
            generated = model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **generate_kwargs
            )
            for index, gloss in zip(
                chunk, tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True
            ):
                outputs[index] = gloss
    return outputs


def measure_generation_speed(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
    repeats: int = 30,
) -> dict[str, float]:
    """Greedy-decoding speed on `texts` (in its current thread setting): batched sentences/s, one-sentence p50
    latency, and KV-cached vs uncached time for 20 forced output tokens on one batch."""
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise HftuneError("measure_generation_speed needs at least one non-empty sentence")
    translate(texts[:batch_size], model, tokenizer, batch_size=batch_size)  # warm-up
    started = time.perf_counter()
    translate(texts, model, tokenizer, batch_size=batch_size)
    batched_seconds = time.perf_counter() - started

    latencies = []
    for index in range(repeats):
        started = time.perf_counter()
        translate([texts[index % len(texts)]], model, tokenizer)
        latencies.append(time.perf_counter() - started)

    batch = tokenizer(
        list(texts[:batch_size]), truncation=True, max_length=int(tokenizer.model_max_length),
        padding=True, return_tensors="pt",
    ).to(next(model.parameters()).device)  # fmt: skip
    # 20 steps for every row: the output-length bound would end short inputs earlier
    forced = {"min_new_tokens": 20, "max_new_tokens": 20, "num_beams": 1, "do_sample": False}
    forced["bound_output_length"] = False
    seconds = {}
    with torch.inference_mode():
        for use_cache in (True, False):
            started = time.perf_counter()
            model.generate(**batch, use_cache=use_cache, **forced)
            seconds[use_cache] = time.perf_counter() - started
    return {
        "batched_greedy_sentences_per_second": round(len(texts) / batched_seconds, 1),
        "batch_size": batch_size,
        "single_sentence_p50_latency_ms": round(1000 * statistics.median(latencies), 2),
        "cached_20_tokens_seconds": round(seconds[True], 4),
        "uncached_20_tokens_seconds": round(seconds[False], 4),
        "kv_cache_speedup_20_tokens": round(seconds[False] / seconds[True], 2),
        "threads": torch.get_num_threads(),
    }


def _read_lines(data: bytes, source: str) -> list[str]:
    """One entry per line (a final newline does not add an empty line); CRLF files read like LF files."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise HftuneError(f"{source} is not UTF-8 text ({err}); save it as UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hftune translate",
        description="Translate Japanese sentences into JSL gloss sequences with a saved JSL model. "
        "Reads the sentences given as arguments, else --input_file, else stdin (one sentence per line); "
        "prints one gloss line per input line.",
    )
    parser.add_argument("texts", nargs="*", help="Japanese sentences to translate.")
    parser.add_argument("--model", required=True, help="A saved JSL model folder or a Hub repo id.")
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cuda", "mps", "cpu"],
        help="auto: cuda, then mps, then cpu.",
    )
    parser.add_argument("--num_beams", type=int, default=1, help="1 = greedy decoding; >1 = beam search.")
    parser.add_argument(
        "--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="Sentences decoded together."
    )
    parser.add_argument(
        "--max_new_tokens", type=int, default=None, help="Longest gloss output. Default: the model's own."
    )
    parser.add_argument(
        "--max_unknown_share",
        type=float,
        default=DEFAULT_MAX_UNKNOWN_SHARE,
        help="Leave an input untranslated (empty line, warning) when more than this share of its characters "
        "are unknown to the model; 1 translates everything.",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="Print one JSON object per input: input, gloss, unknown_characters, unknown_share, untranslated.",
    )
    parser.add_argument("--input_file", default=None, help="UTF-8 text file, one Japanese sentence per line.")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks of errors.")
    return parser


def translate_command(argv: list[str]) -> int:
    """`hftune translate`: see the module docstring."""
    from transformers.utils import logging as transformers_logging

    args = _parser().parse_args(argv)
    if args.texts and args.input_file:
        raise HftuneError("pass sentences as arguments or --input_file, not both")
    for name in ("num_beams", "batch_size", "max_new_tokens", "max_unknown_share"):
        check_range(name, getattr(args, name))
    if args.texts:
        texts = list(args.texts)
    elif args.input_file:
        path = Path(args.input_file)
        if not path.is_file():
            raise HftuneError(
                f"--input_file {path} does not exist; pass a UTF-8 text file, one sentence per line"
            )
        texts = _read_lines(path.read_bytes(), f"--input_file {path}")
    else:
        texts = _read_lines(sys.stdin.buffer.read(), "stdin")
    transformers_logging.disable_progress_bar()  # stderr carries warnings and errors only
    model, tokenizer = load_jsl_model(args.model, device=resolve_device(args.device))
    glosses = translate(
        texts, model, tokenizer, num_beams=args.num_beams, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, max_unknown_share=args.max_unknown_share,
    )  # fmt: skip
    if args.json:
        records = report(texts, glosses, tokenizer, args.max_unknown_share)
        lines = [json.dumps(record, ensure_ascii=False) for record in records]
    else:
        lines = glosses
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return 0
