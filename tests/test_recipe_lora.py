"""The main job, end to end: the real recipe under `accelerate launch`, the real MiniLM, real data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hftune.config import DataArguments
from hftune.data import load_classification_data, tokenize_splits

REPO = Path(__file__).resolve().parents[1]
TRAIN, EVAL = 640, 200


def launch(recipe: str, *args: str, config: str = "cpu.yaml", env: dict | None = None, timeout: int = 600):
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "accelerate_configs" / config),
        str(REPO / "recipes" / recipe), *args,
    ]  # fmt: skip
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    done = launch(
        "sentiment_lora.py",
        "--max_train_samples", str(TRAIN), "--max_eval_samples", str(EVAL),
        "--num_train_epochs", "2", "--precision", "fp32", "--output_dir", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_main_job_writes_a_complete_run_folder(lora_run):
    out, done = lora_run
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "results.json",
                 "README.md", "training_curves.png", "confusion_matrix.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt")), "no pickles in the final folder"
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "lora" and results["artifact"] == "adapter"
    assert results["world_size"] == 1
    assert 0 < results["trainable_params"] < 0.05 * results["total_params"]
    assert results["train_samples_per_second"] > 0 and results["peak_memory_mb"] > 0
    assert results["split_sizes"] == {"train": TRAIN, "validation": EVAL}
    assert results["hyperparameters"]["attention_dropout"] == 0.0  # the recipes' default, through peft
    assert "lora: " in done.stdout and "trainable of" in done.stdout  # parameter counts shown at start
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "model-index" in card
    assert f"value: {results['metrics']['accuracy']}" in card


def test_adapter_reloads_and_reproduces_reported_accuracy(lora_run):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer, DataCollatorWithPadding

    out, _ = lora_run
    results = json.loads((out / "results.json").read_text())
    id2label = dict(enumerate(results["labels"]))
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        out, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    data = load_classification_data(
        DataArguments(dataset_name="movie_polarity", max_train_samples=TRAIN, max_eval_samples=EVAL), seed=42
    )
    validation = tokenize_splits(data.splits, tokenizer, 128)["validation"]
    collate = DataCollatorWithPadding(tokenizer)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(validation), 50):
            batch = collate([validation[i] for i in range(start, min(start + 50, len(validation)))])
            labels = batch.pop("labels")
            correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    accuracy = correct / len(validation)
    assert accuracy == pytest.approx(results["metrics"]["accuracy"], abs=1e-9)
    majority = max(sum(validation["label"]), len(validation) - sum(validation["label"])) / len(validation)
    assert accuracy > majority + 0.1, (accuracy, majority)
