"""Checks of the values a user gives, run before any data or model is loaded.

Each check raises `HftuneError` with one line naming the value, where it came from and the fix. Ranges are
looked up by argument name (`RANGES`), so a recipe's flags, its `--config` YAML keys and a verb's flags share
one rule per name. The module imports only the standard library and `hftune.errors`: it reads files and
configs as JSON, never through torch or transformers.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from hftune.errors import HftuneError
from hftune.persistence import OutputDirLock

# --- numeric ranges ---------------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Range:
    """low <= value (low < value when `low_open`), value <= high (< when `high_open`); `allow`: sentinels."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allow: tuple = (None,)
    example: str = ""

    def requirement(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"must be in {left}{low}, {high}{right}"
        elif self.low is not None:
            text = f"must be greater than {low}" if self.low_open else f"must be at least {low}"
        else:
            text = f"must be below {high}" if self.high_open else f"must be at most {high}"
        sentinels = [repr(a) for a in self.allow if a is not None]
        return text + (f" (or {' / '.join(sentinels)})" if sentinels else "")

    def check(self, flag: str, value: Any) -> None:
        if value in self.allow and not (isinstance(value, float) and math.isnan(value)):
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if ok and math.isinf(value):
            ok = False
        if not ok:
            fix = f"; pass e.g. {flag} {self.example}" if self.example else ""
            raise HftuneError(f"{flag} {value!r} {self.requirement()}{fix}")


_PROBABILITY = Range(0, 1, high_open=True, example="0.1")
_COUNT = Range(1, example="8")
_SEED = Range(0, 2**32 - 1, example="42")

# Argument name -> range. "Class.name" entries override a name for one dataclass.
RANGES: dict[str, Range] = {
    # TrainingArguments / Seq2SeqTrainingArguments
    "learning_rate": Range(0, low_open=True, example="2e-5"),
    "per_device_train_batch_size": _COUNT,
    "per_device_eval_batch_size": _COUNT,
    "gradient_accumulation_steps": Range(1, example="2"),
    "eval_accumulation_steps": Range(1, example="4"),
    "weight_decay": Range(0, example="0.01"),
    "max_grad_norm": Range(0, example="1.0"),  # 0 turns clipping off
    "adam_beta1": Range(0, 1, high_open=True, example="0.9"),
    "adam_beta2": Range(0, 1, high_open=True, example="0.999"),
    "adam_epsilon": Range(0, low_open=True, example="1e-8"),
    "label_smoothing_factor": _PROBABILITY,
    "seed": _SEED,
    "data_seed": _SEED,
    "save_total_limit": Range(1, example="2"),
    "dataloader_num_workers": Range(0, example="0"),
    "logging_steps": Range(0, low_open=True, example="20"),
    "eval_steps": Range(0, low_open=True, example="100"),
    "save_steps": Range(0, low_open=True, example="500"),
    "generation_num_beams": Range(1, example="4"),
    "generation_max_length": Range(1, example="32"),
    # ModelArguments, DataArguments, LoraArguments, FreezeArguments
    "max_memory_fraction": Range(0, 1, low_open=True, example="0.85"),
    "attention_dropout": _PROBABILITY,
    "max_seq_length": Range(1, example="128"),
    "max_train_samples": Range(1, example="1000"),
    "max_eval_samples": Range(1, example="500"),
    "validation_split_percentage": Range(0, 100, low_open=True, high_open=True, example="20"),
    "lora_r": Range(1, example="8"),
    "lora_alpha": Range(0, low_open=True, example="16"),
    "lora_dropout": _PROBABILITY,
    "loraplus_lr_ratio": Range(0, low_open=True, example="16"),
    # PromptLearningArguments, AdapterArguments
    "num_virtual_tokens": Range(1, example="20"),
    "encoder_hidden_size": Range(1, example="384"),
    "reduction_factor": Range(1, example="16"),
    # The instruction recipe documents -1 as "every example".
    "InstructionDataArguments.max_train_samples": Range(1, allow=(None, -1), example="800"),
    "InstructionDataArguments.max_eval_samples": Range(1, allow=(None, -1), example="100"),
    "max_new_tokens": Range(1, example="48"),
    "max_unknown_share": Range(0, 1, example="0.5"),
    "generation_batch_size": _COUNT,
    # JslArguments
    "d_model": Range(1, example="128"),
    "num_heads": Range(1, example="4"),
    "encoder_layers": Range(1, example="2"),
    "decoder_layers": Range(1, example="2"),
    "d_ff": Range(1, example="512"),
    "dropout": _PROBABILITY,
    "label_smoothing": _PROBABILITY,
    "replay_ratio": Range(0, 1, example="0.5"),
    "corpus_builds": Range(1, example="3"),
    # One input character (or gloss) plus </s>.
    "max_source_length": Range(2, example="65"),
    "max_target_length": Range(2, example="33"),
    "output_length_ratio": Range(0, example="0.8"),
    "output_length_slack": Range(0, example="3"),
    "attention_max_length": Range(1, example="24"),
    # verbs
    "num_beams": Range(1, example="4"),
    "batch_size": _COUNT,
}


def check_range(name: str, value: Any, owner: str | None = None) -> None:
    """Check one argument against its range in `RANGES` (nothing to check for names not listed)."""
    rule = RANGES.get(f"{owner}.{name}") or RANGES.get(name)
    if rule is not None:
        rule.check(f"--{name}", value)


def check_training_length(num_train_epochs: float, max_steps: int) -> None:
    """Trainer trains max_steps when it is positive, else num_train_epochs: one of them must train something."""
    if max_steps > 0:
        return
    if max_steps != -1:
        raise HftuneError(
            f"--max_steps {max_steps} trains nothing; pass a positive number of steps, or -1 (the default) "
            "to train --num_train_epochs"
        )
    if not (isinstance(num_train_epochs, (int, float)) and 0 < num_train_epochs < math.inf):
        raise HftuneError(
            f"--num_train_epochs {num_train_epochs!r} trains nothing or never ends; pass a positive number of "
            "epochs (e.g. --num_train_epochs 3) or a positive --max_steps"
        )


# Arguments that name a local file to read (data files of every recipe and `hftune evaluate`).
FILE_ARGUMENTS = ("train_file", "validation_file", "test_file")


def check_file(path: str, flag: str) -> None:
    """A file to read: a missing path and a folder get their own message."""
    if Path(path).expanduser().is_dir():
        raise HftuneError(f"{flag} {path} is a folder, not a file; pass the path of a data file")
    if not Path(path).expanduser().is_file():
        raise HftuneError(f"{flag} {path} does not exist; pass the path of an existing data file")


def check_encoding(name: str, flag: str = "--encoding") -> None:
    """A text encoding Python knows (an unknown one fails only when the first file is opened)."""
    try:
        codecs.lookup(name)
    except LookupError:
        raise HftuneError(
            f"{flag} {name!r} is not a known text encoding; pass e.g. {flag} utf-8 or latin-1"
        ) from None


def check_arguments(parsed: Iterable[Any]) -> None:
    """Every ranged field, data file and encoding of the parsed argument dataclasses, then the rules that span
    two fields."""
    values: dict[str, Any] = {}
    for instance in parsed:
        if not is_dataclass(instance):
            continue
        for item in fields(instance):
            value = getattr(instance, item.name)
            check_range(item.name, value, type(instance).__name__)
            if item.name in FILE_ARGUMENTS and value is not None:
                check_file(value, f"--{item.name}")
            if item.name == "encoding" and value is not None:
                check_encoding(value)
            values[item.name] = value
    if "num_train_epochs" in values and "max_steps" in values:
        check_training_length(values["num_train_epochs"], values["max_steps"])
    d_model, num_heads = values.get("d_model"), values.get("num_heads")
    if d_model and num_heads and d_model % num_heads:
        divisor = max(n for n in range(1, num_heads + 1) if d_model % n == 0)
        raise HftuneError(
            f"--d_model {d_model} is not divisible by --num_heads {num_heads}; pass a head count that divides "
            f"it, e.g. --num_heads {divisor}"
        )
    if values.get("memory_budget"):
        check_memory_budget(values["memory_budget"])


def parse_size(text: str, where: str = "--budget") -> int:
    """'6GB', '6 GiB', '5500MB' -> bytes. GB and GiB both mean 2**30: GPU memory is sold in binary units."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?)?\s*", text.lower())
    if not match:
        raise HftuneError(f"{where} {text!r} is not a size; write e.g. 6GB or 5500MB.")
    unit = (match.group(2) or "b")[0]
    scale = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit]
    return int(float(match.group(1)) * scale)


def check_memory_budget(text: str, flag: str = "--memory_budget") -> None:
    """A size such as 6GB; 0 is refused (nothing fits in it)."""
    if parse_size(text, flag) <= 0:
        raise HftuneError(f"{flag} {text!r} is no memory at all; pass the device's memory, e.g. {flag} 6GB")


# --- folders ----------------------------------------------------------------------------------------------


def check_existing_folder(path: str | Path, flag: str, what: str) -> Path:
    """A folder that must exist (a run or model to read): a missing path and a file get their own message."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise HftuneError(f"{flag} {str(path)!r} is a file, not a folder; pass {what}")
    raise HftuneError(f"{flag} {str(path)!r} does not exist; pass {what}")


def _writable(folder: Path) -> bool:
    """Whether this process may create files in `folder` (its effective user, where the OS tells them apart)."""
    return os.access(folder, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)


def check_writable_folder(path: str | Path, flag: str = "--output_dir") -> Path:
    """A folder this run may create or write into: not a file, and writable (or creatable) by this user."""
    folder = Path(path).expanduser()
    if folder.is_symlink() and not folder.exists():
        raise HftuneError(f"{flag} {path} is a broken symbolic link; remove it or pass another folder")
    if folder.exists():
        if not folder.is_dir():
            raise HftuneError(
                f"{flag} {path} is an existing file, not a folder; pass a folder path (it is created if missing)"
            )
        if not _writable(folder):
            raise HftuneError(
                f"{flag} {path} is not writable by this user; pass a folder you can write to, or change its "
                "permissions"
            )
        return folder
    parent = folder.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise HftuneError(f"{flag} {path} cannot be created: {parent} is a file; pass another folder path")
    if not _writable(parent):
        raise HftuneError(
            f"{flag} {path} cannot be created: {parent} is not writable by this user; pass a folder under one "
            "you can write to"
        )
    return folder


# --- what a folder holds ----------------------------------------------------------------------------------

ADAPTER_TASKS = {"SEQ_CLS": "text-classification", "CAUSAL_LM": "instruction-tuning"}
# Files a run writes before its first checkpoint (the feature plot) or after its last (cards, predictions).
RUN_FILES = {"feature_projection.png", "training_curves.png", "confusion_matrix.png", "predictions.jsonl"}
CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
                       "ForMultipleChoice")  # fmt: skip
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
JSL_MODEL_TYPE = "jsl-seq2seq"  # JslSeq2SeqConfig.model_type, not imported here: hftune.jsl imports torch


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (a description, not a load)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def model_kind(config: Mapping[str, Any]) -> str:
    """What a config.json describes, in words: a JSL model, a text classifier, a causal LM, an encoder, ..."""
    architectures = [str(a) for a in config.get("architectures") or []]
    model_type = config.get("model_type")
    if model_type == JSL_MODEL_TYPE:
        return "a JSL seq2seq model"
    named = f" ({', '.join(architectures)})" if architectures else f" (model_type {model_type!r})"
    if architectures and all(a.endswith(CLASSIFIER_SUFFIXES) for a in architectures):
        return "a text classifier" + named
    if any(a.endswith(CAUSAL_LM_SUFFIXES) for a in architectures):
        return "a causal LM" + named
    if config.get("is_encoder_decoder"):
        return "a seq2seq model" + named
    return "a model" + named


@dataclass(frozen=True)
class FolderContent:
    """What an existing folder holds, in words, and as far as the files tell: the run's task and method.

    `state`: finished (results.json), unfinished (checkpoints), saved (a model without results.json),
    started (only files a run writes before its first checkpoint), broken (an unreadable results.json) or
    other (files that are not a run). `checkpoint_format` is "adapter" or "full".
    """

    summary: str
    state: str
    task: str | None = None
    method: str | None = None
    checkpoint_format: str | None = None


def _saved_model(folder: Path) -> tuple[str | None, str | None, str]:
    """(task, format, words) of a folder that save_pretrained wrote: a peft adapter or a full model."""
    adapter = read_json(folder / "adapter_config.json")
    if isinstance(adapter, dict):
        task_type = adapter.get("task_type")
        return ADAPTER_TASKS.get(task_type), "adapter", f"a LoRA adapter (task_type {task_type})"
    config = read_json(folder / "config.json")
    if isinstance(config, dict):
        kind = model_kind(config)
        task = (
            "jsl-seq2seq" if kind.startswith("a JSL")
            else "text-classification" if kind.startswith("a text classifier")
            else "instruction-tuning" if kind.startswith("a causal LM")
            else None
        )  # fmt: skip
        return task, "full", kind
    return None, None, "no saved model"


def _checkpoint_number(path: Path) -> int:
    suffix = path.name.removeprefix("checkpoint-")
    return int(suffix) if path.name.startswith("checkpoint-") and suffix.isdigit() else -1


def describe_folder(folder: Path) -> FolderContent | None:
    """What `folder` holds, hidden files (locks, staging) aside; None when it is missing or empty."""
    if not folder.is_dir():
        return None
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if not entries:
        return None
    if (folder / "results.json").is_file():
        results = read_json(folder / "results.json")
        task = results.get("task") if isinstance(results, dict) else None
        if not task:
            return FolderContent("a results.json that names no task (not an hftune run record)", "broken")
        method = results.get("method")
        return FolderContent(f"a finished {task} run (method {method})", "finished", task, method)
    checkpoints = sorted(
        (p for p in entries if _checkpoint_number(p) >= 0 and p.is_dir()), key=_checkpoint_number
    )
    if checkpoints:
        task, fmt, words = _saved_model(checkpoints[-1])
        summary = f"an unfinished {task or 'training'} run ({len(checkpoints)} checkpoint(s), the newest holding {words})"
        return FolderContent(summary, "unfinished", task, None, fmt)
    for name, method in (("bitfit_config.json", "bitfit"), ("features_config.json", "features")):
        if (folder / name).is_file():
            return FolderContent(
                f"a {method} run without results.json", "saved", "text-classification", method
            )
    task, fmt, words = _saved_model(folder)
    if fmt is not None:
        return FolderContent(f"{words} saved without results.json", "saved", task, None, fmt)
    names = [p.name + ("/" if p.is_dir() else "") for p in entries]
    if set(names) <= RUN_FILES:
        return FolderContent(f"the start of a run ({', '.join(names)})", "started")
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return FolderContent(f"files that are not an hftune run ({shown})", "other")


def _same_run(content: FolderContent, task: str, method: str, artifact: str) -> bool:
    """Whether a run of `task` and `method`, saving `artifact`, may continue in a folder holding `content`."""
    if content.state == "started":
        return True
    if content.state in ("broken", "other") or content.task not in (task, None):
        return False
    if content.method is not None and content.method != method:
        return False
    fmt = (
        "adapter" if artifact == "adapter" else "full"
    )  # Trainer checkpoints: a peft adapter or the whole model
    if content.checkpoint_format is not None and content.checkpoint_format != fmt:
        return False
    # A saved model of unknown task is someone else's folder; an unknown checkpoint may be ours.
    return content.task is not None or content.state == "unfinished"


def check_output_folder(output_dir: str | Path, *, task: str, method: str, artifact: str) -> None:
    """Refuse an output folder that holds anything but a run of this task and method (which then resumes).

    `artifact` is what the run saves (results.json's `artifact`: adapter, full, bitfit, ...).
    A finished run records its task and method in results.json; an unfinished one is told apart by its newest
    checkpoint (an adapter or a full model, and the task its config names). Another run's checkpoints would be
    resumed as if they were this run's, and its files mixed with this run's.
    """
    folder = check_writable_folder(output_dir)
    OutputDirLock(folder).refuse_if_held()  # a run writing there now: the one fix is to wait or go elsewhere
    content = describe_folder(folder)
    if content is not None and not _same_run(content, task, method, artifact):
        raise HftuneError(
            f"--output_dir {output_dir} holds {content.summary}, which this run ({task}, method {method}) would "
            "mix with; pass another --output_dir, or move that folder away first (hftune never deletes a run)"
        )


def check_model_kind(
    config: Mapping[str, Any],
    need: str,
    where: str,
    flag: str,
    supported_types: Iterable[str] = (),
    fix: str | None = None,
) -> None:
    """Refuse a model of the wrong kind for the job: `need` is "sequence-classification", "causal-lm" or "jsl".

    `supported_types` are the model types transformers can build for the need (its Auto class mapping); `fix`
    replaces the default advice (which names a base model to fine-tune).
    """
    kind = model_kind(config)
    model_type = config.get("model_type")
    architectures = [str(a) for a in config.get("architectures") or []]
    supported = set(supported_types)
    if need == "jsl":
        if model_type != JSL_MODEL_TYPE:
            raise HftuneError(
                f"{flag} {where} is {kind}, not a JSL seq2seq model; "
                + (fix or "pass a folder saved by recipes/jsl_seq2seq.py (or its Hub repo id)")
            )
        return
    if need == "causal-lm":
        causal = any(a.endswith(CAUSAL_LM_SUFFIXES) for a in architectures) or (
            model_type in supported and not architectures
        )
        if not causal:
            raise HftuneError(
                f"{flag} {where} is {kind}, not a causal language model; "
                + (
                    fix
                    or "pass a causal LM such as HuggingFaceTB/SmolLM2-135M-Instruct, or leave the flag out "
                    "for the embedded one"
                )
            )
        return
    if model_type not in supported and not (config.get("auto_map") or {}).get(
        "AutoModelForSequenceClassification"
    ):
        raise HftuneError(
            f"{flag} {where} is {kind}, which has no sequence-classification head in transformers; pass an "
            "encoder such as distilbert-base-uncased, or leave the flag out for the embedded MiniLM"
        )


# RoBERTa-style models number positions from padding_idx + 1: two of their position embeddings are never used.
POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                         "data2vec-text", "longformer", "ibert"}  # fmt: skip


def position_limit(config: Mapping[str, Any]) -> int | None:
    """The longest input in tokens the model has positions for, or None when its config names no limit."""
    for key in ("max_position_embeddings", "n_positions", "max_source_length"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            offset = (
                2
                if key == "max_position_embeddings" and config.get("model_type") in POSITION_OFFSET_TYPES
                else 0
            )
            return value - offset
    return None


def check_position_limit(config: Mapping[str, Any], max_seq_length: int | None, where: str) -> None:
    """--max_seq_length must fit the model's position embeddings: longer inputs fail inside the forward pass."""
    limit = position_limit(config)
    if max_seq_length is not None and limit is not None and max_seq_length > limit:
        raise HftuneError(
            f"--max_seq_length {max_seq_length} is longer than model {where} allows ({limit} positions); "
            f"pass --max_seq_length {limit} or less"
        )


# --- labels and records -----------------------------------------------------------------------------------


def label_name(value: Any, where: str, column: str) -> str:
    """A class label as the string it is known by; missing and fractional labels are refused.

    A float label is accepted only when it is a whole number (1.0 -> "1", as a CSV column with an integer
    label reads when pandas saw a gap in it): 0.5 or 2.25 are scores, not classes, and hftune trains
    classifiers.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        raise HftuneError(f"{where}: the label in column {column!r} is missing; fill it in or remove the row")
    if isinstance(value, float):
        if not value.is_integer():
            raise HftuneError(
                f"{where}: label {value!r} in column {column!r} is not a whole number; class labels are "
                "integers or names: map the values to classes first (hftune trains classifiers, not regression)"
            )
        return str(int(value))
    return str(value)


def check_results_record(record: Any, path: Path) -> dict[str, Any]:
    """results.json must be the object a run writes, with `metrics` a mapping and `evaluations` a list of them."""
    if not isinstance(record, dict):
        raise HftuneError(
            f"{path} holds a JSON {type(record).__name__}, not the object a run writes; re-run the recipe to "
            "rewrite it, or leave this run out"
        )
    if not isinstance(record.get("metrics") or {}, dict):
        raise HftuneError(f"{path}: `metrics` is a {type(record['metrics']).__name__}, not a mapping of names "
                          "to values; re-run the recipe to rewrite it")  # fmt: skip
    evaluations = record.get("evaluations") or []
    if not isinstance(evaluations, list) or not all(isinstance(e, dict) for e in evaluations):
        raise HftuneError(
            f"{path}: `evaluations` is not a list of records; re-run `hftune evaluate` or remove the key"
        )
    return record
