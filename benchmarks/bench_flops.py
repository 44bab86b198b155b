"""Hardware efficiency: achieved training FLOP/s against the machine's measured matmul FLOP/s (issue 9, 3).

    python benchmarks/bench_flops.py            # full run, ~3-5 min on 2 cores, alone on the machine
    python benchmarks/bench_flops.py --quick    # smoke run, ~20 s, figures meaningless

In one run: (1) the machine's matmul FLOP/s at fp32 and bf16, the best median over square matmuls of
`--matmul_sizes`; (2) for full fine-tuning and LoRA (hftune.methods, the recipes' defaults) on MiniLM, one
real training step (forward, backward, AdamW step) on a batch of emotion texts, timed (median of repeats
after warm-up) in fp32 and under bf16 autocast, at two shapes: padded to the batch's longest text (what the
recipes train on) and padded to 128. The FLOPs of the step are counted with
`torch.utils.flop_counter.FlopCounterMode` on an eager-attention twin of the model (same weights and method):
torch's CPU SDPA kernel has no FLOP formula, eager attention does the same matmuls in countable ops.
Efficiency = counted FLOPs / step time / matmul FLOP/s at the same precision.
Both models are built as the recipes build them (`hftune.models.load_classifier` with the recipes' default
`--attention_dropout`, 0.0): with attention dropout > 0 torch's CPU SDPA falls back from the fused kernel to the
math path plus a serial random draw in training, which is not what the recipes run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import common
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoTokenizer

from hftune.config import LoraArguments
from hftune.errors import exit_on_user_error
from hftune.methods import apply_full, apply_lora
from hftune.models import embedded_encoder_path

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_flops_per_second(dtype: torch.dtype, size: int, warmup: int, repeats: int) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    times = common.time_call(lambda: torch.mm(a, b), warmup=warmup, repeats=repeats)
    return 2 * size**3 / common.median(times)


def build(model_path: str, method: str, num_labels: int, attention: str, seed: int):
    """The recipes' model (`common.recipe_classifier`) with `attention` as the attention implementation."""
    torch.manual_seed(seed)
    model, _ = common.recipe_classifier(
        model_path, {i: f"LABEL_{i}" for i in range(num_labels)}, attn_implementation=attention
    )
    model = apply_lora(model, LoraArguments()) if method == "lora" else apply_full(model)
    return model.train()


def count_step_flops(model, batch: dict, bf16: bool) -> int:
    """Forward + backward FLOPs of one step (the optimizer's elementwise work is not matmul FLOPs)."""
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_step(model, batch: dict, bf16: bool, warmup: int, repeats: int) -> list[float]:
    # fused=True: the Trainer's default optimizer (adamw_torch_fused), what the recipes run
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return common.time_call(step, warmup=warmup, repeats=repeats)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, default_repeats=5)
    parser.add_argument("--data_dir", type=Path, default=common.EMOTION_DIR)
    parser.add_argument(
        "--model", default=None, help="encoder folder or Hub id (default: the embedded MiniLM)"
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--matmul_sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--methods", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--precisions", nargs="+", default=None, choices=list(DTYPES))
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.matmul_sizes, args.repeats, args.warmup = 4, [256], 1, 1
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = common.setup(args.threads, args.seed)
    model_path = args.model or embedded_encoder_path()
    bf16_ok = common.cpu_supports_bf16()
    precisions = args.precisions or (["fp32", "bf16"] if bf16_ok else ["fp32"])

    peaks = {}
    for name in precisions:
        rates = {
            size: matmul_flops_per_second(DTYPES[name], size, args.warmup, args.repeats)
            for size in args.matmul_sizes
        }
        peaks[name] = {"flops_per_second": max(rates.values()), "by_size": rates}
        print(
            f"matmul {name}: {max(rates.values()) / 1e9:.1f} GFLOP/s (sizes {args.matmul_sizes})", flush=True
        )

    data = common.load_emotion(args.data_dir, None, None, args.seed)
    texts = list(data.splits["train"].shuffle(seed=args.seed)[: args.batch_size]["text"])
    labels = torch.tensor(list(data.splits["train"].shuffle(seed=args.seed)[: args.batch_size]["label"]))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    shapes = {
        "longest": tokenizer(texts, padding="longest", truncation=True, max_length=128, return_tensors="pt"),
        "128": tokenizer(texts, padding="max_length", truncation=True, max_length=128, return_tensors="pt"),
    }

    rows = []
    for method in args.methods:
        timed = build(model_path, method, len(data.label_names), "sdpa", args.seed)
        counted = build(model_path, method, len(data.label_names), "eager", args.seed)
        for shape, encoded in shapes.items():
            batch = {**encoded, "labels": labels}
            for name in precisions:
                bf16 = name == "bf16"
                flops = count_step_flops(counted, batch, bf16)
                times = time_step(timed, batch, bf16, args.warmup, args.repeats)
                achieved = flops / common.median(times)
                row = {
                    "method": method,
                    "precision": name,
                    "padding": shape,
                    "seq_len": int(encoded["input_ids"].shape[1]),
                    "batch_size": args.batch_size,
                    "flops_per_step": flops,
                    "step_seconds": common.median(times),
                    "step_seconds_all": times,
                    "achieved_flops_per_second": achieved,
                    "peak_flops_per_second": peaks[name]["flops_per_second"],
                    "efficiency": achieved / peaks[name]["flops_per_second"],
                }
                rows.append(row)
                print(f"{method} {name} {shape}: {row['efficiency']:.1%} of matmul peak", flush=True)

    table = common.markdown_table(
        ["method", "precision", "padding (seq)", "GFLOP/step", "step s", "achieved GFLOP/s", "matmul GFLOP/s",
         "efficiency"],
        [[r["method"], r["precision"], f"{r['padding']} ({r['seq_len']})", r["flops_per_step"] / 1e9,
          r["step_seconds"], r["achieved_flops_per_second"] / 1e9, r["peak_flops_per_second"] / 1e9,
          f"{r['efficiency']:.1%}"] for r in rows],
    )  # fmt: skip
    markdown = (
        f"Batch {args.batch_size} emotion texts, {threads} threads; matmul peak = best median of square matmuls "
        f"{args.matmul_sizes}. Target: full fine-tuning >= 50% of the matmul FLOP/s at the same precision.\n\n"
        + table
    )
    common.write_report("flops", args.output_dir, markdown, {"matmul": peaks, "rows": rows}, args.quick)
    common.bar_chart(
        args.output_dir / "flops.png",
        [f"{r['method']} {r['precision']} {r['padding']}" for r in rows],
        [100 * r["efficiency"] for r in rows],
        "% of measured matmul FLOP/s",
        "Training-step hardware efficiency",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
