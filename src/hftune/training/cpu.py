"""Training on CPU: threads per process and a cheaper dropout mask, set by `prepare_cpu_training`.

Figures in the comments: MiniLM-L6 full fine-tuning, batches of 32 emotion texts grouped by length, 2 cores.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from hftune.runtime import cpu_threads_per_process

# Dropout keeps or drops each element on a 16-bit draw: probabilities are multiples of 1/65536.
_DRAW_LEVELS = 1 << 16


class CPUDropout(nn.Dropout):
    """`nn.Dropout` that draws its training mask on CPU with a quarter of torch's random-number calls.

    torch's CPU dropout makes one serial 32-bit draw per element, ~12 ns each here: 10% of a training step,
    and steps run 1.08x faster with this class. It draws 64-bit numbers and reads each as four 16-bit ones.
    An element is dropped when its number is below round(p * 65536), and kept ones are scaled by
    1 / (1 - that probability), so the output keeps its expectation exactly; p itself is rounded to a multiple
    of 1/65536 (0.1 -> 0.100006). The draws come from torch's default generator, so `set_seed` reproduces
    them. Other devices, eval mode and p of 0 or 1 run `nn.Dropout`.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        dropped = round(self.p * _DRAW_LEVELS)
        if not self.training or input.device.type != "cpu" or not 0 < dropped < _DRAW_LEVELS:
            return super().forward(input)
        n = input.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # full 64-bit range
        numbers = draws.view(torch.int16)[:n].view(input.shape)  # signed: -32768 stands for 0
        keep = numbers >= dropped - _DRAW_LEVELS // 2
        mask = keep.to(input.dtype).mul_(_DRAW_LEVELS / (_DRAW_LEVELS - dropped))
        return input.mul_(mask) if self.inplace else input * mask


def use_cpu_dropout(model: nn.Module) -> int:
    """Swap every plain `nn.Dropout` in `model` for `CPUDropout` (same p, same mode); returns how many.

    Dropout holds no weights, so checkpoints and `save_pretrained` folders are unchanged. Dropout called as a
    function (`F.dropout`, e.g. inside attention) is left to torch.
    """
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Dropout
    ]
    for parent, name, child in swaps:
        replacement = CPUDropout(child.p, child.inplace)
        replacement.train(child.training)
        setattr(parent, name, replacement)
    return len(swaps)


def use_all_cpu_cores() -> int:
    """`accelerate launch` hands a CPU child one thread by default; give each process its share of the cores."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    threads = cpu_threads_per_process(local)
    torch.set_num_threads(threads)
    return threads


def prepare_cpu_training(model: nn.Module | None) -> str:
    """Threads for this process and, unless `HFTUNE_CPU_DROPOUT=torch`, `CPUDropout` in `model`; returns one
    line saying what was done."""
    n = use_all_cpu_cores()
    threads = f"{n} thread{'' if n == 1 else 's'} per process"
    if model is None:
        return threads
    if os.environ.get("HFTUNE_CPU_DROPOUT", "").lower() == "torch":
        return f"{threads}, torch's dropout (HFTUNE_CPU_DROPOUT=torch)"
    swapped = use_cpu_dropout(model)
    return f"{threads}, {swapped} dropout layers draw 16-bit masks (HFTUNE_CPU_DROPOUT=torch for torch's)"
