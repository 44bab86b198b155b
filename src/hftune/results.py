"""`results.json`: the one record of a run that cards, leaderboards and people read."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from hftune.checks import check_results_record
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


def write_results(run_dir: str | Path, results: dict[str, Any]) -> Path:
    """Write atomically: readers never see half a file."""
    path = Path(run_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(
        json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    os.replace(partial, path)
    return path


def read_results(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise HftuneError(f"{path} does not exist; {run_dir} is not a finished hftune run folder")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HftuneError(f"{path} is not valid JSON ({err}); re-run the recipe to rewrite it") from None
    return check_results_record(record, path)
