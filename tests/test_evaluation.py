"""`hftune evaluate`: reload saved runs by artefact type, score offline, record in the card and results.json."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from test_leaderboard import tiny_runs  # noqa: F401 - the session's real LoRA runs

from hftune.errors import HftuneError
from hftune.evaluation import evaluate_command
from hftune.reporting import leaderboard
from hftune.reporting.cards import read_model_index, validate_card, write_model_card
from hftune.results import RunRecord, read_results, write_results


@pytest.fixture
def lora_run(tiny_runs, tmp_path):  # noqa: F811
    """A copy of a real run, so recording evaluations leaves the shared one untouched."""
    run = tmp_path / "lora_r16"
    shutil.copytree(tiny_runs[0] / "lora_r16", run)
    return run


def test_evaluate_reproduces_the_recorded_accuracy_and_records_it(lora_run, tiny_runs, capsys):  # noqa: F811
    validation_file = tiny_runs[2]
    recorded = read_results(lora_run).metrics

    assert evaluate_command([str(lora_run), "--validation_file", str(validation_file)]) == 0

    results = read_results(lora_run)
    evaluation = results.evaluations[-1]
    assert evaluation["num_examples"] == 40 and evaluation["split"] == "validation"
    assert evaluation["metrics"]["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-9)
    assert evaluation["metrics"]["f1_macro"] == pytest.approx(recorded["f1_macro"], abs=1e-9)
    assert f"accuracy     {recorded['accuracy']:.4f}" in capsys.readouterr().out

    card = lora_run / "README.md"
    validate_card(card)
    appended = [r for r in read_model_index(card) if r["dataset_name"] == "validation.csv"]
    assert {r["metric_type"] for r in appended} >= {"accuracy", "f1_macro", "f1_joy"}

    # Evaluating the same data again replaces the entries instead of piling up duplicates.
    evaluate_command([str(lora_run), "--validation_file", str(validation_file)])
    assert len(read_results(lora_run).evaluations) == 1
    again = [r for r in read_model_index(card) if r["dataset_name"] == "validation.csv"]
    assert len(again) == len(appended) == len(evaluation["metrics"])

    # The leaderboard shows the evaluation as a row of its own, after the run's own result.
    rows = leaderboard.collect_rows([str(lora_run)])
    assert [r["dataset"] for r in rows] == ["data/train.csv", "data/validation.csv"]
    assert rows[1]["accuracy"] == evaluation["metrics"]["accuracy"]


def test_seeded_subset_matches_the_recipes_subset(lora_run, tiny_runs, tmp_path):  # noqa: F811
    """--max_eval_samples picks the examples the recipe's own --max_eval_samples picked (same seed)."""
    from hftune.config import DataArguments
    from hftune.data import load_classification_data

    train_file, validation_file = tiny_runs[1], tiny_runs[2]
    evaluate_command([str(lora_run), "--validation_file", str(validation_file), "--max_eval_samples", "15"])
    entry = read_results(lora_run).evaluations[-1]
    recipe_data = load_classification_data(
        DataArguments(train_file=str(train_file), validation_file=str(validation_file), max_eval_samples=15),
        seed=42,
    )
    assert entry["num_examples"] == 15
    # Score the recipe's subset as a file of its own: both must agree exactly.
    subset = tmp_path / "subset.csv"
    with subset.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        names = recipe_data.label_names
        writer.writerows((row["text"], names[row["label"]]) for row in recipe_data.splits["validation"])
    evaluate_command([str(lora_run), "--validation_file", str(subset)])
    by_dataset = {e["dataset"]: e["metrics"] for e in read_results(lora_run).evaluations}
    assert by_dataset[str(subset)] == by_dataset[str(validation_file)]


def test_unknown_label_is_named(lora_run, tmp_path):
    data = tmp_path / "odd_labels.csv"
    data.write_text("text,label\ni am thrilled,joy\ni feel meh,boredom\n", encoding="utf-8")
    with pytest.raises(
        HftuneError, match=r"label\(s\) \['boredom'\] are not among the model's labels \['anger'"
    ):
        evaluate_command([str(lora_run), "--validation_file", str(data)])


def test_missing_run_and_missing_data_are_clear(lora_run):
    with pytest.raises(HftuneError, match=r"./no/such/run is not a local run folder"):
        evaluate_command(["./no/such/run", "--dataset_name", "movie_polarity"])
    with pytest.raises(HftuneError, match="no evaluation data"):
        evaluate_command([str(lora_run)])


def test_jsl_run_is_scored_with_gloss_metrics(tmp_path):
    """The JSL path end to end on a tiny model overfitted to 8 corpus pairs: a perfect score proves the
    decoded glosses are compared in the references' format."""
    from hftune.jsl import JslSeq2SeqConfig, JslSeq2SeqForConditionalGeneration, JslTokenizer
    from hftune.jsl.artifacts import save_jsl_model
    from hftune.jsl.corpus import load_jsl_corpus

    pairs = load_jsl_corpus("validation").select(range(8))
    tokenizer = JslTokenizer.build_from_pairs(zip(pairs["ja"], pairs["gloss"], strict=True))
    config = JslSeq2SeqConfig(vocab_size=len(tokenizer), d_model=64, num_heads=4, encoder_layers=2,
                              decoder_layers=2, d_ff=128, dropout=0.0)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds contention
    try:
        torch.manual_seed(0)
        model = JslSeq2SeqForConditionalGeneration(config)
        batch = tokenizer(
            list(pairs["ja"]), text_target=list(pairs["gloss"]), padding=True, return_tensors="pt"
        )
        labels = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(150):
            loss = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
            ).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        run = save_jsl_model(model.eval(), tokenizer, tmp_path / "jsl_run", {"seed": 0})
        results = {"task": "jsl-seq2seq", "method": "scratch", "artifact": "remote-code", "dataset": "jsl_corpus",
                   "eval_split": "validation", "metrics": {"gloss_wer": 1.0, "exact_match": 0.0}}  # fmt: skip
        write_model_card(run, results)
        write_results(run, RunRecord.from_dict(results))

        assert evaluate_command([str(run), "--dataset_name", "jsl_corpus", "--max_eval_samples", "8"]) == 0
        # Decoded as the run was scored: without a recorded `generation`, the saved generation_config's
        # settings; with one (what the JSL recipe writes), exactly those.
        saved = json.loads((run / "generation_config.json").read_text(encoding="utf-8"))
        recorded = read_results(run).evaluations[-1]
        assert (recorded["num_beams"], recorded["max_new_tokens"]) == (
            saved.get("num_beams", 1),
            saved["max_new_tokens"],
        )
        write_results(
            run, RunRecord.from_dict({**results, "generation": {"num_beams": 2, "max_new_tokens": 6}})
        )
        assert evaluate_command([str(run), "--dataset_name", "jsl_corpus", "--max_eval_samples", "8"]) == 0
        recorded = read_results(run).evaluations[-1]
        assert (recorded["num_beams"], recorded["max_new_tokens"]) == (2, 6)
        write_results(run, RunRecord.from_dict(results))
        assert evaluate_command([str(run), "--dataset_name", "jsl_corpus", "--max_eval_samples", "8"]) == 0
    finally:
        torch.set_num_threads(threads)
    entry = read_results(run).evaluations[-1]
    assert entry["metrics"] == pytest.approx(
        {"gloss_wer": 0.0, "bleu": 100.0, "chrf": 100.0, "exact_match": 1.0}
    )
    assert entry["generation_latency_ms"] > 0 and entry["num_examples"] == 8
    validate_card(run / "README.md")
    assert {
        r["metric_type"] for r in read_model_index(run / "README.md") if r["dataset_split"] == "validation"
    } >= {
        "gloss_wer",
        "bleu",
        "chrf",
        "exact_match",
    }
    rows = leaderboard.collect_rows([str(run)])
    assert (
        rows[-1]["exact_match"] == 1.0 and rows[-1]["generation_latency_ms"] == entry["generation_latency_ms"]
    )
