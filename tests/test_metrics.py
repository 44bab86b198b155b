"""The shipped `evaluate` metric modules: values against hand computation and reference libraries, offline loading."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
from sklearn.metrics import accuracy_score, f1_score
from transformers import EvalPrediction

from hftune.errors import HftuneError
from hftune.metrics import (
    METRIC_NAMES,
    classification_metrics,
    gloss_metrics,
    load_metric,
    load_metrics,
    metric_path,
)

PREDICTIONS = ["<私> <飲む>", "<佐藤> <雑誌> <読む> <いつ> <?>", "<ありがとう>", "<昨日> <行く> <ない>"]
REFERENCES = [
    "<私> <食べる>",
    "<佐藤> <図書館> <雑誌> <読む> <いつ>",
    "<ありがとう>",
    "<昨日> <行く>  <ない>",
]

DECOY_ACCURACY = """
import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="decoy",
            citation="",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": -1.0}
"""


@pytest.fixture(scope="module")
def labels_and_predictions():
    rng = np.random.default_rng(0)
    references = rng.integers(0, 4, size=200)
    # Class 4 is predicted five times but never occurs in the references: its F1 is 0.
    predictions = np.where(rng.random(200) < 0.7, references, rng.integers(0, 3, size=200))
    predictions[:5] = 4
    return predictions, references


def test_metric_paths_are_absolute_scripts_inside_the_package():
    for name in METRIC_NAMES:
        path = Path(metric_path(name))
        assert path.is_absolute() and path.is_file()
        assert path.parent.name == name and path.name == f"{name}.py"
        assert "hftune" in path.parts


def test_unknown_metric_is_a_user_error():
    with pytest.raises(HftuneError, match="'rouge'.*accuracy"):
        load_metric("rouge")


def test_accuracy_and_f1_match_sklearn(labels_and_predictions):
    predictions, references = labels_and_predictions
    accuracy = load_metric("accuracy").compute(predictions=predictions, references=references)
    assert accuracy["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    f1 = load_metric("f1")
    macro = f1.compute(predictions=predictions, references=references)["f1"]
    assert macro == pytest.approx(f1_score(references, predictions, average="macro"))
    weighted = f1.compute(predictions=predictions, references=references, average="weighted")["f1"]
    assert weighted == pytest.approx(f1_score(references, predictions, average="weighted"))
    assert weighted != pytest.approx(macro)
    per_class = f1.compute(
        predictions=predictions, references=references, labels=[0, 1, 2, 3, 4], average=None
    )
    expected = f1_score(references, predictions, labels=[0, 1, 2, 3, 4], average=None, zero_division=0.0)
    assert per_class["f1"] == pytest.approx(list(expected))
    assert per_class["f1"][4] == 0.0 and len(per_class["f1"]) == 5


def test_f1_hand_computed():
    # class 0: tp=1 fp=0 fn=1 -> 2/3; class 1: tp=1 fp=1 fn=0 -> 2/3; macro 2/3.
    result = load_metric("f1").compute(predictions=[0, 1, 1], references=[0, 1, 0])
    assert result["f1"] == pytest.approx(2 / 3)


def test_gloss_wer_hand_computed():
    result = load_metric("gloss_wer").compute(predictions=PREDICTIONS, references=REFERENCES)
    # pair 1: one substitution; pair 2: 図書館 deleted and <?> inserted; pairs 3-4 exact (extra space ignored).
    assert (result["substitutions"], result["deletions"], result["insertions"]) == (1, 1, 1)
    assert result["gloss_wer"] == pytest.approx(3 / 11)


def test_gloss_wer_refuses_all_empty_references():
    with pytest.raises(ValueError, match="non-empty reference"):
        load_metric("gloss_wer").compute(predictions=["<私>"], references=[""])


def test_bleu_equals_sacrebleu_with_tokenisation_off():
    result = load_metric("bleu").compute(predictions=PREDICTIONS, references=REFERENCES)
    direct = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES], tokenize="none")
    assert result["bleu"] == pytest.approx(direct.score)
    assert [result[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(direct.precisions)
    assert "tok:none" in result["signature"] and "nrefs:1" in result["signature"]
    # 13a would split "<私>" into "<", "私", ">": a different score, so tokenisation really is off.
    assert direct.score != pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)


def test_bleu_hand_computed_and_multi_reference():
    bleu = load_metric("bleu")
    assert bleu.compute(predictions=["<a> <b> <c> <d>"], references=["<a> <b> <c> <d>"])[
        "bleu"
    ] == pytest.approx(100)
    # unigram precision 3/4: one wrong gloss out of four.
    partial = bleu.compute(predictions=["<a> <b> <c> <x>"], references=["<a> <b> <c> <d>"])
    assert partial["bleu_1"] == pytest.approx(75.0)
    multi = bleu.compute(predictions=["<a> <b> <c> <x>"], references=[["<a> <b> <c> <d>", "<a> <b> <c> <x>"]])
    assert multi["bleu"] == pytest.approx(100) and "nrefs:2" in multi["signature"]


def test_chrf_equals_sacrebleu():
    result = load_metric("chrf").compute(predictions=PREDICTIONS, references=REFERENCES)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score)
    assert 0 < result["chrf"] < 100
    plus = load_metric("chrf").compute(predictions=PREDICTIONS, references=REFERENCES, word_order=2)
    assert plus["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES], word_order=2).score)


def test_exact_match_normalises_whitespace_only_when_asked():
    exact = load_metric("exact_match")
    assert exact.compute(predictions=PREDICTIONS, references=REFERENCES)["exact_match"] == pytest.approx(
        2 / 4
    )
    strict = exact.compute(predictions=PREDICTIONS, references=REFERENCES, normalize_whitespace=False)
    assert strict["exact_match"] == pytest.approx(1 / 4)


def test_combine_merges_scores_and_prefixes_duplicate_keys(labels_and_predictions):
    predictions, references = labels_and_predictions
    combined = load_metrics("accuracy", "f1").compute(predictions=predictions, references=references)
    assert set(combined) == {"accuracy", "f1"}
    assert combined["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    text = load_metrics("bleu", "chrf").compute(predictions=PREDICTIONS, references=REFERENCES)
    assert "bleu_signature" in text and "chrf_signature" in text and "bleu" in text and "chrf" in text


def test_gloss_metrics_agree_with_the_single_modules():
    scores = gloss_metrics(PREDICTIONS, REFERENCES)
    assert set(scores) == {"gloss_wer", "bleu", "chrf", "exact_match"}
    assert all(isinstance(value, float) for value in scores.values())
    assert scores["gloss_wer"] == pytest.approx(3 / 11)
    assert scores["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES], tokenize="none").score
    )
    assert scores["exact_match"] == pytest.approx(0.5)
    with pytest.raises(HftuneError, match="3 predictions for 4 references"):
        gloss_metrics(PREDICTIONS[:3], REFERENCES)


def test_classification_metrics_for_trainer(labels_and_predictions):
    predictions, references = labels_and_predictions
    label_names = ["sadness", "joy", "love", "anger", "Fear / Surprise"]
    logits = np.eye(5)[predictions] + 0.01  # argmax recovers `predictions`
    compute = classification_metrics(label_names)
    scores = compute(EvalPrediction(predictions=(logits, np.zeros(3)), label_ids=references))
    assert scores["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    assert scores["f1_macro"] == pytest.approx(
        f1_score(references, predictions, labels=range(5), average="macro", zero_division=0.0)
    )
    per_class = f1_score(references, predictions, labels=range(5), average=None, zero_division=0.0)
    keys = ["f1_sadness", "f1_joy", "f1_love", "f1_anger", "f1_fear_surprise"]
    assert [scores[key] for key in keys] == pytest.approx(list(per_class))
    # Class ids work as well as logits.
    assert compute(EvalPrediction(predictions=predictions, label_ids=references)) == pytest.approx(scores)
    with pytest.raises(HftuneError, match="collide"):
        classification_metrics(["a b", "a-b"])


def test_loads_offline_in_fresh_hf_home_despite_decoy_in_cwd(tmp_path):
    """A fresh HF_HOME, HF_HUB_OFFLINE=1 and a cwd holding ./accuracy/accuracy.py that evaluate.load prefers."""
    work = tmp_path / "work"
    (work / "accuracy").mkdir(parents=True)
    (work / "accuracy" / "accuracy.py").write_text(DECOY_ACCURACY)
    hf_home = tmp_path / "hf_home"
    script = textwrap.dedent(
        """
        import json
        import evaluate
        from hftune.metrics import METRIC_NAMES, load_metric
        decoy = evaluate.load("accuracy").compute(predictions=[0, 1], references=[0, 0])["accuracy"]
        ours = load_metric("accuracy").compute(predictions=[0, 1], references=[0, 0])["accuracy"]
        names = [load_metric(name).name for name in METRIC_NAMES]
        print(json.dumps({"decoy": decoy, "ours": ours, "names": names,
                          "modules_cache": str(evaluate.config.HF_MODULES_CACHE)}))
        """
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "XDG_CACHE"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["decoy"] == -1.0  # the trap is real: a bare name loads the cwd folder
    assert report["ours"] == 0.5
    assert report["names"] == list(METRIC_NAMES)
    assert report["modules_cache"] == str(hf_home / "modules")
    cached = hf_home / "modules" / "evaluate_modules" / "metrics"
    for name in METRIC_NAMES:
        assert list((cached / name).glob(f"*/{name}.py")), f"{name} not cached under {cached}"
