/**
 * The TypeScript client in Node against PyTorch. `JSL_REFERENCE` names the reference.json that
 * tests/test_jsl_web.py writes in the same run (the exported model folder, PyTorch's glosses for the corpus's
 * test split and for awkward inputs, Python's token ids); without it every test is skipped, saying so.
 * `JSL_HUB_BASE_URL` is the `.../resolve/main` URL of the same export published to the test Hub.
 */
import assert from "node:assert/strict";
import { cp, mkdtemp, readFile, rm, truncate, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { extname, join, normalize, sep } from "node:path";
import { after, before, describe, test } from "node:test";
import { pathToFileURL } from "node:url";

import { JslLoadError, JslTranslator, sourceTokens } from "../src/node.js";

interface Reference {
  model_dir: string;
  test: { texts: string[]; glosses: string[] };
  edge: { texts: string[]; glosses: string[]; warning: string };
  tokenization: {
    max_source_length: number;
    cases: { text: string; ids: number[] }[];
    code_points: { ranges: [number, number][]; not_unknown: Record<string, number[]>; unknown: number[] };
  };
}

const referencePath = process.env.JSL_REFERENCE;
const skip = referencePath ? false : "JSL_REFERENCE is not set: run `pytest tests/test_jsl_web.py`, which exports a model and writes it";
const reference: Reference | undefined = referencePath ? JSON.parse(await readFile(referencePath, "utf-8")) : undefined;
const hubBaseUrl = process.env.JSL_HUB_BASE_URL;
const oneThread = { sessionOptions: { intraOpNumThreads: 1, interOpNumThreads: 1 } };

/** A static file server on 127.0.0.1 for `root`; resolves to its base URL. */
async function serve(root: string): Promise<{ url: string; server: Server }> {
  const server = createServer(async (request, response) => {
    const path = normalize(join(root, decodeURIComponent(new URL(request.url ?? "/", "http://x").pathname)));
    if (!path.startsWith(root + sep)) {
      response.writeHead(403).end();
      return;
    }
    try {
      const body = await readFile(path);
      const type = extname(path) === ".json" ? "application/json" : "application/octet-stream";
      response.writeHead(200, { "Content-Type": type, "Content-Length": body.byteLength }).end(body);
    } catch {
      response.writeHead(404, "Not Found").end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, server };
}

describe("JSL client in Node", { skip }, () => {
  const ref = reference as Reference;
  let modelUrl: string;
  let server: Server;
  let translator: JslTranslator;

  before(async () => {
    ({ url: modelUrl, server } = await serve(normalize(ref.model_dir)));
    translator = await JslTranslator.load(modelUrl, oneThread);
  });

  after(async () => {
    await translator?.dispose();
    server?.close();
  });

  test("tokenizer gives JslTokenizer's ids on awkward strings", () => {
    for (const { text, ids } of ref.tokenization.cases) {
      assert.deepEqual(translator.tokenizer.encode(text), ids, `input ${JSON.stringify(text)}`);
    }
  });

  test("tokenizer agrees with JslTokenizer on every code point Python's Unicode tables assign", () => {
    const { ranges, not_unknown: notUnknown, unknown } = ref.tokenization.code_points;
    const mismatches: string[] = [];
    let checked = 0;
    for (const [first, last] of ranges) {
      for (let codePoint = first; codePoint <= last; codePoint++) {
        const expected = notUnknown[codePoint] ?? unknown;
        const got = translator.tokenizer.encode(String.fromCodePoint(codePoint));
        checked++;
        if (got.join() !== expected.join()) mismatches.push(`U+${codePoint.toString(16).toUpperCase()}: ${got} != ${expected}`);
      }
    }
    assert.ok(checked > 100_000, `only ${checked} code points checked`);
    assert.deepEqual(mismatches.slice(0, 20), []);
  });

  test("test split over HTTP: exactly PyTorch's glosses", async () => {
    const glosses = await translator.translate(ref.test.texts);
    assert.equal(glosses.length, ref.test.texts.length);
    const differing = glosses.flatMap((gloss, i) => (gloss === ref.test.glosses[i] ? [] : [`${i + 1} ${ref.test.texts[i]}: ${gloss} != ${ref.test.glosses[i]}`]));
    assert.deepEqual(differing, []);
    assert.ok(glosses.filter((gloss) => gloss !== "").length > 0.9 * glosses.length);
  });

  test("a local folder and a file: URL load the same model; small batches give the same glosses", async () => {
    for (const base of [ref.model_dir, pathToFileURL(ref.model_dir).href]) {
      const local = await JslTranslator.load(base, oneThread);
      assert.deepEqual(await local.translate(ref.test.texts.slice(0, 40), { batchSize: 7 }), ref.test.glosses.slice(0, 40));
      await local.dispose();
    }
  });

  test("a published Hub repo's resolve/main URL", { skip: hubBaseUrl ? false : "JSL_HUB_BASE_URL is not set" }, async () => {
    const fromHub = await JslTranslator.load(hubBaseUrl as string, oneThread);
    assert.deepEqual(await fromHub.translate(ref.test.texts), ref.test.glosses);
    await fromHub.dispose();
  });

  test("empty, blank, unknown and over-long input: PyTorch's glosses and Python's warning", async () => {
    const warnings: string[] = [];
    const quiet = await JslTranslator.load(modelUrl, { ...oneThread, onWarning: (message) => warnings.push(message) });
    assert.deepEqual(await quiet.translate(ref.edge.texts), ref.edge.glosses);
    assert.deepEqual(warnings, [ref.edge.warning]);
    assert.deepEqual(await quiet.translate([]), []);
    assert.deepEqual(await quiet.translate(["", " \u3000\t"]), ["", ""]);
    assert.equal(warnings.length, 1);
    // Unknown characters are <unk> on the input side, not an error.
    const unk = quiet.tokenizer.special.unkTokenId;
    assert.deepEqual(quiet.tokenizer.encode("𓀀🙂"), [unk, unk, quiet.tokenizer.special.eosTokenId]);
    // Truncation keeps the first max_source_length - 1 characters.
    const long = ref.edge.texts.reduce((a, b) => (sourceTokens(b).length > sourceTokens(a).length ? b : a));
    const prefix = sourceTokens(long).slice(0, ref.tokenization.max_source_length - 1).join("");
    assert.deepEqual(await quiet.translate([long]), await quiet.translate([prefix]));
    await quiet.dispose();
  });

  test("concurrent calls queue instead of colliding in one session", async () => {
    const texts = ref.test.texts.slice(0, 20);
    const results = await Promise.all([translator.translate(texts), translator.translate(texts.slice(0, 5))]);
    assert.deepEqual(results, [ref.test.glosses.slice(0, 20), ref.test.glosses.slice(0, 5)]);
  });

  test("bad arguments are refused with the value named", async () => {
    await assert.rejects(translator.translate("ありがとう" as unknown as string[]), /array of strings/);
    await assert.rejects(translator.translate(["a", 3 as unknown as string]), /item 1 is number/);
    await assert.rejects(translator.translate(["a"], { batchSize: 0 }), /batchSize 0/);
    await assert.rejects(JslTranslator.load(""), /base URL/);
  });

  describe("missing or corrupt files at the base URL: one error naming the file", () => {
    let root: string;
    let broken: { url: string; server: Server };

    before(async () => {
      root = await mkdtemp(join(tmpdir(), "jsl-broken-"));
      await cp(join(ref.model_dir, "onnx"), join(root, "onnx"), { recursive: true });
      broken = await serve(root);
    });

    after(async () => {
      broken.server.close();
      await rm(root, { recursive: true, force: true });
    });

    async function loadError(base: string, options = {}): Promise<JslLoadError> {
      try {
        await JslTranslator.load(base, { ...oneThread, ...options });
      } catch (error) {
        assert.ok(error instanceof JslLoadError, `expected JslLoadError, got ${error}`);
        return error;
      }
      assert.fail(`loading ${base} succeeded`);
    }

    test("missing graph", async () => {
      await rm(join(root, "onnx", "decoder_model.onnx"));
      const error = await loadError(broken.url);
      assert.equal(error.file, `${broken.url}onnx/decoder_model.onnx`);
      assert.match(error.message, /onnx\/decoder_model\.onnx: HTTP 404/);
      const local = await loadError(root);
      assert.match(local.message, /decoder_model\.onnx \(no such file\)/);
      await cp(join(ref.model_dir, "onnx", "decoder_model.onnx"), join(root, "onnx", "decoder_model.onnx"));
    });

    test("truncated graph", async () => {
      const path = join(root, "onnx", "decoder_with_past_model.onnx");
      await truncate(path, 1000);
      const error = await loadError(broken.url);
      assert.match(error.message, /decoder_with_past_model\.onnx has 1000 bytes but onnx\/web_config\.json says \d+/);
      await cp(join(ref.model_dir, "onnx", "decoder_with_past_model.onnx"), path);
    });

    test("altered graph of the right size: sha256, or onnxruntime's refusal when not verified", async () => {
      const path = join(root, "onnx", "encoder_model.onnx");
      const bytes = await readFile(path);
      bytes.fill(7, 0, 64);
      await writeFile(path, bytes);
      const error = await loadError(broken.url);
      assert.match(error.message, /encoder_model\.onnx does not match its sha256/);
      const unverified = await loadError(broken.url, { verify: false });
      assert.match(unverified.message, /encoder_model\.onnx is not an ONNX model onnxruntime can load/);
      await cp(join(ref.model_dir, "onnx", "encoder_model.onnx"), path);
    });

    test("corrupt or foreign web_config.json", async () => {
      const path = join(root, "onnx", "web_config.json");
      const original = await readFile(path, "utf-8");
      await writeFile(path, original.slice(0, 200));
      assert.match((await loadError(broken.url)).message, /onnx\/web_config\.json is not valid JSON/);
      await writeFile(path, JSON.stringify({ ...JSON.parse(original), vocab: undefined }));
      assert.match((await loadError(broken.url)).message, /web_config\.json has no vocab list/);
      await writeFile(path, original);
    });

    test("nothing at the base URL", async () => {
      const error = await loadError(`${broken.url}no-such-model/`);
      assert.match(error.message, /no-such-model\/onnx\/web_config\.json: HTTP 404/);
      const closed = await serve(root);
      closed.server.close();
      await new Promise((resolve) => closed.server.once("close", resolve));
      assert.match((await loadError(closed.url)).message, /cannot fetch http:\/\/127\.0\.0\.1:\d+\/onnx\/web_config\.json/);
    });
  });
});
