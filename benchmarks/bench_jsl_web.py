"""The JSL model on the web (issue 20): the TypeScript client in headless Chromium (onnxruntime-web, wasm, one
thread) and in Node (onnxruntime-node, one thread) beside PyTorch (`hftune translate`'s path, one thread).

    python benchmarks/bench_jsl_web.py --model outputs/jsl_seq2seq   # a trained folder
    python benchmarks/bench_jsl_web.py                               # trains the recipe's default model first
    python benchmarks/bench_jsl_web.py --quick                       # smoke run on a tiny model

Without `--model` (or `JSL_MODEL`) the recipe's default model (d_model 128, 2+2 layers, 60 epochs) is trained
once into `OUTPUT_DIR/jsl_web_model` (about 4 minutes on 2 idle cores) and reused by later runs. The model is
exported with `hftune export onnx` into `OUTPUT_DIR/jsl_web_export`, which the page loads from a real HTTP
server on 127.0.0.1 and Node reads from disk. All three runtimes translate the corpus's test split: batched
throughput = sentences / wall time of one `translate(all sentences)` call with each one's default batch size
(`hftune translate`: 256, the TypeScript client: 32; shortest sentences first), median of `--repeats`; one-sentence latency = one `translate([sentence])` call, p50/p95 over
`--single_sentences` sentences x repeats. Each measures after warm-up in its own process. The downloads are
the bytes the server sent while the demo page loaded (model files, onnxruntime-web's wasm and JavaScript,
the client). The glosses of the three runtimes are compared too.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import common

from hftune.errors import HftuneError, exit_on_user_error

JS_DIR = common.REPO_ROOT / "js"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
QUICK_RECIPE_ARGS = [
    "--d_model", "32", "--num_heads", "4", "--encoder_layers", "1", "--decoder_layers", "1", "--d_ff", "64",
    "--max_train_samples", "64", "--max_eval_samples", "16", "--num_train_epochs", "1",
]  # fmt: skip
TARGETS = {"browser_p50_ms": 20.0, "browser_sentences_per_second": 300.0, "node_sentences_per_second": 500.0}

# In the page: the demo's translator, warmed up, then the same measurements as the Node worker.
PAGE_BENCHMARK = """async ({ texts, singles, repeats, warmup }) => {
  const translator = window.jslTranslator;
  for (let i = 0; i < warmup; i++) await translator.translate(texts);
  const batched_ms = [];
  for (let i = 0; i < repeats; i++) {
    const started = performance.now();
    await translator.translate(texts);
    batched_ms.push(performance.now() - started);
  }
  for (const text of singles.slice(0, Math.max(warmup, 1))) await translator.translate([text]);
  const latencies_ms = [];
  for (let i = 0; i < repeats; i++) {
    for (const text of singles) {
      const started = performance.now();
      await translator.translate([text]);
      latencies_ms.push(performance.now() - started);
    }
  }
  return { batched_ms, latencies_ms, glosses: await translator.translate(texts), agent: navigator.userAgent };
}"""


def trained_model(args: argparse.Namespace) -> Path:
    """--model, else JSL_MODEL, else the recipe's model trained once into OUTPUT_DIR (tiny with --quick)."""
    chosen = args.model or os.environ.get("JSL_MODEL")
    if chosen:
        return Path(chosen)
    folder = args.output_dir / ("jsl_web_model_quick" if args.quick else "jsl_web_model")
    if (folder / "model.safetensors").is_file():
        return folder
    print(f"training the recipe's {'tiny' if args.quick else 'default'} JSL model into {folder}", flush=True)
    command = [
        sys.executable,
        str(common.REPO_ROOT / "recipes" / "jsl_seq2seq.py"),
        "--output_dir",
        str(folder),
    ]
    subprocess.run(command + (QUICK_RECIPE_ARGS if args.quick else []), check=True)
    return folder


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Static files: /model/ from the export, everything else from js/; counts the bytes sent per path."""

    export_dir: Path
    sent: Counter
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
    }

    def translate_path(self, path: str) -> str:
        path = urllib.parse.unquote(path.split("?", 1)[0])
        if path.startswith("/model/"):
            return str(self.export_dir / path.removeprefix("/model/"))
        return str(JS_DIR / path.lstrip("/"))

    def copyfile(self, source, outputfile) -> None:
        start = source.tell()
        super().copyfile(source, outputfile)
        self.sent[self.path.split("?", 1)[0]] += source.tell() - start

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(export_dir: Path):
    handler = type("Handler", (CountingHandler,), {"export_dir": export_dir, "sent": Counter()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.sent
    finally:
        server.shutdown()
        server.server_close()


def browser_run(export_dir: Path, texts: list[str], singles: list[str], args) -> dict:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise HftuneError("no Chromium here: `apt-get install -y chromium` (Debian), then run again")
    from playwright.sync_api import sync_playwright

    with serve(export_dir) as (base, sent), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            started = time.perf_counter()
            page.goto(f"{base}/demo/index.html?model=/model/&threads=1")
            page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=120_000)
            load_ms = 1000 * (time.perf_counter() - started)
            if page.get_attribute("body", "data-state") != "ready":
                raise HftuneError(f"the demo page failed to load the model: {page.inner_text('#status')}")
            downloads = dict(sent)
            result = page.evaluate(
                PAGE_BENCHMARK,
                {"texts": texts, "singles": singles, "repeats": args.repeats, "warmup": args.warmup},
            )
        finally:
            browser.close()
    return {**result, "load_ms": load_ms, "downloads": downloads}


def node_run(export_dir: Path, texts: list[str], args) -> dict:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "dist" / "src" / "node.js").is_file():
        raise HftuneError("js/ is not built or node is missing: run `make js`, then run again")
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8", delete=False) as handle:
        json.dump(texts, handle, ensure_ascii=False)
    try:
        script = common.REPO_ROOT / "benchmarks" / "jsl_web_node.mjs"
        command = [node, str(script), str(export_dir), handle.name, str(args.repeats), str(args.warmup),
                   str(args.single_sentences)]  # fmt: skip
        return common.run_json_worker(command, "the Node benchmark")
    finally:
        os.unlink(handle.name)


def torch_run(model_dir: Path, texts: list[str], singles: list[str], args) -> dict:
    from hftune.jsl.artifacts import load_jsl_model
    from hftune.jsl.translate import translate

    model, tokenizer = load_jsl_model(model_dir)
    for _ in range(args.warmup):
        translate(texts, model, tokenizer)
    batched = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        translate(texts, model, tokenizer)
        batched.append(1000 * (time.perf_counter() - started))
    for text in singles[: max(args.warmup, 1)]:
        translate([text], model, tokenizer)
    latencies = []
    for _ in range(args.repeats):
        for text in singles:
            started = time.perf_counter()
            translate([text], model, tokenizer)
            latencies.append(1000 * (time.perf_counter() - started))
    return {"batched_ms": batched, "latencies_ms": latencies, "glosses": translate(texts, model, tokenizer)}


def shown(path: Path) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(common.REPO_ROOT))
    except ValueError:
        return str(path)


def summarise(name: str, raw: dict, sentences: int) -> dict:
    return {
        "runtime": name,
        "sentences_per_second": sentences / (common.median(raw["batched_ms"]) / 1000),
        "p50_ms": common.percentile(raw["latencies_ms"], 50),
        "p95_ms": common.percentile(raw["latencies_ms"], 95),
    }


def download_rows(downloads: dict[str, int]) -> list[tuple[str, str, float]]:
    def kind(path: str) -> str:
        if path.startswith("/model/"):
            return "model files"
        if path.endswith(".wasm"):
            return "onnxruntime-web wasm"
        if "onnxruntime-web" in path:
            return "onnxruntime-web JavaScript"
        return "page and client"

    return sorted(((kind(path), path, size / 1e6) for path, size in downloads.items()), key=lambda r: r[:2])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, default_repeats=5)
    parser.add_argument(
        "--model", default=None, help="a trained JSL folder (default: JSL_MODEL, or train one)"
    )
    parser.add_argument("--single_sentences", type=int, default=100, help="sentences for the latency rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.single_sentences = 1, 1, 5
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    from hftune.jsl.corpus import load_jsl_corpus
    from hftune.jsl.onnx_export import export_onnx

    args = parse_args(argv)
    threads = common.setup(args.threads or 1, args.seed)
    model_dir = trained_model(args)
    export_dir = args.output_dir / ("jsl_web_export_quick" if args.quick else "jsl_web_export")
    export_onnx(model_dir, export_dir)
    texts = list(load_jsl_corpus("test")["ja"])
    singles = texts[: args.single_sentences]
    print(f"{len(texts)} test sentences; {threads} torch thread(s); exported to {export_dir}", flush=True)

    raw = {
        "pytorch": torch_run(model_dir, texts, singles, args),
        "node": node_run(export_dir, texts, args),
        "browser": browser_run(export_dir, texts, singles, args),
    }
    labels = {
        "pytorch": f"PyTorch {common.torch.__version__} (`hftune translate` path), {threads} thread(s)",
        "node": f"Node {raw['node']['node']}, onnxruntime-node 1.31.1, 1 thread",
        "browser": "headless Chromium, onnxruntime-web 1.31.1 (wasm), 1 thread",
    }
    rows = {name: summarise(labels[name], data, len(texts)) for name, data in raw.items()}
    identical = {name: raw[name]["glosses"] == raw["pytorch"]["glosses"] for name in ("node", "browser")}
    downloads = download_rows(raw["browser"]["downloads"])
    totals = Counter()
    for kind, _, mb in downloads:
        totals[kind] += mb
    checks = {
        "browser_p50_ms": rows["browser"]["p50_ms"] < TARGETS["browser_p50_ms"],
        "browser_sentences_per_second": rows["browser"]["sentences_per_second"]
        >= TARGETS["browser_sentences_per_second"],
        "node_sentences_per_second": rows["node"]["sentences_per_second"]
        >= TARGETS["node_sentences_per_second"],
    }

    def mark(key: str) -> str:
        return "met" if checks[key] else "**missed**"

    table = common.markdown_table(
        ["runtime", "batched sentences/s", "one sentence p50 ms", "p95 ms", "glosses = PyTorch's"],
        [[r["runtime"], r["sentences_per_second"], r["p50_ms"], r["p95_ms"],
          "-" if name == "pytorch" else ("yes" if identical[name] else "**no**")]
         for name, r in rows.items()],
    )  # fmt: skip
    download_table = common.markdown_table(
        ["what", "file", "MB"], [[kind, f"`{path}`", f"{mb:.3f}"] for kind, path, mb in downloads]
    )
    load = [round(x, 2) for x in os.getloadavg()]
    markdown = (
        f"Model: `{shown(model_dir)}` exported to `{shown(export_dir)}`; {len(texts)} test sentences, greedy, default batch "
        "sizes (PyTorch 256, the client 32); "
        f"latency rows over {len(singles)} sentences x {args.repeats} repeats. Load average at the end: {load} "
        f"(other jobs on the machine inflate every figure).\n\n{table}\n\n"
        f"- Browser one-sentence p50 {rows['browser']['p50_ms']:.1f} ms (target < 20 ms: {mark('browser_p50_ms')}); "
        f"batched {rows['browser']['sentences_per_second']:.0f} sentences/s (target >= 300: "
        f"{mark('browser_sentences_per_second')}); Node {rows['node']['sentences_per_second']:.0f} sentences/s "
        f"(target >= 500: {mark('node_sentences_per_second')}).\n"
        f"- The page downloads {sum(totals.values()):.1f} MB: model files {totals['model files']:.2f} MB, "
        f"onnxruntime-web wasm {totals['onnxruntime-web wasm']:.1f} MB, its JavaScript "
        f"{totals['onnxruntime-web JavaScript']:.2f} MB, page and client {totals['page and client']:.3f} MB "
        f"(uncompressed; the demo loaded in {raw['browser']['load_ms']:.0f} ms from 127.0.0.1).\n\n"
        f"{download_table}"
    )
    for data in raw.values():
        data.pop("glosses")
    common.write_report(
        "jsl_web",
        args.output_dir,
        markdown,
        {"model": str(model_dir), "rows": rows, "targets": TARGETS, "checks": checks, "identical": identical,
         "downloads_mb": dict(totals), "raw": raw, "load_average_at_end": load},
        args.quick,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
