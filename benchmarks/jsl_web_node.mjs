// Worker of bench_jsl_web.py: the TypeScript client in Node (onnxruntime-node, one thread) on the export at
// argv[2], sentences from the JSON file at argv[3]; prints one JSON line.
//
//     node benchmarks/jsl_web_node.mjs EXPORT_DIR SENTENCES.json REPEATS WARMUP SINGLE_SENTENCES
import { readFile } from "node:fs/promises";

import { JslTranslator } from "../js/dist/src/node.js";

const [exportDir, sentencesFile, repeats, warmup, singleCount] = process.argv.slice(2);
const texts = JSON.parse(await readFile(sentencesFile, "utf-8"));
const singles = texts.slice(0, Number(singleCount));

const loadStarted = performance.now();
const translator = await JslTranslator.load(exportDir, { sessionOptions: { intraOpNumThreads: 1, interOpNumThreads: 1 } });
const loadMs = performance.now() - loadStarted;

for (let i = 0; i < Number(warmup); i++) await translator.translate(texts);
const batchedMs = [];
for (let i = 0; i < Number(repeats); i++) {
  const started = performance.now();
  await translator.translate(texts);
  batchedMs.push(performance.now() - started);
}
for (const text of singles.slice(0, Math.max(Number(warmup), 1))) await translator.translate([text]);
const latenciesMs = [];
for (let i = 0; i < Number(repeats); i++) {
  for (const text of singles) {
    const started = performance.now();
    await translator.translate([text]);
    latenciesMs.push(performance.now() - started);
  }
}
const glosses = await translator.translate(texts);
console.log(JSON.stringify({ load_ms: loadMs, batched_ms: batchedMs, latencies_ms: latenciesMs, glosses, node: process.version }));
