"""Hardware preflight for a Trainer run: precision and device decided from the machine, the memory budget,
CPU speed-ups and checkpointing settings applied to `TrainingArguments`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from transformers import TrainingArguments

from hftune import hardware, memory
from hftune.config import ModelArguments
from hftune.runtime import log
from hftune.training.cpu import prepare_cpu_training


def prepare_training_args(
    training_args: TrainingArguments,
    model_args: ModelArguments,
    model: torch.nn.Module,
    *,
    quantization: str | None = None,
    max_seq_length: int = 128,
    hardware_info: hardware.HardwareInfo | None = None,
) -> tuple[TrainingArguments, Any]:
    """Apply the hardware preflight (precision, device) and memory budget; return new args and the decision.

    `max_seq_length` is the longest training sequence, which the memory budget plans for. `hardware_info` (a
    `hftune.hardware.HardwareInfo`) decides for a described machine instead of this one: the GPU check
    emulates a card without bf16 this way.
    """
    info = hardware_info or hardware.detect_hardware()
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    decision = hardware.decide_precision(
        info, model_args.precision, model_type=model_type, quantization=quantization
    )
    log(decision.summary())
    # TrainingArguments also reads the precision accelerate's config exported; the decision must win.
    os.environ["ACCELERATE_MIXED_PRECISION"] = {"fp32": "no"}.get(decision.precision, decision.precision)
    overrides: dict[str, Any] = dict(decision.trainer_kwargs)
    # Models whose loss is a per-batch mean (BERT & co.) would report loss x world size otherwise.
    overrides["average_tokens_across_devices"] = False
    if decision.device == "cpu":
        log(f"CPU training: {prepare_cpu_training(model)}")
    if model_args.max_memory_fraction is not None:
        hardware.set_cuda_memory_fraction(model_args.max_memory_fraction)
    training_args = dataclasses.replace(training_args, **overrides)
    if model_args.memory_budget:
        plan = memory.plan_for_training_args(
            model, training_args, model_args.memory_budget, decision, seq_len=max_seq_length
        )
        training_args = memory.apply_memory_budget(training_args, plan)
        log(f"--memory_budget {model_args.memory_budget}: {plan.summary()}")
    if training_args.activation_checkpointing:
        # Reentrant checkpointing gives frozen embeddings and LoRA zero gradients (peft#1142, transformers#26221).
        checkpointing_kwargs = dict(training_args.activation_checkpointing_kwargs or {})
        checkpointing_kwargs.setdefault("use_reentrant", False)
        training_args = dataclasses.replace(
            training_args, activation_checkpointing_kwargs=checkpointing_kwargs
        )
    return training_args, decision
