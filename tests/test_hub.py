"""Publishing with the real huggingface_hub client against a real HTTP Hub on 127.0.0.1 (tests/hub_server.py).

The LoRA adapter's `base_model_name_or_path` is the Hub id "org/tiny", and the tests publish that base to the
same server first: on "the other machine" (a child process with an empty HF_HOME) peft then resolves the base
through HF_ENDPOINT exactly as it would on huggingface.co.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hftune.errors import HftuneError
from hftune.hub import download_run, publish_run
from hftune.models import EMBEDDED_ENCODER_HUB_ID

pytest_plugins = ["hub_server"]

SENTENCES = ["I love this film", "worst day ever, truly", "the weather is fine"]
BASE_ID = "org/tiny"
RESULTS = {
    "task": "text-classification",
    "method": "full",
    "artifact": "full",
    "base_model": None,
    "dataset": "emotion",
    "language": ["en"],
    "metrics": {"accuracy": 0.5, "f1_macro": 0.4},
    "eval_split": "validation",
    "labels": ["negative", "neutral", "positive"],
    "seed": 0,
    "device": "cpu",
    "precision": "fp32",
}


def _write_results_and_card(run: Path, **changes) -> None:
    from hftune.reporting.cards import write_model_card

    results = {**RESULTS, **changes}
    (run / "results.json").write_text(json.dumps(results))
    write_model_card(run, results)


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, minilm_path) -> Path:
    """A full BERT classifier folder: tiny random config, the real MiniLM tokenizer, a card."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    run = tmp_path_factory.mktemp("full_run")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    config.num_labels = 3
    BertForSequenceClassification(config).save_pretrained(run)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(run)
    _write_results_and_card(run)
    return run


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, full_run) -> Path:
    """A peft LoRA adapter run on `full_run`, whose config names the base by its Hub id."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path_factory.mktemp("lora_run")
    torch.manual_seed(1)
    base = AutoModelForSequenceClassification.from_pretrained(full_run)
    # Random (not zero) LoRA B matrices, so the adapter really changes the logits.
    config = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"], init_lora_weights=False)
    model = get_peft_model(base, config)
    model.peft_config["default"].base_model_name_or_path = BASE_ID
    model.save_pretrained(run)
    AutoTokenizer.from_pretrained(full_run).save_pretrained(run)
    _write_results_and_card(run, method="lora", artifact="adapter", base_model=BASE_ID)
    return run


@pytest.fixture(scope="module")
def local_logits(full_run, lora_run) -> dict[str, list]:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(full_run)
    base = AutoModelForSequenceClassification.from_pretrained(full_run).eval()
    full = _logits(base, tokenizer)
    adapter = _logits(PeftModel.from_pretrained(base, lora_run).eval(), tokenizer)
    assert not torch.allclose(full, adapter), (
        "the adapter must change the outputs for the test to mean anything"
    )
    return {"full": full.tolist(), "adapter": adapter.tolist()}


def _child_env(server, hf_home: Path, *, token: bool = True, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(server.env(hf_home, token=token), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def _run_child(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _hftune(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hftune.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


LOAD_ELSEWHERE = """
import json, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from peft import AutoPeftModelForSequenceClassification
torch.set_num_threads(1)
sentences = {sentences!r}
out = {{}}
for name, repo_id, loader in {jobs!r}:
    model = (AutoPeftModelForSequenceClassification if loader == "peft" else AutoModelForSequenceClassification)
    model = model.from_pretrained(repo_id).eval()
    tokenizer = AutoTokenizer.from_pretrained(repo_id)
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out[name] = model(**batch).logits.tolist()
print(json.dumps(out))
"""


def _load_elsewhere(server, tmp_path: Path, jobs: list[tuple[str, str, str]]) -> dict[str, list]:
    hf_home = tmp_path / "other_machine_hf_home"
    code = LOAD_ELSEWHERE.format(sentences=SENTENCES, jobs=jobs)
    result = _run_child(code, _child_env(server, hf_home))
    # The child really downloaded into its own empty cache.
    for _, repo_id, _ in jobs:
        assert (hf_home / "hub" / f"models--{repo_id.replace('/', '--')}").is_dir()
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- round trips ---------------------------------------------------------------------------------------------


def test_full_model_and_adapter_load_on_another_machine(
    hub_online, full_run, lora_run, local_logits, tmp_path
):
    server = hub_online
    url = publish_run(full_run, BASE_ID)
    assert url == f"{server.endpoint}/{BASE_ID}"
    stored = server.files(BASE_ID)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert stored[name] == (full_run / name).read_bytes()
    # The published record and card name the repo (title, model-index and loading snippet); the run keeps its own.
    published, own = json.loads(stored["results.json"]), json.loads((full_run / "results.json").read_text())
    assert published["repo_id"] == BASE_ID and own.get("repo_id") is None
    assert {key: published[key] for key in own} == own
    assert f'repo = "{BASE_ID}"' in stored["README.md"].decode()
    assert f"name: {BASE_ID.split('/')[-1]}" in stored["README.md"].decode()
    assert "YOUR_ORG/RUN_NAME" in (full_run / "README.md").read_text()
    # Every file went up as a regular commit entry: no LFS batch or Xet traffic.
    assert not [r for r in server.requests if "lfs" in r[1] or "xet" in r[1]]

    publish_run(lora_run, "org/sentiment-lora")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(server.files("org/sentiment-lora"))

    remote = _load_elsewhere(
        server, tmp_path, [("full", BASE_ID, "auto"), ("adapter", "org/sentiment-lora", "peft")]
    )
    assert torch.equal(torch.tensor(remote["full"]), torch.tensor(local_logits["full"]))
    assert torch.equal(torch.tensor(remote["adapter"]), torch.tensor(local_logits["adapter"]))


def test_cli_merged_publish_matches_the_adapter(hub_online, full_run, lora_run, local_logits, tmp_path):
    server = hub_online
    publish_run(full_run, BASE_ID)
    # The CLI process resolves the adapter's base "org/tiny" through HF_ENDPOINT, like a user's machine would.
    env = _child_env(server, tmp_path / "publisher_hf_home")
    result = _hftune(["publish", str(lora_run), "--repo-id", "org/sentiment-merged", "--merged"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"{server.endpoint}/org/sentiment-merged"

    stored = server.files("org/sentiment-merged")
    assert "adapter_config.json" not in stored and "adapter_model.safetensors" not in stored
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(stored)
    card = stored["README.md"].decode()
    assert "library_name: transformers" in card and "library_name: peft" not in card

    remote = _load_elsewhere(server, tmp_path, [("merged", "org/sentiment-merged", "auto")])
    # Merging folds B@A into the weights: same function, float rounding may differ in the last bits.
    assert torch.allclose(torch.tensor(remote["merged"]), torch.tensor(local_logits["adapter"]), atol=1e-5)
    assert not torch.allclose(torch.tensor(remote["merged"]), torch.tensor(local_logits["full"]), atol=1e-3)


# -- repeated publishing, branches ---------------------------------------------------------------------------


def _copy_run(run: Path, tmp_path: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(run, tmp_path / name))


def test_second_publish_reuses_the_repo_and_uploads_changes(hub_online, full_run, tmp_path):
    server = hub_online
    run = _copy_run(full_run, tmp_path)
    cache = tmp_path / "cache"
    publish_run(run, BASE_ID)
    first = download_run(BASE_ID, cache_dir=cache)
    assert json.loads((first / "results.json").read_text())["metrics"]["accuracy"] == 0.5

    # The repo exists now: publishing the same folder again works and commits nothing new.
    commits = len(server.commits(BASE_ID))
    assert publish_run(run, BASE_ID) == f"{server.endpoint}/{BASE_ID}"
    assert len(server.commits(BASE_ID)) == commits

    _write_results_and_card(run, metrics={"accuracy": 0.75})
    publish_run(run, BASE_ID, commit_message="better run")
    assert server.commits(BASE_ID)[0] == "better run"
    assert len(server.commits(BASE_ID)) == commits + 1
    second = download_run(BASE_ID, cache_dir=cache)
    assert second != first
    assert json.loads((second / "results.json").read_text())["metrics"]["accuracy"] == 0.75
    assert (second / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()


def test_revision_branch(hub_online, full_run, tmp_path):
    server = hub_online
    run = _copy_run(full_run, tmp_path)
    publish_run(run, BASE_ID)
    _write_results_and_card(run, metrics={"accuracy": 0.9})
    publish_run(run, BASE_ID, revision="experiment")

    assert json.loads(server.files(BASE_ID, "experiment")["results.json"])["metrics"]["accuracy"] == 0.9
    assert json.loads(server.files(BASE_ID, "main")["results.json"])["metrics"]["accuracy"] == 0.5
    on_branch = download_run(BASE_ID, revision="experiment", cache_dir=tmp_path / "cache")
    on_main = download_run(BASE_ID, cache_dir=tmp_path / "cache")
    assert json.loads((on_branch / "results.json").read_text())["metrics"]["accuracy"] == 0.9
    assert json.loads((on_main / "results.json").read_text())["metrics"]["accuracy"] == 0.5
    with pytest.raises(HftuneError, match="no revision 'nope'"):
        download_run(BASE_ID, revision="nope", cache_dir=tmp_path / "cache")


def test_private_repo_is_private(hub_online, full_run):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    server = hub_online
    publish_run(full_run, "org/secret-model", private=True)
    assert server.repo("org/secret-model").private
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=server.endpoint, token=False).model_info("org/secret-model")
    assert HfApi(endpoint=server.endpoint, token=server.token).model_info("org/secret-model").private


def test_skips_checkpoints_locks_and_temp_folders(hub_online, full_run, tmp_path):
    run = _copy_run(full_run, tmp_path)
    (run / "checkpoint-5").mkdir()
    (run / "checkpoint-5" / "optimizer.pt").write_bytes(b"pickle")
    (run / "checkpoint-5" / "model.safetensors").write_bytes(b"old")
    (run / ".tmp-save").mkdir()
    (run / ".tmp-save" / "model.safetensors").write_bytes(b"partial")
    (run / "run.lock").write_text("1234")
    (run / "plots").mkdir()
    (run / "plots" / "loss.png").write_bytes(b"\x89PNG")
    publish_run(run, BASE_ID)
    stored = set(hub_online.files(BASE_ID))
    assert "plots/loss.png" in stored
    assert not [p for p in stored if p.startswith(("checkpoint-", ".tmp")) or p.endswith(".lock")]


def test_adapter_on_embedded_encoder_names_its_hub_id(hub_online, lora_run, tmp_path, minilm_path):
    run = _copy_run(lora_run, tmp_path)
    config_path = run / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": minilm_path}))
    publish_run(run, "org/minilm-lora")
    published = json.loads(hub_online.files("org/minilm-lora")["adapter_config.json"])
    assert published["base_model_name_or_path"] == EMBEDDED_ENCODER_HUB_ID
    # The run folder itself is untouched (staging hard-links files; rewrites must not write through).
    assert json.loads(config_path.read_text())["base_model_name_or_path"] == minilm_path

    config_path.write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "my-base")}))
    with pytest.raises(HftuneError, match="local folder .*my-base"):
        publish_run(run, "org/minilm-lora")


# -- refusals and bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        ".env",
        ".env.local",
        "hf_token.txt",
        "token",
        "api-token.json",
        ".git-credentials",
        "server.pem",
        "id.key",
    ]
    + ["training_args.bin", "optimizer.pt", "rng_state.pth", "features.pkl", "last.ckpt", "sub/stale.bin"],
)
def test_refuses_secrets_and_pickles(hub_online, full_run, tmp_path, name):
    run = _copy_run(full_run, tmp_path)
    (run / name).parent.mkdir(parents=True, exist_ok=True)
    (run / name).write_text("x")
    with pytest.raises(HftuneError, match=f"refusing to publish .*{Path(name).name}"):
        publish_run(run, BASE_ID)
    assert hub_online.state.repos == {}, "nothing may reach the server"


def test_refuses_a_token_inside_a_text_file(hub_online, full_run, tmp_path):
    run = _copy_run(full_run, tmp_path)
    (run / "notes.md").write_text("login with hf_" + "a1B2" * 9 + "\n")
    with pytest.raises(HftuneError, match="notes.md: it contains what looks like a Hugging Face token"):
        publish_run(run, BASE_ID)
    assert hub_online.state.repos == {}


@pytest.mark.parametrize("repo_id", ["tiny", "org/na me", "org/a/b", "org/--x", "org/x.git", "-org/x"])
def test_invalid_repo_id(full_run, repo_id):
    with pytest.raises(HftuneError, match=f"invalid repo id '{repo_id}'"):
        publish_run(full_run, repo_id)


def test_missing_card_weights_or_bad_metadata(full_run, tmp_path):
    no_card = _copy_run(full_run, tmp_path, "no_card")
    (no_card / "README.md").unlink()
    with pytest.raises(HftuneError, match="no README.md model card"):
        publish_run(no_card, BASE_ID)

    no_weights = _copy_run(full_run, tmp_path, "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(HftuneError, match="no \\*.safetensors weights"):
        publish_run(no_weights, BASE_ID)

    bad_yaml = _copy_run(full_run, tmp_path, "bad_yaml")
    (bad_yaml / "README.md").write_text("---\nlicense: [apache\n---\n# x\n")
    with pytest.raises(HftuneError, match="invalid YAML metadata"):
        publish_run(bad_yaml, BASE_ID)

    with pytest.raises(HftuneError, match="does not exist"):
        publish_run(tmp_path / "nowhere", BASE_ID)
    with pytest.raises(HftuneError, match="--merged needs an adapter run"):
        publish_run(full_run, BASE_ID, merged=True, endpoint="http://127.0.0.1:9")


def test_wrong_token_is_rejected(hub_online, full_run):
    with pytest.raises(HftuneError, match="rejected the token from the token argument \\(401\\)"):
        publish_run(full_run, BASE_ID, token="hf_wrong")
    assert hub_online.state.repos == {}


def _fails_fast(result: subprocess.CompletedProcess, seconds: float, message: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {message}"), result.stderr
    assert "Traceback" not in result.stderr
    # The client's own retries would take minutes; the bound is loose so a busy machine's imports never trip it.
    assert seconds < 60, seconds


def test_cli_without_token_offline_or_unreachable_fails_fast(hub_server, full_run, tmp_path):
    args = ["publish", str(full_run), "--repo-id", BASE_ID]

    start = time.monotonic()
    result = _hftune(args, _child_env(hub_server, tmp_path / "empty_home", token=False))
    _fails_fast(result, time.monotonic() - start, "no Hub token: set HF_TOKEN")

    start = time.monotonic()
    result = _hftune(args, _child_env(hub_server, tmp_path / "home", HF_HUB_OFFLINE="1"))
    _fails_fast(result, time.monotonic() - start, "offline: unset HF_HUB_OFFLINE")

    # A port nobody listens on: refused at once, no minutes of retries.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    start = time.monotonic()
    result = _hftune(args, _child_env(hub_server, tmp_path / "home", HF_ENDPOINT=dead))
    _fails_fast(result, time.monotonic() - start, f"cannot reach the Hub at {dead}")
    assert hub_server.state.repos == {}
