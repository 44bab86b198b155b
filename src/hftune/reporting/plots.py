"""PNG figures of a run: what people would rather see than read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines and CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(log_history: list[dict], path: str | Path, metric: str = "accuracy") -> Path | None:
    """Loss per step (train) and per epoch (validation); `metric` per epoch for train and validation."""
    train = [(h["epoch"], h["loss"]) for h in log_history if "loss" in h and "epoch" in h]
    evals = [h for h in log_history if "eval_validation_loss" in h or "eval_loss" in h]
    if not train and not evals:
        return None

    def series(key_options: Sequence[str]) -> list[tuple[float, float]]:
        return [(h["epoch"], h[k]) for h in evals for k in key_options if k in h]

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax_loss.plot(*zip(*train, strict=True), label="train (logged steps)", alpha=0.7)
    for label, keys in (
        ("validation", ("eval_validation_loss", "eval_loss")),
        ("train subset", ("eval_train_loss",)),
    ):
        points = series(keys)
        if points:
            ax_loss.plot(*zip(*points, strict=True), marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    for label, keys in (
        ("validation", (f"eval_validation_{metric}", f"eval_{metric}")),
        ("train subset", (f"eval_train_{metric}",)),
    ):
        points = series(keys)
        if points:
            ax_metric.plot(*zip(*points, strict=True), marker="o", label=label)
    ax_metric.set(xlabel="epoch", ylabel=metric, title=metric.replace("_", " ").capitalize())
    ax_metric.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion_matrix(
    labels: Sequence[int], predictions: Sequence[int], names: Sequence[str], path: str | Path
) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 1.2 * len(names) + 2))
    ConfusionMatrixDisplay.from_predictions(
        labels, predictions, labels=list(range(len(names))), display_labels=list(names), ax=ax, colorbar=False,
        xticks_rotation=45,
    )  # fmt: skip
    ax.set_title("Validation confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
