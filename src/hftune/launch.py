"""`hftune train RECIPE [flags]`: run a recipe under accelerate's own launcher with this machine's config.

    hftune train sentiment_lora                       # = accelerate launch -q --config_file
                                                      #   accelerate_configs/cpu.yaml recipes/sentiment_lora.py
    hftune train sentiment_freeze --num_train_epochs 1
    hftune train my_recipe.py --config_file multi_cpu # a config name or a path

RECIPE is a recipe name (`sentiment_lora`) or the path of a script. The accelerate config is picked from the
hardware found (gpu_6gb.yaml on a CUDA GPU, mps.yaml on Apple silicon, else cpu.yaml); `--config_file`
overrides it. The launch is quiet: accelerate gets the CPU thread count explicitly (otherwise it prints a
notice that it chose one), and with `-q` it adds no traceback of its own when the recipe fails, so a user
error reads as the recipe's one `error: ...` line and the verb exits with the recipe's exit code.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftune.errors import EXIT_CODE_FILE_ENV, HftuneError
from hftune.runtime import cpu_threads_per_process, resource_dir

if TYPE_CHECKING:
    from hftune.hardware import HardwareInfo

USAGE = """usage: hftune train RECIPE [--config_file CONFIG] [recipe flags ...]

Run RECIPE under `accelerate launch -q` with the accelerate config for this machine.

  RECIPE         a recipe from recipes/ or the path of a recipe script
                 ({recipes})
  --config_file  an accelerate config from accelerate_configs/ or the path of one
                 ({configs});
                 default: gpu_6gb on a CUDA GPU, mps on Apple silicon, else cpu

Every other flag goes to the recipe: `hftune train RECIPE --help` lists them."""


@dataclass(frozen=True)
class ConfigChoice:
    """The accelerate config picked for a machine: its name in accelerate_configs/ and why."""

    name: str
    reason: str


def choose_accelerate_config(hw: HardwareInfo) -> ConfigChoice:
    """The config for the machine `hw` describes (build one by hand for hardware you do not have).

    gpu_6gb.yaml is the single-GPU profile: one process on GPU 0, precision left to the recipe's preflight, so
    it serves a card of any size; the memory is reported so the user can pass `--memory_budget`.
    """
    if hw.device_type == "cuda":
        memory = (
            f"{hw.cuda_total_memory_bytes / 1e9:.1f} GB" if hw.cuda_total_memory_bytes else "memory unknown"
        )
        return ConfigChoice("gpu_6gb", f"CUDA GPU {hw.gpu_name or '0'} ({memory}), one process on GPU 0")
    if hw.device_type == "mps":
        return ConfigChoice("mps", "Apple-silicon GPU (MPS), one process")
    return ConfigChoice("cpu", "no GPU, one process on the CPU")


def _names(folder: Path, suffix: str) -> list[str]:
    return sorted(path.stem for path in folder.glob(f"*{suffix}"))


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies inside it: a shorter command to read and copy."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def resolve_recipe(recipe: str) -> Path:
    """A recipe name (`sentiment_lora` or `sentiment_lora.py`) from recipes/, or the path of a script."""
    path = Path(recipe)
    if path.is_file():
        return path
    folder = resource_dir("recipes")
    named = folder / f"{recipe.removesuffix('.py')}.py"
    if path.parent == Path(".") and named.is_file():
        return named
    raise HftuneError(
        f"recipe {recipe!r} not found: name one of {', '.join(_names(folder, '.py'))} or give the path of a "
        "recipe script"
    )


def resolve_config_file(config: str) -> Path:
    """An accelerate config given by name (`cpu`, `multi_cpu.yaml`) from accelerate_configs/, or a path."""
    path = Path(config)
    if path.is_file():
        return path
    folder = resource_dir("accelerate_configs")
    named = folder / f"{config.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and named.is_file():
        return named
    raise HftuneError(
        f"--config_file {config!r} not found: name one of {', '.join(_names(folder, '.yaml'))} or give the "
        "path of an accelerate config YAML"
    )


def read_accelerate_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise HftuneError(f"--config_file {path}: not valid YAML ({err}); fix the file") from None
    if not isinstance(config, dict):
        raise HftuneError(f"--config_file {path}: expected a mapping of accelerate settings")
    return config


def cpu_thread_flags(
    config: Mapping[str, Any], environ: Mapping[str, str], cpus: int | None = None
) -> list[str]:
    """The `--num_cpu_threads_per_process` flag for a CPU config, so accelerate need not pick (and announce)
    one; the same count each recipe process gives torch. No flag for GPU configs, or where the shell's
    OMP_NUM_THREADS already decides (accelerate then uses it silently)."""
    if not config.get("use_cpu") or "OMP_NUM_THREADS" in environ:
        return []
    processes = int(config.get("num_processes") or 1)
    threads = cpu_threads_per_process(processes, cpus=cpus, environ=environ)
    return ["--num_cpu_threads_per_process", str(threads)]


def split_train_argv(argv: list[str]) -> tuple[str, str | None, list[str]]:
    """(recipe, --config_file value or None, the recipe's own flags in their order).

    RECIPE comes first (only `--config_file` may precede it), so a flag's value is never taken for it.
    """
    config_file: str | None = None
    recipe: str | None = None
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--config_file":
            config_file = next(args, None)
            if config_file is None:
                raise HftuneError("--config_file needs a value: an accelerate config name or YAML path")
        elif arg.startswith("--config_file="):
            config_file = arg.split("=", 1)[1]
        elif recipe is None:
            if arg.startswith("-"):
                raise HftuneError(
                    f"{arg} comes before the recipe: `hftune train RECIPE [flags]`, e.g. "
                    "`hftune train sentiment_lora --num_train_epochs 1`"
                )
            recipe = arg
        else:
            rest.append(arg)
    if recipe is None:
        raise HftuneError(
            "no recipe given: `hftune train RECIPE [flags]`, e.g. `hftune train sentiment_lora`"
        )
    return recipe, config_file, rest


def train_command(argv: list[str]) -> int:
    """`hftune train RECIPE [--config_file CONFIG] [recipe flags]`; returns the recipe's exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        print(
            USAGE.format(
                recipes=", ".join(_names(resource_dir("recipes"), ".py")),
                configs=", ".join(_names(resource_dir("accelerate_configs"), ".yaml")),
            )
        )
        return 0
    recipe_name, config_name, recipe_args = split_train_argv(argv)
    recipe = resolve_recipe(recipe_name)
    if config_name is None:
        from hftune.hardware import detect_hardware  # imports torch: only now, when the verb runs

        choice = choose_accelerate_config(detect_hardware())
        config_file, reason = resource_dir("accelerate_configs") / f"{choice.name}.yaml", choice.reason
    else:
        config_file, reason = resolve_config_file(config_name), "--config_file given"
    config = read_accelerate_config(config_file)
    launch_args = [
        "launch",
        "-q",
        "--config_file",
        _shown(config_file),
        *cpu_thread_flags(config, os.environ),
        _shown(recipe),
        *recipe_args,
    ]
    print(f"hftune: {reason}; running accelerate {shlex.join(launch_args)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hftune-train-") as scratch:
        exit_code_file = Path(scratch) / "exit_code"
        env = {**os.environ, EXIT_CODE_FILE_ENV: str(exit_code_file)}
        # accelerate's own CLI, run by this interpreter: the same environment whether or not PATH has it.
        command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", *launch_args]
        process = subprocess.Popen(command, env=env)
        try:
            returncode = process.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the recipe too: let it stop (and save) on its own
            returncode = process.wait()
        if returncode != 0 and exit_code_file.is_file():
            return int(exit_code_file.read_text(encoding="utf-8"))
    return 128 - returncode if returncode < 0 else returncode  # killed by a signal: the shell's convention
