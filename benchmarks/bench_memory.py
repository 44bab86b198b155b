"""Training memory per method, and the memory estimator against measurement (issue 9, 5; issue 7 target).

    python benchmarks/bench_memory.py           # full run, ~5-8 min on 2 cores
    python benchmarks/bench_memory.py --quick   # smoke run, ~30 s, figures meaningless

Part A, peak memory per method at equal batch (`--batch_size` x each of `--seq_lens`, fp32, AdamW) on MiniLM, each
method in its own process so that peak RSS (ru_maxrss) belongs to that method alone: peak RSS, its growth
over the process after imports, tensor accounting (weights + gradients + AdamW state after real steps + the
bytes autograd saved for backward in one step), and the peak of live tensors over a whole step (the CPU
counterpart of CUDA's max_memory_allocated). The model is loaded as the recipes load it (`load_classifier`, the
recipes' attention dropout 0) and methods are applied with hftune.methods as the recipes apply them: full; freeze = embeddings + lower 3 of 6 layers; LoRA = the recipe defaults (r 8, peft's query/value
targets, head trained); BitFit = every bias + head. Issue 8 target: LoRA and BitFit <= 0.7x full. Default
lengths: 128 (the user's fixed padding) and the longest emotion training text in MiniLM tokens, which is what
a leaderboard run on emotion peaks at: length grouping puts the longest texts in the first batch of an epoch.

Part B, `hftune.memory.estimate_training_memory` (weights + gradients + optimizer + activations) against the
same tensor accounting at three batch sizes, per method (issue 7 target: within 15%).
"""

from __future__ import annotations

import argparse
import json
import sys

import common
import torch

from hftune.config import FreezeArguments, LoraArguments
from hftune.errors import exit_on_user_error
from hftune.memory import estimate_training_memory, measure_activation_profile, saved_activation_bytes
from hftune.methods import apply_bitfit, apply_freeze, apply_full, apply_lora
from hftune.models import embedded_encoder_path

METHODS = ("full", "freeze", "lora", "bitfit")
MIB = 2**20
NUM_LABELS = 6  # emotion


def prepared_model(model_path: str, method: str, seed: int):
    """MiniLM as the recipes train it (`common.recipe_classifier`), prepared for `method` as they do."""
    torch.manual_seed(seed)
    model, _ = common.recipe_classifier(model_path, {i: f"LABEL_{i}" for i in range(NUM_LABELS)})
    if method == "freeze":
        return apply_freeze(model, FreezeArguments(freeze_embeddings=True, freeze_layers=3))
    if method == "lora":
        return apply_lora(model, LoraArguments())
    return apply_bitfit(model) if method == "bitfit" else apply_full(model)


def random_batch(vocab_size: int, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (batch, seq), generator=generator)
    labels = torch.randint(0, NUM_LABELS, (batch,), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def tensor_accounting(
    model, batch: int, seq: int, precision: str, steps: int, seed: int, measure_peak: bool = False
) -> dict[str, float]:
    """Bytes of weights, gradients and AdamW state after `steps` real steps, plus saved activations (and,
    with `measure_peak`, the peak of live tensors over one more step)."""
    bf16 = precision == "bf16"
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-5)
    model.train()
    inputs = random_batch(model.config.vocab_size, batch, seq, seed)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
    parts = {
        "weights": sum(p.numel() * p.element_size() for p in params),
        "gradients": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
        "optimizer": sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()),
    }
    optimizer.zero_grad(set_to_none=True)
    parts["activations"] = saved_activation_bytes(model, batch, seq, precision)
    parts["total"] = sum(parts.values())
    if measure_peak:
        parts["peak_allocated"] = step_peak_allocated(model, optimizer, inputs, bf16)
    return parts


def step_peak_allocated(model, optimizer, inputs, bf16: bool) -> int:
    """Weights + AdamW state + the peak of live tensors over one whole training step (forward, backward,
    optimizer step): what CUDA's max_memory_allocated would report for the step."""
    optimizer.zero_grad(set_to_none=True)
    resident = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
    )

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()

    return resident + common.peak_live_tensor_bytes(step)


def worker(args) -> int:
    """One method in this process: print {peak RSS, RSS growth, tensor accounting} as one JSON line."""
    common.setup(args.threads, args.seed)
    before = common.peak_rss_mb()
    model = prepared_model(args.model or embedded_encoder_path(), args.worker, args.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    (seq_len,) = args.seq_lens
    parts = tensor_accounting(
        model, args.batch_size, seq_len, args.precision, args.steps, args.seed, measure_peak=True
    )
    peak = common.peak_rss_mb()
    print(json.dumps({"method": args.worker, "seq_len": seq_len, "rss_before_mb": before, "peak_rss_mb": peak,
                      "rss_growth_mb": peak - before, "trainable_params": trainable,
                      "tensors": parts}))  # fmt: skip
    return 0


def longest_emotion_text(model_path: str) -> int:
    """Tokens of the longest emotion training text: the padded length of a length-grouped epoch's peak batch."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    texts = list(common.load_emotion(common.EMOTION_DIR, None, None, 0).splits["train"]["text"])
    return max(len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"])


def run_worker(method: str, seq_len: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--batch_size", str(args.batch_size),
           "--seq_lens", str(seq_len), "--steps", str(args.steps), "--precision", args.precision,
           "--seed", str(args.seed)]  # fmt: skip
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return common.run_json_worker(cmd, f"memory worker for {method}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, default_repeats=1)
    parser.add_argument(
        "--model", default=None, help="encoder folder or Hub id (default: the embedded MiniLM)"
    )
    parser.add_argument("--batch_size", type=int, default=32, help="the equal batch of part A")
    parser.add_argument(
        "--seq_lens",
        type=int,
        nargs="+",
        default=None,
        help="sequence lengths of part A (default: 128 and the longest emotion training text); "
        "the estimator uses the first",
    )
    parser.add_argument("--estimator_batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--steps", type=int, default=3, help="training steps before accounting (part A)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.seq_lens, args.estimator_batches, args.steps = 2, [32], [1, 2, 4], 1
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    threads = common.setup(args.threads, args.seed)
    model_path = args.model or embedded_encoder_path()
    seq_lens = args.seq_lens or [128, longest_emotion_text(model_path)]
    seq_len = seq_lens[0]

    per_method = []
    for seq in seq_lens:
        for method in args.methods:
            per_method.append(run_worker(method, seq, args))
            print(f"{method} seq {seq}: peak RSS {per_method[-1]['peak_rss_mb']:.0f} MB", flush=True)

    estimates = []
    for method in args.methods:
        model = prepared_model(model_path, method, args.seed)
        profile = measure_activation_profile(model, args.precision)
        for batch in args.estimator_batches:
            estimate = estimate_training_memory(
                model,
                batch_size=batch,
                seq_len=seq_len,
                precision=args.precision,
                activation_profile=profile,
            )
            measured = tensor_accounting(model, batch, seq_len, args.precision, 1, args.seed)
            error = (estimate.tensors_bytes - measured["total"]) / measured["total"]
            estimates.append({"method": method, "batch_size": batch, "estimate_bytes": estimate.tensors_bytes,
                              "measured_bytes": measured["total"], "relative_error": error,
                              "estimate_parts": {"weights": estimate.weights_bytes,
                                                 "gradients": estimate.gradients_bytes,
                                                 "optimizer": estimate.optimizer_bytes,
                                                 "activations": estimate.activations_bytes},
                              "measured_parts": measured})  # fmt: skip
            print(f"estimate {method} batch {batch}: {error:+.1%}", flush=True)
        del model

    rows_a = []
    for r in per_method:
        full = next((f for f in per_method if f["method"] == "full" and f["seq_len"] == r["seq_len"]), None)
        t = r["tensors"]
        ratio = r["tensors"]["total"] / full["tensors"]["total"] if full else float("nan")
        rss_ratio = r["rss_growth_mb"] / full["rss_growth_mb"] if full else float("nan")
        peak_ratio = t["peak_allocated"] / full["tensors"]["peak_allocated"] if full else float("nan")
        rows_a.append([r["method"], r["seq_len"], f"{r['trainable_params']:,}", t["weights"] / MIB, t["gradients"] / MIB,
                       t["optimizer"] / MIB, t["activations"] / MIB, t["total"] / MIB, f"{ratio:.2f}x",
                       t["peak_allocated"] / MIB, f"{peak_ratio:.2f}x",
                       r["peak_rss_mb"], r["rss_growth_mb"], f"{rss_ratio:.2f}x"])  # fmt: skip
    rows_b = [[e["method"], e["batch_size"], e["estimate_bytes"] / MIB, e["measured_bytes"] / MIB,
               f"{e['relative_error']:+.1%}", "yes" if abs(e["relative_error"]) <= 0.15 else "NO"]
              for e in estimates]  # fmt: skip
    markdown = (
        f"MiniLM, {args.precision}, AdamW, batch {args.batch_size}, {threads} threads; "
        + (
            f"seq {seq_lens[-1]} = the longest emotion training text, the peak batch of a length-grouped "
            "emotion epoch; "
            if args.seq_lens is None
            else ""
        )
        + "MB = MiB. Tensor accounting = weights + gradients + AdamW state + saved activations; peak allocated = "
        "the most bytes of live tensors at any moment of a training step (forward, backward, optimizer step; "
        "what CUDA's max_memory_allocated reports), from the profiler's allocation events; RSS growth = peak "
        "RSS minus RSS after imports, one process per method (adds what the C allocator keeps after frees).\n\n"
        + common.markdown_table(
            [
                "method",
                "seq",
                "trainable",
                "weights MB",
                "grads MB",
                "AdamW MB",
                "activations MB",
                "tensors MB",
                "vs full",
                "peak allocated MB",
                "vs full",
                "peak RSS MB",
                "RSS growth MB",
                "vs full",
            ],
            rows_a,
        )  # fmt: skip
        + f"\n\nEstimator (`hftune.memory.estimate_training_memory`) vs tensor accounting, seq {seq_len} "
        "(issue 7 target: within 15%):\n\n"
        + common.markdown_table(
            ["method", "batch", "estimate MB", "measured MB", "error", "within 15%"], rows_b
        )
    )
    common.write_report(
        "memory", args.output_dir, markdown, {"per_method": per_method, "estimator": estimates}, args.quick
    )
    common.bar_chart(
        args.output_dir / "memory.png",
        [f"{r['method']} (seq {r['seq_len']})" for r in per_method],
        [r["tensors"]["peak_allocated"] / MIB for r in per_method],
        "peak allocated (MiB)",
        f"Peak of live tensors in a training step, batch {args.batch_size}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
