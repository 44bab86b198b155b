"""`hftune evaluate`: score a saved run (local folder or Hub repo) on a dataset with the shipped metric modules.

The model is loaded by its artefact type (peft adapter, full model, BitFit tensors, feature classifier, JSL
remote-code model), scored offline with `hftune.metrics`, and the result is recorded twice: in the model
card's model-index (what the Hub shows) and in `results.json["evaluations"]` (what `hftune leaderboard`
shows). A local run is updated in place; a Hub repo's card and results go to `--output_dir`, since files in
the HF cache are shared, read-only snapshots.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from hftune.config import DataArguments
from hftune.config.checks import check_encoding, check_file, check_range, check_writable_folder, label_name
from hftune.data.classification import (
    EMBEDDED_DATASETS,
    LABEL_COLUMN_CANDIDATES,
    TEXT_COLUMN_CANDIDATES,
    load_classification_data,
    pick_column,
    read_data_file,
)
from hftune.errors import HftuneError
from hftune.hardware import resolve_device
from hftune.hub import download_run
from hftune.jsl.artifacts import load_jsl_model
from hftune.jsl.corpus import load_gloss_pairs, load_jsl_corpus
from hftune.methods import ARTIFACTS
from hftune.methods.registry import artifact_of_folder
from hftune.metrics import classification_metrics, gloss_metrics
from hftune.models import load_classifier, local_copy_of
from hftune.persistence import verify_weights
from hftune.reporting.cards import append_eval_result
from hftune.results import RESULTS_FILE, RunRecord, read_results, write_results
from hftune.runtime import cpu_threads_per_process, fail_fast_when_hub_unreachable

JSL_CORPUS_NAME = "jsl_corpus"
ARTIFACT_TASKS = {"remote-code": "jsl-seq2seq"}  # every other artefact is a text classifier


@dataclass
class Evaluation:
    """One scored (model, dataset, split): what `record_evaluation` writes."""

    metrics: dict[str, float]
    dataset: str
    split: str
    num_examples: int
    extra: dict[str, Any] = field(default_factory=dict)

    def entry(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "num_examples": self.num_examples,
            "metrics": self.metrics,
            **self.extra,
            "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


# --- the run ----------------------------------------------------------------------------------------------


def resolve_run(run_or_repo: str, revision: str | None = None) -> tuple[Path, str | None]:
    """(local folder, repo id or None): a run folder as is, otherwise a Hub repo downloaded (or cached)."""
    path = Path(run_or_repo).expanduser()
    if path.is_dir():
        return path, None
    if path.exists():
        raise HftuneError(
            f"{run_or_repo} is a file; pass a run folder (the recipe's --output_dir) or a Hub repo id"
        )
    try:
        return download_run(run_or_repo, revision), run_or_repo
    except HftuneError as err:
        raise HftuneError(f"{run_or_repo} is not a local run folder, and as a Hub repo: {err}") from None


def infer_artifact(folder: Path) -> str:
    """The artefact type of a folder saved without hftune's results.json (e.g. someone else's Hub model)."""
    artifact = artifact_of_folder(folder)
    if artifact == "full" and json.loads((folder / "config.json").read_text(encoding="utf-8")).get(
        "auto_map"
    ):
        return "remote-code"
    if artifact is None:
        raise HftuneError(
            f"{folder} holds no results.json, adapter_config.json or config.json; pass the folder a recipe saved"
        )
    return artifact


def run_record(folder: Path) -> RunRecord:
    """results.json of the run, or the minimum inferred from the files when a repo was not made by hftune."""
    if (folder / RESULTS_FILE).is_file():
        return read_results(folder)
    artifact = infer_artifact(folder)
    task = ARTIFACT_TASKS.get(artifact, "text-classification")
    return RunRecord(task=task, method="unknown", artifact=artifact, dataset="unknown", metrics={})


# --- loading the classifier -------------------------------------------------------------------------------


def load_saved_classifier(folder: Path, record: RunRecord) -> tuple[Any, Any, list[str]]:
    """(model, tokenizer, label names) of a saved classifier run, loaded by its artefact's registered loader.

    `model` is a torch module returning logits, or (features artefact) a `FeatureClassifier` whose
    `predict(texts)` returns label ids.
    """
    from transformers import AutoTokenizer

    artifact = record.artifact or infer_artifact(folder)
    labels = [str(label) for label in record.labels or []]
    if artifact not in ARTIFACTS or ARTIFACTS[artifact].load is None:
        raise HftuneError(
            f"{folder}: artifact {artifact!r} is not a text classifier; evaluate "
            f"{', '.join(a for a in ARTIFACTS if ARTIFACTS[a].load)} runs here"
        )
    verify_weights(folder)  # a truncated or altered copy is refused by name before anything loads it
    try:
        model = ARTIFACTS[artifact].load(folder, labels)
        if artifact == "features":
            return model, model.tokenizer, list(model.labels)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except OSError as err:
        raise HftuneError(f"cannot load the model saved in {folder} ({str(err).splitlines()[0]})") from None
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "id2label", None):
        labels = [str(config.id2label[i]) for i in range(len(config.id2label))]
    if not labels:
        raise HftuneError(
            f"{folder}: no label names in results.json or config.json; cannot map dataset labels"
        )
    return model, tokenizer, labels


# --- data -------------------------------------------------------------------------------------------------


def _map_labels(values: list[Any], label_names: list[str], source: str, column: str) -> list[int]:
    """Dataset labels -> the model's ids, by name; an unknown name is an error naming it."""
    index = {name: i for i, name in enumerate(label_names)}
    # Missing and fractional labels are refused with their row, as in training (checks.label_name).
    keys = [label_name(value, f"{source} row {row + 1}", column) for row, value in enumerate(values)]
    unknown = sorted({key for key in keys if key not in index})
    if unknown:
        raise HftuneError(
            f"{source}: label(s) {unknown} are not among the model's labels {label_names}; evaluate on data "
            "with the same label names (or pick the right column with --label_column)"
        )
    return [index[key] for key in keys]


def load_classification_eval_data(
    args: argparse.Namespace, label_names: list[str], seed: int
) -> tuple[list[str], list[int], str]:
    """(texts, label ids in the model's order, dataset display name) of the split to score."""
    import datasets

    if args.validation_file:
        split = read_data_file(args.validation_file, args.delimiter, args.encoding)
        source = args.validation_file
    elif args.dataset_name in EMBEDDED_DATASETS:
        if args.split != "validation":
            raise HftuneError(
                f"embedded data set {args.dataset_name!r} has only the held-out validation split the recipes "
                f"make; got --split {args.split!r}"
            )
        # Rebuild the recipe's own stratified split with the run's seed, labels in the model's order.
        data_args = DataArguments(
            dataset_name=args.dataset_name, label_order=label_names, max_eval_samples=args.max_eval_samples
        )
        data = load_classification_data(data_args, seed=seed)
        validation = data.splits["validation"]
        return list(validation["text"]), list(validation["label"]), args.dataset_name
    elif args.dataset_name:
        fail_fast_when_hub_unreachable(args.dataset_name, kind="dataset")
        try:
            split = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split=args.split)
        except Exception as err:  # datasets raises many types for a missing id, split or file
            raise HftuneError(
                f"dataset {args.dataset_name!r} split {args.split!r} could not be loaded "
                f"({type(err).__name__}: {str(err)[:200]}); check --dataset_name and --split"
            ) from None
        source = f"{args.dataset_name} ({args.split} split)"
    else:
        raise HftuneError(
            "no evaluation data: pass --dataset_name (Hub id or movie_polarity) or --validation_file"
        )

    text_column = pick_column(split, args.text_column, TEXT_COLUMN_CANDIDATES, "text", "--text_column")
    label_column = pick_column(split, args.label_column, LABEL_COLUMN_CANDIDATES, "label", "--label_column")
    feature = split.features[label_column]
    values = split[label_column]
    if isinstance(feature, datasets.ClassLabel):
        values = [feature.int2str(v) if v is not None and v >= 0 else None for v in values]
    if not values:
        raise HftuneError(f"{source} has no rows to score; pass a non-empty split or file")
    labels = _map_labels(values, label_names, source, label_column)
    texts = [str(t) for t in split[text_column]]
    if args.max_eval_samples is not None and args.max_eval_samples < len(texts):
        # The recipes' subset: the same seeded permutation datasets' shuffle uses.
        order = datasets.Dataset.from_dict({"i": list(range(len(texts)))}).shuffle(seed=seed)
        keep = order["i"][: args.max_eval_samples]
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    return texts, labels, source


# --- scoring ----------------------------------------------------------------------------------------------


def _autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """Score under the precision the run evaluated with, so its recorded metrics are reproducible."""
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtypes[precision])


def predict_labels(
    model: Any, tokenizer: Any, texts: list[str], *, batch_size: int, max_length: int, precision: str
) -> np.ndarray:
    """Predicted label ids, in batches padded to their own longest text (as the recipes evaluate)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return np.asarray(model.predict(texts))
    device = resolve_device()
    model = model.to(device).eval()
    predictions = []
    with torch.no_grad(), _autocast(device, precision):
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            ).to(device)
            predictions.append(model(**batch).logits.float().argmax(-1).cpu().numpy())
    return np.concatenate(predictions)


# --- inference latency relative to the base model ----------------------------------------------------

LATENCY_BATCH_SIZES = (1, 32)
LATENCY_ROUNDS = 7  # median of 7 rounds; base, trained and merged models take turns within each round


def _merged_copy(folder: Path, record: RunRecord) -> Any | None:
    """The saved adapter loaded again and merged into its base weights, or None where it cannot be merged
    (prompt and prefix tuning, bottleneck adapters) or is no adapter."""
    if record.artifact != "adapter":
        return None
    model = ARTIFACTS["adapter"].load(folder, [str(label) for label in record.labels or []])
    try:
        _put_trained_copies_in_place(model)
        return model.merge_and_unload()
    except (AttributeError, ValueError):  # prompt learning has no merge; adapters refuse it (not linear)
        return None


def _put_trained_copies_in_place(model: Any) -> None:
    """Replace each `modules_to_save` wrapper (the trained head and pooler) by its trained copy, as unloading does.
    peft 0.21's IA3 unload assumes each copy has a `weight`, and BERT's pooler has none ("'BertPooler' object has
    no attribute 'weight'"): done first, the merge sees only the adapted layers."""
    from peft.utils.other import ModulesToSaveWrapper

    inner = model.get_base_model()
    for name, module in list(inner.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            setattr(inner.get_submodule(parent), child, module.modules_to_save[module.active_adapters[0]])


def measure_latency(
    folder: Path, record: RunRecord, model: Any, tokenizer: Any, texts: list[str], max_length: int
) -> dict[str, float]:
    """Forward-pass latency (ms per batch) at batch 1 and 32 of the trained model, its merged copy where the
    adapter merges, and the plain base model with a new head, plus each ratio to the base.

    Batch 1 is the mean over 32 single texts; every figure is the median of `LATENCY_ROUNDS` rounds, fp32, with
    the process's CPU thread share.
    """
    import torch

    torch.set_num_threads(cpu_threads_per_process())
    id2label = dict(enumerate(str(label) for label in record.labels or []))
    base = load_classifier(local_copy_of(record.base_model_path or record.base_model), id2label)[0]
    models = {"base": base, "trained": model, "merged": _merged_copy(folder, record)}
    models = {name: m.eval() for name, m in models.items() if m is not None}
    sample = (texts * (32 // max(len(texts), 1) + 1))[:32]
    batches = {
        size: [
            tokenizer(sample[i : i + size], truncation=True, max_length=max_length, padding=True,
                      return_tensors="pt")
            for i in range(0, 32, size)
        ]
        for size in LATENCY_BATCH_SIZES
    }  # fmt: skip
    timings: dict[tuple[str, int], list[float]] = {}
    with torch.no_grad():
        for m in models.values():  # warm-up: first calls allocate
            m(**batches[32][0])
        for _ in range(LATENCY_ROUNDS):
            for name, m in models.items():
                for size, inputs in batches.items():
                    started = time.perf_counter()
                    for batch in inputs:
                        m(**batch)
                    timings.setdefault((name, size), []).append(
                        1000 * (time.perf_counter() - started) / len(inputs)
                    )
    median = {key: float(np.median(values)) for key, values in timings.items()}
    result: dict[str, float] = {}
    for name in models:
        for size in LATENCY_BATCH_SIZES:
            result[f"{name}_batch_{size}_ms"] = round(median[(name, size)], 3)
            if name != "base":
                result[f"{name}_batch_{size}_x_base"] = round(
                    median[(name, size)] / median[("base", size)], 3
                )
    return result


def evaluate_classifier(folder: Path, record: RunRecord, args: argparse.Namespace) -> Evaluation:
    from transformers import EvalPrediction

    model, tokenizer, label_names = load_saved_classifier(folder, record)
    seed = args.seed if args.seed is not None else int(record.seed or 42)
    texts, labels, dataset = load_classification_eval_data(args, label_names, seed)
    hyperparameters = record.hyperparameters or {}
    precision = (record.precision or "fp32") if args.precision == "auto" else args.precision
    max_length = int(hyperparameters.get("max_seq_length") or 128)
    predictions = predict_labels(
        model, tokenizer, texts, batch_size=args.batch_size, max_length=max_length, precision=precision
    )
    if getattr(args, "latency", False):
        if not hasattr(model, "forward"):
            raise HftuneError(
                f"{folder}: a {record.artifact} run has no single forward pass to time; leave out --latency"
            )
        record.extra["inference_latency"] = measure_latency(
            folder, record, model, tokenizer, texts, max_length
        )
    scores = classification_metrics(label_names)(
        EvalPrediction(predictions=predictions, label_ids=np.asarray(labels))
    )
    return Evaluation(
        {name: float(value) for name, value in scores.items()},
        dataset,
        args.split,
        len(texts),
        {"precision": precision},
    )


def jsl_decoding(record: RunRecord, model) -> dict[str, int]:
    """The decoding the run was scored with (results.json's `generation`), else the saved generation_config
    (folders from before hftune recorded it): the same settings reproduce the run's own scores."""
    settings = dict(record.generation or {})
    config = model.generation_config
    return {
        "num_beams": int(settings.get("num_beams") or config.num_beams or 1),
        "max_new_tokens": int(
            settings.get("max_new_tokens") or config.max_new_tokens or model.config.max_target_length
        ),
    }


def evaluate_jsl(folder: Path, record: RunRecord, args: argparse.Namespace) -> Evaluation:
    """Translate the split's Japanese with the saved JSL model and score the glosses."""
    import torch

    if args.validation_file:
        pairs, dataset = load_gloss_pairs(args.validation_file), args.validation_file
    elif args.dataset_name in (None, JSL_CORPUS_NAME):
        pairs, dataset = load_jsl_corpus(args.split), JSL_CORPUS_NAME
    else:
        raise HftuneError(
            f"--dataset_name {args.dataset_name!r}: JSL runs evaluate on the shipped corpus "
            f"(--dataset_name {JSL_CORPUS_NAME} --split validation|test) or on --validation_file pairs"
        )
    if args.max_eval_samples is not None:
        pairs = pairs.select(range(min(args.max_eval_samples, len(pairs))))
    model, tokenizer = load_jsl_model(folder, device=resolve_device())
    generate_kwargs = jsl_decoding(record, model)
    sources, references = list(pairs["ja"]), list(pairs["gloss"])
    predictions: list[str] = []
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(sources), args.batch_size):
            inputs = tokenizer(sources[start : start + args.batch_size], padding=True, return_tensors="pt")
            outputs = model.generate(**inputs.to(model.device), **generate_kwargs)
            predictions += tokenizer.batch_decode(outputs, skip_special_tokens=True)
    latency_ms = 1000 * (time.perf_counter() - started) / max(len(sources), 1)
    metrics = gloss_metrics(predictions, references)
    return Evaluation(
        metrics,
        dataset,
        args.split,
        len(sources),
        {"generation_latency_ms": round(latency_ms, 3), **generate_kwargs},
    )


# --- recording --------------------------------------------------------------------------------------------


def output_folder(folder: Path, repo_id: str | None, output_dir: str | None) -> Path:
    """Where the updated card and results.json go: the run folder itself, or a copy for a Hub repo."""
    if repo_id is None and output_dir is None:
        return folder
    out = Path(output_dir or Path("evaluations") / repo_id.replace("/", "__"))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("README.md", RESULTS_FILE):
        if (folder / name).is_file() and not (out / name).is_file():
            shutil.copyfile(folder / name, out / name)  # follows the cache's symlinks to the blob
    return out


def record_evaluation(out: Path, record: RunRecord, evaluation: Evaluation) -> Path | None:
    """Append to the card's model-index (if the run has a card) and to results.json; returns the card path.

    An evaluation of the same dataset, split and size replaces the earlier one, as the card does.
    """
    card = out / "README.md"
    if card.is_file():
        append_eval_result(card, evaluation.metrics, evaluation.dataset, evaluation.split, task=record.task)
    entry = evaluation.entry()
    same = (entry["dataset"], entry["split"], entry["num_examples"])
    kept = [
        e for e in record.evaluations if (e.get("dataset"), e.get("split"), e.get("num_examples")) != same
    ]
    record.evaluations = [*kept, entry]
    write_results(out, record)
    return card if card.is_file() else None


def evaluate_run(run_or_repo: str, args: argparse.Namespace) -> tuple[Evaluation, Path]:
    """Score `run_or_repo` as `args` say and record the result; returns it and the folder written."""
    folder, repo_id = resolve_run(run_or_repo, args.revision)
    record = run_record(folder)
    if record.task == "jsl-seq2seq" or record.artifact == "remote-code":
        evaluation = evaluate_jsl(folder, record, args)
    elif record.task == "instruction-tuning":
        raise HftuneError(
            f"{run_or_repo} is an instruction-tuned run: its recipe scores it on the JSL corpus itself; "
            "`hftune evaluate` scores classifiers and JSL seq2seq models"
        )
    else:
        evaluation = evaluate_classifier(folder, record, args)
    out = output_folder(folder, repo_id, args.output_dir)
    record_evaluation(out, record, evaluation)
    return evaluation, out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hftune evaluate",
        description="Score a saved run or Hub repo on a dataset; record the result in its card and results.json.",
    )
    parser.add_argument("run", help="run folder (a recipe's --output_dir) or Hub repo id ORG/NAME")
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--dataset_name", help=f"Hub dataset id, movie_polarity, or {JSL_CORPUS_NAME} for JSL runs"
    )
    data.add_argument("--validation_file", help="local csv/tsv/txt/json/jsonl/parquet file to score on")
    parser.add_argument("--dataset_config_name", help="Hub dataset configuration name")
    parser.add_argument("--split", default="validation", help="split of --dataset_name (default: validation)")
    parser.add_argument("--text_column", help="text column (default: detected, e.g. text, sentence)")
    parser.add_argument("--label_column", help="label column (default: detected, e.g. label, label_name)")
    parser.add_argument("--delimiter", help="delimiter of csv/tsv/txt files (default: detected)")
    parser.add_argument("--encoding", default="utf-8", help="encoding of local files")
    parser.add_argument(
        "--max_eval_samples", type=int, help="score a seeded subset of this size (as the recipes do)"
    )
    parser.add_argument("--seed", type=int, help="seed of that subset (default: the run's seed)")
    parser.add_argument("--batch_size", type=int, default=64, help="examples per forward pass")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast while scoring (default: what the run recorded, so its metrics reproduce)",
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="also time forward passes at batch 1 and 32 against the plain base model (and, for adapters that "
        "merge, the merged copy); recorded as results.json's inference_latency",
    )
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) of a repo id")
    parser.add_argument(
        "--output_dir",
        help="where the updated README.md and results.json go (default: the run folder; for a repo id "
        "evaluations/ORG__NAME)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


def evaluate_command(argv: list[str]) -> int:
    """`hftune evaluate RUN_DIR_OR_REPO_ID [--dataset_name X | --validation_file F] ...`: prints the metrics."""
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "max_eval_samples", "seed"):
        check_range(name, getattr(args, name))
    check_encoding(args.encoding)
    if args.validation_file is not None:
        check_file(args.validation_file, "--validation_file")
    if args.output_dir is not None:
        check_writable_folder(args.output_dir)
    evaluation, out = evaluate_run(args.run, args)
    print(f"{args.run} on {evaluation.dataset} ({evaluation.split}, {evaluation.num_examples} examples):")
    width = max(len(name) for name in evaluation.metrics)
    for name, value in evaluation.metrics.items():
        print(f"  {name:<{width}}  {value:.4f}")
    print(
        f"recorded in {out / RESULTS_FILE}"
        + (f" and {out / 'README.md'}" if (out / "README.md").is_file() else "")
    )
    return 0
