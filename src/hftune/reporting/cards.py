"""Model cards the Hub renders: YAML metadata with a model-index of every metric, and a readable body.

Cards are built from a run's `results.json` with huggingface_hub's `ModelCard.from_template` and the Jinja
templates in `hub_cards/`. We do not use `Trainer.create_model_card`: it writes `null`/`None` noise the Hub
rejects (transformers#28137) and drops metrics outside its whitelist (gloss_wer, exact_match, ...).
Everything here works offline; `ModelCard.validate()` would need the Hub, so `validate_card` checks the
metadata locally against the schema huggingface_hub itself parses.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import HFValidationError, validate_repo_id

from hftune.data.prompts import JSL_INSTRUCTION, render_alpaca_prompt, user_text
from hftune.errors import HftuneError
from hftune.methods import METHODS
from hftune.models import EMBEDDED_ENCODER_HUB_ID, embedded_encoder_path
from hftune.results import RESULTS_FILE, RunRecord, read_results
from hftune.runtime import resource_dir

logger = logging.getLogger(__name__)

PLACEHOLDER_REPO_ID = "YOUR_ORG/RUN_NAME"
REQUIRED_METADATA_KEYS: tuple[str, ...] = ("license", "library_name", "pipeline_tag", "tags", "model-index")

# hftune task -> (template file, Hub pipeline tag / model-index task type, pretty task name)
_TASKS: dict[str, tuple[str, str, str]] = {
    "text-classification": ("text_classification.md", "text-classification", "Text Classification"),
    "jsl-seq2seq": ("jsl_seq2seq.md", "text2text-generation", "Japanese to JSL gloss translation"),
    "instruction-tuning": ("instruction_tuning.md", "text-generation", "Text Generation"),
}
_ARTIFACTS = ("adapter", "full", "bitfit", "features", "remote-code")

# Methods without a registry entry: the JSL model trains from scratch.
_UNREGISTERED_METHOD_SUMMARIES = {
    "scratch": "model trained from scratch",
    "continued": "training continued from a saved JSL model",
}

# Trainer's throughput bookkeeping, not model quality: kept out of the model-index.
_NOT_QUALITY_METRICS = frozenset({"runtime", "samples_per_second", "steps_per_second", "epoch"})

_METRIC_NAMES = {
    "accuracy": "Accuracy",
    "f1_macro": "Macro F1",
    "gloss_wer": "Gloss WER",
    "bleu": "BLEU-4 (sacreBLEU, tok:none)",
    "chrf": "chrF",
    "exact_match": "Exact match",
    "loss": "Loss",
    "perplexity": "Perplexity",
}


_IMAGE_CAPTIONS = {
    "training_curves.png": "Training curves",
    "confusion_matrix.png": "Validation confusion matrix",
}


def _pretty_metric_name(name: str) -> str:
    if name in _METRIC_NAMES:
        return _METRIC_NAMES[name]
    if name.startswith("f1_"):
        return f"F1 ({name[3:]})"
    if name.startswith("bleu_") and name[5:].isdigit():
        return f"BLEU {name[5:]}-gram precision"
    return name.replace("_", " ").capitalize()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(item) for item in value)
    return str(value)


def _as_repo_id(name: str | None) -> str | None:
    """`name` if it reads as a Hub repo id rather than a local path, else None."""
    if not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _hub_base_model(base_model: str | None) -> str | None:
    if not base_model:
        return None
    if Path(base_model).expanduser().resolve() == Path(embedded_encoder_path()).resolve():
        return EMBEDDED_ENCODER_HUB_ID
    return _as_repo_id(base_model)


def _dataset_identity(dataset: str) -> tuple[str, str | None]:
    """(model-index dataset type, Hub dataset id or None for local data)."""
    hub_id = _as_repo_id(dataset)
    # New Hub datasets always have a namespace; a bare name is more likely a local corpus name.
    if hub_id and "/" in hub_id:
        return hub_id, hub_id
    return Path(dataset).expanduser().name or dataset, None


def _hub_task(task: str) -> tuple[str, str]:
    """(Hub task type, pretty name) for an hftune task name or a Hub task type."""
    if task in _TASKS:
        return _TASKS[task][1], _TASKS[task][2]
    for _, hub_type, pretty in _TASKS.values():
        if task == hub_type:
            return hub_type, pretty
    return task, task.replace("-", " ").capitalize()


def _require(record: RunRecord, key: str, allowed: tuple[str, ...] | None = None) -> Any:
    value = getattr(record, key)
    if value is None or value == "":
        raise HftuneError(f"results.json has no {key!r}; the recipe must record it before writing the card")
    if allowed is not None and value not in allowed:
        raise HftuneError(f"results.json {key}={value!r} is not one of {', '.join(allowed)}")
    return value


def _recorded_evaluation_results(
    results: RunRecord, pipeline_tag: str, task_name: str, main_split: str
) -> list[EvalResult]:
    """Model-index rows for results.json `evaluations` on other splits (e.g. the JSL recipe's `natural` split),
    so a card rebuilt from results.json keeps them."""
    rows: list[EvalResult] = []
    for evaluation in results.evaluations or []:
        dataset, split = str(evaluation.get("dataset") or ""), evaluation.get("split")
        if not dataset or not split or (dataset == results.dataset and split == main_split):
            continue
        dataset_type, _ = _dataset_identity(dataset)
        rows += _eval_results(
            evaluation.get("metrics") or {}, pipeline_tag, task_name, dataset_type, dataset_type, str(split)
        )
    return rows


def _eval_results(
    metrics: Mapping[str, Any],
    task_type: str,
    task_name: str,
    dataset_type: str,
    dataset_name: str,
    split: str,
) -> list[EvalResult]:
    eval_results = []
    for name, value in metrics.items():
        if name in _NOT_QUALITY_METRICS:
            continue
        if not _is_number(value):
            logger.warning("metric %r=%r is not a finite number: left out of the model card", name, value)
            continue
        eval_results.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type=name,
                metric_name=_pretty_metric_name(name),
                metric_value=float(value),
            )
        )
    return eval_results


def _loading_snippet(
    task: str, artifact: str, repo_id: str, hyperparameters: Mapping[str, Any], labels: list[str]
) -> str:
    """Copy-paste code that loads exactly what this artefact is."""
    if artifact == "remote-code":
        return f'''from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

repo = "{repo_id}"
tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained(repo, trust_remote_code=True)

inputs = tokenizer(["ありがとう", "わたしはたべます"], return_tensors="pt", padding=True)
outputs = model.generate(**inputs, num_beams=4, max_new_tokens=32)
print(tokenizer.batch_decode(outputs, skip_special_tokens=True))'''
    if task == "instruction-tuning":
        auto_class = "AutoPeftModelForCausalLM" if artifact == "adapter" else "AutoModelForCausalLM"
        # The prompt the model was trained on (rendered by the recipe's own code): Alpaca or chat template.
        example = {"instruction": JSL_INSTRUCTION, "input": "ありがとう"}
        if hyperparameters.get("prompt_format", "alpaca") == "chat":
            prompt = f"""messages = [{{"role": "user", "content": {user_text(example)!r}}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)"""
        else:
            prompt = f"""prompt = {render_alpaca_prompt(JSL_INSTRUCTION, "ありがとう")!r}
inputs = tokenizer(prompt, return_tensors="pt")"""
        module = "peft" if artifact == "adapter" else "transformers"
        return f'''from {module} import {auto_class}
from transformers import AutoTokenizer

repo = "{repo_id}"
tokenizer = AutoTokenizer.from_pretrained(repo)
model = {auto_class}.from_pretrained(repo)

{prompt}
outputs = model.generate(**inputs, max_new_tokens=64)
print(tokenizer.decode(outputs[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))'''
    classify = """inputs = tokenizer("I can't wait to see them again!", return_tensors="pt")
label_id = model(**inputs).logits.argmax(-1).item()
print(model.config.id2label[label_id])"""
    if artifact == "adapter":
        if not labels:
            return f'''from peft import AutoPeftModelForSequenceClassification

model = AutoPeftModelForSequenceClassification.from_pretrained("{repo_id}")  # base model + adapter'''
        # The base model's config does not know this task's labels: without them peft builds a 2-class head
        # and loading a head of another size fails (size mismatch).
        return f'''from peft import AutoPeftModelForSequenceClassification
from transformers import AutoTokenizer

repo = "{repo_id}"
id2label = {dict(enumerate(labels))!r}
tokenizer = AutoTokenizer.from_pretrained(repo)
model = AutoPeftModelForSequenceClassification.from_pretrained(  # base model + adapter
    repo, id2label=id2label, label2id={{label: i for i, label in id2label.items()}}
)

{classify}'''
    if artifact == "bitfit":
        return f'''from huggingface_hub import snapshot_download
from hftune.methods import load_bitfit  # pip install hftune
from transformers import AutoTokenizer

repo = "{repo_id}"
tokenizer = AutoTokenizer.from_pretrained(repo)
model = load_bitfit(snapshot_download(repo))  # the base model with this repo's trained biases and head

{classify}'''
    if artifact == "features":
        pooling = hyperparameters.get("pooling", "mean")
        return f'''from huggingface_hub import snapshot_download
from hftune.methods.features import load_feature_classifier  # pip install hftune

# The base encoder stays frozen; this repo holds the {pooling}-pooled logistic-regression head (safetensors).
repo = "{repo_id}"
classifier = load_feature_classifier(snapshot_download(repo))
print(classifier.predict(["I can't wait to see them again!"]))'''
    return f'''from transformers import AutoModelForSequenceClassification, AutoTokenizer

repo = "{repo_id}"
tokenizer = AutoTokenizer.from_pretrained(repo)
model = AutoModelForSequenceClassification.from_pretrained(repo)

{classify}'''


def _rows(mapping: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    return [(str(key), _format_value(value)) for key, value in (mapping or {}).items() if value is not None]


def _efficiency_rows(record: RunRecord) -> list[tuple[str, str]]:
    rows = []
    trainable, total = record.trainable_params, record.total_params
    if _is_number(trainable) and _is_number(total):
        ratio = record.trainable_ratio or (trainable / total if total else 0.0)
        rows.append(("Trainable / total parameters", f"{int(trainable):,} / {int(total):,} ({ratio:.2%})"))
    runtime = record.train_runtime_s
    if _is_number(runtime):
        rows.append(("Training time", f"{runtime:.1f} s ({runtime / 60:.1f} min)"))
    throughput = record.train_samples_per_second
    if _is_number(throughput):
        rows.append(("Training throughput", f"{throughput:.2f} samples/s"))
    memory = record.peak_memory_mb
    if _is_number(memory):
        rows.append(("Peak memory", f"{memory:,.0f} MB"))
    return rows


def _images(run_dir: Path | None) -> list[tuple[str, str]]:
    if run_dir is None or not run_dir.is_dir():
        return []
    images = []
    for path in sorted(run_dir.glob("*.png")):
        caption = _IMAGE_CAPTIONS.get(path.name, path.stem.replace("_", " ").capitalize())
        images.append((caption, path.name))
    return images


def _onnx_files(onnx_dir: Path | None) -> list[tuple[str, float]]:
    """(file name, MB) of the ONNX graphs `hftune export onnx` wrote; the card shows its browser section then."""
    if onnx_dir is None or not onnx_dir.is_dir():
        return []
    return [(path.name, path.stat().st_size / 1e6) for path in sorted(onnx_dir.glob("*.onnx"))]


def build_model_card(
    record: RunRecord | Mapping[str, Any], run_dir: Path | None = None, onnx_dir: Path | None = None
) -> ModelCard:
    """The model card for a run, from its record; `run_dir` supplies result PNGs to link and the ONNX export
    (`run_dir/onnx`, or `onnx_dir` while an export is still staged).

    The card is titled after the repo id once published, else the run's folder name (`record.run_name`).
    """
    results = record if isinstance(record, RunRecord) else RunRecord.from_dict(dict(record))
    task = _require(results, "task", tuple(_TASKS))
    artifact = _require(results, "artifact", _ARTIFACTS)
    method = _require(results, "method")
    dataset = _require(results, "dataset")
    split = results.eval_split or "validation"
    run_dir = Path(run_dir) if run_dir is not None else None
    template_name, pipeline_tag, task_name = _TASKS[task]

    repo_id = results.repo_id or PLACEHOLDER_REPO_ID
    model_name = repo_id.split("/")[-1] if results.repo_id else results.run_name
    # Folders saved before run_name existed: their own folder name (never a staging folder's: save_run sets it)
    model_name = model_name or (run_dir.name if run_dir is not None else f"hftune-{task}-{method}")
    dataset_type, dataset_hub_id = _dataset_identity(str(dataset))
    dataset_name = results.dataset_name or dataset_type

    language = list(results.language or [])
    tags = ["hftune", task, method]
    if task == "jsl-seq2seq":
        # ISO 639-3 "jsl" is Japanese Sign Language: the output side of this model.
        language += [] if "jsl" in language else ["jsl"]
        tags += ["jsl", "japanese-sign-language", "sign-language", "gloss"]
    if artifact == "remote-code":
        tags.append("custom_code")
    if artifact == "adapter":
        tags.append("peft")

    eval_results = _eval_results(
        results.metrics or {}, pipeline_tag, task_name, dataset_type, dataset_name, split
    ) + _recorded_evaluation_results(results, pipeline_tag, task_name, split)
    if not eval_results:
        raise HftuneError(
            f"results.json metrics {dict(results.metrics or {})!r} hold no finite number; "
            "evaluate the model before writing its card"
        )
    base_model = results.base_model
    base_model_id = _hub_base_model(base_model)
    card_data = ModelCardData(
        base_model=base_model_id,
        datasets=[dataset_hub_id] if dataset_hub_id else None,
        language=language or None,
        license=results.license or "apache-2.0",
        library_name="peft" if artifact == "adapter" else "transformers",
        pipeline_tag=pipeline_tag,
        tags=tags,
        metrics=[result.metric_type for result in eval_results],
        model_name=model_name,
        eval_results=eval_results,
    )
    hyperparameters = results.hyperparameters or {}
    labels = [str(label) for label in results.labels or []]
    template_path = resource_dir("hub_cards") / template_name
    if not template_path.is_file():
        raise HftuneError(f"model-card template {template_path} is missing; reinstall hftune")
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_title=model_name,
        method=method,
        artifact=artifact,
        method_summary=(
            METHODS[method].summary
            if method in METHODS
            else _UNREGISTERED_METHOD_SUMMARIES.get(method, method)
        ),
        # Local paths are shown by folder name only: they mean nothing elsewhere and may reveal user names.
        base_model_display=base_model_id or (f"{Path(base_model).name} (local)" if base_model else "none"),
        dataset_display=dataset_hub_id or f"{dataset_type} (local)",
        eval_split=split,
        metric_rows=[(r.metric_name, r.metric_type, _format_value(r.metric_value)) for r in eval_results],
        labels=labels,
        hyperparameter_rows=_rows(hyperparameters),
        device=results.device or "unknown",
        precision=results.precision or "unknown",
        world_size=results.world_size or 1,
        seed=results.seed,
        efficiency_rows=_efficiency_rows(results),
        version_rows=_rows(results.versions),
        images=_images(run_dir),
        loading_snippet=_loading_snippet(task, artifact, repo_id, hyperparameters, labels),
        repo_id=repo_id,
        onnx_files=_onnx_files(onnx_dir or (run_dir / "onnx" if run_dir is not None else None)),
        continued_from=_continued_from(results, base_model_id),
    )


def _continued_from(results: RunRecord, base_model_id: str | None) -> dict[str, Any] | None:
    """A continued JSL model's parent (by repo id, or by folder name when local), the parent's vocabulary hash,
    and what continuing gained and lost (exact match before/after), for the card's "Continued from" section."""
    if results.method != "continued" or not results.base_model:
        return None
    scores = results.continuation_scores or {}
    return {
        "name": base_model_id or f"{Path(results.base_model).name} (local)",
        "revision": results.base_model_revision,
        "vocab_hash": results.base_model_vocab_hash,
        "added": len(results.vocabulary_added or []),
        "score_rows": [
            (
                name,
                _format_value(pair["before"].get("exact_match")),
                _format_value(pair["after"].get("exact_match")),
            )
            for name, pair in scores.items()
        ],
    }


def write_model_card(run_dir: Path | str, results: RunRecord | Mapping[str, Any] | None = None) -> Path:
    """Validate and write `run_dir/README.md`; `results` defaults to `run_dir/results.json`."""
    run_dir = Path(run_dir)
    if results is None:
        if not (run_dir / RESULTS_FILE).is_file():
            raise HftuneError(f"{run_dir / RESULTS_FILE} not found; pass the run folder a recipe wrote")
        results = read_results(run_dir)
    card = build_model_card(results, run_dir)
    card_path = run_dir / "README.md"
    validate_card(card, source=str(card_path))
    card.save(card_path)
    return card_path


def _find_nulls(value: Any, where: str) -> str | None:
    if value is None or (isinstance(value, str) and value.strip() in ("None", "null", "")):
        return where
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _find_nulls(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_nulls(item, f"{where}[{index}]")
            if found:
                return found
    return None


def _load_metadata(path_or_card: str | Path | ModelCard) -> tuple[dict, str]:
    if isinstance(path_or_card, ModelCard):
        return yaml.safe_load(path_or_card.data.to_yaml()) or {}, "<in-memory card>"
    path = Path(path_or_card)
    if not path.is_file():
        raise HftuneError(
            f"model card {path} not found; write it with hftune.reporting.cards.write_model_card"
        )
    match = REGEX_YAML_BLOCK.search(path.read_text(encoding="utf-8-sig"))
    if match is None:
        raise HftuneError(f"model card {path} has no YAML front matter (--- block at the top); regenerate it")
    try:
        metadata = yaml.safe_load(match.group(2))
    except yaml.YAMLError as err:
        problem = str(err).replace("\n", " ")
        raise HftuneError(
            f"model card {path}: YAML front matter does not parse ({problem}); fix the YAML"
        ) from None
    if not isinstance(metadata, dict):
        raise HftuneError(
            f"model card {path}: YAML front matter is a {type(metadata).__name__}, not a mapping"
        )
    return metadata, str(path)


def validate_card(path_or_card: str | Path | ModelCard, source: str | None = None) -> None:
    """Check a card's metadata offline; raise HftuneError naming the card and the problem.

    The YAML parses, the required keys are set, nothing is null/None, and the model-index converts back with
    huggingface_hub's own parser, each result having a task type, dataset type and name, metric type and a
    finite numeric value. `source` names an in-memory card in messages.
    """
    metadata, where = _load_metadata(path_or_card)
    where = source or where
    fix = "regenerate it with hftune.reporting.cards.write_model_card or fix the YAML"
    missing = [key for key in REQUIRED_METADATA_KEYS if key not in metadata]
    if missing:
        raise HftuneError(f"model card {where}: metadata lacks {', '.join(missing)}; {fix}")
    null_at = _find_nulls(metadata, "")
    if null_at:
        raise HftuneError(f"model card {where}: metadata {null_at} is empty/null (the Hub rejects it); {fix}")
    try:
        _, eval_results = model_index_to_eval_results(metadata["model-index"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise HftuneError(
            f"model card {where}: model-index does not parse ({type(err).__name__}: {err}); {fix}"
        ) from None
    for result in eval_results:
        label = f"model-index metric {result.metric_type!r}"
        for field in ("task_type", "dataset_type", "dataset_name", "metric_type"):
            if not isinstance(getattr(result, field), str) or not getattr(result, field):
                raise HftuneError(f"model card {where}: {label} has no {field}; {fix}")
        if not _is_number(result.metric_value):
            raise HftuneError(
                f"model card {where}: {label} value {result.metric_value!r} is not a finite number; {fix}"
            )


def append_eval_result(
    card_path: str | Path,
    metrics: Mapping[str, float],
    dataset: str,
    split: str,
    task: str | None = None,
    dataset_name: str | None = None,
) -> list[dict[str, Any]]:
    """Add (or update in place) results in a card's model-index, re-validate, and return `read_model_index`.

    `task` is an hftune task or Hub task type; by default the card's existing task type or its pipeline_tag.
    A result with the same task, dataset, split and metric is overwritten, not duplicated.
    """
    card_path = Path(card_path)
    if not card_path.is_file():
        raise HftuneError(f"model card {card_path} not found; write the card before appending results")
    try:
        card = ModelCard.load(card_path)
    except (ValueError, yaml.YAMLError) as err:
        raise HftuneError(
            f"model card {card_path}: metadata does not parse ({err}); regenerate the card"
        ) from None
    existing = list(card.data.eval_results or [])
    if task is None:
        task = existing[0].task_type if existing else card.data.pipeline_tag
        if not task:
            raise HftuneError(f"model card {card_path} has no task type or pipeline_tag; pass task=...")
    task_type, task_name = _hub_task(task)
    dataset_type, _ = _dataset_identity(dataset)
    for name, value in metrics.items():
        if not _is_number(value):
            raise HftuneError(f"metric {name!r}={value!r} for {card_path} is not a finite number")
        match = next(
            (
                r
                for r in existing
                if (r.task_type, r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type)
                == (task_type, dataset_type, None, split, name)
            ),
            None,
        )
        if match is not None:
            match.metric_value = float(value)
            continue
        existing.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=dataset_type,
                dataset_name=dataset_name or dataset_type,
                dataset_split=split,
                metric_type=name,
                metric_name=_pretty_metric_name(name),
                metric_value=float(value),
            )
        )
    card.data.eval_results = existing
    card.data.model_name = card.data.model_name or card_path.parent.name
    card.save(card_path)
    validate_card(card_path)
    return read_model_index(card_path)


def read_model_index(card_path_or_text: str | Path) -> list[dict[str, Any]]:
    """Flat rows (model_name, task/dataset/metric fields, metric_value) of a card's model-index; [] if none."""
    if isinstance(card_path_or_text, str) and REGEX_YAML_BLOCK.search(card_path_or_text):
        match = REGEX_YAML_BLOCK.search(card_path_or_text)
        where = "<card text>"
        try:
            metadata = yaml.safe_load(match.group(2)) or {}
        except yaml.YAMLError as err:
            raise HftuneError(f"model card text: YAML front matter does not parse ({err})") from None
    else:
        metadata, where = _load_metadata(card_path_or_text)
    if not metadata.get("model-index"):
        return []
    try:
        model_name, eval_results = model_index_to_eval_results(metadata["model-index"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise HftuneError(
            f"model card {where}: model-index does not parse ({type(err).__name__}: {err})"
        ) from None
    fields = (
        "task_type",
        "task_name",
        "dataset_type",
        "dataset_name",
        "dataset_config",
        "dataset_split",
        "metric_type",
        "metric_name",
        "metric_value",
    )
    return [
        {"model_name": model_name, **{field: getattr(r, field) for field in fields}} for r in eval_results
    ]
