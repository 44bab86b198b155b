"""`results.json`: the one record of a run that cards, leaderboards, `evaluate`, `publish` and people read.

Every recipe builds a `RunRecord`; every reader takes one from `read_results`. The dataclass names each field a
reader uses, so a reader never guesses a key. Keys a newer or older hftune wrote that this version does not know
are kept in `extra` and written back unchanged, so folders saved by earlier versions still load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from hftune.errors import HftuneError

RESULTS_FILE = "results.json"
TRACKED_PACKAGES = (
    "hftune",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "evaluate",
    "bitsandbytes",
)


@dataclass
class RunRecord:
    """What a finished run reports. Required: what it is (task, method, artifact) and what it scored."""

    task: str  # text-classification | instruction-tuning | jsl-seq2seq
    method: str  # a name from hftune.methods.METHODS, or `scratch` (JSL)
    artifact: str  # adapter | full | bitfit | features | remote-code
    dataset: str
    metrics: dict[str, float]
    eval_split: str = "validation"
    run_name: str | None = None  # the output folder's name: the card's title when not published
    repo_id: str | None = None  # set by `hftune publish`
    license: str | None = None
    # What it was trained from
    base_model: str | None = None  # Hub id (the embedded encoder by its Hub id)
    base_model_path: str | None = None  # what was loaded: a local folder or the same Hub id
    base_model_embedded: bool = False
    base_model_revision: str | None = None  # the Hub commit a continued model was loaded at
    base_model_vocab_hash: str | None = None  # JSL: the parent's vocabulary, which this model's extends
    dataset_name: str | None = None
    language: list[str] = field(default_factory=list)
    labels: list[str] | None = None  # classifiers: label names in id order
    instruction: str | None = None  # instruction tuning: the default instruction
    split_sizes: dict[str, int] = field(default_factory=dict)
    # How well, how big, how fast, where
    validation_metrics: dict[str, float] | None = None
    validation_loss: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_ratio: float | None = None
    train_runtime_s: float | None = None
    train_samples_per_second: float | None = None
    peak_memory_mb: float | None = None
    disk_size_mb: float | None = None
    world_size: int = 1
    seed: int | None = None
    device: str | None = None
    precision: str | None = None
    resumed_from_checkpoint: str | None = None
    # Generation (JSL and instruction tuning): the decoding settings the scores were made with, and speed
    generation: dict[str, Any] | None = None  # e.g. {"num_beams": 1, "max_new_tokens": 32}
    generation_latency_ms: float | None = None
    generation_sentences_per_second: float | None = None
    generation_speed: dict[str, float] | None = None
    vocabulary_size: int | None = None
    vocabulary_added: list[str] | None = None  # JSL continued: symbols appended to the parent's vocabulary
    # JSL continued: {"validation" | "original_test": {"before": metrics, "after": metrics}}
    continuation_scores: dict[str, dict[str, dict[str, float]]] | None = None
    best_checkpoint_metric: float | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # appended by `hftune evaluate`
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific keys, and keys of other versions

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = RESULTS_FILE) -> RunRecord:
        if not isinstance(data, dict):
            raise HftuneError(
                f"{source} holds a JSON {type(data).__name__}, not an object; it is not an hftune results file "
                "(re-run the recipe to rewrite it, or leave this run out)"
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [key for key in ("task", "method", "artifact", "dataset", "metrics") if key not in data]
        if missing:
            raise HftuneError(
                f"{source} lacks {', '.join(missing)}; it was not written by an hftune recipe (re-run the recipe)"
            )
        known = {key: value for key, value in data.items() if key in names}
        extra = {
            **data.get("extra", {}),
            **{k: v for k, v in data.items() if k not in names and k != "extra"},
        }
        if known.get("language") is None:
            known["language"] = []
        if not isinstance(known["metrics"], dict):
            raise HftuneError(
                f"{source}: `metrics` is a {type(known['metrics']).__name__}, not an object; re-run the recipe to "
                "rewrite it"
            )
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**data, **self.extra}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def directory_size_mb(path: Path, exclude_prefix: str = "checkpoint-") -> float:
    """Size of what a run saved, checkpoints excluded."""
    total = 0
    for item in Path(path).rglob("*"):
        rel = item.relative_to(path)
        if item.is_file() and not rel.parts[0].startswith((exclude_prefix, ".")):
            total += item.stat().st_size
    return round(total / 2**20, 3)


def write_results(run_dir: str | Path, record: RunRecord) -> Path:
    """Write atomically: readers never see half a file."""
    path = Path(run_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(
        json.dumps(record.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    os.replace(partial, path)
    return path


def read_results(run_dir: str | Path) -> RunRecord:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise HftuneError(f"{path} does not exist; {run_dir} is not a finished hftune run folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HftuneError(f"{path} is not valid JSON ({err}); re-run the recipe to rewrite it") from None
    return RunRecord.from_dict(data, source=str(path))
