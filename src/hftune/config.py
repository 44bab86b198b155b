"""Recipe arguments: HfArgumentParser dataclasses, `--config file.yaml`, CLI overrides.

Precedence, lowest first: the recipe's own defaults, then the YAML file, then command-line flags.
Every field carries a `help` text: `python recipes/X.py --help` is the documentation.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml
from transformers import HfArgumentParser, TrainingArguments

from hftune.errors import HftuneError


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id (e.g. distilbert-base-uncased) or local folder of the base model. "
            "Default: the embedded default of the recipe (works with no network)."
        },
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer Hub id or folder, if not the model's own."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow model code from the model repo to run. Only set it for repos you trust."},
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto | fp32 | fp16 | bf16. `auto` picks what the hardware supports (bf16 on Ampere+ GPUs "
            "and CPUs with AMX / Arm BF16, fp16 on older GPUs, else fp32) and prints why.",
            "choices": ["auto", "fp32", "fp16", "bf16"],
        },
    )
    memory_budget: str | None = field(
        default=None,
        metadata={
            "help": "Device memory to plan for, e.g. 6GB. Adjusts batch size, gradient accumulation, "
            "gradient checkpointing and optimizer so the run fits (see `hftune plan`)."
        },
    )
    max_memory_fraction: float | None = field(
        default=None,
        metadata={"help": "CUDA only: cap this process at this fraction of the GPU's memory (e.g. 0.85)."},
    )
    attention_dropout: float | None = field(
        default=None,
        metadata={
            "help": "Dropout on the attention probabilities, in [0, 1): overrides the checkpoint's config value "
            "(attention_probs_dropout_prob for BERT/RoBERTa/MiniLM, attention_dropout for DistilBERT/Llama, "
            "attn_pdrop for GPT-2). None (`attention_dropout: null` in YAML) keeps the checkpoint's value; the "
            "text-classification recipes default to 0.0, because on CPU PyTorch runs its fused attention (SDPA) "
            "kernel in training only with attention dropout 0, otherwise the unfused math path plus a serial "
            "random draw (a MiniLM training step: 0.68 s at 0, 0.72 s at 0.1). Hidden-state dropout is left "
            "as the checkpoint has it."
        },
    )

    def __post_init__(self) -> None:
        from hftune.models import check_attention_dropout

        check_attention_dropout(self.attention_dropout)


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id (e.g. dair-ai/emotion) or the name of an embedded data set "
            "(`movie_polarity`). Ignored when --train_file is given."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration name."}
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Local training file: csv, tsv, txt, json, jsonl or parquet."}
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Local validation file (same formats). Without one a stratified split is made."},
    )
    delimiter: str | None = field(
        default=None,
        metadata={"help": "Column delimiter of csv/tsv/txt files. Default: detected from the header line."},
    )
    encoding: str = field(default="utf-8", metadata={"help": "Text encoding of local files."})
    text_column: str | None = field(
        default=None, metadata={"help": "Column holding the text. Default: detected (text, sentence, ...)."}
    )
    label_column: str | None = field(
        default=None,
        metadata={"help": "Column holding the label. Default: detected (label, label_name, ...)."},
    )
    label_order: list[str] | None = field(
        default=None,
        metadata={
            "help": "Fix the label order (ids follow it). Default: the data's ClassLabel names, else sorted."
        },
    )
    validation_split_percentage: float = field(
        default=20.0,
        metadata={"help": "Percent of the training data held out for validation when there is no split."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training examples (a seeded random subset)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many validation examples (a seeded random subset)."}
    )
    max_seq_length: int = field(
        default=128,
        metadata={
            "help": "Truncate texts to this many tokens. Batches are padded dynamically, never to this."
        },
    )


@dataclass
class LoraArguments:
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout on the LoRA input. 0 (peft's default) saves no dropped-out copy of each adapted "
            "layer's input for backward."
        },
    )
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names to adapt, e.g. query value, or all-linear. Default: peft's choice for the "
            "architecture (query and value attention projections for BERT/RoBERTa/DistilBERT), else every "
            "linear layer of the body; the task head is never adapted (it is trained fully)."
        },
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: load the base model in 4-bit NF4 (bitsandbytes)."}
    )
    load_in_8bit: bool = field(
        default=False, metadata={"help": "Load the base model in 8-bit (bitsandbytes)."}
    )


@dataclass
class FreezeArguments:
    freeze_embeddings: bool = field(default=False, metadata={"help": "Freeze the embedding layer."})
    freeze_layers: int = field(
        default=0,
        metadata={
            "help": "Freeze the lower N encoder layers; a negative N freezes all but the top |N|. 0 freezes none "
            "(full fine-tuning)."
        },
    )


@dataclass
class FeatureArguments:
    pooling: str = field(
        default="mean",
        metadata={
            "help": "How to pool token states into one vector: cls | mean.",
            "choices": ["cls", "mean"],
        },
    )
    classifier: str = field(
        default="logreg",
        metadata={
            "help": "logreg: scikit-learn logistic regression on extracted features; head: train only the "
            "model's classification head with Trainer over the frozen body.",
            "choices": ["logreg", "head"],
        },
    )
    projection: str = field(
        default="pca",
        metadata={"help": "2-D projection for the features plot: pca | umap.", "choices": ["pca", "umap"]},
    )


# What every text-classification recipe starts from; each recipe adds its learning rate and output folder.
CLASSIFIER_DEFAULTS: dict[str, Any] = {
    # Data: the embedded movie-review polarity sentences (no network needed after the first fetch)
    "dataset_name": "movie_polarity",
    # Batches: dynamic padding plus length grouping keeps padding (wasted compute) small
    "num_train_epochs": 3,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "warmup_steps": 0.06,
    "train_sampling_strategy": "group_by_length",
    # No attention dropout: CPU training runs torch's fused SDPA kernel (MiniLM step 0.68 s vs 0.72 s at 0.1)
    "attention_dropout": 0.0,
    # Evaluate and save every epoch, keep the best epoch
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "validation_accuracy",
    "logging_steps": 20,
    "report_to": "none",
}


def _convert_yaml_value(parser: HfArgumentParser, key: str, value: Any, source: str) -> Any:
    """Convert one YAML value with the parser's own type for `key`, naming key and file on failure."""
    actions = {a.dest: a for a in parser._actions}
    action = actions[key]
    values = value if isinstance(value, list) else [value]
    if action.nargs in ("+", "*") and not isinstance(value, list):
        raise HftuneError(f"{source}: `{key}` must be a list (e.g. `{key}: [a, b]`), got {value!r}")
    converted = []
    for item in values:
        try:
            # Through str(): int("2.5") fails where int(2.5) would silently truncate.
            item = action.type(str(item)) if action.type is not None and item is not None else item
        except (TypeError, ValueError) as err:
            expected = getattr(action.type, "__name__", str(action.type))
            raise HftuneError(
                f"{source}: `{key}` has value {item!r}, which is not a valid {expected} ({err}); fix the YAML value"
            ) from None
        if action.choices is not None and item not in action.choices:
            raise HftuneError(
                f"{source}: `{key}` is {item!r}; choose one of {', '.join(map(str, action.choices))}"
            )
        converted.append(item)
    return converted if isinstance(value, list) else converted[0]


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HftuneError(f"config file {str(path)!r} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise HftuneError(
            f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)}); fix the syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HftuneError(f"{path}: expected a mapping of `key: value` lines, got a {type(data).__name__}")
    return data


def strip_traceback_flag(argv: list[str]) -> list[str]:
    """Drop a bare `--debug` (ours: show tracebacks, read by hftune.errors).

    `--debug underflow_overflow` with a value stays: that one is TrainingArguments'.
    """
    return [
        a
        for i, a in enumerate(argv)
        if not (a == "--debug" and (i + 1 == len(argv) or argv[i + 1].startswith("-")))
    ]


def _raise_argument_error(message: str) -> NoReturn:
    """argparse's own `error()` prints the usage of every flag first: ~150 lines with TrainingArguments."""
    raise HftuneError(f"{message}; see `--help` for the accepted flags")


def parse_recipe_args(
    dataclass_types: tuple[type, ...],
    recipe_defaults: dict[str, Any] | None = None,
    argv: list[str] | None = None,
) -> tuple:
    """Parse `argv` into one instance per dataclass type.

    `--config file.yaml` supplies values (unknown keys and wrong types fail with the key's name),
    command-line flags override them, and `recipe_defaults` sit underneath both.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    argv = strip_traceback_flag(argv)

    pre = argparse.ArgumentParser(add_help=False)
    pre.error = _raise_argument_error  # type: ignore[method-assign]
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)

    parser = HfArgumentParser(dataclass_types)
    parser.error = _raise_argument_error  # type: ignore[method-assign]
    parser.add_argument(
        "--config", default=None, help="YAML file of argument values; command-line flags override it."
    )
    dests = {a.dest for a in parser._actions}

    values: dict[str, Any] = {}
    for key, value in (recipe_defaults or {}).items():
        if key not in dests:
            raise ValueError(f"recipe default {key!r} is not an argument of {dataclass_types}")
        values[key] = value
    if known.config:
        source = str(known.config)
        for key, value in load_yaml_config(known.config).items():
            if key not in dests:
                close = difflib.get_close_matches(key, sorted(dests), n=1)
                hint = f"; did you mean `{close[0]}`?" if close else ""
                raise HftuneError(f"{source}: unknown key `{key}`{hint}")
            values[key] = _convert_yaml_value(parser, key, value, source)
    parser.set_defaults(**values)
    for action in parser._actions:
        if action.dest in values:
            action.required = False  # supplied by the YAML or the recipe

    try:
        *parsed, leftovers = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    except ValueError as err:  # TrainingArguments.__post_init__ rejects inconsistent combinations
        raise HftuneError(f"invalid arguments: {err}") from None
    if leftovers:
        raise HftuneError(f"unknown argument(s) {' '.join(leftovers)}; see `--help` for the accepted flags")
    # The Namespace holding --config/--debug comes back last; the caller wants only the dataclasses.
    return tuple(p for p in parsed if not isinstance(p, argparse.Namespace))


__all__ = [
    "CLASSIFIER_DEFAULTS",
    "DataArguments",
    "FeatureArguments",
    "FreezeArguments",
    "LoraArguments",
    "ModelArguments",
    "TrainingArguments",
    "load_yaml_config",
    "parse_recipe_args",
]
