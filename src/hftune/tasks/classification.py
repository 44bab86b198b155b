"""Text classification with Trainer: every classifier recipe (LoRA/QLoRA, full and frozen, BitFit, a head over
frozen features) trains, scores and saves through `run_classification`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import DataCollatorWithPadding, TrainingArguments

from hftune.config import DataArguments, ModelArguments, check_output_folder, set_seed
from hftune.data import ClassificationData, load_classification_data, tokenize_splits
from hftune.methods import get_method
from hftune.metrics import classification_metrics
from hftune.models import (
    attention_dropout_of,
    count_parameters,
    embedded_encoder_path,
    hub_id_for,
    load_classifier,
    resolve_model_name,
)
from hftune.reporting.plots import plot_confusion_matrix, plot_training_curves
from hftune.results import RunRecord
from hftune.runtime import log
from hftune.training.callbacks import MemoryCallback
from hftune.training.lifecycle import claim_run, save_run, trainer_hyperparameters, training_facts
from hftune.training.trainer import AtomicCheckpointTrainer

TRAIN_SUBSET_FOR_CURVES = 1000  # train-accuracy curve at every epoch without re-scoring all training data


def prepare_classifier_run(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    *,
    method: str,
    artifact: str | None = None,
) -> tuple[ClassificationData, str]:
    """What every classifier recipe checks and loads before its model, in this order: the output folder (a
    file, unwritable, or holding another run is refused), the base model's config (its kind and position
    limit, before any weight loads), the seed, then the data. Returns (data, base model name or folder)."""
    check_output_folder(
        training_args.output_dir,
        task="text-classification",
        method=method,
        artifact=artifact or get_method(method).artifact,
    )
    base_model = resolve_model_name(
        model_args.model_name_or_path,
        default=embedded_encoder_path(),
        kind="sequence-classification",
        max_seq_length=data_args.max_seq_length,
    )
    set_seed(training_args.seed)  # before the model is built: new heads and adapter weights draw from it
    return load_classification_data(data_args, seed=training_args.seed), base_model


def load_base_classifier(model_args: ModelArguments, base_model: str, data: ClassificationData, **kwargs):
    """(model, tokenizer): the base model with a new head for the data's labels, as `--model_name_or_path`,
    `--tokenizer_name`, `--trust_remote_code` and `--attention_dropout` say; `kwargs` go to `load_classifier`."""
    return load_classifier(
        base_model,
        data.id2label,
        tokenizer_name=model_args.tokenizer_name,
        trust_remote_code=model_args.trust_remote_code,
        attention_dropout=model_args.attention_dropout,
        **kwargs,
    )


def run_classification(
    model: torch.nn.Module,
    tokenizer,
    data: ClassificationData,
    training_args: TrainingArguments,
    *,
    model_args: ModelArguments,
    data_args: DataArguments,
    method: str,
    decision,
    base_model: str,
    artifact: str | None = None,
    save_artifact: Callable[[torch.nn.Module, str], None] | None = None,
    extra_results: dict | None = None,
    make_optimizer: Callable[[torch.nn.Module, TrainingArguments], torch.optim.Optimizer] | None = None,
) -> dict:
    """Train with Trainer, evaluate every epoch, keep the best model, resume, save, report.

    `artifact` defaults to the method's own (see `hftune.methods`); `save_artifact(model, folder)` saves it,
    by default `model.save_pretrained` (a peft adapter or a full model, both as safetensors).
    `make_optimizer(model, training_args)` replaces the optimizer Trainer would build (LoRA+'s parameter groups);
    Trainer still builds the learning-rate schedule over it.
    """
    artifact = artifact or get_method(method).artifact
    trainable, total = count_parameters(model)
    log(f"{method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")

    with claim_run(training_args.output_dir) as run:
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
            optimizers=(make_optimizer(model, training_args) if make_optimizer else None, None),
        )
        run.training_started()
        started = time.perf_counter()
        train_output = trainer.train(resume_from_checkpoint=run.resume_from)
        train_seconds = time.perf_counter() - started

        prediction = trainer.predict(tokenized["validation"], metric_key_prefix="eval")
        timing = ("runtime", "samples_per_second", "steps_per_second")
        metrics = {
            k.removeprefix("eval_"): v for k, v in prediction.metrics.items() if not k.endswith(timing)
        }
        if not trainer.is_world_process_zero():
            return metrics

        record = RunRecord(
            task="text-classification",
            method=method,
            artifact=artifact,
            base_model=hub_id_for(base_model),
            base_model_path=base_model,
            dataset=data.source,
            language=["en"],
            labels=data.label_names,
            eval_split="validation",
            split_sizes={name: len(split) for name, split in data.splits.items()},
            metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
            **training_facts(
                trainable=trainable,
                total=total,
                train_seconds=train_seconds,
                samples_per_second=train_output.metrics.get("train_samples_per_second"),
                peak_memory_mb=memory.peak_mb,
                seed=training_args.seed,
                decision=decision,
                resume_from=run.resume_from,
            ),
            hyperparameters={
                **trainer_hyperparameters(training_args),
                "max_seq_length": data_args.max_seq_length,
                "train_sampling_strategy": training_args.train_sampling_strategy,
                "gradient_checkpointing": training_args.gradient_checkpointing,
                # What the model trained with: the --attention_dropout override or the checkpoint's value
                "attention_dropout": attention_dropout_of(getattr(model, "config", None)),
            },
            log_history=trainer.state.log_history,
            extra=dict(extra_results or {}),
        )
        predictions = np.argmax(prediction.predictions, axis=-1)

        def write_artifacts(folder: Path) -> None:
            # model.save_pretrained, not Trainer.save_model: the latter adds training_args.bin, a pickle.
            (save_artifact or (lambda m, d: m.save_pretrained(d)))(trainer.model, str(folder))
            tokenizer.save_pretrained(folder)

        def make_plots(folder: Path) -> list[Path | None]:
            return [
                plot_training_curves(trainer.state.log_history, folder / "training_curves.png"),
                plot_confusion_matrix(
                    prediction.label_ids, predictions, data.label_names, folder / "confusion_matrix.png"
                ),
            ]

        save_run(run.output_dir, record, write_artifacts=write_artifacts, make_plots=make_plots)
    log(f"validation accuracy {metrics.get('accuracy', float('nan')):.4f}; saved to {run.output_dir}")
    return metrics
