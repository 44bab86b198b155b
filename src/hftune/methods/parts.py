"""Locating the parts of a model that methods freeze or train: the body, its layer stack, the embeddings and
the task head."""

from __future__ import annotations

from torch import nn

from hftune.errors import HftuneError


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


# --- BitFit artefact: only the trained tensors ------------------------------------------------------
