"""IA3, the method added through the registry alone (one module, one registration, one recipe): the recipe trains
it, `hftune plan` counts it, `hftune evaluate` reloads it, and the leaderboard would train it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hftune.evaluation import evaluate_command
from hftune.memory import prepare_for_method
from hftune.methods import METHODS, head_parameter_names
from hftune.methods.ia3 import IA3Arguments, apply_ia3
from hftune.models import count_parameters, load_classifier
from hftune.reporting.leaderboard import leaderboard_methods, method_command
from hftune.results import read_results

REPO = Path(__file__).resolve().parents[1]


def test_only_the_rescaling_vectors_and_the_head_train(minilm_path):
    model, _ = load_classifier(minilm_path, {0: "negative", 1: "positive"})
    head = set(head_parameter_names(model))
    model = apply_ia3(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    vectors = {name for name in trainable if ".ia3_l." in name}
    # peft's default targets for BERT (key, value, output.dense) match 4 modules per layer: "output.dense" is the
    # suffix of both the attention output and the feed-forward output projection.
    assert len(vectors) == 6 * 4
    rest = trainable - vectors
    # The head (classifier and BERT's pooler) trains fully, as a copy peft saves with the vectors.
    assert rest and all(".modules_to_save." in name for name in rest)
    assert {
        name.replace("modules_to_save.default.", "").removeprefix("base_model.model.") for name in rest
    } == head


def test_plan_counts_what_the_recipe_trains(minilm_path):
    planned = prepare_for_method(load_classifier(minilm_path, {0: "a", 1: "b"})[0], "ia3")
    applied = apply_ia3(load_classifier(minilm_path, {0: "a", 1: "b"})[0], IA3Arguments())
    assert count_parameters(planned) == count_parameters(applied)


def test_leaderboard_would_train_it_with_its_recipe():
    assert "ia3" in leaderboard_methods() and METHODS["ia3"].artifact == "adapter"
    args = argparse.Namespace(output_dir="runs", model_name_or_path=None, num_train_epochs=1.0, seed=42,
                              train_file=None, validation_file=None, dataset_name=None,
                              per_device_train_batch_size=None, max_train_samples=None, max_eval_samples=None,
                              max_seq_length=None)  # fmt: skip
    command = method_command("ia3", args, [])
    assert command[command.index("--output_dir") + 1] == str(Path("runs") / "ia3")
    assert Path(next(part for part in command if part.endswith(".py"))).name == "sentiment_ia3.py"


def test_recipe_trains_and_evaluate_reloads_it_exactly(tmp_path, emotion_dir):
    out = tmp_path / "ia3"
    command = [
        sys.executable, str(REPO / "recipes" / "sentiment_ia3.py"), "--train_file", str(emotion_dir / "train.txt"),
        "--validation_file", str(emotion_dir / "validation.txt"), "--max_train_samples", "64",
        "--max_eval_samples", "48", "--max_seq_length", "32", "--num_train_epochs", "1", "--precision", "fp32",
        "--save_strategy", "no", "--eval_strategy", "no", "--load_best_model_at_end", "false",
        "--output_dir", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "HFTUNE_CPU_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    record = read_results(out)
    assert (record.method, record.artifact) == ("ia3", "adapter")
    assert record.trainable_ratio < 0.01  # the vectors and a 6-way head over a 22.7M-parameter body
    assert evaluate_command([str(out), "--validation_file", str(emotion_dir / "validation.txt"),
                             "--max_eval_samples", "48"]) == 0  # fmt: skip
    assert read_results(out).evaluations[-1]["metrics"]["accuracy"] == pytest.approx(
        record.metrics["accuracy"], abs=1e-9
    )
    # IA3 merges (peft 0.21 fails on BERT's pooler copy unless the trained copies are put in place first): the
    # merged model is a plain transformers model giving the adapter's logits.
    import torch

    from hftune.evaluation import _merged_copy
    from hftune.methods.registry import ARTIFACTS

    merged = _merged_copy(out, record)
    assert merged is not None and "peft" not in type(merged).__module__
    adapter = ARTIFACTS["adapter"].load(out, [str(label) for label in record.labels]).eval()
    inputs = {"input_ids": torch.tensor([[101, 7592, 2088, 2003, 2307, 102]])}
    with torch.no_grad():
        torch.testing.assert_close(
            merged.eval()(**inputs).logits, adapter(**inputs).logits, atol=1e-5, rtol=1e-5
        )
