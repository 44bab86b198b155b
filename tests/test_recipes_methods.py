"""Each method's recipe, run for real on a small subset of real data: the saved artefact reloads and
reproduces the eval accuracy recorded in results.json."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hftune.config import DataArguments
from hftune.data import load_classification_data, tokenize_splits

REPO = Path(__file__).resolve().parents[1]
TRAIN, EVAL = 96, 48
SMALL = [
    "--max_train_samples", str(TRAIN), "--max_eval_samples", str(EVAL), "--max_seq_length", "64",
    "--precision", "fp32",
]  # fmt: skip
# Best-model selection is exercised by the BitFit run; elsewhere skip writing 270 MB checkpoints.
NO_CHECKPOINTS = ["--save_strategy", "no", "--load_best_model_at_end", "false"]


def run_recipe(recipe: str, argv: list[str], monkeypatch) -> None:
    """Run a recipe in this process, exactly as `python recipes/<recipe> ARGS` would."""
    # prepare_training_args exports the precision for accelerate: keep it from leaking into other tests.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setattr(sys, "argv", [recipe, *argv])
    runpy.run_path(str(REPO / "recipes" / recipe), run_name="__main__")


def launch(recipe: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "accelerate_configs" / "cpu.yaml"), str(REPO / "recipes" / recipe), *args,
    ]  # fmt: skip
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


def validation_data():
    return load_classification_data(
        DataArguments(dataset_name="movie_polarity", max_train_samples=TRAIN, max_eval_samples=EVAL), seed=42
    )


def accuracy_of(model, tokenizer) -> float:
    validation = tokenize_splits(validation_data().splits, tokenizer, 64)["validation"]
    collate = DataCollatorWithPadding(tokenizer)
    correct = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(validation), 40):
            batch = collate([validation[i] for i in range(start, min(start + 40, len(validation)))])
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    return correct / len(validation)


def check_results(out: Path, method: str, artifact: str) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == method and results["artifact"] == artifact
    assert results["split_sizes"] == {"train": TRAIN, "validation": EVAL}
    assert results["labels"] == ["negative", "positive"]
    metrics = results["metrics"]
    assert {"accuracy", "f1_macro", "f1_negative", "f1_positive"} <= set(metrics)
    assert results["trainable_ratio"] == pytest.approx(results["trainable_params"] / results["total_params"])
    assert results["disk_size_mb"] > 0 and results["peak_memory_mb"] > 0 and results["train_runtime_s"] > 0
    assert (out / "README.md").is_file() and (out / "confusion_matrix.png").is_file()
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pkl")), "no pickles in the final folder"
    return results


def test_freeze_recipe_with_checkpointing_and_accumulation_reloads(tmp_path, monkeypatch, minilm_path):
    out = tmp_path / "run"
    run_recipe(
        "sentiment_freeze.py",
        [*SMALL, "--freeze_embeddings", "--freeze_layers", "-2", "--activation_checkpointing",
         "--gradient_accumulation_steps", "2", "--num_train_epochs", "1", *NO_CHECKPOINTS, "--output_dir", str(out)],
        monkeypatch,
    )  # fmt: skip
    results = check_results(out, "freeze", "full")
    assert results["hyperparameters"]["gradient_checkpointing"] is True
    assert results["hyperparameters"]["gradient_accumulation_steps"] == 2
    assert results["hyperparameters"]["attention_dropout"] == 0.0  # the recipes' default, as trained
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.attention_probs_dropout_prob == 0.0
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    # Frozen parts kept their pretrained weights; the top layers moved.
    assert torch.equal(
        model.bert.embeddings.word_embeddings.weight, base.bert.embeddings.word_embeddings.weight
    )
    assert torch.equal(
        model.bert.encoder.layer[3].output.dense.weight, base.bert.encoder.layer[3].output.dense.weight
    )
    assert not torch.equal(
        model.bert.encoder.layer[5].output.dense.weight, base.bert.encoder.layer[5].output.dense.weight
    )
    assert accuracy_of(model, AutoTokenizer.from_pretrained(out)) == pytest.approx(
        results["metrics"]["accuracy"]
    )


@pytest.mark.parametrize("runner", ["in-process", pytest.param("accelerate-launch", marks=pytest.mark.slow)])
def test_bitfit_recipe_saves_only_trained_tensors(tmp_path, monkeypatch, capsys, runner):
    from safetensors.torch import load_file

    from hftune.methods import load_bitfit
    from hftune.methods.bitfit import BITFIT_WEIGHTS

    out = tmp_path / "run"
    argv = [*SMALL, "--num_train_epochs", "1", "--output_dir", str(out)]
    if runner == "accelerate-launch":
        done = launch("sentiment_bitfit.py", *argv)
        assert done.returncode == 0, done.stderr[-3000:]
        stdout = done.stdout
    else:
        run_recipe("sentiment_bitfit.py", argv, monkeypatch)
        stdout = capsys.readouterr().out
    assert "bitfit: 174,338 trainable of" in stdout
    results = check_results(out, "bitfit", "bitfit")
    assert not (out / "model.safetensors").exists()
    saved = load_file(out / BITFIT_WEIGHTS)
    assert sum(t.numel() for t in saved.values()) == results["trainable_params"]
    assert all(name.endswith(".bias") or name.startswith(("classifier.", "bert.pooler.")) for name in saved)
    assert results["disk_size_mb"] < 1.5  # tensors + tokenizer, no base weights
    model = load_bitfit(out)
    assert accuracy_of(model, AutoTokenizer.from_pretrained(out)) == pytest.approx(
        results["metrics"]["accuracy"]
    )


def test_features_logreg_recipe_saves_a_reloadable_classifier(tmp_path, monkeypatch):
    from hftune.methods.features import FEATURES_CONFIG, FEATURES_WEIGHTS, load_feature_classifier
    from hftune.tasks.features import PROJECTION_PLOT

    out = tmp_path / "run"
    run_recipe("sentiment_features.py", [*SMALL, "--pooling", "mean", "--output_dir", str(out)], monkeypatch)
    results = check_results(out, "features", "features")
    assert (out / FEATURES_WEIGHTS).is_file() and (out / PROJECTION_PLOT).is_file()
    config = json.loads((out / FEATURES_CONFIG).read_text())
    assert config["pooling"] == "mean" and config["id2label"] == {"0": "negative", "1": "positive"}
    assert results["trainable_params"] == 385  # one weight per hidden unit + bias: binary logistic regression

    classifier = load_feature_classifier(out)
    validation = validation_data().splits["validation"]
    predictions = np.asarray(classifier.predict(validation["text"]))
    accuracy = float((predictions == np.asarray(validation["label"])).mean())
    assert accuracy == pytest.approx(results["metrics"]["accuracy"])
    majority = np.bincount(validation["label"]).max() / len(validation)
    assert accuracy > majority  # a linear probe on sentence embeddings learns something from 128 examples
    probabilities = classifier.predict_proba(validation["text"][:5])
    assert probabilities.shape == (5, 2) and np.allclose(probabilities.sum(1), 1)


def test_features_head_recipe_trains_only_the_head(tmp_path, monkeypatch, minilm_path):
    out = tmp_path / "run"
    run_recipe(
        "sentiment_features.py",
        [*SMALL, "--classifier", "head", "--pooling", "cls", "--num_train_epochs", "1", *NO_CHECKPOINTS,
         "--output_dir", str(out)],
        monkeypatch,
    )  # fmt: skip
    results = check_results(out, "features", "full")
    assert results["trainable_params"] == (384 * 384 + 384) + (384 * 2 + 2)  # pooler + classifier
    assert (out / "feature_projection.png").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(out)
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    frozen = [(n, p) for n, p in model.bert.named_parameters() if not n.startswith("pooler.")]
    pretrained = dict(base.bert.named_parameters())
    assert all(torch.equal(p, pretrained[n]) for n, p in frozen)
    assert not torch.equal(
        model.bert.pooler.dense.weight, pretrained["pooler.dense.weight"]
    )  # head part trains
    assert accuracy_of(model, AutoTokenizer.from_pretrained(out)) == pytest.approx(
        results["metrics"]["accuracy"]
    )


def test_qlora_runs_on_cpu_and_saves_an_adapter(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_recipe(
        "sentiment_lora.py",
        ["--max_train_samples", "16", "--max_eval_samples", "16", "--load_in_4bit", "--max_steps", "2",
         "--per_device_train_batch_size", "8", "--max_seq_length", "32", "--eval_strategy", "no", *NO_CHECKPOINTS,
         "--output_dir", str(out)],
        monkeypatch,
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "qlora" and results["artifact"] == "adapter"
    assert (out / "adapter_model.safetensors").is_file()
    assert 0 < results["trainable_ratio"] < 0.05
