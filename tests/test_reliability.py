"""Faults a home PC meets: SIGKILL mid-epoch and mid-save, a second writer, damaged weight files.

Real recipe subprocesses on a tiny real subset (32 movie-review sentences, 4 steps, fp32 on CPU, so a
resumed run must reproduce the uninterrupted run's numbers exactly).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hftune.errors import HftuneError
from hftune.persistence import (
    FINAL_STAGING,
    LOCK_NAME,
    MANIFEST_NAME,
    PAUSE_BEFORE_COMMIT_ENV,
    OutputDirLock,
    claim_output_dir,
    recover_run_folder,
    verify_weights,
)
from hftune.training import last_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = [
    "--max_train_samples", "32", "--max_eval_samples", "16", "--max_seq_length", "32",
    "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
    "--eval_strategy", "steps", "--save_strategy", "steps", "--eval_steps", "2", "--save_steps", "2",
    "--logging_steps", "1", "--precision", "fp32", "--use_cpu", "--seed", "7",
]  # fmt: skip


def recipe_command(recipe: str, output_dir: Path) -> list[str]:
    return [sys.executable, str(REPO / "recipes" / recipe), *TINY_RUN, "--output_dir", str(output_dir)]


def run_recipe(recipe: str, output_dir: Path, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        recipe_command(recipe, output_dir),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def start_recipe(recipe: str, output_dir: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        recipe_command(recipe, output_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
        start_new_session=True,  # its own process group: the kill reaches every child
    )


def kill_when(process: subprocess.Popen, condition, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before the kill point: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "the kill point was never reached"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))


def eval_history(run: dict) -> list[tuple]:
    return [(e["step"], e["eval_validation_loss"]) for e in run["log_history"] if "eval_validation_loss" in e]


@pytest.fixture(scope="module")
def lora_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "uninterrupted"
    run_recipe("sentiment_lora.py", out)
    return out


@pytest.fixture(scope="module")
def bitfit_reference(tmp_path_factory) -> Path:
    if not (REPO / "recipes" / "sentiment_bitfit.py").is_file():
        pytest.skip("recipes/sentiment_bitfit.py does not exist yet")
    out = tmp_path_factory.mktemp("bitfit") / "uninterrupted"
    run_recipe("sentiment_bitfit.py", out)
    return out


# --- 1. a run killed mid-epoch resumes to the same numbers ----------------------------------------------


@pytest.mark.parametrize("recipe,reference", [("sentiment_lora.py", "lora_reference"),
                                              ("sentiment_bitfit.py", "bitfit_reference")])  # fmt: skip
def test_sigkill_mid_epoch_resumes_to_the_same_metrics(recipe, reference, tmp_path, request):
    expected = results(request.getfixturevalue(reference))
    out = tmp_path / "run"
    first = start_recipe(recipe, out)
    kill_when(first, lambda: (out / "checkpoint-2").is_dir())  # first checkpoint written, step 3 under way
    assert not (out / "results.json").exists()
    assert (out / LOCK_NAME).is_file()  # left behind by the killed run

    resumed = run_recipe(recipe, out)
    assert "taking over the stale lock" in resumed.stderr
    assert not (out / LOCK_NAME).exists()
    got = results(out)
    assert got["resumed_from_checkpoint"] == str(out / "checkpoint-2")
    assert expected["resumed_from_checkpoint"] is None
    assert got["metrics"] == expected["metrics"]
    assert eval_history(got) == eval_history(expected)
    verify_weights(out, require_manifest=True)


# --- 2. saves are atomic -------------------------------------------------------------------------------


def test_sigkill_inside_a_checkpoint_save_leaves_no_checkpoint_that_looks_complete(tmp_path):
    out = tmp_path / "run"
    staged = out / ".checkpoint-2.partial" / "checkpoint-2"
    run = start_recipe("sentiment_lora.py", out, **{PAUSE_BEFORE_COMMIT_ENV: "60"})
    kill_when(run, lambda: (staged / "trainer_state.json").is_file())  # fully staged, not yet renamed
    assert not (out / "checkpoint-2").exists()
    assert last_checkpoint(str(out)) is None
    recovered = recover_run_folder(out)
    assert recovered == [f"removed the partial checkpoint {out / '.checkpoint-2.partial'}"]
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
    assert results(out)["resumed_from_checkpoint"] == str(out / "checkpoint-4")


def test_exception_inside_the_final_save_leaves_the_folder_as_it_was(lora_reference, tmp_path):
    from hftune.persistence import staged_final_artifacts

    out = tmp_path / "run"
    shutil.copytree(lora_reference, out)
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
        data[-10] ^= 0xFF  # one bit pattern in the tensor data: the header still parses
        weights.write_bytes(bytes(data))
    with pytest.raises(HftuneError, match=r"adapter_model\.safetensors does not match its sha256"):
        verify_weights(out)
    from hftune.models import load_adapter_classifier

    with pytest.raises(HftuneError, match=r"adapter_model\.safetensors"):
        load_adapter_classifier(out)


def test_load_bitfit_verifies_its_weights(bitfit_reference, tmp_path):
    import torch

    from hftune.methods import BITFIT_WEIGHTS, load_bitfit

    model = load_bitfit(bitfit_reference)
    assert isinstance(model.classifier.weight, torch.Tensor)
    out = tmp_path / "run"
    shutil.copytree(bitfit_reference, out, ignore=shutil.ignore_patterns("checkpoint-*"))
    (out / BITFIT_WEIGHTS).write_bytes((out / BITFIT_WEIGHTS).read_bytes()[:-100])
    with pytest.raises(HftuneError, match=BITFIT_WEIGHTS):
        load_bitfit(out)


def test_final_run_folders_hold_no_pickles(lora_reference):
    # Checkpoints keep Trainer's optimizer/scheduler/RNG state (.pt/.pth written by this very run, read back
    # with weights_only where torch allows); the published folder itself holds safetensors only.
    top_level = [p.name for p in lora_reference.iterdir() if p.is_file()]
    assert "adapter_model.safetensors" in top_level and MANIFEST_NAME in top_level
    assert not [n for n in top_level if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    assert not (lora_reference / LOCK_NAME).exists()


# --- 4. one writer per output folder -------------------------------------------------------------------


def test_a_second_run_on_a_locked_output_dir_is_refused(lora_reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(lora_reference, out, ignore=shutil.ignore_patterns("checkpoint-*"))
    before = sorted(p.name for p in out.iterdir())
    with OutputDirLock(out):  # this test process is the live writer
        done = subprocess.run(
            recipe_command("sentiment_lora.py", out), capture_output=True, text=True, timeout=300
        )
        assert sorted(p.name for p in out.iterdir()) == sorted([*before, LOCK_NAME])
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and f"output folder {out} is in use by pid {os.getpid()}" in errors[0], (
        done.stderr[-2000:]
    )
    assert "Traceback" not in done.stderr


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, capsys):
    with OutputDirLock(tmp_path), pytest.raises(HftuneError, match=f"in use by pid {os.getpid()}"):
        OutputDirLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    import socket

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
