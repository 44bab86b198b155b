"""CPUDropout: the statistics and gradients of nn.Dropout with a cheaper mask, and where the recipes use it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, TrainingArguments

from hftune.config import ModelArguments
from hftune.training.cpu import CPUDropout, use_cpu_dropout
from hftune.training.setup import prepare_training_args

P_EFFECTIVE = 6554 / 65536  # p = 0.1 rounded to a multiple of 1/65536


def test_each_of_the_four_numbers_per_draw_drops_at_the_rate_p():
    torch.manual_seed(0)
    n = 4 * 250_000
    out = CPUDropout(0.1)(torch.ones(n))
    dropped = (out == 0).float().view(-1, 4)  # column k: the k-th 16 bits of every 64-bit draw
    sigma = math.sqrt(P_EFFECTIVE * (1 - P_EFFECTIVE) / (n // 4))
    for rate in dropped.mean(dim=0).tolist():
        assert abs(rate - P_EFFECTIVE) < 5 * sigma, rate
    # Neighbouring elements are independent: pairs drop together at p^2
    pairs = (dropped[:, 0] * dropped[:, 1]).mean().item()
    assert abs(pairs - P_EFFECTIVE**2) < 5 * math.sqrt(P_EFFECTIVE**2 / (n // 4))


def test_kept_elements_are_scaled_so_the_expectation_is_kept_and_gradients_follow_the_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 33, 7, requires_grad=True)  # 14,784 elements: not a multiple of 4 draws' worth
    out = CPUDropout(0.1)(x)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] * (1 / (1 - P_EFFECTIVE)))
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - P_EFFECTIVE))
    big = CPUDropout(0.3)(torch.ones(400_000))
    assert abs(big.mean().item() - 1) < 0.01


def test_same_seed_same_mask_other_seed_other_mask():
    def mask(seed):
        torch.manual_seed(seed)
        return CPUDropout(0.1)(torch.ones(1000)) == 0

    assert torch.equal(mask(3), mask(3))
    assert not torch.equal(mask(3), mask(4))


def test_eval_mode_edge_rates_inplace_dtype_and_other_devices_behave_as_nn_dropout():
    x = torch.randn(5, 8)
    layer = CPUDropout(0.1).eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(CPUDropout(0.0)(x), x)
    assert torch.equal(CPUDropout(1.0)(x), torch.zeros_like(x))
    y = x.clone()
    assert CPUDropout(0.5, inplace=True)(y).data_ptr() == y.data_ptr()
    assert ((y == 0) | (y == 2 * x)).all()
    assert CPUDropout(0.1)(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert CPUDropout(0.1)(x.t()).shape == (8, 5)  # non-contiguous input
    meta = CPUDropout(0.1)(torch.empty(3, 4, device="meta"))  # any non-CPU device goes to nn.Dropout
    assert meta.device.type == "meta" and meta.shape == (3, 4)


def test_swapping_keeps_weights_modes_and_eval_outputs_of_a_real_model(minilm_path, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=3).eval()
    plain = sum(type(m) is nn.Dropout for m in model.modules())
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    state = {k: v.clone() for k, v in model.state_dict().items()}

    assert use_cpu_dropout(model) == plain > 0
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert all(not m.training for m in model.modules() if isinstance(m, CPUDropout))
    assert model.state_dict().keys() == state.keys()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, before)


@pytest.mark.parametrize("setting, swapped", [(None, True), ("torch", False)])
def test_recipes_use_it_on_cpu_unless_told_not_to(minilm_path, tmp_path, monkeypatch, setting, swapped):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # prepare_training_args exports it: restore after
    if setting:
        monkeypatch.setenv("HFTUNE_CPU_DROPOUT", setting)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    prepare_training_args(args, ModelArguments(precision="fp32"), model)
    assert any(isinstance(m, CPUDropout) for m in model.modules()) is swapped
