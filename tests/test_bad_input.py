"""The bad-input catalogue: each case is a real recipe subprocess that must end with exit code 2, exactly one
`error: ...` line naming the value, the place and the fix, no traceback, and no output folder left behind.

The subprocesses run two at a time (each mostly waits on imports), started together in one fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from hftune.errors import HftuneError

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "sentiment_lora.py")
GOOD_ROWS = [("a wonderful, moving film", "positive"), ("dull and far too long", "negative")] * 6


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


def bad_cases(root: Path, minilm_path: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """case name -> (recipe arguments, extra environment)."""
    good = write_csv(root / "good.csv", GOOD_ROWS)
    files = {
        "missing_columns": write_csv(root / "cols.csv", GOOD_ROWS, header="review_body,stars"),
        "wrong_delimiter": write_csv(root / "semi.csv", GOOD_ROWS, header="text;label", sep=";"),
        "unseen_validation_label": write_csv(root / "val.csv", [("so-so", "neutral"), ("great", "positive")]),
        "empty_text": write_csv(root / "blank.csv", [*GOOD_ROWS, ("", "positive")]),
    }
    latin = root / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 cr\xe8me,positive\nbad,negative\n".encode("latin-1"))
    empty = root / "empty.csv"
    empty.write_bytes(b"")
    nulls = root / "nulls.jsonl"
    nulls.write_text(
        "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in [*GOOD_ROWS, (None, "negative")]),
        encoding="utf-8",
    )
    typo = root / "typo.yaml"
    typo.write_text("learning_rate: 1e-3\nlora_r 8\nnum_train_epochs: [1\n", encoding="utf-8")
    unknown = root / "unknown.yaml"
    unknown.write_text("learning_rat: 0.001\n", encoding="utf-8")
    wrong_type = root / "wrong_type.yaml"
    wrong_type.write_text("lora_r: eight\n", encoding="utf-8")
    offline_env = {"HF_HUB_OFFLINE": "1"}
    # An endpoint nothing listens on stands in for a machine with no network at all.
    no_network_env = {"HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"}
    return {
        "missing_columns": (["--train_file", str(files["missing_columns"])], {}),
        "wrong_delimiter": (["--train_file", str(files["wrong_delimiter"]), "--delimiter", ","], {}),
        "non_utf8": (["--train_file", str(latin)], {}),
        "empty_file": (["--train_file", str(empty)], {}),
        "unseen_validation_label": (
            ["--train_file", str(good), "--validation_file", str(files["unseen_validation_label"])],
            {},
        ),
        "empty_text": (["--train_file", str(files["empty_text"])], {}),
        "null_text": (["--train_file", str(nulls)], {}),
        "yaml_typo": (["--config", str(typo)], {}),
        "yaml_unknown_key": (["--config", str(unknown)], {}),
        "yaml_wrong_type": (["--config", str(wrong_type)], {}),
        "missing_model_path": (
            ["--train_file", str(good), "--model_name_or_path", str(root / "no_model")],
            {},
        ),
        "hub_id_offline": (
            ["--train_file", str(good), "--model_name_or_path", "org/not-cached-model"],
            offline_env,
        ),
        "hub_id_no_network": (
            ["--train_file", str(good), "--model_name_or_path", "org/not-cached-model"],
            no_network_env,
        ),
        "debug_shows_traceback": (["--train_file", str(empty), "--debug"], {}),
    }


def run_case(name: str, args: list[str], env: dict[str, str], root: Path, launcher: list[str]) -> Outcome:
    out = root / f"out_{name}"
    started = time.monotonic()
    done = subprocess.run(
        [*launcher, RECIPE, *args, "--output_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    return Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - started, out)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, minilm_path) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("bad_input")
    cases = bad_cases(root, minilm_path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run_case, name, args, env, root, [sys.executable])
            for name, (args, env) in cases.items()
        }
        accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                      str(REPO / "accelerate_configs" / "cpu.yaml")]  # fmt: skip
        futures["via_accelerate_launch"] = pool.submit(
            run_case, "via_accelerate_launch", cases["missing_columns"][0], {}, root, accelerate
        )
        return {name: future.result() for name, future in futures.items()}


def one_error_line(outcome: Outcome) -> str:
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, outcome.stderr[-3000:]
    assert not outcome.output_dir.exists(), f"{outcome.output_dir} was left behind"
    return errors[0]


# (case, words the message must contain: the bad value or place, and the fix)
EXPECTED = [
    ("missing_columns", ["no text column found among ['review_body', 'stars']", "--text_column"]),
    ("via_accelerate_launch", ["no text column found among ['review_body', 'stars']", "--text_column"]),
    ("wrong_delimiter", ["['text;label']", "--delimiter"]),
    ("non_utf8", ["latin.csv", "is not valid utf-8", "--encoding"]),
    ("empty_file", ["empty.csv", "is empty"]),
    ("unseen_validation_label", ["val.csv", "row 1", "'neutral'", "add examples of it to the training data"]),
    ("empty_text", ["blank.csv", "row 13", "empty text", "fill it in or remove the row"]),
    ("null_text", ["nulls.jsonl", "row 13", "empty text"]),
    ("yaml_typo", ["typo.yaml", "line", "not valid YAML", "fix the syntax"]),
    ("yaml_unknown_key", ["unknown.yaml", "`learning_rat`", "did you mean `learning_rate`"]),
    ("yaml_wrong_type", ["wrong_type.yaml", "`lora_r`", "'eight'", "int"]),
    ("missing_model_path", ["no_model", "does not exist", "--model_name_or_path"]),
    ("hub_id_offline", ["'org/not-cached-model'", "not in the local cache", "--model_name_or_path"]),
    ("hub_id_no_network", ["'org/not-cached-model'", "not in the local cache", "--model_name_or_path"]),
]


@pytest.mark.parametrize("case,words", EXPECTED, ids=[case for case, _ in EXPECTED])
def test_bad_input_fails_with_one_clear_line(outcomes, case, words):
    line = one_error_line(outcomes[case])
    for word in words:
        assert word in line, line


def test_an_unreachable_hub_fails_in_seconds_not_minutes_of_retries(outcomes):
    # Both include interpreter start-up and imports (~10-25 s on the shared 2-core machine);
    # Hub retries with backoff took 188 s here before the reachability probe.
    assert outcomes["hub_id_no_network"].seconds < 90
    assert "the Hub is unreachable" in outcomes["hub_id_no_network"].stdout
    assert outcomes["hub_id_offline"].seconds < 90


def test_debug_shows_the_traceback(outcomes):
    outcome = outcomes["debug_shows_traceback"]
    assert outcome.returncode == 2
    assert "Traceback (most recent call last)" in outcome.stderr
    assert "hftune.errors.HftuneError" in outcome.stderr
    assert outcome.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not outcome.output_dir.exists()


def test_a_100000_character_text_is_truncated_and_trains(tmp_path):
    rows = [*GOOD_ROWS[:7], ("word " * 20_000, "positive")]
    train = write_csv(tmp_path / "long.csv", rows)
    out = tmp_path / "out"
    args = ["--train_file", str(train), "--validation_split_percentage", "25", "--max_seq_length", "32",
            "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--precision", "fp32", "--use_cpu",
            "--output_dir", str(out)]  # fmt: skip
    done = subprocess.run([sys.executable, RECIPE, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["hyperparameters"]["max_seq_length"] == 32
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


def test_a_jsl_folder_with_a_mismatched_tokenizer_is_refused(tmp_path):
    from hftune.jsl import JslSeq2SeqConfig, JslSeq2SeqForConditionalGeneration, JslTokenizer
    from hftune.jsl.artifacts import load_jsl_model, save_jsl_model

    pairs = [("ありがとう", "<ありがとう>"), ("あした学校に行きません", "<明日> <学校> <行く> <ない>")]
    tokenizer = JslTokenizer.build_from_pairs(pairs)
    config = JslSeq2SeqConfig(vocab_size=len(tokenizer), d_model=32, num_heads=2, encoder_layers=1,
                              decoder_layers=1, d_ff=64)  # fmt: skip
    folder = save_jsl_model(
        JslSeq2SeqForConditionalGeneration(config), tokenizer, tmp_path / "jsl", {"seed": 0}
    )
    other = JslTokenizer.build_from_pairs([("おはようございます", "<おはよう>"), ("きのう", "<昨日>")])
    other.save_pretrained(tmp_path / "other")
    (folder / "vocab.json").write_bytes((tmp_path / "other" / "vocab.json").read_bytes())
    with pytest.raises(
        HftuneError, match=r"vocab\.json does not belong to these weights|vocab\.json has \d+ tokens"
    ):
        load_jsl_model(folder)
