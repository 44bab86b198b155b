"""Preflight decisions on described hardware, the memory callback, and the accelerate configs launched for real."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from transformers import TrainerState, TrainingArguments

from hftune.errors import HftuneError
from hftune.hardware import (
    HardwareInfo,
    decide_precision,
    detect_hardware,
    peak_memory_mb,
    resolve_device,
    set_cuda_memory_fraction,
)
from hftune.training.callbacks import MemoryCallback

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "accelerate_configs"

GTX_1660 = HardwareInfo("cuda", (7, 5), 6 * 2**30, "GeForce GTX 1660", "2.13.0", None, False, 8, True)
A100 = HardwareInfo("cuda", (8, 0), 40 * 2**30, "A100", "2.13.0", None, False, 32, True)
MAC_OLD_TORCH = HardwareInfo("mps", torch_version="2.4.1", macos_version="14.5", cpu_count=8)
MAC_TORCH_25_VENTURA = HardwareInfo("mps", torch_version="2.5.1", macos_version="13.6", cpu_count=8)
MAC_NEW = HardwareInfo("mps", torch_version="2.6.0", macos_version="14.2", cpu_count=8)
CPU_AMX = HardwareInfo("cpu", cpu_supports_bf16=True, cpu_fast_bf16_matmul=True, cpu_count=2)
# avx512_bf16 without AMX (this machine): bf16 runs, but slower than fp32
CPU_BF16 = HardwareInfo("cpu", cpu_supports_bf16=True, cpu_count=2, bitsandbytes_available=True)
CPU_PLAIN = HardwareInfo("cpu", cpu_supports_bf16=False, cpu_count=2, bitsandbytes_available=True)


@pytest.mark.parametrize(
    ("hw", "kwargs", "precision"),
    [
        (GTX_1660, {}, "fp16"),
        (A100, {}, "bf16"),
        (A100, {"model_type": "t5"}, "bf16"),
        (GTX_1660, {"model_type": "t5"}, "fp32"),
        (GTX_1660, {"model_type": "mt5"}, "fp32"),
        (GTX_1660, {"requested": "fp32"}, "fp32"),
        (MAC_OLD_TORCH, {}, "fp32"),
        (MAC_TORCH_25_VENTURA, {}, "fp16"),
        (MAC_NEW, {}, "bf16"),
        (MAC_NEW, {"requested": "bf16"}, "bf16"),
        (CPU_AMX, {}, "bf16"),
        (CPU_BF16, {}, "fp32"),
        (CPU_BF16, {"requested": "bf16"}, "bf16"),
        (CPU_PLAIN, {}, "fp32"),
        (CPU_BF16, {"requested": "fp32"}, "fp32"),
    ],
)
def test_precision_decisions(hw: HardwareInfo, kwargs: dict, precision: str) -> None:
    decision = decide_precision(hw, **kwargs)
    assert decision.device == hw.device_type
    assert decision.precision == precision
    assert decision.trainer_kwargs == {
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": hw.device_type == "cpu",
    }
    assert decision.reasons and "\n" not in decision.summary()
    assert decision.summary().startswith(f"device={hw.device_type} precision={precision}")


def test_t5_fallback_names_the_reason() -> None:
    decision = decide_precision(GTX_1660, model_type="t5")
    assert "transformers#14189" in decision.summary() and "7.5" in decision.summary()


@pytest.mark.parametrize(
    ("hw", "kwargs", "fragments"),
    [
        (GTX_1660, {"requested": "bf16"}, ["--precision bf16", "8.0", "7.5"]),
        (GTX_1660, {"requested": "fp16", "model_type": "t5"}, ["fp16", "t5", "14189"]),
        (MAC_OLD_TORCH, {"requested": "fp16"}, ["torch >= 2.5", "2.4.1"]),
        (MAC_TORCH_25_VENTURA, {"requested": "bf16"}, ["macOS >= 14", "13.6"]),
        (MAC_NEW, {"quantization": "4bit"}, ["--load_in_4bit", "MPS", "bitsandbytes"]),
        (MAC_NEW, {"quantization": "8bit"}, ["--load_in_8bit", "MPS"]),
        (CPU_BF16, {"requested": "fp16"}, ["--precision fp16", "silent no-op", "fp32"]),
        (CPU_PLAIN, {"requested": "bf16"}, ["--precision bf16", "no native bf16"]),
        (CPU_PLAIN, {"requested": "fp8"}, ["'fp8'"]),
    ],
)
def test_refused_requests_explain_the_fix(hw: HardwareInfo, kwargs: dict, fragments: list[str]) -> None:
    with pytest.raises(HftuneError) as err:
        decide_precision(hw, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_quantization_on_mps_can_fall_back_explicitly() -> None:
    decision = decide_precision(MAC_NEW, quantization="4bit", quantization_fallback=True)
    assert decision.precision == "bf16"
    assert any("--load_in_4bit ignored" in reason for reason in decision.reasons)


def test_quantization_without_bitsandbytes_is_refused() -> None:
    no_bnb = HardwareInfo("cuda", (7, 5), 6 * 2**30, bitsandbytes_available=False)
    with pytest.raises(HftuneError, match="pip install bitsandbytes"):
        decide_precision(no_bnb, quantization="4bit")


def test_resolve_device() -> None:
    assert resolve_device("auto", GTX_1660) == "cuda"
    assert resolve_device("auto", MAC_NEW) == "mps"
    assert resolve_device("auto", CPU_PLAIN) == "cpu"
    assert resolve_device("cpu", GTX_1660) == "cpu"
    with pytest.raises(HftuneError, match="--device cuda .* no CUDA device"):
        resolve_device("cuda", MAC_NEW)
    with pytest.raises(HftuneError, match="--device mps"):
        resolve_device("mps", CPU_PLAIN)
    with pytest.raises(HftuneError, match="'tpu'"):
        resolve_device("tpu", CPU_PLAIN)


def test_explicit_device_routes_the_decision() -> None:
    decision = decide_precision(GTX_1660, device="cpu")
    assert decision.device == "cpu" and decision.precision == "fp32" and decision.trainer_kwargs["use_cpu"]


def test_detect_hardware_on_this_machine() -> None:
    hw = detect_hardware()
    assert hw.device_type in ("cuda", "mps", "cpu")
    assert hw.cpu_count >= 1
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if flags:
        assert hw.cpu_supports_bf16 == bool(re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", flags))
        assert hw.cpu_fast_bf16_matmul == bool(re.search(r"\b(amx_bf16|bf16)\b", flags))
    decision = decide_precision(hw)
    assert decision.precision in ("fp32", "fp16", "bf16")


def test_set_cuda_memory_fraction() -> None:
    assert set_cuda_memory_fraction(None) is False
    assert set_cuda_memory_fraction(0.85, device="cpu") is False
    with pytest.raises(HftuneError, match="--max_memory_fraction 1.5"):
        set_cuda_memory_fraction(1.5)


def test_peak_memory_on_cpu_is_peak_rss() -> None:
    scale = 2**20 if sys.platform == "darwin" else 1024
    expected = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    measured = peak_memory_mb("cpu")
    # The peak cannot be below the current resident set.
    assert measured >= psutil.Process().memory_info().rss / 2**20 * 0.99
    assert abs(measured - expected) < 50


def test_memory_callback_adds_peak_to_logs(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    state = TrainerState()
    state.global_step = 5
    state.log_history.append({"loss": 0.5, "step": 5})
    callback = MemoryCallback()
    logs = {"loss": 0.5}
    callback.on_log(args, state, None, logs=logs)
    assert logs["peak_memory_mb"] > 10
    assert state.log_history[-1]["peak_memory_mb"] == logs["peak_memory_mb"]
    assert callback.peak_mb >= logs["peak_memory_mb"]


_PROBE = """
import json, pathlib
import torch
from transformers import TrainingArguments
args = TrainingArguments(output_dir={out!r}, use_cpu=True, report_to=[])
probe = dict(rank=args.process_index, world=args.world_size, threads=torch.get_num_threads())
# One file per process: the workers share one stdout, where lines can interleave.
pathlib.Path({out!r}, f"probe_{{args.process_index}}.json").write_text(json.dumps(probe))
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
"""


def _launch(config: str, tmp_path: Path) -> list[dict[str, int]]:
    script = tmp_path / "probe.py"
    out = tmp_path / "out"
    out.mkdir()
    script.write_text(_PROBE.format(out=str(out)))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(CONFIGS / config),
            str(script),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(p.read_text()) for p in sorted(out.glob("probe_*.json"))]


def test_cpu_config_uses_all_physical_cores(tmp_path: Path) -> None:
    (probe,) = _launch("cpu.yaml", tmp_path)
    assert probe["world"] == 1
    assert probe["threads"] == max(psutil.cpu_count(logical=False), 1)


def test_multi_cpu_config_starts_two_processes(tmp_path: Path) -> None:
    probes = _launch("multi_cpu.yaml", tmp_path)
    assert sorted(p["rank"] for p in probes) == [0, 1]
    assert all(p["world"] == 2 for p in probes)
    assert all(p["threads"] == max(psutil.cpu_count(logical=False) // 2, 1) for p in probes)


def test_every_config_loads_and_says_how_to_launch() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert names == ["cpu.yaml", "fsdp.yaml", "gpu_6gb.yaml", "mps.yaml", "multi_cpu.yaml", "multi_gpu.yaml"]
    for name in names:
        text = (CONFIGS / name).read_text()
        assert f"accelerate launch --config_file accelerate_configs/{name}" in text
        assert text.startswith("# ") and "When:" in text
        load_config_from_file(str(CONFIGS / name))
