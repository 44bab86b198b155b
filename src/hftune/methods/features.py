"""Feature extraction: the pretrained body stays frozen; only a classifier on its pooled hidden states trains.

Two ways, one method: a scikit-learn logistic regression fitted on extracted features (saved as tensors, not a
pickle: `features_head.safetensors` with `coef` and `intercept`, and `features_config.json`), or the model's own
head trained by Trainer over the frozen body (`apply_features`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from hftune.errors import HftuneError
from hftune.methods.parts import head_parameter_names
from hftune.methods.registry import Artifact, Method, register, register_artifact

FEATURES_WEIGHTS = "features_head.safetensors"


FEATURES_CONFIG = "features_config.json"


LOGREG_MAX_ITER = 3000


LOGREG_C = 1.0


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


def apply_features(model: nn.Module, args=None) -> nn.Module:
    """Feature extraction with a trained head: the pretrained body is frozen, only the task head trains."""
    head = set(head_parameter_names(model))
    for name, param in model.named_parameters():
        param.requires_grad = name in head
    return model


register_artifact(
    Artifact("features", FEATURES_CONFIG, lambda folder, labels=None: load_feature_classifier(folder))
)
register(
    Method(
        name="features",
        summary="feature-extraction classifier (a head fitted on the frozen model's pooled hidden states)",
        artifact="features",
        apply=apply_features,
        plan=lambda model, settings: apply_features(model),
        recipe="sentiment_features.py",
        recipe_flags=("--classifier", "logreg"),
    )
)
