"""One run lifecycle for every recipe: claim the folder, resume, stage the final folder, card, results.

The kill tests run the real recipes in subprocesses and SIGKILL them inside their final save (held open by
HFTUNE_TEST_PAUSE_BEFORE_COMMIT); the second-writer tests run every recipe in-process against a folder whose
lock this test holds.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from hftune.persistence import FINAL_STAGING, LOCK_NAME, MANIFEST_NAME, PAUSE_BEFORE_COMMIT_ENV, OutputDirLock
from hftune.results import RunRecord, read_results
from hftune.training.lifecycle import claim_run, save_run

REPO = Path(__file__).resolve().parents[1]
CLASSIFIER_RUN = [
    "--max_train_samples", "16", "--max_eval_samples", "8", "--max_seq_length", "24", "--num_train_epochs", "1",
    "--per_device_train_batch_size", "8", "--precision", "fp32", "--use_cpu", "--save_strategy", "no",
    "--eval_strategy", "no", "--load_best_model_at_end", "false",
]  # fmt: skip
ONE_THREAD = {"HFTUNE_CPU_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def card_metadata(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---")[1]), text


def record(**changes) -> RunRecord:
    return RunRecord(
        task="text-classification", method="full", artifact="full", dataset="movie_polarity",
        metrics={"accuracy": 0.75}, labels=["negative", "positive"], **changes,
    )  # fmt: skip


def write_weights(folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, folder / "model.safetensors")


def test_the_card_is_named_after_the_run_folder_not_the_staging_folder(tmp_path):
    out = tmp_path / "my-sentiment-run"
    with claim_run(out) as run:
        run.training_started()
        save_run(run.output_dir, record(), write_artifacts=write_weights)
    metadata, text = card_metadata(out)
    assert metadata["model-index"][0]["name"] == "my-sentiment-run"
    assert "# my-sentiment-run" in text.splitlines()
    assert FINAL_STAGING not in text and ".partial" not in text
    assert read_results(out).run_name == "my-sentiment-run"
    assert json.loads((out / MANIFEST_NAME).read_text())["model.safetensors"]
    assert not (out / LOCK_NAME).exists() and not (out / FINAL_STAGING).exists()


def test_publishing_renames_the_card_to_the_repo_without_touching_the_run(tmp_path):
    from hftune.hub import _name_repo_in_card

    out = tmp_path / "run"
    with claim_run(out) as run:
        save_run(run.output_dir, record(), write_artifacts=write_weights)
    staged = tmp_path / "staged"
    staged.mkdir()
    for item in out.iterdir():
        os.link(item, staged / item.name)  # publish stages hard links: they must never be written through
    before = (out / "README.md").read_text(encoding="utf-8")
    _name_repo_in_card(staged, "org/sentiment-minilm")
    metadata, text = card_metadata(staged)
    assert metadata["model-index"][0]["name"] == "sentiment-minilm"
    assert 'repo = "org/sentiment-minilm"' in text
    assert read_results(staged).repo_id == "org/sentiment-minilm"
    assert (out / "README.md").read_text(encoding="utf-8") == before and read_results(out).repo_id is None


def test_a_failure_inside_the_save_keeps_nothing_half_written(tmp_path):
    out = tmp_path / "run"

    def broken(folder: Path) -> None:
        write_weights(folder)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), claim_run(out) as run:
        save_run(run.output_dir, record(), write_artifacts=broken)
    assert not out.exists()  # the run created it and never started training: removed again


def test_old_results_files_still_load_and_unknown_keys_survive(tmp_path):
    """A results.json written by an earlier hftune (no run_name, extra keys) loads and is written back whole."""
    old = {**record().to_dict(), "classifier": "head", "pooling_for_projection": "mean"}
    del old["run_name"]
    (tmp_path / "results.json").write_text(json.dumps(old))
    loaded = read_results(tmp_path)
    assert loaded.run_name is None and loaded.extra == {
        "classifier": "head",
        "pooling_for_projection": "mean",
    }
    assert loaded.to_dict()["classifier"] == "head"
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(Exception, match="holds a JSON list, not an object"):
        read_results(tmp_path)


# --- kill -9 inside the final save ----------------------------------------------------------------------


def start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, **ONE_THREAD, **env},
            start_new_session=True,
        )  # fmt: skip
    process.log = log
    return process


def kill_inside_final_save(process: subprocess.Popen, out: Path, timeout: float = 300) -> None:
    """SIGKILL once the final folder is fully staged (its manifest is written just before the commit)."""
    deadline = time.monotonic() + timeout
    while not (out / FINAL_STAGING / MANIFEST_NAME).is_file():
        if process.poll() is not None:
            pytest.fail(f"the run ended before its final save: {process.log.read_text()[-2000:]}")
        assert time.monotonic() < deadline, "the final save was never reached"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def features_command(out: Path) -> list[str]:
    return [
        sys.executable,
        str(REPO / "recipes" / "sentiment_features.py"),
        *CLASSIFIER_RUN,
        "--output_dir",
        str(out),
    ]


def test_feature_extraction_killed_in_its_final_save_keeps_the_previous_run(tmp_path):
    out = tmp_path / "features"
    done = subprocess.run(
        features_command(out), capture_output=True, text=True, env={**os.environ, **ONE_THREAD}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert "features_head.safetensors" in before and "results.json" in before

    process = start(features_command(out), tmp_path / "second.log", **{PAUSE_BEFORE_COMMIT_ENV: "60"})
    kill_inside_final_save(process, out)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK_NAME}
    assert after == before  # every file of the previous complete run, byte for byte


def test_instruction_tuning_killed_in_its_final_save_leaves_no_run(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hftune.models import embedded_causal_lm_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_causal_lm_path())
    tiny = tmp_path / "tiny-llama"
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tiny)
    tokenizer.save_pretrained(tiny)
    out = tmp_path / "instruct"
    command = [
        sys.executable, str(REPO / "recipes" / "instruction_tuning.py"), "--model_name_or_path", str(tiny),
        "--max_train_samples", "8", "--max_eval_samples", "2", "--max_steps", "1", "--max_new_tokens", "2",
        "--max_seq_length", "64", "--precision", "fp32", "--save_strategy", "no", "--eval_strategy", "no",
        "--output_dir", str(out),
    ]  # fmt: skip
    process = start(command, tmp_path / "instruct.log", **{PAUSE_BEFORE_COMMIT_ENV: "60"})
    kill_inside_final_save(process, out)
    left = sorted(p.name for p in out.iterdir())
    # Only the staging (discarded at the next start) and the dead run's lock: no artefact, no results.json.
    assert left == sorted([FINAL_STAGING, LOCK_NAME]), left


# --- one writer per folder, for every recipe --------------------------------------------------------------

RECIPE_FLAGS = {
    "sentiment_lora.py": CLASSIFIER_RUN,
    "sentiment_freeze.py": CLASSIFIER_RUN,
    "sentiment_bitfit.py": CLASSIFIER_RUN,
    "sentiment_features.py": CLASSIFIER_RUN,
    "instruction_tuning.py": ["--max_train_samples", "4", "--max_eval_samples", "2", "--max_steps", "1"],
    "jsl_seq2seq.py": ["--max_train_samples", "16", "--max_eval_samples", "4", "--num_train_epochs", "1",
                       "--d_model", "16", "--num_heads", "2", "--encoder_layers", "1", "--decoder_layers", "1",
                       "--d_ff", "32"],
}  # fmt: skip


@pytest.mark.parametrize("recipe", sorted(RECIPE_FLAGS))
def test_a_second_writer_is_refused_by_every_recipe(recipe, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")  # what the first writer has so far
    path = str(REPO / "recipes" / recipe)
    monkeypatch.setattr(sys, "argv", [path, *RECIPE_FLAGS[recipe], "--output_dir", str(out)])
    monkeypatch.setenv("HFTUNE_CPU_THREADS", "1")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # recipes export it; restored afterwards
    threads = torch.get_num_threads()
    with OutputDirLock(out):  # this test process is the live first writer
        try:
            with pytest.raises(SystemExit) as exited:
                runpy.run_path(path, run_name="__main__")
        finally:
            torch.set_num_threads(threads)
        assert sorted(p.name for p in out.iterdir()) == sorted(["results.json", LOCK_NAME])
    assert exited.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"output folder {out} is in use by pid {os.getpid()}" in errors[0]
    shutil.rmtree(out)
