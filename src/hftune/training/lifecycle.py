"""The run lifecycle every recipe goes through, whatever it trains.

    with claim_run(training_args.output_dir) as run:       # one writer; leftovers of killed saves tidied
        ...                                                 # load data, build the trainer
        run.training_started()                              # from here a failure keeps the folder
        trainer.train(resume_from_checkpoint=run.resume_from)
        ...
        save_run(run.output_dir, record, write_artifacts=..., make_plots=...)

`save_run` writes everything into a hidden staging folder beside the run (artefacts, plots, the model card,
`results.json` last), records the sha256 of each weight file, and only then moves it into place: a kill at any
moment leaves the previous complete folder, or none. Checkpoints are made atomic by `AtomicCheckpointTrainer`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftune.persistence import OutputDirClaim, claim_output_dir, staged_final_artifacts
from hftune.reporting.cards import write_model_card
from hftune.results import RunRecord, directory_size_mb, library_versions, write_results
from hftune.runtime import is_main_process, log, world_size
from hftune.training.trainer import last_checkpoint


@dataclass
class Run:
    """A claimed output folder: where to write, and the checkpoint to resume from (None for a fresh run)."""

    output_dir: Path
    resume_from: str | None
    _claim: OutputDirClaim

    def training_started(self) -> None:
        """From here on a failure keeps the folder (its checkpoints are worth resuming from)."""
        self._claim.training_started()


@contextlib.contextmanager
def claim_run(output_dir: str | Path) -> Iterator[Run]:
    """Lock `output_dir` for this run (a second writer is refused, a stale lock taken over) and find its last
    complete checkpoint. A folder this run created is removed again if it fails before `training_started()`."""
    out = Path(output_dir)
    with claim_output_dir(out, is_main_process=is_main_process()) as claim:
        resume_from = last_checkpoint(str(out))
        if resume_from:
            log(f"resuming from {resume_from}")
        yield Run(out, resume_from, claim)


def training_facts(
    *, trainable: int, total: int, train_seconds: float, samples_per_second, peak_memory_mb, seed, decision,
    resume_from=None,
) -> dict[str, Any]:  # fmt: skip
    """The part of the record every recipe reports the same way: size, time, memory, where it ran."""
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_ratio": trainable / total,
        "train_runtime_s": round(train_seconds, 2),
        "train_samples_per_second": samples_per_second,
        "peak_memory_mb": peak_memory_mb,
        "world_size": world_size(),
        "seed": seed,
        "device": decision.device,
        "precision": decision.precision,
        "resumed_from_checkpoint": resume_from,
        "versions": library_versions(),
    }


def trainer_hyperparameters(training_args) -> dict[str, Any]:
    """The optimisation settings every Trainer run records the same way (`TrainingArguments` names)."""
    return {
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
    }


def save_run(
    output_dir: str | Path,
    record: RunRecord,
    *,
    write_artifacts: Callable[[Path], None],
    make_plots: Callable[[Path], list[Path | None]] = lambda staging: [],
) -> Path:
    """Write the run's final folder all or nothing: artefacts, plots, card, then results.json.

    `write_artifacts(staging)` saves the method's weights and tokenizer; `make_plots(staging)` returns the PNGs
    it wrote. The card is titled after the output folder (or the repo id once published), not the staging one.
    """
    out = Path(output_dir)
    record.run_name = out.resolve().name
    with staged_final_artifacts(out) as staging:
        write_artifacts(staging)
        record.plots = [plot.name for plot in make_plots(staging) if plot is not None]
        write_model_card(staging, record)
        record.disk_size_mb = directory_size_mb(staging)
        write_results(staging, record)  # last: its presence marks the folder complete
    return out
