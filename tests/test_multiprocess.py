"""Scale-out: the main recipe under `accelerate_configs/multi_cpu.yaml` (2 gloo processes) against the same run
under `cpu.yaml` (1 process) with the same effective batch, on a small real subset of the default data."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# An odd validation size: with 2 processes one rank pads its shard, and the gathered predictions must drop the
# duplicate again, or accuracy is no longer a multiple of 1/127.
TRAIN, EVAL, EFFECTIVE_BATCH = 256, 127, 16


def _launch(config: str, processes: int, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs" / config),
        str(REPO / "recipes" / "sentiment_lora.py"),
        "--max_train_samples", str(TRAIN), "--max_eval_samples", str(EVAL), "--num_train_epochs", "1",
        "--max_seq_length", "64", "--precision", "fp32", "--logging_steps", "4",
        # The recipe's own rate over 16 steps. With the query/value adapters, 1e-3 left both runs so close to
        # chance (0.551 vs 0.606) that borderline sentences flipped with the dropout masks, which differ between
        # 1 and 2 processes; at 3e-3 (and attention dropout 0, the recipe default) they end at 0.559 vs 0.598.
        "--learning_rate", "3e-3",
        "--per_device_train_batch_size", str(EFFECTIVE_BATCH // processes), "--output_dir", str(out),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "HFTUNE_CPU_THREADS")}
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    return done, time.perf_counter() - started


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("scale_out")
    found = {}
    for name, config, processes in (("two", "multi_cpu.yaml", 2), ("one", "cpu.yaml", 1)):
        done, seconds = _launch(config, processes, root / name)
        assert done.returncode == 0, done.stderr[-3000:]
        results = json.loads((root / name / "results.json").read_text())
        found[name] = {"done": done, "seconds": seconds, "results": results, "dir": root / name}
    return found


def _train_losses(results: dict) -> list[float]:
    return [entry["loss"] for entry in results["log_history"] if "loss" in entry]


def _eval_loss(results: dict) -> float:
    return next(e["eval_validation_loss"] for e in results["log_history"] if "eval_validation_loss" in e)


def test_two_processes_really_train_together_and_exit_cleanly(runs):
    two = runs["two"]
    assert two["results"]["world_size"] == 2 and runs["one"]["results"]["world_size"] == 1
    assert "terminate called" not in two["done"].stderr
    # Each process gets its share of the cores; messages come from rank 0 only.
    assert "CPU training: 1 thread per process" in two["done"].stdout
    assert two["done"].stdout.count("validation accuracy") == 1
    for run in runs.values():
        assert run["results"]["hyperparameters"]["effective_batch_size"] == EFFECTIVE_BATCH
        assert run["results"]["split_sizes"] == {"train": TRAIN, "validation": EVAL}
    # Only rank 0 wrote the final folder: the same files as the single-process run, nothing half-staged.
    names = {p.name for p in two["dir"].iterdir() if not p.name.startswith("checkpoint-")}
    assert names == {p.name for p in runs["one"]["dir"].iterdir() if not p.name.startswith("checkpoint-")}


def test_losses_are_not_multiplied_by_the_world_size(runs):
    one, two = runs["one"]["results"], runs["two"]["results"]
    one_losses, two_losses = _train_losses(one), _train_losses(two)
    assert len(one_losses) == len(two_losses) == TRAIN // EFFECTIVE_BATCH // 4
    # Untrained binary classifier: ln 2 = 0.69; a doubled report would read ~1.39.
    for a, b in zip(one_losses, two_losses, strict=True):
        assert b == pytest.approx(a, abs=0.05)
    assert _eval_loss(two) == pytest.approx(_eval_loss(one), abs=0.05)
    assert two["metrics"]["loss"] == pytest.approx(one["metrics"]["loss"], abs=0.05)
    assert max(two_losses) < 1.0


def test_metrics_match_the_single_process_run(runs):
    one, two = runs["one"]["results"]["metrics"], runs["two"]["results"]["metrics"]
    for metrics in (one, two):
        # Every validation sentence scored exactly once.
        correct = metrics["accuracy"] * EVAL
        assert correct == pytest.approx(round(correct), abs=1e-6)
    # Not equal: 1 and 2 processes draw different dropout masks, and 16 steps leave many sentences near the
    # boundary. Measured on a fresh clone: 0.559 (1 process) vs 0.598 (2), 5 of 127 sentences apart.
    assert two["accuracy"] == pytest.approx(one["accuracy"], abs=0.06)
    assert two["f1_macro"] == pytest.approx(one["f1_macro"], abs=0.08)
