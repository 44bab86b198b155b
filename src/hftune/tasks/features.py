"""Feature extraction as a task: one frozen pass of the encoder, a logistic regression fitted on the pooled
features, and a 2-D map of them (the classifier itself lives in `hftune.methods.features`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hftune.errors import HftuneError
from hftune.hardware import PrecisionDecision, peak_memory_mb, resolve_device
from hftune.methods.features import (
    LOGREG_C,
    LOGREG_MAX_ITER,
    extract_features,
    fit_logistic_regression,
    linear_scores,
    save_feature_classifier,
)
from hftune.methods.parts import base_model_prefix
from hftune.metrics import classification_metrics
from hftune.models import hub_id_for, hub_load_error
from hftune.reporting.plots import plot_confusion_matrix, plt
from hftune.results import RunRecord
from hftune.runtime import log
from hftune.training.cpu import use_all_cpu_cores
from hftune.training.lifecycle import claim_run, save_run, training_facts

PROJECTION_PLOT = "feature_projection.png"
PROJECTION_MAX_POINTS = 5000  # UMAP time grows fast with points; a seeded subset shows the same structure


def plot_feature_projection(
    features: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    path: str | Path,
    *,
    method: str = "pca",
    seed: int = 42,
) -> Path:
    """Scatter the features projected to 2-D (PCA or UMAP), one colour per label."""
    if len(features) > PROJECTION_MAX_POINTS:
        keep = np.random.default_rng(seed).choice(len(features), PROJECTION_MAX_POINTS, replace=False)
        features, labels = features[keep], labels[keep]
    if method == "umap":
        import umap

        points = umap.UMAP(n_components=2, random_state=seed).fit_transform(features)
    elif method == "pca":
        from sklearn.decomposition import PCA

        points = PCA(n_components=2, random_state=seed).fit_transform(features)
    else:
        raise HftuneError(
            f"projection {method!r} is not supported; use --projection pca or --projection umap"
        )
    fig, ax = plt.subplots(figsize=(7, 6))
    for i, name in enumerate(names):
        chosen = labels == i
        ax.scatter(points[chosen, 0], points[chosen, 1], s=6, alpha=0.6, label=name)
    ax.set_title(f"Training features ({method.upper()}, {len(features):,} points)")
    ax.legend(markerscale=3, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def run_feature_extraction(
    data,
    training_args,
    *,
    model_args,
    data_args,
    feature_args,
    base_model: str,
) -> dict[str, float]:
    """Extract features, fit the logistic regression, evaluate, save the head, plots, results and card."""
    from transformers import AutoModel, AutoTokenizer, EvalPrediction

    device = resolve_device()
    if device == "cpu":
        log(f"CPU threads: {use_all_cpu_cores()}")
    with claim_run(training_args.output_dir) as run:
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or base_model)
            encoder = AutoModel.from_pretrained(
                base_model, trust_remote_code=model_args.trust_remote_code
            ).to(device)
        except OSError as err:
            raise hub_load_error(base_model, err) from None
        encoder_params = sum(p.numel() for p in encoder.parameters())
        num_labels = len(data.label_names)
        head_params = (encoder.config.hidden_size + 1) * (1 if num_labels == 2 else num_labels)
        log(
            f"features: {head_params:,} trainable of {encoder_params + head_params:,} parameters "
            f"({100 * head_params / (encoder_params + head_params):.3f}%): logistic regression on "
            f"{feature_args.pooling} pooling"
        )

        def extract(split: str) -> np.ndarray:
            return extract_features(
                encoder, tokenizer, data.splits[split], pooling=feature_args.pooling,
                max_seq_length=data_args.max_seq_length, batch_size=training_args.per_device_eval_batch_size,
                desc=f"Extracting {split} features",
            )  # fmt: skip

        run.training_started()
        started = time.perf_counter()
        train_features = extract("train")
        train_labels = np.asarray(data.splits["train"]["label"])
        coef, intercept = fit_logistic_regression(train_features, train_labels, seed=training_args.seed)
        train_seconds = time.perf_counter() - started
        validation_features = extract("validation")
        validation_labels = np.asarray(data.splits["validation"]["label"])
        scores = linear_scores(validation_features, coef, intercept)
        metrics = classification_metrics(data.label_names)(
            EvalPrediction(predictions=scores, label_ids=validation_labels)
        )
        record = RunRecord(
            task="text-classification",
            method="features",
            artifact="features",
            base_model=hub_id_for(base_model),
            base_model_path=base_model,
            dataset=data.source,
            language=["en"],
            labels=data.label_names,
            eval_split="validation",
            split_sizes={name: len(split) for name, split in data.splits.items()},
            metrics={k: float(v) for k, v in metrics.items()},
            **training_facts(
                trainable=head_params,
                total=encoder_params + head_params,
                train_seconds=train_seconds,
                samples_per_second=round(len(train_features) / train_seconds, 3),
                peak_memory_mb=round(peak_memory_mb(device), 1),
                seed=training_args.seed,
                decision=PrecisionDecision(device, "fp32"),
            ),
            hyperparameters={
                "classifier": "logreg",
                "pooling": feature_args.pooling,
                "C": LOGREG_C,
                "max_iter": LOGREG_MAX_ITER,
                "standardised_features": True,
                "max_seq_length": data_args.max_seq_length,
                "feature_batch_size": training_args.per_device_eval_batch_size,
                "projection": feature_args.projection,
            },
        )

        def write_artifacts(folder: Path) -> None:
            save_feature_classifier(
                folder, coef, intercept, pooling=feature_args.pooling, base_model=base_model,
                base_model_hub_id=hub_id_for(base_model), labels=data.label_names,
                max_seq_length=data_args.max_seq_length,
            )  # fmt: skip
            tokenizer.save_pretrained(folder)

        def make_plots(folder: Path) -> list[Path | None]:
            return [
                plot_confusion_matrix(
                    validation_labels, scores.argmax(axis=1), data.label_names, folder / "confusion_matrix.png"
                ),
                plot_feature_projection(
                    train_features, train_labels, data.label_names, folder / PROJECTION_PLOT,
                    method=feature_args.projection, seed=training_args.seed,
                ),
            ]  # fmt: skip

        save_run(run.output_dir, record, write_artifacts=write_artifacts, make_plots=make_plots)
    log(f"validation accuracy {metrics['accuracy']:.4f}; saved to {run.output_dir}")
    return metrics


def plot_projection_of_frozen_body(
    model: torch.nn.Module, tokenizer, data, out_dir: str | Path, *, feature_args, data_args, seed: int,
    batch_size: int = 64,
) -> Path:  # fmt: skip
    """The features plot for `--classifier head`: the body is frozen, so its features never change in training."""
    train = data.splits["train"]
    subset = train.shuffle(seed=seed).select(range(min(PROJECTION_MAX_POINTS, len(train))))
    body = getattr(model, base_model_prefix(model))
    features = extract_features(
        body, tokenizer, subset.select_columns(["text"]), pooling=feature_args.pooling,
        max_seq_length=data_args.max_seq_length, batch_size=batch_size, desc="Extracting features for the plot",
    )  # fmt: skip
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return plot_feature_projection(
        features, np.asarray(subset["label"]), data.label_names, Path(out_dir) / PROJECTION_PLOT,
        method=feature_args.projection, seed=seed,
    )  # fmt: skip
