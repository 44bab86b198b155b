"""IA3 (Liu et al., 2022): learned vectors that rescale the attention keys and values and the feed-forward
activations, through peft; the task head trains fully and is saved with them."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from hftune.errors import HftuneError
from hftune.methods.parts import head_module_names
from hftune.methods.registry import Method, PlanSettings, register
from hftune.runtime import peft_checkpointing_probe_quiet


@dataclass
class IA3Arguments:
    ia3_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules whose outputs IA3 rescales. Default: peft's choice for the architecture (for "
            "BERT/MiniLM: key, value and every `output.dense`, i.e. the attention and the feed-forward output)."
        },
    )
    ia3_feedforward_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Which of the targets are feed-forward layers (rescaled at their input, not output). "
            "Default: peft's choice for the architecture."
        },
    )


def apply_ia3(model: nn.Module, args: IA3Arguments | None = None) -> nn.Module:
    from peft import IA3Config, get_peft_model

    args = args or IA3Arguments()
    if (args.ia3_target_modules is None) != (args.ia3_feedforward_modules is None):
        raise HftuneError(
            "--ia3_target_modules and --ia3_feedforward_modules go together: give both, or neither for peft's "
            "defaults"
        )
    head = head_module_names(model)
    config = IA3Config(
        task_type="SEQ_CLS",
        target_modules=args.ia3_target_modules,
        feedforward_modules=args.ia3_feedforward_modules,
        exclude_modules=[name for name, _ in model.named_modules() if any(name.startswith(h) for h in head)]
        or None,
        modules_to_save=head or None,
    )
    try:
        with peft_checkpointing_probe_quiet():
            return get_peft_model(model, config)
    except ValueError as err:
        model_type = getattr(getattr(model, "config", None), "model_type", "?")
        raise HftuneError(
            f"IA3 could not be applied to {model_type} ({str(err).splitlines()[0][:200]}); pass "
            "--ia3_target_modules and --ia3_feedforward_modules, or use --method lora"
        ) from None


def _plan_ia3(model: nn.Module, settings: PlanSettings) -> nn.Module:
    return apply_ia3(model)


register(
    Method(
        name="ia3",
        summary="IA3 adapter (learned vectors rescaling keys, values and feed-forward activations; the base model stays frozen)",
        artifact="adapter",
        apply=apply_ia3,
        plan=_plan_ia3,
        recipe="sentiment_ia3.py",
    )
)
