"""The benchmark scripts run end to end (`--quick`) and write complete reports; the report assembler fills
BENCHMARKS.md from full runs only. No figure is asserted: smoke-run numbers mean nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
EMOTION = REPO.parent / "shared" / "data" / "emotion"


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    # One thread: smoke runs share the cores with the rest of the suite.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def _check_training_speed(data: dict) -> None:
    for key in ("user_loop", "recipe", "recipe_frozen_embeddings", "default_trainer"):
        assert data[key]["train_samples_per_second"] > 0
        assert 0.0 <= data[key]["accuracy"] <= 1.0
    assert "--freeze_embeddings" in data["recipe_frozen_embeddings"]["command"]
    assert "--freeze_embeddings" not in data["recipe"]["command"]
    labels = [row["label"] for row in data["ablation"]]
    assert labels[0].startswith("user loop") and "+ dynamic padding" in labels
    assert "recipe + frozen embeddings (--freeze_embeddings)" in labels
    assert any(label.startswith("+ attention dropout 0") for label in labels)
    assert all(row["samples_per_second"] > 0 for row in data["ablation"])


def _check_flops(data: dict) -> None:
    assert {row["method"] for row in data["rows"]} == {"full", "lora"}
    full = next(r for r in data["rows"] if r["method"] == "full" and r["padding"] == "128")
    lora = next(r for r in data["rows"] if r["method"] == "lora" and r["padding"] == "128")
    # LoRA skips the frozen weights' gradient matmuls: fewer counted FLOPs for the same batch.
    assert 0 < lora["flops_per_step"] < full["flops_per_step"]


def _check_jsl(data: dict) -> None:
    # (natural, 20 glosses) x (cache on, off) x (each default batch size + one at a time)
    assert len(data["rows"]) == 2 * 2 * 3
    assert set(data["summary"]["kv_speedup_20"]) == {"256", "64", "1"}  # JSON keys
    single = [r for r in data["rows"] if r["mode"] == "one at a time"]
    assert all(r["p95_ms"] >= r["p50_ms"] > 0 for r in single)


def _check_memory(data: dict) -> None:
    by_method = {r["method"]: r for r in data["per_method"]}
    assert set(by_method) == {"full", "freeze", "lora", "bitfit"}
    assert by_method["lora"]["tensors"]["gradients"] < by_method["full"]["tensors"]["gradients"]
    assert len(data["estimator"]) == 12


def _check_pipeline(data: dict) -> None:
    assert data["step_seconds"] > 0 and data["shares"]["total"] > 0


def _check_instruction_tuning(data: dict) -> None:
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"lora", "qlora", "lora-no-checkpointing", "qlora-no-checkpointing"}
    # 4-bit weights are smaller than fp32 ones whatever the batch; checkpointing keeps fewer activations.
    assert rows["qlora"]["weights_bytes"] < 0.5 * rows["lora"]["weights_bytes"]
    assert rows["lora"]["step_peak_live_bytes"] < rows["lora-no-checkpointing"]["step_peak_live_bytes"]
    assert all(r["samples_per_second"] > 0 and r["peak_rss_mb"] > 0 for r in rows.values())


def _check_jsl_web(data: dict) -> None:
    assert set(data["rows"]) == {"pytorch", "node", "browser"}
    assert all(
        r["sentences_per_second"] > 0 and r["p95_ms"] >= r["p50_ms"] > 0 for r in data["rows"].values()
    )
    # The same glosses from all three runtimes, and the page fetched the wasm and the model files.
    assert data["identical"] == {"node": True, "browser": True}
    assert data["downloads_mb"]["onnxruntime-web wasm"] > 5 and data["downloads_mb"]["model files"] > 0


CHECKS = {
    "training_speed": _check_training_speed,
    "flops": _check_flops,
    "jsl_generation": _check_jsl,
    "memory": _check_memory,
    "data_pipeline": _check_pipeline,
    "instruction_tuning": _check_instruction_tuning,
    "jsl_web": _check_jsl_web,
}


@pytest.mark.slow
@pytest.mark.skipif(not (EMOTION / "train.txt").is_file(), reason="needs ../shared/data/emotion")
@pytest.mark.parametrize("name", list(CHECKS))
def test_benchmark_quick_run(name: str, tmp_path: Path) -> None:
    if name == "jsl_web" and not (
        shutil.which("chromium") and (REPO / "js" / "dist" / "src" / "node.js").is_file()
    ):
        pytest.skip("bench_jsl_web needs Chromium and the built js/ client (make js chromium)")
    done = _run([str(BENCH / f"bench_{name}.py"), "--quick", "--output_dir", str(tmp_path)], timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert data["quick"] is True and data["machine"]["threads_used"] == 1
    assert "smoke run" in (tmp_path / f"{name}.md").read_text()
    CHECKS[name](data)


def test_assemble_fills_full_runs_only(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    machine = {"cpu": "Test CPU", "cores": 2, "threads_used": 2, "cpu_bf16": True, "torch": "2.13.0",
               "transformers": "5.23.0", "python": "3.11", "platform": "linux"}  # fmt: skip
    (results / "flops.md").write_text("| full table |\n")
    (results / "flops.json").write_text(json.dumps({"quick": False, "machine": machine}))
    (results / "memory.md").write_text("| smoke table |\n")
    (results / "memory.json").write_text(json.dumps({"quick": True, "machine": machine}))
    report = tmp_path / "BENCHMARKS.md"
    template = (REPO / "BENCHMARKS.md").read_text()
    report.write_text(template)

    done = _run([str(BENCH / "common.py"), "assemble", str(results), str(report)], timeout=120)
    assert done.returncode == 0, done.stderr
    text = report.read_text()
    flops = text.split("<!-- bench:flops -->")[1].split("<!-- /bench:flops -->")[0]
    memory = text.split("<!-- bench:memory -->")[1].split("<!-- /bench:memory -->")[0]
    assert "| full table |" in flops
    template_memory = template.split("<!-- bench:memory -->")[1].split("<!-- /bench:memory -->")[0]
    # A --quick result never replaces a section.
    assert "smoke table" not in text and memory == template_memory
    assert "Test CPU, 2 cores, bf16 support: yes" in text
