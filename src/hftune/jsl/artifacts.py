"""Save and load a JSL model folder safely: atomic writes, a sha256 manifest, and a vocabulary-hash check.

A saved folder holds model.safetensors, config.json (with `auto_map`, `vocab_hash` and `training_metadata`),
generation_config.json, tokenizer_config.json + vocab.json, the three remote-code files and
weights.sha256.json. It loads anywhere with
`AutoModelForSeq2SeqLM.from_pretrained(folder_or_repo, trust_remote_code=True)`; `load_jsl_model` adds the
integrity checks.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers

import hftune
from hftune.config.checks import check_model_kind, describe_folder, read_json
from hftune.errors import HftuneError
from hftune.hardware import resolve_device
from hftune.jsl.modeling_jsl import JslSeq2SeqForConditionalGeneration
from hftune.jsl.tokenization_jsl import JslTokenizer
from hftune.persistence import (  # noqa: F401 - re-exported
    MANIFEST_NAME,
    atomic_directory,
    file_sha256,
    verify_weights,
    write_weights_manifest,
)


def provenance() -> dict[str, Any]:
    """What every saved folder records about the software that wrote it."""
    return {
        "package": "hftune",
        "package_version": hftune.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_jsl_folder(
    model: JslSeq2SeqForConditionalGeneration,
    tokenizer: JslTokenizer,
    folder: str | Path,
    metadata: dict[str, Any],
) -> None:
    """Write the model, tokenizer and weight manifest into `folder` (a staging folder: see `save_jsl_model`).

    `metadata` (e.g. seed, git_commit, dataset) is merged over `provenance()` into `config.training_metadata`;
    the tokenizer's vocabulary hash goes to `config.vocab_hash`.
    """
    if len(tokenizer) != model.config.vocab_size:
        raise HftuneError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}; "
            "build the model config with vocab_size=len(tokenizer)"
        )
    model.config.vocab_hash = tokenizer.vocab_hash()
    model.config.training_metadata = {**provenance(), **metadata}
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    write_weights_manifest(folder)


def save_jsl_model(
    model: JslSeq2SeqForConditionalGeneration,
    tokenizer: JslTokenizer,
    out_dir: str | Path,
    metadata: dict[str, Any],
) -> Path:
    """Write a complete model folder at `out_dir`, all or nothing: a folder already there stays as it was
    until the new one is whole."""
    with atomic_directory(out_dir) as staging:
        write_jsl_folder(model, tokenizer, staging, metadata)
    return Path(out_dir)


def resolve_model_folder(path_or_repo: str | Path, flag: str = "--model") -> Path:
    """A local folder as is, otherwise a Hub repo id resolved through the HF cache (offline when
    HF_HUB_OFFLINE=1)."""
    path = Path(path_or_repo)
    if path.is_dir():
        return path
    if path.exists():
        raise HftuneError(f"{flag} {path_or_repo} is a file; pass the model folder or a Hub repo id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(repo_id=str(path_or_repo)))
    except HFValidationError as err:
        raise HftuneError(
            f"{flag} {path_or_repo} is neither a folder nor a valid Hub repo id ({err})"
        ) from None
    except Exception as err:  # offline misses, 404s and network errors all mean "not available here"
        raise HftuneError(
            f"model {path_or_repo} is not a local folder and could not be fetched from the Hub "
            f"({type(err).__name__}); pass a saved folder, or go online once so it lands in the HF cache"
        ) from None


def verify_weight_files(folder: Path) -> None:
    """Refuse a folder without weights, and truncated or altered safetensors files, naming the file."""
    if not any(folder.glob("*.safetensors")):
        raise HftuneError(f"{folder} has no *.safetensors weight file; save the model with save_jsl_model")
    verify_weights(folder)


def check_jsl_folder(folder: Path, name: str, flag: str) -> None:
    """Refuse a folder that is not a JSL model (a classifier run, a causal LM) before its files are read as one."""
    config = read_json(folder / "config.json")
    if not isinstance(config, dict):
        content = describe_folder(folder)
        raise HftuneError(
            f"{flag} {name} has no readable config.json (it holds {content.summary if content else 'nothing'}); "
            "pass a folder saved by recipes/jsl_seq2seq.py (or its Hub repo id)"
        )
    check_model_kind(config, "jsl", name, flag)


def load_jsl_model(
    path_or_repo: str | Path,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    flag: str = "--model",
    **config_overrides: Any,
) -> tuple[JslSeq2SeqForConditionalGeneration, JslTokenizer]:
    """Load a saved JSL folder (or Hub repo id) after checking its weights and vocabulary.

    Uses the classes installed with hftune rather than executing the folder's code. `dtype=None` loads in
    float32 whatever the saved precision (bf16/fp16 checkpoints included), which every device supports.
    Returns the model in eval mode on `device` ("auto" picks cuda, then mps, then cpu) and its tokenizer.
    `config_overrides` (e.g. dropout=0.1 for continued training) replace config values before the model is built.
    """
    folder = resolve_model_folder(path_or_repo, flag)
    check_jsl_folder(folder, str(path_or_repo), flag)
    verify_weight_files(folder)
    tokenizer = JslTokenizer.from_pretrained(str(folder))
    model = JslSeq2SeqForConditionalGeneration.from_pretrained(
        str(folder), dtype=dtype or torch.float32, **config_overrides
    )
    expected = model.config.vocab_hash
    if expected is not None and expected != tokenizer.vocab_hash():
        raise HftuneError(
            f"{folder / 'vocab.json'} does not belong to these weights: its hash {tokenizer.vocab_hash()[:12]} "
            f"differs from vocab_hash {expected[:12]} in {folder / 'config.json'}; use the tokenizer saved with "
            "the model"
        )
    if len(tokenizer) != model.config.vocab_size:
        raise HftuneError(
            f"{folder / 'vocab.json'} has {len(tokenizer)} tokens but {folder / 'config.json'} says vocab_size "
            f"{model.config.vocab_size}; use the tokenizer saved with the model"
        )
    return model.to(resolve_device(device)).eval(), tokenizer
