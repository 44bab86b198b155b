"""Runtime helpers shared by the launcher and the training process.

Holds: the CPU threads each training process gets (one rule for `hftune train`'s accelerate flag and the
recipe's own `torch.set_num_threads`), and the context that hides the one upstream deprecation warning
peft raises each time hftune wraps or loads an adapter model. Imports only the standard library.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one, else every CPU."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_threads_per_process(
    processes: int = 1, *, cpus: int | None = None, environ: Mapping[str, str] | None = None
) -> int:
    """Threads for each of `processes` CPU training processes: `HFTUNE_CPU_THREADS` if set, else the
    available CPUs shared evenly, at least one each."""
    environ = os.environ if environ is None else environ
    if environ.get("HFTUNE_CPU_THREADS"):
        return int(environ["HFTUNE_CPU_THREADS"])
    cpus = available_cpus() if cpus is None else cpus
    return max(1, cpus // max(processes, 1))


@contextlib.contextmanager
def peft_checkpointing_probe_quiet() -> Iterator[None]:
    """Wrap `get_peft_model` / `PeftModel.from_pretrained` calls in this.

    peft 0.21.2 builds every `PeftModel` by reading `model.is_gradient_checkpointing`, a property
    transformers 5.23 deprecates with a FutureWarning; hftune never reads it, so the user could do nothing
    about it. Only that message is hidden, and only inside the block.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield
