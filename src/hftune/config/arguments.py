"""The recipes' argument dataclasses: every field carries a `help` text, so `python recipes/X.py --help` is
the documentation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Re-exported for the recipes, which import them from here so that `hftune` (and its filter of library notices,
# see runtime.silence_library_notices) is imported before transformers is.
from transformers import Seq2SeqTrainingArguments, TrainingArguments, set_seed  # noqa: F401

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
    use_dora: bool = field(
        default=False,
        metadata={
            "help": "DoRA (Liu et al., 2024): split each adapted weight into a magnitude vector and a direction "
            "that LoRA updates; trains the magnitudes too. Slower steps; mergeable like LoRA."
        },
    )
    use_rslora: bool = field(
        default=False,
        metadata={"help": "rsLoRA (Kalajdzievski, 2023): scale updates by alpha/sqrt(r) instead of alpha/r."},
    )
    init_lora_weights: str = field(
        default="default",
        metadata={
            "help": "How LoRA's matrices start. default: A random (Kaiming), B zero; gaussian: A Gaussian; pissa: "
            "from the top singular vectors of each weight (PiSSA); olora: from its QR decomposition (OLoRA). "
            "pissa and olora move those components out of the base weights while training; the saved adapter is "
            "converted to a plain LoRA of rank 2r over the untouched base, so it loads like any other.",
            "choices": ["default", "gaussian", "pissa", "olora"],
        },
    )
    loraplus_lr_ratio: float | None = field(
        default=None,
        metadata={
            "help": "LoRA+ (Hayou et al., 2024): train the B matrices (and 1-D parameters) at this multiple of "
            "--learning_rate with peft's create_loraplus_optimizer, e.g. 16 with --learning_rate 1e-3 (at the "
            "recipe's 3e-3 the B matrices ran at 4.8e-2 and emotion collapsed to one class over 3 epochs). "
            "Default: one learning rate."
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


def check_attention_dropout(value: float | None, flag: str = "--attention_dropout") -> None:
    """A dropout probability is in [0, 1); 1 would drop every attention weight."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise HftuneError(f"{flag} is {value!r}; it must be a probability in [0, 1), e.g. 0.0 or 0.1")
