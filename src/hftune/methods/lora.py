"""LoRA (Hu et al., 2021) through peft, and QLoRA: LoRA over a 4-bit NF4 base (bitsandbytes)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hftune.config import LoraArguments
from hftune.errors import HftuneError
from hftune.methods.parts import head_module_names
from hftune.methods.registry import Artifact, Method, PlanSettings, register, register_artifact
from hftune.models import local_copy_of
from hftune.runtime import peft_checkpointing_probe_quiet

# Task-head modules kept out of quantisation. transformers matches each as a suffix of the module name or a
# regex from its start, hence `.*pooler` for BERT's `bert.pooler.dense`.
QUANTIZATION_SKIP_PATTERNS = ("classifier", "pre_classifier", "score", r".*pooler")


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


def load_lora_classifier(folder: Path, labels: list[str] | None = None):
    """The adapter's base model (the embedded copy for the embedded encoder's Hub id) plus the adapter and head."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForSequenceClassification

    if not labels:
        raise HftuneError(
            f"{folder / 'results.json'} lists no labels, so the adapter's task head cannot be rebuilt; "
            "evaluate a folder written by an hftune recipe"
        )
    base = local_copy_of(PeftConfig.from_pretrained(str(folder)).base_model_name_or_path)
    id2label = dict(enumerate(labels))
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    with peft_checkpointing_probe_quiet():
        return PeftModel.from_pretrained(model, str(folder))


def _plan_lora(model: nn.Module, settings: PlanSettings):
    # Quantisation is accounted for by the estimate itself; here only the adapter layout matters.
    args = LoraArguments(
        lora_r=settings.lora_r,
        lora_alpha=2 * settings.lora_r,
        lora_target_modules=settings.lora_target_modules,
    )
    return apply_lora(model, args, task_type="CAUSAL_LM" if settings.causal_lm else "SEQ_CLS")


register_artifact(Artifact("adapter", "adapter_config.json", load_lora_classifier))
register(
    Method(
        name="lora",
        summary="LoRA adapter (low-rank updates to the attention weights; the base model stays frozen)",
        artifact="adapter",
        apply=apply_lora,
        plan=_plan_lora,
        recipe="sentiment_lora.py",
    )
)
register(
    Method(
        name="qlora",
        summary="QLoRA adapter (LoRA trained over a 4/8-bit quantised, frozen base model)",
        artifact="adapter",
        apply=apply_lora,
        plan=_plan_lora,
        recipe="sentiment_lora.py",
        recipe_flags=("--load_in_4bit",),
        recipe_default=False,
        quantization="4bit",
        on_leaderboard=False,  # 4-bit matmuls on CPU are slow: add it with --methods on a GPU
    )
)
