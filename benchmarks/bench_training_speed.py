"""Training speed: the user's hand-written loop vs the hftune recipe vs a default Trainer script (issue 9, 1-2).

Run alone on the machine (another job on the same cores slows steps many-fold):

    python benchmarks/bench_training_speed.py                 # full run, ~35 min on 2 cores
    python benchmarks/bench_training_speed.py --quick         # smoke run, ~1-2 min, figures meaningless

Part A, end to end on emotion (same MiniLM, same training subset, same number of optimizer steps, effective
batch 32). `--rounds` rounds (3) each run all four, in an order rotated per round; the table reports medians,
and ratios as the median of the per-round ratios (runs of one round are minutes apart on the same machine):
- `user loop`: the user's plain PyTorch script, written faithfully: every text padded to 128 tokens up front,
  TensorDataset + DataLoader(batch 8, shuffle), manual gradient accumulation of 4, fp32, AdamW lr 5e-5.
- `hftune recipe`: `recipes/sentiment_freeze.py` (nothing frozen = full fine-tuning) started the way its
  docstring says, `accelerate launch --config_file accelerate_configs/cpu.yaml`, so the real hftune code runs;
  samples/s and accuracy come from its results.json.
- `hftune recipe, frozen embeddings`: the same recipe with its `--freeze_embeddings` (the embedding layer, i.e.
  token, position and type embeddings and their LayerNorm, stays as pretrained; every encoder layer and the head
  train). The 30,522 x 384 word-embedding
  matrix is half of MiniLM's weights but only a few hundred of its rows are used per batch, so its dense
  gradient, clipping and AdamW update are memory traffic that the short length-grouped batches feel most.
- `default Trainer`: AutoModelForSequenceClassification + Trainer with TrainingArguments defaults, texts padded
  to max length 128 as transformers' text-classification example does by default, batch 32, fp32.
The user loop and the default Trainer keep the checkpoint's attention dropout (0.1 for MiniLM), as users' scripts
do; the recipe trains with its default `--attention_dropout 0` and `hftune.training.cpu.CPUDropout`.
Training samples/s is training wall time only (tokenisation before, evaluation after, are excluded for all);
validation accuracy is on the full validation split.

Part B, ablation: throughput of one optimisation added at a time, from the user loop to the recipe's
configuration (the last ones: fused AdamW, attention dropout 0, which lets torch run its fused SDPA kernel in
training on CPU, the recipes' cheaper CPU dropout masks, and bf16 autocast where the recipe picks it), then single changes on top of the recipe
configuration (eager attention instead of SDPA, 1 thread as `accelerate launch` gives a child without a config,
DataLoader workers, torch.compile). Each row times `--steps` optimizer steps of micro-batches drawn at random
from that configuration's own epoch order (so length grouping is timed on representative batches). All rows
are built and warmed up (`--warmup` steps) first, then timed in `--repeats` rounds (5), each visiting every
row in a rotated order: medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hftune.config import CLASSIFIER_DEFAULTS, FreezeArguments
from hftune.errors import HftuneError, exit_on_user_error
from hftune.methods import apply_freeze
from hftune.models import embedded_encoder_path, load_classifier
from hftune.training.cpu import use_cpu_dropout

EFFECTIVE_BATCH = 32


# --- Part A: the user's loop, written as the user wrote it ------------------------------------------------


def user_loop(model_path: str, data, args) -> dict:
    """The hand-written baseline: pad everything to 128, batch 8, accumulate 4, fp32, no Trainer."""
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(data.label_names))
    train = data.splits["train"]
    epochs = args.epochs
    enc = tokenizer(
        list(train["text"]),
        padding="max_length",
        truncation=True,
        max_length=args.max_length,
        return_tensors="pt",
    )
    dataset = TensorDataset(enc["input_ids"], enc["attention_mask"], torch.tensor(list(train["label"])))
    loader = DataLoader(dataset, batch_size=8, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    accumulation = 4

    model.train()
    step_times, optimizer_steps = [], 0
    started = last = time.perf_counter()
    for _ in range(epochs):
        for i, (input_ids, attention_mask, labels) in enumerate(loader):
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            (out.loss / accumulation).backward()
            if (i + 1) % accumulation == 0:
                optimizer.step()
                optimizer.zero_grad()
                optimizer_steps += 1
                now = time.perf_counter()
                step_times.append(now - last)
                last = now
    seconds = time.perf_counter() - started
    accuracy = evaluate_padded(model, tokenizer, data, args.max_length)
    return {
        "train_seconds": seconds,
        "train_samples_per_second": len(train) * epochs / seconds,
        "median_optimizer_step_s": common.median(step_times) if step_times else float("nan"),
        "optimizer_steps": optimizer_steps,
        "accuracy": accuracy,
    }


@torch.no_grad()
def evaluate_padded(model, tokenizer, data, max_length: int) -> float:
    model.eval()
    validation = data.splits["validation"]
    correct = 0
    for start in range(0, len(validation), 64):
        rows = validation[start : start + 64]
        enc = tokenizer(
            list(rows["text"]),
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        predictions = model(**enc).logits.argmax(-1)
        correct += int((predictions == torch.tensor(rows["label"])).sum())
    return correct / len(validation)


# --- Part A: the recipe, run as users run it ---------------------------------------------------------------


def recipe_run(args, train_file: Path, validation_file: Path, out_dir: Path, extra_flags=()) -> dict:
    recipe = common.REPO_ROOT / "recipes" / "sentiment_freeze.py"
    flags = [
        "--train_file", str(train_file), "--validation_file", str(validation_file),
        "--num_train_epochs", str(args.epochs), "--output_dir", str(out_dir), "--seed", str(args.seed),
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "False",
        "--logging_steps", "50", "--max_seq_length", str(args.max_length),
    ]  # fmt: skip
    if args.train_samples:
        flags += ["--max_train_samples", str(args.train_samples)]
    if args.eval_samples:
        flags += ["--max_eval_samples", str(args.eval_samples)]
    flags += [*extra_flags, *args.recipe_args]
    accelerate = Path(sys.executable).parent / "accelerate"
    if args.launcher == "accelerate" and accelerate.is_file():
        config = common.REPO_ROOT / "accelerate_configs" / "cpu.yaml"
        cmd = [str(accelerate), "launch", "--config_file", str(config), str(recipe), *flags]
    else:
        cmd = [sys.executable, str(recipe), *flags]
    env = {**os.environ, "HFTUNE_CPU_THREADS": str(torch.get_num_threads())}
    print("running:", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, env=env, cwd=common.REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0 or not (out_dir / "results.json").is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise HftuneError(f"the recipe run failed (exit {done.returncode}): {' | '.join(tail)}")
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    return {
        "train_seconds": results["train_runtime_s"],
        "train_samples_per_second": results["train_samples_per_second"],
        "accuracy": results["metrics"]["accuracy"],
        "precision": results["precision"],
        "hyperparameters": results["hyperparameters"],
        "command": " ".join(cmd),
    }


# --- Part A: transformers' default Trainer script ----------------------------------------------------------


def default_trainer_run(model_path: str, data, args, out_dir: Path) -> dict:
    """AutoModel + Trainer with default TrainingArguments and pad-to-max-length data, as in run_glue.py."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(data.label_names))

    def encode(batch):
        return tokenizer(batch["text"], padding="max_length", max_length=args.max_length, truncation=True)

    tokenized = data.splits.map(encode, batched=True, remove_columns=["text"])
    training_args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=EFFECTIVE_BATCH,
        per_device_eval_batch_size=64,
        num_train_epochs=args.epochs,
        save_strategy="no",
        report_to="none",
        logging_steps=50,
        seed=args.seed,
        use_cpu=True,
        disable_tqdm=True,
    )

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=default_data_collator,
        compute_metrics=accuracy,
    )
    output = trainer.train()
    metrics = trainer.evaluate()
    return {
        "train_seconds": output.metrics["train_runtime"],
        "train_samples_per_second": output.metrics["train_samples_per_second"],
        "accuracy": metrics["eval_accuracy"],
    }


# --- Part B: ablation ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    label: str
    padding: str = "max_length"  # or "longest": pad each batch to its own longest text
    group_by_length: bool = False
    micro_batch: int = 8
    fused_adamw: bool = False  # Trainer's default optimizer (adamw_torch_fused); the user's loop has foreach
    bf16: bool = False
    attention: str = "sdpa"  # transformers' default for BERT
    attention_dropout: float | None = None  # None: the checkpoint's (0.1 for MiniLM); the recipe's is 0
    threads: int = 0  # 0 = the benchmark's pinned count
    workers: int = 0
    compile: bool = False
    cpu_dropout: bool = False  # hftune.training.cpu.CPUDropout, which the recipes use on CPU
    freeze_embeddings: bool = False  # sentiment_freeze.py --freeze_embeddings

    @property
    def accumulation(self) -> int:
        return EFFECTIVE_BATCH // self.micro_batch


def epoch_batches(config: Config, lengths: list[int], seed: int) -> list[list[int]]:
    """Micro-batches of indices in the order an epoch would visit them under `config`'s sampler."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    generator = torch.Generator().manual_seed(seed)
    if config.group_by_length:
        order = get_length_grouped_indices(lengths, config.micro_batch, generator=generator)
    else:
        order = torch.randperm(len(lengths), generator=generator).tolist()
    step = config.micro_batch
    return [order[i : i + step] for i in range(0, len(order) - step + 1, step)]


class AblationRun:
    """One ablation configuration, built once: its model, optimizer, collator and epoch order."""

    def __init__(self, config: Config, model_path: str, features: list[dict], args, threads: int) -> None:
        self.config, self.features, self.threads = config, features, config.threads or threads
        torch.manual_seed(args.seed)
        model, tokenizer = load_classifier(
            model_path,
            {i: f"LABEL_{i}" for i in range(args.num_labels)},
            attention_dropout=config.attention_dropout,
            attn_implementation=config.attention,
        )
        if config.cpu_dropout:
            use_cpu_dropout(model)
        apply_freeze(model, FreezeArguments(freeze_embeddings=config.freeze_embeddings))
        model.train()
        self.forward = torch.compile(model, dynamic=config.padding == "longest") if config.compile else model
        trainable = [p for p in model.parameters() if p.requires_grad]  # as Trainer builds its optimizer
        self.optimizer = torch.optim.AdamW(trainable, lr=5e-5, fused=config.fused_adamw)
        self.collator = DataCollatorWithPadding(
            tokenizer,
            padding=config.padding,
            max_length=args.max_length if config.padding == "max_length" else None,
        )
        lengths = [len(f["input_ids"]) for f in features]
        self.batches = epoch_batches(config, lengths, args.seed)
        self.rng = random.Random(args.seed)
        mean_tokens = float(np.mean([max(lengths[i] for i in b) for b in self.batches]))
        self.mean_padded_length = args.max_length if config.padding == "max_length" else mean_tokens
        self.rates: list[float] = []

    def window(self, optimizer_steps: int) -> float:
        """Train `optimizer_steps` steps on micro-batches drawn from the epoch order; samples/s."""
        config, previous_threads = self.config, torch.get_num_threads()
        torch.set_num_threads(self.threads)
        chosen = self.rng.sample(self.batches, min(optimizer_steps * config.accumulation, len(self.batches)))
        loader = DataLoader(
            self.features, batch_sampler=chosen, collate_fn=self.collator, num_workers=config.workers
        )
        iterator = iter(loader)
        first = next(iterator)  # worker start-up happens once per epoch, not once per window
        started = time.perf_counter()
        samples = 0
        for i, batch in enumerate(_chain(first, iterator)):
            samples += batch["input_ids"].shape[0]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                loss = self.forward(**batch).loss / config.accumulation
            loss.backward()
            if (i + 1) % config.accumulation == 0:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        rate = samples / (time.perf_counter() - started)
        torch.set_num_threads(previous_threads)
        return rate

    def result(self) -> dict:
        return {
            "label": self.config.label,
            "config": dataclasses.asdict(self.config),
            "samples_per_second": common.median(self.rates),
            "samples_per_second_all": self.rates,
            "mean_padded_length": self.mean_padded_length,
        }


def measure_ablation(configs: list[Config], model_path: str, features: list[dict], args, threads: int):
    """Median samples/s of every configuration over `args.repeats` rounds of `args.steps` optimizer steps.

    All configurations are built and warmed up first, then timed round by round in a rotated order, so a slow
    spell of the machine falls on all of them alike instead of on the rows that happened to run during it.
    """
    runs = [AblationRun(config, model_path, features, args, threads) for config in configs]
    if args.warmup:
        for run in runs:
            run.window(args.warmup)
    for r in range(args.repeats):
        for run in runs[r % len(runs) :] + runs[: r % len(runs)]:
            run.rates.append(run.window(args.steps))
        print(f"ablation round {r + 1}/{args.repeats} done", flush=True)
    return [run.result() for run in runs]


def _chain(first, iterator):
    yield first
    yield from iterator


def ablation_configs(args, bf16_runs: bool, bf16_fast: bool) -> tuple[list[Config], list[Config]]:
    """The user's configuration, one recipe optimisation added per row, then single changes to the recipe.

    bf16 autocast is part of the recipe only where `hardware.decide_precision` picks it (AMX / Arm BF16); on a
    CPU with avx512_bf16 alone it is a variant row, to show why it is not.
    """
    base = Config(f"user loop: pad {args.max_length}, batch 8 x 4 accumulation, fp32")
    cumulative = [base]
    cumulative.append(dataclasses.replace(base, label="+ dynamic padding", padding="longest"))
    cumulative.append(dataclasses.replace(cumulative[-1], label="+ length grouping", group_by_length=True))
    cumulative.append(
        dataclasses.replace(cumulative[-1], label="+ batch 32, no accumulation", micro_batch=32)
    )
    cumulative.append(
        dataclasses.replace(cumulative[-1], label="+ fused AdamW (Trainer's default)", fused_adamw=True)
    )
    cumulative.append(
        dataclasses.replace(
            cumulative[-1],
            label="+ attention dropout 0 (fused SDPA kernel)",
            attention_dropout=CLASSIFIER_DEFAULTS["attention_dropout"],
        )
    )
    cumulative.append(
        dataclasses.replace(cumulative[-1], label="+ 16-bit dropout masks (CPUDropout)", cpu_dropout=True)
    )
    if bf16_fast:
        cumulative.append(dataclasses.replace(cumulative[-1], label="+ bf16 autocast", bf16=True))
    recipe = cumulative[-1] = dataclasses.replace(cumulative[-1], label=cumulative[-1].label + " (= recipe)")
    variants = [
        dataclasses.replace(
            recipe, label="recipe + frozen embeddings (--freeze_embeddings)", freeze_embeddings=True
        ),
        dataclasses.replace(recipe, label="recipe, eager attention instead of SDPA", attention="eager"),
        dataclasses.replace(recipe, label="recipe, 1 thread (accelerate launch without config)", threads=1),
        dataclasses.replace(recipe, label="recipe + DataLoader num_workers=1", workers=1),
    ]
    if bf16_runs and not bf16_fast:
        variants.append(
            dataclasses.replace(recipe, label="recipe + bf16 autocast (avx512_bf16, no AMX)", bf16=True)
        )
    if args.compile:
        variants.append(dataclasses.replace(recipe, label="recipe + torch.compile", compile=True))
    return cumulative, variants


# --- main ---------------------------------------------------------------------------------------------------


END_TO_END = (
    ("user", "user_loop"),
    ("recipe", "recipe"),
    ("recipe-frozen-embeddings", "recipe_frozen_embeddings"),
    ("trainer", "default_trainer"),
)


def end_to_end_rounds(args, model_path, data, train_file: Path, validation_file: Path, scratch: Path) -> dict:
    """`--rounds` rounds of the end-to-end runs, each round in a rotated order so that a slow spell of the
    machine does not fall on one run alone; returns each run's medians and every round's figures."""
    runners = {
        "user_loop": lambda r: user_loop(model_path, data, args),
        "recipe": lambda r: recipe_run(args, train_file, validation_file, scratch / f"recipe-{r}"),
        "recipe_frozen_embeddings": lambda r: recipe_run(
            args, train_file, validation_file, scratch / f"recipe-frozen-{r}", ["--freeze_embeddings"]
        ),
        "default_trainer": lambda r: default_trainer_run(model_path, data, args, scratch / f"trainer-{r}"),
    }
    keys = [key for flag, key in END_TO_END if flag not in args.skip]
    rounds = []
    for r in range(args.rounds if keys else 0):
        this_round = {}
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            this_round[key] = runners[key](r)
            print(f"round {r + 1}, {key}: {this_round[key]}", flush=True)
        rounds.append(this_round)
    summary: dict = {"rounds": rounds}
    for key in keys:
        runs = [one_round[key] for one_round in rounds]
        summary[key] = {
            **runs[0],
            **{
                field: common.median([run[field] for run in runs])
                for field in ("train_samples_per_second", "train_seconds", "accuracy")
            },
        }
    return summary


def round_ratios(results: dict, key: str, baseline: str) -> list[float]:
    """`key`'s samples/s over `baseline`'s, round by round (the runs of one round are minutes apart)."""
    return [
        one_round[key]["train_samples_per_second"] / one_round[baseline]["train_samples_per_second"]
        for one_round in results.get("rounds", [])
        if key in one_round and baseline in one_round
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, default_repeats=5)
    parser.add_argument(
        "--data_dir", type=Path, default=common.EMOTION_DIR, help="emotion train.txt/validation.txt"
    )
    parser.add_argument(
        "--model", default=None, help="encoder folder or Hub id (default: the embedded MiniLM)"
    )
    parser.add_argument(
        "--train_samples",
        type=int,
        default=2000,
        help="training subset, drawn with --seed (emotion has 16,000; 0 for all)",
    )
    parser.add_argument(
        "--eval_samples", type=int, default=None, help="validation subset (default: all 2,000)"
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="end-to-end rounds: each runs the user loop, the recipe and the default Trainer once (medians)",
    )
    parser.add_argument("--max_length", type=int, default=128, help="the user's fixed padding length")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per timed ablation window")
    parser.add_argument(
        "--compile", action="store_true", help="add a torch.compile row (compiles for minutes)"
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=[flag for flag, _ in END_TO_END] + ["ablation"]
    )
    parser.add_argument("--launcher", choices=["accelerate", "python"], default="accelerate")
    parser.add_argument(
        "--recipe_args", nargs=argparse.REMAINDER, default=[], help="extra recipe flags (last)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.train_samples, args.eval_samples, args.max_length = 32, 16, 32
        args.steps, args.repeats, args.warmup, args.rounds = 1, 1, 0, 1
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = common.setup(args.threads, args.seed)
    model_path = args.model or embedded_encoder_path()
    train_file, validation_file = common.emotion_files(args.data_dir)
    data = common.load_emotion(args.data_dir, args.train_samples or None, args.eval_samples, args.seed)
    args.num_labels = len(data.label_names)
    n_train = len(data.splits["train"])
    print(
        f"emotion: {n_train} training texts, {len(data.splits['validation'])} validation; {threads} threads"
    )

    results: dict = {
        "train_samples": n_train,
        "epochs": args.epochs,
        "threads": threads,
        "max_length": args.max_length,
        "steps": args.steps,
    }
    scratch = Path(tempfile.mkdtemp(prefix="bench_training_speed-"))
    try:
        results.update(end_to_end_rounds(args, model_path, data, train_file, validation_file, scratch))
        if "ablation" not in args.skip:
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            train = data.splits["train"]
            encoded = tokenizer(list(train["text"]), truncation=True, max_length=args.max_length)
            features = [
                {"input_ids": ids, "attention_mask": mask, "labels": label}
                for ids, mask, label in zip(
                    encoded["input_ids"], encoded["attention_mask"], list(train["label"]), strict=True
                )
            ]
            cumulative, variants = ablation_configs(
                args, common.cpu_supports_bf16(), common.cpu_fast_bf16_matmul()
            )
            results["ablation"] = measure_ablation(cumulative + variants, model_path, features, args, threads)
            for row, config in zip(results["ablation"], cumulative + variants, strict=True):
                row["cumulative"] = config in cumulative
                print(f"{config.label}: {row['samples_per_second']:.1f} samples/s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    markdown = render(results)
    common.write_report("training_speed", args.output_dir, markdown, results, args.quick)
    if results.get("ablation"):
        rows = results["ablation"]
        common.bar_chart(
            args.output_dir / "training_speed.png",
            [r["label"] for r in rows],
            [r["samples_per_second"] for r in rows],
            "training samples/s (median)",
            "MiniLM on emotion: one optimisation at a time",
        )
    return 0


def render(results: dict) -> str:
    parts = []
    recipe_precision = results.get("recipe", {}).get("precision", "")
    runs = [("user loop (hand-written)", "user_loop"),
            (f"hftune recipe (sentiment_freeze.py, full FT, {recipe_precision})", "recipe"),
            (f"hftune recipe, frozen embeddings (sentiment_freeze.py --freeze_embeddings, {recipe_precision})",
             "recipe_frozen_embeddings"),
            (f"default Trainer (pad {results['max_length']}, fp32)", "default_trainer")]  # fmt: skip
    rounds = len(results.get("rounds", []))
    rows = []
    for label, key in runs:
        if key not in results:
            continue
        run, ratios = results[key], round_ratios(results, key, "user_loop")
        rows.append([label, run["train_samples_per_second"], f"{common.median(ratios):.2f}x" if ratios else "",
                     f"{run['accuracy']:.4f}", f"{run['train_seconds']:.0f}",
                     ", ".join(f"{r[key]['train_samples_per_second']:.1f}" for r in results["rounds"] if key in r)])  # fmt: skip
    if rows:
        parts.append(
            f"End to end: {results['train_samples']} training texts x {results['epochs']} epoch(s), effective batch "
            f"{EFFECTIVE_BATCH}, {results['threads']} threads, {rounds} round(s), each running all runs in a "
            "rotated order. Medians over the rounds; ratios are the median of the per-round ratios.\n\n"
            + common.markdown_table(
                [
                    "run",
                    "train samples/s",
                    "vs user loop",
                    "validation accuracy",
                    "train s",
                    "samples/s by round",
                ],
                rows,
            )
        )
    lines = []
    for key, recipe in (
        ("recipe", "Recipe (full FT)"),
        ("recipe_frozen_embeddings", "Recipe, frozen embeddings"),
    ):
        for baseline, name, target in (
            ("default_trainer", "default Trainer", "target >= 1.5x"),
            ("user_loop", "user loop", "target >= 6x"),
        ):
            ratios = round_ratios(results, key, baseline)
            if not ratios:
                continue
            by_round = ", ".join(f"{r:.2f}x" for r in ratios)
            accuracy = ""
            if baseline == "user_loop":
                gain = results[key]["accuracy"] - results[baseline]["accuracy"]
                accuracy = f"; validation accuracy {gain:+.4f} vs the user loop (target >= 0)"
            lines.append(
                f"- {recipe} vs {name}: **{common.median(ratios):.2f}x** samples/s ({target}; rounds: "
                f"{by_round}){accuracy}"
            )
    if lines:
        parts.append("\n".join(lines))
    if results.get("ablation"):
        ablation = results["ablation"]
        first = ablation[0]["samples_per_second"]
        recipe_rate = [r for r in ablation if r["cumulative"]][-1]["samples_per_second"]
        rows, previous = [], first
        for r in ablation:
            rate = r["samples_per_second"]
            step = rate / previous if r["cumulative"] else rate / recipe_rate
            rows.append([r["label"], rate, f"{rate / first:.2f}x",
                         f"{step:.2f}x" + ("" if r["cumulative"] else " vs recipe"), f"{r['mean_padded_length']:.0f}"])  # fmt: skip
            if r["cumulative"]:
                previous = rate
        parts.append(
            f"Ablation, rows interleaved: {len(ablation[0]['samples_per_second_all'])} round(s) of {results['steps']} "
            "optimizer steps per row, each round visiting every row in a rotated order; medians. Cumulative rows "
            "first, then single changes to the recipe configuration:\n\n"
            + common.markdown_table(
                ["configuration", "samples/s", "vs user loop", "this step", "mean padded length"], rows
            )
        )
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
