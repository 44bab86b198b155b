"""`hftune train RECIPE`: the accelerate config per hardware, the thread flag that keeps accelerate quiet, and
real launches through accelerate's own CLI (a bad flag, a short training run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hftune.errors import HftuneError
from hftune.hardware import HardwareInfo
from hftune.launch import (
    choose_accelerate_config,
    cpu_thread_flags,
    resolve_config_file,
    resolve_recipe,
    split_train_argv,
)
from hftune.runtime import cpu_threads_per_process, resource_dir

REPO = Path(__file__).resolve().parents[1]
CONFIGS = resource_dir("accelerate_configs")
# bitsandbytes prints this at import on a machine without `kernels` (issue 22 removes it); nothing else may.
BITSANDBYTES_KERNELS_LINE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def load_config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text(encoding="utf-8"))


# --- the choice, as pure functions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hw", "name", "use_cpu", "words"),
    [
        (HardwareInfo(device_type="cuda", cuda_capability=(7, 5), cuda_total_memory_bytes=6_442_450_944,
                      gpu_name="NVIDIA GeForce GTX 1660"), "gpu_6gb", False, ["GTX 1660", "6.4 GB"]),
        (HardwareInfo(device_type="cuda", cuda_capability=(9, 0), cuda_total_memory_bytes=150_000_000_000,
                      gpu_name="NVIDIA H200"), "gpu_6gb", False, ["H200", "150.0 GB"]),
        (HardwareInfo(device_type="mps", gpu_name="Apple MPS"), "mps", False, ["MPS"]),
        (HardwareInfo(device_type="cpu", cpu_count=2), "cpu", True, ["no GPU"]),
    ],
    ids=["cuda_6gb", "cuda_large", "mps", "cpu"],
)  # fmt: skip
def test_config_per_hardware(hw, name, use_cpu, words):
    choice = choose_accelerate_config(hw)
    assert choice.name == name
    assert all(word in choice.reason for word in words), choice.reason
    config = load_config(name)  # the file exists and runs one process on the device it was picked for
    assert config["num_processes"] == 1 and bool(config["use_cpu"]) is use_cpu


def test_cpu_configs_get_an_explicit_thread_count_and_gpu_configs_none():
    assert cpu_thread_flags(load_config("cpu"), {}, cpus=8) == ["--num_cpu_threads_per_process", "8"]
    assert cpu_thread_flags(load_config("multi_cpu"), {}, cpus=8) == ["--num_cpu_threads_per_process", "4"]
    assert cpu_thread_flags(load_config("cpu"), {"HFTUNE_CPU_THREADS": "3"}, cpus=8)[-1] == "3"
    # The shell's OMP_NUM_THREADS decides, and accelerate takes it without a notice.
    assert cpu_thread_flags(load_config("cpu"), {"OMP_NUM_THREADS": "2"}, cpus=8) == []
    assert cpu_thread_flags(load_config("gpu_6gb"), {}, cpus=8) == []
    assert cpu_thread_flags(load_config("mps"), {}, cpus=8) == []


def test_threads_per_process_share_the_cpus():
    assert cpu_threads_per_process(1, cpus=16, environ={}) == 16
    assert cpu_threads_per_process(3, cpus=16, environ={}) == 5
    assert cpu_threads_per_process(4, cpus=2, environ={}) == 1  # never zero
    assert cpu_threads_per_process(2, cpus=16, environ={"HFTUNE_CPU_THREADS": "1"}) == 1


def test_argv_split_keeps_the_recipe_flags_in_order():
    argv = ["--config_file", "multi_cpu", "sentiment_lora", "--output_dir", "out", "--lora_r", "4"]
    assert split_train_argv(argv) == ("sentiment_lora", "multi_cpu", ["--output_dir", "out", "--lora_r", "4"])
    assert split_train_argv(["x.py", "--config", "run.yaml", "--config_file=cpu"]) == (
        "x.py", "cpu", ["--config", "run.yaml"]
    )  # fmt: skip
    with pytest.raises(HftuneError, match="--learning_rate comes before the recipe"):
        split_train_argv(["--learning_rate", "1e-3", "sentiment_lora"])
    with pytest.raises(HftuneError, match="no recipe given"):
        split_train_argv(["--config_file", "cpu"])
    with pytest.raises(HftuneError, match="--config_file needs a value"):
        split_train_argv(["sentiment_lora", "--config_file"])


def test_recipes_and_configs_by_name_or_path(tmp_path, monkeypatch):
    assert resolve_recipe("sentiment_lora") == resource_dir("recipes") / "sentiment_lora.py"
    assert resolve_recipe("sentiment_lora.py") == resource_dir("recipes") / "sentiment_lora.py"
    own = tmp_path / "my_recipe.py"
    own.write_text("print('hi')\n", encoding="utf-8")
    assert resolve_recipe(str(own)) == own
    assert resolve_config_file("multi_cpu") == CONFIGS / "multi_cpu.yaml"
    monkeypatch.chdir(tmp_path)  # a name that is neither a file here nor a shipped recipe
    with pytest.raises(HftuneError, match=r"recipe 'sentiment_lroa' not found: name one of .*sentiment_lora"):
        resolve_recipe("sentiment_lroa")
    with pytest.raises(HftuneError, match=r"--config_file 'gpu_8gb' not found: name one of cpu, "):
        resolve_config_file("gpu_8gb")


def test_the_cli_and_the_verb_import_no_torch():
    code = (
        "import sys\n"
        "import hftune.cli, hftune.launch, hftune.runtime\n"
        "assert hftune.cli.main(['train', '--help']) == 0\n"
        "print('heavy:', sorted(m for m in ('torch', 'transformers', 'accelerate', 'peft') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage: hftune train RECIPE" in done.stdout
    assert "heavy: []" in done.stdout


# --- real launches through accelerate -------------------------------------------------------------------


def hftune_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # where accelerate would pick one
    env["HFTUNE_CPU_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "hftune.cli", "train", *args],
        capture_output=True, text=True, timeout=600, env=env, cwd=cwd,
    )  # fmt: skip


def without_kernels_line(text: str) -> list[str]:
    return [line for line in text.splitlines() if BITSANDBYTES_KERNELS_LINE not in line]


def test_a_bad_flag_is_one_stderr_line_and_exit_2(tmp_path):
    out = tmp_path / "out"
    done = hftune_train(["sentiment_lora", "--num_train_epochs", "three", "--output_dir", str(out)], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert without_kernels_line(done.stderr) == [
        "error: argument --num_train_epochs/--num-train-epochs: invalid float value: 'three'; "
        "see `--help` for the accepted flags"
    ]
    decision = done.stdout.splitlines()[0]
    assert decision.startswith("hftune: ") and re.search(
        r"--config_file \S+/(cpu|mps|gpu_6gb)\.yaml", decision
    )
    assert not out.exists()


@pytest.mark.slow  # one real (tiny) training run behind two process start-ups: ~35 s on a shared 2-core machine
def test_a_short_run_prints_no_warning_the_user_cannot_act_on(tmp_path, emotion_dir):
    out = tmp_path / "run"
    done = hftune_train(
        ["sentiment_lora", "--train_file", str(emotion_dir / "train.txt"),
         "--validation_file", str(emotion_dir / "validation.txt"), "--max_train_samples", "32",
         "--max_eval_samples", "32", "--num_train_epochs", "1", "--max_seq_length", "32", "--output_dir", str(out)],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = re.split(r"[\r\n]", done.stdout + "\n" + done.stderr)
    noisy = [
        line
        for line in lines
        if re.search(r"warning|num_cpu_threads_per_process|traceback", line, re.IGNORECASE)
        and not line.startswith("hftune: ")
    ]
    assert noisy == [], "\n".join(noisy)
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["split_sizes"]["train"] == 32
