"""Trainer callbacks hftune adds to every run."""

from __future__ import annotations

from transformers import TrainerCallback

from hftune.hardware import peak_memory_mb


class MemoryCallback(TrainerCallback):
    """Adds `peak_memory_mb` to every Trainer log and keeps the run's maximum in `self.peak_mb`."""

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self.peak_mb = 0.0

    def on_log(self, args, state, control, logs=None, **kwargs):
        device = self.device or str(args.device)
        # Rounded once, so the logged figure and results.json's figure are the same number.
        self.peak_mb = max(self.peak_mb, round(peak_memory_mb(device), 1))
        value = self.peak_mb
        if logs is not None:
            logs["peak_memory_mb"] = value
        # Trainer appends a copy of the logs to log_history before callbacks run: keep it in step.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1]["peak_memory_mb"] = value
