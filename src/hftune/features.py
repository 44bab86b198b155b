"""Feature extraction: the pretrained body stays frozen and a classifier is fitted on its pooled hidden states.

The classic baseline: one pass of the encoder over the data (`datasets.map`, batched, no gradients), then a
scikit-learn logistic regression. The fitted classifier is saved as tensors, not as a pickle:
`features_head.safetensors` (`coef`, `intercept`) and `features_config.json` (pooling, base model, labels).
`load_feature_classifier(run_dir)` rebuilds it on the base encoder and reproduces the run's predictions.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from hftune.errors import HftuneError

FEATURES_WEIGHTS = "features_head.safetensors"
FEATURES_CONFIG = "features_config.json"
PROJECTION_PLOT = "feature_projection.png"
PROJECTION_MAX_POINTS = 5000  # UMAP time grows fast with points; a seeded subset shows the same structure
LOGREG_MAX_ITER = 3000
LOGREG_C = 1.0


def feature_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per text: the first token's state (`cls`) or the mean over real tokens (`mean`)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    raise HftuneError(f"pooling {pooling!r} is not supported; use --pooling cls or --pooling mean")


def extract_features(
    encoder: torch.nn.Module,
    tokenizer,
    texts: Dataset,
    *,
    pooling: str,
    max_seq_length: int,
    batch_size: int = 64,
    desc: str = "Extracting features",
) -> np.ndarray:
    """Pooled last hidden states of every row's `text`, as a float32 array (rows x hidden size)."""
    device = next(encoder.parameters()).device
    encoder.eval()

    def encode(batch: dict[str, list]) -> dict[str, Any]:
        inputs = tokenizer(
            batch["text"], truncation=True, max_length=max_seq_length, padding=True, return_tensors="pt"
        ).to(device)
        with torch.no_grad():
            hidden = encoder(**inputs).last_hidden_state
        return {
            "features": pool_hidden_states(hidden, inputs["attention_mask"], pooling).float().cpu().numpy()
        }

    # Batches of similar length waste little compute on padding; the order is restored below.
    order = np.argsort([len(t) for t in texts["text"]], kind="stable")
    mapped = texts.select(order).map(
        encode,
        batched=True,
        batch_size=batch_size,
        remove_columns=texts.column_names,
        keep_in_memory=True,
        # A fresh fingerprint: otherwise datasets hashes the encoder's weights to name a cache entry.
        new_fingerprint=uuid.uuid4().hex,
        desc=desc,
    )
    features = np.empty((len(order), len(mapped[0]["features"])), dtype=np.float32)
    features[order] = np.asarray(mapped.with_format("numpy")["features"], dtype=np.float32)
    return features


def fit_logistic_regression(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    c: float = LOGREG_C,
    max_iter: int = LOGREG_MAX_ITER,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit on standardised features; return (coef, intercept) folded back to act on the raw features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features)
    model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    model.fit(scaler.transform(features), labels)
    # w.(x - mu)/sigma + b  ==  (w/sigma).x + (b - w.mu/sigma): one linear layer, no scaler to ship.
    coef = model.coef_ / scaler.scale_
    intercept = model.intercept_ - coef @ scaler.mean_
    return coef.astype(np.float32), intercept.astype(np.float32)


def linear_scores(features: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Per-class scores (rows x classes); a binary sklearn model has one row of coef, for class 1."""
    z = features.astype(np.float64) @ coef.T.astype(np.float64) + intercept.astype(np.float64)
    return np.concatenate([-z / 2, z / 2], axis=1) if coef.shape[0] == 1 else z


def probabilities(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class FeatureClassifier:
    """A frozen encoder plus a linear classifier on its pooled states: `predict(["text", ...])`."""

    encoder: torch.nn.Module
    tokenizer: Any
    coef: np.ndarray
    intercept: np.ndarray
    pooling: str
    labels: list[str]
    max_seq_length: int

    def features(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        dataset = Dataset.from_dict({"text": list(texts)})
        return extract_features(
            self.encoder, self.tokenizer, dataset, pooling=self.pooling, max_seq_length=self.max_seq_length,
            batch_size=batch_size,
        )  # fmt: skip

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return probabilities(linear_scores(self.features(texts), self.coef, self.intercept))

    def predict(self, texts: list[str]) -> list[int]:
        return linear_scores(self.features(texts), self.coef, self.intercept).argmax(axis=1).tolist()


def save_feature_classifier(
    out_dir: str | Path,
    coef: np.ndarray,
    intercept: np.ndarray,
    *,
    pooling: str,
    base_model: str,
    base_model_hub_id: str,
    labels: list[str],
    max_seq_length: int,
) -> None:
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {"coef": np.ascontiguousarray(coef), "intercept": np.ascontiguousarray(intercept)},
        out_dir / FEATURES_WEIGHTS,
    )
    config = {
        "method": "features",
        "classifier": "logistic_regression",
        "pooling": pooling,
        "base_model_name_or_path": base_model,
        "base_model_hub_id": base_model_hub_id,
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "max_seq_length": max_seq_length,
        "hidden_size": int(coef.shape[1]),
    }
    (out_dir / FEATURES_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")


def load_feature_classifier(
    run_dir: str | Path, base_model_name_or_path: str | None = None, device: str = "cpu"
) -> FeatureClassifier:
    """Rebuild a saved feature classifier: the base encoder (its folder if present, else its Hub id) + the head."""
    from safetensors.numpy import load_file
    from transformers import AutoModel, AutoTokenizer

    run_dir = Path(run_dir)
    config_path = run_dir / FEATURES_CONFIG
    if not config_path.is_file():
        raise HftuneError(
            f"{run_dir} has no {FEATURES_CONFIG}; it is not a feature-extraction (logreg) run folder"
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    base = base_model_name_or_path or config["base_model_name_or_path"]
    if not base_model_name_or_path and not Path(base).is_dir():
        base = config["base_model_hub_id"]  # trained on another machine: fetch the base model by its Hub id
    tensors = load_file(run_dir / FEATURES_WEIGHTS)
    encoder = AutoModel.from_pretrained(base).to(device).eval()
    if encoder.config.hidden_size != tensors["coef"].shape[1]:
        raise HftuneError(
            f"{run_dir / FEATURES_WEIGHTS} expects {tensors['coef'].shape[1]}-dimensional features but base model "
            f"{base!r} has hidden size {encoder.config.hidden_size}; pass the base model the run was trained on"
        )
    tokenizer_source = run_dir if (run_dir / "tokenizer_config.json").is_file() else base
    return FeatureClassifier(
        encoder=encoder,
        tokenizer=AutoTokenizer.from_pretrained(tokenizer_source),
        coef=tensors["coef"],
        intercept=tensors["intercept"],
        pooling=config["pooling"],
        labels=[config["id2label"][str(i)] for i in range(len(config["id2label"]))],
        max_seq_length=config["max_seq_length"],
    )


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
    from hftune.plots import plt

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

    from hftune.cpu_training import use_all_cpu_cores
    from hftune.hardware import peak_memory_mb
    from hftune.metrics import classification_metrics
    from hftune.models import hub_id_for, hub_load_error
    from hftune.plots import plot_confusion_matrix
    from hftune.results import directory_size_mb, library_versions
    from hftune.training import log, write_model_card_and_results

    device = feature_device()
    if device == "cpu":
        log(f"CPU threads: {use_all_cpu_cores()}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or base_model)
        encoder = AutoModel.from_pretrained(base_model, trust_remote_code=model_args.trust_remote_code).to(
            device
        )
    except OSError as err:
        raise hub_load_error(base_model, err) from None
    encoder_params = sum(p.numel() for p in encoder.parameters())
    num_labels = len(data.label_names)
    head_params = (encoder.config.hidden_size + 1) * (1 if num_labels == 2 else num_labels)
    log(
        f"features: {head_params:,} trainable of {encoder_params + head_params:,} parameters "
        f"({100 * head_params / (encoder_params + head_params):.3f}%): logistic regression on {feature_args.pooling} pooling"
    )

    def extract(split: str) -> np.ndarray:
        return extract_features(
            encoder, tokenizer, data.splits[split], pooling=feature_args.pooling,
            max_seq_length=data_args.max_seq_length, batch_size=training_args.per_device_eval_batch_size,
            desc=f"Extracting {split} features",
        )  # fmt: skip

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

    out = Path(training_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_feature_classifier(
        out, coef, intercept, pooling=feature_args.pooling, base_model=base_model,
        base_model_hub_id=hub_id_for(base_model), labels=data.label_names, max_seq_length=data_args.max_seq_length,
    )  # fmt: skip
    tokenizer.save_pretrained(out)
    plots = [
        plot_confusion_matrix(validation_labels, scores.argmax(axis=1), data.label_names, out / "confusion_matrix.png"),
        plot_feature_projection(
            train_features, train_labels, data.label_names, out / PROJECTION_PLOT, method=feature_args.projection,
            seed=training_args.seed,
        ),
    ]  # fmt: skip
    results = {
        "task": "text-classification",
        "method": "features",
        "artifact": "features",
        "base_model": hub_id_for(base_model),
        "base_model_path": base_model,
        "dataset": data.source,
        "language": ["en"],
        "labels": data.label_names,
        "eval_split": "validation",
        "split_sizes": {name: len(split) for name, split in data.splits.items()},
        "metrics": {k: float(v) for k, v in metrics.items()},
        "trainable_params": head_params,
        "total_params": encoder_params + head_params,
        "trainable_ratio": head_params / (encoder_params + head_params),
        "train_runtime_s": round(train_seconds, 2),
        "train_samples_per_second": round(len(train_features) / train_seconds, 3),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "world_size": 1,
        "seed": training_args.seed,
        "device": device,
        "precision": "fp32",
        "hyperparameters": {
            "classifier": "logreg",
            "pooling": feature_args.pooling,
            "C": LOGREG_C,
            "max_iter": LOGREG_MAX_ITER,
            "standardised_features": True,
            "max_seq_length": data_args.max_seq_length,
            "feature_batch_size": training_args.per_device_eval_batch_size,
            "projection": feature_args.projection,
        },
        "plots": [p.name for p in plots],
        "versions": library_versions(),
    }
    results["disk_size_mb"] = directory_size_mb(out)
    write_model_card_and_results(out, results)
    log(f"validation accuracy {metrics['accuracy']:.4f}; saved to {out}")
    return metrics


def plot_projection_of_frozen_body(
    model: torch.nn.Module, tokenizer, data, out_dir: str | Path, *, feature_args, data_args, seed: int,
    batch_size: int = 64,
) -> Path:  # fmt: skip
    """The features plot for `--classifier head`: the body is frozen, so its features never change in training."""
    from hftune.methods import base_model_prefix

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
