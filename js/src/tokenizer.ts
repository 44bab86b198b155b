/**
 * The JSL model's tokenizer, identical to hftune's Python `JslTokenizer` on the source side:
 * NFKC, whitespace dropped (exactly the characters Python's `str.isspace()` accepts), one token per Unicode
 * code point, unknown characters -> `<unk>`, and every sequence ends with `</s>`.
 */

/** Code points for which Python's `str.isspace()` is true. JavaScript's `\s` differs: it lacks U+001C-U+001F
 * and U+0085, and adds U+FEFF. */
const PYTHON_WHITESPACE: ReadonlySet<number> = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002,
  0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
]);

/** Japanese text -> characters: NFKC (full-width ASCII and half-width kana fold), whitespace dropped. */
export function sourceTokens(text: string): string[] {
  const tokens: string[] = [];
  for (const char of text.normalize("NFKC")) {
    if (!PYTHON_WHITESPACE.has(char.codePointAt(0) as number)) tokens.push(char);
  }
  return tokens;
}

export interface SpecialIds {
  padTokenId: number;
  bosTokenId: number;
  eosTokenId: number;
  unkTokenId: number;
}

export class JslTokenizer {
  readonly vocab: readonly string[];
  readonly special: SpecialIds;
  private readonly ids: Map<string, number>;
  private readonly specialIds: ReadonlySet<number>;

  /** `vocab[i]` is the token of id `i`. */
  constructor(vocab: readonly string[], special: SpecialIds) {
    this.vocab = vocab;
    this.special = special;
    this.ids = new Map(vocab.map((token, id) => [token, id]));
    this.specialIds = new Set([special.padTokenId, special.bosTokenId, special.eosTokenId, special.unkTokenId]);
  }

  tokenize(text: string): string[] {
    return sourceTokens(text);
  }

  /** Source ids ending in `</s>`; with `maxLength`, cut to its first `maxLength - 1` characters + `</s>` (as
   * `tokenizer(text, truncation=True, max_length=maxLength)` does in Python). */
  encode(text: string, maxLength?: number): number[] {
    let tokens = sourceTokens(text);
    if (maxLength !== undefined) tokens = tokens.slice(0, Math.max(maxLength - 1, 0));
    const ids = tokens.map((token) => this.ids.get(token) ?? this.special.unkTokenId);
    ids.push(this.special.eosTokenId);
    return ids;
  }

  /** Gloss string of generated ids: special tokens skipped, tokens joined by single spaces. */
  decode(ids: readonly number[]): string {
    const tokens: string[] = [];
    for (const id of ids) {
      if (this.specialIds.has(id)) continue;
      tokens.push(this.vocab[id] ?? this.vocab[this.special.unkTokenId]);
    }
    return tokens.join(" ");
  }
}
