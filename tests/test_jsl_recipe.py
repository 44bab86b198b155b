"""recipes/jsl_seq2seq.py end to end on the real corpus: training lowers the loss, the saved folder is complete,
the exports are written, users' own files train, and bad flags fail before anything is written."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
from pathlib import Path

import pytest
import torch

from hftune.jsl.artifacts import load_jsl_model
from hftune.jsl.corpus import fingerspelled_runs, held_out_spellings, load_jsl_corpus, spelling_alphabet
from hftune.jsl.train import gloss_tokens
from hftune.jsl.translate import translate
from hftune.persistence import MANIFEST_NAME, file_sha256
from hftune.reporting.cards import read_model_index

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--d_model",
    "32",
    "--num_heads",
    "4",
    "--encoder_layers",
    "1",
    "--decoder_layers",
    "1",
    "--d_ff",
    "64",
]
LONG_INPUT = "きのうわたしはともだちとがっこうのとしょかんでほんをよみました"
WEIGHT_NAME = "decoder.layers.0.cross_attn.k_proj.weight"


def load_recipe():
    spec = importlib.util.spec_from_file_location(
        "jsl_seq2seq_recipe", REPO_ROOT / "recipes" / "jsl_seq2seq.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def one_cpu_thread():
    """The recipe gives torch every core; on the shared 2-core machine one thread is faster for tiny models."""
    previous_env, previous_threads = os.environ.get("HFTUNE_CPU_THREADS"), torch.get_num_threads()
    os.environ["HFTUNE_CPU_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        if previous_env is None:
            os.environ.pop("HFTUNE_CPU_THREADS", None)
        else:
            os.environ["HFTUNE_CPU_THREADS"] = previous_env


def run_recipe(argv: list[str]) -> str:
    """Run the recipe in this process; returns what it wrote to stderr."""
    stderr = io.StringIO()
    with one_cpu_thread(), contextlib.redirect_stderr(stderr):
        load_recipe().main(argv)
    return stderr.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("jsl") / "run"
    stderr = run_recipe(
        [
            "--output_dir", str(out), *TINY,
            "--max_train_samples", "320", "--max_eval_samples", "32", "--num_train_epochs", "20", "--dropout", "0",
            "--learning_rate", "5e-3", "--per_device_train_batch_size", "16", "--logging_steps", "40",
            "--metric_for_best_model", "chrf",
            "--export_attentions", "--attention_inputs", "ありがとう", LONG_INPUT, "わたしはたべます",
            "--attention_max_length", "20", "--export_weights", WEIGHT_NAME,
        ]
    )  # fmt: skip
    return out, stderr


def test_training_lowers_the_loss_and_produces_glosses(run):
    out, _ = run
    curve = json.loads((out / "metrics.json").read_text())["training_curve"]
    losses = [entry["loss"] for entry in curve if "loss" in entry]
    evals = [entry for entry in curve if "eval_exact_match" in entry]
    assert len(losses) == 10 and losses[-1] < 0.6 * losses[0]
    # One evaluation per epoch, then the final one of the kept checkpoint: the best chrF (partial credit,
    # which a model this small earns long before exact matches).
    per_epoch, final = evals[:-1], evals[-1]
    assert [entry["epoch"] for entry in per_epoch] == [float(epoch) for epoch in range(1, 21)]
    assert per_epoch[-1]["eval_loss"] < per_epoch[0]["eval_loss"]
    best = max(entry["eval_chrf"] for entry in per_epoch)
    assert best > 0 and final["eval_chrf"] == pytest.approx(best)
    rows = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 32
    model, tokenizer = load_jsl_model(out)
    allowed = set(gloss_tokens(tokenizer))
    assert sum(bool(row["prediction"]) for row in rows) >= 0.9 * len(rows)
    assert all(set(row["prediction"].split()) <= allowed for row in rows)
    assert rows[0]["ja"] == load_jsl_corpus("test")[0]["ja"]
    # Training batches are grouped by length (the recipe's train_sampling_strategy), evaluation is not: each
    # prediction is the saved model's own glossing of the sentence beside it.
    results = json.loads((out / "results.json").read_text())
    assert results["hyperparameters"]["train_sampling_strategy"] == "group_by_length"
    assert results["hyperparameters"]["corpus_builds"] == 3  # 320 pairs drawn from three generator builds
    generation = results["generation"]
    again = translate(
        [row["ja"] for row in rows], model, tokenizer, max_new_tokens=generation["max_new_tokens"],
        max_unknown_share=1.0,
    )  # fmt: skip
    assert [row["prediction"] for row in rows] == again


def test_saved_folder_is_complete(run):
    out, _ = run
    names = {path.name for path in out.iterdir()}
    expected = {
        "model.safetensors", "config.json", "generation_config.json", "tokenizer_config.json", "vocab.json",
        "configuration_jsl.py", "modeling_jsl.py", "tokenization_jsl.py", MANIFEST_NAME, "metrics.json",
        "results.json", "README.md", "training_curves.png", "test_predictions.jsonl", "attentions", "weights",
    }  # fmt: skip
    assert expected <= names
    assert not [name for name in names if name.startswith(".") and name != ".hftune.lock"]
    assert ".hftune.lock" not in names  # released at the end
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest == {"model.safetensors": file_sha256(out / "model.safetensors")}

    config = json.loads((out / "config.json").read_text())
    results = json.loads((out / "results.json").read_text())
    # The decoding its scores were made with, which `hftune evaluate` reuses; the card is named after the folder.
    assert results["generation"] == {"num_beams": 1, "max_new_tokens": config["max_target_length"]}
    assert results["run_name"] == out.name and f"# {out.name}" in (out / "README.md").read_text().splitlines()
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_jsl.JslSeq2SeqForConditionalGeneration"
    metadata = config["training_metadata"]
    for key in (
        "package",
        "torch_version",
        "transformers_version",
        "seed",
        "git_commit",
        "saved_at",
        "dataset",
    ):
        assert key in metadata
    assert metadata["seed"] == 42 and metadata["package"] == "hftune"
    assert config["d_model"] == 32 and config["max_source_length"] == 65 and config["max_target_length"] == 33
    # The saved output bound: generate() ends a gloss at 0.8 x input characters + 3 tokens.
    assert (config["output_length_ratio"], config["output_length_slack"]) == (0.8, 3)
    model, tokenizer = load_jsl_model(out)
    assert model.lm_head.weight is model.encoder.embed_tokens.weight
    assert config["vocab_hash"] == tokenizer.vocab_hash()
    assert tokenizer.model_max_length == 65

    generation = json.loads((out / "generation_config.json").read_text())
    # Users' cap sits above the longest output the bound allows (64 kana + 3), so the bound decides.
    assert config["output_length_spelling"] and generation["max_new_tokens"] == 64 + 3 + 1
    assert "max_length" not in generation
    # Trainer turns config.use_cache off for training; the saved model must generate with the KV cache.
    assert config["use_cache"] is True and generation.get("use_cache", True) is True
    assert set(generation["suppress_tokens"]).isdisjoint(
        tokenizer.convert_tokens_to_ids(gloss_tokens(tokenizer))
    )
    assert tokenizer.eos_token_id not in generation["suppress_tokens"]

    statistics = json.loads((out / "metrics.json").read_text())["parameter_statistics"]
    assert set(statistics) == {name for name, _ in model.named_parameters()}
    embedding = model.encoder.embed_tokens.weight
    assert statistics["encoder.embed_tokens.weight"]["max"] == pytest.approx(embedding.max().item())
    assert statistics["encoder.embed_tokens.weight"]["std"] == pytest.approx(embedding.std().item(), rel=1e-5)

    results = json.loads((out / "results.json").read_text())
    assert (results["task"], results["method"], results["artifact"]) == (
        "jsl-seq2seq",
        "scratch",
        "remote-code",
    )
    assert results["eval_split"] == "test" and results["dataset"] == "hftune-jsl-corpus"
    assert set(results["metrics"]) == {
        "gloss_wer", "bleu", "chrf", "exact_match", "unseen_fingerspelling_exact"
    }  # fmt: skip
    test = load_jsl_corpus("test").select(range(32))
    spelled = sum(
        any(seq in run for run in fingerspelled_runs(g) for seq in held_out_spellings())
        for g in test["gloss"]
    )
    assert results["unseen_fingerspelling_sentences"] == spelled > 0
    assert results["split_sizes"] == {"train": 320, "validation": 32, "test": 32, "natural": 32}
    # The hand-written natural split: its own results.json row, predictions file and model-index entry.
    (natural,) = results["evaluations"]
    assert (natural["dataset"], natural["split"], natural["num_examples"]) == (
        "hftune-jsl-corpus",
        "natural",
        32,
    )
    assert set(natural["metrics"]) == {"gloss_wer", "bleu", "chrf", "exact_match"}
    rows = [json.loads(line) for line in (out / "natural_predictions.jsonl").read_text().splitlines()]
    assert [row["ja"] for row in rows] == load_jsl_corpus("natural")["ja"][:32]
    exact = sum(row["prediction"] == row["reference"] for row in rows) / len(rows)
    assert natural["metrics"]["exact_match"] == pytest.approx(exact)
    index = {
        (e["dataset_split"], e["metric_type"]): e["metric_value"] for e in read_model_index(out / "README.md")
    }
    assert index[("natural", "exact_match")] == pytest.approx(exact)
    assert index[("test", "exact_match")] == pytest.approx(results["metrics"]["exact_match"])
    assert results["best_checkpoint_metric"] == pytest.approx(results["validation_metrics"]["chrf"])
    assert results["generation_speed"]["batched_greedy_sentences_per_second"] > 0
    assert results["generation_latency_ms"] == pytest.approx(
        1000 / results["generation_speed"]["batched_greedy_sentences_per_second"], rel=0.01
    )
    saved = [f for f in out.rglob("*") if not f.relative_to(out).parts[0].startswith(("checkpoint-", "."))]
    sizes = sum(f.stat().st_size for f in saved if f.is_file())
    assert results["disk_size_mb"] == pytest.approx(sizes / 2**20, rel=0.05)
    assert results["total_params"] == sum(p.numel() for p in model.parameters())

    index = {
        row["metric_type"]: row
        for row in read_model_index(out / "README.md")
        if row["dataset_split"] == "test"
    }
    assert {"gloss_wer", "exact_match", "bleu", "chrf"} <= set(index)
    assert index["gloss_wer"]["metric_value"] == pytest.approx(results["metrics"]["gloss_wer"])
    assert index["exact_match"]["dataset_split"] == "test"
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "trust_remote_code=True" in card and "training_curves.png" in card and "- name: run\n" in card


def test_attention_and_weight_exports(run):
    out, stderr = run
    attentions = out / "attentions"
    csvs = sorted(attentions.glob("*.csv"))
    # 2 examples (the long one is skipped) x (1 encoder + 1 decoder + 1 cross layer) x 4 heads
    assert len(csvs) == 2 * 3 * 4
    assert len(list(attentions.glob("*.png"))) == 2 * 3
    assert "attention export skips" in stderr and "over the limit of 20" in stderr
    examples = json.loads((attentions / "examples.json").read_text(encoding="utf-8"))
    assert [example["text"] for example in examples] == ["ありがとう", "わたしはたべます"]
    with open(attentions / "example0_cross_layer0_head2.csv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][1:] == ["あ", "り", "が", "と", "う", "</s>"]
    assert rows[1][0] == "<s>"
    for row in rows[1:]:
        assert sum(float(value) for value in row[1:]) == pytest.approx(1.0, abs=1e-4)
    with open(attentions / "example1_decoder_layer0_head0.csv", encoding="utf-8") as handle:
        decoder_rows = list(csv.reader(handle))
    assert float(decoder_rows[1][2]) == 0.0  # causal: the first query sees only itself

    model, _ = load_jsl_model(out)
    with open(out / "weights" / f"{WEIGHT_NAME}.csv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    values = torch.tensor([[float(value) for value in row[1:]] for row in rows[1:]])
    expected = model.state_dict()[WEIGHT_NAME]
    assert values.shape == expected.shape
    torch.testing.assert_close(values, expected, rtol=1e-6, atol=1e-8)


def test_lower_is_better_for_wer_as_best_metric():
    from transformers import Seq2SeqTrainingArguments

    from hftune.jsl.train import JslArguments, decide_device_and_precision

    for metric, greater in (("gloss_wer", False), ("exact_match", True)):
        args = Seq2SeqTrainingArguments(output_dir="unused", metric_for_best_model=metric, report_to="none")
        with one_cpu_thread():
            decided, decision = decide_device_and_precision(JslArguments(device="cpu"), args)
        assert decided.greater_is_better is greater
        assert decided.use_cpu and decision.precision == "fp32"


def test_own_jsonl_and_csv_files(tmp_path):
    corpus = load_jsl_corpus()
    train_file = tmp_path / "my_pairs.jsonl"
    train_file.write_text(
        "".join(json.dumps({"ja": r["ja"], "gloss": r["gloss"]}, ensure_ascii=False) + "\n" for r in corpus["train"].select(range(96))),
        encoding="utf-8",
    )  # fmt: skip
    validation_file = tmp_path / "my_validation.csv"
    with open(validation_file, "w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ja", "gloss"])
        writer.writerows([r["ja"], r["gloss"]] for r in corpus["validation"].select(range(16)))
    out = tmp_path / "own"
    run_recipe(
        [
            "--output_dir", str(out), *TINY, "--train_file", str(train_file), "--validation_file",
            str(validation_file), "--num_train_epochs", "1", "--per_device_train_batch_size", "32",
        ]
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "my_pairs" and results["eval_split"] == "validation"
    assert results["split_sizes"] == {"train": 96, "validation": 16}
    _, tokenizer = load_jsl_model(out)
    train_glosses = {g for r in corpus["train"].select(range(96)) for g in r["gloss"].split()}
    # The pairs fingerspell, so the vocabulary also holds every kana respelling can draw, and its gloss.
    assert any(g.startswith("<指:") for g in train_glosses)
    assert set(gloss_tokens(tokenizer)) == train_glosses | set(spelling_alphabet()[1].split())
    assert (out / "validation_predictions.jsonl").is_file()


def test_training_pairs_are_respelled_per_epoch_and_reproducibly():
    from hftune.jsl.train import RespelledPairs, build_tokenizer

    train = load_jsl_corpus("train").select(range(400))
    tokenizer = build_tokenizer(train, 65, spelling=True)
    assert not tokenizer.unknown_symbols([spelling_alphabet()])
    pairs = RespelledPairs(train, tokenizer, 33, rate=0.5, seed=42)
    spelled = [i for i, gloss in enumerate(train["gloss"]) if fingerspelled_runs(gloss)]
    plain = [i for i, gloss in enumerate(train["gloss"]) if not fingerspelled_runs(gloss)]
    assert len(spelled) > 50 and plain
    first = [pairs[i] for i in range(len(pairs))]
    assert [pairs[i] for i in range(len(pairs))] == first  # the same epoch draws the same words
    pairs.set_epoch(1)
    second = [pairs[i] for i in range(len(pairs))]
    assert all(first[i] == second[i] for i in plain)
    changed = [i for i in spelled if first[i] != second[i]]
    assert 0.3 * len(spelled) < len(changed) < len(spelled)  # about half of the spelled pairs, redrawn
    for i in changed[:20]:
        # the target still spells, kana for kana, what the input says
        labels = tokenizer.convert_ids_to_tokens(second[i]["labels"])
        source = "".join(tokenizer.convert_ids_to_tokens(second[i]["input_ids"]))
        for run in fingerspelled_runs(" ".join(labels)):
            kana = "".join(token[3:-1] for token in run.split())
            assert kana in source or kana.translate({c: c - 0x60 for c in range(0x30A1, 0x30F7)}) in source


def recipe_error(argv: list[str], capsys) -> str:
    with one_cpu_thread(), pytest.raises(SystemExit) as exit_info:
        load_recipe().main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ")
    return err


def test_bad_flags_fail_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "never"
    err = recipe_error(
        ["--output_dir", str(out), *TINY, "--export_weights", "decoder.layers.0.cross_attn.k_proj"], capsys
    )
    assert "'decoder.layers.0.cross_attn.k_proj' is not a parameter" in err
    assert "decoder.layers.0.cross_attn.k_proj.weight" in err  # the close names are listed
    (tmp_path / "t.csv").write_text("ja,gloss\nありがとう,<ありがとう>\n", encoding="utf-8")
    err = recipe_error(["--output_dir", str(out), "--test_file", str(tmp_path / "t.csv")], capsys)
    assert "need --train_file too" in err
    err = recipe_error(["--output_dir", str(out), "--d_model", "30", "--num_heads", "4"], capsys)
    assert "--d_model 30 is not divisible by --num_heads 4" in err and "--num_heads 3" in err
    err = recipe_error(["--output_dir", str(out), "--train_file", str(tmp_path / "missing.csv")], capsys)
    assert "missing.csv does not exist" in err
    err = recipe_error(["--output_dir", str(out), "--respelling_rate", "1.5"], capsys)
    assert "--respelling_rate 1.5 must be between 0" in err
    err = recipe_error(["--output_dir", str(out), "--corpus_builds", "0"], capsys)
    assert "--corpus_builds 0" in err and "3" in err
    err = recipe_error(["--output_dir", str(out), "--spelling_budget", "false"], capsys)
    assert "--spelling_copy needs --spelling_budget" in err and "--spelling_copy false" in err
    assert not out.exists()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    """The recipe's defaults on the shipped corpus (about 10 minutes on 2 cores). HFTUNE_JSL_DEFAULT_RUN names
    a folder that `python recipes/jsl_seq2seq.py` already wrote, to check it without training again."""
    given = os.environ.get("HFTUNE_JSL_DEFAULT_RUN")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("jsl") / "default"
    run_recipe(["--output_dir", str(out)])
    return out


@pytest.mark.slow
def test_default_run_reaches_the_quality_targets(default_run):
    results = json.loads((default_run / "results.json").read_text())
    assert results["hyperparameters"]["d_model"] == 128  # the default model size
    assert results["train_runtime_s"] < 15 * 60
    metrics = results["metrics"]
    assert metrics["gloss_wer"] <= 0.05 and metrics["exact_match"] >= 0.85
    assert (
        metrics["unseen_fingerspelling_exact"] >= 0.90 and results["unseen_fingerspelling_sentences"] >= 140
    )
    (natural,) = [e for e in results["evaluations"] if e["split"] == "natural"]
    assert natural["metrics"]["exact_match"] >= 0.70


def chatterbot_sentences(count: int = 500) -> list[str]:
    """The first `count` distinct Japanese utterances of chatterbot-corpus (dev extra): real text from outside
    the corpus's world, long sentences and unknown characters included."""
    import importlib.resources

    import yaml

    folder = importlib.resources.files("chatterbot_corpus") / "data" / "japanese"
    sentences: dict[str, None] = {}
    for name in sorted(path.name for path in folder.iterdir() if path.name.endswith(".yml")):
        for conversation in yaml.safe_load((folder / name).read_text(encoding="utf-8"))["conversations"]:
            sentences.update((text, None) for text in conversation if isinstance(text, str) and text.strip())
    return list(sentences)[:count]


@pytest.mark.slow
def test_real_sentences_never_run_generation_to_its_cap(default_run):
    """On 500 real sentences, no translated one runs to its cap: each ends (by the model's </s> or the loop stop
    of the saved output bound) before floor(ratio x characters) + slack tokens and before max_new_tokens;
    mostly-unknown ones are left untranslated."""
    from hftune.jsl.modeling_jsl import output_length_limits
    from hftune.jsl.translate import translate, unknown_characters

    texts = chatterbot_sentences()
    assert len(texts) == 500
    model, tokenizer = load_jsl_model(default_run)
    with one_cpu_thread():
        glosses = translate(texts, model, tokenizer)
    limit = int(tokenizer.model_max_length)
    batch = tokenizer(texts, truncation=True, max_length=limit, padding=True, return_tensors="pt")
    bounds = output_length_limits(model.config, batch["input_ids"], batch["attention_mask"]).tolist()
    cap = model.generation_config.max_new_tokens
    untranslated = 0
    for text, gloss, bound in zip(texts, glosses, bounds, strict=True):
        if unknown_characters(text, tokenizer)[1] > 0.5:
            assert gloss == "", text
            untranslated += 1
            continue
        assert len(gloss.split()) < min(bound, cap - 1), (text, gloss)
    assert untranslated < 100  # most real sentences are still translated
