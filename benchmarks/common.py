"""Shared benchmark helpers: thread pinning, warm-up + repeat timing, medians, markdown/JSON/PNG output.

Import this module before torch: it pins the OpenMP/MKL thread pools through the environment, which
only takes effect before torch starts its pools. Every script calls `setup()` first thing in `main()`.

    python benchmarks/common.py assemble RESULTS_DIR BENCHMARKS.md   # fill BENCHMARKS.md from results
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
EMOTION_DIR = REPO_ROOT.parent / "shared" / "data" / "emotion"


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# Before torch is imported anywhere: one fixed thread count for every pool, no Hub, no progress noise.
_THREADS = int(os.environ.get("BENCH_THREADS", available_cores()))
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(_THREADS)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402 - must follow the environment set above


def setup(threads: int | None = None, seed: int = 0) -> int:
    """Pin torch's intra-op threads (and inter-op to 1 thread per process); seed; quiet datasets."""
    threads = threads or _THREADS
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # raises when already set once in this process
        torch.set_num_interop_threads(1)
    torch.manual_seed(seed)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return threads


def time_call(fn: Callable[[], Any], *, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def peak_live_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of tensors allocated by `fn` and alive at once while it runs (on top of what was alive
    before): the CPU counterpart of CUDA's max_memory_allocated, from the profiler's allocation events.
    Unlike RSS it counts neither what the C allocator keeps after a free nor the interpreter and libraries."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Every allocation and free is charged to exactly one event (the innermost op running, or a "[memory]"
    # event outside ops) as its self_cpu_memory_usage: in time order they trace the bytes alive.
    allocations = sorted(
        (e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage
    )
    live = peak = 0
    for _, delta in allocations:
        live += delta
        peak = max(peak, live)
    return peak


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: what the recipes' MemoryCallback reports on CPU."""
    from hftune.hardware import peak_memory_mb

    return peak_memory_mb("cpu")


def run_json_worker(cmd: Sequence[str], what: str) -> dict[str, Any]:
    """Run a benchmark's worker process (one configuration alone, so its peak RSS is its own) and return the
    JSON object of the last line it prints that starts with "{"."""
    from hftune.errors import HftuneError

    done = subprocess.run(list(cmd), capture_output=True, text=True, env=os.environ.copy())
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise HftuneError(f"{what} failed (exit {done.returncode}): {tail}")
    return json.loads(lines[-1])


def cpu_model_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@functools.cache
def _hardware():
    from hftune.hardware import detect_hardware

    return detect_hardware()


def cpu_supports_bf16() -> bool:
    """bf16 runs natively on this CPU (it may still be slower than fp32)."""
    return _hardware().cpu_supports_bf16


def cpu_fast_bf16_matmul() -> bool:
    """bf16 matmuls beat fp32 here (AMX / Arm BF16): where the recipes train under bf16 autocast."""
    return _hardware().cpu_fast_bf16_matmul


def machine_info() -> dict[str, Any]:
    import transformers

    return {
        "cpu": cpu_model_name(),
        "cores": available_cores(),
        "threads_used": torch.get_num_threads(),
        "cpu_bf16": cpu_supports_bf16(),
        "cpu_fast_bf16_matmul": cpu_fast_bf16_matmul(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
    }


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):  # a copy outside the repository keeps its absolute path
        script = script.relative_to(REPO_ROOT)
    return " ".join(["python", str(script), *sys.argv[1:]])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(name: str, out_dir: Path, markdown: str, data: dict[str, Any], quick: bool) -> Path:
    """Print the markdown, write NAME.md and NAME.json (with command and machine) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "command": command_line(), "quick": quick, "machine": machine_info(), **data}
    header = f"Command: `{data['command']}`" + (
        " (--quick smoke run: figures are not meaningful)" if quick else ""
    )
    text = f"{header}\n\n{markdown}\n"
    (out_dir / f"{name}.md").write_text(text, encoding="utf-8")
    (out_dir / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    print(text)
    print(f"wrote {out_dir / (name + '.md')} and {name}.json", flush=True)
    return out_dir / f"{name}.json"


def bar_chart(path: Path, labels: Sequence[str], values: Sequence[float], xlabel: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    ax.barh(list(labels)[::-1], list(values)[::-1], color="#4c72b0")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_common_args(parser, default_repeats: int = 3) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="seconds-long smoke run (figures not meaningful)"
    )
    parser.add_argument(
        "--repeats", type=int, default=default_repeats, help="timed repetitions; medians reported"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up iterations")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument(
        "--output_dir", type=Path, default=DEFAULT_RESULTS_DIR, help="where .md/.json/.png go"
    )
    parser.add_argument("--seed", type=int, default=0)


def recipe_classifier(model_path: str, id2label: dict[int, str], **load_kwargs):
    """A classifier as the classification recipes train it on CPU: loaded by `load_classifier` with their
    default attention dropout, and with `CPUDropout` (what `prepare_training_args` sets up on CPU)."""
    from hftune.config import CLASSIFIER_DEFAULTS
    from hftune.models import load_classifier
    from hftune.training.cpu import use_cpu_dropout

    model, tokenizer = load_classifier(
        model_path, id2label, attention_dropout=CLASSIFIER_DEFAULTS["attention_dropout"], **load_kwargs
    )
    use_cpu_dropout(model)
    return model, tokenizer


def emotion_files(data_dir: Path) -> tuple[Path, Path]:
    train, validation = data_dir / "train.txt", data_dir / "validation.txt"
    for path in (train, validation):
        if not path.is_file():
            from hftune.errors import HftuneError

            raise HftuneError(
                f"{path} does not exist; pass --data_dir with the emotion train.txt/validation.txt"
            )
    return train, validation


def load_emotion(data_dir: Path, train_samples: int | None, eval_samples: int | None, seed: int):
    """The emotion splits through hftune's own loader (`text;label_name` files)."""
    from hftune.config import DataArguments
    from hftune.data import load_classification_data

    train, validation = emotion_files(data_dir)
    args = DataArguments(
        train_file=str(train),
        validation_file=str(validation),
        max_train_samples=train_samples,
        max_eval_samples=eval_samples,
    )
    return load_classification_data(args, seed=seed)


# --- assembling BENCHMARKS.md --------------------------------------------------------------------------

SECTIONS = (
    "training_speed", "flops", "jsl_generation", "memory", "data_pipeline", "instruction_tuning", "jsl_web",
)  # fmt: skip


def assemble(results_dir: Path, target: Path) -> None:
    """Replace each `<!-- bench:NAME -->...<!-- /bench:NAME -->` block of `target` with results_dir/NAME.md,
    and the machine block with the machine of the newest result."""
    text = target.read_text(encoding="utf-8")
    newest: dict[str, Any] | None = None
    for name in SECTIONS:
        md, js = results_dir / f"{name}.md", results_dir / f"{name}.json"
        if not md.is_file():
            continue
        body = md.read_text(encoding="utf-8").strip()
        data = json.loads(js.read_text(encoding="utf-8"))
        if data.get("quick"):
            continue  # smoke-run figures never go into the report
        newest = data
        text = _replace_block(text, name, body)
    if newest is not None:
        m = newest["machine"]
        lines = [
            f"- CPU: {m['cpu']}, {m['cores']} cores, bf16 support: {'yes' if m['cpu_bf16'] else 'no'}, "
            f"fast bf16 matmuls (AMX / Arm BF16): {'yes' if m.get('cpu_fast_bf16_matmul') else 'no'}",
            f"- torch {m['torch']}, transformers {m['transformers']}, Python {m['python']}",
            f"- threads pinned: {m['threads_used']}; platform: {m['platform']}",
            f"- assembled on {time.strftime('%Y-%m-%d')}; each table names the command that produced it",
        ]
        text = _replace_block(text, "machine", "\n".join(lines))
    target.write_text(text, encoding="utf-8")
    print(f"updated {target}")


def _replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(\n<!-- /bench:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{name}: no <!-- bench:{name} --> block in the report template")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "assemble":
        raise SystemExit("usage: python benchmarks/common.py assemble RESULTS_DIR BENCHMARKS.md")
    assemble(Path(sys.argv[2]), Path(sys.argv[3]))
