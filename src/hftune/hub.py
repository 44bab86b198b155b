"""Publish run folders to the Hugging Face Hub (or the endpoint in HF_ENDPOINT) and fetch repos back.

`publish_run` checks everything it can offline first (repo id, card, weights, no secrets or pickles), then
checks the endpoint and token with one short request, and only then creates the repo and uploads a staged
copy of exactly the files it checked, in one `upload_folder` commit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hftune.config.checks import check_existing_folder
from hftune.errors import HftuneError
from hftune.models import EMBEDDED_ENCODER_HUB_ID, embedded_encoder_path
from hftune.persistence import verify_weights, write_weights_manifest
from hftune.reporting import cards
from hftune.results import RESULTS_FILE, read_results, write_results
from hftune.runtime import check_repo_id, peft_checkpointing_probe_quiet

# huggingface_hub retries network errors for ~30 s and some calls have no timeout: one short check first.
PREFLIGHT_TIMEOUT_S = 5.0

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"}
SECRET_NAMES = {".env", ".git-credentials", ".netrc", "stored_tokens", ".pypirc"}
SECRET_SUFFIXES = {".pem", ".key", ".env"}
# Whole words of a file name; "tokenizer.json" or "special_tokens_map.json" are not secrets.
SECRET_WORDS = {"token", "secret", "secrets", "credentials", "password", "passwd"}
TEXT_SUFFIXES = {".json", ".md", ".txt", ".yaml", ".yml", ".py", ".cfg", ".ini", ".toml", ".sh", ".csv"}
HF_TOKEN_PATTERN = re.compile(rb"\bhf_[A-Za-z0-9]{30,}")

SKIPPED_DIR_NAMES = {".git", "__pycache__", ".cache", ".ipynb_checkpoints"}
SKIPPED_FILE_SUFFIXES = {".lock", ".tmp", ".partial", ".incomplete"}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}

# peft task_type -> the AutoPeftModel class that loads base + adapter, and the transformers class to load the merge.
MERGE_CLASSES = {
    "SEQ_CLS": ("AutoPeftModelForSequenceClassification", "AutoModelForSequenceClassification"),
    "CAUSAL_LM": ("AutoPeftModelForCausalLM", "AutoModelForCausalLM"),
    "SEQ_2_SEQ_LM": ("AutoPeftModelForSeq2SeqLM", "AutoModelForSeq2SeqLM"),
    "TOKEN_CLS": ("AutoPeftModelForTokenClassification", "AutoModelForTokenClassification"),
    "QUESTION_ANS": ("AutoPeftModelForQuestionAnswering", "AutoModelForQuestionAnswering"),
    "FEATURE_EXTRACTION": ("AutoPeftModelForFeatureExtraction", "AutoModel"),
}


def publish_run(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    merged: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a run folder to `repo_id` (created if needed) and return the repo URL.

    `merged=True` publishes an adapter run as a full model: base + adapter merged with peft.
    """
    run_dir = Path(run_dir)
    check_repo_id(repo_id, "--repo-id")
    if revision is not None:
        _check_revision(revision)
    files = collect_run_files(run_dir)
    verify_weights(run_dir)  # never publish a truncated or altered weight file
    adapter_config = _read_adapter_config(run_dir) if "adapter_config.json" in files else None
    if merged and adapter_config is None:
        raise HftuneError(
            f"--merged needs an adapter run, but {run_dir} has no adapter_config.json: publish it without --merged"
        )
    _validate_card(run_dir / "README.md")

    endpoint = resolve_endpoint(endpoint)
    _refuse_offline(endpoint)
    token, token_source = _resolve_token(token)
    _preflight(endpoint, token, token_source)

    with tempfile.TemporaryDirectory(prefix="hftune-publish-") as tmp:
        staged = Path(tmp) / "repo"
        if merged:
            _build_merged_folder(run_dir, files, adapter_config, staged, repo_id)
        else:
            _stage_files(run_dir, files, staged)
            if adapter_config is not None:
                _point_adapter_at_hub_base(staged / "adapter_config.json", adapter_config)
            _name_repo_in_card(staged, repo_id)
        message = commit_message or f"Publish {run_dir.resolve().name} with hftune"
        return _upload(staged, repo_id, endpoint, token, private, revision, message)


def collect_run_files(run_dir: Path) -> list[str]:
    """Relative paths of the files to publish; raises on a missing card or weights, secrets and pickles."""
    check_existing_folder(run_dir, "run folder", "the output_dir of a finished run")
    files = []
    for folder, dir_names, file_names in os.walk(run_dir):
        dir_names[:] = sorted(d for d in dir_names if not _is_skipped_dir(d))
        for name in sorted(file_names):
            if Path(name).suffix in SKIPPED_FILE_SUFFIXES or name == ".DS_Store":
                continue
            path = Path(folder, name)
            _refuse_unsafe_file(path)
            files.append(path.relative_to(run_dir).as_posix())
    if "README.md" not in files:
        raise HftuneError(
            f"{run_dir} has no README.md model card: re-run the recipe (it writes the card) or write one"
        )
    if not any(f.endswith(".safetensors") for f in files):
        raise HftuneError(
            f"{run_dir} has no *.safetensors weights: publish the folder a finished run saved, not a checkpoint"
        )
    return files


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The endpoint argument, else HF_ENDPOINT as set now (huggingface_hub only reads it at import)."""
    from huggingface_hub import constants

    value = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", value):
        source = "--endpoint" if endpoint else "HF_ENDPOINT"
        raise HftuneError(
            f"invalid Hub endpoint {value!r} from {source}: use a URL like https://huggingface.co"
        )
    return value


def download_run(
    repo_id: str,
    revision: str | None = None,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Local folder holding `repo_id` at `revision`: downloaded, or from the cache when offline/unreachable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    check_repo_id(repo_id, "the repo id")
    endpoint = resolve_endpoint(endpoint)
    offline = _offline_requested()
    local_only = offline or _unreachable_reason(endpoint) is not None
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            endpoint=endpoint,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_only,
        )
    except RevisionNotFoundError:
        raise HftuneError(f"{repo_id} has no revision {revision!r} on {endpoint}: check --revision") from None
    except RepositoryNotFoundError:
        raise HftuneError(
            f"{repo_id} not found on {endpoint}: check the id, or set HF_TOKEN if the repo is private"
        ) from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE=1" if offline else f"{endpoint} cannot be reached"
        raise HftuneError(
            f"{repo_id} is not in the local cache and {why}: connect once (HF_HUB_OFFLINE=0) to download it"
        ) from None
    except HfHubHTTPError as err:
        raise HftuneError(f"downloading {repo_id} from {endpoint} failed: {_one_line(err)}") from None
    return Path(path)


def publish_command(argv: list[str]) -> int:
    """`hftune publish RUN_DIR --repo-id ORG/NAME [...]`: prints the repo URL."""
    parser = argparse.ArgumentParser(prog="hftune publish", description="Upload a run folder to the Hub.")
    parser.add_argument("run_dir", type=Path, help="output folder of a finished run (with README.md)")
    parser.add_argument("--repo-id", required=True, help="target repo, ORG_OR_USER/NAME")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", help="branch to upload to (created from main if missing)")
    parser.add_argument("--merged", action="store_true", help="merge a LoRA adapter into its base first")
    parser.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--commit-message", help="commit summary (default names the run folder)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    args = parser.parse_args(argv)
    url = publish_run(
        args.run_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        merged=args.merged,
        endpoint=args.endpoint,
        commit_message=args.commit_message,
    )
    print(url)
    return 0


# -- folder checks ------------------------------------------------------------------------------------------


def _is_skipped_dir(name: str) -> bool:
    # Trainer checkpoints (optimizer pickles, resumable state) and temp/partial folders of interrupted saves.
    return (
        name in SKIPPED_DIR_NAMES
        or name.startswith(("checkpoint-", ".tmp", "tmp"))
        or name.endswith((".tmp", ".partial", ".incomplete"))
    )


def _refuse_unsafe_file(path: Path) -> None:
    name = path.name.lower()
    words = set(re.split(r"[^a-z0-9]+", name))
    if (
        name in SECRET_NAMES
        or name.startswith(".env")
        or path.suffix.lower() in SECRET_SUFFIXES
        or words & SECRET_WORDS
    ):
        raise HftuneError(
            f"refusing to publish {path}: it looks like a secret (token, key or .env file); move it out of the run folder"
        )
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise HftuneError(
            f"refusing to publish {path}: pickle files can run code when loaded; save weights as safetensors "
            "and move this file out of the run folder"
        )
    is_small_text = path.suffix.lower() in TEXT_SUFFIXES and path.stat().st_size < 4_000_000
    if is_small_text and HF_TOKEN_PATTERN.search(path.read_bytes()):
        raise HftuneError(
            f"refusing to publish {path}: it contains what looks like a Hugging Face token (hf_...); remove it"
        )


def _check_revision(revision: str) -> None:
    if (
        not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", revision)
        or ".." in revision
        or revision.endswith("/")
    ):
        raise HftuneError(
            f"invalid branch name {revision!r} from --revision: use letters, digits, '.', '_', '-', '/'"
        )


def _read_adapter_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "adapter_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HftuneError(f"cannot read {path}: {err}; re-save the adapter with save_pretrained") from None


def _validate_card(card: Path) -> None:
    """YAML metadata must parse here; `hftune.reporting.cards.validate_card` checks the schema."""
    from huggingface_hub.repocard import metadata_load

    try:
        metadata = metadata_load(card)
    except Exception as err:  # yaml raises several error types
        raise HftuneError(
            f"{card} has invalid YAML metadata: {_one_line(err)}; fix the block between '---' lines"
        ) from None
    if not metadata:
        raise HftuneError(f"{card} has no YAML metadata block ('---' lines at the top): regenerate the card")
    cards.validate_card(card)


def _name_repo_in_card(staged: Path, repo_id: str, *, merged: bool = False) -> None:
    """Cards are written before the repo id is known. An hftune run's card is rendered again from its record
    with the repo id (title, model-index name, loading snippet; a merged adapter as the full model it now is);
    another card gets the id in its snippet."""
    card = staged / "README.md"
    if (staged / RESULTS_FILE).is_file():
        record = read_results(staged)
        record.repo_id = repo_id
        if merged:
            record.artifact = "full"
        card.unlink()  # staged files may be hard links into the run folder: never write through them
        cards.write_model_card(staged, record)
        write_results(staged, record)  # replaces the file by rename, so the run's own copy is untouched
        return
    text = card.read_text(encoding="utf-8")
    if cards.PLACEHOLDER_REPO_ID in text:
        _rewrite(card, text.replace(cards.PLACEHOLDER_REPO_ID, repo_id))


# -- network checks -----------------------------------------------------------------------------------------


def _offline_requested() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or env.upper() in {"1", "ON", "YES", "TRUE"}


def _refuse_offline(endpoint: str) -> None:
    if _offline_requested():
        raise HftuneError(f"offline: unset HF_HUB_OFFLINE (or set HF_HUB_OFFLINE=0) to publish to {endpoint}")


def _resolve_token(token: str | None) -> tuple[str, str]:
    from huggingface_hub import get_token

    if token:
        return token, "the token argument"
    found = get_token()
    if not found:
        raise HftuneError(
            "no Hub token: set HF_TOKEN to a write token or run `hf auth login`, then publish again"
        )
    source = "HF_TOKEN" if os.environ.get("HF_TOKEN") == found else "the token saved by `hf auth login`"
    return found, source


def _unreachable_reason(endpoint: str) -> str | None:
    import httpx2
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=PREFLIGHT_TIMEOUT_S)
    except httpx2.TransportError as err:
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return None


def _preflight(endpoint: str, token: str, token_source: str) -> None:
    """One request with a short timeout: the endpoint answers and accepts the token."""
    import httpx2
    from huggingface_hub.utils import build_hf_headers, get_session

    try:
        response = get_session().get(
            f"{endpoint}/api/whoami-v2", headers=build_hf_headers(token=token), timeout=PREFLIGHT_TIMEOUT_S
        )
    except httpx2.TransportError as err:
        raise HftuneError(
            f"cannot reach the Hub at {endpoint} ({type(err).__name__}): check the network, or HF_ENDPOINT/--endpoint"
        ) from None
    if response.status_code == 401:
        raise HftuneError(
            f"the Hub at {endpoint} rejected the token from {token_source} (401): set HF_TOKEN to a valid write token"
        )
    if response.status_code >= 400:
        raise HftuneError(
            f"the Hub at {endpoint} answered {response.status_code} to the token check: is this a Hub endpoint?"
        )


# -- staging and upload -------------------------------------------------------------------------------------


def _stage_files(run_dir: Path, files: list[str], staged: Path) -> None:
    """Hard-link (or copy) the checked files, so what is uploaded is exactly what was checked."""
    for rel in files:
        src, dst = run_dir / rel, staged / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _rewrite(path: Path, text: str) -> None:
    path.unlink()  # never write through a hard link into the run folder
    path.write_text(text, encoding="utf-8")


def _point_adapter_at_hub_base(staged_config: Path, adapter_config: dict[str, Any]) -> None:
    """An adapter loads elsewhere only if its base is a Hub id, not a path on this machine."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    base = adapter_config.get("base_model_name_or_path")
    if not base:
        return
    try:
        validate_repo_id(base)
        return
    except HFValidationError:
        pass
    if Path(base).expanduser().resolve() == Path(embedded_encoder_path()).resolve():
        _rewrite(
            staged_config,
            json.dumps({**adapter_config, "base_model_name_or_path": EMBEDDED_ENCODER_HUB_ID}, indent=2),
        )
        return
    raise HftuneError(
        f"adapter_config.json names the local folder {base} as its base model, which will not exist where the "
        "adapter is loaded: publish with --merged, or publish the base and put its repo id in base_model_name_or_path"
    )


def _build_merged_folder(
    run_dir: Path, files: list[str], adapter_config: dict[str, Any], out: Path, repo_id: str
) -> None:
    """Base + adapter merged with peft, saved as a plain transformers folder with the run's other files."""
    import peft
    from huggingface_hub import ModelCard
    from transformers import AutoConfig, AutoTokenizer

    peft_class, auto_class = MERGE_CLASSES.get(
        adapter_config.get("task_type") or "", ("AutoPeftModel", "AutoModel")
    )
    kwargs: dict[str, Any] = {}
    if "config.json" in files:
        kwargs["config"] = AutoConfig.from_pretrained(run_dir)
    elif (labels := _run_labels(run_dir)) is not None:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    try:
        with peft_checkpointing_probe_quiet():
            model = getattr(peft, peft_class).from_pretrained(run_dir, **kwargs)
    except (OSError, ValueError) as err:
        base = adapter_config.get("base_model_name_or_path")
        raise HftuneError(
            f"cannot load the base model {base!r} to merge {run_dir}: {_one_line(err)}"
        ) from None
    merged = model.merge_and_unload()

    _stage_files(run_dir, [f for f in files if Path(f).name not in ADAPTER_FILES], out)
    merged.save_pretrained(out)
    write_weights_manifest(out)  # the run's manifest lists the adapter, not these merged weights
    tokenizer_source = (
        run_dir if "tokenizer_config.json" in files else adapter_config["base_model_name_or_path"]
    )
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(out)

    _name_repo_in_card(out, repo_id, merged=True)
    card = ModelCard.load(out / "README.md")
    card.data.library_name = "transformers"
    card.data.tags = sorted({*(card.data.tags or []), "merged-adapter"} - {"peft"})
    card.text += (
        "\n## Merged weights\n\nThis repo holds the LoRA adapter merged into its base model: load it with "
        f"`transformers.{auto_class}.from_pretrained(...)`, no peft needed.\n"
    )
    (out / "README.md").unlink()
    card.save(out / "README.md")
    _validate_card(out / "README.md")


def _run_labels(run_dir: Path) -> list[str] | None:
    try:
        labels = json.loads((run_dir / "results.json").read_text(encoding="utf-8")).get("labels")
    except (OSError, ValueError):
        return None
    return [str(label) for label in labels] if labels else None


def _upload(
    staged: Path,
    repo_id: str,
    endpoint: str,
    token: str,
    private: bool,
    revision: str | None,
    commit_message: str,
) -> str:
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=staged,
            revision=revision,
            commit_message=commit_message,
        )
    except HfHubHTTPError as err:
        raise HftuneError(f"publishing to {repo_id} on {endpoint} failed: {_one_line(err)}") from None
    except httpx2.TransportError as err:
        raise HftuneError(
            f"lost the connection to {endpoint} while publishing {repo_id} ({type(err).__name__}): "
            "nothing is published until the commit succeeds; run the command again"
        ) from None
    where = f" on branch {revision}" if revision else ""
    print(f"published {repo_id}{where}: {info.commit_url}", file=sys.stderr)
    return str(url)


def _one_line(err: BaseException) -> str:
    server_message = getattr(err, "server_message", None)
    text = server_message or str(err) or type(err).__name__
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
