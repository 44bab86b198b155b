"""Faults a home PC meets: SIGKILL mid-epoch and mid-save, a second writer, damaged weight files.

Real recipe subprocesses killed with a real SIGKILL, on a tiny real subset: 24 movie-review sentences,
2 epochs of 3 steps, a checkpoint every 2 steps, fp32 on one CPU thread, so a resumed run must reproduce
the uninterrupted run's numbers exactly (one thread: the same summation order in every run).
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hftune.errors import HftuneError
from hftune.persistence import (
    FINAL_STAGING,
    LOCK_NAME,
    MANIFEST_NAME,
    PAUSE_BEFORE_COMMIT_ENV,
    OutputDirLock,
    claim_output_dir,
    recover_run_folder,
    staged_final_artifacts,
    verify_weights,
    write_weights_manifest,
)
from hftune.results import read_results
from hftune.training.trainer import EpochSeededLengthGroupedSampler, last_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = [
    "--max_train_samples", "24", "--max_eval_samples", "16", "--max_seq_length", "32",
    "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "24",
    "--eval_strategy", "steps", "--save_strategy", "steps", "--eval_steps", "2", "--save_steps", "2",
    "--logging_steps", "1", "--precision", "fp32", "--use_cpu", "--seed", "7",
]  # fmt: skip
ONE_THREAD = {"HFTUNE_CPU_THREADS": "1"}


def recipe_command(recipe: str, output_dir: Path) -> list[str]:
    return [sys.executable, str(REPO / "recipes" / recipe), *TINY_RUN, "--output_dir", str(output_dir)]


def run_recipe(recipe: str, output_dir: Path, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        recipe_command(recipe, output_dir),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **ONE_THREAD, **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def start_recipe(recipe: str, output_dir: Path, **env: str) -> subprocess.Popen:
    # Stderr goes to a file, not a pipe: a full pipe nobody reads would stall the run before the kill point.
    log = output_dir.with_name(f"{output_dir.name}.log")
    with log.open("w") as stderr:
        process = subprocess.Popen(
            recipe_command(recipe, output_dir),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, **ONE_THREAD, **env},
            start_new_session=True,  # its own process group: the kill reaches every child
        )
    process.log = log
    return process


def kill_when(process: subprocess.Popen, condition, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended before the kill point: {process.log.read_text()[-2000:]}")
        assert time.monotonic() < deadline, "the kill point was never reached"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))


def history(run: dict) -> list[tuple]:
    """Every logged training step and evaluation, without the timings that differ from run to run."""
    keys = ("loss", "grad_norm", "learning_rate", "eval_validation_loss", "eval_validation_accuracy")
    return [(e["step"], *(e.get(k) for k in keys)) for e in run["log_history"] if set(keys) & set(e)]


@pytest.fixture(scope="module")
def lora_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "uninterrupted"
    run_recipe("sentiment_lora.py", out)
    return out


@pytest.fixture(scope="module")
def bitfit_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bitfit") / "uninterrupted"
    run_recipe("sentiment_bitfit.py", out)
    return out


# --- 1. a run killed mid-epoch resumes to the same numbers ----------------------------------------------


def assert_killed_run_resumes_to_the_reference(recipe: str, reference: Path, out: Path) -> None:
    expected = results(reference)
    first = start_recipe(recipe, out)
    # checkpoint-4 is one step into epoch 2: the kill lands in step 5 or 6, before checkpoint-6.
    kill_when(first, lambda: last_checkpoint(str(out)) == str(out / "checkpoint-4"))
    assert not (out / "checkpoint-6").exists() and not (out / "results.json").exists()
    assert (out / LOCK_NAME).is_file()  # left behind by the killed run

    resumed = run_recipe(recipe, out)
    assert "taking over the stale lock" in resumed.stderr
    assert f"resuming from {out / 'checkpoint-4'}" in resumed.stdout
    assert not (out / LOCK_NAME).exists()
    got = results(out)
    assert (expected["resumed_from_checkpoint"], got["resumed_from_checkpoint"]) == (
        None,
        str(out / "checkpoint-4"),
    )
    assert len(history(got)) == 6 + 3  # every step and every evaluation, each once
    # Steps 5 and 6 saw the same batches, dropout masks and optimiser state as in the uninterrupted run.
    assert history(got) == history(expected)
    assert got["metrics"] == expected["metrics"]
    verify_weights(out, require_manifest=True)


def test_lora_run_killed_mid_epoch_resumes_to_the_same_numbers(lora_reference, tmp_path):
    assert_killed_run_resumes_to_the_reference("sentiment_lora.py", lora_reference, tmp_path / "run")


@pytest.mark.slow
def test_bitfit_run_killed_mid_epoch_resumes_to_the_same_numbers(bitfit_reference, tmp_path):
    assert_killed_run_resumes_to_the_reference("sentiment_bitfit.py", bitfit_reference, tmp_path / "run")


def test_length_grouped_order_depends_only_on_seed_and_epoch():
    # Trainer restores the global RNG only after skipping the trained batches of a resumed epoch; the stock
    # sampler drew that epoch's order from the global RNG, so a resumed run replayed different batches.
    lengths = [5, 9, 3, 12, 7, 7, 2, 30, 11, 4, 8, 6, 1, 15, 10, 13]
    sampler = EpochSeededLengthGroupedSampler(4, lengths, seed=7)
    orders = {}
    for epoch, global_seed in [(0, 1), (1, 2), (1, 3), (0, 4)]:
        torch.manual_seed(global_seed)
        sampler.set_epoch(epoch)
        orders.setdefault(epoch, []).append(list(sampler))
    assert orders[0][0] == orders[0][1] and orders[1][0] == orders[1][1]
    assert orders[0][0] != orders[1][0] and sorted(orders[0][0]) == list(range(len(lengths)))


# --- 2. saves are atomic -------------------------------------------------------------------------------


def test_sigkill_inside_a_checkpoint_save_leaves_no_checkpoint_that_looks_complete(tmp_path):
    out = tmp_path / "run"
    staged = out / ".checkpoint-2.partial" / "checkpoint-2"
    run = start_recipe("sentiment_lora.py", out, **{PAUSE_BEFORE_COMMIT_ENV: "60"})
    kill_when(run, lambda: (staged / "trainer_state.json").is_file())  # fully staged, not yet renamed
    assert not (out / "checkpoint-2").exists()
    assert last_checkpoint(str(out)) is None
    assert recover_run_folder(out) == [f"removed the partial checkpoint {out / '.checkpoint-2.partial'}"]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_sigkill_inside_the_final_save_keeps_the_previous_artefacts(lora_reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(lora_reference, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    staging = out / FINAL_STAGING
    # The relaunch resumes from the last checkpoint (nothing left to train) and saves again.
    run = start_recipe("sentiment_lora.py", out, **{PAUSE_BEFORE_COMMIT_ENV: "60"})
    kill_when(run, lambda: (staging / MANIFEST_NAME).is_file())
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK_NAME}
    assert after == before  # the old results, adapter and card untouched
    verify_weights(out, require_manifest=True)
    # The staged save was complete (results.json and manifest): the next start finishes it.
    assert recover_run_folder(out) == [f"finished the interrupted final save in {out}"]
    assert not staging.exists()
    verify_weights(out, require_manifest=True)
    assert results(out)["resumed_from_checkpoint"] == str(out / "checkpoint-6")


def test_exception_inside_the_final_save_leaves_the_folder_as_it_was(lora_reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(lora_reference, out, ignore=shutil.ignore_patterns("checkpoint-*"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(OSError, match="disk full"), staged_final_artifacts(out) as staging:
        (staging / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError("disk full")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not (out / FINAL_STAGING).exists()


def test_a_staging_without_results_is_discarded_at_the_next_start(tmp_path):
    (tmp_path / FINAL_STAGING).mkdir()
    (tmp_path / FINAL_STAGING / "adapter_model.safetensors").write_bytes(b"partial")
    assert recover_run_folder(tmp_path) == [f"removed the partial final save {tmp_path / FINAL_STAGING}"]
    assert list(tmp_path.iterdir()) == []


# --- 3. integrity --------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_verify_weights_refuses_a_damaged_file_by_name(lora_reference, tmp_path, damage):
    out = tmp_path / "run"
    shutil.copytree(lora_reference, out, ignore=shutil.ignore_patterns("checkpoint-*"))
    weights = out / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    else:
        data[-10] ^= 0xFF  # one byte of tensor data: the header still parses
        weights.write_bytes(bytes(data))
    with pytest.raises(HftuneError, match=r"adapter_model\.safetensors does not match its sha256"):
        verify_weights(out)
    # Every loader of a saved run checks first: the Python API, `hftune evaluate`, and `hftune publish`.
    from hftune.evaluation import load_saved_classifier
    from hftune.hub import publish_run
    from hftune.models import load_adapter_classifier

    for load in (load_adapter_classifier, lambda run: load_saved_classifier(run, read_results(run))):
        with pytest.raises(HftuneError, match=r"adapter_model\.safetensors does not match its sha256"):
            load(out)
    with pytest.raises(HftuneError, match=r"adapter_model\.safetensors does not match its sha256"):
        publish_run(out, "org/damaged-run")


def test_a_truncated_file_without_a_manifest_is_still_refused(lora_reference, tmp_path):
    out = tmp_path / "copied"
    shutil.copytree(lora_reference, out, ignore=shutil.ignore_patterns("checkpoint-*", MANIFEST_NAME))
    weights = out / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(HftuneError, match=r"adapter_model\.safetensors is not a readable safetensors file"):
        verify_weights(out)
    with pytest.raises(HftuneError, match=f"has no {MANIFEST_NAME}"):
        verify_weights(out, require_manifest=True)


def test_load_bitfit_verifies_its_weights(minilm_path, tmp_path):
    from hftune.methods import apply_bitfit, load_bitfit, save_bitfit
    from hftune.methods.bitfit import BITFIT_WEIGHTS
    from hftune.models import load_classifier

    model, _ = load_classifier(minilm_path, {0: "negative", 1: "positive"})
    run = tmp_path / "bitfit"
    save_bitfit(apply_bitfit(model), run, minilm_path)
    write_weights_manifest(run)
    reloaded = load_bitfit(run)
    assert torch.equal(reloaded.classifier.weight, model.classifier.weight)
    (run / BITFIT_WEIGHTS).write_bytes((run / BITFIT_WEIGHTS).read_bytes()[:-100])
    with pytest.raises(HftuneError, match=f"{BITFIT_WEIGHTS} does not match its sha256"):
        load_bitfit(run)


def test_final_run_folders_hold_no_pickles(lora_reference):
    # Checkpoints keep Trainer's optimizer/scheduler/RNG state (.pt/.pth written by this very run, read back
    # with weights_only where torch allows); the published folder itself holds safetensors only.
    top_level = [p.name for p in lora_reference.iterdir() if p.is_file()]
    assert "adapter_model.safetensors" in top_level and MANIFEST_NAME in top_level
    assert not [n for n in top_level if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    assert not (lora_reference / LOCK_NAME).exists()


# --- 4. one writer per output folder -------------------------------------------------------------------


def test_a_second_run_on_a_locked_output_dir_is_refused(lora_reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    shutil.copytree(lora_reference, out, ignore=shutil.ignore_patterns("checkpoint-*"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    recipe = str(REPO / "recipes" / "sentiment_lora.py")
    monkeypatch.setattr(sys, "argv", [recipe, *TINY_RUN, "--output_dir", str(out)])
    monkeypatch.setenv("HFTUNE_CPU_THREADS", "1")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # the recipe exports it; restored afterwards
    threads = torch.get_num_threads()
    with OutputDirLock(out):  # this test process is the live writer
        try:
            with pytest.raises(SystemExit) as exited:
                runpy.run_path(recipe, run_name="__main__")
        finally:
            torch.set_num_threads(threads)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK_NAME} == before
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"output folder {out} is in use by pid {os.getpid()}" in errors[0], stderr
    assert "another --output_dir" in errors[0] and "Traceback" not in stderr


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, capsys):
    with OutputDirLock(tmp_path), pytest.raises(HftuneError, match=f"in use by pid {os.getpid()}"):
        OutputDirLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record = {
        "pid": gone.pid,
        "hostname": socket.gethostname(),
        "process_started": 1.0,
        "started_at": "earlier",
    }
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    with OutputDirLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock {tmp_path / LOCK_NAME} of pid {gone.pid}" in capsys.readouterr().err


def test_a_lock_whose_pid_was_reused_by_another_process_is_taken_over(tmp_path):
    # Our own pid is alive, but it started long after the recorded process: a reboot reused the number.
    record = {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "process_started": 1.0,
        "started_at": "before",
    }
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    with OutputDirLock(tmp_path) as lock:
        assert lock.acquired


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    record = {"pid": 1, "hostname": "some-other-machine", "started_at": "earlier"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(HftuneError, match="in use by pid 1 on some-other-machine"):
        OutputDirLock(tmp_path).acquire()


def test_a_failure_before_training_removes_the_folder_the_run_created(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(HftuneError), claim_output_dir(out):
        assert (out / LOCK_NAME).is_file()
        raise HftuneError("tokeniser rejected the data")
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(HftuneError), claim_output_dir(existing) as claim:
        claim.training_started()
        raise HftuneError("failed mid-training")
    assert existing.is_dir() and not (existing / LOCK_NAME).exists()


# --- 6. nothing unsafe ---------------------------------------------------------------------------------


def test_the_package_never_unpickles_or_trusts_remote_code_unasked():
    package = REPO / "src" / "hftune"
    offences = []
    for path in package.rglob("*.py"):
        rel = path.relative_to(package)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#")[0]
            if "torch.load(" in code and "weights_only=True" not in code:
                offences.append(f"{rel}:{number}: torch.load without weights_only=True")
            if "pickle.load" in code or "joblib.load" in code:
                offences.append(f"{rel}:{number}: unpickling")
            # Our own JSL folders and generated loading snippets in model cards are the only places allowed.
            if "trust_remote_code=True" in code and rel.parts[0] != "jsl" and rel.name != "cards.py":
                offences.append(f"{rel}:{number}: trust_remote_code=True")
    assert offences == []
