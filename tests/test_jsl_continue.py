"""Continuing a saved JSL model (`recipes/jsl_seq2seq.py --model_name_or_path`): from a folder and from a repo id
in the HF cache, with and without new symbols; shape conflicts and frozen vocabularies refused; presets; longer
inputs at the defaults; and a folder saved by main before this change (tests/data/jsl_main_folder) still loads and
translates exactly as main did."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file

from hftune.jsl.artifacts import load_jsl_model
from hftune.jsl.continuation import ParentUpdateScale, grow_embeddings
from hftune.jsl.corpus import load_jsl_corpus
from hftune.jsl.export import export_attentions
from hftune.jsl.tokenization_jsl import JslTokenizer
from hftune.jsl.train import (
    MODEL_SIZES,
    JslArguments,
    build_model,
    build_tokenizer,
    generation_cap,
    load_training_pairs,
    model_shape,
    set_generation_config,
    tokenize_pairs,
)
from hftune.jsl.translate import translate

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN_FOLDER = REPO_ROOT / "tests" / "data" / "jsl_main_folder"
TINY = [
    "--d_model",
    "32",
    "--num_heads",
    "4",
    "--encoder_layers",
    "1",
    "--decoder_layers",
    "1",
    "--d_ff",
    "64",
]
QUICK = ["--max_eval_samples", "16", "--learning_rate", "5e-3", "--per_device_train_batch_size", "16"]
REPO_ID = "org/jsl-parent"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
# 鵺 is in no corpus sentence; パンダ is a gloss the corpus lacks.
NEW_PAIRS = [
    ("パンダが好きです", "<パンダ> <好き>"),
    ("パンダを見ました", "<パンダ> <見る>"),
    ("私はパンダが好きです", "<私> <パンダ> <好き>"),
    ("鵺が好きです", "<鵺> <好き>"),
    ("鵺を見ました", "<鵺> <見る>"),
    ("パンダ", "<パンダ>"),
]

# ヴ is not in the fingerspelling alphabet of a new model: its kana and sign are new symbols of the parent.
NEW_SPELLED_PAIR = ("ヴィクトルが好きです", "<指:ヴ> <指:ィ> <指:ク> <指:ト> <指:ル> <好き>")


def load_recipe():
    spec = importlib.util.spec_from_file_location("jsl_recipe", REPO_ROOT / "recipes" / "jsl_seq2seq.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recipe(argv: list[str]) -> str:
    """The recipe in this process on one thread (tiny matrices); returns what it printed."""
    module = load_recipe()
    out, previous = io.StringIO(), os.environ.get("HFTUNE_CPU_THREADS")
    os.environ["HFTUNE_CPU_THREADS"] = "1"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            module.main(argv)
    finally:
        if previous is None:
            os.environ.pop("HFTUNE_CPU_THREADS", None)
        else:
            os.environ["HFTUNE_CPU_THREADS"] = previous
    return out.getvalue()


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parent") / "parent"
    run_recipe(
        ["--output_dir", str(out), *TINY, *QUICK, "--max_train_samples", "160", "--num_train_epochs", "10"]
    )
    return out


def write_pairs(path: Path, rows) -> Path:
    path.write_text("ja,gloss\n" + "".join(f"{ja},{gloss}\n" for ja, gloss in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def new_pairs_file(tmp_path_factory) -> tuple[Path, Path]:
    """Training pairs: 24 of the corpus's, then the new ones 4 times; validation: the new ones."""
    old = load_jsl_corpus("train").select(range(24))
    folder = tmp_path_factory.mktemp("data")
    train = write_pairs(
        folder / "new.csv", [*zip(old["ja"], old["gloss"], strict=True), *NEW_PAIRS * 4, NEW_SPELLED_PAIR]
    )
    return train, write_pairs(folder / "new_validation.csv", NEW_PAIRS)


@pytest.fixture(scope="module")
def hub_cache(parent, tmp_path_factory) -> Path:
    """The parent laid out as the HF cache holds a downloaded repo: loads by repo id offline."""
    hub = tmp_path_factory.mktemp("hf") / "hub"
    repo = hub / "models--org--jsl-parent"
    shutil.copytree(parent, repo / "snapshots" / COMMIT, ignore=shutil.ignore_patterns("checkpoint-*"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    # A generation setting of the parent's own, which the continued model must keep.
    generation = repo / "snapshots" / COMMIT / "generation_config.json"
    generation.write_text(json.dumps({**json.loads(generation.read_text()), "num_beams": 2}))
    return hub


@pytest.fixture(scope="module")
def grown(parent, hub_cache, new_pairs_file, tmp_path_factory) -> tuple[Path, str]:
    """Continued from the repo id, on pairs with new symbols and a replayed slice of the corpus."""
    out = tmp_path_factory.mktemp("grown") / "grown"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
        printed = run_recipe(
            [
                "--model_name_or_path", REPO_ID, "--output_dir", str(out), "--train_file", str(new_pairs_file[0]),
                "--validation_file", str(new_pairs_file[1]), *QUICK, "--num_train_epochs", "30", "--replay_ratio",
                "0.01", "--dropout", "0", "--save_total_limit", "1",
            ]
        )  # fmt: skip
    return out, printed


def test_new_symbols_are_appended_and_used_after_training(parent, grown):
    out, printed = grown
    _, old = load_jsl_model(parent)
    model, tokenizer = load_jsl_model(out)
    old_vocab, new_vocab = old.get_vocab(), tokenizer.get_vocab()
    assert all(new_vocab[token] == index for token, index in old_vocab.items())  # no existing id moved
    added = sorted(new_vocab, key=new_vocab.get)[len(old_vocab) :]
    assert "鵺" in added and "<鵺>" in added and "<パンダ>" in added
    assert model.lm_head.weight is model.encoder.embed_tokens.weight  # tying survives the resize
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer) and config["vocab_hash"] == tokenizer.vocab_hash()
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["num_beams"] == 2 and config["max_target_length"] == 33
    assert generation["max_new_tokens"] == config["max_source_length"] - 1 + config["output_length_slack"] + 1
    # Glosses new to the vocabulary may be generated; new characters may not (the source side only).
    suppressed = set(generation["suppress_tokens"])
    assert new_vocab["<パンダ>"] not in suppressed and new_vocab["鵺"] in suppressed
    assert config["vocab_hash"] != old.vocab_hash()
    # A new fingerspelling sign joins the spelling budget and the copy head with its kana.
    assert [new_vocab["<指:ヴ>"], new_vocab["ヴ"]] in config["spelling_sources"]
    assert (
        len(config["spelling_sources"])
        == len(json.loads((parent / "config.json").read_text())["spelling_sources"]) + 1
    )
    outputs = translate(["パンダが好きです", "パンダを見ました", "鵺が好きです"], model, tokenizer)
    assert any("<パンダ>" in gloss.split() for gloss in outputs), outputs
    corpus_pairs = len(load_jsl_corpus("train"))
    assert "new characters/glosses appended" in printed
    assert f"replay: {round(0.01 * corpus_pairs)} of the {corpus_pairs} training pairs" in printed


def test_provenance_in_config_results_and_card(parent, grown):
    out, _ = grown
    _, old = load_jsl_model(parent)
    config = json.loads((out / "config.json").read_text())
    assert config["training_metadata"]["base_model"] == {
        "name_or_path": REPO_ID, "revision": COMMIT, "vocab_hash": old.vocab_hash(),
    }  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "continued" and results["base_model"] == REPO_ID
    assert results["base_model_revision"] == COMMIT and results["base_model_vocab_hash"] == old.vocab_hash()
    assert "<パンダ>" in results["vocabulary_added"]
    scores = results["continuation_scores"]
    assert set(scores) == {"validation", "original_test"}
    assert {"before", "after"} == set(scores["validation"]) and "exact_match" in scores["original_test"][
        "after"
    ]
    # The new pairs: the parent cannot produce their new glosses; the continued model learns them.
    assert scores["validation"]["after"]["exact_match"] > scores["validation"]["before"]["exact_match"]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"base_model: {REPO_ID}\n" in card and "## Continued from" in card and COMMIT in card


def test_continued_folder_loads_with_remote_code_without_hftune(grown, tmp_path):
    out, _ = grown
    child = tmp_path / "child.py"
    child.write_text(
        textwrap.dedent(
            """
            import json, sys
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
            import torch
            folder, texts = sys.argv[1], json.loads(sys.argv[2])
            model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
            batch = tokenizer(texts, padding=True, return_tensors="pt")
            with torch.no_grad():
                ids = model.generate(**batch)
            print(json.dumps({"decoded": tokenizer.batch_decode(ids, skip_special_tokens=True),
                              "hftune": any(m.split(".")[0] == "hftune" for m in sys.modules),
                              "vocab": len(tokenizer)}))
            """
        )
    )
    texts = ["パンダが好きです", "鵺を見ました"]
    # A clean sys.path: no PYTHONPATH, run from a folder without hftune, site-packages holding no hftune either
    # would be ideal; hftune being importable is ruled out by blocking it.
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    blocker = "import sys\nclass B:\n    def find_spec(self, n, p=None, t=None):\n        if n.split('.')[0] == 'hftune': raise ImportError(n)\nsys.meta_path.insert(0, B())\n"
    child.write_text(blocker + child.read_text())
    result = subprocess.run(
        [sys.executable, str(child), str(out), json.dumps(texts, ensure_ascii=False)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    model, tokenizer = load_jsl_model(out)
    assert not info["hftune"] and info["vocab"] == len(tokenizer)
    assert info["decoded"] == translate(texts, model, tokenizer, num_beams=2)  # the saved num_beams


def test_rerun_resumes_from_its_checkpoint_not_from_the_parent(grown, hub_cache, new_pairs_file):
    out, _ = grown
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
        printed = run_recipe(
            [
                "--model_name_or_path", REPO_ID, "--output_dir", str(out), "--train_file", str(new_pairs_file[0]),
                "--validation_file", str(new_pairs_file[1]), *QUICK, "--num_train_epochs", "30", "--replay_ratio",
                "0.01", "--dropout", "0", "--save_total_limit", "1",
            ]
        )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert "resuming from" in printed and "checkpoint-" in results["resumed_from_checkpoint"]
    assert results["base_model"] == REPO_ID  # still the parent it was continued from


def test_continue_from_a_folder_without_new_symbols(parent, tmp_path):
    out = tmp_path / "again"
    # The same seeded 160 pairs the parent trained on: nothing new, so --freeze_vocabulary has nothing to refuse.
    run_recipe(
        ["--model_name_or_path", str(parent), "--output_dir", str(out), *QUICK, "--max_train_samples", "160",
         "--num_train_epochs", "1", "--freeze_vocabulary"]
    )  # fmt: skip
    old_model, old = load_jsl_model(parent)
    model, tokenizer = load_jsl_model(out)
    assert tokenizer.get_vocab() == old.get_vocab()
    results = json.loads((out / "results.json").read_text())
    assert results["vocabulary_added"] == [] and results["base_model_vocab_hash"] == tokenizer.vocab_hash()
    assert results["base_model"] == str(parent.resolve()) and results["base_model_revision"] is None
    assert "base_model:" not in (out / "README.md").read_text().split("---")[1]  # a local path is no Hub id
    assert not torch.equal(model.encoder.embed_tokens.weight, old_model.encoder.embed_tokens.weight)


def recipe_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        load_recipe().main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ")
    return lines[-1]


def test_conflicts_and_frozen_vocabulary_are_refused_before_writing(parent, tmp_path, capsys):
    out = tmp_path / "never"
    base = ["--model_name_or_path", str(parent), "--output_dir", str(out)]
    err = recipe_error([*base, "--d_model", "64"], capsys)
    assert (
        f"--d_model 64 contradicts d_model 32 of the model loaded from --model_name_or_path {parent}" in err
    )
    err = recipe_error([*base, "--model_size", "base"], capsys)
    assert "--model_size base sets d_model 256, which contradicts d_model 32" in err
    # Pairs the parent trained on (the recipe's seeded subset), two of them with a new symbol added.
    trained, _, _ = load_training_pairs(JslArguments(max_train_samples=160), seed=42)
    known = trained["train"].select(range(4))
    rows = list(zip(known["ja"], known["gloss"], strict=True))
    rows[2] = (rows[2][0] + "鵺", rows[2][1] + " <鵺>")
    rows[3] = (rows[3][0], rows[3][1] + " <パンダ>")
    frozen = write_pairs(tmp_path / "frozen.csv", rows)
    err = recipe_error(
        [*base, "--train_file", str(frozen), "--validation_file", str(frozen), "--freeze_vocabulary"], capsys
    )
    assert "--freeze_vocabulary: 3 characters/glosses" in err
    assert "鵺 (frozen.csv line 4), <パンダ> (frozen.csv line 5), <鵺> (frozen.csv line 4);" in err
    err = recipe_error([*base, "--replay_ratio", "0.5"], capsys)
    assert "already the training data without --train_file" in err
    err = recipe_error(["--output_dir", str(out), "--replay_ratio", "0.5"], capsys)
    assert "pass --model_name_or_path" in err
    err = recipe_error([*base, "--parent_lr_ratio", "1.5"], capsys)
    assert "--parent_lr_ratio 1.5 must be between 0 and 1" in err
    err = recipe_error(["--output_dir", str(out), "--parent_lr_ratio", "0.1"], capsys)
    assert "pass --model_name_or_path" in err
    err = recipe_error(["--output_dir", str(out), "--replay_ratio", "1.5"], capsys)
    assert "--replay_ratio 1.5" in err
    err = recipe_error(["--model_name_or_path", "./no/such/folder", "--output_dir", str(out)], capsys)
    assert "does not exist" in err
    assert not out.exists()


def test_presets_and_explicit_shape_flags():
    assert (
        model_shape(JslArguments())
        == MODEL_SIZES["tiny"]
        == {
            "d_model": 128,
            "num_heads": 4,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "d_ff": 512,
        }
    )  # fmt: skip  (the recipe's default shape before presets existed)
    assert model_shape(JslArguments(model_size="base")) == {
        "d_model": 256, "num_heads": 8, "encoder_layers": 6, "decoder_layers": 6, "d_ff": 1024,
    }  # fmt: skip
    assert model_shape(JslArguments(model_size="small", encoder_layers=5)) == {
        **MODEL_SIZES["small"], "encoder_layers": 5,
    }  # fmt: skip


def test_grown_embeddings_keep_old_rows_and_start_new_ones_at_the_mean():
    tokenizer = JslTokenizer.build_from_pairs([("あい", "<あ> <い>")])
    model = build_model(
        tokenizer, JslArguments(d_model=16, num_heads=2, encoder_layers=1, decoder_layers=1, d_ff=32), 0
    )
    old = model.encoder.embed_tokens.weight.detach().clone()
    tokenizer.add_symbols(tokenizer.unknown_symbols([("う", "<う>")]))
    grow_embeddings(model, len(tokenizer))
    weight = model.encoder.embed_tokens.weight
    assert weight.shape[0] == len(tokenizer) == old.shape[0] + 2 and model.config.vocab_size == len(tokenizer)
    torch.testing.assert_close(weight[: old.shape[0]], old, rtol=0, atol=0)
    torch.testing.assert_close(weight[old.shape[0] :], old.mean(dim=0).expand(2, -1))
    assert model.lm_head.weight is weight


@pytest.mark.parametrize("ratio", [0.0, 0.25])
def test_parent_update_scale_slows_the_parent_weights_not_the_new_rows(ratio):
    tokenizer = JslTokenizer.build_from_pairs([("あい", "<あ> <い>")])
    model = build_model(
        tokenizer, JslArguments(d_model=16, num_heads=2, encoder_layers=1, decoder_layers=1, d_ff=32), 0
    )
    first_new = len(tokenizer)
    tokenizer.add_symbols(tokenizer.unknown_symbols([("う", "<う>")]))
    grow_embeddings(model, len(tokenizer))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    callback = ParentUpdateScale(model, first_new, ratio)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = tokenizer(["あいう"], text_target=["<あ> <う>"], return_tensors="pt")
    model(**batch).loss.backward()
    callback.on_pre_optimizer_step(None, None, None)
    optimizer.step()
    full = {name: p.detach().clone() for name, p in model.named_parameters()}  # the optimizer's own step
    callback.on_optimizer_step(None, None, None)
    for name, param in model.named_parameters():
        expected = before[name] + ratio * (full[name] - before[name])
        if name == "encoder.embed_tokens.weight":
            torch.testing.assert_close(param[first_new:], full[name][first_new:], rtol=0, atol=0)
            assert not torch.equal(param[first_new:], before[name][first_new:])
            param, expected = param[:first_new], expected[:first_new]
        torch.testing.assert_close(param, expected, rtol=1e-6, atol=1e-7)
    body = model.get_decoder().layers[0].feed_forward.fc1.weight
    assert torch.equal(body, before["decoder.layers.0.feed_forward.fc1.weight"]) == (ratio == 0)


def test_64_characters_and_32_glosses_fit_the_defaults(tmp_path, capsys):
    source = ("私は毎日図書館で本を読みます" * 5)[:64]
    target = " ".join(["<私>", "<本>", "<読む>", "<図書館>"] * 8)
    pairs = [(source, target), ("ありがとう", "<ありがとう>")]
    args = JslArguments(d_model=16, num_heads=2, encoder_layers=1, decoder_layers=1, d_ff=32)
    tokenizer = build_tokenizer(
        {"ja": [p[0] for p in pairs], "gloss": [p[1] for p in pairs]}, args.max_source_length
    )
    model = build_model(tokenizer, args, seed=0).eval()
    from datasets import Dataset, DatasetDict

    splits = DatasetDict({"train": Dataset.from_dict({"ja": [source], "gloss": [target]})})
    encoded = tokenize_pairs(splits, tokenizer, args.max_target_length)["train"][0]
    assert len(encoded["input_ids"]) == 65 and len(encoded["labels"]) == 33  # 64 characters, 32 glosses, </s>
    set_generation_config(model, tokenizer, for_trainer=False)
    with torch.inference_mode():
        # Without the output bound's loop stop, which would end this untrained model's repetitive output early.
        ids = model.generate(
            **tokenizer([source], return_tensors="pt"), min_new_tokens=33, bound_output_length=False
        )
    # start + the cap, which covers 32 glosses and </s> and the longest output the bound allows (0.8 x 64 + 3)
    assert ids.shape[1] == 1 + generation_cap(model.config) == 1 + int(0.8 * 64) + 3 + 1
    assert model.decoder._position_table.shape[0] >= 35
    translate([source], model, tokenizer)
    export_attentions(model, tokenizer, [source], tmp_path / "attentions", 24)
    printed = capsys.readouterr()
    assert "truncated" not in printed.out + printed.err
    assert "attention export skips" in printed.err


def test_folder_saved_by_main_loads_and_translates_identically(tmp_path):
    """tests/data/jsl_main_folder was written by main's code (tests/data/make_jsl_main_folder.py): its own
    vocabulary and lengths (48/16), the same glosses and logits with today's classes, and it continues with its
    ids unchanged."""
    expected = json.loads((MAIN_FOLDER / "expected.json").read_text(encoding="utf-8"))
    model, tokenizer = load_jsl_model(MAIN_FOLDER / "model")
    assert tokenizer.model_max_length == 48 and model.generation_config.max_new_tokens == 16
    assert translate(expected["texts"], model, tokenizer) == expected["glosses"]
    batch = tokenizer(expected["texts"], text_target=expected["glosses"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, load_file(MAIN_FOLDER / "expected_logits.safetensors")["logits"])

    old_vocab = tokenizer.get_vocab()
    tokenizer.add_symbols(tokenizer.unknown_symbols(NEW_PAIRS))
    grow_embeddings(model, len(tokenizer))
    assert all(tokenizer.get_vocab()[t] == i for t, i in old_vocab.items())
    assert translate(expected["texts"][:4], model, tokenizer) == expected["glosses"][:4]  # old rows untouched
