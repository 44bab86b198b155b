/**
 * The JSL translator on onnxruntime-web (wasm), for browsers:
 *
 *     import { JslTranslator } from "hftune-jsl";   // or "hftune-jsl/web"
 *     const translator = await JslTranslator.load("https://huggingface.co/ORG/NAME/resolve/main");
 *     await translator.translate(["ありがとう"]);     // ["<ありがとう>"]
 *
 * Set `ort.env.wasm.wasmPaths` / `ort.env.wasm.numThreads` (import * as ort from "onnxruntime-web") before
 * loading to choose where the wasm files come from and how many threads run (more than one needs COOP/COEP).
 */
import * as ort from "onnxruntime-web";

import { fetchReader, JslTranslatorBase, loadModel, webCryptoSha256, type LoadOptions } from "./translator.js";

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

export class JslTranslator extends JslTranslatorBase {
  /** Load the export at `baseUrl`: a Hub repo's `.../resolve/main`, or a folder the app serves ("/models/jsl"). */
  static async load(baseUrl: string, options: LoadOptions = {}): Promise<JslTranslator> {
    const read = fetchReader(options.fetch);
    const absolute = async (url: string) => {
      // Errors name the full URL, not a relative path the user has to resolve in their head.
      const href = typeof location === "undefined" ? url : new URL(url, location.href).href;
      return read(href);
    };
    const platform = { ort, read: absolute, sha256: webCryptoSha256, sessionOptions: { executionProviders: ["wasm"] } };
    return new JslTranslator(await loadModel(platform, baseUrl, options));
  }
}

