"""Model cards: one per task and artefact, metadata the Hub accepts, offline validation, model-index updates."""

import json
import struct
import zlib
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from hftune.errors import HftuneError
from hftune.reporting.cards import (
    PLACEHOLDER_REPO_ID,
    append_eval_result,
    build_model_card,
    read_model_index,
    validate_card,
    write_model_card,
)

VERSIONS = {"torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2", "hftune": "0.1.0"}


def sample_results(task: str, method: str, artifact: str, **overrides) -> dict:
    """A results.json as the recipes write it (values made up, schema real)."""
    if task == "text-classification":
        metrics = {"accuracy": 0.9312, "f1_macro": 0.8811, "f1_joy": 0.95, "f1_sadness": 0.94, "loss": 0.21}
        extra = {"labels": ["sadness", "joy", "love", "anger", "fear", "surprise"], "language": ["en"]}
        base_model, dataset = "sentence-transformers/all-MiniLM-L6-v2", "dair-ai/emotion"
    elif task == "jsl-seq2seq":
        metrics = {"gloss_wer": 0.081, "bleu": 84.2, "chrf": 90.5, "exact_match": 0.71, "loss": 1.02}
        extra = {"language": ["ja"]}
        base_model, dataset = None, "hftune-jsl-corpus"
    else:
        metrics = {"loss": 1.87, "perplexity": 6.49, "exact_match": 0.12}
        extra = {"language": ["en"]}
        base_model, dataset = "HuggingFaceTB/SmolLM2-135M-Instruct", "yahma/alpaca-cleaned"
    results = {
        "task": task,
        "method": method,
        "artifact": artifact,
        "base_model": base_model,
        "dataset": dataset,
        "metrics": {**metrics, "runtime": 3.2, "samples_per_second": 610.0},
        "eval_split": "validation",
        "trainable_params": 150_000,
        "total_params": 22_700_000,
        "trainable_ratio": 0.0066,
        "train_runtime_s": 301.5,
        "train_samples_per_second": 106.1,
        "peak_memory_mb": 912.4,
        "world_size": 1,
        "seed": 42,
        "device": "cpu",
        "precision": "bf16",
        "hyperparameters": {
            "learning_rate": 5e-4,
            "num_train_epochs": 2,
            "warmup_steps": None,
            "pooling": "cls",
        },
        "versions": VERSIONS,
        **extra,
    }
    results.update(overrides)
    return results


def front_matter(text: str) -> str:
    return REGEX_YAML_BLOCK.search(text).group(2)


def write_png(path: Path) -> None:
    """A valid 1x1 PNG without plotting libraries."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + chunk(b"IEND", b"")
    )


CASES = [
    # task, method, artifact, library_name, pipeline_tag, snippet fragment
    ("text-classification", "lora", "adapter", "peft", "text-classification", "AutoPeftModelForSequenceClassification.from_pretrained("),
    ("text-classification", "qlora", "adapter", "peft", "text-classification", "AutoPeftModelForSequenceClassification.from_pretrained("),
    ("text-classification", "full", "full", "transformers", "text-classification", "AutoModelForSequenceClassification.from_pretrained(repo)"),
    ("text-classification", "freeze", "full", "transformers", "text-classification", "AutoModelForSequenceClassification.from_pretrained(repo)"),
    ("text-classification", "bitfit", "bitfit", "transformers", "text-classification", "from hftune.methods import load_bitfit"),
    ("text-classification", "features", "features", "transformers", "text-classification", "load_feature_classifier"),
    ("jsl-seq2seq", "scratch", "remote-code", "transformers", "text2text-generation", "AutoModelForSeq2SeqLM.from_pretrained(repo, trust_remote_code=True)"),
    ("instruction-tuning", "lora", "adapter", "peft", "text-generation", "AutoPeftModelForCausalLM.from_pretrained(repo)"),
]  # fmt: skip


@pytest.mark.parametrize(("task", "method", "artifact", "library", "pipeline_tag", "snippet"), CASES)
def test_card_per_task_and_artifact(tmp_path, task, method, artifact, library, pipeline_tag, snippet):
    results = sample_results(task, method, artifact)
    card_path = write_model_card(tmp_path, results)
    text = card_path.read_text(encoding="utf-8")
    metadata = metadata_load(card_path)

    assert metadata["library_name"] == library
    assert metadata["pipeline_tag"] == pipeline_tag
    assert metadata["license"] == "apache-2.0"
    assert "hftune" in metadata["tags"] and method in metadata["tags"]
    assert not any(token in front_matter(text) for token in ("null", "None", "~"))
    validate_card(card_path)

    rows = read_model_index(card_path)
    quality = {k: v for k, v in results["metrics"].items() if k not in ("runtime", "samples_per_second")}
    assert {row["metric_type"]: row["metric_value"] for row in rows} == quality
    assert {row["task_type"] for row in rows} == {pipeline_tag}
    assert {row["dataset_split"] for row in rows} == {"validation"}

    assert snippet in text
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    compile(code, "snippet", "exec")  # the copy-paste snippet is valid Python
    assert f'repo = "{PLACEHOLDER_REPO_ID}"' in code
    for section in ("## Intended use and limitations", "### Hyper-parameters", "### Framework versions"):
        assert section in text
    assert "transformers 5.23.0" in text and "bf16" in text and "150,000 / 22,700,000" in text
    assert "| `learning_rate` | 0.0005 |" in text and "warmup_steps" not in text


def test_jsl_card_metadata_and_limitations(tmp_path):
    card = build_model_card(sample_results("jsl-seq2seq", "scratch", "remote-code"), tmp_path)
    data = card.data.to_dict()
    assert data["language"] == ["ja", "jsl"]
    assert {"jsl", "japanese-sign-language", "custom_code"} <= set(data["tags"])
    assert "base_model" not in data and "datasets" not in data  # trained from scratch on local data
    metrics = {m["type"]: m for m in data["model-index"][0]["results"][0]["metrics"]}
    # Custom metrics outside transformers' whitelist survive, with readable names.
    assert metrics["gloss_wer"]["value"] == 0.081 and metrics["gloss_wer"]["name"] == "Gloss WER"
    assert metrics["exact_match"]["value"] == 0.71
    assert "not a certified interpreter" in card.text and "synthetic corpus" in card.text
    assert "medical" in card.text and "legal" in card.text


def test_repo_id_license_images_and_local_paths(tmp_path, minilm_path):
    write_png(tmp_path / "training_curves.png")
    write_png(tmp_path / "confusion_matrix.png")
    results = sample_results(
        "text-classification",
        "lora",
        "adapter",
        repo_id="acme/emotion-lora",
        license="mit",
        base_model=minilm_path,
        dataset=str(tmp_path / "emotion"),
    )
    card = build_model_card(results, tmp_path)
    data = card.data.to_dict()
    assert data["license"] == "mit"
    assert data["model-index"][0]["name"] == "emotion-lora"
    # The embedded MiniLM folder is published under its Hub id; a local dataset folder is not a Hub dataset.
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "datasets" not in data
    assert data["model-index"][0]["results"][0]["dataset"]["type"] == "emotion"
    assert 'repo = "acme/emotion-lora"' in card.text and PLACEHOLDER_REPO_ID not in card.text
    assert "![Training curves](training_curves.png)" in card.text
    assert "![Validation confusion matrix](confusion_matrix.png)" in card.text
    assert str(tmp_path) not in card.content and minilm_path not in card.content

    no_images = build_model_card(results, tmp_path / "elsewhere")
    assert "![" not in no_images.text


def test_write_model_card_reads_results_json(tmp_path):
    results = sample_results("jsl-seq2seq", "scratch", "remote-code")
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    card_path = write_model_card(tmp_path)
    assert card_path == tmp_path / "README.md"
    assert {row["metric_type"] for row in read_model_index(card_path)} >= {"gloss_wer", "bleu", "chrf"}
    with pytest.raises(HftuneError, match="results.json not found"):
        write_model_card(tmp_path / "missing")


def test_bad_results_are_user_errors(tmp_path):
    with pytest.raises(HftuneError, match="task='translation'"):
        build_model_card({**sample_results("text-classification", "lora", "adapter"), "task": "translation"})
    with pytest.raises(HftuneError, match="no finite number"):
        build_model_card(
            sample_results("text-classification", "lora", "adapter", metrics={"accuracy": float("nan")})
        )
    # A NaN among good metrics is left out rather than written as .nan.
    card = build_model_card(
        sample_results(
            "text-classification", "lora", "adapter", metrics={"accuracy": 0.9, "f1_macro": float("nan")}
        )
    )
    assert [m["type"] for m in card.data.to_dict()["model-index"][0]["results"][0]["metrics"]] == ["accuracy"]


BROKEN_CARDS = {
    "yaml": ("---\nlicense: [apache-2.0\n---\n# x\n", "does not parse"),
    "missing": ("---\nlicense: apache-2.0\n---\n# x\n", "lacks library_name"),
    "trainer-noise": (None, "split is empty/null"),
    "value": (None, "'accuracy' value 'n/a' is not a finite number"),
    "no-dataset": (None, "model-index does not parse"),
}


@pytest.mark.parametrize("kind", list(BROKEN_CARDS))
def test_validate_card_rejects_broken_cards_naming_the_path(tmp_path, kind):
    text, problem = BROKEN_CARDS[kind]
    card_path = tmp_path / "run" / "README.md"
    if text is None:
        good = write_model_card(tmp_path / "run", sample_results("text-classification", "full", "full"))
        metadata = metadata_load(good)
        result = metadata["model-index"][0]["results"][0]
        if kind == "trainer-noise":
            result["dataset"]["split"] = "None"  # what Trainer.create_model_card writes (transformers#28137)
        elif kind == "value":
            result["metrics"][0]["value"] = "n/a"
        else:
            del result["dataset"]
        text = f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n# body\n"
    card_path.parent.mkdir(parents=True, exist_ok=True)
    card_path.write_text(text, encoding="utf-8")
    with pytest.raises(HftuneError) as err:
        validate_card(card_path)
    assert str(card_path) in str(err.value) and problem in str(err.value)


def test_validate_card_missing_file_and_front_matter(tmp_path):
    with pytest.raises(HftuneError, match="not found"):
        validate_card(tmp_path / "README.md")
    (tmp_path / "README.md").write_text("# just a title\n")
    with pytest.raises(HftuneError, match="no YAML front matter"):
        validate_card(tmp_path / "README.md")


def test_append_eval_result_round_trips(tmp_path):
    card_path = write_model_card(tmp_path, sample_results("jsl-seq2seq", "scratch", "remote-code"))
    body_before = ModelCard.load(card_path).text
    rows = append_eval_result(
        card_path, {"gloss_wer": 0.12, "exact_match": 0.64}, dataset="hftune-jsl-corpus", split="test"
    )
    test_rows = {r["metric_type"]: r for r in rows if r["dataset_split"] == "test"}
    assert {name: r["metric_value"] for name, r in test_rows.items()} == {
        "gloss_wer": 0.12,
        "exact_match": 0.64,
    }
    assert test_rows["gloss_wer"]["task_type"] == "text2text-generation"  # inherited from the card
    assert len([r for r in rows if r["dataset_split"] == "validation"]) == 5  # untouched

    # Same task/dataset/split/metric: updated in place, not duplicated; a new dataset gets its own entry.
    rows = append_eval_result(
        card_path, {"gloss_wer": 0.10}, dataset="acme/jsl-news", split="test", task="jsl-seq2seq"
    )
    rows = append_eval_result(card_path, {"gloss_wer": 0.11}, dataset="hftune-jsl-corpus", split="test")
    keys = [(r["dataset_type"], r["dataset_split"], r["metric_type"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8
    values = {(r["dataset_type"], r["dataset_split"], r["metric_type"]): r["metric_value"] for r in rows}
    assert values[("hftune-jsl-corpus", "test", "gloss_wer")] == 0.11
    assert values[("acme/jsl-news", "test", "gloss_wer")] == 0.10

    validate_card(card_path)
    assert ModelCard.load(card_path).text == body_before
    assert "null" not in front_matter(card_path.read_text(encoding="utf-8"))
    with pytest.raises(HftuneError, match="'bleu'=None"):
        append_eval_result(card_path, {"bleu": None}, dataset="hftune-jsl-corpus", split="test")


def test_append_eval_result_to_card_without_model_index(tmp_path):
    card_path = tmp_path / "my-model" / "README.md"
    card_path.parent.mkdir()
    card_path.write_text(
        "---\nlicense: apache-2.0\nlibrary_name: transformers\npipeline_tag: text-classification\n"
        "tags:\n- hftune\n---\n# My model\n",
        encoding="utf-8",
    )
    assert read_model_index(card_path) == []
    rows = append_eval_result(card_path, {"accuracy": 0.9}, dataset="dair-ai/emotion", split="test")
    assert rows == [
        {
            "model_name": "my-model",
            "task_type": "text-classification",
            "task_name": "Text Classification",
            "dataset_type": "dair-ai/emotion",
            "dataset_name": "dair-ai/emotion",
            "dataset_config": None,
            "dataset_split": "test",
            "metric_type": "accuracy",
            "metric_name": "Accuracy",
            "metric_value": 0.9,
        }
    ]


def test_read_model_index_from_text(tmp_path):
    card_path = write_model_card(tmp_path, sample_results("instruction-tuning", "lora", "adapter"))
    text = card_path.read_text(encoding="utf-8")
    assert read_model_index(text) == read_model_index(card_path)
    assert {r["metric_type"] for r in read_model_index(text)} == {"loss", "perplexity", "exact_match"}
    with pytest.raises(HftuneError, match="does not parse"):
        read_model_index("---\nmodel-index: [\n---\n")


def _snippet(card: ModelCard) -> str:
    return card.text.split("```python\n", 1)[1].split("```", 1)[0]


def test_loading_snippets_run_against_saved_models(tmp_path, minilm_path, capsys):
    """The copy-paste code of the adapter and full cards loads a real saved MiniLM classifier.

    (The BitFit and features snippets need a Hub repo: their loaders are tested on real run folders in
    test_recipes_methods.py.)
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = ["sadness", "joy", "love"]  # not 2: a head of the default size would hide a missing num_labels
    id2label = dict(enumerate(labels))
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    full_dir, adapter_dir = tmp_path / "full", tmp_path / "adapter"
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    model.save_pretrained(full_dir)
    tokenizer.save_pretrained(full_dir)
    lora = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    lora.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)

    for artifact, folder in (("full", full_dir), ("adapter", adapter_dir)):
        results = sample_results("text-classification", "lora", artifact, repo_id=str(folder), labels=labels)
        namespace: dict = {}
        exec(_snippet(build_model_card(results)), namespace)  # noqa: S102 - the card's own snippet
        assert capsys.readouterr().out.strip() in labels
