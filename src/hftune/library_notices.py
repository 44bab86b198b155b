"""Library notices a user cannot act on, silenced where they are emitted. `import hftune` installs this first.

bitsandbytes (0.49+) logs "Failed to load CPU gemm_4bit_forward from kernels-community" when it is imported on a
CPU with avx512_bf16 and the optional `kernels` package is missing; it then uses its own CPU kernel, and
`kernels` would fetch the faster one from the Hub. peft imports bitsandbytes whenever it is installed
(`peft/helpers.py`, at `import peft`), and transformers imports peft with `TrainingArguments`, so without this
the notice is the first line of every recipe, quantised or not. Importing bitsandbytes only for quantisation
would need peft's import to fail, which its cached `is_bnb_available` checks then get wrong; a filter on that
one logger drops that one message and leaves every other bitsandbytes log line as it is.
"""

from __future__ import annotations

import logging

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
