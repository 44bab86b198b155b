"""One error type for everything a user can fix, and the wrapper that turns it into one line."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

# `accelerate launch -q` exits 1 whatever its script exited with; `hftune train` points this variable at a
# file where the script records its exit code, so the verb can pass it on.
EXIT_CODE_FILE_ENV = "HFTUNE_EXIT_CODE_FILE"


class HftuneError(Exception):
    """A problem with the user's input or environment.

    The message names the bad value, where it came from and how to fix it; it is printed as one line
    without a traceback (unless `--debug` is given or `HFTUNE_DEBUG=1`).
    """


def debug_requested(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("HFTUNE_DEBUG", "") not in ("", "0")


def record_exit_code(code: int) -> None:
    """Write `code` where `hftune train` reads it (nothing to do outside `hftune train`)."""
    path = os.environ.get(EXIT_CODE_FILE_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(str(code))


def exit_on_user_error(func: F) -> F:
    """Decorate a script's `main`: an `HftuneError` becomes `error: ...` on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except HftuneError as err:
            if debug_requested():
                traceback.print_exc()
            print(f"error: {err}", file=sys.stderr)
            record_exit_code(2)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
