"""Publish a trained JSL run to the local test Hub, then load it by repo id on "another machine": a fresh process
with an empty HF_HOME, HF_ENDPOINT at the server and hftune not importable. Outputs must match exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_jsl_recipe import TINY, run_recipe

from hftune.hub import publish_run
from hftune.jsl.artifacts import load_jsl_model

pytest_plugins = ["hub_server"]

REPO_ID = "org/jsl-seq2seq"
SENTENCES = [
    "ありがとう",
    "わたしはたべます",
    "きのう図書館に行きました",
    "🙂ЖЖ",
    "あしたがっこうにいきません",
]

CHILD = """
import json, sys

class BlockHftune:
    # Simulates a machine without hftune: any import of it fails.
    def find_spec(self, name, path=None, target=None):
        if name == "hftune" or name.startswith("hftune."):
            raise ImportError("hftune is not installed here")

sys.meta_path.insert(0, BlockHftune())
import torch
from safetensors.torch import save_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

torch.set_num_threads(1)
repo_id, sentences, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
model = AutoModelForSeq2SeqLM.from_pretrained(repo_id, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True)
batch = tokenizer(sentences, padding=True, return_tensors="pt")
with torch.no_grad():
    generated = model.generate(**batch, num_beams=1, do_sample=False)
    logits = model(**batch, decoder_input_ids=generated).logits
save_file({"generated": generated.contiguous(), "logits": logits.contiguous()}, out)
print(json.dumps({
    "hftune_loaded": any(name.split(".")[0] == "hftune" for name in sys.modules),
    "model_class": type(model).__module__,
    "glosses": tokenizer.batch_decode(generated, skip_special_tokens=True),
}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jsl") / "jsl-run"
    run_recipe(
        [
            "--output_dir", str(out), *TINY, "--max_train_samples", "128", "--max_eval_samples", "16",
            "--num_train_epochs", "2", "--learning_rate", "5e-3", "--per_device_train_batch_size", "16",
        ]
    )  # fmt: skip
    return out


def test_published_run_loads_by_repo_id_elsewhere_with_identical_outputs(hub_online, run, tmp_path):
    server = hub_online
    url = publish_run(run, REPO_ID, endpoint=server.endpoint, token=server.token)
    assert REPO_ID in url
    published = set(server.files(REPO_ID))
    assert {
        "model.safetensors", "config.json", "generation_config.json", "vocab.json", "tokenizer_config.json",
        "configuration_jsl.py", "modeling_jsl.py", "tokenization_jsl.py", "README.md", "results.json",
        "metrics.json", "weights.sha256.json",
    } <= published  # fmt: skip
    assert not [
        name for name in published if name.startswith(("checkpoint-", ".")) and name != ".gitattributes"
    ]

    hf_home = tmp_path / "other_machine_hf_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(server.env(hf_home), OMP_NUM_THREADS="1", PYTHONPATH="")
    out_file = tmp_path / "child.safetensors"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, REPO_ID, json.dumps(SENTENCES), str(out_file)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert not info["hftune_loaded"]
    assert info["model_class"].startswith("transformers_modules.")
    assert (hf_home / "hub" / "models--org--jsl-seq2seq").is_dir()

    model, tokenizer = load_jsl_model(run)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**batch, num_beams=1, do_sample=False)
            logits = model(**batch, decoder_input_ids=generated).logits
    finally:
        torch.set_num_threads(previous)
    child = load_file(out_file)
    assert torch.equal(child["generated"], generated)
    assert torch.equal(child["logits"], logits)
    assert info["glosses"] == tokenizer.batch_decode(generated, skip_special_tokens=True)
