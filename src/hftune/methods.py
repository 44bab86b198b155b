"""Fine-tuning methods. Each is one function `apply_<method>(model, args) -> model` that decides which
parameters train; the Trainer then optimises exactly the parameters left with `requires_grad=True`
(frozen ones never enter the optimizer and never get gradient buffers).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from hftune.config import FreezeArguments, LoraArguments
from hftune.errors import HftuneError
from hftune.persistence import verify_weights
from hftune.runtime import peft_checkpointing_probe_quiet

# Task-head modules kept out of quantisation. transformers matches each as a suffix of the module name or a
# regex from its start, hence `.*pooler` for BERT's `bert.pooler.dense`.
QUANTIZATION_SKIP_PATTERNS = ("classifier", "pre_classifier", "score", r".*pooler")


# --- locating parts of a model ---------------------------------------------------------------------


def base_model_prefix(model: nn.Module) -> str:
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not hasattr(model, prefix):
        raise HftuneError(
            f"{type(model).__name__} has no base model attribute; cannot tell body from task head"
        )
    return prefix


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the longest ModuleList in the body (BERT, DistilBERT, RoBERTa, Llama...)."""
    body = getattr(model, base_model_prefix(model))
    stacks = [m for m in body.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not stacks:
        raise HftuneError(f"no stack of layers found in {type(model).__name__}; cannot freeze by layer")
    return max(stacks, key=len)


def embedding_module(model: nn.Module) -> nn.Module:
    body = getattr(model, base_model_prefix(model))
    return getattr(body, "embeddings", None) or model.get_input_embeddings()


def head_module_names(model: nn.Module) -> list[str]:
    """The modules that make up the task head: everything outside the pretrained body, plus BERT's pooler.

    The pooler only serves classification (RoBERTa and DistilBERT keep the same dense layer inside their
    head), and in sentence-embedding checkpoints such as all-MiniLM it was never trained: left frozen it
    would squeeze every method through a stale layer.
    """
    prefix = base_model_prefix(model)
    names = sorted(
        {name.split(".")[0] for name, _ in model.named_parameters() if not name.startswith(prefix + ".")}
    )
    pooler = getattr(getattr(model, prefix), "pooler", None)
    if isinstance(pooler, nn.Module) and any(True for _ in pooler.parameters()):
        names.append(f"{prefix}.pooler")
    return names


def head_parameter_names(model: nn.Module) -> list[str]:
    heads = tuple(f"{name}." for name in head_module_names(model))
    return [name for name, _ in model.named_parameters() if name.startswith(heads)]


# --- methods ---------------------------------------------------------------------------------------


def apply_full(model: nn.Module, args=None) -> nn.Module:
    for param in model.parameters():
        param.requires_grad = True
    return model


def apply_freeze(model: nn.Module, args: FreezeArguments) -> nn.Module:
    """Freeze embeddings and/or the lower N layers (negative N: all but the top |N|); train the rest."""
    apply_full(model)
    layers = encoder_layers(model)
    n = args.freeze_layers
    if abs(n) > len(layers):
        raise HftuneError(
            f"--freeze_layers {n}: the model has only {len(layers)} layers; use -{len(layers)}..{len(layers)}"
        )
    frozen = list(layers[:n]) if n >= 0 else list(layers[: len(layers) + n])
    if args.freeze_embeddings:
        frozen.append(embedding_module(model))
    for module in frozen:
        for param in module.parameters():
            param.requires_grad = False
    return model


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


def apply_features(model: nn.Module, args=None) -> nn.Module:
    """Feature extraction with a trained head: the pretrained body is frozen, only the task head trains."""
    head = set(head_parameter_names(model))
    for name, param in model.named_parameters():
        param.requires_grad = name in head
    return model


# peft's per-architecture default (query/value for BERT-style models, as in the LoRA paper) lacks DistilBERT.
EXTRA_LORA_TARGETS: dict[str, list[str]] = {"distilbert": ["q_lin", "v_lin"]}


def lora_target_modules(model: nn.Module, args: LoraArguments) -> list[str] | str:
    """--lora_target_modules if given, else peft's default for the architecture, else every linear layer.

    Attention-only targets keep LoRA's activation memory below full fine-tuning's: adapting the feed-forward
    output layer would make autograd save its wide (4 x hidden) input for the LoRA gradient.
    """
    if args.lora_target_modules == ["all-linear"]:
        return "all-linear"  # peft's keyword, not a module name
    if args.lora_target_modules:
        return args.lora_target_modules
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = PEFT_DEFAULTS.get(model_type) or EXTRA_LORA_TARGETS.get(model_type)
    return list(targets) if targets else "all-linear"


def lora_config(model: nn.Module, args: LoraArguments, task_type: str = "SEQ_CLS"):
    from peft import LoraConfig

    # The head is new (or task-specific): train it fully, save it with the adapter, put no LoRA inside it.
    head = head_module_names(model) if task_type == "SEQ_CLS" else []
    inside_head = [
        name for name, _ in model.named_modules() if any(name == h or name.startswith(h + ".") for h in head)
    ]
    return LoraConfig(
        task_type=task_type,
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=lora_target_modules(model, args),
        exclude_modules=inside_head or None,
        modules_to_save=head or None,
    )


def apply_lora(model: nn.Module, args: LoraArguments, task_type: str = "SEQ_CLS") -> nn.Module:
    from peft import get_peft_model, prepare_model_for_kbit_training

    if args.load_in_4bit or args.load_in_8bit:
        # Casts norms to fp32 and enables input gradients, so checkpointed QLoRA gets non-zero gradients.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        with peft_checkpointing_probe_quiet():
            return get_peft_model(model, lora_config(model, args, task_type))
    except ValueError as err:
        raise HftuneError(f"LoRA could not be applied ({err}); check --lora_target_modules") from None


def quantization_config(
    args: LoraArguments, model_type_head: list[str] | None = None, compute_dtype=torch.float32
):
    """bitsandbytes settings for --load_in_4bit (QLoRA, NF4) or --load_in_8bit; None when neither is set."""
    if args.load_in_4bit and args.load_in_8bit:
        raise HftuneError("--load_in_4bit and --load_in_8bit are both set; choose one")
    if not (args.load_in_4bit or args.load_in_8bit):
        return None
    from transformers import BitsAndBytesConfig

    # Quantising the task head breaks modules_to_save ("only floating point tensors can require grad").
    skip = list(model_type_head or QUANTIZATION_SKIP_PATTERNS)
    if args.load_in_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


# --- BitFit artefact: only the trained tensors ------------------------------------------------------

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


METHODS = {
    "full": apply_full,
    "freeze": apply_freeze,
    "bitfit": apply_bitfit,
    "features": apply_features,
    "lora": apply_lora,
    "qlora": apply_lora,
}
