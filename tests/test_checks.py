"""What the input checks let through: the values and folders a run may use (the refusals are in
test_bad_input_catalogue.py)."""

import json

import pytest

from hftune.config import LoraArguments, ModelArguments, TrainingArguments, parse_recipe_args
from hftune.config.checks import check_output_folder, check_position_limit, label_name
from hftune.errors import HftuneError


def test_boundary_values_are_accepted(tmp_path):
    argv = ["--output_dir", str(tmp_path / "out"), "--num_train_epochs", "0", "--max_steps", "5",
            "--max_grad_norm", "0", "--weight_decay", "0", "--lora_dropout", "0", "--seed", "0",
            "--max_memory_fraction", "1"]  # fmt: skip
    model, lora, train = parse_recipe_args((ModelArguments, LoraArguments, TrainingArguments), {}, argv)
    assert train.max_steps == 5 and train.max_grad_norm == 0 and model.max_memory_fraction == 1.0
    assert not (tmp_path / "out").exists()  # checking a folder never creates it


def test_instruction_tuning_takes_minus_one_for_every_example(tmp_path):
    from hftune.tasks.instruction import InstructionDataArguments

    (data,) = parse_recipe_args((InstructionDataArguments,), {}, ["--max_train_samples", "-1"])
    assert data.max_train_samples == -1
    with pytest.raises(HftuneError, match="--max_train_samples -2 must be at least 1 \\(or -1\\)"):
        parse_recipe_args((InstructionDataArguments,), {}, ["--max_train_samples", "-2"])


def write_json(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_a_run_of_the_same_task_and_method_may_continue(tmp_path):
    finished = tmp_path / "finished"
    write_json(finished / "results.json", {"task": "text-classification", "method": "lora"})
    check_output_folder(finished, task="text-classification", method="lora", artifact="adapter")
    with pytest.raises(HftuneError, match="finished text-classification run \\(method lora\\)"):
        check_output_folder(finished, task="text-classification", method="qlora", artifact="adapter")

    unfinished = tmp_path / "unfinished"
    write_json(
        unfinished / "checkpoint-4" / "config.json", {"architectures": ["BertForSequenceClassification"]}
    )
    write_json(unfinished / "checkpoint-2" / "adapter_config.json", {"task_type": "SEQ_CLS"})
    (unfinished / ".hftune.lock").write_text("{}")  # a killed run's lock and staging are not content
    # The newest checkpoint counts: a full model, as BitFit's Trainer checkpoints are.
    check_output_folder(unfinished, task="text-classification", method="bitfit", artifact="bitfit")
    with pytest.raises(HftuneError, match="unfinished text-classification run \\(2 checkpoint"):
        check_output_folder(unfinished, task="text-classification", method="ia3", artifact="adapter")

    started = tmp_path / "started"
    started.mkdir()
    (started / "feature_projection.png").write_bytes(b"\x89PNG")  # written before the first checkpoint
    check_output_folder(started, task="text-classification", method="features", artifact="full")
    hidden_only = tmp_path / "hidden_only"
    hidden_only.mkdir()
    (hidden_only / ".DS_Store").write_bytes(b"")
    check_output_folder(hidden_only, task="jsl-seq2seq", method="scratch", artifact="remote-code")


def test_labels_keep_their_names_and_whole_floats_become_integers():
    assert label_name("positive", "f row 1", "label") == "positive"
    assert label_name(3, "f row 1", "label") == "3"
    assert label_name(1.0, "f row 1", "label") == "1"
    with pytest.raises(HftuneError, match="f row 2: the label in column 'stars' is missing"):
        label_name(float("nan"), "f row 2", "stars")
    with pytest.raises(HftuneError, match="is missing"):
        label_name("  ", "f row 3", "label")


def test_position_limits_follow_the_config():
    check_position_limit({"max_position_embeddings": 512}, 512, "m")
    with pytest.raises(HftuneError, match="allows \\(512 positions\\); pass --max_seq_length 512 or less"):
        check_position_limit({"max_position_embeddings": 512}, 513, "m")
    # RoBERTa numbers positions from padding_idx + 1: 514 embeddings hold 512 tokens.
    with pytest.raises(HftuneError, match="allows \\(512 positions\\)"):
        check_position_limit({"model_type": "roberta", "max_position_embeddings": 514}, 514, "m")
    check_position_limit({"n_positions": 1024}, 1024, "gpt2")
    check_position_limit({"model_type": "t5"}, 100_000, "t5")  # relative positions: no limit to check
