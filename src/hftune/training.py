"""Trainer wiring shared by the recipes: hardware preflight, metrics, callbacks, resume, save, report."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from hftune.config import DataArguments, ModelArguments
from hftune.data import ClassificationData, tokenize_splits
from hftune.models import count_parameters, hub_id_for
from hftune.results import directory_size_mb, library_versions, write_results

TRAIN_SUBSET_FOR_CURVES = 1000  # train-accuracy curve at every epoch without re-scoring all training data


def log(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"hftune: {message}", flush=True)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def use_all_cpu_cores() -> int:
    """`accelerate launch` hands a CPU child one thread by default; give each process its share of the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    threads = int(os.environ.get("HFTUNE_CPU_THREADS", max(1, cores // max(local, 1))))
    torch.set_num_threads(threads)
    return threads


def prepare_training_args(
    training_args: TrainingArguments,
    model_args: ModelArguments,
    model: torch.nn.Module,
    *,
    quantization: str | None = None,
) -> tuple[TrainingArguments, Any]:
    """Apply the hardware preflight (precision, device) and memory budget; return new args and the decision."""
    from hftune import hardware

    info = hardware.detect_hardware()
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    decision = hardware.decide_precision(info, model_args.precision, model_type=model_type, quantization=quantization)
    log(decision.summary())
    # TrainingArguments also reads the precision accelerate's config exported; the decision must win.
    os.environ["ACCELERATE_MIXED_PRECISION"] = {"fp32": "no"}.get(decision.precision, decision.precision)
    overrides: dict[str, Any] = dict(decision.trainer_kwargs)
    # Models whose loss is a per-batch mean (BERT & co.) would report loss x world size otherwise.
    overrides["average_tokens_across_devices"] = False
    if decision.device == "cpu":
        log(f"CPU threads per process: {use_all_cpu_cores()}")
    if model_args.max_memory_fraction is not None:
        hardware.set_cuda_memory_fraction(model_args.max_memory_fraction)
    training_args = dataclasses.replace(training_args, **overrides)
    if model_args.memory_budget:
        plan = hardware.plan_for_training_args(model, training_args, model_args.memory_budget, decision)
        training_args = hardware.apply_memory_budget(training_args, plan)
        log(plan.summary())
    return training_args, decision


def last_checkpoint(output_dir: str) -> str | None:
    if not os.path.isdir(output_dir):
        return None
    return get_last_checkpoint(output_dir)


def run_classification(
    model: torch.nn.Module,
    tokenizer,
    data: ClassificationData,
    training_args: TrainingArguments,
    *,
    model_args: ModelArguments,
    data_args: DataArguments,
    method: str,
    artifact: str,
    decision,
    base_model: str,
    save_artifact=None,
    extra_results: dict | None = None,
) -> dict:
    """Train with Trainer, evaluate every epoch, keep the best model, resume, save, report.

    `save_artifact(model, output_dir)` saves the method's own artefact; by default `Trainer.save_model`
    (a peft adapter or a full model, both as safetensors).
    """
    from hftune.hardware import MemoryCallback
    from hftune.metrics import classification_metrics
    from hftune.plots import plot_confusion_matrix, plot_training_curves

    trainable, total = count_parameters(model)
    log(f"{method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")

    tokenized = tokenize_splits(data.splits, tokenizer, data_args.max_seq_length)
    train_subset = tokenized["train"].select(range(min(TRAIN_SUBSET_FOR_CURVES, len(tokenized["train"]))))
    memory = MemoryCallback()
    pad_to = 8 if decision.device == "cuda" else None  # tensor-core friendly shapes on GPUs only
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset={"validation": tokenized["validation"], "train": train_subset},
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to),
        compute_metrics=classification_metrics(data.label_names),
        callbacks=[memory],
    )

    resume_from = last_checkpoint(training_args.output_dir)
    if resume_from:
        log(f"resuming from {resume_from}")
    started = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - started

    prediction = trainer.predict(tokenized["validation"], metric_key_prefix="eval")
    timing = ("runtime", "samples_per_second", "steps_per_second")
    metrics = {k.removeprefix("eval_"): v for k, v in prediction.metrics.items() if not k.endswith(timing)}
    out = Path(training_args.output_dir)
    if not trainer.is_world_process_zero():
        return metrics

    # model.save_pretrained, not Trainer.save_model: the latter adds training_args.bin, a pickle.
    (save_artifact or (lambda m, d: m.save_pretrained(d)))(trainer.model, str(out))
    tokenizer.save_pretrained(out)
    predictions = np.argmax(prediction.predictions, axis=-1)
    plots = [
        plot_training_curves(trainer.state.log_history, out / "training_curves.png"),
        plot_confusion_matrix(prediction.label_ids, predictions, data.label_names, out / "confusion_matrix.png"),
    ]
    results = {
        "task": "text-classification",
        "method": method,
        "artifact": artifact,
        "base_model": hub_id_for(base_model),
        "base_model_path": base_model,
        "dataset": data.source,
        "language": ["en"],
        "labels": data.label_names,
        "eval_split": "validation",
        "split_sizes": {name: len(split) for name, split in data.splits.items()},
        "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        "trainable_params": trainable,
        "total_params": total,
        "trainable_ratio": trainable / total,
        "train_runtime_s": round(train_seconds, 2),
        "train_samples_per_second": train_output.metrics.get("train_samples_per_second"),
        "peak_memory_mb": memory.peak_mb,
        "world_size": world_size(),
        "seed": training_args.seed,
        "device": decision.device,
        "precision": decision.precision,
        "resumed_from_checkpoint": resume_from,
        "hyperparameters": {
            "learning_rate": training_args.learning_rate,
            "num_train_epochs": training_args.num_train_epochs,
            "per_device_train_batch_size": training_args.per_device_train_batch_size,
            "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
            "effective_batch_size": training_args.per_device_train_batch_size
            * training_args.gradient_accumulation_steps
            * world_size(),
            "weight_decay": training_args.weight_decay,
            "warmup_steps": training_args.warmup_steps,
            "lr_scheduler_type": getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type),
            "max_seq_length": data_args.max_seq_length,
            "train_sampling_strategy": training_args.train_sampling_strategy,
            "gradient_checkpointing": training_args.gradient_checkpointing,
        },
        "log_history": trainer.state.log_history,
        "plots": [p.name for p in plots if p is not None],
        "versions": library_versions(),
        **(extra_results or {}),
    }
    results["disk_size_mb"] = directory_size_mb(out)
    write_model_card_and_results(out, results)
    log(f"validation accuracy {metrics.get('accuracy', float('nan')):.4f}; saved to {out}")
    return metrics


def write_model_card_and_results(out: Path, results: dict) -> None:
    """The card is rendered from the results, so both are written together, results last."""
    from hftune.cards import write_model_card

    write_model_card(out, results)
    write_results(out, results)


def finish() -> None:
    """Tear down the process group: without it 1 run in 5 aborted at exit with 2 gloo processes."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
