"""Save and load a JSL model folder safely: atomic writes, a sha256 manifest, and a vocabulary-hash check.

A saved folder holds model.safetensors, config.json (with `auto_map`, `vocab_hash` and `training_metadata`),
generation_config.json, tokenizer_config.json + vocab.json, the three remote-code files and
weights.sha256.json. It loads anywhere with
`AutoModelForSeq2SeqLM.from_pretrained(folder_or_repo, trust_remote_code=True)`; `load_jsl_model` adds the
integrity checks.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError, safe_open

import hftune
from hftune.errors import HftuneError
from hftune.jsl.modeling_jsl import JslSeq2SeqForConditionalGeneration
from hftune.jsl.tokenization_jsl import JslTokenizer

MANIFEST_NAME = "weights.sha256.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def save_jsl_model(
    model: JslSeq2SeqForConditionalGeneration,
    tokenizer: JslTokenizer,
    out_dir: str | Path,
    metadata: dict[str, Any],
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a complete model folder at `out_dir`, all or nothing.

    Everything is written into a temporary sibling folder that is renamed into place at the end; on any error
    the temporary folder is removed and a folder already at `out_dir` is left as it was. `metadata` (e.g. seed,
    git_commit, dataset) is merged over `provenance()` into `config.training_metadata`; the tokenizer's
    vocabulary hash goes to `config.vocab_hash`. `extra_files` maps file names (e.g. README.md, metrics.json)
    to text written into the same folder before the rename.
    """
    out = Path(out_dir)
    if len(tokenizer) != model.config.vocab_size:
        raise HftuneError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}; "
            "build the model config with vocab_size=len(tokenizer)"
        )
    model.config.vocab_hash = tokenizer.vocab_hash()
    model.config.training_metadata = {**provenance(), **metadata}

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    backup = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        manifest = {path.name: file_sha256(path) for path in sorted(staging.glob("*.safetensors"))}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        if out.exists():
            out.rename(backup)
        try:
            staging.rename(out)
        except BaseException:
            if backup.exists():
                backup.rename(out)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    return out


def resolve_model_folder(path_or_repo: str | Path) -> Path:
    """A local folder as is, otherwise a Hub repo id resolved through the HF cache (offline when
    HF_HUB_OFFLINE=1)."""
    path = Path(path_or_repo)
    if path.is_dir():
        return path
    if path.exists():
        raise HftuneError(f"--model {path_or_repo} is a file; pass the model folder or a Hub repo id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(repo_id=str(path_or_repo)))
    except HFValidationError as err:
        raise HftuneError(
            f"--model {path_or_repo} is neither a folder nor a valid Hub repo id ({err})"
        ) from None
    except Exception as err:  # offline misses, 404s and network errors all mean "not available here"
        raise HftuneError(
            f"model {path_or_repo} is not a local folder and could not be fetched from the Hub "
            f"({type(err).__name__}); pass a saved folder, or go online once so it lands in the HF cache"
        ) from None


def verify_weight_files(folder: Path) -> None:
    """Refuse truncated or altered safetensors files, naming the file."""
    weight_files = sorted(folder.glob("*.safetensors"))
    if not weight_files:
        raise HftuneError(f"{folder} has no *.safetensors weight file; save the model with save_jsl_model")
    manifest_path = folder / MANIFEST_NAME
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        for name, expected in manifest.items():
            path = folder / name
            if not path.is_file():
                raise HftuneError(
                    f"{path} is listed in {MANIFEST_NAME} but missing; copy the complete folder"
                )
            if file_sha256(path) != expected:
                raise HftuneError(
                    f"{path} does not match its sha256 in {MANIFEST_NAME} (truncated or altered); "
                    "copy or download the folder again"
                )
    for path in weight_files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except SafetensorError as err:
            raise HftuneError(
                f"{path} is not a readable safetensors file ({err}); copy or download it again"
            ) from None


def check_jsl_folder(folder: Path, name: str, flag: str) -> None:
    """Refuse a folder that is not a JSL model (a classifier run, a causal LM) before its files are read as one."""
    from hftune.checks import check_model_kind, describe_folder, read_json

    config = read_json(folder / "config.json")
    if not isinstance(config, dict):
        content = describe_folder(folder)
        raise HftuneError(
            f"{flag} {name} has no readable config.json (it holds {content.summary if content else 'nothing'}); "
            "pass a folder saved by recipes/jsl_seq2seq.py (or its Hub repo id)"
        )
    check_model_kind(config, "jsl", name, flag)


def resolve_device(device: str) -> str:
    """'auto' -> cuda, then mps, then cpu; anything else is passed to torch as is."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_jsl_model(
    path_or_repo: str | Path, device: str = "cpu", dtype: torch.dtype | None = None, flag: str = "--model"
) -> tuple[JslSeq2SeqForConditionalGeneration, JslTokenizer]:
    """Load a saved JSL folder (or Hub repo id) after checking its weights and vocabulary.

    Uses the classes installed with hftune rather than executing the folder's code. `dtype=None` loads in
    float32 whatever the saved precision (bf16/fp16 checkpoints included), which every device supports.
    Returns the model in eval mode on `device` ("auto" picks cuda, then mps, then cpu) and its tokenizer.
    """
    folder = resolve_model_folder(path_or_repo)
    check_jsl_folder(folder, str(path_or_repo), flag)
    verify_weight_files(folder)
    tokenizer = JslTokenizer.from_pretrained(str(folder))
    model = JslSeq2SeqForConditionalGeneration.from_pretrained(str(folder), dtype=dtype or torch.float32)
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
