"""The metrics hftune reports, shipped as `evaluate` modules inside the package.

`evaluate.load("accuracy")` needs the Hub (it fails offline) and lets a folder named `./accuracy` in the
working directory win silently. Each metric here is a folder `<name>/<name>.py` holding an
`evaluate.Metric`; `load_metric` loads it by absolute path, so it works with `HF_HUB_OFFLINE=1` from any
working directory. evaluate copies the script into `$HF_MODULES_CACHE/evaluate_modules/metrics/<name>/<hash>/`
(`HF_MODULES_CACHE` defaults to `$HF_HOME/modules`) and imports it from there.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hftune.errors import HftuneError

if TYPE_CHECKING:
    import evaluate
    from transformers import EvalPrediction

METRIC_NAMES: tuple[str, ...] = ("accuracy", "f1", "gloss_wer", "bleu", "chrf", "exact_match")
GLOSS_METRIC_NAMES: tuple[str, ...] = ("gloss_wer", "bleu", "chrf", "exact_match")

_METRICS_DIR = Path(__file__).resolve().parent


def metric_path(name: str) -> str:
    """Absolute path of the metric script `<name>/<name>.py` (what `evaluate.load` is given)."""
    if name not in METRIC_NAMES:
        raise HftuneError(f"unknown metric {name!r}; hftune ships {', '.join(METRIC_NAMES)}")
    path = _METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        raise HftuneError(f"metric script {path} is missing from the hftune install; reinstall hftune")
    return str(path)


def load_metric(name: str, **load_kwargs: Any) -> evaluate.EvaluationModule:
    """Load one of `METRIC_NAMES` by path, offline; `load_kwargs` go to `evaluate.load`.

    Results stay in memory unless `keep_in_memory=False` is passed (needed only for evaluate's
    multi-process mode, which shares predictions through files).
    """
    import evaluate

    load_kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(metric_path(name), **load_kwargs)


def load_metrics(*names: str) -> evaluate.CombinedEvaluations:
    """`evaluate.combine` of several shipped metrics: one `compute` call returns all their scores."""
    import evaluate

    if not names:
        raise HftuneError(f"load_metrics needs at least one metric name out of {', '.join(METRIC_NAMES)}")
    return evaluate.combine([load_metric(name) for name in names])


def _metric_key(label: str) -> str:
    # Label names become metric names (`f1_<label>`): keep them to word characters.
    return re.sub(r"\W+", "_", str(label)).strip("_").lower() or "label"


def classification_metrics(label_names: Sequence[str]) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `Trainer` `compute_metrics`: accuracy, f1_macro and `f1_<label>` for each label name.

    Accepts logits (argmax over the last axis) or class ids; a tuple of outputs uses its first element.
    """
    label_names = list(label_names)
    if not label_names:
        raise HftuneError("classification_metrics needs the label names, got an empty list")
    keys = [f"f1_{_metric_key(label)}" for label in label_names]
    if len(set(keys)) != len(keys):
        raise HftuneError(f"label names {label_names} collide as metric names {keys}; rename the labels")
    accuracy = load_metric("accuracy")
    f1 = load_metric("f1")
    label_ids = list(range(len(label_names)))

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        predictions = eval_prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions = np.asarray(predictions)
        if predictions.ndim > 1:
            predictions = predictions.argmax(axis=-1)
        references = np.asarray(eval_prediction.label_ids)
        results = {
            "accuracy": accuracy.compute(predictions=predictions, references=references)["accuracy"],
            "f1_macro": f1.compute(
                predictions=predictions, references=references, labels=label_ids, average="macro"
            )["f1"],
        }
        per_class = f1.compute(predictions=predictions, references=references, labels=label_ids, average=None)
        results.update(zip(keys, per_class["f1"], strict=True))
        return results

    return compute_metrics


@functools.cache
def _gloss_suite() -> evaluate.CombinedEvaluations:
    return load_metrics(*GLOSS_METRIC_NAMES)


def gloss_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """gloss_wer (0-1), bleu (0-100, sacreBLEU, tokenisation off), chrf (0-100) and exact_match (0-1)."""
    if len(predictions) != len(references):
        raise HftuneError(
            f"gloss_metrics got {len(predictions)} predictions for {len(references)} references; "
            "pass one prediction per reference"
        )
    if not references:
        raise HftuneError("gloss_metrics got no references; evaluate on a non-empty split")
    scores = _gloss_suite().compute(predictions=predictions, references=references)
    return {name: float(scores[name]) for name in GLOSS_METRIC_NAMES}
