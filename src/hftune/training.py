"""Trainer wiring shared by the recipes: hardware preflight, metrics, callbacks, resume, save, report."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from hftune.config import DataArguments, ModelArguments
from hftune.cpu_training import prepare_cpu_training
from hftune.data import ClassificationData, tokenize_splits
from hftune.models import attention_dropout_of, count_parameters, hub_id_for
from hftune.persistence import (
    checkpoint_staging_dir,
    claim_output_dir,
    pause_before_commit,
    replace_directory,
    staged_final_artifacts,
)
from hftune.results import directory_size_mb, library_versions, write_results

if TYPE_CHECKING:
    from hftune.hardware import HardwareInfo

TRAIN_SUBSET_FOR_CURVES = 1000  # train-accuracy curve at every epoch without re-scoring all training data


def log(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"hftune: {message}", flush=True)


def world_size() -> int:
    """Processes that really train together: the joined process group, not the launcher's WORLD_SIZE (a
    `MULTI_GPU` config without `use_cpu` on a GPU-less machine starts independent single processes)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def prepare_training_args(
    training_args: TrainingArguments,
    model_args: ModelArguments,
    model: torch.nn.Module,
    *,
    quantization: str | None = None,
    max_seq_length: int = 128,
    hardware_info: HardwareInfo | None = None,
) -> tuple[TrainingArguments, Any]:
    """Apply the hardware preflight (precision, device) and memory budget; return new args and the decision.

    `max_seq_length` is the longest training sequence, which the memory budget plans for. `hardware_info` (a
    `hftune.hardware.HardwareInfo`) decides for a described machine instead of this one: the GPU check
    emulates a card without bf16 this way.
    """
    from hftune import hardware, memory

    info = hardware_info or hardware.detect_hardware()
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    decision = hardware.decide_precision(
        info, model_args.precision, model_type=model_type, quantization=quantization
    )
    log(decision.summary())
    # TrainingArguments also reads the precision accelerate's config exported; the decision must win.
    os.environ["ACCELERATE_MIXED_PRECISION"] = {"fp32": "no"}.get(decision.precision, decision.precision)
    overrides: dict[str, Any] = dict(decision.trainer_kwargs)
    # Models whose loss is a per-batch mean (BERT & co.) would report loss x world size otherwise.
    overrides["average_tokens_across_devices"] = False
    if decision.device == "cpu":
        log(f"CPU training: {prepare_cpu_training(model)}")
    if model_args.max_memory_fraction is not None:
        hardware.set_cuda_memory_fraction(model_args.max_memory_fraction)
    training_args = dataclasses.replace(training_args, **overrides)
    if model_args.memory_budget:
        plan = memory.plan_for_training_args(
            model, training_args, model_args.memory_budget, decision, seq_len=max_seq_length
        )
        training_args = memory.apply_memory_budget(training_args, plan)
        log(f"--memory_budget {model_args.memory_budget}: {plan.summary()}")
    if training_args.activation_checkpointing:
        # Reentrant checkpointing gives frozen embeddings and LoRA zero gradients (peft#1142, transformers#26221).
        checkpointing_kwargs = dict(training_args.activation_checkpointing_kwargs or {})
        checkpointing_kwargs.setdefault("use_reentrant", False)
        training_args = dataclasses.replace(
            training_args, activation_checkpointing_kwargs=checkpointing_kwargs
        )
    return training_args, decision


def run_facts(
    *,
    trainable: int,
    total: int,
    train_seconds: float,
    train_output,
    memory,
    training_args,
    decision,
    resume_from,
) -> dict[str, Any]:
    """The part of results.json every recipe reports the same way: size, time, memory, where it ran."""
    return {
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
    }


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N`: Trainer writes trainer_state.json last, so a folder without it
    (from a save that was not atomic) is skipped."""
    if not os.path.isdir(output_dir):
        return None
    complete = {
        int(match.group(1)): entry.path
        for entry in os.scandir(output_dir)
        if (match := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", entry.name))
        and os.path.isfile(os.path.join(entry.path, "trainer_state.json"))
    }
    return complete[max(complete)] if complete else None


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """`LengthGroupedSampler` whose order depends only on (seed, epoch), as accelerate's seedable sampler.

    The stock sampler draws from the global torch RNG when an epoch starts. A run resumed mid-epoch restores
    that RNG only after skipping the trained batches, so it replayed a different order than the run it
    continues: batches trained twice, others never, and metrics unequal to an uninterrupted run.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Trainer calls this before every epoch, resumed or not
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class AtomicCheckpointTrainer(Trainer):
    """A Trainer whose checkpoints appear whole or not at all, and whose resumed runs see the same batches.

    Each checkpoint is written by the stock `_save_checkpoint` under a hidden staging folder
    (`.checkpoint-N.partial/checkpoint-N`, the same path on every rank), then renamed into place; rotation
    and best-model tracking are then redone on the real folder, since the stock code ran them in staging.
    """

    _staging_root: str | None = None

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)
        return sampler

    def _get_output_dir(self, trial) -> str:
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = checkpoint_staging_dir(run_dir, name)
        self._staging_root = str(staging_root)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            final = os.path.join(run_dir, name)
            best = self.state.best_model_checkpoint
            if best and Path(best).parent == staging_root:
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(staging_root, name, "trainer_state.json"))
            pause_before_commit(final)
            replace_directory(staging_root / name, final)
            staging_root.rmdir()
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()


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

    out = Path(training_args.output_dir)
    # One writer per folder; a failure before training starts removes a folder this run created.
    with claim_output_dir(out, is_main_process=int(os.environ.get("RANK", "0")) == 0) as claim:
        tokenized = tokenize_splits(data.splits, tokenizer, data_args.max_seq_length)
        train_subset = tokenized["train"].select(range(min(TRAIN_SUBSET_FOR_CURVES, len(tokenized["train"]))))
        memory = MemoryCallback()
        pad_to = 8 if decision.device == "cuda" else None  # tensor-core friendly shapes on GPUs only
        trainer = AtomicCheckpointTrainer(
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
        claim.training_started()
        started = time.perf_counter()
        train_output = trainer.train(resume_from_checkpoint=resume_from)
        train_seconds = time.perf_counter() - started

        prediction = trainer.predict(tokenized["validation"], metric_key_prefix="eval")
        timing = ("runtime", "samples_per_second", "steps_per_second")
        metrics = {
            k.removeprefix("eval_"): v for k, v in prediction.metrics.items() if not k.endswith(timing)
        }
        if not trainer.is_world_process_zero():
            return metrics

        # Written beside the run folder, then moved in with results.json last: a kill leaves the old artefacts.
        with staged_final_artifacts(out) as staging:
            # model.save_pretrained, not Trainer.save_model: the latter adds training_args.bin, a pickle.
            (save_artifact or (lambda m, d: m.save_pretrained(d)))(trainer.model, str(staging))
            tokenizer.save_pretrained(staging)
            predictions = np.argmax(prediction.predictions, axis=-1)
            plots = [
                plot_training_curves(trainer.state.log_history, staging / "training_curves.png"),
                plot_confusion_matrix(
                    prediction.label_ids, predictions, data.label_names, staging / "confusion_matrix.png"
                ),
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
                **run_facts(
                    trainable=trainable,
                    total=total,
                    train_seconds=train_seconds,
                    train_output=train_output,
                    memory=memory,
                    training_args=training_args,
                    decision=decision,
                    resume_from=resume_from,
                ),
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
                    "lr_scheduler_type": getattr(
                        training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type
                    ),
                    "max_seq_length": data_args.max_seq_length,
                    "train_sampling_strategy": training_args.train_sampling_strategy,
                    "gradient_checkpointing": training_args.gradient_checkpointing,
                    # What the model trained with: the --attention_dropout override or the checkpoint's value
                    "attention_dropout": attention_dropout_of(getattr(model, "config", None)),
                },
                "log_history": trainer.state.log_history,
                "plots": [p.name for p in plots if p is not None],
                "versions": library_versions(),
                **(extra_results or {}),
            }
            results["disk_size_mb"] = directory_size_mb(staging)
            write_model_card_and_results(staging, results)
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
