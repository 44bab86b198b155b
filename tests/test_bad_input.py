"""The bad-input catalogue: each case must end with exactly one `error: ...` line naming the value, the place
and the fix, a non-zero exit, no traceback (unless --debug), and no output folder left behind.

Most cases run the real recipe in this process (`runpy`, a patched `sys.argv`): the heavy imports are paid
once. Three run as real subprocesses, for what only a fresh process shows: plain `python` with no network
(the Hub settings are read at import), `accelerate launch`, and `--debug`.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hftune.errors import HftuneError

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "sentiment_lora.py")
GOOD_ROWS = [("a wonderful and moving film", "positive"), ("dull and far too long", "negative")] * 6
TINY = ["--max_seq_length", "32", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
        "--precision", "fp32", "--use_cpu"]  # fmt: skip


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    output_dir: Path


def write_csv(path: Path, rows, header: str = "text,label", sep: str = ",") -> Path:
    lines = [header] + [f"{text}{sep}{label}" for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_input")
    made = {
        "good": write_csv(root / "good.csv", GOOD_ROWS),
        "cols": write_csv(root / "cols.csv", GOOD_ROWS, header="review_body,stars"),
        "semi": write_csv(root / "semi.csv", GOOD_ROWS, header="text;label", sep=";"),
        "val": write_csv(root / "val.csv", [("so-so", "neutral"), ("great", "positive")]),
        "blank": write_csv(root / "blank.csv", [*GOOD_ROWS, ("", "positive")]),
        "latin": root / "latin.csv",
        "empty": root / "empty.csv",
        "nulls": root / "nulls.jsonl",
        "typo": root / "typo.yaml",
        "unknown": root / "unknown.yaml",
        "wrong_type": root / "wrong_type.yaml",
        "root": root,
    }
    made["latin"].write_bytes("text,label\ncaf\xe9 cr\xe8me,positive\nbad,negative\n".encode("latin-1"))
    made["empty"].write_bytes(b"")
    made["nulls"].write_text(
        "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in [*GOOD_ROWS, (None, "negative")]),
        encoding="utf-8",
    )
    made["typo"].write_text("learning_rate: 1e-3\nlora_r 8\nnum_train_epochs: [1\n", encoding="utf-8")
    made["unknown"].write_text("learning_rat: 0.001\n", encoding="utf-8")
    made["wrong_type"].write_text("lora_r: eight\n", encoding="utf-8")
    return made


def one_error_line(outcome: Outcome, returncode: int = 2) -> str:
    assert outcome.returncode == returncode, outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, outcome.stderr[-3000:]
    assert not outcome.output_dir.exists(), f"{outcome.output_dir} was left behind"
    return errors[0]


# --- in this process -----------------------------------------------------------------------------------


@pytest.fixture
def run_in_process(monkeypatch, capsys, tmp_path):
    """Run the LoRA recipe's `__main__` with the given arguments; restore what the recipe changes globally."""
    monkeypatch.setenv("HFTUNE_CPU_THREADS", "1")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # the recipe exports the decided precision
    threads = torch.get_num_threads()

    def run(args: list[str]) -> Outcome:
        out = tmp_path / "out"
        monkeypatch.setattr(sys, "argv", [RECIPE, *args, "--output_dir", str(out)])
        capsys.readouterr()
        started = time.monotonic()
        try:
            runpy.run_path(RECIPE, run_name="__main__")
            code = 0
        except SystemExit as exited:
            code = exited.code
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err, time.monotonic() - started, out)

    yield run
    torch.set_num_threads(threads)


# (case, recipe arguments, words the message must contain: the bad value or place, and the fix)
IN_PROCESS = [
    ("missing_columns", ["--train_file", "{cols}"],
     ["no text column found among ['review_body', 'stars']", "--text_column"]),
    ("wrong_delimiter", ["--train_file", "{semi}", "--delimiter", ","], ["['text;label']", "--delimiter"]),
    ("non_utf8", ["--train_file", "{latin}"], ["latin.csv", "is not valid utf-8", "byte 14", "--encoding"]),
    ("empty_file", ["--train_file", "{empty}"], ["empty.csv", "is empty"]),
    ("unseen_validation_label", ["--train_file", "{good}", "--validation_file", "{val}"],
     ["val.csv", "row 1", "'neutral'", "add examples of it to the training data"]),
    ("empty_text", ["--train_file", "{blank}"], ["blank.csv", "row 13", "empty text", "fill it in or remove the row"]),
    ("null_text", ["--train_file", "{nulls}"], ["nulls.jsonl", "row 13", "empty text"]),
    ("yaml_typo", ["--config", "{typo}"], ["typo.yaml", "line", "not valid YAML", "fix the syntax"]),
    ("yaml_unknown_key", ["--config", "{unknown}"], ["unknown.yaml", "`learning_rat`", "did you mean `learning_rate`"]),
    ("yaml_wrong_type", ["--config", "{wrong_type}"], ["wrong_type.yaml", "`lora_r`", "'eight'", "int"]),
    ("missing_model_path", ["--train_file", "{good}", "--model_name_or_path", "{root}/no_model"],
     ["no_model", "does not exist", "--model_name_or_path"]),
    ("hub_id_offline", ["--train_file", "{good}", "--model_name_or_path", "org/not-cached-model"],
     ["'org/not-cached-model'", "not in the local cache", "--model_name_or_path"]),
]  # fmt: skip


@pytest.mark.parametrize("case,args,words", IN_PROCESS, ids=[case for case, _, _ in IN_PROCESS])
def test_bad_input_fails_with_one_clear_line(run_in_process, files, case, args, words):
    outcome = run_in_process([arg.format(**files) for arg in args])
    line = one_error_line(outcome)
    for word in words:
        assert word in line, line
    assert outcome.seconds < 60  # offline: no retries with backoff (those took 188 s here)


def test_a_100000_character_text_is_truncated_and_trains(run_in_process, tmp_path):
    train = write_csv(tmp_path / "long.csv", [*GOOD_ROWS[:7], ("word " * 20_000, "positive")])
    outcome = run_in_process(["--train_file", str(train), "--validation_split_percentage", "25", *TINY])
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    results = json.loads((outcome.output_dir / "results.json").read_text(encoding="utf-8"))
    assert results["hyperparameters"]["max_seq_length"] == 32
    assert results["split_sizes"] == {"train": 6, "validation": 2}
    assert 0.0 <= results["metrics"]["accuracy"] <= 1.0


def test_an_adapter_for_another_base_model_is_refused(tmp_path, minilm_path):
    from peft import get_peft_model
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    from hftune.config import LoraArguments
    from hftune.methods import lora_config
    from hftune.models import load_adapter_classifier, load_classifier
    from hftune.persistence import write_weights_manifest

    run = tmp_path / "minilm_lora"
    model, _ = load_classifier(minilm_path, {0: "negative", 1: "positive"})
    get_peft_model(model, lora_config(model, LoraArguments())).save_pretrained(run)
    (run / "results.json").write_text(json.dumps({"labels": ["negative", "positive"]}), encoding="utf-8")
    write_weights_manifest(run)
    tiny = tmp_path / "tiny_distilbert"
    config = DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=2, num_labels=2)
    DistilBertForSequenceClassification(config).save_pretrained(tiny)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(tiny)

    assert type(load_adapter_classifier(run)[0]).__name__ == "PeftModelForSequenceClassification"
    with pytest.raises(HftuneError) as caught:
        load_adapter_classifier(run, str(tiny))
    message = str(caught.value)
    assert f"the adapter in {run} was trained on {minilm_path!r}" in message
    assert f"does not fit base model {str(tiny)!r}" in message and "\n" not in message


# --- the JSL model folder and tokenizer ------------------------------------------------------------------

JSL_PAIRS = [("ありがとう", "<ありがとう>"), ("あした学校に行きません", "<明日> <学校> <行く> <ない>")]


@pytest.fixture(scope="module")
def tiny_jsl():
    from hftune.jsl import JslSeq2SeqConfig, JslSeq2SeqForConditionalGeneration, JslTokenizer

    torch.manual_seed(0)
    tokenizer = JslTokenizer.build_from_pairs(JSL_PAIRS)
    config = JslSeq2SeqConfig(vocab_size=len(tokenizer), d_model=32, num_heads=2, encoder_layers=1,
                              decoder_layers=1, d_ff=64)  # fmt: skip
    return JslSeq2SeqForConditionalGeneration(config).eval(), tokenizer


def test_a_jsl_folder_with_a_mismatched_tokenizer_is_refused(tmp_path, tiny_jsl):
    from hftune.jsl import JslTokenizer
    from hftune.jsl.artifacts import load_jsl_model, save_jsl_model

    model, tokenizer = tiny_jsl
    folder = save_jsl_model(model, tokenizer, tmp_path / "jsl", {"seed": 0})
    other = JslTokenizer.build_from_pairs([("おはようございます", "<おはよう>"), ("きのう", "<昨日>")])
    other.save_pretrained(tmp_path / "other")
    (folder / "vocab.json").write_bytes((tmp_path / "other" / "vocab.json").read_bytes())
    with pytest.raises(HftuneError, match=r"vocab\.json does not belong to these weights"):
        load_jsl_model(folder)


# Any Unicode hypothesis can write (control characters, emoji, combining marks, unassigned code points),
# plus very long runs of them.
ANY_TEXT = st.one_of(st.text(max_size=40), st.text(min_size=1, max_size=3).map(lambda s: s * 400))
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(text=ANY_TEXT)
def test_the_jsl_tokenizer_never_crashes_on_any_unicode(tiny_jsl, text):
    _, tokenizer = tiny_jsl
    encoded = tokenizer(text, truncation=True, max_length=64)
    ids = encoded["input_ids"]
    assert 1 <= len(ids) <= 64 and ids[-1] == tokenizer.eos_token_id
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert isinstance(tokenizer.decode(ids, skip_special_tokens=True), str)


@FAST
@given(texts=st.lists(ANY_TEXT, min_size=1, max_size=4))
def test_translate_never_crashes_and_keeps_one_output_per_input(tiny_jsl, texts):
    from hftune.jsl.translate import translate

    model, tokenizer = tiny_jsl
    glosses = translate(texts, model, tokenizer, max_new_tokens=4)
    assert len(glosses) == len(texts) and all(isinstance(g, str) and "\n" not in g for g in glosses)
    assert all(g == "" for g, text in zip(glosses, texts, strict=True) if not tokenizer.tokenize(text))


# --- real subprocesses ------------------------------------------------------------------------------------


def run_case(name: str, launcher: list[str], args: list[str], env: dict[str, str], root: Path) -> Outcome:
    out = root / f"out_{name}"
    started = time.monotonic()
    done = subprocess.run(
        [*launcher, RECIPE, *args, "--output_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HFTUNE_CPU_THREADS": "1", **env},
    )
    return Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - started, out)


@pytest.fixture(scope="module")
def subprocess_outcomes(files) -> dict[str, Outcome]:
    python = [sys.executable]
    # `-q`: without it accelerate answers the child's exit code 2 with its own CalledProcessError traceback.
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--config_file",
                  str(REPO / "accelerate_configs" / "cpu.yaml")]  # fmt: skip
    # An endpoint nothing listens on stands in for a machine with no network at all.
    no_network = {"HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"}
    cases = {
        "hub_id_no_network": (python, ["--train_file", str(files["good"]), "--model_name_or_path",
                                       "org/not-cached-model"], no_network),
        "via_accelerate_launch": (accelerate, ["--train_file", str(files["cols"])], {}),
        "debug_shows_traceback": (python, ["--train_file", str(files["empty"]), "--debug"], {}),
    }  # fmt: skip
    with ThreadPoolExecutor(max_workers=3) as pool:  # together: the same machine load for all three
        futures = {name: pool.submit(run_case, name, *case, files["root"]) for name, case in cases.items()}
        return {name: future.result() for name, future in futures.items()}


def test_an_unreachable_hub_fails_in_seconds_not_minutes_of_retries(subprocess_outcomes):
    outcome = subprocess_outcomes["hub_id_no_network"]
    line = one_error_line(outcome)
    assert "'org/not-cached-model'" in line and "not in the local cache" in line, line
    assert "the Hub is unreachable" in outcome.stdout
    # Measured against the --debug case, which pays the same start-up and imports on the same (shared,
    # loaded) machine and fails at its data file: Hub retries with backoff took 188 s here.
    assert outcome.seconds < subprocess_outcomes["debug_shows_traceback"].seconds + 45


def test_accelerate_launch_shows_the_same_one_line(subprocess_outcomes):
    # accelerate turns the child's exit code 2 into 1.
    line = one_error_line(subprocess_outcomes["via_accelerate_launch"], returncode=1)
    assert "no text column found among ['review_body', 'stars']" in line and "--text_column" in line


def test_debug_shows_the_traceback(subprocess_outcomes):
    outcome = subprocess_outcomes["debug_shows_traceback"]
    assert outcome.returncode == 2
    assert "Traceback (most recent call last)" in outcome.stderr
    assert "hftune.errors.HftuneError" in outcome.stderr
    assert outcome.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not outcome.output_dir.exists()
