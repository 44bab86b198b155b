/**
 * The JSL translator on onnxruntime-node, for Node.js (>= 18):
 *
 *     import { JslTranslator } from "hftune-jsl";      // or "hftune-jsl/node"
 *     const translator = await JslTranslator.load("path/to/model");  // or an http(s) base URL
 *     await translator.translate(["ありがとう"]);
 *
 * The base may be an http(s) URL (fetched), a `file:` URL or a local folder (read from disk).
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";

import * as ort from "onnxruntime-node";

import { fetchReader, JslLoadError, JslTranslatorBase, loadModel, type FileReader, type LoadOptions } from "./translator.js";

export * from "./tokenizer.js";
export {
  DEFAULT_BATCH_SIZE,
  JslLoadError,
  WEB_CONFIG_PATH,
  type FileReader,
  type LoadOptions,
  type TranslateOptions,
  type WebConfig,
} from "./translator.js";

function nodeReader(fetchImpl: typeof fetch | undefined): FileReader {
  const fetchUrl = fetchReader(fetchImpl);
  return async (location: string) => {
    if (/^https?:\/\//i.test(location)) return fetchUrl(location);
    const path = location.startsWith("file:") ? fileURLToPath(location) : location;
    try {
      return new Uint8Array(await readFile(path));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      const why = code === "ENOENT" ? "no such file" : (error as Error).message;
      throw new JslLoadError(path, `cannot read ${path} (${why}); the folder must hold the files \`hftune export onnx\` wrote`);
    }
  };
}

export class JslTranslator extends JslTranslatorBase {
  /** Load the export at `base`: a local model folder, a `file:` URL, or an http(s) base URL. */
  static async load(base: string, options: LoadOptions = {}): Promise<JslTranslator> {
    const platform = {
      ort,
      read: nodeReader(options.fetch),
      sha256: async (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex"),
      sessionOptions: { executionProviders: ["cpu"] },
    };
    return new JslTranslator(await loadModel(platform, base, options));
  }
}
