"""The memory estimate against measured tensor accounting on CPU, the budget plan, and `hftune plan`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, TrainingArguments

from hftune.errors import HftuneError
from hftune.memory import (
    CUDA_CONTEXT_BYTES,
    GIB,
    _dummy_batch,
    apply_memory_budget,
    estimate_training_memory,
    measure_activation_profile,
    model_from_config,
    parse_size,
    plan_for_budget,
    prepare_for_method,
    saved_activation_bytes,
)


def _measured_bytes(model: torch.nn.Module, batch: int, seq: int) -> float:
    """Parameters + gradients + AdamW state after one real step, plus saved activations at (batch, seq)."""
    activations = saved_activation_bytes(model, batch, seq)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4)
    model.train()
    model(**_dummy_batch(model, batch, seq)).loss.backward()
    optimizer.step()
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values())
    return weights + grads + state + activations


@pytest.mark.parametrize("method", ["full", "freeze", "lora", "bitfit"])
def test_estimate_within_15_percent_of_measured(minilm_path: str, method: str) -> None:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    model = prepare_for_method(model, method)
    # Probed at (1, 32), (2, 32), (1, 64); checked at a batch and length it never ran.
    estimate = estimate_training_memory(model, batch_size=4, seq_len=96)
    measured = _measured_bytes(model, 4, 96)
    assert abs(estimate.tensors_bytes - measured) / measured < 0.15
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert estimate.trainable_params == trainable
    assert estimate.gradients_bytes == pytest.approx(4 * trainable)


def test_methods_shrink_gradients_and_optimizer(minilm_path: str) -> None:
    sizes = {}
    for method in ("full", "freeze", "lora"):
        model = prepare_for_method(AutoModelForSequenceClassification.from_pretrained(minilm_path), method)
        est = estimate_training_memory(model, batch_size=2, seq_len=32, activation_bytes_per_token=1000)
        sizes[method] = est.optimizer_bytes
        assert est.activations_bytes == 1000 * 2 * 32
    assert sizes["full"] > sizes["freeze"] > sizes["lora"] > 0


def test_user_distilbert_setting_fits_6gb() -> None:
    """DistilBERT-base shape, batch 8 x seq 128, accumulation 4, embeddings + 3 lower layers frozen, fp16."""
    model = prepare_for_method(model_from_config("distilbert-base-uncased"), "freeze", freeze_layers=3)
    plan = plan_for_budget(
        model,
        budget_bytes=parse_size("6GB"),
        batch_size=8,
        gradient_accumulation_steps=4,
        seq_len=128,
        precision="fp16",
        device="cuda",
    )
    requested = plan.requested_estimate
    print("user setting:\n" + requested.table())
    assert 60e6 < requested.total_params < 70e6
    assert requested.overhead_bytes == CUDA_CONTEXT_BYTES
    assert requested.total_bytes < 6 * GIB
    assert "fits" in plan.reasons[0] and "does not fit" not in plan.reasons[0]
    assert plan.effective_batch_size == 32 and plan.per_device_train_batch_size >= 8
    assert not plan.gradient_checkpointing and plan.optim == "adamw_torch"


def test_smollm2_135m_qlora_fits_6gb() -> None:
    model = prepare_for_method(model_from_config("HuggingFaceTB/SmolLM2-135M"), "qlora")
    profile = measure_activation_profile(model, "fp16", probe_seq=16)
    plan = plan_for_budget(
        model,
        budget_bytes=6 * GIB,
        batch_size=4,
        gradient_accumulation_steps=4,
        seq_len=256,
        precision="fp16",
        quantization="4bit",
        device="cuda",
        activation_profile=profile,
    )
    est = plan.requested_estimate
    assert 130e6 < est.total_params < 140e6
    fp32_weights = est.total_params * 4
    assert est.weights_bytes < fp32_weights / 3  # block linears at ~4 bits, embeddings stay fp32
    assert est.trainable_params < 0.02 * est.total_params  # r=8 adapters on every block linear, as the recipe
    assert est.total_bytes < 6 * GIB and plan.effective_batch_size == 16


def test_too_small_budget_names_the_smallest_that_fits(minilm_path: str) -> None:
    model = prepare_for_method(AutoModelForSequenceClassification.from_pretrained(minilm_path), "full")
    profile = measure_activation_profile(model, "fp32")
    kwargs = {
        "batch_size": 16,
        "gradient_accumulation_steps": 2,
        "seq_len": 128,
        "activation_profile": profile,
    }
    with pytest.raises(HftuneError, match=r"--budget (\d+\.\d)GB") as err:
        plan_for_budget(model, budget_bytes=parse_size("200MB"), device="cuda", **kwargs)
    smallest = re.search(r"--budget (\d+\.\d)GB", str(err.value)).group(1)
    plan = plan_for_budget(model, budget_bytes=parse_size(f"{smallest}GB"), device="cuda", **kwargs)
    # Only the last resort fits at the named budget: checkpointing and the 8-bit optimizer.
    assert plan.gradient_checkpointing and plan.optim == "adamw_bnb_8bit"
    assert plan.effective_batch_size == 32 and plan.estimate.total_bytes <= float(smallest) * GIB


def test_plan_turns_on_savings_only_when_needed(minilm_path: str) -> None:
    model = prepare_for_method(AutoModelForSequenceClassification.from_pretrained(minilm_path), "full")
    profile = measure_activation_profile(model, "fp32")
    common = {
        "batch_size": 8,
        "gradient_accumulation_steps": 4,
        "seq_len": 128,
        "activation_profile": profile,
    }
    roomy = plan_for_budget(model, budget_bytes=8 * GIB, device="cpu", **common)
    assert roomy.per_device_train_batch_size == 32 and roomy.gradient_accumulation_steps == 1
    assert not roomy.gradient_checkpointing and roomy.optim == "adamw_torch"
    tight_budget = int(roomy.estimate.total_bytes * 0.6)
    tight = plan_for_budget(model, budget_bytes=tight_budget, device="cpu", **common)
    assert tight.per_device_train_batch_size < 32 and tight.effective_batch_size == 32
    assert tight.estimate.total_bytes <= tight_budget


def test_apply_memory_budget_sets_training_arguments(minilm_path: str, tmp_path: Path) -> None:
    model = prepare_for_method(AutoModelForSequenceClassification.from_pretrained(minilm_path), "full")
    profile = measure_activation_profile(model, "fp32")
    with pytest.raises(HftuneError) as err:
        plan_for_budget(
            model, budget_bytes=1, batch_size=4, seq_len=64, activation_profile=profile, device="cpu"
        )
    smallest = re.search(r"--budget (\d+\.\d)GB", str(err.value)).group(1)
    plan = plan_for_budget(
        model,
        budget_bytes=parse_size(f"{smallest}GB"),
        batch_size=4,
        seq_len=64,
        activation_profile=profile,
        device="cpu",
    )
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    apply_memory_budget(args, plan)
    assert args.per_device_train_batch_size == plan.per_device_train_batch_size
    assert args.gradient_accumulation_steps == plan.gradient_accumulation_steps
    assert args.gradient_checkpointing == plan.gradient_checkpointing
    if plan.gradient_checkpointing:
        assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert args.optim == plan.optim and plan.optim in ("adamw_torch", "adamw_bnb_8bit")


@pytest.mark.parametrize(
    ("text", "expected"), [("6GB", 6 * GIB), ("5500MB", 5500 * 2**20), ("1.5 GiB", 1.5 * GIB)]
)
def test_parse_size(text: str, expected: float) -> None:
    assert parse_size(text) == int(expected)


def test_parse_size_rejects_nonsense() -> None:
    with pytest.raises(HftuneError, match="'six gigs'"):
        parse_size("six gigs")


def _hftune(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    code = "from hftune.cli import main; raise SystemExit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120
    )


def test_plan_cli_from_yaml(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "method: freeze\nper_device_train_batch_size: 8\nmax_seq_length: 64\n"
        "gradient_accumulation_steps: 4\nlearning_rate: 2.0e-5\n"
    )
    proc = _hftune("plan", str(config), "--budget", "6GB", "--device", "cuda")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "BertForSequenceClassification" in proc.stdout and "method freeze" in proc.stdout
    assert "CUDA context" in proc.stdout and "peak estimate" in proc.stdout
    assert "per_device_train_batch_size=32 gradient_accumulation_steps=1" in proc.stdout


def test_plan_cli_bad_budget_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("method: lora\n")
    proc = _hftune("plan", str(config), "--budget", "lots")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --budget 'lots'")
    assert "Traceback" not in proc.stderr
