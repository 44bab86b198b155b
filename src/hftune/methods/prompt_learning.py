"""Prefix tuning (Li & Liang, 2021) and prompt tuning (Lester et al., 2021) through peft.

Prefix tuning learns key/value vectors that every attention layer sees before the real tokens, so the model's
forward must take `past_key_values`: under transformers 5 BERT's (and so MiniLM's) does, DistilBERT's and
ModernBERT's do not, and those are refused before training. Prompt tuning learns embeddings prepended to the
input and works on any of them. In both the task head trains fully and is saved with the learned vectors.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from torch import nn

from hftune.errors import HftuneError
from hftune.methods.parts import base_model_prefix, head_module_names
from hftune.methods.registry import Method, register
from hftune.runtime import peft_checkpointing_probe_quiet


@dataclass
class PromptLearningArguments:
    num_virtual_tokens: int = field(
        default=20,
        metadata={
            "help": "Length of the learned prefix (prefix tuning: per attention layer) or soft prompt (prompt "
            "tuning). Each virtual token also takes one of the model's positions."
        },
    )
    prefix_projection: bool = field(
        default=False,
        metadata={
            "help": "Prefix tuning only: produce the prefix through a two-layer MLP (Li & Liang's "
            "reparameterisation) instead of learning it directly; more parameters train."
        },
    )
    encoder_hidden_size: int | None = field(
        default=None,
        metadata={
            "help": "Hidden width of the --prefix_projection MLP. Default: the model's hidden size. Only with "
            "--prefix_projection."
        },
    )


def takes_past_key_values(model: nn.Module) -> bool:
    """Whether peft's prefix tuning can hand this classifier (or its body) the prefix as `past_key_values`."""
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return any(
        "past_key_values" in inspect.signature(module.forward).parameters
        for module in (model, body)
        if isinstance(module, nn.Module)
    )


def _check_positions(model: nn.Module, args: PromptLearningArguments, max_seq_length: int | None) -> None:
    # Virtual tokens take positions before the text's (prompt tuning: prepended inputs; prefix tuning: the
    # positions of the past), so text plus prefix must fit the position table.
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and max_seq_length and max_seq_length + args.num_virtual_tokens > limit:
        raise HftuneError(
            f"--max_seq_length {max_seq_length} plus --num_virtual_tokens {args.num_virtual_tokens} exceeds the "
            f"{limit} positions of {model.config.model_type}; lower one of them"
        )


def _shape_of(model: nn.Module) -> dict[str, int]:
    # From the config's attributes, not its dict: DistilBERT names them dim / n_layers / n_heads, which peft
    # finds only through transformers' attribute map.
    config = model.config
    return {
        "token_dim": config.hidden_size,
        "num_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_transformer_submodules": 1,
    }


def apply_prefix(
    model: nn.Module, args: PromptLearningArguments | None = None, max_seq_length: int | None = None
) -> nn.Module:
    from peft import PrefixTuningConfig, get_peft_model

    args = args or PromptLearningArguments()
    if args.encoder_hidden_size is not None and not args.prefix_projection:
        raise HftuneError(
            f"--encoder_hidden_size {args.encoder_hidden_size} sizes the prefix MLP, which only "
            "--prefix_projection builds; add --prefix_projection or drop --encoder_hidden_size"
        )
    if not takes_past_key_values(model):
        raise HftuneError(
            f"--method prefix needs a model whose forward takes past_key_values, and {type(model).__name__} "
            f"({model.config.model_type}) does not under transformers 5; use prompt, lora, ia3, adapters or "
            "bitfit for it"
        )
    _check_positions(model, args, max_seq_length)
    config = PrefixTuningConfig(
        task_type="SEQ_CLS",
        num_virtual_tokens=args.num_virtual_tokens,
        prefix_projection=args.prefix_projection,
        encoder_hidden_size=args.encoder_hidden_size or model.config.hidden_size,
        modules_to_save=head_module_names(model) or None,
        **_shape_of(model),
    )
    with peft_checkpointing_probe_quiet():
        return get_peft_model(model, config)


def apply_prompt(
    model: nn.Module, args: PromptLearningArguments | None = None, max_seq_length: int | None = None
) -> nn.Module:
    from peft import PromptTuningConfig, get_peft_model

    args = args or PromptLearningArguments()
    if args.prefix_projection or args.encoder_hidden_size is not None:
        raise HftuneError(
            "--prefix_projection and --encoder_hidden_size belong to prefix tuning; prompt tuning learns its "
            "embeddings directly: drop them, or use recipes/sentiment_prefix.py"
        )
    base_model_prefix(model)  # a classifier with a body and a head, or one clear error
    _check_positions(model, args, max_seq_length)
    config = PromptTuningConfig(
        task_type="SEQ_CLS",
        num_virtual_tokens=args.num_virtual_tokens,
        modules_to_save=head_module_names(model) or None,
        **_shape_of(model),
    )
    with peft_checkpointing_probe_quiet():
        return get_peft_model(model, config)


register(
    Method(
        name="prefix",
        summary="Prefix tuning (learned key/value prefixes in every attention layer; the base model stays frozen)",
        artifact="adapter",
        apply=apply_prefix,
        plan=lambda model, settings: apply_prefix(model),
        recipe="sentiment_prefix.py",
        quoted_share="~0.1%",
    )
)
register(
    Method(
        name="prompt",
        summary="Prompt tuning (learned soft-prompt embeddings before the input; the base model stays frozen)",
        artifact="adapter",
        apply=apply_prompt,
        plan=lambda model, settings: apply_prompt(model),
        recipe="sentiment_prompt.py",
    )
)
