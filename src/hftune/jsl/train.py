"""Training, evaluation and saving of the JSL seq2seq model (the logic behind `recipes/jsl_seq2seq.py`).

The story: load Japanese/gloss pairs (the shipped corpus or the user's files) -> build the joint tokenizer from
the training pairs -> build a fresh model -> pick device and precision -> train with `Seq2SeqTrainer`
(teacher forcing, label smoothing, evaluation by generation every epoch, best epoch kept) -> score the test
split -> save one complete folder: weights, config, tokenizer, code, metrics, results, card, plots.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    DataCollatorForSeq2Seq,
    GenerationConfig,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    set_seed,
)

from hftune import hardware
from hftune.errors import HftuneError
from hftune.jsl.artifacts import write_jsl_folder
from hftune.jsl.configuration_jsl import JslSeq2SeqConfig
from hftune.jsl.corpus import (
    CORPUS_NAME,
    FINGERSPELLING_PREFIX,
    fingerspelled_runs,
    generated_training_pairs,
    held_out_spellings,
    is_fingerspelling,
    load_gloss_pairs,
    load_jsl_corpus,
    respell,
    spelling_alphabet,
    to_hiragana,
)
from hftune.jsl.export import DEFAULT_ATTENTION_INPUTS, check_weight_name, export_attentions, export_weights
from hftune.jsl.modeling_jsl import JslSeq2SeqForConditionalGeneration, output_length_limits
from hftune.jsl.tokenization_jsl import JslTokenizer, target_tokens
from hftune.jsl.translate import measure_generation_speed
from hftune.metrics import gloss_metrics
from hftune.reporting.plots import plot_training_curves
from hftune.results import RunRecord
from hftune.runtime import log
from hftune.training.callbacks import MemoryCallback
from hftune.training.cpu import prepare_cpu_training
from hftune.training.lifecycle import claim_run, save_run, trainer_hyperparameters, training_facts
from hftune.training.trainer import AtomicCheckpointTrainer


@dataclass
class JslArguments:
    # Data
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Your own training pairs (.jsonl/.json/.csv/.tsv with columns `ja` and `gloss`, glosses "
            "space-separated like `<私> <食べる>`). Default: the corpus shipped with hftune."
        },
    )
    validation_file: str | None = field(
        default=None,
        metadata={
            "help": "Validation pairs (same format). Default with --train_file: a seeded hold-out of it."
        },
    )
    test_file: str | None = field(
        default=None,
        metadata={
            "help": "Test pairs (same format). Default with --train_file: the final score is on validation."
        },
    )
    ja_column: str = field(default="ja", metadata={"help": "Column of the Japanese text in your files."})
    gloss_column: str = field(
        default="gloss", metadata={"help": "Column of the gloss sequence in your files."}
    )
    corpus_builds: int = field(
        default=3,
        metadata={
            "help": "With the shipped corpus: train on its train split plus the train splits of this many minus "
            "one more runs of its generator (seeds 1, 2, ...), each sentence once and none of validation, test or "
            "natural. More distinct sentences generalise better than more epochs over the same ones. 1 = the "
            "shipped train split alone."
        },
    )
    validation_split_percentage: float = field(
        default=10.0,
        metadata={"help": "Percent of --train_file held out for validation when there is no file."},
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Train on at most this many pairs (a seeded random subset): quick trials."},
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Score at most this many validation and test pairs (the first ones): quick trials."
        },
    )
    # Model: continue from a saved one, or a new one of a preset size
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Continue training a saved JSL model: a folder saved by this recipe or a Hub repo id (taken "
            "from the HF cache when offline). Its weights, config, tokenizer and generation settings are the "
            "start; characters and glosses new in --train_file are added to its vocabulary. Default: a new model. "
            "(Resuming an interrupted run needs no flag: start the same command again.)"
        },
    )
    parent_lr_ratio: float = field(
        default=1.0,
        metadata={
            "help": "With --model_name_or_path: the loaded model's weights take this fraction of each optimizer "
            "update (they train at this fraction of --learning_rate); the embedding rows of symbols new to its "
            "vocabulary take the whole update. Below 1 the model forgets less of what it knew."
        },
    )
    freeze_vocabulary: bool = field(
        default=False,
        metadata={
            "help": "With --model_name_or_path: refuse training pairs holding characters or glosses the loaded "
            "vocabulary lacks, instead of adding them."
        },
    )
    replay_ratio: float = field(
        default=0.0,
        metadata={
            "help": "With --model_name_or_path and --train_file: mix this fraction of the shipped corpus's training "
            "pairs (a seeded sample) into training, so the model keeps what it knew (0 = none, 1 = all)."
        },
    )
    model_size: str | None = field(
        default=None,
        metadata={
            "help": "Size preset of a new model: tiny (d_model 128, 4 heads, 2+2 layers, d_ff 512; the default), "
            "small (192, 6 heads, 3+3, 768) or base (256, 8 heads, 6+6, 1024). Shape flags override it.",
            "choices": ["tiny", "small", "base"],
        },
    )
    d_model: int | None = field(
        default=None, metadata={"help": "Width of embeddings and hidden states. Default: the preset's."}
    )
    num_heads: int | None = field(
        default=None, metadata={"help": "Attention heads (must divide d_model). Default: the preset's."}
    )
    encoder_layers: int | None = field(
        default=None, metadata={"help": "Encoder blocks. Default: the preset's."}
    )
    decoder_layers: int | None = field(
        default=None, metadata={"help": "Decoder blocks. Default: the preset's."}
    )
    d_ff: int | None = field(
        default=None, metadata={"help": "Inner width of the feed-forward blocks. Default: the preset's."}
    )
    respelling_rate: float = field(
        default=0.5,
        metadata={
            "help": "Each epoch, this share of the training pairs get their fingerspelled words (<指:カ> runs) "
            "replaced by fresh random kana words, in the script the text used, so the model learns to spell "
            "names it never saw instead of memorising the listed ones. 0 trains on the pairs as written."
        },
    )
    dropout: float = field(
        default=0.1, metadata={"help": "Dropout on embeddings, sub-block outputs and FFNs."}
    )
    attention_dropout: float = field(default=0.0, metadata={"help": "Dropout on attention probabilities."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing of the training loss."})
    max_source_length: int = field(
        default=65,
        metadata={
            "help": "Longest Japanese input in tokens: characters plus </s> (65 = 64 characters); longer is "
            "truncated. Positions are sinusoidal, so a continued model may take a new value."
        },
    )
    max_target_length: int = field(
        default=33,
        metadata={
            "help": "Longest gloss output in tokens: glosses plus </s> (33 = 32 glosses); also the generation limit."
        },
    )
    output_length_ratio: float = field(
        default=0.8,
        metadata={
            "help": "Saved in the model config: generation ends a gloss once it has output_length_ratio x the "
            "input's characters + --output_length_slack tokens, so odd input cannot run on (the shipped "
            "corpus needs 0.62 with slack 3). With --spelling_budget each kana counts one whole token (a "
            "fingerspelled word takes one gloss per kana). 0 turns the bound off."
        },
    )
    spelling_budget: bool = field(
        default=True,
        metadata={
            "help": "Saved in the model config (spelling_sources): generation emits a fingerspelling gloss <指:カ> at "
            "most as many times as the input holds カ or か, so a spelled name cannot repeat or invent kana."
        },
    )
    spelling_copy: bool = field(
        default=True,
        metadata={
            "help": "A copy head (CopyNet) for fingerspelling: the decoder can point at the input's kana to spell "
            "a name or loanword it never saw in training. Saved in the model config (spelling_copy); needs "
            "--spelling_budget, whose spelling_sources it copies."
        },
    )
    output_length_slack: int = field(
        default=3,
        metadata={"help": "Gloss tokens allowed on top of --output_length_ratio x input characters."},
    )
    # Hardware
    device: str = field(
        default="auto",
        metadata={
            "help": "auto (cuda, then mps, then cpu) | cuda | mps | cpu.",
            "choices": ["auto", "cuda", "mps", "cpu"],
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto | fp32 | fp16 | bf16. auto: bf16/fp16 mixed precision on GPUs that support it, fp32 on "
            "CPU (this small model trains slower under CPU bf16 autocast).",
            "choices": ["auto", "fp32", "fp16", "bf16"],
        },
    )
    # Exports
    export_attentions: bool = field(
        default=False,
        metadata={
            "help": "Write attention maps (CSV per layer and head, heatmap PNGs) to OUTPUT_DIR/attentions."
        },
    )
    attention_inputs: list[str] = field(
        default_factory=lambda: list(DEFAULT_ATTENTION_INPUTS),
        metadata={"help": "Sentences whose attention maps --export_attentions writes."},
    )
    attention_max_length: int = field(
        default=24, metadata={"help": "--export_attentions skips (with a warning) inputs longer than this."}
    )
    export_weights: str | None = field(
        default=None,
        metadata={
            "help": "Write one named parameter (e.g. encoder.embed_tokens.weight) as OUTPUT_DIR/weights/NAME.csv."
        },
    )


# Size presets of a new model (`--model_size`); tiny is the shape every corpus result up to issue 18 was measured on.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 128, "num_heads": 4, "encoder_layers": 2, "decoder_layers": 2, "d_ff": 512},
    "small": {"d_model": 192, "num_heads": 6, "encoder_layers": 3, "decoder_layers": 3, "d_ff": 768},
    "base": {"d_model": 256, "num_heads": 8, "encoder_layers": 6, "decoder_layers": 6, "d_ff": 1024},
}
SHAPE_FLAGS = tuple(MODEL_SIZES["tiny"])


def model_shape(args: JslArguments) -> dict[str, int]:
    """The shape of a new model: the --model_size preset (tiny by default), each explicit shape flag over it."""
    preset = MODEL_SIZES[args.model_size or "tiny"]
    return {
        name: preset[name] if getattr(args, name) is None else getattr(args, name) for name in SHAPE_FLAGS
    }


# --- data -------------------------------------------------------------------------------------------------


def load_training_pairs(args: JslArguments, seed: int):
    """(DatasetDict train/validation/test with `ja` and `gloss`, dataset name, name of the split scored last)."""
    from datasets import Dataset, DatasetDict

    if args.train_file is None:
        if args.validation_file or args.test_file:
            raise HftuneError(
                "--validation_file/--test_file need --train_file too (the shipped corpus has its own splits)"
            )
        splits = load_jsl_corpus().select_columns(["ja", "gloss"])
        if args.corpus_builds > 1:
            train = Dataset.from_list(generated_training_pairs(args.corpus_builds))
            splits["train"] = train.select_columns(["ja", "gloss"])
        name, final_split = CORPUS_NAME, "test"
    else:

        def read(path: str):
            return load_gloss_pairs(path, ja_column=args.ja_column, gloss_column=args.gloss_column)

        train = read(args.train_file)
        if args.validation_file:
            validation = read(args.validation_file)
        else:
            if not 0 < args.validation_split_percentage < 100:
                raise HftuneError(
                    f"--validation_split_percentage {args.validation_split_percentage} must be between 0 and 100"
                )
            held = train.train_test_split(test_size=args.validation_split_percentage / 100, seed=seed)
            train, validation = held["train"], held["test"]
        splits = DatasetDict({"train": train, "validation": validation})
        if args.test_file:
            splits["test"] = read(args.test_file)
        final_split = "test" if args.test_file else "validation"
        name = Path(args.train_file).stem
        if not args.test_file:
            log("no --test_file: the final scores are on the validation split")
    for flag, value in (
        ("--max_train_samples", args.max_train_samples),
        ("--max_eval_samples", args.max_eval_samples),
    ):
        if value is not None and value < 1:
            raise HftuneError(f"{flag} {value} must be at least 1")
    if args.max_train_samples is not None:
        train = splits["train"].shuffle(seed=seed)
        splits["train"] = train.select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples is not None:
        for split in splits:
            if split != "train":
                splits[split] = splits[split].select(range(min(args.max_eval_samples, len(splits[split]))))
    return splits, name, final_split


def respells(train, args: JslArguments) -> bool:
    """Whether training redraws fingerspelled words (`RespelledPairs`): --respelling_rate is on and the training
    pairs hold fingerspelling."""
    if not 0.0 <= args.respelling_rate <= 1.0:
        raise HftuneError(
            f"--respelling_rate {args.respelling_rate} must be between 0 (train on the pairs as written) and 1 "
            "(redraw every fingerspelled word each epoch)"
        )
    return bool(args.respelling_rate) and any(is_fingerspelling(t) for g in train["gloss"] for t in g.split())


def build_tokenizer(train, max_source_length: int, spelling: bool = False) -> JslTokenizer:
    """The joint vocabulary of the training pairs (with `spelling`, also every kana respelling can draw and its
    fingerspelling gloss); inputs are cut at `max_source_length` characters."""
    pairs = list(zip(train["ja"], train["gloss"], strict=True))
    return JslTokenizer.build_from_pairs(
        pairs + ([spelling_alphabet()] if spelling else []), model_max_length=max_source_length
    )


def build_model(tokenizer: JslTokenizer, args: JslArguments, seed: int) -> JslSeq2SeqForConditionalGeneration:
    """A freshly initialised model (seeded) whose decoder may only emit gloss tokens and `</s>`."""
    if args.spelling_copy and not args.spelling_budget:
        raise HftuneError(
            "--spelling_copy needs --spelling_budget (the copy head copies the budget's spelling_sources); "
            "pass --spelling_copy false too, or keep --spelling_budget true"
        )
    sources = spelling_sources(tokenizer) if args.spelling_budget else None
    try:
        config = JslSeq2SeqConfig(
            vocab_size=len(tokenizer),
            **model_shape(args),
            dropout=args.dropout,
            attention_dropout=args.attention_dropout,
            label_smoothing=args.label_smoothing,
            max_source_length=args.max_source_length,
            max_target_length=args.max_target_length,
            output_length_ratio=args.output_length_ratio or None,
            output_length_slack=args.output_length_slack,
            output_length_spelling=bool(sources),  # a spelled kana counts one whole token of the bound
            spelling_sources=sources,
            spelling_copy=args.spelling_copy
            and bool(sources),  # pairs without fingerspelling have nothing to copy
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            unk_token_id=tokenizer.unk_token_id,
            decoder_start_token_id=tokenizer.bos_token_id,
        )
    except ValueError as err:
        raise HftuneError(f"invalid model size: {err}") from None
    set_seed(seed)
    model = JslSeq2SeqForConditionalGeneration(config)
    set_generation_config(model, tokenizer, for_trainer=True)
    return model


def spelling_sources(tokenizer: JslTokenizer) -> list[list[int]]:
    """`config.spelling_sources`: each fingerspelling gloss `<指:カ>` with the ids of `カ` and `か` in the vocabulary."""
    vocab = tokenizer.get_vocab()
    entries = []
    for token, index in sorted(vocab.items(), key=lambda item: item[1]):
        if is_fingerspelling(token):
            kana = token[len(FINGERSPELLING_PREFIX) + 1 : -1]
            sources = [vocab[form] for form in dict.fromkeys((kana, to_hiragana(kana))) if form in vocab]
            if sources:
                entries.append([index, *sources])
    return entries


def set_generation_config(model, tokenizer: JslTokenizer, *, for_trainer: bool) -> None:
    """Greedy decoding that may emit only gloss tokens and `</s>` (the vocabulary is shared with the source
    side: without this an undertrained model can emit characters). The trainer scores pairs up to
    `max_target_length` tokens; users get `generation_cap` tokens.

    Seq2SeqTrainer fills an unset `max_length` with 20 and generate() then warns at every call that both
    `max_length` and `max_new_tokens` are set: the trainer gets the limit as `max_length`, users (the saved
    generation_config.json) as `max_new_tokens`, which a `max_new_tokens=` argument overrides cleanly.
    """
    config = GenerationConfig.from_model_config(model.config)
    config._from_model_config = False  # our own settings, not legacy ones copied from the model config
    config.update(**own_generation_settings(model.generation_config))
    allowed = {tokenizer.convert_tokens_to_ids(token) for token in gloss_tokens(tokenizer)} | {
        tokenizer.eos_token_id
    }
    config.suppress_tokens = [i for i in range(len(tokenizer)) if i not in allowed]
    if for_trainer:
        config.max_length = model.config.max_target_length + 1  # counts the decoder start token
    else:
        config.max_new_tokens = generation_cap(model.config)
    model.generation_config = config


def generation_cap(config) -> int:
    """`max_new_tokens` of a saved model: one more than the longest output its saved bound allows (every input
    character a kana under `output_length_spelling`), so the bound, not the cap, ends the gloss of a long input
    (a 64-character loanword-heavy sentence spells more than the 32 glosses a training pair holds);
    `max_target_length` without a bound."""
    if config.output_length_ratio is None:
        return config.max_target_length
    characters = config.max_source_length - 1  # </s> is not a character
    if not (config.output_length_spelling and config.spelling_sources):
        characters = math.floor(characters * config.output_length_ratio)
    return max(config.max_target_length, characters + config.output_length_slack + 1)


# Generation settings `set_generation_config` derives from the model and tokenizer; any other a saved folder holds
# (e.g. num_beams a user set) is the folder's own and carries over into a continued model.
DERIVED_GENERATION_SETTINGS = frozenset(
    {
        "suppress_tokens", "max_length", "max_new_tokens", "use_cache", "bos_token_id", "eos_token_id",
        "pad_token_id", "decoder_start_token_id", "transformers_version", "_from_model_config",
    }
)  # fmt: skip


def own_generation_settings(config: GenerationConfig | None) -> dict[str, Any]:
    """The settings of `config` that are neither derived nor transformers' defaults (a loaded config holds the
    defaults explicitly where a new one leaves them None)."""
    if config is None:
        return {}
    defaults = GenerationConfig._get_default_generation_params()
    return {
        k: v
        for k, v in config.to_diff_dict().items()
        if k not in DERIVED_GENERATION_SETTINGS and v is not None and not (k in defaults and v == defaults[k])
    }


def gloss_tokens(tokenizer: JslTokenizer) -> list[str]:
    """Target-side tokens of the vocabulary: `<...>` glosses (the corpus convention) other than the specials."""
    specials = set(tokenizer.all_special_tokens)
    return [
        t
        for t in tokenizer.get_vocab()
        if t.startswith("<") and t.endswith(">") and len(t) > 2 and t not in specials
    ]


def log_output_bound_misses(model, tokenized) -> None:
    """Say how many training glosses are longer than the saved output bound lets generation produce."""
    if model.config.output_length_ratio is None:
        return
    sources = tokenized["input_ids"]
    input_ids = torch.full((len(sources), max(map(len, sources))), model.config.pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(sources):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    bounds = output_length_limits(model.config, input_ids, attention_mask).tolist()
    skipped = (-100, model.config.eos_token_id)
    misses = sum(
        len([i for i in labels if i not in skipped]) > bound
        for labels, bound in zip(tokenized["labels"], bounds, strict=True)
    )
    if misses:
        log(
            f"{misses} training glosses are longer than --output_length_ratio {model.config.output_length_ratio} x "
            f"their characters + {model.config.output_length_slack}: generation would cut them; raise the ratio"
        )


def encode_pairs(tokenizer: JslTokenizer, japanese, glosses, max_target_length: int) -> dict[str, Any]:
    """`input_ids`, `attention_mask` and `labels` of one pair (strings) or of a batch (lists of strings)."""
    encoded = tokenizer(japanese, truncation=True, max_length=tokenizer.model_max_length)
    labels = tokenizer(text_target=glosses, truncation=True, max_length=max_target_length)
    return {**encoded, "labels": labels["input_ids"]}


def tokenize_pairs(splits, tokenizer: JslTokenizer, max_target_length: int):
    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        return encode_pairs(tokenizer, batch["ja"], batch["gloss"], max_target_length)

    too_long = sum(len(target_tokens(g)) + 1 > max_target_length for g in splits["train"]["gloss"])
    if too_long:
        log(f"{too_long} training glosses exceed --max_target_length {max_target_length} and are truncated")
    return splits.map(encode, batched=True, remove_columns=["ja", "gloss"])


class RespelledPairs(torch.utils.data.Dataset):
    """Training pairs, tokenized on the fly, whose fingerspelled words are redrawn (`corpus.respell`) for
    `rate` of the pairs each epoch: a name seen 40 times is 40 different names, so the model learns to spell
    rather than memorise. The draw depends on (seed, epoch, index) only, so a resumed run sees the same data."""

    def __init__(
        self, train, tokenizer: JslTokenizer, max_target_length: int, rate: float, seed: int
    ) -> None:
        self.pairs = list(zip(train["ja"], train["gloss"], strict=True))
        self.tokenizer = tokenizer
        self.max_target_length = max_target_length
        self.rate = rate
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        japanese, gloss = self.pairs[index]
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        if rng.random() < self.rate:
            japanese, gloss = respell(japanese, gloss, rng)
        return encode_pairs(self.tokenizer, japanese, gloss, self.max_target_length)


class EpochCallback(TrainerCallback):
    """Tells a `RespelledPairs` training set which epoch starts."""

    def __init__(self, dataset: RespelledPairs) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(round(state.epoch or 0)))


# --- device, metrics, trainer -------------------------------------------------------------------------------


def decide_device_and_precision(
    args: JslArguments, training_args: Seq2SeqTrainingArguments, model: torch.nn.Module | None = None
):
    """Resolve --device/--precision into Trainer flags (use_cpu, bf16, fp16); returns (new args, decision).
    On CPU, `model` (when given) gets the CPU training set-up of `hftune.training.cpu`."""

    info = hardware.detect_hardware()
    device = hardware.resolve_device(args.device, info)
    requested = args.precision
    if device == "cpu" and requested == "auto":
        requested = "fp32"  # bf16 autocast measured 1.4x slower per step for this model size on CPU
    decision = hardware.decide_precision(
        info, requested, model_type=JslSeq2SeqConfig.model_type, device=device
    )
    log(decision.summary())
    os.environ["ACCELERATE_MIXED_PRECISION"] = {"fp32": "no"}.get(decision.precision, decision.precision)
    if device == "cpu":
        log(f"CPU training: {prepare_cpu_training(model)}")
    overrides = dict(decision.trainer_kwargs)
    if "wer" in (training_args.metric_for_best_model or ""):
        overrides["greater_is_better"] = False  # Trainer assumes bigger is better for every non-loss metric
    return dataclasses.replace(training_args, **overrides), decision


class GlossScorer:
    """`compute_metrics` for generated gloss ids against the reference strings of the split being scored
    (the originals, so a reference gloss unknown to the tokenizer still counts as an error)."""

    def __init__(self, tokenizer: JslTokenizer, references: list[str]) -> None:
        self.tokenizer = tokenizer
        self.references = references
        self.predictions: list[str] = []

    def __call__(self, prediction) -> dict[str, float]:

        ids = (
            prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        )
        ids = np.where(ids < 0, self.tokenizer.pad_token_id, ids)
        self.predictions = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return gloss_metrics(self.predictions, self.references)


def normalised_references(split) -> list[str]:
    return [" ".join(target_tokens(gloss)) for gloss in split["gloss"]]


def unseen_fingerspelling_metrics(references: list[str], predictions: list[str]) -> dict[str, float]:
    """Of the sentences whose reference spells a held-out name or loanword (never in train), the share whose
    prediction spells every fingerspelled word of the reference exactly (same runs, same order)."""
    held_out = held_out_spellings()
    scored = [
        fingerspelled_runs(pred) == fingerspelled_runs(ref)
        for ref, pred in zip(references, predictions, strict=True)
        if any(seq in run for run in fingerspelled_runs(ref) for seq in held_out)
    ]
    if not scored:
        return {}
    return {
        "unseen_fingerspelling_exact": sum(scored) / len(scored),
        "unseen_fingerspelling_sentences": len(scored),
    }


def score_natural_split(trainer, scorer: GlossScorer, splits, tokenized) -> dict[str, Any] | None:
    """The shipped corpus's hand-written `natural` split, scored like the test split: a results.json
    `evaluations` entry (its own row in the leaderboard and the card's model-index), or None without it."""
    if "natural" not in splits:
        return None
    scorer.references = normalised_references(splits["natural"])
    prediction = trainer.predict(tokenized["natural"], metric_key_prefix="natural")
    timing = ("runtime", "samples_per_second", "steps_per_second", "loss")
    metrics = {
        k.removeprefix("natural_"): float(v) for k, v in prediction.metrics.items() if not k.endswith(timing)
    }
    log("natural: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    predictions = [
        {"ja": ja, "reference": ref, "prediction": pred}
        for ja, ref, pred in zip(splits["natural"]["ja"], scorer.references, scorer.predictions, strict=True)
    ]
    return {
        "dataset": CORPUS_NAME,
        "split": "natural",
        "num_examples": len(splits["natural"]),
        "metrics": metrics,
        "predictions": predictions,
    }


class JslSeq2SeqTrainer(AtomicCheckpointTrainer, Seq2SeqTrainer):
    """Seq2SeqTrainer (evaluation by generation) with hftune's atomic checkpoints."""

    def _issue_warnings_after_load(self, load_result) -> None:
        # lm_head.weight is the embedding Parameter itself (tied), so checkpoints never hold it on its own:
        # "missing keys: ['lm_head.weight']" when the best checkpoint is loaded is not a problem.
        tied = set(self.model._tied_weights_keys or {})
        load_result.missing_keys[:] = [key for key in load_result.missing_keys if key not in tied]
        super()._issue_warnings_after_load(load_result)


# --- reports ----------------------------------------------------------------------------------------------


def parameter_statistics(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    stats = {}
    for name, param in model.named_parameters():
        values = param.detach().float()
        stats[name] = {
            "shape": list(values.shape),
            "mean": values.mean().item(),
            "std": values.std().item() if values.numel() > 1 else 0.0,
            "min": values.min().item(),
            "max": values.max().item(),
        }
    return stats


def git_commit() -> str | None:
    """The commit of the hftune source tree, if it is a git checkout (best effort: None otherwise)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
            text=True, timeout=5, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def _hyperparameters(
    args: JslArguments, training_args: Seq2SeqTrainingArguments, config: JslSeq2SeqConfig
) -> dict[str, Any]:
    model_size = {
        name: getattr(config, name)
        for name in (
            *SHAPE_FLAGS, "dropout", "attention_dropout", "label_smoothing", "max_source_length", "max_target_length",
        )
    }  # fmt: skip
    return {
        # the preset a new model was built from (a continued model keeps its parent's shape)
        "model_size": None if args.model_name_or_path else args.model_size or "tiny",
        **model_size,
        **trainer_hyperparameters(training_args),
        "optimizer": getattr(training_args.optim, "value", training_args.optim),
        "metric_for_best_model": training_args.metric_for_best_model,
        "generation_num_beams": training_args.generation_num_beams or 1,
        # what the model trained on: generator builds (the shipped corpus only), respelling, batch order
        "corpus_builds": None if args.train_file else args.corpus_builds,
        "respelling_rate": args.respelling_rate,
        "train_sampling_strategy": training_args.train_sampling_strategy,
    }


# --- the run ----------------------------------------------------------------------------------------------


def run_jsl_training(
    model: JslSeq2SeqForConditionalGeneration,
    tokenizer: JslTokenizer,
    splits,
    training_args: Seq2SeqTrainingArguments,
    args: JslArguments,
    *,
    decision,
    dataset_name: str,
    final_split: str,
    continuation=None,
) -> dict[str, Any]:
    """Train, keep the best epoch, score `final_split`, save the folder; returns the results dict.

    `continuation` (a `hftune.jsl.continuation.Continuation`) marks a run continued from a saved model: its
    provenance and before/after scores go into results.json, config.json and the card."""
    method = "continued" if continuation is not None else "scratch"
    if not training_args.predict_with_generate:
        raise HftuneError("--predict_with_generate False would score teacher-forced logits; keep it True")
    if args.export_weights:
        check_weight_name(model, args.export_weights)  # before training, not after it
    with claim_run(training_args.output_dir) as run:
        tokenized = tokenize_pairs(splits, tokenizer, args.max_target_length)
        log_output_bound_misses(model, tokenized["train"])
        scorer = GlossScorer(tokenizer, normalised_references(splits["validation"]))
        memory = MemoryCallback()
        train_dataset, callbacks = tokenized["train"], [memory]
        if respells(splits["train"], args) and tokenizer.unknown_symbols([spelling_alphabet()]):
            log("respelling off: the vocabulary lacks kana that new fingerspelled words would use")
        elif respells(splits["train"], args):
            train_dataset = RespelledPairs(
                splits["train"], tokenizer, args.max_target_length, args.respelling_rate, training_args.seed
            )
            callbacks.append(EpochCallback(train_dataset))
            log(
                f"respelling: each epoch {args.respelling_rate:.0%} of the training pairs get new fingerspelled words"
            )
        if continuation is not None:
            callbacks += continuation.callbacks(model)
        trainer = JslSeq2SeqTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=tokenized["validation"],
            processing_class=tokenizer,
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
            compute_metrics=scorer,
            callbacks=callbacks,
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log(
            f"{method}: {total:,} parameters, vocabulary {len(tokenizer)}, {len(train_dataset)} training pairs"
        )
        run.training_started()
        started = time.perf_counter()
        train_output = trainer.train(resume_from_checkpoint=run.resume_from)
        train_seconds = time.perf_counter() - started
        # Trainer copies TrainingArguments.use_cache into config.use_cache (False if a user turns it off for
        # training); generation and the saved config/generation_config always want the KV cache on.
        model.config.use_cache = True
        model.generation_config.use_cache = True

        validation_metrics = trainer.evaluate(metric_key_prefix="eval")
        scorer.references = normalised_references(splits[final_split])
        prediction = trainer.predict(tokenized[final_split], metric_key_prefix=final_split)
        timing = ("runtime", "samples_per_second", "steps_per_second", "loss")
        final_metrics = {
            k.removeprefix(f"{final_split}_"): float(v)
            for k, v in prediction.metrics.items()
            if not k.endswith(timing)
        }
        spelling = {}
        if dataset_name == CORPUS_NAME:
            spelling = unseen_fingerspelling_metrics(scorer.references, scorer.predictions)
            if spelling:  # the share is a metric (model-index); how many sentences it counts is not
                final_metrics["unseen_fingerspelling_exact"] = spelling["unseen_fingerspelling_exact"]
        final_predictions = list(scorer.predictions)
        final_references = list(scorer.references)
        natural = score_natural_split(trainer, scorer, splits, tokenized) if final_split == "test" else None
        if not trainer.is_world_process_zero():
            return final_metrics
        log(f"{final_split}: " + ", ".join(f"{k} {v:.4f}" for k, v in final_metrics.items()))

        model = trainer.model.eval()
        set_generation_config(model, tokenizer, for_trainer=False)
        speed = measure_generation_speed(model, tokenizer, splits[final_split]["ja"])
        continued = continuation.record_fields(model, tokenizer) if continuation is not None else {}
        record = RunRecord(
            task="jsl-seq2seq",
            method=method,
            artifact="remote-code",
            dataset=dataset_name,
            language=["ja"],
            metrics=final_metrics,
            eval_split=final_split,
            validation_metrics={
                k.removeprefix("eval_"): float(v)
                for k, v in validation_metrics.items()
                if not k.endswith(("runtime", "samples_per_second", "steps_per_second"))
            },
            split_sizes={name: len(split) for name, split in splits.items()},
            vocabulary_size=len(tokenizer),
            **training_facts(
                trainable=trainable,
                total=total,
                train_seconds=train_seconds,
                samples_per_second=train_output.metrics.get("train_samples_per_second"),
                peak_memory_mb=memory.peak_mb,
                seed=training_args.seed,
                decision=decision,
                resume_from=run.resume_from,
            ),
            best_checkpoint_metric=trainer.state.best_metric,
            hyperparameters=_hyperparameters(args, training_args, model.config),
            # The decoding the scores were made with (Seq2SeqTrainer's greedy search up to max_target_length):
            # `hftune evaluate` decodes the same way.
            generation={
                "num_beams": training_args.generation_num_beams or 1,
                "max_new_tokens": model.config.max_target_length,
            },
            generation_speed=speed,
            # the leaderboard's column (4 decimals: batched, it is well under a millisecond per sentence),
            # measured as the instruction-tuning recipe does: batched greedy
            # generation over the held-out split, wall time per sentence
            generation_latency_ms=round(1000 / speed["batched_greedy_sentences_per_second"], 4),
            log_history=trainer.state.log_history,
            evaluations=[{k: v for k, v in natural.items() if k != "predictions"}] if natural else [],
            extra={"unseen_fingerspelling_sentences": spelling["unseen_fingerspelling_sentences"]}
            if spelling
            else {},
            **continued,
        )
        metadata = {
            "seed": training_args.seed,
            "git_commit": git_commit(),
            "dataset": dataset_name,
            "recipe": "jsl_seq2seq",
            "device": decision.device,
            "precision": decision.precision,
        }
        if continuation is not None:
            metadata["base_model"] = continuation.parent.provenance()
        metrics_file = {
            "training_curve": trainer.state.log_history,
            "parameter_statistics": parameter_statistics(model),
        }
        predictions = [
            {"ja": ja, "reference": ref, "prediction": pred}
            for ja, ref, pred in zip(
                splits[final_split]["ja"], final_references, final_predictions, strict=True
            )
        ]

        def write_artifacts(folder: Path) -> None:
            write_jsl_folder(model, tokenizer, folder, metadata)
            (folder / "metrics.json").write_text(
                json.dumps(metrics_file, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
            )
            (folder / f"{final_split}_predictions.jsonl").write_text(
                "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in predictions), encoding="utf-8"
            )
            if natural:
                (folder / "natural_predictions.jsonl").write_text(
                    "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in natural["predictions"]),
                    encoding="utf-8",
                )
            if args.export_attentions:
                files = export_attentions(
                    model, tokenizer, args.attention_inputs, folder / "attentions", args.attention_max_length
                )
                log(f"attention maps: {len(files)} files in attentions/")
            if args.export_weights:
                path = export_weights(model, args.export_weights, folder / "weights")
                log(f"weights: {path.relative_to(folder)}")

        def make_plots(folder: Path) -> list[Path | None]:
            return [
                plot_training_curves(trainer.state.log_history, folder / "training_curves.png", "exact_match")
            ]

        save_run(run.output_dir, record, write_artifacts=write_artifacts, make_plots=make_plots)
    log(f'saved to {run.output_dir}; translate with: hftune translate --model {run.output_dir} "ありがとう"')
    return record.to_dict()
