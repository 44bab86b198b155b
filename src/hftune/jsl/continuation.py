"""Continue training a saved JSL model (`recipes/jsl_seq2seq.py --model_name_or_path DIR_OR_REPO_ID`).

The story: resolve the parent (a folder, or a Hub repo id through the HF cache) -> refuse shape flags that
contradict its config -> load its weights, tokenizer and generation settings -> optionally mix replayed pairs of
the shipped corpus into the new training pairs -> score the parent on the new validation pairs and on the corpus's
test split ("before") -> append the characters and glosses it does not know to its vocabulary and grow the
embeddings -> (train) -> score again ("after"). Resuming an interrupted run is another thing: checkpoints in
`output_dir`, picked up by `claim_run` whether the run started from scratch or from a parent.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from hftune.config.checks import read_json
from hftune.errors import HftuneError
from hftune.jsl.artifacts import check_jsl_folder, load_jsl_model, resolve_model_folder
from hftune.jsl.corpus import CORPUS_NAME, load_jsl_corpus
from hftune.jsl.modeling_jsl import JslSeq2SeqForConditionalGeneration
from hftune.jsl.tokenization_jsl import JslTokenizer
from hftune.jsl.train import (
    MODEL_SIZES,
    SHAPE_FLAGS,
    JslArguments,
    normalised_references,
    set_generation_config,
    spelling_sources,
)
from hftune.jsl.translate import translate
from hftune.metrics import gloss_metrics
from hftune.models import resolve_model_name
from hftune.runtime import log

FLAG = "--model_name_or_path"
# How many unknown symbols a --freeze_vocabulary refusal lists.
LISTED_SYMBOLS = 10


@dataclass
class Parent:
    """The saved model a run continues from, and where it came from."""

    name: str  # as given: a folder or a Hub repo id
    folder: Path  # where its files are (a Hub snapshot in the HF cache for a repo id)
    revision: str | None  # the Hub commit of that snapshot; None for a local folder
    vocab_hash: str
    dataset: str | None  # what it was trained on, as its config records it
    model: JslSeq2SeqForConditionalGeneration
    tokenizer: JslTokenizer

    def provenance(self) -> dict[str, Any]:
        """What the new folder's config.json records about its parent."""
        return {
            "name_or_path": self.name if self.revision else str(self.folder.resolve()),
            "revision": self.revision,
            "vocab_hash": self.vocab_hash,
        }


@dataclass
class Continuation:
    """A continued run: its parent, the symbols added to the vocabulary, and the before/after scores."""

    parent: Parent
    added_symbols: list[str]
    eval_sets: dict[str, Any]  # name -> Dataset with `ja` and `gloss`
    before: dict[str, dict[str, float]]  # the parent's scores on eval_sets
    first_new_id: int  # the parent's vocabulary size: ids from here on are the added symbols
    parent_lr_ratio: float

    def callbacks(self, model) -> list[TrainerCallback]:
        """Trainer callbacks of the continued run: the slower updates of the parent's weights, if asked for."""
        if self.parent_lr_ratio == 1.0:
            return []
        return [ParentUpdateScale(model, self.first_new_id, self.parent_lr_ratio)]

    def scores(self, model, tokenizer: JslTokenizer) -> dict[str, dict[str, dict[str, float]]]:
        """{set: {"before": ..., "after": ...}} with `model` as trained; logged as gained/lost exact match."""
        after = score_sets(model, tokenizer, self.eval_sets)
        for name, metrics in after.items():
            log(
                f"{name}: exact match {self.before[name]['exact_match']:.4f} before, "
                f"{metrics['exact_match']:.4f} after"
            )
        return {name: {"before": self.before[name], "after": after[name]} for name in after}

    def record_fields(self, model, tokenizer: JslTokenizer) -> dict[str, Any]:
        """The results.json fields of a continued run."""
        provenance = self.parent.provenance()
        return {
            "base_model": provenance["name_or_path"],
            "base_model_path": str(self.parent.folder),
            "base_model_revision": self.parent.revision,
            "base_model_vocab_hash": self.parent.vocab_hash,
            "vocabulary_added": list(self.added_symbols),
            "continuation_scores": self.scores(model, tokenizer),
        }


class ParentUpdateScale(TrainerCallback):
    """Scales every optimizer update of the parent's weights by `ratio`; the embedding rows of symbols new to the
    vocabulary (ids from `first_new_id`) take the whole update. New words are learnt at the full learning rate
    while what the parent knew moves slowly. Scaling the update, not the gradient: Adam's step does not depend
    on the gradient's scale, so only this slows it down."""

    def __init__(self, model: torch.nn.Module, first_new_id: int, ratio: float) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.embedding = model.get_input_embeddings().weight
        self.first_new_id = first_new_id
        self.ratio = ratio
        self.before: list[torch.Tensor] = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.before = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, **kwargs):
        for param, before in zip(self.params, self.before, strict=True):
            new_rows = param[self.first_new_id :].clone() if param is self.embedding else None
            param.lerp_(before, 1.0 - self.ratio)  # before + ratio * (after - before)
            if new_rows is not None:
                param[self.first_new_id :] = new_rows
        self.before = []


def check_shape_flags(args: JslArguments, config: dict[str, Any], name: str) -> None:
    """Refuse --model_size and shape flags whose values differ from the loaded model's, naming both values."""
    preset = MODEL_SIZES[args.model_size] if args.model_size else {}
    for flag in SHAPE_FLAGS:
        wanted, have = getattr(args, flag), config.get(flag)
        if wanted is not None and wanted != have:
            raise HftuneError(
                f"--{flag} {wanted} contradicts {flag} {have} of the model loaded from {FLAG} {name}; leave "
                f"--{flag} out to continue with its shape, or leave {FLAG} out to train a new model"
            )
        if wanted is None and flag in preset and preset[flag] != have:
            raise HftuneError(
                f"--model_size {args.model_size} sets {flag} {preset[flag]}, which contradicts {flag} {have} of "
                f"the model loaded from {FLAG} {name}; leave --model_size out to continue with its shape"
            )


def load_parent(args: JslArguments, output_dir: str) -> Parent:
    """Resolve and load `--model_name_or_path` (offline from the HF cache like every other model argument),
    after refusing shape flags that contradict it; training settings (dropout, label smoothing, lengths)
    come from the flags."""
    name = str(args.model_name_or_path)
    resolved = resolve_model_name(name, name, FLAG)
    folder = resolve_model_folder(resolved, FLAG)
    revision = None if Path(resolved).is_dir() else folder.name  # snapshots/<commit> in the HF cache
    if folder.resolve() == Path(output_dir).resolve():
        raise HftuneError(
            f"{FLAG} {name} is also --output_dir; save the continued model to a new folder (the parent stays "
            "as it is)"
        )
    check_jsl_folder(folder, name, FLAG)
    config = read_json(folder / "config.json")
    check_shape_flags(args, config, name)
    model, tokenizer = load_jsl_model(
        folder,
        flag=FLAG,
        dropout=args.dropout,
        attention_dropout=args.attention_dropout,
        label_smoothing=args.label_smoothing,
        max_source_length=args.max_source_length,
        max_target_length=args.max_target_length,
    )
    tokenizer.model_max_length = args.max_source_length
    dataset = (config.get("training_metadata") or {}).get("dataset")
    log(
        f"continuing {name}" + (f" at revision {revision}" if revision else "") + f" (trained on {dataset}, "
        f"vocabulary {len(tokenizer)}, vocab hash {tokenizer.vocab_hash()[:12]})"
    )
    return Parent(name, folder, revision, tokenizer.vocab_hash(), dataset, model, tokenizer)


def add_replay_pairs(splits, args: JslArguments, parent: Parent, seed: int):
    """Mix `--replay_ratio` of the shipped corpus's training pairs (a seeded sample) into `splits["train"]`."""
    from datasets import concatenate_datasets

    if not args.replay_ratio:
        return splits
    if args.train_file is None:
        raise HftuneError(
            f"--replay_ratio {args.replay_ratio} replays the shipped corpus, which is already the training data "
            "without --train_file; pass your new pairs with --train_file, or leave --replay_ratio out"
        )
    if parent.dataset not in (None, CORPUS_NAME):
        raise HftuneError(
            f"--replay_ratio replays {CORPUS_NAME}, but {FLAG} {parent.name} was trained on {parent.dataset}; "
            "add its original pairs to --train_file instead"
        )
    original = load_jsl_corpus("train").select_columns(["ja", "gloss"])
    count = round(args.replay_ratio * len(original))
    replay = original.shuffle(seed=seed).select(range(count))
    log(f"replay: {count} of the {len(original)} training pairs of {CORPUS_NAME} mixed into the new pairs")
    splits["train"] = concatenate_datasets([splits["train"], replay])
    return splits


def symbol_lines(symbols: list[str], train_file: str | None, pairs: list[tuple[str, str]]) -> list[str]:
    """`symbol (FILE line N)` for each symbol: the first line of the training file holding it (NFKC-folded as the
    tokenizer reads it), else its first training pair."""
    lines = []
    if train_file:
        text = Path(train_file).read_text(encoding="utf-8-sig")
        lines = [unicodedata.normalize("NFKC", line) for line in text.splitlines()]
    where = []
    for symbol in symbols:
        line = next((number for number, line in enumerate(lines, 1) if symbol in line), None)
        if line is not None:
            where.append(f"{symbol} ({Path(str(train_file)).name} line {line})")
            continue
        pair = next(
            (
                n
                for n, (ja, gloss) in enumerate(pairs, 1)
                if symbol in unicodedata.normalize("NFKC", ja + gloss)
            ),
            None,
        )
        where.append(f"{symbol} (training pair {pair})")
    return where


def score_sets(model, tokenizer: JslTokenizer, eval_sets: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Greedy generation scored against each set's references (gloss WER, BLEU, chrF, exact match)."""
    model.eval()
    return {
        name: {k: float(v) for k, v in gloss_metrics(
            translate(list(split["ja"]), model, tokenizer), normalised_references(split)
        ).items()}
        for name, split in eval_sets.items()
    }  # fmt: skip


def start_continuation(parent: Parent, splits, args: JslArguments) -> Continuation:
    """Score the parent, then add the training pairs' unknown characters and glosses to its vocabulary (or refuse
    them under --freeze_vocabulary) and grow its embeddings."""
    if not 0.0 <= args.parent_lr_ratio <= 1.0:
        raise HftuneError(
            f"--parent_lr_ratio {args.parent_lr_ratio} must be between 0 and 1: 1 trains every weight at "
            "--learning_rate, 0.03 trains the loaded weights at 3% of the new symbols' rate"
        )
    pairs = list(zip(splits["train"]["ja"], splits["train"]["gloss"], strict=True))
    symbols = parent.tokenizer.unknown_symbols(pairs)
    if symbols and args.freeze_vocabulary:
        listed = symbol_lines(symbols[:LISTED_SYMBOLS], args.train_file, pairs)
        raise HftuneError(
            f"--freeze_vocabulary: {len(symbols)} characters/glosses of the training pairs are not in the vocabulary "
            f"of {parent.name}: {', '.join(listed)}{' ...' if len(symbols) > LISTED_SYMBOLS else ''}; leave "
            "--freeze_vocabulary out to add them, or remove those pairs"
        )
    eval_sets = {"validation": splits["validation"]}
    if parent.dataset == CORPUS_NAME:
        test = load_jsl_corpus("test")
        if args.max_eval_samples is not None:
            test = test.select(range(min(args.max_eval_samples, len(test))))
        eval_sets["original_test"] = test
    else:
        log(f"{parent.name} was not trained on {CORPUS_NAME}: no before/after score on its test split")
    before = score_sets(parent.model, parent.tokenizer, eval_sets)

    first_new_id = len(parent.tokenizer)
    added = parent.tokenizer.add_symbols(symbols)
    if added:
        grow_embeddings(parent.model, len(parent.tokenizer))
        # A new <指:ヴ> or ゔ joins the spelling budget and the copy head.
        if parent.model.config.spelling_sources:
            parent.model.config.spelling_sources = spelling_sources(parent.tokenizer)
        shown = ", ".join(added[:LISTED_SYMBOLS]) + (" ..." if len(added) > LISTED_SYMBOLS else "")
        log(
            f"vocabulary: {len(added)} new characters/glosses appended ({shown}); now {len(parent.tokenizer)}"
        )
        if args.parent_lr_ratio == 1.0:
            log(
                "new symbols learn slowly at the parent's learning rate and a higher one makes it forget: "
                "--learning_rate 1e-2 --parent_lr_ratio 0.03 trains the new rows at 1e-2 and the rest at 3e-4"
            )
    set_generation_config(parent.model, parent.tokenizer, for_trainer=True)
    return Continuation(parent, added, eval_sets, before, first_new_id, args.parent_lr_ratio)


@torch.no_grad()
def grow_embeddings(model: JslSeq2SeqForConditionalGeneration, vocab_size: int) -> None:
    """Resize the token embeddings (and the output layer, tied or not) to `vocab_size`; the new rows start at the
    mean of the old rows, so a new symbol begins as an average one rather than noise."""
    old_size = model.get_input_embeddings().weight.shape[0]
    old_means = [
        layer.weight.mean(dim=0).clone()
        for layer in (model.get_input_embeddings(), model.get_output_embeddings())
    ]
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    for layer, mean in zip(
        (model.get_input_embeddings(), model.get_output_embeddings()), old_means, strict=True
    ):
        layer.weight[old_size:] = mean
    model.config.vocab_size = vocab_size
