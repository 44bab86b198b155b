"""Data pipeline cost: tokenisation and collation as a share of a training step (issue 9, 6: target < 5%).

    python benchmarks/bench_data_pipeline.py           # full run, ~2-3 min on 2 cores
    python benchmarks/bench_data_pipeline.py --quick   # smoke run, ~20 s, figures meaningless

What the recipes do, timed piece by piece on emotion with MiniLM:
- tokenisation: `hftune.data.tokenize_splits` (datasets.map, batched, no padding) over the training split,
  median of repeats, per sample, times the batch size = tokenisation cost per step (it runs once per run,
  but is charged here as if it ran for every batch);
- loading + collation: the Trainer's own training DataLoader (`Trainer.get_train_dataloader`: length-grouped
  sampler, row fetch from the Arrow table, column removal, `DataCollatorWithPadding`), median time per batch;
- the training step (forward, backward, AdamW) on those same batches, full fine-tuning of the model as the
  recipes load it (`hftune.models.load_classifier`, attention dropout 0), bf16 autocast where the recipe
  picks it (`hftune.hardware.decide_precision`: AMX or Arm BF16), median over batches after warm-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import common
import torch
from datasets import DatasetDict
from transformers import (
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hftune.data import tokenize_splits
from hftune.errors import exit_on_user_error
from hftune.models import embedded_encoder_path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, default_repeats=3)
    parser.add_argument("--data_dir", type=Path, default=common.EMOTION_DIR)
    parser.add_argument(
        "--model", default=None, help="encoder folder or Hub id (default: the embedded MiniLM)"
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30, help="batches timed for loading and for the step")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.batches, args.repeats, args.warmup = 4, 3, 1, 1
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = common.setup(args.threads, args.seed)
    model_path = args.model or embedded_encoder_path()
    data = common.load_emotion(args.data_dir, 512 if args.quick else None, 64, args.seed)
    train = DatasetDict({"train": data.splits["train"]})
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    tokenize_times = common.time_call(
        lambda: tokenize_splits(train, tokenizer, args.max_seq_length), warmup=0, repeats=args.repeats
    )
    tokenized = tokenize_splits(train, tokenizer, args.max_seq_length)["train"]
    per_sample = common.median(tokenize_times) / len(tokenized)

    bf16 = common.cpu_fast_bf16_matmul()  # as hftune.hardware.decide_precision picks for the recipes
    model, _ = common.recipe_classifier(model_path, dict(enumerate(data.label_names)))
    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=args.batch_size,
            train_sampling_strategy="group_by_length",
            bf16=bf16,
            use_cpu=True,
            report_to="none",
            seed=args.seed,
        )
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=tokenized,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        loader = trainer.get_train_dataloader()
        batches, fetch_times = [], []
        iterator = iter(loader)
        next(iterator)  # sampler and iterator set-up happen once per epoch
        for _ in range(args.batches + args.warmup):
            started = time.perf_counter()
            batch = next(iterator)
            fetch_times.append(time.perf_counter() - started)
            batches.append(batch)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # the Trainer's default
    step_times = []
    for batch in batches:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - started)
    step = common.median(step_times[args.warmup :])
    fetch = common.median(fetch_times[args.warmup :])
    tokenise_per_step = per_sample * args.batch_size
    shares = {
        "tokenisation": tokenise_per_step / step,
        "loading_and_collation": fetch / step,
        "total": (tokenise_per_step + fetch) / step,
    }
    results = {
        "train_samples": len(tokenized),
        "batch_size": args.batch_size,
        "bf16": bf16,
        "tokenise_seconds_all": tokenize_times,
        "tokenise_seconds_per_sample": per_sample,
        "fetch_seconds_per_batch": fetch,
        "step_seconds": step,
        "mean_batch_length": float(sum(b["input_ids"].shape[1] for b in batches) / len(batches)),
        "shares": shares,
    }
    table = common.markdown_table(
        ["part", "ms per step", "share of a training step"],
        [
            [
                "tokenisation (tokenize_splits, per batch)",
                1000 * tokenise_per_step,
                f"{shares['tokenisation']:.2%}",
            ],
            [
                "loading + collation (Trainer DataLoader)",
                1000 * fetch,
                f"{shares['loading_and_collation']:.2%}",
            ],
            ["training step (forward + backward + AdamW)", 1000 * step, "100%"],
            [
                "**tokenisation + collation**",
                1000 * (tokenise_per_step + fetch),
                f"**{shares['total']:.2%}**",
            ],
        ],
    )
    markdown = (
        f"MiniLM full fine-tuning, batch {args.batch_size}, {'bf16 autocast' if bf16 else 'fp32'}, length-grouped "
        f"dynamic padding (mean batch length {results['mean_batch_length']:.0f}), {len(tokenized)} training texts "
        f"tokenised, {threads} threads. Target: tokenisation + collation < 5% of a step.\n\n{table}"
    )
    common.write_report("data_pipeline", args.output_dir, markdown, results, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
