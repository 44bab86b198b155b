/**
 * Japanese -> JSL gloss with the ONNX export of hftune's JSL model (`hftune export onnx`), on any
 * onnxruntime JavaScript package: `web.ts` binds it to onnxruntime-web, `node.ts` to onnxruntime-node.
 *
 * The decoding is PyTorch `generate()`'s greedy search: encoder once, the first decoder step from the start
 * token, then the cached decoder with the last token; suppressed tokens masked; a row stops at `</s>` or after
 * `max_new_tokens`. Inputs are batched by length like `hftune.jsl.translate.translate`.
 */
import type * as OrtCommon from "onnxruntime-common";

import { JslTokenizer } from "./tokenizer.js";

/** What the client uses of an onnxruntime module (`import * as ort from "onnxruntime-web"` is one). */
export type OrtModule = Pick<typeof OrtCommon, "InferenceSession" | "Tensor">;
type Session = OrtCommon.InferenceSession;
type Tensor = OrtCommon.Tensor;

export const WEB_CONFIG_PATH = "onnx/web_config.json";
const GRAPH_KINDS = ["encoder", "decoder", "decoder_with_past"] as const;
/** Encoder outputs of a model with a spelling copy head that both decoders take as inputs (onnx_export.COPY_INPUTS). */
const COPY_INPUTS = ["copy_keys", "copy_map"] as const;
type GraphKind = (typeof GRAPH_KINDS)[number];

/** Sentences per batch by default. Smaller than `hftune translate`'s 256: onnxruntime has little cost per call
 * to amortise, and a small batch of similar lengths pads less in the encoder, the larger part of the work in
 * wasm (BENCHMARKS.md, section 8). The glosses do not depend on it. */
export const DEFAULT_BATCH_SIZE = 32;

export interface GraphFile {
  path: string;
  bytes: number;
  sha256: string;
}

/** `onnx/web_config.json` as `hftune export onnx` writes it. */
export interface WebConfig {
  format: "hftune-jsl-onnx";
  format_version: number;
  files: Record<GraphKind, GraphFile>;
  vocab: string[];
  pad_token_id: number;
  bos_token_id: number;
  eos_token_id: number;
  unk_token_id: number;
  decoder_start_token_id: number;
  max_source_length: number;
  max_new_tokens: number;
  suppress_tokens: number[];
  /** generate()'s bound: a row ends once it holds floor(ratio x input characters) + slack tokens; null: none. */
  output_length_ratio?: number | null;
  output_length_slack?: number;
  /** In that bound a spelled input character (a source of spelling_sources) counts one whole token, not ratio. */
  output_length_spelling?: boolean;
  /** generate()'s spelling budget: [gloss id, source ids...]; the gloss is emitted at most as often as the input holds its sources. */
  spelling_sources?: number[][];
  decoder_layers: number;
  num_heads: number;
  head_dim: number;
}

/** A file at the base URL is missing, unreadable or not what the export wrote. `file` is its URL or path. */
export class JslLoadError extends Error {
  readonly file: string;

  constructor(file: string, message: string) {
    super(message);
    this.name = "JslLoadError";
    this.file = file;
  }
}

/** Bytes of a URL or path, throwing JslLoadError naming it when it cannot be read. */
export type FileReader = (location: string) => Promise<Uint8Array>;

export interface LoadOptions {
  /** onnxruntime session options (e.g. `{ intraOpNumThreads: 1 }` in Node); the platform's provider by default. */
  sessionOptions?: OrtCommon.InferenceSession.SessionOptions;
  /** Check each graph's sha256 against web_config.json (default true; sizes are always checked). */
  verify?: boolean;
  /** Where warnings go (over-long input, no sha256 check); default `console.warn`. */
  onWarning?: (message: string) => void;
  /** fetch to use for http(s) URLs (default: the global one). */
  fetch?: typeof fetch;
}

export interface TranslateOptions {
  /** Sentences decoded together (default 32). */
  batchSize?: number;
}

export interface LoadedModel {
  ort: OrtModule;
  config: WebConfig;
  tokenizer: JslTokenizer;
  sessions: Record<GraphKind, Session>;
  onWarning: (message: string) => void;
}

/** `base` + `relative`, for URLs ("https://huggingface.co/org/name/resolve/main") and paths alike. */
export function joinLocation(base: string, relative: string): string {
  return base.endsWith("/") ? base + relative : `${base}/${relative}`;
}

/** A FileReader over fetch: HTTP errors and network failures become one JslLoadError naming the URL. */
export function fetchReader(fetchImpl: typeof fetch | undefined = globalThis.fetch): FileReader {
  return async (url: string) => {
    let response: Response;
    try {
      response = await fetchImpl(url);
    } catch (error) {
      throw new JslLoadError(url, `cannot fetch ${url} (${describe(error)}): check the base URL and the network`);
    }
    if (!response.ok) {
      const fix = response.status === 404 ? "the base URL must hold the files `hftune export onnx` wrote" : "check the server";
      throw new JslLoadError(url, `cannot fetch ${url}: HTTP ${response.status} ${response.statusText}; ${fix}`);
    }
    try {
      return new Uint8Array(await response.arrayBuffer());
    } catch (error) {
      throw new JslLoadError(url, `the download of ${url} broke off (${describe(error)}); try again`);
    }
  };
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const cause = (error as Error & { cause?: unknown }).cause;
    return cause instanceof Error ? `${error.message}: ${cause.message}` : error.message;
  }
  return String(error);
}

function parseConfig(bytes: Uint8Array, url: string): WebConfig {
  let config: unknown;
  try {
    config = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (error) {
    throw new JslLoadError(url, `${url} is not valid JSON (${describe(error)}); download it again or re-run hftune export onnx`);
  }
  const fail = (what: string): never => {
    throw new JslLoadError(url, `${url} ${what}; re-run hftune export onnx with this version of hftune`);
  };
  if (typeof config !== "object" || config === null) fail("is not a JSON object");
  const c = config as Record<string, unknown>;
  if (c.format !== "hftune-jsl-onnx") fail(`has format ${JSON.stringify(c.format)}, not "hftune-jsl-onnx"`);
  if (c.format_version !== 1) fail(`has format_version ${JSON.stringify(c.format_version)}; this client reads 1`);
  if (!Array.isArray(c.vocab) || !c.vocab.every((token) => typeof token === "string")) fail("has no vocab list");
  const integers = [
    "pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "decoder_start_token_id",
    "max_source_length", "max_new_tokens", "decoder_layers", "num_heads", "head_dim",
  ];
  for (const key of integers) {
    if (!Number.isInteger(c[key])) fail(`has no integer ${key}`);
  }
  if (!Array.isArray(c.suppress_tokens) || !c.suppress_tokens.every(Number.isInteger)) fail("has no suppress_tokens list");
  if (c.output_length_ratio != null && (typeof c.output_length_ratio !== "number" || !Number.isInteger(c.output_length_slack))) {
    fail("has an output_length_ratio without an integer output_length_slack");
  }
  if (c.output_length_spelling != null && typeof c.output_length_spelling !== "boolean") fail("has an output_length_spelling that is not true or false");
  const sources = c.spelling_sources;
  if (sources != null && (!Array.isArray(sources) || !sources.every((entry) => Array.isArray(entry) && entry.length >= 2 && entry.every(Number.isInteger)))) {
    fail("has a spelling_sources entry that is not a list of a gloss id and its source ids");
  }
  const size = (c.vocab as string[]).length;
  const ids = ["pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "decoder_start_token_id"];
  if (!ids.every((key) => (c[key] as number) >= 0 && (c[key] as number) < size)) fail(`has a special id outside its ${size}-token vocab`);
  if ((c.suppress_tokens as number[]).includes(c.eos_token_id as number)) fail("suppresses </s>, so decoding could never stop");
  const files = c.files as Record<string, Partial<GraphFile>> | undefined;
  for (const kind of GRAPH_KINDS) {
    const file = files?.[kind];
    if (typeof file?.path !== "string" || !Number.isInteger(file.bytes) || typeof file.sha256 !== "string") {
      fail(`lists no ${kind} graph`);
    }
  }
  return config as WebConfig;
}

/** Hex sha256 with the Web Crypto API; undefined where it is unavailable (pages on plain http from another host). */
export async function webCryptoSha256(bytes: Uint8Array): Promise<string | undefined> {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) return undefined;
  const digest = new Uint8Array(await subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** How a platform reads files, hashes them and configures sessions. */
export interface Platform {
  ort: OrtModule;
  read: FileReader;
  sha256: (bytes: Uint8Array) => Promise<string | undefined>;
  sessionOptions: OrtCommon.InferenceSession.SessionOptions;
}

/** Fetch and check web_config.json and the three graphs at `baseUrl`, and open an onnxruntime session each. */
export async function loadModel(platform: Platform, baseUrl: string, options: LoadOptions = {}): Promise<LoadedModel> {
  const { ort, read } = platform;
  if (typeof baseUrl !== "string" || baseUrl.trim() === "") {
    throw new TypeError(`JslTranslator.load needs the base URL (or folder) of an exported model, got ${JSON.stringify(baseUrl)}`);
  }
  const onWarning = options.onWarning ?? ((message: string) => console.warn(message));
  const configUrl = joinLocation(baseUrl, WEB_CONFIG_PATH);
  const config = parseConfig(await read(configUrl), configUrl);
  const sessionOptions = { ...platform.sessionOptions, ...options.sessionOptions };
  let warnedNoDigest = false;
  const open = async (kind: GraphKind): Promise<Session> => {
    const file = config.files[kind];
    const url = joinLocation(baseUrl, file.path);
    const bytes = await read(url);
    if (bytes.byteLength !== file.bytes) {
      throw new JslLoadError(
        url,
        `${url} has ${bytes.byteLength} bytes but ${WEB_CONFIG_PATH} says ${file.bytes} (truncated or from another export); download it again`,
      );
    }
    if (options.verify ?? true) {
      const digest = await platform.sha256(bytes);
      if (digest === undefined && !warnedNoDigest) {
        warnedNoDigest = true;
        onWarning("crypto.subtle is unavailable here (a page served over plain http from another host): model files are checked by size only");
      } else if (digest !== undefined && digest !== file.sha256) {
        throw new JslLoadError(url, `${url} does not match its sha256 in ${WEB_CONFIG_PATH} (corrupted or altered); download it again`);
      }
    }
    try {
      return await ort.InferenceSession.create(bytes, sessionOptions);
    } catch (error) {
      throw new JslLoadError(url, `${url} is not an ONNX model onnxruntime can load (${describe(error)}); download it again or re-run hftune export onnx`);
    }
  };
  const opened = await Promise.all(GRAPH_KINDS.map(open));
  const sessions = Object.fromEntries(GRAPH_KINDS.map((kind, i) => [kind, opened[i]])) as Record<GraphKind, Session>;
  const tokenizer = new JslTokenizer(config.vocab, {
    padTokenId: config.pad_token_id,
    bosTokenId: config.bos_token_id,
    eosTokenId: config.eos_token_id,
    unkTokenId: config.unk_token_id,
  });
  return { ort, config, tokenizer, sessions, onWarning };
}

/** The translator itself; `JslTranslator.load` in web.ts / node.ts builds one for its platform. */
export class JslTranslatorBase {
  readonly config: WebConfig;
  readonly tokenizer: JslTokenizer;
  private readonly ort: OrtModule;
  private readonly sessions: Record<GraphKind, Session>;
  private readonly onWarning: (message: string) => void;
  /** Gloss token ids and `</s>`: every other id is suppressed, as in the saved generation config. */
  private readonly allowedIds: Int32Array;
  /** onnxruntime-web runs one inference at a time per session: calls queue here. */
  private queue: Promise<unknown> = Promise.resolve();

  protected constructor(model: LoadedModel) {
    this.ort = model.ort;
    this.config = model.config;
    this.tokenizer = model.tokenizer;
    this.sessions = model.sessions;
    this.onWarning = model.onWarning;
    const suppressed = new Set(model.config.suppress_tokens);
    this.allowedIds = Int32Array.from(model.config.vocab.keys()).filter((id) => !suppressed.has(id));
  }

  /** Gloss strings for `texts`, in order: tokens joined by single spaces, "" for empty or blank input.
   * Input longer than the model's `max_source_length` (end-of-sequence included) is truncated, with one
   * warning per call. */
  async translate(texts: readonly string[], options: TranslateOptions = {}): Promise<string[]> {
    if (!Array.isArray(texts)) {
      throw new TypeError(`translate() takes an array of strings, got ${typeof texts}; wrap one sentence as [text]`);
    }
    const bad = texts.findIndex((text) => typeof text !== "string");
    if (bad >= 0) throw new TypeError(`translate(): item ${bad} is ${typeof texts[bad]}, not a string`);
    const batchSize = options.batchSize ?? DEFAULT_BATCH_SIZE;
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      throw new RangeError(`batchSize ${batchSize} must be a whole number of at least 1`);
    }
    const run = this.queue.then(() => this.translateNow(texts, batchSize));
    this.queue = run.catch(() => undefined);
    return await run;
  }

  /** Release the onnxruntime sessions. */
  async dispose(): Promise<void> {
    await this.queue;
    await Promise.all(Object.values(this.sessions).map((session) => session.release()));
  }

  private async translateNow(texts: readonly string[], batchSize: number): Promise<string[]> {
    const limit = this.config.max_source_length;
    const lengths = texts.map((text) => this.tokenizer.tokenize(text).length);
    const tooLong = lengths.flatMap((length, index) => (length + 1 > limit ? [index] : []));
    if (tooLong.length > 0) {
      const first = tooLong[0];
      this.onWarning(
        `${tooLong.length} input(s) longer than the model's ${limit - 1} characters were truncated ` +
          `(first: input ${first + 1}, ${lengths[first]} characters); split long sentences to translate them whole`,
      );
    }
    const outputs: string[] = texts.map(() => "");
    // Shortest first (a stable sort, as Python's sorted): similar lengths share a batch, so less padding.
    const todo = lengths.flatMap((length, index) => (length > 0 ? [index] : [])).sort((a, b) => lengths[a] - lengths[b]);
    for (let start = 0; start < todo.length; start += batchSize) {
      const chunk = todo.slice(start, start + batchSize);
      const rows = await this.generate(chunk.map((index) => this.tokenizer.encode(texts[index], limit)));
      chunk.forEach((index, row) => {
        outputs[index] = this.tokenizer.decode(rows[row]);
      });
    }
    return outputs;
  }

  /** Greedy decoding of one batch of encoded inputs; returns each row's generated ids.
   *
   * Rows that emitted `</s>` leave the batch (their cache rows are dropped) instead of being fed `<pad>` as
   * `generate()` does: the remaining rows' arithmetic is the same, and the batch gets cheaper as it drains. */
  private async generate(encoded: number[][]): Promise<number[][]> {
    const { Tensor } = this.ort;
    const c = this.config;
    const batch = encoded.length;
    const width = Math.max(...encoded.map((ids) => ids.length));
    const inputIds = new BigInt64Array(batch * width).fill(BigInt(c.pad_token_id));
    const mask = new BigInt64Array(batch * width);
    encoded.forEach((ids, row) => {
      ids.forEach((id, column) => {
        inputIds[row * width + column] = BigInt(id);
        mask[row * width + column] = 1n;
      });
    });
    let attentionMask: Tensor = new Tensor("int64", mask, [batch, width]);
    const encoder = await this.sessions.encoder.run({
      input_ids: new Tensor("int64", inputIds, [batch, width]),
      attention_mask: attentionMask,
    });
    // A spelling copy head (config.spelling_copy): the encoder's copy keys and map, read at every decoding step.
    let copy: Record<string, Tensor> = {};
    for (const name of COPY_INPUTS) if (name in encoder) copy[name] = encoder[name];
    let outputs = await this.sessions.decoder.run({
      encoder_attention_mask: attentionMask,
      input_ids: new Tensor("int64", new BigInt64Array(batch).fill(BigInt(c.decoder_start_token_id)), [batch, 1]),
      encoder_hidden_states: encoder.last_hidden_state,
      ...copy,
    });
    let cross: Record<string, Tensor> = {};
    for (let layer = 0; layer < c.decoder_layers; layer++) {
      for (const kind of ["key", "value"]) {
        cross[`past_key_values.${layer}.encoder.${kind}`] = outputs[`present.${layer}.encoder.${kind}`];
      }
    }
    let past: Record<string, Tensor> = {};
    const rows: number[][] = encoded.map(() => []);
    let active = encoded.map((_, row) => row); // the input row of each row of the current batch
    const sources = c.spelling_sources ?? [];
    // The output bound of generate(): ids.length - 1 characters (without </s>), as hftune computes it; with
    // output_length_spelling each spelled character counts whole (a fingerspelled word is one gloss per kana).
    const ratio = c.output_length_ratio;
    const spelledIds = new Set(c.output_length_spelling ? sources.flatMap(([, ...from]) => from) : []);
    const limits = encoded.map((ids) => {
      if (ratio == null) return Infinity;
      const spelled = ids.filter((id) => spelledIds.has(id)).length;
      return Math.floor((Math.max(ids.length - 1, 0) - spelled) * ratio) + spelled + (c.output_length_slack ?? 0);
    });
    // generate()'s spelling budget: per input row, how often each spelled gloss may still be emitted.
    const budgets = encoded.map((ids) => {
      const left = new Map<number, number>();
      for (const [gloss, ...from] of sources) left.set(gloss, ids.filter((id) => from.includes(id)).length);
      return left;
    });
    const vocabSize = c.vocab.length;
    for (let step = 1; ; step++) {
      const logits = outputs.logits.data as Float32Array; // (active rows, 1, vocab)
      const keep: number[] = [];
      const next: bigint[] = [];
      active.forEach((inputRow, row) => {
        const offset = row * vocabSize;
        const left = budgets[inputRow];
        let best = -1;
        let bestScore = -Infinity;
        const done = rows[inputRow];
        // generate()'s bound: the row's length limit, or a last-6-token tail with period 1 or 2 (a loop)
        const bounded =
          done.length >= limits[inputRow] ||
          (ratio != null && done.length >= 6 && [0, 1, 2, 3].every((i) => done[done.length - 6 + i] === done[done.length - 4 + i]));
        for (let i = 0; i < this.allowedIds.length && !bounded; i++) {
          const id = this.allowedIds[i];
          if (left.get(id) === 0) continue; // this gloss has spelled all of the input's kana it may
          // Strictly greater: the first maximum wins, as torch.argmax picks it.
          if (best < 0 || logits[offset + id] > bestScore) {
            bestScore = logits[offset + id];
            best = id;
          }
        }
        if (bounded) best = c.eos_token_id;
        if (left.has(best)) left.set(best, (left.get(best) as number) - 1);
        rows[inputRow].push(best);
        if (best !== c.eos_token_id) {
          keep.push(row);
          next.push(BigInt(best));
        }
      });
      if (keep.length === 0 || step >= c.max_new_tokens) break;
      for (let layer = 0; layer < c.decoder_layers; layer++) {
        for (const kind of ["key", "value"]) {
          past[`past_key_values.${layer}.decoder.${kind}`] = outputs[`present.${layer}.decoder.${kind}`];
        }
      }
      if (keep.length < active.length) {
        attentionMask = this.takeRows(attentionMask, keep);
        cross = this.takeAllRows(cross, keep);
        past = this.takeAllRows(past, keep);
        copy = this.takeAllRows(copy, keep);
        active = keep.map((row) => active[row]);
      }
      outputs = await this.sessions.decoder_with_past.run({
        encoder_attention_mask: attentionMask,
        input_ids: new Tensor("int64", BigInt64Array.from(next), [keep.length, 1]),
        ...cross,
        ...past,
        ...copy,
      });
    }
    return rows;
  }

  /** The rows `keep` (indices along the first axis) of a float32 or int64 CPU tensor, as a new tensor. */
  private takeRows(tensor: Tensor, keep: readonly number[]): Tensor {
    const [rows, ...rest] = tensor.dims;
    const dims = [keep.length, ...rest];
    const data = tensor.data;
    const size = (data as ArrayLike<unknown>).length / rows;
    if (data instanceof BigInt64Array) {
      const taken = new BigInt64Array(keep.length * size);
      keep.forEach((row, i) => taken.set(data.subarray(row * size, (row + 1) * size), i * size));
      return new this.ort.Tensor("int64", taken, dims);
    }
    const source = data as Float32Array;
    const taken = new Float32Array(keep.length * size);
    keep.forEach((row, i) => taken.set(source.subarray(row * size, (row + 1) * size), i * size));
    return new this.ort.Tensor("float32", taken, dims);
  }

  private takeAllRows(tensors: Record<string, Tensor>, keep: readonly number[]): Record<string, Tensor> {
    return Object.fromEntries(Object.entries(tensors).map(([name, tensor]) => [name, this.takeRows(tensor, keep)]));
  }
}
