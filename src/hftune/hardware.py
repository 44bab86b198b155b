"""Device and precision preflight, CUDA memory cap, and the peak-memory callback.

Every decision is a pure function of a described machine (`HardwareInfo`), so each branch is tested
without the hardware. `detect_hardware()` is the only function that looks at the real machine.
The memory estimate and `hftune plan` live in `hftune.memory`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hftune.errors import HftuneError

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
QUANTIZATIONS = (None, "4bit", "8bit")

# T5-style models were pre-trained in bf16 and produce inf/NaN activations in fp16
# (transformers#14189, #10956, #23918); bf16 and fp32 are safe.
FP16_OVERFLOW_MODEL_TYPES = frozenset({"t5", "mt5", "umt5", "longt5", "switch_transformers"})

# CPU flags that mean native bf16 arithmetic (x86 AVX512-BF16 / AMX, Arm BF16). Without them bf16
# autocast still runs but is emulated and slower than fp32.
_CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# Flags under which bf16 matmuls actually beat fp32: AMX tiles on x86, BFMMLA on Arm. AVX512-BF16 alone only
# adds dot-product instructions; measured on such a Xeon, torch's bf16 matmul ran at about half the fp32 FLOP/s
# and a MiniLM training step took 1.4x longer under bf16 autocast (BENCHMARKS.md, sections 1-2).
_CPU_FAST_BF16_FLAGS = frozenset({"amx_bf16", "bf16"})


@dataclass
class HardwareInfo:
    """A description of the machine; build one by hand to reason about hardware you do not have."""

    device_type: str = "cpu"  # "cuda" | "mps" | "cpu": the best accelerator present
    cuda_capability: tuple[int, int] | None = None
    cuda_total_memory_bytes: int | None = None
    gpu_name: str | None = None
    torch_version: str = torch.__version__
    macos_version: str | None = None
    cpu_supports_bf16: bool = False  # bf16 runs natively (may still be slower than fp32)
    cpu_count: int = 1
    bitsandbytes_available: bool = False
    cpu_fast_bf16_matmul: bool = False  # bf16 matmuls are faster than fp32 (AMX / Arm BF16)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _cpu_flags() -> set[str]:
    """Feature flags of the CPU: /proc/cpuinfo on Linux, sysctl on macOS."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags: set[str] = set()
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                flags.update(value.split())
        return flags
    if sys.platform == "darwin":
        import subprocess

        out = subprocess.run(
            ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, check=False
        )
        return {"bf16"} if out.stdout.strip() == "1" else set()
    return set()


def detect_hardware() -> HardwareInfo:
    """Describe this machine: CUDA first, then MPS, then CPU."""
    cpu_flags = _cpu_flags()
    info = HardwareInfo(
        torch_version=torch.__version__,
        cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        cpu_supports_bf16=bool(cpu_flags & _CPU_BF16_FLAGS),
        cpu_fast_bf16_matmul=bool(cpu_flags & _CPU_FAST_BF16_FLAGS),
        bitsandbytes_available=importlib.util.find_spec("bitsandbytes") is not None,
    )
    mac_release = platform.mac_ver()[0]
    info.macos_version = mac_release or None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.device_type = "cuda"
        info.cuda_capability = (props.major, props.minor)
        info.cuda_total_memory_bytes = props.total_memory
        info.gpu_name = props.name
    elif torch.backends.mps.is_available():
        info.device_type = "mps"
        info.gpu_name = "Apple MPS"
    return info


def resolve_device(requested: str = "auto", hw: HardwareInfo | None = None) -> str:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is not present is an error."""
    hw = hw or detect_hardware()
    if requested not in DEVICES:
        raise HftuneError(f"--device {requested!r} is not one of {', '.join(DEVICES)}; pick one of them.")
    if requested == "auto":
        return hw.device_type
    if requested == "cpu" or requested == hw.device_type:
        return requested
    raise HftuneError(
        f"--device {requested} was requested but this machine has no {requested.upper()} device "
        f"(found: {hw.device_type}); use --device auto or --device {hw.device_type}."
    )


@dataclass
class PrecisionDecision:
    device: str
    precision: str  # "fp32" | "fp16" | "bf16"
    trainer_kwargs: dict = field(default_factory=dict)  # bf16 / fp16 / use_cpu for TrainingArguments
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"device={self.device} precision={self.precision}: " + "; ".join(self.reasons)


def _trainer_kwargs(device: str, precision: str) -> dict:
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": device == "cpu"}


def decide_precision(
    hw: HardwareInfo,
    requested: str = "auto",
    model_type: str | None = None,
    quantization: str | None = None,
    device: str = "auto",
    quantization_fallback: bool = False,
) -> PrecisionDecision:
    """Pick the training precision for `device` on `hw`, or refuse a request the hardware cannot honour.

    `quantization_fallback=True` turns a 4/8-bit request on MPS into full-precision weights (with a reason)
    instead of an error.
    """
    if requested not in PRECISIONS:
        raise HftuneError(
            f"--precision {requested!r} is not one of {', '.join(PRECISIONS)}; pick one of them."
        )
    if quantization not in QUANTIZATIONS:
        raise HftuneError(f"quantization {quantization!r} is not one of 4bit, 8bit or none.")
    device = resolve_device(device, hw)
    reasons: list[str] = []
    overflow_family = (model_type or "").lower() in FP16_OVERFLOW_MODEL_TYPES

    if quantization and device == "mps":
        flag = "--load_in_4bit" if quantization == "4bit" else "--load_in_8bit"
        if not quantization_fallback:
            raise HftuneError(
                f"{flag} needs bitsandbytes, which has no MPS backend; drop {flag} (LoRA on full-precision "
                "weights) or train on a CUDA machine."
            )
        reasons.append(f"{flag} ignored on MPS (no bitsandbytes): weights stay unquantised")
    elif quantization and not hw.bitsandbytes_available:
        raise HftuneError(
            f"{quantization} loading needs bitsandbytes, which is not installed; `pip install bitsandbytes` "
            "or drop the quantisation flag."
        )

    if device == "cuda":
        capability = hw.cuda_capability or (0, 0)
        bf16_ok = capability >= (8, 0)
        cap = f"{capability[0]}.{capability[1]}"
        if requested == "bf16" and not bf16_ok:
            raise HftuneError(
                f"--precision bf16 needs CUDA compute capability >= 8.0 but {hw.gpu_name or 'this GPU'} has {cap}; "
                "use --precision auto (fp16 mixed precision) or fp32."
            )
        if requested == "fp16" and overflow_family:
            raise HftuneError(
                f"--precision fp16 with a {model_type} model overflows to NaN (transformers#14189); "
                "use --precision auto (bf16 on >= 8.0 GPUs, else fp32)."
            )
        if requested != "auto":
            precision = requested
            reasons.append(f"{requested} as requested on CUDA {cap}")
        elif bf16_ok:
            precision = "bf16"
            reasons.append(f"CUDA capability {cap} >= 8.0 supports bf16 mixed precision")
        elif overflow_family:
            precision = "fp32"
            reasons.append(
                f"{model_type} overflows in fp16 (transformers#14189) and capability {cap} < 8.0 has no bf16: fp32"
            )
        else:
            precision = "fp16"
            reasons.append(f"CUDA capability {cap} < 8.0 has no bf16: fp16 mixed precision")
    elif device == "mps":
        torch_v = _version_tuple(hw.torch_version)
        mac_v = _version_tuple(hw.macos_version or "0")
        fp16_ok = torch_v >= (2, 5)
        bf16_ok = torch_v >= (2, 6) and mac_v >= (14,)
        if requested == "fp16" and not fp16_ok:
            raise HftuneError(
                f"--precision fp16 on MPS needs torch >= 2.5 (found {hw.torch_version}); upgrade torch or use fp32."
            )
        if requested == "bf16" and not bf16_ok:
            raise HftuneError(
                f"--precision bf16 on MPS needs torch >= 2.6 and macOS >= 14 (found torch {hw.torch_version}, "
                f"macOS {hw.macos_version}); use --precision auto or fp32."
            )
        if requested == "fp16" and overflow_family:
            raise HftuneError(
                f"--precision fp16 with a {model_type} model overflows to NaN (transformers#14189); "
                "use --precision auto."
            )
        if requested != "auto":
            precision = requested
            reasons.append(f"{requested} as requested on MPS")
        elif bf16_ok:
            precision = "bf16"
            reasons.append("MPS with torch >= 2.6 and macOS >= 14 supports bf16 mixed precision")
        elif fp16_ok and not overflow_family:
            precision = "fp16"
            reasons.append("MPS without bf16 (needs torch >= 2.6, macOS >= 14): fp16 mixed precision")
        else:
            precision = "fp32"
            why = (
                f"{model_type} overflows in fp16 (transformers#14189)"
                if overflow_family
                else "MPS mixed precision needs torch >= 2.5"
            )
            reasons.append(f"{why}: fp32")
        reasons.append("no float64 on MPS (pytorch#122602)")
    else:
        if requested == "fp16":
            raise HftuneError(
                "--precision fp16 on CPU is a silent no-op in Trainer (it trains in fp32); "
                "use --precision auto (bf16 where it is faster on this CPU) or fp32."
            )
        if requested == "bf16" and not hw.cpu_supports_bf16:
            raise HftuneError(
                "--precision bf16 was requested but this CPU has no native bf16 (avx512_bf16 / AMX / Arm BF16); "
                "use --precision auto or fp32."
            )
        if requested == "fp32":
            precision = "fp32"
            reasons.append("fp32 as requested on CPU")
        elif requested == "bf16":
            precision = "bf16"
            reasons.append("bf16 autocast as requested on a CPU with native bf16")
        elif hw.cpu_fast_bf16_matmul:
            precision = "bf16"
            reasons.append("CPU has fast bf16 matmuls (AMX / Arm BF16): bf16 autocast")
        elif hw.cpu_supports_bf16:
            precision = "fp32"
            reasons.append(
                "CPU has avx512_bf16 but no AMX: bf16 matmuls run slower than fp32 there, so fp32 "
                "(--precision bf16 to force it)"
            )
        else:
            precision = "fp32"
            reasons.append("CPU without native bf16: fp32")
        reasons.append(f"{hw.cpu_count} CPU threads")
    return PrecisionDecision(device, precision, _trainer_kwargs(device, precision), reasons)


def set_cuda_memory_fraction(fraction: float | None, device: str | None = None) -> bool:
    """Cap this process's CUDA allocations (`--max_memory_fraction`); returns whether a cap was set."""
    if fraction is None:
        return False
    if not 0.0 < fraction <= 1.0:
        raise HftuneError(f"--max_memory_fraction {fraction} must be in (0, 1], e.g. 0.85.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cuda" or not torch.cuda.is_available():
        logger.info("--max_memory_fraction %.2f ignored: device is %s, not CUDA", fraction, device)
        return False
    torch.cuda.set_per_process_memory_fraction(fraction)
    logger.info("CUDA memory capped at %.0f%% of the device", fraction * 100)
    return True


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process in MiB: CUDA max allocated, MPS driver allocation, else peak RSS."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    if device.startswith("mps") and torch.backends.mps.is_available():
        # MPS has no peak counter: the driver's current allocation is the closest figure.
        return torch.mps.driver_allocated_memory() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS, kilobytes on Linux.
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024
