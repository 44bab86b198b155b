"""The leaf every layer may use: log lines, the cache and resource folders, the process's rank, Hub reachability.

Also the CPU threads each training process gets (one rule for `hftune train`'s accelerate flag and the recipe's
own `torch.set_num_threads`) and the context that hides the one upstream warning peft raises whenever hftune
wraps or loads an adapter. Nothing here imports torch or transformers at module level: `hftune --help` must
stay fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

from hftune.errors import HftuneError

_PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT_ROOT = _PACKAGE_DIR.parents[1]


def resource_dir(name: str) -> Path:
    """`name` is one of `recipes`, `accelerate_configs`, `hub_cards`.

    An installed wheel carries them under `hftune/_resources/`; a clone (or editable install) has them
    at the repository root.
    """
    for candidate in (_PACKAGE_DIR / "_resources" / name, _CHECKOUT_ROOT / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"hftune resource folder {name!r} not found next to {_PACKAGE_DIR}")


def is_main_process() -> bool:
    """Rank 0 of a multi-process launch, or the only process: the one that logs, locks and saves."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Processes that really train together: the joined process group, not the launcher's WORLD_SIZE (a
    `MULTI_GPU` config without `use_cpu` on a GPU-less machine starts independent single processes)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def log(message: str) -> None:
    if is_main_process():
        print(f"hftune: {message}", flush=True)


def warn(message: str) -> None:
    print(f"hftune: warning: {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Where hftune keeps what it fetched once: `$HFTUNE_CACHE`, else `~/.cache/hftune`."""
    root = (
        os.environ.get("HFTUNE_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hftune"
    )
    return Path(root)


def hub_is_reachable(timeout: float = 3.0) -> bool:
    """One quick request to the endpoint, so an offline machine learns it in seconds, not minutes of retries."""
    import urllib.request

    from huggingface_hub import constants

    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=timeout)  # noqa: S310 - the configured Hub endpoint
    except urllib.error.HTTPError:
        return True  # the server answered
    except (OSError, ValueError):
        return False
    return True


def fail_fast_when_hub_unreachable(name: str, kind: str = "model") -> None:
    """Switch to cache-only mode when the Hub cannot be reached, so a cached id still loads at once."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_is_reachable():
        return
    print(f"hftune: the Hub is unreachable; loading {kind} {name!r} from the local cache only", flush=True)
    import datasets

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True  # read by huggingface_hub and transformers at each call
    datasets.config.HF_HUB_OFFLINE = True  # datasets keeps its own copy


def check_repo_id(repo_id: str, source: str) -> None:
    """A repo id must be `namespace/name` in the Hub's alphabet, so the URL is known before uploading."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HftuneError(f"invalid repo id {repo_id!r} from {source}: {err}".rstrip(".")) from None
    if repo_id.count("/") != 1:
        raise HftuneError(f"invalid repo id {repo_id!r} from {source}: write it as ORG_OR_USER/NAME")


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


# --- library notices a user cannot act on --------------------------------------------------------------------
# bitsandbytes (0.49+) logs "Failed to load CPU gemm_4bit_forward from kernels-community" when it is imported on a
# CPU with avx512_bf16 and the optional `kernels` package is missing; it then uses its own CPU kernel, and `kernels`
# would fetch the faster one from the Hub. peft imports bitsandbytes whenever it is installed (`peft/helpers.py`, at
# `import peft`), and transformers imports peft with `TrainingArguments`, so without this the notice is the first
# line of every recipe, quantised or not. Importing bitsandbytes only for quantisation would need peft's import of it
# to fail, which peft's cached `is_bnb_available` checks then get wrong; a filter on that one logger drops that one
# message and leaves every other bitsandbytes log line as it is. `import hftune` installs it, before transformers.
BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BITSANDBYTES_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class DropMessage(logging.Filter):
    """Drops the records whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def silence_library_notices() -> None:
    """Install the filters; before the library's import (loggers are created on first use, by name)."""
    logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    if not any(isinstance(f, DropMessage) and f.prefix == BITSANDBYTES_KERNEL_NOTICE for f in logger.filters):
        logger.addFilter(DropMessage(BITSANDBYTES_KERNEL_NOTICE))
