"""Export a saved JSL model to ONNX for onnxruntime in Python, Node and the browser: `hftune export onnx`.

    hftune export onnx outputs/jsl_seq2seq                      # adds outputs/jsl_seq2seq/onnx/
    hftune export onnx org/jsl-seq2seq --output jsl-web         # a Hub repo: a full copy + onnx/ in jsl-web/

Three graphs under optimum's names, each with its weights inside the file (onnxruntime-web cannot fetch a
separate `.onnx.data` file from a URL):

- `onnx/encoder_model.onnx`: input_ids, attention_mask -> last_hidden_state
- `onnx/decoder_model.onnx`: the first decoding step: encoder_attention_mask, input_ids (the start token),
  encoder_hidden_states -> logits, present.{i}.decoder.key/value, present.{i}.encoder.key/value
- `onnx/decoder_with_past_model.onnx`: every later step: encoder_attention_mask, input_ids (the last token),
  past_key_values.{i}.decoder.key/value, past_key_values.{i}.encoder.key/value -> logits,
  present.{i}.decoder.key/value (the cross-attention keys/values never change, so they are not returned)

plus `onnx/web_config.json`, everything a client needs besides the graphs: the vocabulary in id order, the
special ids, the generation settings (greedy, `max_new_tokens`, `suppress_tokens`), the longest input, and each
graph's size and sha256. Before anything is written into place the export is checked: greedy tokens from
onnxruntime must equal PyTorch `generate()`'s on every sentence of the corpus's test split, with logits within
1e-4; a mismatch fails naming the first differing sentence. Everything is written into a staging folder and
renamed into place, so a failed export never leaves a half-written `onnx/` behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

import hftune
from hftune.errors import HftuneError
from hftune.jsl.artifacts import load_jsl_model, resolve_model_folder
from hftune.jsl.corpus import load_jsl_corpus
from hftune.reporting.cards import build_model_card, validate_card
from hftune.runtime import warn

ONNX_DIR = "onnx"
ENCODER_FILE = "encoder_model.onnx"
DECODER_FILE = "decoder_model.onnx"
DECODER_WITH_PAST_FILE = "decoder_with_past_model.onnx"
WEB_CONFIG_FILE = "web_config.json"
GRAPH_FILES = {"encoder": ENCODER_FILE, "decoder": DECODER_FILE, "decoder_with_past": DECODER_WITH_PAST_FILE}
FORMAT_VERSION = 1
# Opset 20 has a fused Gelu; onnxruntime 1.32 (Python) and onnxruntime-node/-web 1.31 run it.
OPSET = 20
# Encoder outputs of a model with a spelling copy head (config.spelling_copy) that both decoders take as inputs.
COPY_INPUTS = ("copy_keys", "copy_map")
LOGITS_ATOL = 1e-4
VALIDATION_BATCH_SIZE = 64
# Folders of the source model that are not part of a published model (see hftune.hub).
_SKIPPED_COPY = shutil.ignore_patterns(ONNX_DIR, "checkpoint-*", ".*", "__pycache__")


# -- graphs ---------------------------------------------------------------------------------------------------


def _layer_names(prefix: str, layers: int, sides: Sequence[str]) -> list[str]:
    return [
        f"{prefix}.{i}.{side}.{kind}" for i in range(layers) for side in sides for kind in ("key", "value")
    ]


class EncoderGraph(nn.Module):
    """input_ids, attention_mask -> the encoder's last hidden state; for a model with a spelling copy head
    (`config.spelling_copy`) also the copy keys and copy map, which every decoding step reads."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        output = self.model.encoder(input_ids, attention_mask=attention_mask)
        if output.copy_keys is None:
            return output.last_hidden_state
        return output.last_hidden_state, output.copy_keys, output.copy_map


def _step_logits(
    model: nn.Module, hidden: torch.Tensor, embeds: torch.Tensor, copy_keys, copy_map
) -> torch.Tensor:
    """The decoder's output scores, with the copy head's when the model has one (as its forward does)."""
    logits = model.lm_head(hidden)
    if copy_keys is None:
        return logits
    return model.add_copy_scores(logits, hidden, embeds, copy_keys, copy_map)


class FirstStepDecoderGraph(nn.Module):
    """The first decoding step from an empty cache: logits and every layer's self- and cross-attention K/V."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        encoder_attention_mask: torch.Tensor,
        input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        copy_keys: torch.Tensor | None = None,
        copy_map: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        model = self.model
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        embeds = model.encoder.embed_tokens(input_ids) * model.encoder.embed_scale
        output = model.decoder(
            embeds,
            encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=cache,
        )
        present = []
        for index in range(model.config.decoder_layers):
            for layers in (cache.self_attention_cache.layers, cache.cross_attention_cache.layers):
                present += [layers[index].keys, layers[index].values]
        return (_step_logits(model, output.last_hidden_state, embeds, copy_keys, copy_map), *present)


class CachedStepDecoderGraph(nn.Module):
    """A later decoding step: the cache is rebuilt from flat tensors (the layout of `present` above) and the
    cross-attention K/V are marked as computed, so the encoder output itself is not needed."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        encoder_attention_mask: torch.Tensor,
        input_ids: torch.Tensor,
        past: tuple[torch.Tensor, ...],
        copy_keys: torch.Tensor | None = None,
        copy_map: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        model = self.model
        layers = model.config.decoder_layers
        cache = EncoderDecoderCache(
            DynamicCache(ddp_cache_data=[(past[4 * i], past[4 * i + 1]) for i in range(layers)]),
            DynamicCache(ddp_cache_data=[(past[4 * i + 2], past[4 * i + 3]) for i in range(layers)]),
        )
        for index in range(layers):
            cache.is_updated[index] = True
        # Any tensor marks the cross-attention as such; its keys/values come from the cache.
        embeds = model.encoder.embed_tokens(input_ids) * model.encoder.embed_scale
        output = model.decoder(
            embeds,
            past[2],
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=cache,
        )
        present = []
        for layer in cache.self_attention_cache.layers:
            present += [layer.keys, layer.values]
        return (_step_logits(model, output.last_hidden_state, embeds, copy_keys, copy_map), *present)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs optional-op registrations (torchvision) and internal deprecation warnings."""
    logger = logging.getLogger("torch.onnx")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(previous)


def export_graphs(model: nn.Module, tokenizer, onnx_dir: Path) -> None:
    """Write the three graphs of `model` (in eval mode, on CPU, float32) into `onnx_dir`."""
    config = model.config
    layers, heads = config.decoder_layers, config.num_heads
    head_dim = config.d_model // heads
    # The decoder's position table, as long as the saved generation cap needs (it may exceed max_target_length),
    # built before tracing: the graphs then hold it as a constant.
    longest = max(model.generation_config.max_new_tokens or 0, config.max_target_length) + 2
    model.decoder.positions(0, longest, torch.float32, torch.device("cpu"))
    sample = tokenizer(["ありがとう", "わたしはたべます"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        model.generate(**sample, num_beams=1, do_sample=False, max_new_tokens=2)
    table_rows = model.decoder._position_table.shape[0]
    input_ids, attention_mask = sample["input_ids"], sample["attention_mask"]
    batch, source_len = input_ids.shape
    with torch.no_grad():
        encoded = model.encoder(input_ids, attention_mask=attention_mask)
    hidden = encoded.last_hidden_state
    # A copy head's keys and map go to both decoders as inputs, after the graphs' own (COPY_INPUTS).
    copy = () if encoded.copy_keys is None else (encoded.copy_keys, encoded.copy_map)
    start = torch.full((batch, 1), config.decoder_start_token_id, dtype=torch.long)
    past = []
    for _ in range(layers):
        past += [torch.randn(batch, heads, 3, head_dim) for _ in range(2)]
        past += [torch.randn(batch, heads, source_len, head_dim) for _ in range(2)]

    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    source_dim = torch.export.Dim("encoder_sequence_length", min=1, max=4096)
    # Positions come from the precomputed table: the cache may hold at most its rows - 1 tokens.
    past_dim = torch.export.Dim("past_sequence_length", min=1, max=table_rows - 1)
    mask_shape = {0: batch_dim, 1: source_dim}
    copy_names = list(COPY_INPUTS) if copy else []
    copy_shapes = (mask_shape, mask_shape) if copy else ()
    past_shapes = []
    for _ in range(layers):
        past_shapes += [{0: batch_dim, 2: past_dim}] * 2 + [{0: batch_dim, 2: source_dim}] * 2
    jobs = [
        (
            EncoderGraph(model), ENCODER_FILE, (input_ids, attention_mask), ["input_ids", "attention_mask"],
            ["last_hidden_state", *copy_names], (mask_shape, mask_shape),
        ),
        (
            FirstStepDecoderGraph(model), DECODER_FILE, (attention_mask, start, hidden, *copy),
            ["encoder_attention_mask", "input_ids", "encoder_hidden_states", *copy_names],
            ["logits", *_layer_names("present", layers, ("decoder", "encoder"))],
            (mask_shape, {0: batch_dim}, {0: batch_dim, 1: source_dim}, *copy_shapes),
        ),
        (
            CachedStepDecoderGraph(model), DECODER_WITH_PAST_FILE, (attention_mask, start, tuple(past), *copy),
            ["encoder_attention_mask", "input_ids", *_layer_names("past_key_values", layers, ("decoder", "encoder")),
             *copy_names],
            ["logits", *_layer_names("present", layers, ("decoder",))],
            (mask_shape, {0: batch_dim}, tuple(past_shapes), *copy_shapes),
        ),
    ]  # fmt: skip
    onnx_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_exporter():
        for graph, name, args, input_names, output_names, dynamic_shapes in jobs:
            torch.onnx.export(
                graph.eval(),
                args,
                str(onnx_dir / name),
                dynamo=True,
                external_data=False,
                opset_version=OPSET,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )


# -- settings and onnxruntime greedy decoding -----------------------------------------------------------------


def generation_settings(model: nn.Module, tokenizer) -> dict[str, Any]:
    """What a greedy decoder needs to reproduce `model.generate()` with the saved generation config."""
    generation = model.generation_config
    if generation.max_new_tokens is not None:
        max_new_tokens = int(generation.max_new_tokens)
    elif generation.max_length is not None:
        max_new_tokens = int(generation.max_length) - 1  # max_length counts the decoder start token
    else:
        max_new_tokens = int(model.config.max_target_length)
    config = model.config
    return {
        "pad_token_id": int(tokenizer.pad_token_id),
        "bos_token_id": int(tokenizer.bos_token_id),
        "eos_token_id": int(tokenizer.eos_token_id),
        "unk_token_id": int(tokenizer.unk_token_id),
        "decoder_start_token_id": int(config.decoder_start_token_id),
        "max_source_length": int(tokenizer.model_max_length),
        "max_new_tokens": max_new_tokens,
        "suppress_tokens": sorted(int(i) for i in (generation.suppress_tokens or [])),
        # generate()'s per-input bound (modeling_jsl.output_length_limits); null ratio: no bound
        "output_length_ratio": getattr(config, "output_length_ratio", None),
        "output_length_slack": int(getattr(config, "output_length_slack", 0) or 0),
        # ... in which a spelled kana counts one whole token (modeling_jsl.output_length_limits)
        "output_length_spelling": bool(getattr(config, "output_length_spelling", False)),
        # generate()'s spelling budget (modeling_jsl.SpellingBudget): [gloss id, source ids...]; empty: none
        "spelling_sources": [list(entry) for entry in getattr(config, "spelling_sources", None) or []],
        "decoder_layers": int(config.decoder_layers),
        "num_heads": int(config.num_heads),
        "head_dim": int(config.d_model // config.num_heads),
    }


def spelling_budgets(input_ids: np.ndarray, attention_mask: np.ndarray, settings: dict[str, Any]):
    """(gloss ids, (batch, glosses) counts of their source ids in each input), as `generate()` counts them; None
    without spelling sources."""
    sources = settings.get("spelling_sources") or []
    if not sources:
        return None
    glosses = np.array([entry[0] for entry in sources], dtype=np.int64)
    counts = np.stack(
        [(np.isin(input_ids, entry[1:]) & (attention_mask > 0)).sum(-1) for entry in sources], axis=1
    )
    return glosses, counts


def output_limits(
    input_ids: np.ndarray, attention_mask: np.ndarray, settings: dict[str, Any]
) -> np.ndarray | None:
    """Per row: floor(output_length_ratio * characters) + output_length_slack, with `output_length_spelling`
    floor(ratio * other characters) + spelled characters + slack, as `generate()` bounds it."""
    ratio = settings.get("output_length_ratio")
    if ratio is None:
        return None
    characters = np.maximum(attention_mask.sum(-1) - 1, 0).astype(np.float64)
    budgets = spelling_budgets(input_ids, attention_mask, settings)
    spelled = np.zeros_like(characters)
    if settings.get("output_length_spelling") and budgets is not None:
        spelled = budgets[1].sum(1).astype(np.float64)
    limits = np.floor((characters - spelled) * ratio) + spelled
    return limits.astype(np.int64) + int(settings["output_length_slack"])


class OnnxGreedyDecoder:
    """Greedy decoding with the three graphs in onnxruntime, step for step what `generate()` does: the start
    token, then the last token with the cache, suppressed tokens masked, finished rows fed `<pad>`, stop when
    every row has emitted `</s>` or after `max_new_tokens`."""

    def __init__(self, onnx_dir: Path, settings: dict[str, Any], threads: int = 1) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.sessions = {
            kind: onnxruntime.InferenceSession(
                str(onnx_dir / name), options, providers=["CPUExecutionProvider"]
            )
            for kind, name in GRAPH_FILES.items()
        }
        self.settings = settings

    def _run(self, kind: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[kind]
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (batch, steps), logits (batch, steps, vocab)) for int64 inputs of shape (batch, length)."""
        s = self.settings
        batch = input_ids.shape[0]
        hidden = self._run("encoder", {"input_ids": input_ids, "attention_mask": attention_mask})
        # A spelling copy head's keys and map: the encoder's extra outputs, fed to every decoding step.
        copy = {name: hidden[name] for name in COPY_INPUTS if name in hidden}
        start = np.full((batch, 1), s["decoder_start_token_id"], dtype=np.int64)
        outputs = self._run(
            "decoder",
            {
                "encoder_attention_mask": attention_mask,
                "input_ids": start,
                "encoder_hidden_states": hidden["last_hidden_state"],
                **copy,
            },
        )
        # The cross-attention K/V of the first step serve every later one; the self-attention K/V grow.
        cross = {
            name.replace("present", "past_key_values", 1): value
            for name, value in outputs.items()
            if ".encoder." in name
        }
        unfinished = np.ones(batch, dtype=bool)
        tokens, logits = [], []
        limits = output_limits(input_ids, attention_mask, s)
        budgets = spelling_budgets(input_ids, attention_mask, s)
        while True:
            step_logits = outputs["logits"][:, -1, :]
            logits.append(step_logits)
            scores = step_logits.copy()
            scores[:, s["suppress_tokens"]] = -np.inf
            if limits is not None:  # rows that hold their bound's number of tokens, or loop, must end
                full = limits <= len(tokens)
                if len(tokens) >= 6:  # modeling_jsl.periodic_tail
                    tail = np.stack(tokens[-6:], axis=1)
                    full |= (tail[:, 2:] == tail[:, :-2]).all(axis=1)
                scores[full] = -np.inf
                scores[full, s["eos_token_id"]] = 0.0
            if budgets is not None:  # glosses that have spent their input's kana
                glosses, counts = budgets
                used = np.zeros_like(counts)
                if tokens:
                    used = (np.stack(tokens, axis=1)[:, :, None] == glosses[None, None, :]).sum(1)
                rows, columns = np.nonzero(used >= counts)
                scores[rows, glosses[columns]] = -np.inf
            next_ids = np.where(unfinished, scores.argmax(-1), s["pad_token_id"]).astype(np.int64)
            tokens.append(next_ids)
            unfinished &= next_ids != s["eos_token_id"]
            if not unfinished.any() or len(tokens) == s["max_new_tokens"]:
                break
            feeds = {
                "encoder_attention_mask": attention_mask,
                "input_ids": next_ids[:, None],
                **cross,
                **copy,
            }
            for name, value in outputs.items():
                if ".decoder." in name:
                    feeds[name.replace("present", "past_key_values", 1)] = value
            outputs = self._run("decoder_with_past", feeds)
        return np.stack(tokens, axis=1), np.stack(logits, axis=1)


def _generated_length(tokens: Sequence[int], eos_token_id: int) -> int:
    """Steps a row really decoded: up to and including its `</s>` (later steps only feed `<pad>`)."""
    tokens = list(tokens)
    return tokens.index(eos_token_id) + 1 if eos_token_id in tokens else len(tokens)


def validate_onnx(
    model: nn.Module,
    tokenizer,
    onnx_dir: Path,
    texts: Sequence[str],
    batch_size: int = VALIDATION_BATCH_SIZE,
    atol: float = LOGITS_ATOL,
) -> dict[str, Any]:
    """Greedy tokens and logits of onnxruntime vs PyTorch `generate()` on `texts`, in batches.

    Raises HftuneError naming the first sentence (in `texts` order) whose tokens differ or whose logits differ
    by more than `atol`; returns what was checked and the largest logit difference."""
    settings = generation_settings(model, tokenizer)
    decoder = OnnxGreedyDecoder(onnx_dir, settings, threads=torch.get_num_threads())
    eos = settings["eos_token_id"]
    indexed = [(i, text) for i, text in enumerate(texts) if tokenizer.tokenize(text)]
    worst = 0.0
    for start in range(0, len(indexed), batch_size):
        chunk = indexed[start : start + batch_size]
        batch = tokenizer(
            [text for _, text in chunk], truncation=True, max_length=settings["max_source_length"],
            padding=True, return_tensors="pt",
        )  # fmt: skip
        with torch.inference_mode():
            reference = model.generate(
                **batch, num_beams=1, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
        torch_tokens = reference.sequences[:, 1:].numpy()
        torch_logits = torch.stack(reference.logits, dim=1).float().numpy()
        ort_tokens, ort_logits = decoder.generate(
            batch["input_ids"].numpy().astype(np.int64), batch["attention_mask"].numpy().astype(np.int64)
        )
        for row, (index, text) in enumerate(chunk):
            expected = torch_tokens[row, : _generated_length(torch_tokens[row], eos)].tolist()
            got = ort_tokens[row, : _generated_length(ort_tokens[row], eos)].tolist()
            if got != expected:
                raise HftuneError(
                    f"the ONNX export does not reproduce PyTorch on sentence {index + 1} {text!r}: PyTorch gives "
                    f"{tokenizer.decode(expected, skip_special_tokens=True)!r}, onnxruntime "
                    f"{tokenizer.decode(got, skip_special_tokens=True)!r}; nothing was written (report this with "
                    "your torch, onnx and onnxruntime versions)"
                )
            steps = len(expected)
            difference = float(np.abs(ort_logits[row, :steps] - torch_logits[row, :steps]).max())
            if not difference <= atol:  # also catches NaN
                raise HftuneError(
                    f"the ONNX export's logits differ from PyTorch's by {difference:.3g} (> {atol:g}) on sentence "
                    f"{index + 1} {text!r}; nothing was written (report this with your torch, onnx and onnxruntime "
                    "versions)"
                )
            worst = max(worst, difference)
    return {"sentences": len(indexed), "max_abs_logit_difference": worst, "logits_atol": atol}


# -- the export as a whole ------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def web_config(model: nn.Module, tokenizer, onnx_dir: Path, validation: dict[str, Any]) -> dict[str, Any]:
    """The contents of `onnx/web_config.json`."""
    import onnx
    import onnxruntime
    import onnxscript

    vocab = tokenizer.get_vocab()
    ordered = sorted(vocab.items(), key=lambda item: item[1])
    if [index for _, index in ordered] != list(range(len(ordered))):
        raise HftuneError(
            "the tokenizer's ids are not 0..N-1 without gaps, which the web client's vocabulary list needs; "
            "rebuild the vocabulary with JslTokenizer.build_from_pairs"
        )
    return {
        "format": "hftune-jsl-onnx",
        "format_version": FORMAT_VERSION,
        "model_type": model.config.model_type,
        "files": {
            kind: {
                "path": f"{ONNX_DIR}/{name}",
                "bytes": (onnx_dir / name).stat().st_size,
                "sha256": _sha256(onnx_dir / name),
            }
            for kind, name in GRAPH_FILES.items()
        },
        "opset": OPSET,
        # JslTokenizer's source side: NFKC, whitespace (Python's str.isspace) dropped, one token per code point.
        "tokenizer": {"normalization": "NFKC", "drop_whitespace": "python-isspace", "unit": "code point"},
        "vocab": [token for token, _ in ordered],
        "special_tokens": {
            "pad": str(tokenizer.pad_token),
            "bos": str(tokenizer.bos_token),
            "eos": str(tokenizer.eos_token),
            "unk": str(tokenizer.unk_token),
        },
        "vocab_hash": tokenizer.vocab_hash(),
        "decoding": "greedy",
        **generation_settings(model, tokenizer),
        "validation": {"split": "test", **validation},
        "exported_with": {
            "hftune": hftune.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }


def card_with_onnx(folder: Path, onnx_dir: Path) -> str | None:
    """The folder's model card re-rendered from its results.json with the graphs in `onnx_dir` (the "Use in
    the browser" section), keeping the card's metadata (results added later by `hftune evaluate` live there).
    None when the folder has no card or no results.json to render one from."""
    card_path, results_path = folder / "README.md", folder / "results.json"
    if not (card_path.is_file() and results_path.is_file()):
        return None
    import yaml
    from huggingface_hub import ModelCard

    card = build_model_card(json.loads(results_path.read_text(encoding="utf-8")), folder, onnx_dir=onnx_dir)
    # An old card whose metadata does not parse keeps the freshly rendered metadata.
    with contextlib.suppress(ValueError, yaml.YAMLError):
        card.data = ModelCard.load(card_path).data
    validate_card(card, source=str(card_path))
    return str(card)


def _check_output(output: Path, source: Path) -> None:
    if output.is_file():
        raise HftuneError(f"--output {output} is a file; pass a folder")
    if output.is_dir() and any(output.iterdir()) and not (output / "config.json").is_file():
        raise HftuneError(
            f"--output {output} exists and is not a model folder; pass a new or empty folder (or the model "
            f"folder {source} itself)"
        )


def export_onnx(
    model_name_or_path: str | Path,
    output: str | Path | None = None,
    validation_texts: Sequence[str] | None = None,
) -> Path:
    """Export a saved JSL model (folder or Hub repo id) and return the folder that now holds `onnx/`.

    `output=None` writes `onnx/` into a local model folder itself; for a Hub repo id, or any other `output`,
    the folder receives a copy of the model's files plus `onnx/`, so it can be published as one repo. The
    export is validated on `validation_texts` (default: the corpus's test split) before anything is renamed
    into place; the card (README.md) gains its "Use in the browser" section when results.json is there.
    """
    missing = [
        name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise HftuneError(
            f"hftune export onnx needs {', '.join(missing)}: pip install 'hftune[onnx]' (onnx==1.23.2, "
            "onnxscript==0.7.2, onnxruntime==1.32.0)"
        )
    local = Path(model_name_or_path).is_dir()
    source = resolve_model_folder(model_name_or_path)
    if output is None:
        output = source if local else Path(str(model_name_or_path).rstrip("/").split("/")[-1])
    output = Path(output)
    in_place = output.exists() and output.resolve() == source.resolve()
    if not in_place:
        _check_output(output, source)
    model, tokenizer = load_jsl_model(source, device="cpu", flag="model")
    if validation_texts is None:
        validation_texts = list(load_jsl_corpus("test")["ja"])

    # In place only onnx/ and the card change; otherwise the whole output folder is new. Either way everything
    # is staged first and renamed into place after the validation passed.
    # Names `hftune publish` skips (".tmp*" folders, "*.tmp" files) should a killed export leave them behind.
    tag = uuid.uuid4().hex[:8]
    parent = source if in_place else output.parent
    name = ONNX_DIR if in_place else output.name
    staging, backup = parent / f".tmp-{name}-{tag}", parent / f".tmp-{name}-old-{tag}"
    target = parent / name
    staged_card = source / f".README.md.{tag}.tmp" if in_place else staging / "README.md"
    parent.mkdir(parents=True, exist_ok=True)
    try:
        if not in_place:
            shutil.copytree(source, staging, ignore=_SKIPPED_COPY)
        onnx_dir = staging if in_place else staging / ONNX_DIR
        export_graphs(model, tokenizer, onnx_dir)
        validation = validate_onnx(model, tokenizer, onnx_dir, validation_texts)
        config = web_config(model, tokenizer, onnx_dir, validation)
        (onnx_dir / WEB_CONFIG_FILE).write_text(
            json.dumps(config, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )
        card = card_with_onnx(source, onnx_dir)  # the source's card and images, with the staged graphs
        if card is not None:
            staged_card.write_text(card, encoding="utf-8")
        if target.exists():
            target.rename(backup)
        try:
            staging.rename(target)
        except BaseException:
            if backup.exists():
                backup.rename(target)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if in_place:
            staged_card.unlink(missing_ok=True)
        raise
    if in_place and card is not None:
        os.replace(staged_card, source / "README.md")
    shutil.rmtree(backup, ignore_errors=True)
    return output


@dataclasses.dataclass
class OnnxExportArguments:
    output: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Folder to write into. Default: the model folder itself (onnx/ is added next to its files); "
            "for a Hub repo id, ./REPO_NAME with a copy of the model's files plus onnx/."
        },
    )
    debug: bool = dataclasses.field(default=False, metadata={"help": "Show tracebacks of errors."})


def export_command(argv: list[str]) -> int:
    """`hftune export onnx MODEL_DIR_OR_REPO [--output DIR]`: see the module docstring."""
    from transformers import HfArgumentParser
    from transformers.utils import logging as transformers_logging

    parser = HfArgumentParser(
        OnnxExportArguments,
        prog="hftune export",
        description="Export a saved JSL model to ONNX (encoder, decoder, decoder with past, web_config.json) "
        "for onnxruntime in Python, Node and the browser, after checking it against PyTorch on the corpus's "
        "test split.",
    )
    parser.add_argument("format", choices=["onnx"], help="Export format (onnx is the only one).")
    parser.add_argument("model", help="A saved JSL model folder or a Hub repo id.")
    args = parser.parse_args(argv)
    transformers_logging.disable_progress_bar()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # a 1M-parameter model: more threads only add synchronisation
    try:
        folder = export_onnx(args.model, args.output)
    finally:
        torch.set_num_threads(previous)
    config = json.loads((folder / ONNX_DIR / WEB_CONFIG_FILE).read_text(encoding="utf-8"))
    sizes = ", ".join(f"{Path(f['path']).name} {f['bytes'] / 1e6:.2f} MB" for f in config["files"].values())
    checked = config["validation"]
    warn(
        f"wrote {folder / ONNX_DIR}: {sizes}; onnxruntime matches PyTorch on {checked['sentences']} test "
        f"sentences (greedy tokens identical, logits within {checked['max_abs_logit_difference']:.2g})"
    )
    print(folder / ONNX_DIR)
    return 0
