"""The JSL model on the web (issue 20): `hftune export onnx` + onnxruntime parity on the test split, the
TypeScript client in Node (`node --test`) and the demo page in headless Chromium, both against PyTorch's
glosses computed here in the same run.

A tiny model trained for a second is exported once per module; reference.json (PyTorch's glosses for the test
split and awkward inputs, Python's token ids) is written next to it for the Node tests. The Node and browser
tests need `js/` installed (`make js`: npm ci + tsc) and Chromium (`make setup` installs Debian's as root);
where these are missing they are skipped with the reason."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import threading
import unicodedata
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from test_cards import sample_results
from test_jsl_translate import train_tiny_jsl_folder

from hftune.cli import main as hftune_main
from hftune.errors import HftuneError
from hftune.hub import publish_run
from hftune.jsl import onnx_export
from hftune.jsl.artifacts import load_jsl_model
from hftune.jsl.corpus import load_jsl_corpus
from hftune.jsl.onnx_export import (
    GRAPH_FILES,
    ONNX_DIR,
    WEB_CONFIG_FILE,
    OnnxGreedyDecoder,
    export_onnx,
    generation_settings,
)
from hftune.jsl.tokenization_jsl import source_tokens
from hftune.jsl.translate import translate
from hftune.reporting.cards import append_eval_result, write_model_card

pytest_plugins = ["hub_server"]

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "org/jsl-web"
JS_DIR = REPO_ROOT / "js"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
LONG_TEXT = "わたしはたべます" * 40
EDGE_TEXTS = [
    "", "   ", "ありがとう", "𓀀🙂\x07ЖЖ", LONG_TEXT, "\u3000ありがとう\u3000", "ｱﾘｶﾞﾄｳ", "ＡＢＣ１２３？",
    "か\u3099", "<s></s><unk>", "\ufeffありがとう", "\x1cあ\x85い\u2028", "わたし\tは\nたべます",
]  # fmt: skip
# Tokenizer cases beyond EDGE_TEXTS: composition across characters, ligatures, full-width and surrogate pairs.
TOKENIZER_CASES = [
    *EDGE_TEXTS,
    "ﾊﾟﾝ",
    "は\u309aん",
    "㍻",
    "①②",
    "ﬁ",
    "Ａ　Ｂ",
    "𠮷野家",
    "e\u0301",
    "\u212b",
    "👍🏽",
    "\r\n",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: a second thread only adds contention on the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def exported(one_thread, tmp_path_factory) -> tuple[Path, str, str]:
    """A tiny trained model with a recipe-style card and results.json, exported in place by the CLI;
    with what the CLI printed on stdout and stderr."""
    folder = train_tiny_jsl_folder(tmp_path_factory.mktemp("jsl") / "model")
    write_model_card(folder, sample_results("jsl-seq2seq", "scratch", "remote-code"))
    # A result `hftune evaluate` added later: the export must keep it.
    append_eval_result(folder / "README.md", {"gloss_wer": 0.5}, dataset="acme/jsl-news", split="test")
    (folder / "results.json").write_text(json.dumps(sample_results("jsl-seq2seq", "scratch", "remote-code")))
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert hftune_main(["export", "onnx", str(folder)]) == 0
    return folder, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def folder(exported) -> Path:
    return exported[0]


@pytest.fixture(scope="module")
def loaded(folder):
    return load_jsl_model(folder)


@pytest.fixture(scope="module")
def reference(folder, loaded) -> dict:
    """PyTorch's glosses and Python's token ids, as reference.json for the Node tests."""
    model, tokenizer = loaded
    texts = list(load_jsl_corpus("test")["ja"])
    stderr = io.StringIO()
    # The JS client translates every input (it has no unknown-share rule): every reference uses the same setting.
    with contextlib.redirect_stderr(stderr):
        edge_glosses = translate(EDGE_TEXTS, model, tokenizer, max_unknown_share=1.0)
    (warning,) = [line.removeprefix("hftune: warning: ") for line in stderr.getvalue().splitlines()]
    unknown = [tokenizer.unk_token_id, tokenizer.eos_token_id]
    ranges, not_unknown = [], {}
    for code_point in range(0x110000):
        char = chr(code_point)
        # Unassigned in this Python's Unicode tables, surrogates and private use: normalisation of assigned
        # characters is stable across Unicode versions, so only these may legitimately differ in JavaScript.
        if unicodedata.category(char) in ("Cn", "Cs", "Co"):
            continue
        if ranges and ranges[-1][1] == code_point - 1:
            ranges[-1][1] = code_point
        else:
            ranges.append([code_point, code_point])
        ids = [tokenizer.vocab.get(token, tokenizer.unk_token_id) for token in source_tokens(char)]
        ids.append(tokenizer.eos_token_id)
        if ids != unknown:
            not_unknown[code_point] = ids
    data = {
        "model_dir": str(folder),
        "test": {"texts": texts, "glosses": translate(texts, model, tokenizer, max_unknown_share=1.0)},
        "edge": {"texts": EDGE_TEXTS, "glosses": edge_glosses, "warning": warning},
        "tokenization": {
            "max_source_length": int(tokenizer.model_max_length),
            "cases": [{"text": text, "ids": tokenizer(text)["input_ids"]} for text in TOKENIZER_CASES],
            "code_points": {"ranges": ranges, "not_unknown": not_unknown, "unknown": unknown},
        },
    }
    (folder.parent / "reference.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return data


# -- export ---------------------------------------------------------------------------------------------------


def test_export_writes_three_self_contained_graphs_and_the_client_config(folder, loaded):
    model, tokenizer = loaded
    onnx_dir = folder / ONNX_DIR
    assert sorted(p.name for p in onnx_dir.iterdir()) == sorted([*GRAPH_FILES.values(), WEB_CONFIG_FILE])
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging or backup left
    config = json.loads((onnx_dir / WEB_CONFIG_FILE).read_text(encoding="utf-8"))
    assert config["vocab"] == [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]
    assert config["suppress_tokens"] == sorted(model.generation_config.suppress_tokens)
    assert config["max_source_length"] == tokenizer.model_max_length == 65
    assert config["max_new_tokens"] == model.generation_config.max_new_tokens
    # generate()'s output bound travels with the graphs, so the clients stop where PyTorch stops.
    assert (config["output_length_ratio"], config["output_length_slack"]) == (0.8, 3)
    assert (config["eos_token_id"], config["decoder_start_token_id"]) == (2, 1)
    assert config["validation"]["sentences"] == len(load_jsl_corpus("test"))
    assert config["validation"]["max_abs_logit_difference"] <= 1e-4
    import onnx

    for kind, name in GRAPH_FILES.items():
        path = onnx_dir / name
        assert config["files"][kind]["bytes"] == path.stat().st_size
        graph = onnx.load(str(path), load_external_data=False)
        # Weights inside the file: onnxruntime-web cannot fetch a separate .onnx.data from a URL.
        assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
        assert graph.graph.initializer
    # The recipe's models copy fingerspelling (config.spelling_copy): the encoder hands the copy head's keys and
    # map to both decoders, as inputs a client feeds at every step.
    assert model.config.spelling_copy
    outputs = {o.name for o in onnx.load(str(onnx_dir / GRAPH_FILES["encoder"])).graph.output}
    assert outputs == {"last_hidden_state", "copy_keys", "copy_map"}
    inputs = {i.name for i in onnx.load(str(onnx_dir / GRAPH_FILES["decoder_with_past"])).graph.input}
    assert inputs == {"input_ids", "encoder_attention_mask", "copy_keys", "copy_map"} | {
        f"past_key_values.0.{side}.{kind}" for side in ("decoder", "encoder") for kind in ("key", "value")
    }


def test_the_cached_decoder_reaches_the_generation_cap(folder, loaded):
    """The cap sits above the longest bound (68 tokens for 64 kana), past the 33 of a training pair: the exported
    decoder's position table must cover a cache of max_new_tokens - 1 tokens (a shorter one fails in Gather)."""
    import onnxruntime

    model, _ = loaded
    config = json.loads((folder / ONNX_DIR / WEB_CONFIG_FILE).read_text(encoding="utf-8"))
    steps = config["max_new_tokens"]
    assert steps > model.config.max_target_length
    session = onnxruntime.InferenceSession(str(folder / ONNX_DIR / GRAPH_FILES["decoder_with_past"]))
    source_len, d_model = 5, model.config.d_model
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in session.get_inputs():
        if spec.name == "encoder_attention_mask":
            feeds[spec.name] = np.ones((1, source_len), dtype=np.int64)
        elif spec.name == "input_ids":
            feeds[spec.name] = np.array([[config["eos_token_id"]]], dtype=np.int64)
        elif spec.name == "copy_keys":
            feeds[spec.name] = rng.standard_normal((1, source_len, d_model), dtype=np.float32)
        elif spec.name == "copy_map":
            feeds[spec.name] = np.zeros((1, source_len, len(config["spelling_sources"])), dtype=np.float32)
        else:  # past_key_values.{layer}.{decoder|encoder}.{key|value}
            length = steps - 1 if ".decoder." in spec.name else source_len
            shape = (1, config["num_heads"], length, config["head_dim"])
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32)
    logits = session.run(["logits"], feeds)[0]
    assert logits.shape == (1, 1, len(config["vocab"])) and np.isfinite(logits).all()


def test_onnxruntime_greedy_equals_pytorch_on_the_test_split(folder, loaded):
    """Independent of the export's own check: onnxruntime's step logits against a teacher-forced PyTorch
    forward pass over PyTorch's own greedy output, and the tokens against generate()."""
    model, tokenizer = loaded
    texts = list(load_jsl_corpus("test")["ja"])
    settings = generation_settings(model, tokenizer)
    decoder = OnnxGreedyDecoder(folder / ONNX_DIR, settings)
    worst, compared = 0.0, 0
    for start in range(0, len(texts), 128):
        batch = tokenizer(texts[start : start + 128], padding=True, return_tensors="pt")
        with torch.inference_mode():
            generated = model.generate(**batch, num_beams=1, do_sample=False)
            forced = model(**batch, decoder_input_ids=generated[:, :-1]).logits.numpy()
        tokens, logits = decoder.generate(batch["input_ids"].numpy(), batch["attention_mask"].numpy())
        assert np.array_equal(tokens, generated[:, 1:].numpy())
        for row in range(len(tokens)):
            steps = onnx_export._generated_length(tokens[row], tokenizer.eos_token_id)
            worst = max(worst, float(np.abs(logits[row, :steps] - forced[row, :steps]).max()))
            compared += steps
    assert worst <= 1e-4
    assert compared > len(texts)  # every sentence decoded at least one step, most several


def test_card_gains_the_browser_section_and_keeps_its_metadata(folder):
    card = ModelCard.load(folder / "README.md")
    assert "## Use in the browser" in card.text
    assert "https://huggingface.co/YOUR_ORG/RUN_NAME/resolve/main" in card.text
    assert re.search(r"`encoder_model\.onnx` 0\.\d\d MB", card.text)
    datasets = {r.dataset_type for r in card.data.eval_results}
    assert datasets == {"hftune-jsl-corpus", "acme/jsl-news"}
    other = folder.parent / "no-onnx"
    write_model_card(other, sample_results("jsl-seq2seq", "scratch", "remote-code"))
    assert "Use in the browser" not in (other / "README.md").read_text(encoding="utf-8")


def test_cli_reports_the_check(exported):
    folder, stdout, stderr = exported
    assert stdout.strip() == str(folder / ONNX_DIR)
    assert re.search(
        r"wrote .*onnx: encoder_model\.onnx 0\.\d\d MB, .*; onnxruntime matches PyTorch on "
        rf"{len(load_jsl_corpus('test'))} test sentences "
        r"\(greedy tokens identical, logits within ",
        stderr,
    )


def copy_graphs_instead(folder: Path, monkeypatch) -> None:
    """The module fixture's graphs stand in for a second real export (the check against PyTorch still runs)."""

    def copy_graphs(model, tokenizer, onnx_dir):
        shutil.copytree(folder / ONNX_DIR, onnx_dir, ignore=shutil.ignore_patterns(WEB_CONFIG_FILE))

    monkeypatch.setattr(onnx_export, "export_graphs", copy_graphs)


def test_export_to_another_folder_replaces_an_older_export_with_a_complete_copy(
    folder, tmp_path, monkeypatch
):
    out = tmp_path / "jsl-web"
    shutil.copytree(folder, out)  # an older export of the model is there already
    (out / "onnx" / "stale.onnx").write_bytes(b"old")
    copy_graphs_instead(folder, monkeypatch)
    assert export_onnx(folder, out) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jsl-web"]  # nothing staged left next to it
    assert sorted(p.name for p in (out / ONNX_DIR).iterdir()) == sorted(
        [*GRAPH_FILES.values(), WEB_CONFIG_FILE]
    )
    assert {p.name for p in folder.iterdir() if p.is_file()} == {p.name for p in out.iterdir() if p.is_file()}
    assert (out / "README.md").read_text(encoding="utf-8") == (folder / "README.md").read_text(
        encoding="utf-8"
    )
    from hftune.hub import collect_run_files

    published = set(collect_run_files(out))
    assert {f"onnx/{name}" for name in [*GRAPH_FILES.values(), WEB_CONFIG_FILE]} <= published
    assert {"model.safetensors", "config.json", "vocab.json", "README.md"} <= published


def export_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        hftune_main(["export", *args])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_cli_bad_input(folder, tmp_path, capsys):
    assert "invalid choice: 'tflite'" in export_error(["tflite", str(folder)], capsys)
    err = export_error(["onnx", str(tmp_path / "missing")], capsys)
    assert "is neither a folder nor a valid Hub repo id" in err and len(err.strip().splitlines()) == 1
    err = export_error(["onnx", "org/not-cached"], capsys)
    assert "could not be fetched from the Hub" in err and len(err.strip().splitlines()) == 1
    busy = tmp_path / "notes"
    busy.mkdir()
    (busy / "todo.txt").write_text("mine")
    err = export_error(["onnx", str(folder), "--output", str(busy)], capsys)
    assert f"--output {busy} exists and is not a model folder" in err
    assert sorted(p.name for p in busy.iterdir()) == ["todo.txt"]


def test_a_mismatch_fails_naming_the_first_differing_sentence_and_writes_nothing(
    folder, tmp_path, monkeypatch
):
    """The export check compares against a model whose first gloss's embedding was nudged after the graphs
    (the real model's, copied to save a second export) were written: onnxruntime then disagrees with PyTorch,
    and the export must refuse, leaving the folder and its previous export as they were."""
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    texts = list(load_jsl_corpus("test")["ja"])
    first_gloss = translate(texts[:1], *load_jsl_model(folder))[0].split()[0]
    copy_graphs_instead(folder, monkeypatch)
    copy_graphs = onnx_export.export_graphs

    def graphs_then_nudge(model, tokenizer, onnx_dir):
        copy_graphs(model, tokenizer, onnx_dir)
        with torch.no_grad():
            model.encoder.embed_tokens.weight[tokenizer.convert_tokens_to_ids(first_gloss)] *= -3.0

    monkeypatch.setattr(onnx_export, "export_graphs", graphs_then_nudge)
    with pytest.raises(
        HftuneError, match=r"does not reproduce PyTorch on sentence 1 '" + re.escape(texts[0])
    ):
        export_onnx(copy)
    assert {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_logits_beyond_the_tolerance_fail_too(folder, loaded):
    model, tokenizer = loaded
    texts = list(load_jsl_corpus("test")["ja"])[:8]
    with pytest.raises(
        HftuneError, match=r"logits differ from PyTorch's by [\d.e-]+ \(> 1e-09\) on sentence 1 "
    ):
        onnx_export.validate_onnx(model, tokenizer, folder / ONNX_DIR, texts, atol=1e-9)


def publish(folder: Path, server) -> str:
    """Publish the exported folder to the test Hub; returns the base URL a web app would load it from."""
    publish_run(folder, REPO_ID, endpoint=server.endpoint, token=server.token)
    return f"{server.endpoint}/{REPO_ID}/resolve/main"


def test_publish_uploads_the_onnx_folder(folder, hub_online):
    publish(folder, hub_online)
    published = hub_online.files(REPO_ID)
    for name in [*GRAPH_FILES.values(), WEB_CONFIG_FILE]:
        assert published[f"onnx/{name}"] == (folder / ONNX_DIR / name).read_bytes()
    assert "## Use in the browser" in published["README.md"].decode()
    assert f"https://huggingface.co/{REPO_ID}/resolve/main" in published["README.md"].decode()


# -- the TypeScript client ------------------------------------------------------------------------------------


def built_client() -> str:
    """Path of `node` after compiling js/ (tsc is fast; a stale dist/ would test old code); skip if absent."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: `make setup` installs it where it can (apt-get as root)")
    tsc = JS_DIR / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        pytest.skip("js/node_modules is missing: run `make js` (npm ci with ONNXRUNTIME_NODE_INSTALL=skip)")
    build = subprocess.run(
        [str(tsc), "-p", str(JS_DIR)], capture_output=True, text=True, timeout=120, check=False
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return node


def test_node_client_gives_pytorchs_glosses(reference, folder, hub_online):
    """Every Node test, over plain HTTP, a local folder, and the published repo's resolve/main URL."""
    node = built_client()
    tests = sorted(str(p) for p in (JS_DIR / "dist" / "test").glob("*.test.js"))
    env = {
        **os.environ,
        "JSL_REFERENCE": str(folder.parent / "reference.json"),
        "JSL_HUB_BASE_URL": publish(folder, hub_online),
    }
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", *tests],
        cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    summary = dict(re.findall(r"^# (pass|fail|skipped|todo|cancelled) (\d+)$", result.stdout, re.MULTILINE))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert summary == {"pass": summary["pass"], "fail": "0", "skipped": "0", "todo": "0", "cancelled": "0"}
    assert int(summary["pass"]) >= 13


class _Mounts(http.server.SimpleHTTPRequestHandler):
    """Static files from `mounts` (URL prefix -> folder, longest prefix first); anything else is a 404."""

    mounts: dict[str, Path] = {}
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
    }

    def translate_path(self, path: str) -> str:
        path = urllib.parse.unquote(path.split("?", 1)[0].split("#", 1)[0])
        for prefix, root in sorted(self.mounts.items(), key=lambda item: -len(item[0])):
            target = (root / path[len(prefix) :]).resolve()
            if path.startswith(prefix) and target.is_relative_to(root.resolve()):
                return str(target)
        return str(Path(self.mounts["/"]) / ".not-served")

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(mounts: dict[str, Path]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), type("Handler", (_Mounts,), {"mounts": mounts})
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def chromium_or_skip() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no Chromium on this machine: `apt-get install -y chromium` (make setup does it as root)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright Python package is missing: `pip install playwright==1.65.2`")
    return path


def test_demo_page_in_headless_chromium_gives_pytorchs_glosses(reference, folder):
    chromium = chromium_or_skip()
    built_client()
    from playwright.sync_api import sync_playwright

    texts = [*reference["test"]["texts"], "", "🙂ЖЖ", LONG_TEXT]
    expected = [
        *reference["test"]["glosses"],
        *translate(texts[-3:], *load_jsl_model(folder), max_unknown_share=1.0),
    ]
    with serve({"/": JS_DIR, "/model/": folder}) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base}/demo/index.html?model=/model/")
            page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=60_000)
            assert page.get_attribute("body", "data-state") == "ready", page.inner_text("#status")
            page.fill("#input", "\n".join(texts))
            page.click("#translate")
            page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=120_000)
            glosses = page.eval_on_selector_all("#glosses li", "items => items.map(item => item.textContent)")
            assert glosses == expected
            assert re.fullmatch(rf"{len(texts)} sentences in \d+\.\d ms", page.inner_text("#time"))
            characters = reference["tokenization"]["max_source_length"] - 1  # </s> takes one position
            assert (
                f"1 input(s) longer than the model's {characters} characters were truncated"
                in page.inner_text("#warning")
            )
            assert errors == []

            # A base URL without the export: one error naming the file.
            page.goto(f"{base}/demo/index.html?model=/nowhere/")
            page.wait_for_selector("body[data-state=error]", timeout=60_000)
            assert page.inner_text("#status") == (
                f"cannot fetch {base}/nowhere/onnx/web_config.json: HTTP 404 File not found; the base URL must "
                "hold the files `hftune export onnx` wrote"
            )
        finally:
            browser.close()
