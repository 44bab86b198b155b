// The demo page's logic: load the exported model from ?model= (default ./model/), translate the text box.
// ?threads=N sets wasm threads (more than 1 needs a cross-origin-isolated page: COOP/COEP headers).
import * as ort from "onnxruntime-web";
import { JslTranslator } from "../dist/src/web.js";

const params = new URLSearchParams(location.search);
const modelUrl = params.get("model") ?? "./model/";
ort.env.wasm.numThreads = Number(params.get("threads") ?? 1);

const status = document.getElementById("status");
const input = document.getElementById("input");
const button = document.getElementById("translate");
const time = document.getElementById("time");
const list = document.getElementById("glosses");
const warning = document.getElementById("warning");

function show(glosses) {
  list.replaceChildren(...glosses.map((gloss) => {
    const item = document.createElement("li");
    item.textContent = gloss;
    return item;
  }));
}

async function translate(translator) {
  const lines = input.value.split("\n");
  button.disabled = true;
  warning.textContent = "";
  document.body.dataset.state = "translating";
  const started = performance.now();
  const glosses = await translator.translate(lines);
  const ms = performance.now() - started;
  show(glosses);
  time.textContent = `${lines.length} sentence${lines.length === 1 ? "" : "s"} in ${ms.toFixed(1)} ms`;
  button.disabled = false;
  document.body.dataset.state = "done";
}

try {
  const started = performance.now();
  const translator = await JslTranslator.load(modelUrl, { onWarning: (message) => { warning.textContent = message; } });
  window.jslTranslator = translator; // for the console (and the benchmark)
  status.textContent = `Model loaded from ${new URL(modelUrl, location.href).href} in ${(performance.now() - started).toFixed(0)} ms.`;
  button.disabled = false;
  button.addEventListener("click", () => translate(translator).catch(fail));
  document.body.dataset.state = "ready";
} catch (error) {
  fail(error);
}

function fail(error) {
  status.textContent = String(error.message ?? error);
  status.className = "error";
  document.body.dataset.state = "error";
}
