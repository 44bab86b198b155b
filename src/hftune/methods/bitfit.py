"""BitFit (Ben Zaken et al., 2022): every bias term and the task head train; only those tensors are saved."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from hftune.errors import HftuneError
from hftune.methods.parts import head_parameter_names
from hftune.methods.registry import Artifact, Method, register, register_artifact
from hftune.models import local_copy_of
from hftune.persistence import verify_weights


def apply_bitfit(model: nn.Module, args=None) -> nn.Module:
    """BitFit (Ben Zaken et al., 2022): train every bias term and the task head, freeze all else."""
    head = set(head_parameter_names(model))
    biases = [name for name, _ in model.named_parameters() if name.endswith(".bias") and name not in head]
    if not biases:
        raise HftuneError(
            f"{type(model).__name__} has no bias terms in its body, so BitFit would train only the head; "
            "use --method lora or freeze instead"
        )
    for name, param in model.named_parameters():
        param.requires_grad = name in head or name.endswith(".bias")
    return model


BITFIT_WEIGHTS = "bitfit_model.safetensors"


BITFIT_CONFIG = "bitfit_config.json"


def save_bitfit(model: nn.Module, out_dir: str | Path, base_model_name_or_path: str) -> None:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}
    save_file(trained, out_dir / BITFIT_WEIGHTS)
    config = {
        "method": "bitfit",
        "base_model_name_or_path": base_model_name_or_path,
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "num_labels": model.config.num_labels,
        "tensors": sorted(trained),
    }
    (out_dir / BITFIT_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
    model.config.save_pretrained(out_dir)


def load_bitfit(run_dir: str | Path, base_model_name_or_path: str | None = None, device: str = "cpu"):
    """Rebuild the classifier: the base model from its own folder or Hub id, then the saved biases and head."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    run_dir = Path(run_dir)
    config_path = run_dir / BITFIT_CONFIG
    if not config_path.is_file():
        raise HftuneError(f"{run_dir} has no {BITFIT_CONFIG}; it is not a BitFit run folder")
    verify_weights(run_dir)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    base = base_model_name_or_path or config["base_model_name_or_path"]
    id2label = {int(k): v for k, v in config["id2label"].items()}
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    tensors = load_file(run_dir / BITFIT_WEIGHTS, device="cpu")
    own = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise HftuneError(
            f"{run_dir / BITFIT_WEIGHTS} holds tensors {unknown[:3]} that base model {base!r} does not have; "
            "it was trained on another base model"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            if own[name].shape != value.shape:
                raise HftuneError(
                    f"{run_dir / BITFIT_WEIGHTS}: tensor {name} has shape {tuple(value.shape)} but base model "
                    f"{base!r} expects {tuple(own[name].shape)}; it was trained on another base model"
                )
            own[name].copy_(value)
    return model.to(device).eval()


def _load_bitfit_classifier(folder: Path, labels: list[str] | None = None):
    config = json.loads((Path(folder) / BITFIT_CONFIG).read_text(encoding="utf-8"))
    return load_bitfit(folder, local_copy_of(config["base_model_name_or_path"]))


register_artifact(Artifact("bitfit", BITFIT_CONFIG, _load_bitfit_classifier))
register(
    Method(
        name="bitfit",
        summary="BitFit fine-tune (only the bias terms and the task head trained)",
        artifact="bitfit",
        apply=apply_bitfit,
        plan=lambda model, settings: apply_bitfit(model),
        recipe="sentiment_bitfit.py",
        quoted_share="~0.05%",
    )
)
