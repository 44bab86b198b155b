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
from hftune.runtime import peft_checkpointing_probe_quiet, warn

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
        use_dora=args.use_dora,
        use_rslora=args.use_rslora,
        init_lora_weights=True if args.init_lora_weights == "default" else args.init_lora_weights,
    )


# Initialisations that move the adapter's starting product out of the base weights (W_res = W - B0 A0).
MUTATING_INITS = ("pissa", "olora")


def check_lora_combination(args: LoraArguments) -> None:
    """Refuse the LoRA variant combinations that cannot train or cannot be saved correctly, before any load."""
    quantized = args.load_in_4bit or args.load_in_8bit
    if args.init_lora_weights in MUTATING_INITS and quantized:
        # peft refuses PiSSA on a quantised weight; OLoRA would re-quantise W_res, so the saved adapter over
        # the original 4-bit base would not reproduce the trained model.
        raise HftuneError(
            f"--init_lora_weights {args.init_lora_weights} rewrites the base weights, which a 4/8-bit base cannot "
            "hold exactly; drop --load_in_4bit/--load_in_8bit or use --init_lora_weights default"
        )
    if args.init_lora_weights in MUTATING_INITS and args.use_dora:
        # DoRA's magnitudes are norms of the mutated base weight: no plain LoRA over the original base equals them.
        raise HftuneError(
            f"--init_lora_weights {args.init_lora_weights} with --use_dora cannot be saved as an adapter of the "
            "original base model; choose one of them"
        )


def lora_variant(args: LoraArguments) -> str:
    """The registered method a LoRA run trains, from its flags (the first that applies)."""
    if args.load_in_4bit or args.load_in_8bit:
        return "qlora"
    if args.use_dora:
        return "dora"
    if args.use_rslora:
        return "rslora"
    if args.init_lora_weights in MUTATING_INITS:
        return args.init_lora_weights
    if args.loraplus_lr_ratio is not None:
        return "loraplus"
    return "lora"


def apply_lora(model: nn.Module, args: LoraArguments, task_type: str = "SEQ_CLS") -> nn.Module:
    from peft import get_peft_model, prepare_model_for_kbit_training
    from peft.utils import get_peft_model_state_dict

    check_lora_combination(args)
    if args.load_in_4bit or args.load_in_8bit:
        # Casts norms to fp32 and enables input gradients, so checkpointed QLoRA gets non-zero gradients.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        with peft_checkpointing_probe_quiet():
            model = get_peft_model(model, lora_config(model, args, task_type))
    except ValueError as err:
        raise HftuneError(f"LoRA could not be applied ({err}); check --lora_target_modules") from None
    if args.init_lora_weights in MUTATING_INITS:
        # B0 A0, kept to turn the trained adapter into one over the original base at save time (save_lora).
        model.hftune_initial_lora = {
            name: tensor.detach().clone()
            for name, tensor in get_peft_model_state_dict(model).items()
            if ".lora_A." in name or ".lora_B." in name
        }
    return model


def save_lora(model: nn.Module, folder: str | Path) -> None:
    """`save_pretrained`; after PiSSA/OLoRA, the adapter rewritten over the original base weights.

    The trained model computes (W - s B0 A0) + s B A = W + s [B | -B0] [A ; A0]: a LoRA of rank 2r with the same
    scale s. peft's own conversion (`path_initial_model_for_weight_conversion`) drops `modules_to_save`, i.e. the
    task head, so it is done here.
    """
    initial = getattr(model, "hftune_initial_lora", None)
    if initial is None:
        model.save_pretrained(folder)
        return
    import copy

    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(model)
    for name in state:
        if ".lora_A." in name:
            state[name] = torch.cat([state[name], initial[name]], dim=0)
        elif ".lora_B." in name:
            state[name] = torch.cat([state[name], -initial[name]], dim=1)
    config = copy.deepcopy(model.peft_config["default"])
    # alpha / r (rsLoRA: alpha / sqrt(r)) must stay the same at twice the rank.
    config.lora_alpha = config.lora_alpha * (2**0.5 if config.use_rslora else 2)
    config.r, config.init_lora_weights = 2 * config.r, True
    Path(folder).mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    save_file({k: v.contiguous() for k, v in state.items()}, Path(folder) / "adapter_model.safetensors",
              metadata={"format": "pt"})  # fmt: skip


# Above this rate for LoRA+'s B matrices (learning rate x ratio) the emotion leaderboard run collapsed.
LORAPLUS_B_RATE_WARNING = 2e-2


def loraplus_optimizer(model: nn.Module, training_args, ratio: float):
    """peft's LoRA+ optimizer: the B matrices (and 1-D parameters) at `ratio` x the learning rate, with the
    optimizer class and settings Trainer would have built from `training_args`."""
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer

    b_rate = training_args.learning_rate * ratio
    if b_rate > LORAPLUS_B_RATE_WARNING:
        warn(
            f"LoRA+ trains the B matrices at {b_rate:.3g} (--learning_rate {training_args.learning_rate:g} x "
            f"--loraplus_lr_ratio {ratio:g}); on emotion 3e-3 x 16 collapsed to one class over 3 epochs while "
            "1e-3 x 16 reached 0.8765 (BENCHMARKS.md 7b): consider --learning_rate 1e-3"
        )
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    kwargs.pop("lr", None)
    return create_loraplus_optimizer(
        model,
        optimizer_cls,
        lr=training_args.learning_rate,
        loraplus_lr_ratio=ratio,
        loraplus_weight_decay=training_args.weight_decay,
        weight_decay=training_args.weight_decay,
        **kwargs,
    )


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


def _plan_lora(model: nn.Module, settings: PlanSettings, **variant):
    # Quantisation is accounted for by the estimate itself; here only the adapter layout matters.
    args = LoraArguments(
        lora_r=settings.lora_r,
        lora_alpha=2 * settings.lora_r,
        lora_target_modules=settings.lora_target_modules,
        **variant,
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
        quoted_share="~0.1%",
    )
)
# The variants: the same recipe with one flag; each is its own row on the leaderboard.
for _name, _summary, _flags, _variant in (
    ("dora", "DoRA adapter (LoRA on the direction of each weight plus a trained magnitude)", ("--use_dora",),
     {"use_dora": True}),
    ("rslora", "rsLoRA adapter (LoRA scaled by alpha/sqrt(r))", ("--use_rslora",), {"use_rslora": True}),
    ("pissa", "LoRA started from the top singular vectors of each weight (PiSSA)", ("--init_lora_weights", "pissa"),
     {"init_lora_weights": "pissa"}),
    ("olora", "LoRA started from the QR decomposition of each weight (OLoRA)", ("--init_lora_weights", "olora"),
     {"init_lora_weights": "olora"}),
    ("loraplus", "LoRA+ (B matrices at 16x the learning rate of A)", ("--loraplus_lr_ratio", "16"), {}),
):  # fmt: skip
    register(
        Method(
            name=_name,
            summary=_summary,
            artifact="adapter",
            apply=apply_lora,
            plan=lambda model, settings, variant=_variant: _plan_lora(model, settings, **variant),
            recipe="sentiment_lora.py",
            recipe_flags=_flags,
            recipe_default=False,
            quoted_share="~0.1%",
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
