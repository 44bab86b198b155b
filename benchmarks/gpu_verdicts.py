"""The verdicts of the GPU acceptance check (`benchmarks/gpu_check.py`), as pure functions of measured numbers.

Every rule that decides pass or fail on the GPU lives here, free of torch and CUDA, so that
`tests/test_gpu_check.py` checks each one on CPU long before a GPU runs it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"
MIB = 2**20


@dataclass
class Check:
    """One line of the verdict: `name` (`run/what`), pass | fail | skipped, and why, in words with numbers."""

    name: str
    status: str
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def skipped(name: str, reason: str) -> Check:
    return Check(name, SKIPPED, reason)


def failed(name: str, reason: str) -> Check:
    return Check(name, FAIL, reason)


def memory_fraction(budget_bytes: int, card_bytes: int) -> float:
    """The `torch.cuda.set_per_process_memory_fraction` value that caps this process at `budget_bytes`."""
    if budget_bytes <= 0 or card_bytes <= 0:
        raise ValueError(f"budget {budget_bytes} and card memory {card_bytes} must both be positive")
    if budget_bytes > card_bytes:
        raise ValueError(
            f"the budget ({budget_bytes / 2**30:.2f} GiB) is larger than the card ({card_bytes / 2**30:.2f} GiB)"
        )
    return budget_bytes / card_bytes


def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured: positive = the estimate is above what was measured."""
    if measured <= 0:
        raise ValueError(f"measured value {measured} must be positive")
    return (predicted - measured) / measured


def memory_estimate_check(
    name: str, predicted_bytes: float, measured_bytes: float, tolerance: float
) -> Check:
    """The plan's tensor estimate (weights + gradients + optimizer state + saved activations) against
    `torch.cuda.max_memory_allocated` over the run: within +-`tolerance` passes."""
    error = relative_error(predicted_bytes, measured_bytes)
    figures = {"predicted_mb": predicted_bytes / MIB, "measured_mb": measured_bytes / MIB, "error": error}
    verdict = PASS if abs(error) <= tolerance else FAIL
    side = "over" if error > 0 else "under"
    return Check(
        name,
        verdict,
        f"estimate {predicted_bytes / MIB:,.0f} MiB vs max allocated {measured_bytes / MIB:,.0f} MiB: "
        f"{error:+.1%} ({side}; tolerance +-{tolerance:.0%})",
        figures,
    )


def fit_check(
    name: str,
    *,
    out_of_memory: bool,
    steps_done: int,
    steps_wanted: int,
    peak_reserved_bytes: float | None,
    budget_bytes: float,
    context_bytes: float,
) -> Check:
    """The run the plan said fits trained every step under the memory cap, and what the allocator reserved plus
    the CUDA context (outside the allocator, on the card all the same) stays within the budget: on a real
    6 GB card the context takes its share before the first tensor."""
    reserved = peak_reserved_bytes or 0.0
    figures = {
        "steps_done": steps_done,
        "steps_wanted": steps_wanted,
        "budget_mb": budget_bytes / MIB,
        "peak_reserved_mb": reserved / MIB,
        "context_mb": context_bytes / MIB,
    }
    if out_of_memory:
        return Check(name, FAIL, f"CUDA out of memory after {steps_done} of {steps_wanted} steps", figures)
    if steps_done < steps_wanted:
        return Check(name, FAIL, f"stopped after {steps_done} of {steps_wanted} steps", figures)
    used = reserved + context_bytes
    verdict = PASS if used <= budget_bytes else FAIL
    return Check(
        name,
        verdict,
        f"{steps_done} steps; peak reserved {reserved / MIB:,.0f} MiB + {context_bytes / MIB:,.0f} MiB CUDA "
        f"context = {used / MIB:,.0f} MiB of the {budget_bytes / MIB:,.0f} MiB budget",
        figures,
    )


def finite_loss_check(name: str, losses: Sequence[float]) -> Check:
    """Every logged training loss (one per optimizer step) is a finite number."""
    bad = [i + 1 for i, loss in enumerate(losses) if not math.isfinite(loss)]
    figures = {"steps_logged": len(losses), "non_finite_steps": bad[:20]}
    if not losses:
        return Check(name, FAIL, "no training loss was logged", figures)
    if bad:
        return Check(
            name, FAIL, f"{len(bad)} of {len(losses)} losses are inf/NaN (first at step {bad[0]})", figures
        )
    figures.update(first_loss=losses[0], last_loss=losses[-1])
    return Check(name, PASS, f"{len(losses)} finite losses, {losses[0]:.4f} -> {losses[-1]:.4f}", figures)


def skipped_steps_check(
    name: str, skipped_flags: Sequence[bool], precision: str, max_fraction: float
) -> Check:
    """fp16's GradScaler skips the optimizer step whenever gradients overflow; a few while its scale calibrates are
    normal, more than `max_fraction` of the steps means the run barely trained."""
    count = sum(bool(flag) for flag in skipped_flags)
    steps = len(skipped_flags)
    figures = {"skipped_steps": count, "steps": steps, "precision": precision}
    if precision != "fp16":
        verdict = PASS if count == 0 else FAIL
        return Check(name, verdict, f"{precision}: no GradScaler, {count} skipped steps", figures)
    if steps == 0:
        return Check(name, FAIL, "no optimizer step was recorded", figures)
    verdict = PASS if count <= max_fraction * steps else FAIL
    return Check(
        name,
        verdict,
        f"GradScaler skipped {count} of {steps} steps (at most {max_fraction:.0%} allowed)",
        figures,
    )


def samples_per_second(
    step_end_seconds: Sequence[float], samples_per_step: int, warmup_steps: int
) -> float | None:
    """Training throughput from the times (any clock, seconds) at which optimizer steps ended, leaving out the
    first `warmup_steps` (CUDA kernels load, cuBLAS and the GradScaler warm up there). None if too few steps."""
    times = list(step_end_seconds)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps {warmup_steps} must be >= 0")
    if len(times) < warmup_steps + 2:
        return None
    elapsed = times[-1] - times[warmup_steps]
    steps = len(times) - 1 - warmup_steps
    return steps * samples_per_step / elapsed if elapsed > 0 else None


def agreement_check(name: str, rel_error: float, tolerance: float, what: str) -> Check:
    """max |a - b| / max |reference| within `tolerance` (the user's backend-agreement criterion)."""
    verdict = PASS if math.isfinite(rel_error) and rel_error <= tolerance else FAIL
    return Check(
        name,
        verdict,
        f"{what}: max |diff| / max |reference| = {rel_error:.2e} (tolerance {tolerance:.0e})",
        {"relative_error": rel_error, "tolerance": tolerance},
    )


def identical_outputs_check(name: str, reference: Sequence[str], other: Sequence[str], what: str) -> Check:
    """Every output string equals the reference one; the first differences are listed."""
    if len(reference) != len(other):
        return Check(name, FAIL, f"{what}: {len(other)} outputs for {len(reference)} inputs")
    diffs = [i for i, (a, b) in enumerate(zip(reference, other, strict=True)) if a != b]
    figures = {
        "outputs": len(reference),
        "different": len(diffs),
        "first_differences": [{"index": i, "reference": reference[i], "other": other[i]} for i in diffs[:5]],
    }
    if diffs:
        return Check(
            name, FAIL, f"{what}: {len(diffs)} of {len(reference)} differ (first: #{diffs[0]})", figures
        )
    return Check(name, PASS, f"{what}: all {len(reference)} identical", figures)


def summarize(checks: Iterable[Check]) -> dict[str, Any]:
    """Names per status, and the exit code: 1 when any check failed, else 0."""
    checks = list(checks)
    by_status = {status: [c.name for c in checks if c.status == status] for status in (PASS, FAIL, SKIPPED)}
    return {
        "passed": by_status[PASS],
        "failed": by_status[FAIL],
        "skipped": by_status[SKIPPED],
        "exit_code": 1 if by_status[FAIL] else 0,
    }
