"""`--memory_budget`: the plan computed for a recipe's real model and TrainingArguments, and applied to them."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from hftune.config import LoraArguments, ModelArguments
from hftune.errors import HftuneError
from hftune.hardware import HardwareInfo, decide_precision
from hftune.memory import (
    GIB,
    MIB,
    apply_memory_budget,
    estimate_training_memory,
    measure_activation_profile,
    parse_size,
    plan_for_training_args,
    prepare_for_method,
)
from hftune.methods import apply_lora
from hftune.models import load_classifier
from hftune.training.setup import prepare_training_args

REPO = Path(__file__).resolve().parents[1]
SEQ = 64
FP32_CPU = decide_precision(HardwareInfo(device_type="cpu"), "fp32")


@pytest.fixture(scope="module")
def lora_model(minilm_path):
    """As sentiment_lora.py builds it: its default attention dropout changes the activations it saves."""
    from hftune.config import CLASSIFIER_DEFAULTS

    model, _ = load_classifier(
        minilm_path,
        {0: "negative", 1: "positive"},
        attention_dropout=CLASSIFIER_DEFAULTS["attention_dropout"],
    )
    return apply_lora(model, LoraArguments())


def _args(tmp_path: Path, batch: int = 32, accumulation: int = 1, **kwargs) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        use_cpu=True,
        report_to=[],
        **kwargs,
    )


_PROFILES: dict[int, object] = {}


def _estimate(model, batch: int, **kwargs) -> float:
    # Measured once per model: the probe's byte counts depend only on shapes, so a re-measure is identical.
    profile = _PROFILES.setdefault(id(model), None) or measure_activation_profile(model, "fp32")
    _PROFILES[id(model)] = profile
    return estimate_training_memory(
        model, batch_size=batch, seq_len=SEQ, activation_profile=profile, **kwargs
    ).total_bytes


def test_roomy_budget_keeps_the_users_settings(lora_model, tmp_path):
    args = _args(tmp_path, batch=32, accumulation=2, optim="adamw_torch_fused")
    plan = plan_for_training_args(lora_model, args, "6GB", FP32_CPU, seq_len=SEQ)
    assert plan.budget_bytes == 6 * GIB
    # Room to spare: the whole effective batch in one step, no accumulation.
    assert (plan.per_device_train_batch_size, plan.gradient_accumulation_steps) == (64, 1)
    assert not plan.gradient_checkpointing
    # The plan needed no other optimizer, so the user's exact choice survives (not plain adamw_torch).
    assert plan.optim == "adamw_torch_fused"
    apply_memory_budget(args, plan)
    assert args.optim == "adamw_torch_fused"
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (64, 1)
    assert plan.estimate.total_bytes == pytest.approx(_estimate(lora_model, 64), rel=1e-9)


def test_tight_budget_shrinks_the_batch_and_keeps_the_effective_batch(lora_model, tmp_path):
    budget = int((_estimate(lora_model, 8) + _estimate(lora_model, 16)) / 2)
    args = _args(tmp_path, batch=32, accumulation=2)
    default_optim = args.optim.value
    plan = plan_for_training_args(lora_model, args, budget, FP32_CPU, seq_len=SEQ)
    assert (plan.per_device_train_batch_size, plan.gradient_accumulation_steps) == (8, 8)
    assert plan.effective_batch_size == 64 and plan.estimate.total_bytes <= budget
    assert not plan.gradient_checkpointing and plan.optim == default_optim
    apply_memory_budget(args, plan)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 8)
    assert args.activation_checkpointing is False


def test_budget_below_batch_one_turns_on_checkpointing_then_8bit_adamw(minilm_path, tmp_path):
    model, _ = load_classifier(minilm_path, {0: "negative", 1: "positive"})
    model = prepare_for_method(model, "full")
    plain = _estimate(model, 1)
    checkpointed = _estimate(model, 1, gradient_checkpointing=True)
    eight_bit = _estimate(model, 1, gradient_checkpointing=True, optimizer="adamw_8bit")
    assert eight_bit < checkpointed < plain

    args = _args(tmp_path, batch=16)
    plan = plan_for_training_args(model, args, int((checkpointed + plain) / 2), FP32_CPU, seq_len=SEQ)
    assert plan.gradient_checkpointing and plan.optim == args.optim.value
    assert plan.effective_batch_size == 16 and plan.per_device_train_batch_size < 16

    plan = plan_for_training_args(model, args, int((eight_bit + checkpointed) / 2), FP32_CPU, seq_len=SEQ)
    assert plan.gradient_checkpointing and plan.optim == "adamw_bnb_8bit"
    assert plan.effective_batch_size == 16
    apply_memory_budget(args, plan)
    # transformers 5 switches checkpointing on through `activation_checkpointing`, not the deprecated alias.
    assert args.activation_checkpointing is True and args.gradient_checkpointing is True
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.optim == "adamw_bnb_8bit"
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 16


def test_impossible_budget_names_the_smallest_that_fits(lora_model, tmp_path):
    args = _args(tmp_path, batch=32)
    with pytest.raises(HftuneError) as err:
        plan_for_training_args(lora_model, args, "50MB", FP32_CPU, seq_len=SEQ)
    message = str(err.value)
    assert "\n" not in message and "50 MB is too small" in message
    smallest = re.search(r"use --memory_budget (\d+\.\d)GB", message).group(1)
    plan = plan_for_training_args(lora_model, args, f"{smallest}GB", FP32_CPU, seq_len=SEQ)
    assert plan.estimate.total_bytes <= parse_size(f"{smallest}GB")
    # ... and it is the smallest such figure in tenths of a GB.
    with pytest.raises(HftuneError):
        below = int(parse_size(f"{smallest}GB") - 0.1 * GIB)
        plan_for_training_args(lora_model, args, below, FP32_CPU, seq_len=SEQ)


def test_prepare_training_args_applies_the_budget(lora_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # restored after the test
    threads = torch.get_num_threads()
    budget_mb = int((_estimate(lora_model, 4) + _estimate(lora_model, 8)) / 2 / MIB)
    try:
        args, decision = prepare_training_args(
            _args(tmp_path, batch=16),
            ModelArguments(precision="fp32", memory_budget=f"{budget_mb}MB"),
            lora_model,
            max_seq_length=SEQ,
        )
    finally:
        torch.set_num_threads(threads)
    assert decision.device == "cpu" and decision.precision == "fp32"
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 4)
    assert args.use_cpu and args.average_tokens_across_devices is False


def test_prepare_training_args_decides_for_a_described_machine(lora_model, tmp_path, monkeypatch):
    """`hardware_info`: the preflight decides for the card described (a 6 GB Turing card: fp16, no bf16), not for
    this CPU, and the budget is planned for that card: what benchmarks/gpu_check.py emulates."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # restored after the test
    turing = HardwareInfo("cuda", (7, 5), 6 * GIB, "GeForce GTX 1660", bitsandbytes_available=True)
    args, decision = prepare_training_args(
        _args(tmp_path, batch=8, accumulation=4),
        ModelArguments(memory_budget="6GB"),
        lora_model,
        max_seq_length=SEQ,
        hardware_info=turing,
    )
    assert (decision.device, decision.precision) == ("cuda", "fp16")
    assert args.fp16 and not args.bf16 and not args.use_cpu
    # 8 x 4 fits 6 GB in one batch of 32
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (32, 1)
    with pytest.raises(HftuneError, match="bf16 needs CUDA compute capability >= 8.0"):
        prepare_training_args(
            _args(tmp_path), ModelArguments(precision="bf16"), lora_model, hardware_info=turing
        )


def _recipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "recipes" / "sentiment_lora.py"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_recipe_refuses_an_impossible_budget(tmp_path):
    out = tmp_path / "run"
    done = _recipe("--memory_budget", "50MB", "--max_train_samples", "32", "--max_eval_samples", "16",
                   "--precision", "fp32", "--output_dir", str(out))  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert re.search(r"50 MB is too small.*use --memory_budget \d+\.\dGB or more", done.stderr)
    assert not out.exists(), "a refused run leaves no output folder"


def test_recipe_trains_with_the_planned_batch(lora_model, tmp_path):
    budget_mb = int((_estimate(lora_model, 8) + _estimate(lora_model, 16)) / 2 / MIB)
    out = tmp_path / "run"
    done = _recipe("--memory_budget", f"{budget_mb}MB", "--max_train_samples", "64", "--max_eval_samples", "32",
                   "--num_train_epochs", "1", "--max_seq_length", str(SEQ), "--precision", "fp32",
                   "--per_device_train_batch_size", "32", "--output_dir", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        f"--memory_budget {budget_mb}MB: per_device_train_batch_size=8 gradient_accumulation_steps=4"
        in done.stdout
    )
    hyper = json.loads((out / "results.json").read_text())["hyperparameters"]
    assert hyper["per_device_train_batch_size"] == 8 and hyper["gradient_accumulation_steps"] == 4
    assert hyper["effective_batch_size"] == 32
