"""`--config file.yaml` and command-line flags into the recipes' argument dataclasses.

Precedence, lowest first: the recipe's own defaults, then the YAML file, then command-line flags.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import Any, NoReturn

import yaml
from transformers import HfArgumentParser, TrainingArguments

from hftune.config.checks import check_arguments, check_writable_folder
from hftune.errors import HftuneError


def _convert_yaml_value(parser: HfArgumentParser, key: str, value: Any, source: str) -> Any:
    """Convert one YAML value with the parser's own type for `key`, naming key and file on failure."""
    actions = {a.dest: a for a in parser._actions}
    action = actions[key]
    values = value if isinstance(value, list) else [value]
    if action.nargs in ("+", "*") and not isinstance(value, list):
        raise HftuneError(f"{source}: `{key}` must be a list (e.g. `{key}: [a, b]`), got {value!r}")
    converted = []
    for item in values:
        try:
            # Through str(): int("2.5") fails where int(2.5) would silently truncate.
            item = action.type(str(item)) if action.type is not None and item is not None else item
        except (TypeError, ValueError) as err:
            expected = getattr(action.type, "__name__", str(action.type))
            raise HftuneError(
                f"{source}: `{key}` has value {item!r}, which is not a valid {expected} ({err}); fix the YAML value"
            ) from None
        if action.choices is not None and item not in action.choices:
            raise HftuneError(
                f"{source}: `{key}` is {item!r}; choose one of {', '.join(map(str, action.choices))}"
            )
        converted.append(item)
    return converted if isinstance(value, list) else converted[0]


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HftuneError(f"config file {str(path)!r} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise HftuneError(
            f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)}); fix the syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HftuneError(f"{path}: expected a mapping of `key: value` lines, got a {type(data).__name__}")
    return data


def strip_traceback_flag(argv: list[str]) -> list[str]:
    """Drop a bare `--debug` (ours: show tracebacks, read by hftune.errors).

    `--debug underflow_overflow` with a value stays: that one is TrainingArguments'.
    """
    return [
        a
        for i, a in enumerate(argv)
        if not (a == "--debug" and (i + 1 == len(argv) or argv[i + 1].startswith("-")))
    ]


def _raise_argument_error(message: str) -> NoReturn:
    """argparse's own `error()` prints the usage of every flag first: ~150 lines with TrainingArguments."""
    raise HftuneError(f"{message}; see `--help` for the accepted flags")


def parse_recipe_args(
    dataclass_types: tuple[type, ...],
    recipe_defaults: dict[str, Any] | None = None,
    argv: list[str] | None = None,
) -> tuple:
    """Parse `argv` into one instance per dataclass type.

    `--config file.yaml` supplies values (unknown keys and wrong types fail with the key's name),
    command-line flags override them, and `recipe_defaults` sit underneath both.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    argv = strip_traceback_flag(argv)

    pre = argparse.ArgumentParser(add_help=False)
    pre.error = _raise_argument_error  # type: ignore[method-assign]
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)

    parser = HfArgumentParser(dataclass_types)
    parser.error = _raise_argument_error  # type: ignore[method-assign]
    parser.add_argument(
        "--config", default=None, help="YAML file of argument values; command-line flags override it."
    )
    dests = {a.dest for a in parser._actions}

    values: dict[str, Any] = {}
    for key, value in (recipe_defaults or {}).items():
        if key not in dests:
            raise ValueError(f"recipe default {key!r} is not an argument of {dataclass_types}")
        values[key] = value
    if known.config:
        source = str(known.config)
        for key, value in load_yaml_config(known.config).items():
            if key not in dests:
                close = difflib.get_close_matches(key, sorted(dests), n=1)
                hint = f"; did you mean `{close[0]}`?" if close else ""
                raise HftuneError(f"{source}: unknown key `{key}`{hint}")
            values[key] = _convert_yaml_value(parser, key, value, source)
    parser.set_defaults(**values)
    for action in parser._actions:
        if action.dest in values:
            action.required = False  # supplied by the YAML or the recipe

    try:
        *parsed, leftovers = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    except ValueError as err:  # TrainingArguments.__post_init__ rejects inconsistent combinations
        raise HftuneError(f"invalid arguments: {err}") from None
    if leftovers:
        raise HftuneError(f"unknown argument(s) {' '.join(leftovers)}; see `--help` for the accepted flags")
    # The Namespace holding --config/--debug comes back last; the caller wants only the dataclasses.
    parsed = tuple(p for p in parsed if not isinstance(p, argparse.Namespace))
    # Ranges, data files and the output folder, before any data or model is loaded.
    check_arguments(parsed)
    for args in parsed:
        if isinstance(args, TrainingArguments):
            check_writable_folder(args.output_dir)
    return parsed
