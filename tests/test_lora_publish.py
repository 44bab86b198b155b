"""A real LoRA run of the main recipe, published with `hftune publish` to a real HTTP Hub on 127.0.0.1
(tests/hub_server.py), then loaded by repo id on "another machine": a child process with an empty HF_HOME.

The adapter was trained on the embedded MiniLM folder; publishing names its base by the Hub id
sentence-transformers/all-MiniLM-L6-v2. That repo exists on the real Hub, so the test puts the same folder on
the test Hub under that id first, and peft in the child resolves the base through HF_ENDPOINT as it would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hftune.models import EMBEDDED_ENCODER_HUB_ID

pytest_plugins = ["hub_server"]

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "a gorgeous, witty, seductive movie.",
    "the plot is nothing but boilerplate clichés from start to finish.",
    "it's not a bad film, just a forgettable one",
]

LOAD_ELSEWHERE = """
import json, sys, torch
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoModelForSequenceClassification, AutoTokenizer
torch.set_num_threads(1)
repo_id, loader, labels, sentences = json.loads(sys.argv[1])
if loader == "peft":
    id2label = dict(enumerate(labels))
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        repo_id, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
else:
    model = AutoModelForSequenceClassification.from_pretrained(repo_id)
tokenizer = AutoTokenizer.from_pretrained(repo_id)
with torch.inference_mode():
    logits = model.eval()(**tokenizer(sentences, padding=True, return_tensors="pt")).logits
print(json.dumps({"logits": logits.tolist(), "id2label": model.config.id2label}))
"""


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("publish") / "sentiment_lora"
    cmd = [
        sys.executable, str(REPO / "recipes" / "sentiment_lora.py"), "--max_train_samples", "128",
        "--max_eval_samples", "32", "--num_train_epochs", "1", "--max_seq_length", "64", "--precision", "fp32",
        "--output_dir", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def labels(lora_run) -> list[str]:
    return json.loads((lora_run / "results.json").read_text())["labels"]


@pytest.fixture(scope="module")
def local_logits(lora_run, labels, minilm_path) -> torch.Tensor:
    """The adapter as trained, on this machine: its config still names the local MiniLM folder."""
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    assert (
        json.loads((lora_run / "adapter_config.json").read_text())["base_model_name_or_path"] == minilm_path
    )
    id2label = dict(enumerate(labels))
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        lora_run, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(lora_run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the child: the same reduction order, so logits can match exactly
    try:
        with torch.inference_mode():
            return model(**tokenizer(SENTENCES, padding=True, return_tensors="pt")).logits
    finally:
        torch.set_num_threads(threads)


def _env(server, hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(server.env(hf_home), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _publish(server, run: Path, repo_id: str, hf_home: Path, *flags: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "hftune.cli", "publish", str(run), "--repo-id", repo_id, *flags],
        env=_env(server, hf_home), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"{server.endpoint}/{repo_id}"
    return done


def _load_elsewhere(server, tmp_path: Path, repo_id: str, loader: str, labels: list[str]) -> dict:
    hf_home = tmp_path / "other_machine_hf_home"
    done = subprocess.run(
        [sys.executable, "-c", LOAD_ELSEWHERE, json.dumps([repo_id, loader, labels, SENTENCES])],
        env=_env(server, hf_home), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (hf_home / "hub" / f"models--{repo_id.replace('/', '--')}").is_dir(), (
        "downloaded into its own cache"
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _publish_embedded_base(server, minilm_path: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=server.endpoint, token=server.token)
    api.create_repo(EMBEDDED_ENCODER_HUB_ID)
    api.upload_folder(repo_id=EMBEDDED_ENCODER_HUB_ID, folder_path=minilm_path, commit_message="MiniLM-L6")


def test_adapter_published_and_loaded_by_repo_id(
    hub_online, lora_run, labels, local_logits, minilm_path, tmp_path
):
    server = hub_online
    _publish_embedded_base(server, minilm_path)
    _publish(server, lora_run, "org/sentiment-lora", tmp_path / "publisher_hf_home")

    stored = server.files("org/sentiment-lora")
    assert stored["adapter_model.safetensors"] == (lora_run / "adapter_model.safetensors").read_bytes()
    assert json.loads(stored["adapter_config.json"])["base_model_name_or_path"] == EMBEDDED_ENCODER_HUB_ID
    assert not [name for name in stored if name.startswith("checkpoint-") or name.endswith((".bin", ".pt"))]
    card = stored["README.md"].decode()
    assert "library_name: peft" in card and "org/sentiment-lora" in card

    # Publishing the unchanged run again commits nothing.
    commits = server.commits("org/sentiment-lora")
    _publish(server, lora_run, "org/sentiment-lora", tmp_path / "publisher_hf_home")
    assert server.commits("org/sentiment-lora") == commits

    remote = _load_elsewhere(server, tmp_path, "org/sentiment-lora", "peft", labels)
    base_cache = (
        tmp_path / "other_machine_hf_home" / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2"
    )
    assert base_cache.is_dir(), "the base came from the Hub by its id, not from this machine's folder"
    assert torch.equal(torch.tensor(remote["logits"]), local_logits)
    assert list(remote["id2label"].values()) == labels


def test_merged_publish_matches_the_adapter(hub_online, lora_run, labels, local_logits, tmp_path):
    server = hub_online
    _publish(server, lora_run, "org/sentiment-lora-merged", tmp_path / "publisher_hf_home", "--merged")
    stored = server.files("org/sentiment-lora-merged")
    assert "adapter_config.json" not in stored and "model.safetensors" in stored
    assert "library_name: transformers" in stored["README.md"].decode()

    remote = _load_elsewhere(server, tmp_path, "org/sentiment-lora-merged", "auto", labels)
    merged = torch.tensor(remote["logits"])
    # Merging folds B @ A into the weights: the same function up to float rounding.
    assert torch.allclose(merged, local_logits, atol=1e-5), (merged - local_logits).abs().max()
    assert list(remote["id2label"].values()) == labels
