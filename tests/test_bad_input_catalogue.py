"""The catalogue of bad values: every one is refused before any work starts, in one line, with exit code 2.

Each row runs a real recipe's `main(argv)` or a real `hftune VERB` in this process (validation comes before any
model or data is loaded, so the heavy imports are paid once) and asserts: exit code 2, exactly one `error:` line
that names the bad value and a fix, no traceback, and the folders involved (the output folder, the run or model
folder passed) exactly as they were: the same listing, sizes and mtimes, or still absent. Two rows run as real
subprocesses, started first so they overlap the in-process rows: `hftune train` (the recipe under `accelerate
launch -q`) and a plain `python` whose first output line must be hftune's (no bitsandbytes notice).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOOD_ROWS = [("a wonderful and moving film", "positive"), ("dull and far too long", "negative")] * 6
TINY_LORA_RUN = ["--max_steps", "1", "--per_device_train_batch_size", "4", "--max_seq_length", "16",
                 "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "1",
                 "--load_best_model_at_end", "False", "--use_cpu", "--precision", "fp32"]  # fmt: skip


def write_csv(path: Path, rows, header: str = "text,label") -> Path:
    path.write_text(
        "\n".join([header] + [f"{text},{label}" for text, label in rows]) + "\n", encoding="utf-8"
    )
    return path


def snapshot(path: Path) -> dict[str, tuple[int, int]] | None:
    """Every entry under `path` (itself included) with its size and mtime; None when it does not exist."""
    if not path.exists():
        return None
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in entries}


# --- the folders the rows point at ----------------------------------------------------------------------


RECIPES: dict = {}


def recipe(name: str):
    """The recipe script as a module, imported once: its `main(argv)` is what `python recipes/NAME.py` runs."""
    if name not in RECIPES:
        spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
        RECIPES[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(RECIPES[name])
    return RECIPES[name]


@pytest.fixture(scope="module")
def world(tmp_path_factory, minilm_path, started_subprocesses) -> dict[str, Path]:
    """Data files, a real (1-step) LoRA run, its unfinished copy, and saved models of every other kind."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from hftune.jsl import JslSeq2SeqConfig, JslSeq2SeqForConditionalGeneration, JslTokenizer
    from hftune.jsl.artifacts import save_jsl_model

    root = tmp_path_factory.mktemp("catalogue")
    made: dict[str, Path] = {"root": root}
    made["good"] = write_csv(root / "good.csv", GOOD_ROWS)
    made["float_labels"] = write_csv(
        root / "float_labels.csv", [("great", 0.5), ("bad", 1.7), ("fine", 2.25)] * 4
    )
    made["empty_label"] = write_csv(root / "empty_label.csv", [*GOOD_ROWS, ("an unlabelled review", "")])
    made["nan_label"] = write_csv(root / "nan_label.csv", [("great", 1), ("bad", 0)] * 6 + [("so-so", "")])
    made["negative_lr"] = root / "negative_lr.yaml"
    made["negative_lr"].write_text("learning_rate: -0.1\n", encoding="utf-8")
    made["a_file"] = root / "a_file.txt"
    made["a_file"].write_text("not a folder\n", encoding="utf-8")
    made["notes"] = root / "notes"
    made["notes"].mkdir()
    (made["notes"] / "ideas.txt").write_text("my notes\n", encoding="utf-8")

    # A real run of the LoRA recipe: one step, one checkpoint, every final artefact.
    made["lora_run"] = root / "lora_run"
    threads = torch.get_num_threads()
    try:
        recipe("sentiment_lora").main(
            ["--train_file", str(made["good"]), *TINY_LORA_RUN, "--output_dir", str(made["lora_run"])]
        )
    finally:
        torch.set_num_threads(threads)
        os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
    assert (made["lora_run"] / "results.json").is_file() and (made["lora_run"] / "checkpoint-1").is_dir()
    made["lora_unfinished"] = root / "lora_unfinished"
    shutil.copytree(made["lora_run"] / "checkpoint-1", made["lora_unfinished"] / "checkpoint-1")
    made["results_list"] = root / "results_list"
    shutil.copytree(made["lora_run"], made["results_list"], ignore=shutil.ignore_patterns("checkpoint-*"))
    (made["results_list"] / "results.json").write_text("[1, 2, 3]\n", encoding="utf-8")
    made["metrics_list"] = root / "metrics_list"
    shutil.copytree(made["lora_run"], made["metrics_list"], ignore=shutil.ignore_patterns("checkpoint-*"))
    record = json.loads((made["lora_run"] / "results.json").read_text(encoding="utf-8"))
    (made["metrics_list"] / "results.json").write_text(
        json.dumps({**record, "metrics": [0.5]}), encoding="utf-8"
    )

    torch.manual_seed(0)
    tokenizer = JslTokenizer.build_from_pairs([("ありがとう", "<ありがとう>"), ("あした", "<明日>")])
    config = JslSeq2SeqConfig(vocab_size=len(tokenizer), d_model=16, num_heads=2, encoder_layers=1,
                              decoder_layers=1, d_ff=32)  # fmt: skip
    made["jsl_model"] = save_jsl_model(
        JslSeq2SeqForConditionalGeneration(config), tokenizer, root / "jsl", {}
    )
    made["classifier"] = root / "tiny_classifier"
    bert = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    BertForSequenceClassification(bert).save_pretrained(made["classifier"])
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(made["classifier"])
    made["causal_lm"] = root / "tiny_llama"
    llama = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    LlamaForCausalLM(llama).save_pretrained(made["causal_lm"])

    # For the permission rows: a folder others may enter, holding folders only its owner may write to.
    shared = Path(tempfile.mkdtemp(prefix="hftune-catalogue-"))
    shared.chmod(0o755)
    made["locked_parent"] = shared / "locked_parent"
    made["locked_out"] = shared / "locked_out"
    for folder in (made["locked_parent"], made["locked_out"]):
        folder.mkdir()
        folder.chmod(0o755)
    yield made
    shutil.rmtree(shared, ignore_errors=True)


@contextlib.contextmanager
def without_write_permission(world: dict[str, Path]):
    """Run as a user who may not write to the locked folders: root may write anywhere, so as `nobody` then."""
    if os.geteuid() != 0:
        for key in ("locked_parent", "locked_out"):
            world[key].chmod(0o555)
        try:
            yield
        finally:
            for key in ("locked_parent", "locked_out"):
                world[key].chmod(0o755)
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


# --- the catalogue ----------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    command: str  # a recipe name, or "hftune" for a verb
    args: list[str]
    words: list[str]  # the bad value or place, and the fix: each must be in the error line
    watch: list[str] = field(
        default_factory=lambda: ["out"]
    )  # folders that must be left exactly as they were
    output_dir: bool = True  # recipes: add --output_dir {out}
    other_user: bool = False


C = Case
CATALOGUE = [
    # -- the cases of issue 22 --
    C("lr_negative", "sentiment_lora", ["--learning_rate", "-1"], ["--learning_rate -1.0", "must be greater than 0", "pass e.g."]),
    C("train_batch_zero", "sentiment_lora", ["--per_device_train_batch_size", "0"],
      ["--per_device_train_batch_size 0", "must be at least 1", "pass e.g."]),
    C("seq_len_negative", "sentiment_lora", ["--max_seq_length", "-5"], ["--max_seq_length -5", "must be at least 1"]),
    C("seq_len_beyond_positions", "sentiment_lora", ["--train_file", "{good}", "--max_seq_length", "100000"],
      ["--max_seq_length 100000", "sentence-transformers/all-MiniLM-L6-v2 allows (512 positions)", "pass --max_seq_length 512 or less"]),
    C("epochs_zero", "sentiment_lora", ["--num_train_epochs", "0"],
      ["--num_train_epochs 0.0", "trains nothing", "positive --max_steps"]),
    C("output_dir_is_a_file", "sentiment_lora", ["--output_dir", "{a_file}"],
      ["--output_dir", "a_file.txt is an existing file", "pass a folder path"], ["a_file"], output_dir=False),
    C("output_dir_parent_read_only", "sentiment_lora", ["--output_dir", "{locked_parent}/run"],
      ["locked_parent/run cannot be created", "is not writable by this user", "pass a folder"],
      ["locked_parent"], output_dir=False, other_user=True),
    C("output_dir_read_only", "sentiment_lora", ["--output_dir", "{locked_out}"],
      ["locked_out is not writable by this user", "pass a folder you can write to"], ["locked_out"],
      output_dir=False, other_user=True),
    C("bitfit_into_a_lora_run", "sentiment_bitfit", ["--output_dir", "{lora_run}"],
      ["holds a finished text-classification run (method lora)", "(text-classification, method bitfit)", "pass another --output_dir"],
      ["lora_run"], output_dir=False),
    C("model_folder_without_config", "sentiment_lora", ["--model_name_or_path", "{notes}"],
      ["notes has no config.json", "ideas.txt", "save_pretrained"], ["out", "notes"]),
    C("translate_a_sentiment_run", "hftune", ["translate", "--model", "{lora_run}", "ありがとう"],
      ["lora_run has no readable config.json", "text-classification run (method lora)", "recipes/jsl_seq2seq.py"],
      ["lora_run"]),
    C("leaderboard_results_list", "hftune", ["leaderboard", "{results_list}", "--output", "{out}"],
      ["results.json holds a JSON list, not an object", "re-run the recipe"], ["results_list", "out"]),
    C("float_labels", "sentiment_lora", ["--train_file", "{float_labels}"],
      ["float_labels.csv (train split) row 1", "label 0.5", "not a whole number", "map the values to classes"]),
    C("empty_label", "sentiment_lora", ["--train_file", "{empty_label}"],
      ["empty_label.csv (train split) row 13", "label in column 'label' is missing", "fill it in or remove the row"]),
    C("nan_label", "sentiment_freeze", ["--train_file", "{nan_label}"],
      ["nan_label.csv (train split) row 13", "is missing", "fill it in"]),
    C("seq_len_zero", "sentiment_lora", ["--max_seq_length", "0"], ["--max_seq_length 0", "must be at least 1"]),
    C("lora_r_zero", "sentiment_lora", ["--lora_r", "0"], ["--lora_r 0", "must be at least 1", "--lora_r 8"]),
    C("model_path_is_a_file", "sentiment_lora", ["--model_name_or_path", "{a_file}"],
      ["a_file.txt' is a file, not a model folder", "config.json"], ["out", "a_file"]),
    C("generate_with_a_classifier_run", "hftune", ["generate", "--model", "{lora_run}"],
      ["is a text-classification run (method lora)", "not an instruction-tuned causal LM",
       "recipes/instruction_tuning.py saved"], ["lora_run"]),
    # -- more: every recipe --
    C("accumulation_zero", "sentiment_freeze", ["--gradient_accumulation_steps", "0"],
      ["--gradient_accumulation_steps 0", "at least 1"]),
    C("weight_decay_negative", "sentiment_freeze", ["--weight_decay", "-0.1"], ["--weight_decay -0.1", "at least 0"]),
    C("seed_negative", "sentiment_freeze", ["--seed", "-1"], ["--seed -1", "must be in [0, 4294967295]", "--seed 42"]),
    C("freeze_into_an_unfinished_lora_run", "sentiment_freeze", ["--output_dir", "{lora_unfinished}"],
      ["holds an unfinished text-classification run", "LoRA adapter", "(text-classification, method full)", "pass another --output_dir"],
      ["lora_unfinished"], output_dir=False),
    C("eval_batch_zero", "sentiment_bitfit", ["--per_device_eval_batch_size", "0"],
      ["--per_device_eval_batch_size 0", "at least 1"]),
    C("bitfit_on_a_jsl_model", "sentiment_bitfit", ["--model_name_or_path", "{jsl_model}"],
      ["is a JSL seq2seq model", "no sequence-classification head", "pass an encoder"], ["out", "jsl_model"]),
    C("validation_split_100", "sentiment_features", ["--validation_split_percentage", "100"],
      ["--validation_split_percentage 100.0", "must be in (0, 100)"]),
    C("train_samples_zero", "sentiment_features", ["--max_train_samples", "0"], ["--max_train_samples 0", "at least 1"]),
    C("features_into_notes", "sentiment_features", ["--output_dir", "{notes}"],
      ["holds files that are not an hftune run (ideas.txt)", "pass another --output_dir"], ["notes"], output_dir=False),
    C("train_file_missing", "sentiment_lora", ["--train_file", "{root}/no_such.csv"],
      ["--train_file", "no_such.csv does not exist", "existing data file"]),
    C("unknown_encoding", "sentiment_lora", ["--train_file", "{good}", "--encoding", "utf-9"],
      ["--encoding 'utf-9' is not a known text encoding", "utf-8 or latin-1"]),
    C("ia3_into_a_finished_lora_run", "sentiment_ia3", ["--output_dir", "{lora_run}"],
      ["holds a finished text-classification run (method lora)", "(text-classification, method ia3)"], ["lora_run"],
      output_dir=False),
    C("ia3_seq_len_beyond_positions", "sentiment_ia3", ["--model_name_or_path", "{classifier}", "--max_seq_length", "65"],
      ["--max_seq_length 65", "(64 positions)"], ["out", "classifier"]),
    C("adapters_reduction_factor_zero", "sentiment_adapters", ["--reduction_factor", "0"],
      ["--reduction_factor 0", "must be at least 1", "--reduction_factor 16"]),
    C("prefix_virtual_tokens_zero", "sentiment_prefix", ["--num_virtual_tokens", "0"],
      ["--num_virtual_tokens 0", "must be at least 1", "--num_virtual_tokens 20"]),
    C("prompt_virtual_tokens_zero", "sentiment_prompt", ["--num_virtual_tokens", "0"],
      ["--num_virtual_tokens 0", "must be at least 1", "--num_virtual_tokens 20"]),
    C("loraplus_ratio_zero", "sentiment_lora", ["--loraplus_lr_ratio", "0"], ["--loraplus_lr_ratio 0.0", "greater than 0"]),
    C("max_steps_zero", "sentiment_lora", ["--max_steps", "0"], ["--max_steps 0 trains nothing", "-1 (the default)"]),
    C("lora_dropout_above_one", "sentiment_lora", ["--lora_dropout", "1.5"], ["--lora_dropout 1.5", "in [0, 1)"]),
    C("lora_alpha_zero", "sentiment_lora", ["--lora_alpha", "0"], ["--lora_alpha 0", "greater than 0"]),
    C("adam_beta2_one", "sentiment_lora", ["--adam_beta2", "1.0"], ["--adam_beta2 1.0", "in [0, 1)", "0.999"]),
    C("memory_budget_not_a_size", "sentiment_lora", ["--memory_budget", "lots"], ["--memory_budget 'lots'", "6GB"]),
    C("memory_fraction_above_one", "sentiment_lora", ["--max_memory_fraction", "2"],
      ["--max_memory_fraction 2.0", "in (0, 1]", "0.85"]),
    C("yaml_negative_lr", "sentiment_lora", ["--config", "{negative_lr}"], ["--learning_rate -0.1", "greater than 0"]),
    C("instruction_validation_file_is_a_folder", "instruction_tuning",
      ["--train_file", "{good}", "--validation_file", "{notes}"], ["--validation_file", "notes is a folder, not a file"]),
    C("instruction_new_tokens_zero", "instruction_tuning", ["--max_new_tokens", "0"], ["--max_new_tokens 0", "at least 1"]),
    C("instruction_generation_batch_zero", "instruction_tuning", ["--generation_batch_size", "0"],
      ["--generation_batch_size 0", "at least 1"]),
    C("instruction_train_samples_zero", "instruction_tuning", ["--max_train_samples", "0"],
      ["--max_train_samples 0", "at least 1 (or -1)"]),
    C("instruction_on_a_classifier", "instruction_tuning", ["--model_name_or_path", "{classifier}"],
      ["is a text classifier (BertForSequenceClassification)", "not a causal language model", "SmolLM2"],
      ["out", "classifier"]),
    C("instruction_seq_len_beyond_positions", "instruction_tuning",
      ["--model_name_or_path", "{causal_lm}", "--max_seq_length", "128"],
      ["--max_seq_length 128", "(64 positions)", "--max_seq_length 64 or less"], ["out", "causal_lm"]),
    C("instruction_into_a_lora_run", "instruction_tuning", ["--output_dir", "{lora_run}"],
      ["holds a finished text-classification run (method lora)", "(instruction-tuning, method lora)"],
      ["lora_run"], output_dir=False),
    C("jsl_heads_do_not_divide", "jsl_seq2seq", ["--d_model", "100", "--num_heads", "3"],
      ["--d_model 100 is not divisible by --num_heads 3", "e.g. --num_heads 2"]),
    C("jsl_target_length_one", "jsl_seq2seq", ["--max_target_length", "1"], ["--max_target_length 1", "at least 2"]),
    C("jsl_dropout_one", "jsl_seq2seq", ["--dropout", "1"], ["--dropout 1.0", "in [0, 1)"]),
    C("jsl_test_file_missing", "jsl_seq2seq", ["--test_file", "{root}/no_such.jsonl"],
      ["--test_file", "no_such.jsonl does not exist"]),
    C("jsl_learning_rate_zero", "jsl_seq2seq", ["--learning_rate", "0"], ["--learning_rate 0.0", "greater than 0"]),
    C("jsl_into_a_lora_run", "jsl_seq2seq", ["--output_dir", "{lora_run}"],
      ["holds a finished text-classification run", "(jsl-seq2seq, method scratch)"], ["lora_run"],
      output_dir=False),
    C("export_attention_length_zero", "jsl_seq2seq", ["--export_attentions", "--attention_max_length", "0"],
      ["--attention_max_length 0", "at least 1"]),
    # -- more: every verb --
    C("translate_beams_zero", "hftune", ["translate", "--model", "{jsl_model}", "--num_beams", "0", "あ"],
      ["--num_beams 0", "at least 1"], ["jsl_model"]),
    C("translate_batch_zero", "hftune", ["translate", "--model", "{jsl_model}", "--batch_size", "0", "あ"],
      ["--batch_size 0", "at least 1"], ["jsl_model"]),
    C("translate_a_causal_lm", "hftune", ["translate", "--model", "{causal_lm}", "あ"],
      ["is a causal LM (LlamaForCausalLM)", "not a JSL seq2seq model", "recipes/jsl_seq2seq.py"], ["causal_lm"]),
    C("translate_model_is_a_file", "hftune", ["translate", "--model", "{a_file}", "あ"],
      ["a_file.txt is a file", "model folder or a Hub repo id"], ["a_file"]),
    C("generate_new_tokens_zero", "hftune", ["generate", "--model", "{causal_lm}", "--max_new_tokens", "0"],
      ["--max_new_tokens 0", "at least 1"], ["causal_lm"]),
    C("generate_with_a_jsl_model", "hftune", ["generate", "--model", "{jsl_model}"],
      ["is a JSL seq2seq model", "not a causal language model", "recipes/instruction_tuning.py saved"], ["jsl_model"]),
    C("generate_with_a_classifier", "hftune", ["generate", "--model", "{classifier}"],
      ["is a text classifier (BertForSequenceClassification)", "instruction_tuning.py"], ["classifier"]),
    C("generate_model_missing", "hftune", ["generate", "--model", "{root}/no_such_run"],
      ["no_such_run' does not exist", "instruction_tuning.py saved"], ["root"]),
    C("train_unknown_recipe", "hftune", ["train", "no_such_recipe", "--learning_rate", "1e-3"],
      ["recipe 'no_such_recipe' not found", "name one of", "sentiment_lora"], []),
    C("train_unknown_accelerate_config", "hftune", ["train", "sentiment_lora", "--config_file", "nowhere"],
      ["--config_file 'nowhere' not found", "multi_cpu"], []),
    C("export_a_sentiment_run", "hftune", ["export", "onnx", "{lora_run}"],
      ["lora_run has no readable config.json", "text-classification run (method lora)", "recipes/jsl_seq2seq.py"],
      ["lora_run"]),
    C("export_a_causal_lm", "hftune", ["export", "onnx", "{causal_lm}"],
      ["is a causal LM (LlamaForCausalLM), not a JSL seq2seq model"], ["causal_lm"]),
    C("export_output_is_a_file", "hftune", ["export", "onnx", "{jsl_model}", "--output", "{a_file}"],
      ["--output", "a_file.txt is a file", "pass a folder"], ["jsl_model", "a_file"]),
    C("export_output_holds_notes", "hftune", ["export", "onnx", "{jsl_model}", "--output", "{notes}"],
      ["notes exists and is not a model folder", "new or empty folder"], ["jsl_model", "notes"]),
    C("plan_batch_zero", "hftune", ["plan", "recipes/sentiment_lora.py", "--budget", "6GB", "--batch_size", "0"],
      ["--per_device_train_batch_size 0", "at least 1"], []),
    C("plan_seq_len_negative", "hftune", ["plan", "recipes/sentiment_lora.py", "--budget", "6GB",
                                          "--max_seq_length", "-5"], ["--max_seq_length -5", "at least 1"], []),
    C("plan_lora_r_zero", "hftune", ["plan", "recipes/sentiment_lora.py", "--budget", "6GB", "--lora_r", "0"],
      ["--lora_r 0", "at least 1"], []),
    C("plan_budget_not_a_size", "hftune", ["plan", "recipes/sentiment_lora.py", "--budget", "lots"],
      ["--budget 'lots' is not a size", "6GB"], []),
    C("publish_a_file", "hftune", ["publish", "{a_file}", "--repo-id", "me/run"],
      ["a_file.txt' is a file, not a folder", "finished run"], ["a_file"]),
    C("publish_an_unfinished_run", "hftune", ["publish", "{lora_unfinished}", "--repo-id", "me/run"],
      ["lora_unfinished has no README.md", "re-run the recipe"], ["lora_unfinished"]),
    C("evaluate_batch_zero", "hftune", ["evaluate", "{lora_run}", "--batch_size", "0"],
      ["--batch_size 0", "at least 1"], ["lora_run"]),
    C("evaluate_samples_zero", "hftune", ["evaluate", "{lora_run}", "--max_eval_samples", "0"],
      ["--max_eval_samples 0", "at least 1"], ["lora_run"]),
    C("evaluate_output_is_a_file", "hftune", ["evaluate", "{lora_run}", "--output_dir", "{a_file}"],
      ["a_file.txt is an existing file", "pass a folder path"], ["lora_run", "a_file"]),
    C("evaluate_unknown_encoding", "hftune", ["evaluate", "{lora_run}", "--validation_file", "{good}",
                                              "--encoding", "utf-9"], ["--encoding 'utf-9'", "utf-8"], ["lora_run"]),
    C("evaluate_results_list", "hftune", ["evaluate", "{results_list}", "--validation_file", "{good}"],
      ["results.json holds a JSON list, not an object", "re-run the recipe"], ["results_list"]),
    C("evaluate_float_labels", "hftune", ["evaluate", "{lora_run}", "--validation_file", "{float_labels}"],
      ["float_labels.csv row 1", "label 0.5", "not a whole number"], ["lora_run"]),
    C("generate_results_list", "hftune", ["generate", "--model", "{results_list}"],
      ["results.json holds a JSON list, not an object", "re-run the recipe"], ["results_list"]),
    C("leaderboard_metrics_list", "hftune", ["leaderboard", "{metrics_list}", "--output", "{out}"],
      ["`metrics` is a list, not an object", "re-run the recipe"], ["metrics_list", "out"]),
    C("leaderboard_output_is_a_file", "hftune", ["leaderboard", "{lora_run}", "--output", "{a_file}"],
      ["--output", "a_file.txt is an existing file"], ["lora_run", "a_file"]),
    C("leaderboard_run_epochs_zero", "hftune", ["leaderboard", "--run", "--num_train_epochs", "0",
                                                "--output_dir", "{out}"], ["--num_train_epochs 0.0", "trains nothing"]),
    C("leaderboard_run_batch_zero", "hftune", ["leaderboard", "--run", "--per_device_train_batch_size", "0",
                                               "--output_dir", "{out}"], ["--per_device_train_batch_size 0", "at least 1"]),
]  # fmt: skip


def run_case(case: Case, world: dict[str, Path], out: Path) -> int:
    """The case's exit code: what `python recipes/NAME.py ...` or `hftune VERB ...` would exit with."""
    from hftune.cli import main as hftune_main

    paths = {key: str(value) for key, value in {**world, "out": out}.items()}
    args = [arg.format(**paths) for arg in case.args]
    if case.command != "hftune" and case.output_dir:
        args += ["--output_dir", str(out)]
    with without_write_permission(world) if case.other_user else contextlib.nullcontext():
        try:
            return hftune_main(args) if case.command == "hftune" else recipe(case.command).main(args)
        except SystemExit as exited:
            return exited.code


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.name for case in CATALOGUE])
def test_a_bad_value_is_refused_before_any_work(case, world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HFTUNE_CPU_THREADS", "1")
    monkeypatch.chdir(REPO)  # `hftune plan recipes/...` names the recipe by its repository path
    out = tmp_path / "out"
    watched = {key: (out if key == "out" else world[key]) for key in case.watch}
    before = {key: snapshot(path) for key, path in watched.items()}
    threads = torch.get_num_threads()
    capsys.readouterr()
    try:
        code = run_case(case, world, out)
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    assert code == 2, captured.err[-3000:]
    assert "Traceback" not in captured.err + captured.out, captured.err[-3000:]
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, captured.err[-3000:]
    for word in case.words:
        assert word in errors[0], errors[0]
    assert {key: snapshot(path) for key, path in watched.items()} == before
    print(f"{case.name}: {errors[0]}")  # the catalogue table: pytest -rP shows it


def test_the_catalogue_covers_every_recipe_and_verb():
    commands = {case.command for case in CATALOGUE}
    verbs = {case.args[0] for case in CATALOGUE if case.command == "hftune"}
    recipe_names = {path.stem for path in (REPO / "recipes").glob("*.py")}
    assert recipe_names <= commands
    from hftune.cli import VERBS

    assert set(VERBS) <= verbs
    assert len(CATALOGUE) >= 19 + 20


# --- real subprocesses --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def started_subprocesses(tmp_path_factory):
    """Started with the first catalogue row (`world` asks for them) so they overlap the in-process rows."""
    root = tmp_path_factory.mktemp("catalogue_subprocesses")
    env = {**os.environ, "HFTUNE_CPU_THREADS": "1", "OMP_NUM_THREADS": "1"}
    commands = {
        # `hftune train` runs the recipe under `accelerate launch -q` and keeps its exit code.
        "hftune_train": [sys.executable, "-m", "hftune.cli", "train", "sentiment_lora", "--num_train_epochs", "0",
                         "--output_dir", str(root / "out_hftune_train")],
        "plain_python": [sys.executable, str(REPO / "recipes" / "instruction_tuning.py"), "--learning_rate", "-1",
                         "--output_dir", str(root / "out_plain_python")],
    }  # fmt: skip
    processes = {
        name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for name, command in commands.items()
    }
    yield root, processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()


def outcome(started, name: str) -> tuple[int, list[str]]:
    """Exit code and output lines (stdout and stderr as they interleaved) of a started subprocess; its output
    folder must not exist."""
    root, processes = started
    output, _ = processes[name].communicate(timeout=300)
    assert not (root / f"out_{name}").exists()
    return processes[name].returncode, output.splitlines()


def test_hftune_train_under_accelerate_launch_shows_the_one_line(started_subprocesses):
    code, lines = outcome(started_subprocesses, "hftune_train")
    assert code == 2, "\n".join(lines[-30:])
    assert lines[0].startswith("hftune: ") and "accelerate launch -q" in lines[0], lines[:3]
    assert not [line for line in lines if "Traceback" in line or "kernels-community" in line], lines
    assert lines[1:] == [line for line in lines if line.startswith("error:")], lines
    assert len(lines) == 2 and "--num_train_epochs 0.0 trains nothing" in lines[1], lines


def test_the_first_line_a_recipe_prints_is_hftunes(started_subprocesses):
    code, lines = outcome(started_subprocesses, "plain_python")
    assert code == 2, "\n".join(lines[-30:])
    assert lines and lines[0].startswith("error: --learning_rate -1.0 must be greater than 0"), lines[:5]
    assert len(lines) == 1, lines


def test_bitsandbytes_still_imports_and_logs_other_messages(caplog):
    """The filter drops the one kernels notice; bitsandbytes itself (QLoRA) still imports and logs."""
    import logging

    from hftune.runtime import BITSANDBYTES_CPU_LOGGER, BITSANDBYTES_KERNEL_NOTICE

    logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    with caplog.at_level(logging.WARNING, logger=BITSANDBYTES_CPU_LOGGER):
        import bitsandbytes  # noqa: F401 - imported after hftune, as peft imports it in a recipe

        logger.warning("%s: No module named 'kernels'", BITSANDBYTES_KERNEL_NOTICE)
        logger.warning("another bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["another bitsandbytes warning"]


def test_permission_rows_really_lack_write_permission(world):
    with without_write_permission(world):
        assert not os.access(
            world["locked_out"], os.W_OK, effective_ids=os.access in os.supports_effective_ids
        )
    assert stat.S_IMODE(world["locked_out"].stat().st_mode) == 0o755
