"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021) as a peft custom tuner.

Each adapter is a small residual MLP, `h + up(act(down(h)))`, inserted after a sub-layer's output projection and
before that block's own residual connection and LayerNorm: Houlsby puts one after the attention block and one
after the feed-forward block of every layer, Pfeiffer only the one after the feed-forward block. The base model
stays frozen; the adapters and the task head train.

AdapterHub's `adapters` package pins transformers 4.x, so the adapters are built on peft's own tuner machinery
(`BaseTuner`, `BaseTunerLayer`, `register_peft_method`): `save_pretrained` writes `adapter_model.safetensors` and
`adapter_config.json` like any peft adapter, and `PeftModel.from_pretrained` reloads them in any process that has
imported hftune (which registers the method with peft).

Adapters cannot be merged into the base weights: the non-linearity between `down` and `up` is not a linear map.
Every forward pass runs the extra layers, which is the inference overhead adapters are known for;
`merge_and_unload()` refuses with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import PeftType, register_peft_method
from torch import nn
from transformers.activations import ACT2FN

from hftune.errors import HftuneError
from hftune.methods.parts import head_module_names
from hftune.methods.registry import Method, PlanSettings, register
from hftune.runtime import peft_checkpointing_probe_quiet

PEFT_NAME = "bottleneck"  # peft's method name; peft_type "BOTTLENECK" in adapter_config.json
NOT_MERGEABLE = (
    "bottleneck adapters cannot be merged into the base weights: their non-linearity (down -> activation -> up) "
    "is not a linear map, so every forward pass runs them (the inference overhead of adapters)"
)
NON_LINEARITIES = ("relu", "gelu", "silu", "tanh")
ADAPTER_CONFIGS = ("houlsby", "pfeiffer")

# model_type -> (attention output projection, feed-forward output projection), as regexes over module names.
BOTTLENECK_TARGETS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        ("bert", "roberta", "xlm-roberta", "camembert", "electra", "mpnet"),
        (r"attention\.output\.dense", r"layer\.\d+\.output\.dense"),
    ),
    "distilbert": (r"attention\.out_lin", r"ffn\.lin2"),
    "modernbert": (r"attn\.Wo", r"mlp\.Wo"),
    **dict.fromkeys(
        ("llama", "mistral", "qwen2", "gemma", "gemma3_text"), (r"self_attn\.o_proj", r"mlp\.down_proj")
    ),
}


def bottleneck_targets(model_type: str | None, adapter_config: str) -> str:
    """The regex of module names the adapters follow: both projections (houlsby) or the feed-forward one (pfeiffer)."""
    if model_type not in BOTTLENECK_TARGETS:
        raise HftuneError(
            f"--method adapters does not know where the attention and feed-forward blocks of model type "
            f"{model_type!r} end (it knows {', '.join(sorted(BOTTLENECK_TARGETS))}); use --method lora, ia3 or "
            "bitfit for this model"
        )
    attention, feedforward = BOTTLENECK_TARGETS[model_type]
    chosen = f"{attention}|{feedforward}" if adapter_config == "houlsby" else feedforward
    return rf".*\.({chosen})"


def _add_peft_type(name: str) -> None:
    """Add a member to peft's `PeftType` enum, which `register_peft_method` requires and offers no hook for."""
    if name in PeftType.__members__:
        return
    member = str.__new__(PeftType, name)
    member._name_, member._value_ = name, name
    member.__objclass__ = PeftType
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)


_add_peft_type(PEFT_NAME.upper())


@dataclass
class BottleneckConfig(PeftConfig):
    """peft configuration of bottleneck adapters (written to adapter_config.json)."""

    adapter_config: str = field(default="houlsby", metadata={"help": "houlsby | pfeiffer"})
    reduction_factor: int = field(default=16, metadata={"help": "hidden size / adapter bottleneck width"})
    non_linearity: str = field(default="relu", metadata={"help": " | ".join(NON_LINEARITIES)})
    target_modules: str | list[str] | None = field(
        default=None,
        metadata={"help": "modules the adapters follow; default: from adapter_config and the model"},
    )
    exclude_modules: str | list[str] | None = field(default=None)
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "the task head, trained fully"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.BOTTLENECK


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """A linear layer followed by residual bottleneck adapters: out = h + up(act(down(h))), h = base(x)."""

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("non_linearity",)

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: BottleneckConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict()
        self.bottleneck_up = nn.ModuleDict()
        self.non_linearity: dict[str, str] = {}
        self._active_adapter = adapter_name
        self.merged_adapters = []
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: BottleneckConfig) -> None:
        width = self.base_layer.out_features
        bottleneck = max(1, width // config.reduction_factor)
        down, up = nn.Linear(width, bottleneck), nn.Linear(bottleneck, width)
        # Near-identity start (Houlsby et al.): small weights, zero biases, so h + up(...) ~ h.
        for layer in (down, up):
            nn.init.normal_(layer.weight, std=1e-2)
            nn.init.zeros_(layer.bias)
        weight = self.base_layer.weight
        self.bottleneck_down[adapter_name] = down.to(weight.device)
        self.bottleneck_up[adapter_name] = up.to(weight.device)
        self.non_linearity[adapter_name] = config.non_linearity
        self.set_adapter(self.active_adapters)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(NOT_MERGEABLE)

    def unmerge(self) -> None:
        raise ValueError(NOT_MERGEABLE)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        hidden = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return hidden
        for name in self.active_adapters:
            if name in self.bottleneck_down:
                down, up = self.bottleneck_down[name], self.bottleneck_up[name]
                activation = ACT2FN[self.non_linearity[name]]
                hidden = hidden + up(activation(down(hidden.to(down.weight.dtype)))).to(hidden.dtype)
        return hidden


class BottleneckModel(BaseTuner):
    """Inserts `BottleneckLayer`s after the modules `BottleneckConfig.target_modules` names."""

    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: BottleneckConfig, model_config: dict) -> BottleneckConfig:
        if peft_config.target_modules is None:
            peft_config.target_modules = bottleneck_targets(
                model_config.get("model_type"), peft_config.adapter_config
            )
        return peft_config

    def _create_and_replace(
        self, peft_config, adapter_name, target, target_name, parent, current_key, parameter_name=None
    ) -> None:
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, peft_config)
            return
        if not isinstance(target, nn.Linear):
            raise ValueError(
                f"{current_key} is a {type(target).__name__}; adapters follow nn.Linear layers only"
            )
        new_module = BottleneckLayer(target, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _check_merge_allowed(self) -> None:
        raise ValueError(NOT_MERGEABLE)


register_peft_method(name=PEFT_NAME, config_cls=BottleneckConfig, model_cls=BottleneckModel)


# --- the hftune method ---------------------------------------------------------------------------------


@dataclass
class AdapterArguments:
    adapter_config: str = field(
        default="houlsby",
        metadata={
            "help": "houlsby: an adapter after the attention block and one after the feed-forward block of every "
            "layer; pfeiffer: only the one after the feed-forward block (half the adapters).",
            "choices": list(ADAPTER_CONFIGS),
        },
    )
    reduction_factor: int = field(
        default=16,
        metadata={
            "help": "Hidden size divided by the adapter's bottleneck width (16: MiniLM's 384 -> 24). Smaller "
            "trains more parameters."
        },
    )
    non_linearity: str = field(
        default="relu",
        metadata={"help": "Activation inside each adapter.", "choices": list(NON_LINEARITIES)},
    )


def apply_adapters(model: nn.Module, args: AdapterArguments | None = None) -> nn.Module:
    """Bottleneck adapters after the chosen projections; the task head trains fully and is saved with them."""
    from peft import get_peft_model

    args = args or AdapterArguments()
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    head = head_module_names(model)
    config = BottleneckConfig(
        task_type="SEQ_CLS",
        adapter_config=args.adapter_config,
        reduction_factor=args.reduction_factor,
        non_linearity=args.non_linearity,
        target_modules=bottleneck_targets(model_type, args.adapter_config),
        modules_to_save=head or None,
    )
    with peft_checkpointing_probe_quiet():
        return get_peft_model(model, config)


def _plan_adapters(model: nn.Module, settings: PlanSettings) -> nn.Module:
    return apply_adapters(model)


register(
    Method(
        name="adapters",
        summary="Bottleneck adapters (small residual MLPs after the attention and feed-forward blocks; the base "
        "model stays frozen; not mergeable)",
        artifact="adapter",
        apply=apply_adapters,
        plan=_plan_adapters,
        recipe="sentiment_adapters.py",
        quoted_share="1-5%",
    )
)
