"""Instruction tuning memory and speed: LoRA vs QLoRA on the recipe's default model and data (issue 6 targets).

    python benchmarks/bench_instruction_tuning.py            # full run, ~6 min on 2 cores, alone on the machine
    python benchmarks/bench_instruction_tuning.py --quick    # smoke run, ~1 min, figures meaningless

Each variant runs in its own process, so that its peak RSS is its own: the embedded SmolLM2-135M-Instruct
loaded as `recipes/instruction_tuning.py` loads it (fp32, or NF4 + double quantisation for QLoRA), the
recipe's LoRA (r 16, q/k/v/o projections, peft's `prepare_model_for_kbit_training` for QLoRA), batches of the
recipe's default data (the JSL instruction records of the training split, Alpaca prompt, <= 128 tokens,
response-only labels), the recipe's loss (`hftune.tasks.instruction.response_only_loss`: the output layer on response
tokens only) and the Trainer's default optimizer (fused AdamW). `--steps` training steps on seeded
random batches are timed (median after warm-up); then one step on the 8 longest examples (the peak batch of an
epoch) is measured: peak allocated = weights + AdamW state + the peak of live tensors during the step (the CPU
counterpart of CUDA's max_memory_allocated); peak RSS over the whole process, loading included.

Variants: `lora` and `qlora` as the recipe runs them by default (activation checkpointing on), and both
without checkpointing, to show what the 4-bit weights save when activations are kept.
Target: QLoRA peak memory <= 0.6x LoRA in fp32.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import common
import torch

from hftune.errors import exit_on_user_error

MIB = 2**20
VARIANTS = {
    # name: (4-bit weights, activation checkpointing); the recipe's default checkpoints activations
    "lora": (False, True),
    "qlora": (True, True),
    "lora-no-checkpointing": (False, False),
    "qlora-no-checkpointing": (True, False),
}


def recipe_model(four_bit: bool, checkpointing: bool):
    """The model as recipes/instruction_tuning.py builds it (its RECIPE_DEFAULTS for LoRA)."""
    from hftune.config import LoraArguments
    from hftune.methods import apply_lora, quantization_config
    from hftune.models import embedded_causal_lm_path
    from hftune.tasks.instruction import load_causal_lm

    sys.path.insert(0, str(common.REPO_ROOT / "recipes"))
    from instruction_tuning import RECIPE_DEFAULTS

    lora_args = LoraArguments(
        lora_r=RECIPE_DEFAULTS["lora_r"],
        lora_alpha=RECIPE_DEFAULTS["lora_alpha"],
        lora_dropout=RECIPE_DEFAULTS["lora_dropout"],
        lora_target_modules=RECIPE_DEFAULTS["lora_target_modules"],
        load_in_4bit=four_bit,
    )
    model, tokenizer = load_causal_lm(
        embedded_causal_lm_path(),
        quantization_config=quantization_config(lora_args, model_type_head=["lm_head"]),
    )
    model = apply_lora(model, lora_args, task_type="CAUSAL_LM")
    if checkpointing:
        # What Trainer does for --gradient_checkpointing with the recipes' non-reentrant setting.
        model.activation_checkpointing_enable({"use_reentrant": False})
    model.config.use_cache = False
    return model.train(), tokenizer, RECIPE_DEFAULTS


def training_examples(tokenizer, defaults: dict) -> list[dict]:
    from hftune.tasks.instruction import InstructionDataArguments, encode_records, load_instruction_splits

    splits, _ = load_instruction_splits(InstructionDataArguments())
    examples, _ = encode_records(splits["train"], tokenizer, "alpaca", defaults["max_seq_length"])
    return examples


def worker(args) -> int:
    """One variant in this process: print its figures as one JSON line."""
    from hftune.tasks.instruction import InstructionCollator, response_only_loss

    common.setup(args.threads, args.seed)
    rss_before = common.peak_rss_mb()
    four_bit, checkpointing = VARIANTS[args.worker]
    model, tokenizer, defaults = recipe_model(four_bit, checkpointing)
    rss_loaded = common.peak_rss_mb()
    batch_size = args.batch_size or defaults["per_device_train_batch_size"]
    examples = training_examples(tokenizer, defaults)
    collate = InstructionCollator(tokenizer.pad_token_id)
    rng = random.Random(args.seed)
    batches = [collate(rng.sample(examples, batch_size)) for _ in range(args.warmup + args.steps)]
    longest = collate(sorted(examples, key=lambda e: len(e["input_ids"]), reverse=True)[:batch_size])

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=defaults["learning_rate"], fused=True)

    def step(batch) -> None:
        response_only_loss(model, batch)[0].backward()  # the recipe's loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = []
    for i, batch in enumerate(batches):
        started = time.perf_counter()
        step(batch)
        if i >= args.warmup:
            times.append(time.perf_counter() - started)

    weights = model.get_memory_footprint()
    optimizer_state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values())
    peak_step = common.peak_live_tensor_bytes(lambda: step(longest))
    print(json.dumps({
        "variant": args.worker, "four_bit": four_bit, "gradient_checkpointing": checkpointing,
        "batch_size": batch_size, "peak_batch_seq_len": int(longest["input_ids"].shape[1]),
        "mean_seq_len": common.median([b["input_ids"].shape[1] for b in batches]),
        "trainable_params": sum(p.numel() for p in trainable),
        "step_seconds": common.median(times), "step_seconds_all": times,
        "samples_per_second": batch_size / common.median(times),
        "weights_bytes": weights, "optimizer_bytes": optimizer_state, "step_peak_live_bytes": peak_step,
        "peak_allocated_bytes": weights + optimizer_state + peak_step,
        "rss_before_mb": rss_before, "rss_after_load_mb": rss_loaded, "peak_rss_mb": common.peak_rss_mb(),
    }))  # fmt: skip
    return 0


def run_worker(variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--seed", str(args.seed)]  # fmt: skip
    for flag in ("threads", "batch_size"):
        if getattr(args, flag):
            cmd += [f"--{flag}", str(getattr(args, flag))]
    return common.run_json_worker(cmd, f"worker for {variant}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, default_repeats=1)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per variant")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the recipe's (8)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.batch_size = 1, 1, 2
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    threads = common.setup(args.threads, args.seed)
    rows = []
    for variant in args.variants:
        rows.append(run_worker(variant, args))
        r = rows[-1]
        print(f"{variant}: peak allocated {r['peak_allocated_bytes'] / MIB:.0f} MB, peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"{r['samples_per_second']:.2f} samples/s", flush=True)  # fmt: skip

    def ratio(name: str, of: str, key: str) -> float | None:
        by = {r["variant"]: r for r in rows}
        if name not in by or of not in by:
            return None
        return by[name][key] / by[of][key]

    ratios = {
        "qlora_vs_lora_peak_allocated": ratio("qlora", "lora", "peak_allocated_bytes"),
        "qlora_vs_lora_peak_rss": ratio("qlora", "lora", "peak_rss_mb"),
        "no_checkpointing_peak_allocated": ratio(
            "qlora-no-checkpointing", "lora-no-checkpointing", "peak_allocated_bytes"
        ),
    }
    table = common.markdown_table(
        ["variant", "4-bit", "checkpointing", "trainable", "samples/s", "weights MB", "AdamW MB",
         "step peak MB", "peak allocated MB", "RSS after load MB", "peak RSS MB"],
        [[r["variant"], "yes" if r["four_bit"] else "no", "yes" if r["gradient_checkpointing"] else "no",
          f"{r['trainable_params']:,}", r["samples_per_second"], r["weights_bytes"] / MIB, r["optimizer_bytes"] / MIB,
          r["step_peak_live_bytes"] / MIB, r["peak_allocated_bytes"] / MIB, r["rss_after_load_mb"],
          r["peak_rss_mb"]] for r in rows],
    )  # fmt: skip

    def fmt(value: float | None) -> str:
        return f"**{value:.2f}x**" if value is not None else "n/a"

    first = rows[0]
    markdown = (
        f"SmolLM2-135M-Instruct (embedded), the recipe's LoRA, fp32 compute, batch {first['batch_size']} of the "
        f"default JSL instruction data (median padded length {first['mean_seq_len']:.0f} tokens; peak batch "
        f"{first['peak_batch_seq_len']} tokens), fused AdamW, {threads} threads, one process per variant; "
        "MB = MiB. samples/s = median of the timed steps. Peak allocated = weights + AdamW state + the most bytes "
        "of live tensors during a step on the longest batch (CUDA's max_memory_allocated on a GPU). "
        "Peak RSS includes the interpreter, the libraries and loading.\n\n" + table + "\n\n"
        f"- QLoRA vs LoRA in fp32 (the recipe's defaults), peak allocated: "
        f"{fmt(ratios['qlora_vs_lora_peak_allocated'])} (target <= 0.6x); peak RSS: "
        f"{fmt(ratios['qlora_vs_lora_peak_rss'])}\n"
        f"- both without activation checkpointing, peak allocated: {fmt(ratios['no_checkpointing_peak_allocated'])}"
    )
    common.write_report(
        "instruction_tuning", args.output_dir, markdown, {"rows": rows, "ratios": ratios}, args.quick
    )
    common.bar_chart(
        args.output_dir / "instruction_tuning.png",
        [r["variant"] for r in rows],
        [r["peak_allocated_bytes"] / MIB for r in rows],
        "peak allocated (MiB)",
        f"Instruction tuning memory, batch {first['batch_size']}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
