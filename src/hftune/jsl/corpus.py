"""The Japanese -> JSL gloss parallel corpus: shipped splits, a loader for users' own pairs, and its generator.

The shipped corpus (`data/{train,validation,test}.jsonl`) is regenerated bit for bit by `write_corpus`
from hand-written sentences (`data/hand_written.tsv`) and a seeded grammar over `data/lexicon.yaml`.
Gloss conventions and the split policy are documented in `data/README.md`; in short: glosses are
`<dictionary-form>` tokens, time first, question word last, negation / completion after the predicate,
`<?>` closes a yes/no question, and particles and inflection never appear.

Run `python -m hftune.jsl.corpus` to rewrite the shipped files (`--check` verifies them instead).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from hftune.errors import HftuneError

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

CORPUS_DIR: Path = Path(__file__).resolve().parent / "data"
SPLITS: tuple[str, ...] = ("train", "validation", "test", "natural")
CORPUS_NAME = "hftune-jsl-corpus"  # how results, cards and leaderboards name the shipped corpus
LEXICON_FILE = CORPUS_DIR / "lexicon.yaml"
HAND_WRITTEN_FILE = CORPUS_DIR / "hand_written.tsv"
NATURAL_FILE = CORPUS_DIR / "natural.tsv"  # the hand-written `natural` split: scored, never trained on

YES_NO_TAG = "<?>"
QUESTION_GLOSSES = frozenset(
    f"<{g}>"
    for g in ("何", "誰", "どこ", "いつ", "なぜ", "どう", "いくら", "いくつ", "何時", "何人", "何歳", "どれ")
)
NEGATION_GLOSSES = frozenset({"<ない>", "<違う>", "<無理>", "<まだ>"})
COMPLETION_GLOSS = "<終わる>"
# Particles and inflections that a gloss must never be: their job is done by order and the face in JSL.
PARTICLE_GLOSSES = frozenset(
    f"<{p}>" for p in ("は", "が", "を", "に", "で", "へ", "と", "の", "も", "か", "です", "ます", "だ", "た")
)

# (kind, gloss A, gloss B): the pairs that never occur together in train or validation. Every row whose
# glosses contain both goes to the test split, so test measures recombination of known words.
HELD_OUT_PAIRINGS: tuple[tuple[str, str, str], ...] = (
    ("subject-verb", "<母>", "<読む>"),
    ("subject-verb", "<先生>", "<泳ぐ>"),
    ("subject-verb", "<友達>", "<買う>"),
    ("subject-verb", "<田中>", "<働く>"),
    ("time-verb", "<明日>", "<書く>"),
    ("time-verb", "<昨日>", "<会う>"),
    ("time-verb", "<毎日>", "<走る>"),
    ("time-verb", "<来週>", "<旅行>"),
    ("verb-negation", "<飲む>", "<ない>"),
    ("verb-negation", "<待つ>", "<ない>"),
    ("verb-negation", "<起きる>", "<ない>"),
    ("verb-completion", "<洗う>", "<終わる>"),
    ("verb-completion", "<作る>", "<終わる>"),
    ("adjective-negation", "<高い>", "<ない>"),
    ("adjective-negation", "<静か>", "<ない>"),
    ("verb-question", "<帰る>", "<いつ>"),
    ("verb-question", "<使う>", "<何>"),
    ("object-verb", "<テレビ>", "<見る>"),
    ("object-verb", "<日本語>", "<教える>"),
)

KANA_SPELLING_RATE = 0.1  # share of lexicon words written all in kana
FINGERSPELLING_RATE = 0.3  # share of name / loanword slots filled by a fingerspelled word in train
RANDOM_SPELLING_SHARE = 0.75  # of those, random kana words (spelling practice) rather than listed ones
# Respelled words written in hiragana: twice the corpus's share, since a hiragana name has no change of script to
# mark where it ends (the default model spelled 62% of the test split's hiragana words right, 89% of katakana ones)
RESPELLING_HIRAGANA_SHARE = 0.5
TEST_FINGERSPELLED = 200  # test sentences holding a held-out fingerspelled word
MAX_TWO_CLAUSE_CHARACTERS = 50
MAX_TWO_CLAUSE_GLOSSES = 24
TEMPLATE_PAIRS = 5000  # generated pairs for train + validation (hand-written ones come on top)
TEST_PER_PAIRING = 16
VALIDATION_FRACTION = 0.1
_MAX_ATTEMPTS = 200_000


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise HftuneError(
            f"cannot read the JSL corpus file {path} ({err}); run `python -m hftune.jsl.corpus` to regenerate it"
        ) from None
    return [json.loads(line) for line in lines if line.strip()]


def load_jsl_corpus(split: str | None = None) -> DatasetDict | Dataset:
    """The shipped corpus: a `DatasetDict` of train/validation/test, or one split's `Dataset`.

    Columns: `id`, `ja` (Japanese), `gloss` (space-separated `<gloss>` tokens), `source` (hand | template |
    natural). `natural` holds hand-written sentences typed the way people type into an app; it is for scoring
    only, like `test`.
    """
    from datasets import Dataset, DatasetDict

    if split is not None and split not in SPLITS:
        raise HftuneError(f"unknown JSL corpus split {split!r}; choose one of {', '.join(SPLITS)}")
    names = SPLITS if split is None else (split,)
    splits = {name: Dataset.from_list(_read_jsonl(CORPUS_DIR / f"{name}.jsonl")) for name in names}
    return splits[split] if split is not None else DatasetDict(splits)


def _rows_from_json(text: str, path: Path) -> tuple[list[dict], list[str]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise HftuneError(
                f"{path} is not valid JSON ({err}); write a list of objects or JSON lines"
            ) from None
        numbered = list(enumerate(records, start=1))
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise HftuneError(
                    f"{path} line {number} is not valid JSON ({err}); one object per line"
                ) from None
    columns: dict[str, None] = {}
    rows = []
    for number, record in numbered:
        if not isinstance(record, dict):
            raise HftuneError(
                f"{path} record {number} is {type(record).__name__}, not an object with columns"
            )
        columns.update(dict.fromkeys(record))
        rows.append({"__line__": number, **record})
    return rows, list(columns)


def _rows_from_delimited(text: str, path: Path, delimiter: str) -> tuple[list[dict], list[str]]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    columns = [name.strip() for name in reader.fieldnames or []]
    rows = []
    for record in reader:
        # The header is line 1; multi-line quoted cells make this approximate, good enough to find the row.
        cleaned = {(key or "").strip(): value for key, value in record.items()}
        rows.append({"__line__": reader.line_num, **cleaned})
    return rows, columns


def load_gloss_pairs(path: str | Path, ja_column: str = "ja", gloss_column: str = "gloss") -> Dataset:
    """A user's own Japanese -> gloss pairs from .jsonl/.json/.csv/.tsv as a `Dataset` with columns `ja`, `gloss`.

    Files may carry a UTF-8 byte-order mark (Excel on Windows writes one). Gloss whitespace is normalised to
    single spaces. Missing columns, empty cells and unreadable or empty files raise `HftuneError`.
    """
    from datasets import Dataset

    path = Path(path)
    if not path.is_file():
        raise HftuneError(
            f"gloss pair file {path} does not exist; pass the path of a .jsonl, .csv or .tsv file"
        )
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        raise HftuneError(f"gloss pair file {path} has suffix {suffix!r}; use .jsonl, .json, .csv or .tsv")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise HftuneError(f"cannot read gloss pair file {path} ({err}); save it as UTF-8 text") from None
    if suffix in (".jsonl", ".json"):
        rows, columns = _rows_from_json(text, path)
    else:
        rows, columns = _rows_from_delimited(text, path, "\t" if suffix == ".tsv" else ",")
    if not rows:
        raise HftuneError(
            f"gloss pair file {path} has no rows; add pairs with columns {ja_column!r} and {gloss_column!r}"
        )
    for wanted in (ja_column, gloss_column):
        if wanted not in columns:
            raise HftuneError(
                f"gloss pair file {path} has no column {wanted!r} (columns: {', '.join(map(repr, columns)) or 'none'}); "
                f"rename it or pass ja_column=/gloss_column="
            )
    pairs = []
    for row in rows:
        values = {}
        for wanted in (ja_column, gloss_column):
            value = row.get(wanted)
            if not isinstance(value, str) or not value.strip():
                raise HftuneError(
                    f"gloss pair file {path} line {row['__line__']}: column {wanted!r} is empty or not text "
                    f"({value!r}); fill it in or delete the row"
                )
            values[wanted] = value
        pairs.append({"ja": values[ja_column].strip(), "gloss": " ".join(values[gloss_column].split())})
    return Dataset.from_list(pairs)


def gloss_vocabulary(rows: Iterable[Mapping[str, str]]) -> list[str]:
    """The distinct gloss tokens of `rows` (anything with a `gloss` field, e.g. a Dataset), sorted."""
    return sorted({token for row in rows for token in row["gloss"].split()})


# ---------------------------------------------------------------------------------------------------------
# Fingerspelling (指文字): one gloss per kana, see data/README.md
# ---------------------------------------------------------------------------------------------------------

FINGERSPELLING_PREFIX = "指:"
_HIRAGANA_TO_KATAKANA = 0x60  # code point distance between ぁ..ゖ and ァ..ヶ


def to_katakana(text: str) -> str:
    return "".join(chr(ord(c) + _HIRAGANA_TO_KATAKANA) if "ぁ" <= c <= "ゖ" else c for c in text)


def to_hiragana(text: str) -> str:
    return "".join(chr(ord(c) - _HIRAGANA_TO_KATAKANA) if "ァ" <= c <= "ヶ" else c for c in text)


def fingerspell(kana: str) -> list[str]:
    """Glosses (without brackets) of a word spelled in JSL fingerspelling: one per kana, written in katakana
    whichever script the text used. A voiced or p-sound kana (ガ, パ) is one sign (the base hand shape moved
    sideways or up); a small kana (ッ ャ ュ ョ ァ ...) is its own gloss (the base shape drawn towards the
    signer); the long-vowel mark ー is its own gloss (a stroke drawn downwards)."""
    katakana = to_katakana(kana)
    bad = [c for c in katakana if not ("ァ" <= c <= "ヶ" or c == "ー")]
    if bad or not katakana:
        raise ValueError(f"cannot fingerspell {kana!r}: {bad or 'empty'} is not kana")
    return [FINGERSPELLING_PREFIX + c for c in katakana]


def is_fingerspelling(gloss: str) -> bool:
    """True for a bracketed fingerspelling gloss such as `<指:ケ>`."""
    return gloss.startswith("<" + FINGERSPELLING_PREFIX)


def fingerspelled_runs(gloss: str) -> list[str]:
    """The maximal runs of fingerspelling glosses in a gloss string, each joined by spaces (one spelled word)."""
    runs, current = [], []
    for token in gloss.split() + [""]:
        if is_fingerspelling(token):
            current.append(token)
        elif current:
            runs.append(" ".join(current))
            current = []
    return runs


# ---------------------------------------------------------------------------------------------------------
# Lexicon
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Word:
    gloss: tuple[str, ...]
    ja: str
    variants: tuple[str, ...] = ()
    cats: tuple[str, ...] = ()
    counter: str | None = None
    extra: Mapping = field(default_factory=dict)
    reading: str | None = None  # the whole word in kana, when its usual spelling holds kanji

    def surface(self, rng: random.Random) -> str:
        # Mostly the usual spelling; sometimes hiragana or an honorific form that signs the same, or all kana.
        if self.variants and rng.random() < 0.25:
            return rng.choice(self.variants)
        if self.reading and rng.random() < KANA_SPELLING_RATE:
            return self.reading
        return self.ja


@dataclass
class _Lexicon:
    people: list[_Word]
    roles: list[_Word]
    places: list[_Word]
    nouns: list[_Word]
    verbs: list[_Word]
    adjectives: list[_Word]
    times: list[_Word]
    clock_prefixes: list[_Word]
    by_gloss: dict[str, _Word]
    raw: dict
    fingerspelled: dict[str, list[_Word]]  # "train" | "held_out" -> names and loanwords

    def category(self, cat: str) -> list[_Word]:
        return [word for word in self.nouns if cat in word.cats]

    def words(self, glosses: Iterable[str]) -> list[_Word]:
        return [self.by_gloss[gloss] for gloss in glosses]

    def person(self, gloss: str) -> _Word:
        return next(word for word in self.people if word.gloss == (gloss,))


def _word(entry: dict, readings: Mapping[str, str]) -> _Word:
    known = {"gloss", "ja", "variants", "cats", "counter"}
    return _Word(
        gloss=tuple(str(entry["gloss"]).split()),
        ja=str(entry["ja"]),
        variants=tuple(entry.get("variants", ())),
        cats=tuple(entry.get("cats", ())),
        counter=entry.get("counter"),
        extra={key: value for key, value in entry.items() if key not in known},
        reading=readings.get(str(entry["ja"])),
    )


def _fingerspelled_words(pool: Mapping) -> list[_Word]:
    """Names (category `person`) and loanwords of one pool, glossed letter by letter; the katakana spelling
    is the usual one, hiragana a variant (people type names either way)."""
    entries = [{"ja": name, "cats": ["person"]} for name in pool["names"]] + list(pool["loanwords"])
    return [
        _Word(
            gloss=tuple(fingerspell(entry["ja"])),
            ja=entry["ja"],
            variants=(to_hiragana(entry["ja"]),),
            cats=tuple(entry["cats"]),
        )
        for entry in entries
    ]


@cache
def _lexicon() -> _Lexicon:
    raw = yaml.safe_load(LEXICON_FILE.read_text(encoding="utf-8"))
    sections = {
        name: [_word(entry, raw["readings"]) for entry in raw[name]]
        for name in ("people", "roles", "places", "nouns", "verbs", "adjectives", "times", "clock_prefixes")
    }
    by_gloss: dict[str, _Word] = {}
    # Later sections never override earlier ones: 先生 is a person first, 部屋 a place first.
    for name in ("people", "places", "nouns", "times", "roles"):
        for word in sections[name]:
            by_gloss.setdefault(" ".join(word.gloss), word)
    fingerspelled = {pool: _fingerspelled_words(raw["fingerspelled"][pool]) for pool in ("train", "held_out")}
    return _Lexicon(**sections, by_gloss=by_gloss, raw=raw, fingerspelled=fingerspelled)


def gloss_classes() -> dict[str, frozenset[str]]:
    """Bracketed glosses by grammatical role, for checking order rules: time, number, question, negation,
    predicate (verbs, adjectives and the hand-written corpus's other predicates)."""
    lex = _lexicon()
    time = {w.gloss[0] for w in lex.times + lex.clock_prefixes} | {"時", "半"}
    predicate = {w.gloss[0] for w in lex.verbs + lex.adjectives} | set(lex.raw["extra_predicates"])
    return {
        "time": frozenset(f"<{g}>" for g in time),
        "number": frozenset(f"<{c}>" for c in "一二三四五六七八九十百千"),
        "question": QUESTION_GLOSSES,
        "negation": NEGATION_GLOSSES,
        "predicate": frozenset(f"<{g}>" for g in predicate),
    }


# ---------------------------------------------------------------------------------------------------------
# Morphology
# ---------------------------------------------------------------------------------------------------------

_I_ROW = dict(zip("うくぐすつぬぶむる", "いきぎしちにびみり", strict=True))
_A_ROW = dict(zip("うくぐすつぬぶむる", "わかがさたなばまら", strict=True))
_TE = {
    "う": "って",
    "つ": "って",
    "る": "って",
    "む": "んで",
    "ぶ": "んで",
    "ぬ": "んで",
    "く": "いて",
    "ぐ": "いで",
    "す": "して",
}


def _verb_stems(dictionary_form: str, verb_class: str) -> dict[str, str]:
    """masu-stem, nai-stem, te-form and ta-form of a verb written in kanji or kana."""
    if verb_class == "suru":
        noun = dictionary_form[: -len("する")]
        return {"masu": noun + "し", "nai": noun + "し", "te": noun + "して", "ta": noun + "した"}
    if verb_class == "kuru":
        kanji = dictionary_form.startswith("来")
        masu, nai = ("来", "来") if kanji else ("き", "こ")
        return {"masu": masu, "nai": nai, "te": masu + "て", "ta": masu + "た"}
    stem = dictionary_form[:-1]
    if verb_class == "ichidan":
        return {"masu": stem, "nai": stem, "te": stem + "て", "ta": stem + "た"}
    ending = dictionary_form[-1]
    te = stem + ("って" if verb_class == "iku" else _TE[ending])
    ta = te[:-1] + ("だ" if te.endswith("で") else "た")
    return {"masu": stem + _I_ROW[ending], "nai": stem + _A_ROW[ending], "te": te, "ta": ta}


def conjugate(dictionary_form: str, verb_class: str, form: str) -> str:
    """One inflected form of a verb: dict, masu, mashita, masen, masendeshita, nai, nakatta, ta, te, tai,
    masu_stem (`verb_class`: godan | ichidan | suru | kuru | iku)."""
    stems = _verb_stems(dictionary_form, verb_class)
    masu = stems["masu"]
    forms = {
        "dict": dictionary_form,
        "masu_stem": masu,
        "masu": masu + "ます",
        "mashita": masu + "ました",
        "masen": masu + "ません",
        "masendeshita": masu + "ませんでした",
        "nai": stems["nai"] + "ない",
        "nakatta": stems["nai"] + "なかった",
        "ta": stems["ta"],
        "te": stems["te"],
        "tai": masu + "たい",
    }
    return forms[form]


_E_ROW = dict(zip("うくぐすつぬぶむる", "えけげせてねべめれ", strict=True))


def potential_form(dictionary_form: str, verb_class: str, casual: bool = False) -> str:
    """The potential verb (an ichidan verb itself): 話す -> 話せる, 食べる -> 食べられる (`casual`: 食べれる),
    来る -> 来られる, 勉強する -> 勉強できる."""
    if verb_class == "suru":
        return dictionary_form[: -len("する")] + "できる"
    if verb_class == "kuru":
        return (
            dictionary_form[:-1] + ("れる" if casual else "られる")
            if dictionary_form.startswith("来")
            else ("これる" if casual else "こられる")
        )
    if verb_class == "ichidan":
        return dictionary_form[:-1] + ("れる" if casual else "られる")
    return dictionary_form[:-1] + _E_ROW[dictionary_form[-1]] + "る"


def _verb_clause(surface: str, cls: str, kind: str, polite: bool, connective: str, rng: random.Random) -> str:
    """A verb predicate that ends a first clause: 行くから, 行ったけど, 行って, 行かなかったら."""
    if connective == "te":
        return conjugate(surface, cls, "te")
    if connective == "tara":
        return conjugate(surface, cls, "ta" if kind == "past" else "nakatta") + "ら"
    forms = {"present": ("masu", "dict"), "past": ("mashita", "ta"), "neg": ("masen", "nai")}
    forms["neg_past"] = ("masendeshita", "nakatta")
    base = conjugate(surface, cls, forms[kind][0 if polite else 1])
    if connective == "kara":
        return base + "から"
    return base + rng.choice(["けど", "けど", "けれど"] + (["が"] if polite else []))


def _adjective_clause(surface: str, cls: str, kind: str, connective: str, rng: random.Random) -> str:
    """An adjective or noun predicate that ends a first clause: 寒いから, 静かだけど, 寒くて, 暇だったら."""
    if cls in ("i", "ii"):
        stem = "よ" if surface == "いい" else surface[:-1]
        te, tara = (
            (stem + "くなくて", stem + "くなかったら")
            if kind == "neg"
            else (stem + "くて", stem + "かったら")
        )
        plain = {"present": surface, "past": stem + "かった", "neg": stem + "くない"}[kind]
    else:
        te, tara = (
            (surface + "じゃなくて", surface + "じゃなかったら")
            if kind == "neg"
            else (surface + "で", surface + "だったら")
        )
        plain = {"present": surface + "だ", "past": surface + "だった", "neg": surface + "じゃない"}[kind]
    if connective == "te":
        return te
    if connective == "tara":
        return tara
    return plain + ("から" if connective == "kara" else rng.choice(["けど", "けれど"]))


def _adjective_form(surface: str, adjective_class: str, form: str, polite: bool, rng: random.Random) -> str:
    """A predicate form of an i-adjective (`i`, `ii` for いい), a na-adjective (`na`) or a noun (`noun`)."""
    if adjective_class in ("i", "ii"):
        stem = "よ" if surface == "いい" else surface[:-1]
        desu = "です" if polite else ""
        choices = {
            "present": [surface + desu],
            "past": [stem + "かった" + desu],
            "neg": [stem + "くないです", stem + "くありません"] if polite else [stem + "くない"],
            "neg_past": [stem + "くなかったです", stem + "くありませんでした"]
            if polite
            else [stem + "くなかった"],
            "yn": [surface + "ですか"] if polite else [surface + "？"],
            "yn_past": [stem + "かったですか"] if polite else [stem + "かった？"],
        }
    else:
        choices = {
            "present": [surface + "です"] if polite else [surface + "だ"],
            "past": [surface + "でした"] if polite else [surface + "だった"],
            "neg": [surface + e for e in ("じゃありません", "ではありません", "じゃないです")]
            if polite
            else [surface + "じゃない", surface + "ではない"],
            "neg_past": [
                surface + e for e in ("じゃありませんでした", "ではありませんでした", "じゃなかったです")
            ]
            if polite
            else [surface + "じゃなかった"],
            "yn": [surface + "ですか"] if polite else [surface + "？"],
            "yn_past": [surface + "でしたか"] if polite else [surface + "だった？"],
        }
    return rng.choice(choices[form])


_DIGITS = "〇一二三四五六七八九"


def kanji_number(n: int) -> str:
    """1 <= n <= 9999 in kanji numerals (三千五百, 二十五); each character is one number gloss."""
    parts = []
    for value, unit in ((1000, "千"), (100, "百"), (10, "十")):
        digit, n = divmod(n, value)
        if digit:
            parts.append(("" if digit == 1 else _DIGITS[digit]) + unit)
    if n:
        parts.append(_DIGITS[n])
    return "".join(parts)


def _number(rng: random.Random, n: int) -> tuple[str, list[str]]:
    # Arabic digits sometimes, as people type them; the glosses are always the kanji numerals.
    kanji = kanji_number(n)
    return (str(n) if rng.random() < 0.25 else kanji), list(kanji)


# ---------------------------------------------------------------------------------------------------------
# Sentence templates. Each returns (japanese, glosses without brackets) or None when the draw is unusable.
# ---------------------------------------------------------------------------------------------------------

_VERB_KINDS = {  # kind -> (tense it needs from a time word, weight when drawn at random)
    "present": ("nonpast", 14),
    "past": ("past", 12),
    "neg": ("nonpast", 9),
    "neg_past": ("past", 6),
    "completion": ("done", 7),
    "not_yet": ("not_yet", 4),
    "want": ("nonpast", 6),
    "request": ("nonpast", 4),
    "invite": ("nonpast", 4),
    "must": ("nonpast", 3),
    "can": ("nonpast", 4),
    "cannot": ("nonpast", 4),
    "yn": ("nonpast", 7),
    "yn_past": ("past", 4),
    "yn_done": ("done", 3),
    "want_yn": ("nonpast", 2),
    "wh": ("nonpast", 10),
    "wh_past": ("past", 6),
    "why": ("nonpast", 2),
    "why_neg": ("past", 2),
}
_SUFFIX = {
    "neg": ["ない"],
    "neg_past": ["ない"],
    "completion": ["終わる"],
    "not_yet": ["まだ"],
    "want": ["好き"],
    "request": ["お願い"],
    "invite": ["?"],
    "must": ["必要"],
    "can": ["できる"],
    "cannot": ["無理"],
    "yn": ["?"],
    "yn_past": ["?"],
    "yn_done": ["終わる", "?"],
    "want_yn": ["好き", "?"],
    "why": ["なぜ"],
    "why_neg": ["ない", "なぜ"],
}
_TENSES_FOR = {
    "nonpast": {"future", "any", "habit", "now"},
    "past": {"past", "any", "habit"},
}
_QUESTION_KINDS = {"yn", "yn_past", "yn_done", "want_yn", "invite", "wh", "wh_past", "why", "why_neg"}
# Kinds a first clause may take, by connective (から / けど / て / たら).
_CLAUSE_KINDS = {
    "kara": ("present", "past", "neg", "neg_past"),
    "kedo": ("present", "past", "neg", "neg_past"),
    "te": ("present",),
    "tara": ("past", "neg_past"),
}
# Gloss order of a two-clause sentence (data/README.md, "Two-clause sentences").
_CLAUSE_GLOSSES = {"kara": ([], ["だから"]), "kedo": ([], ["しかし"]), "te": ([], []), "tara": (["もし"], [])}
_EMPTY: Mapping = {}


def _statement_end(rng: random.Random) -> str:
    # Sentence-final ね / よ only soften a statement: they are not signed (data/README.md).
    return rng.choice(["。", "。", "", "", "よ", "ね", "よね", "！"])


def _polite_question_end(rng: random.Random) -> str:
    return "か" + rng.choice(["", "？", "。", "?"])


# Morae of random spelling practice words: every kana the fingerspelling table has, voiced, p-sound and
# contracted (キャ) ones included; ッ and ー are added between morae.
_MORAE = (
    list("アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワ")
    + list("ガギグゲゴザジズゼゾダデドバビブベボパピプペポ")
    + [c + s for c in "キシチニヒミリギジビピ" for s in "ャュョ"]
    + ["ファ", "フィ", "フェ", "ティ", "ディ", "ウィ", "ウェ", "シェ", "ジェ", "チェ"]
)


def _random_word(rng: random.Random, cat: str) -> _Word:
    """A random kana string spelled like a name or loanword: 2-4 morae, sometimes with ッ, ー or a final ン.
    Hundreds of these make the model learn the kana -> sign mapping instead of memorising the listed words."""
    morae = [rng.choice(_MORAE) for _ in range(rng.randint(2, 4))]
    position = rng.randrange(1, len(morae))
    extra = rng.random()
    if extra < 0.2:
        morae.insert(position, "ッ")
    elif extra < 0.4:
        morae.insert(position, "ー")
    if rng.random() < 0.2:
        morae.append("ン")
    word = "".join(morae)
    return _Word(gloss=tuple(fingerspell(word)), ja=word, variants=(to_hiragana(word),), cats=(cat,))


def _fingerspelled(rng: random.Random, lex: _Lexicon, fixed: Mapping, cat: str) -> _Word | None:
    """Sometimes (always when drawing held-out words for test) a fingerspelled name or loanword of `cat`: in
    train and validation a listed one or, `RANDOM_SPELLING_SHARE` of the time, a random kana word."""
    pool = fixed.get("fingerspell", "train")
    if rng.random() >= (1.0 if pool == "held_out" else FINGERSPELLING_RATE):
        return None
    candidates = [word for word in lex.fingerspelled[pool] if cat in word.cats]
    if not candidates:
        return None
    if pool == "train" and rng.random() < RANDOM_SPELLING_SHARE:
        return _random_word(rng, cat)
    return rng.choice(candidates)


def _name(rng: random.Random, word: _Word) -> str:
    return word.surface(rng) + rng.choice(["さん", "さん", "くん", "ちゃん", ""])


def _time_phrase(
    rng: random.Random, lex: _Lexicon, tense: str, clock: bool, fixed: str | None = None, topic: bool = True
) -> tuple[str, list[str]] | None:
    """A sentence-initial time expression compatible with `tense`, or None if there is none.

    `topic=False` avoids marking the time with は when the sentence has a subject topic already."""
    if tense in ("done", "not_yet"):
        # Completion happens "today" or "this morning"; "not yet" is about now (今日).
        allowed = ("今日", "今朝") if tense == "done" else ("今日",)
        candidates = [w for w in lex.times if w.gloss[0] in allowed]
    else:
        candidates = [w for w in lex.times if w.extra["tense"] in _TENSES_FOR[tense]]
    if fixed is not None:
        candidates = [w for w in candidates if w.gloss[0] == fixed]
    elif clock and tense in _TENSES_FOR and rng.random() < 0.35:
        hour = rng.randint(1, 12)
        text, glosses = _number(rng, hour)
        text, glosses = text + "時", glosses + ["時"]
        if rng.random() < 0.2:
            text, glosses = text + "半", glosses + ["半"]
        prefixes = [w for w in lex.clock_prefixes if w.extra["tense"] in _TENSES_FOR[tense]]
        if prefixes and rng.random() < 0.4:
            prefix = rng.choice(prefixes)
            text, glosses = prefix.ja + text, [prefix.gloss[0], *glosses]
        return text + "に", glosses
    if not candidates:
        return None
    word = rng.choice(candidates)
    particles = [p for p in word.extra["particles"] if topic or p != "は"]
    return word.surface(rng) + rng.choice(particles), list(word.gloss)


def _subject(
    rng: random.Random, lex: _Lexicon, question: bool, fixed: Mapping = _EMPTY
) -> tuple[str, list[str]]:
    """A topic person: questions ask about others (not 私), statements are not about あなた."""
    name = _fingerspelled(rng, lex, fixed, "person")
    if name is not None:
        return _name(rng, name), list(name.gloss)
    unsuitable = {"私", "私たち"} if question else {"あなた"}
    choices = [w for w in lex.people if w.gloss[0] not in unsuitable]
    word = rng.choice(choices)
    if word.extra.get("family") and rng.random() < 0.15:
        return "私の" + word.ja, ["私", *word.gloss]
    return word.surface(rng), list(word.gloss)


def _verb_kind(rng: random.Random, verb: _Word, fixed: Mapping) -> str | None:
    info = verb.extra
    allowed = []
    for kind, (_, weight) in _VERB_KINDS.items():
        if info.get("basic") and kind not in ("present", "past", "neg", "neg_past", "yn", "yn_past"):
            continue
        if _VERB_KINDS[kind][0] in ("done", "not_yet") and not (info.get("owaru") or info.get("telic")):
            continue
        if kind in ("can", "cannot") and not info.get("can"):
            continue
        if kind in ("request", "invite", "must") and info.get("request") is False:
            continue
        if kind == "invite" and not info.get("companion"):
            continue
        if "clause" in fixed and kind not in _CLAUSE_KINDS[fixed["clause"]]:
            continue
        if "subject" in fixed and kind in ("request", "invite", "want", "want_yn"):
            continue
        if "wh_slot" in fixed and kind not in ("wh", "wh_past"):
            continue
        if "kinds" in fixed and kind not in fixed["kinds"]:
            continue
        allowed.append((kind, weight))
    if not allowed:
        return None
    kinds, weights = zip(*allowed, strict=True)
    return rng.choices(kinds, weights=weights)[0]


def _verb_sentence(rng: random.Random, lex: _Lexicon, fixed: Mapping) -> tuple[str, list[str]] | None:
    verbs = [v for v in lex.verbs if v.gloss[0] == fixed["verb"]] if "verb" in fixed else lex.verbs
    verb = rng.choice(verbs)
    info = verb.extra
    kind = _verb_kind(rng, verb, fixed)
    if kind is None:
        return None
    tense = "nonpast" if fixed.get("clause") == "tara" else _VERB_KINDS[kind][0]
    question = kind in _QUESTION_KINDS
    polite = rng.random() < 0.6 and fixed.get("clause") not in ("te", "tara")

    # Which slot a wh-question asks about.
    wh_slot = None
    if kind in ("wh", "wh_past"):
        slots = (
            ["subject", "time"]
            + (["object"] if info.get("obj") else [])
            + (["place"] if info.get("place") else [])
        )
        wh_slot = fixed.get("wh_slot") or rng.choice(slots)

    # Subject.
    subject_ja, subject_g = "", []
    if wh_slot == "subject":
        subject_ja = "誰が"
    elif kind in ("want", "want_yn"):
        if kind == "want" and rng.random() < 0.6:
            word = lex.person(rng.choice(["私", "私たち"]))
            subject_ja, subject_g = word.surface(rng) + "は", list(word.gloss)
        elif kind == "want_yn" and rng.random() < 0.4:
            subject_ja, subject_g = "あなたは", ["あなた"]
    elif kind not in ("request", "invite") and ("subject" in fixed or rng.random() < 0.7):
        if "subject" in fixed:
            word = lex.person(fixed["subject"])
            subject_ja, subject_g = word.surface(rng), list(word.gloss)
        else:
            subject_ja, subject_g = _subject(rng, lex, question, fixed)
        # Casual speech marks the topic with って as often as with は: both are the topic, unsigned.
        subject_ja += "って" if not polite and rng.random() < 0.2 else "は"

    # Time.
    time_ja, time_g = "", []
    if wh_slot != "time" and not fixed.get("no_time") and ("time" in fixed or rng.random() < 0.5):
        phrase = _time_phrase(
            rng, lex, tense, bool(info.get("clock")), fixed.get("time"), topic=not subject_ja
        )
        if phrase is None:
            if "time" in fixed:
                return None
        else:
            time_ja, time_g = phrase

    # Companion, place, vehicle, object.
    companion_ja, companion_g = "", []
    if info.get("companion") and rng.random() < 0.15:
        exclude = {"私", "あなた", *subject_g}
        word = rng.choice([w for w in lex.people if w.gloss[0] not in exclude])
        companion_ja = word.surface(rng) + rng.choice(["と", "と一緒に"])
        companion_g = [*word.gloss, "一緒"]

    place_ja, place_g = "", []
    dest = info.get("place") == "dest"
    if info.get("place") and wh_slot != "place" and rng.random() < (0.85 if dest else 0.5):
        word = lex.by_gloss[rng.choice(info["places"])]
        particle = rng.choice(["に", "へ"]) if dest else "で"
        place_ja, place_g = word.surface(rng) + particle, list(word.gloss)

    vehicle_ja, vehicle_g = "", []
    if info.get("vehicle") and rng.random() < 0.25:
        word = rng.choice(lex.category("vehicle"))
        vehicle_ja, vehicle_g = word.surface(rng) + "で", list(word.gloss)

    object_ja, object_g = "", []
    if info.get("obj") and wh_slot != "object":
        if info["obj"] == "person":
            candidates = [w for w in lex.people if w.gloss[0] not in {"私", "あなた", "私たち", *subject_g}]
        elif info["obj"] == "room":
            candidates = lex.words(lex.raw["rooms"])
        else:
            candidates = lex.category(info["obj"])
        if "object" in fixed:
            candidates = [w for w in candidates if w.gloss[0] == fixed["object"]]
        if not candidates:
            return None
        if "object" in fixed or rng.random() < 0.9:
            word = rng.choice(candidates)
            spelled = None if "object" in fixed else _fingerspelled(rng, lex, fixed, info["obj"])
            if spelled is not None:
                word = spelled
            object_ja, object_g = word.surface(rng) + info["particle"], list(word.gloss)
            if (
                info.get("count")
                and word.counter
                and kind in ("present", "past", "want")
                and rng.random() < 0.3
            ):
                text, glosses = _number(rng, rng.randint(1, 5))
                object_ja += text + word.counter
                object_g += [*glosses, word.counter]

    # The predicate.
    surface = info["alt"] if info.get("alt") and rng.random() < 0.15 else verb.ja
    cls = info["class"]
    adverb = ""
    q_gloss: list[str] = []
    if "clause" in fixed:
        pred = _verb_clause(surface, cls, kind, polite, fixed["clause"], rng)
    elif kind == "present" and rng.random() < 0.2:
        # 〜ている / 〜てる / 〜ています: aspect, not signed on its own
        te = conjugate(surface, cls, "te")
        pred = (
            te
            + (rng.choice(["います", "いる"]) if polite else rng.choice(["る", "る", "いる"]))
            + _statement_end(rng)
        )
    elif kind == "present":
        pred = conjugate(surface, cls, "masu" if polite else "dict") + _statement_end(rng)
    elif kind == "past":
        pred = conjugate(surface, cls, "mashita" if polite else "ta") + _statement_end(rng)
    elif kind in ("neg", "neg_past"):
        polite_form, plain_form = ("masen", "nai") if kind == "neg" else ("masendeshita", "nakatta")
        if polite and rng.random() < 0.2:
            pred = conjugate(surface, cls, plain_form) + "です"
        else:
            pred = conjugate(surface, cls, polite_form if polite else plain_form)
        pred += _statement_end(rng)
    elif kind in ("completion", "yn_done"):
        ending = (
            _polite_question_end(rng) if kind == "yn_done" and polite else ("？" if kind == "yn_done" else "")
        )
        if kind == "completion" and info.get("owaru") and rng.random() < 0.4:
            stem = conjugate(surface, cls, "masu_stem")
            pred = stem + ("終わりました" if polite else "終わった") + _statement_end(rng)
        elif kind == "completion" and rng.random() < 0.5:
            # 〜ちゃった / 〜じゃった (〜てしまった): completion
            te = conjugate(surface, cls, "te")
            chau = te[:-1] + ("じゃ" if te.endswith("で") else "ちゃ")
            pred = chau + ("いました" if polite else "った") + _statement_end(rng)
        else:
            adverb = "もう"
            pred = conjugate(surface, cls, "mashita" if polite else "ta")
            pred += ending if kind == "yn_done" else _statement_end(rng)
    elif kind == "not_yet":
        adverb = "まだ"
        te = conjugate(surface, cls, "te")
        pred = te + ("いません" if polite else rng.choice(["いない", "ない"])) + _statement_end(rng)
    elif kind in ("want", "want_yn"):
        tai = conjugate(surface, cls, "tai")
        if kind == "want":
            pred = tai + ("です" if polite else "") + _statement_end(rng)
        else:
            pred = tai + ("です" + _polite_question_end(rng) if polite else "？")
    elif kind == "request":
        ending = rng.choice(
            ["ください", "ください", "くださいね", "くれませんか", "もらえませんか", "くれる？", "ね", ""]
        )
        pred = (
            conjugate(surface, cls, "te")
            + ending
            + ("" if ending.endswith(("か", "？")) else _statement_end(rng))
        )
    elif kind == "invite":  # 〜ませんか / 〜ない？: an invitation, signed as a yes/no question
        if polite:
            pred = conjugate(surface, cls, "masen") + _polite_question_end(rng)
        else:
            pred = conjugate(surface, cls, "nai") + rng.choice(["？", "?"])
    elif kind == "must":  # 〜なきゃ / 〜なければならない: 必要
        endings = (
            ["なければなりません", "ないといけません"] if polite else ["なきゃ", "なきゃいけない", "なくちゃ"]
        )
        pred = conjugate(surface, cls, "nai")[: -len("ない")] + rng.choice(endings) + _statement_end(rng)
    elif kind in ("can", "cannot"):
        if rng.random() < 0.5:  # potential form: 話せる, 読めない, 食べられます
            potential = potential_form(surface, cls, casual=not polite and rng.random() < 0.3)
            form = {"can": ("masu", "dict"), "cannot": ("masen", "nai")}[kind][0 if polite else 1]
            pred = conjugate(potential, "ichidan", form) + _statement_end(rng)
        else:
            dekiru = {"can": ("できます", "できる"), "cannot": ("できません", "できない")}[kind]
            pred = (
                conjugate(surface, cls, "dict") + "ことが" + dekiru[0 if polite else 1] + _statement_end(rng)
            )
    elif kind in ("yn", "yn_past"):
        if polite:
            pred = conjugate(surface, cls, "masu" if kind == "yn" else "mashita") + _polite_question_end(rng)
        else:
            pred = conjugate(surface, cls, "dict" if kind == "yn" else "ta") + "？"
    else:  # wh, wh_past, why, why_neg
        past = kind in ("wh_past", "why_neg")
        if kind == "why_neg":
            forms = ("masendeshita", "nakatta")
        else:
            forms = ("mashita", "ta") if past else ("masu", "dict")
        if polite:
            pred = conjugate(surface, cls, forms[0]) + _polite_question_end(rng)
        else:
            pred = conjugate(surface, cls, forms[1]) + rng.choice(["の？", "？"])
        if kind in ("why", "why_neg"):
            adverb = rng.choice(["なぜ", "どうして"])
        elif wh_slot == "subject":
            q_gloss = ["誰"]
        elif wh_slot == "time":
            if info.get("clock") and rng.random() < 0.4:
                adverb, q_gloss = "何時に", ["何時"]
            else:
                adverb, q_gloss = "いつ", ["いつ"]
        elif wh_slot == "object":
            who = info["obj"] == "person"
            object_ja = ("誰" if who else "何") + info["particle"]
            q_gloss = ["誰" if who else "何"]
        else:
            place_ja = "どこ" + (rng.choice(["に", "へ"]) if info["place"] == "dest" else "で")
            q_gloss = ["どこ"]

    # Japanese order: time and subject in either order, then companion, place/vehicle, object, predicate.
    head = [time_ja, subject_ja] if rng.random() < 0.5 else [subject_ja, time_ja]
    if head[0] == time_ja and time_ja and rng.random() < 0.3:
        head[0] += "、"
    middle = [companion_ja] + ([place_ja, vehicle_ja] if rng.random() < 0.6 else [vehicle_ja, place_ja])
    if adverb in ("なぜ", "どうして", "何時に", "いつ"):
        middle.insert(0, adverb)
        adverb = ""
    tail = [object_ja]
    if adverb:
        tail.insert(0 if rng.random() < 0.5 else 1, adverb)
    japanese = "".join(head + middle + tail) + pred
    glosses = (
        time_g
        + subject_g
        + companion_g
        + place_g
        + vehicle_g
        + object_g
        + [verb.gloss[0]]
        + _SUFFIX.get(kind, [])
        + q_gloss
    )
    return japanese, glosses


def _topic(rng: random.Random, lex: _Lexicon, group: str, fixed: Mapping) -> tuple[str, list[str]] | None:
    """A noun phrase an adjective of `group` can describe: maybe with a pointing sign or a possessor."""
    if group in ("person", "food", "drink", "thing", "activity"):
        spelled = _fingerspelled(rng, lex, fixed, group)
        if spelled is not None:
            return (_name(rng, spelled) if group == "person" else spelled.surface(rng)), list(spelled.gloss)
    groups = lex.raw["topic_groups"]
    if group in groups:
        word = lex.by_gloss[rng.choice(groups[group])]
    elif group in ("food", "drink", "thing", "animal", "activity", "season", "body"):
        word = rng.choice(lex.category(group))
    else:
        return None
    gloss = " ".join(word.gloss)
    if gloss in lex.raw["demonstrative_nouns"] and rng.random() < 0.4:
        return rng.choice(["この", "その", "あの"]) + word.ja, ["IX", *word.gloss]
    if (word.extra.get("family") or group in ("thing", "animal")) and rng.random() < 0.15:
        return "私の" + word.ja, ["私", *word.gloss]
    return word.surface(rng), list(word.gloss)


def _adjective_sentence(rng: random.Random, lex: _Lexicon, fixed: Mapping) -> tuple[str, list[str]] | None:
    adjectives = lex.adjectives
    if "adjective" in fixed:
        adjectives = [a for a in adjectives if a.gloss[0] == fixed["adjective"]]
    adj = rng.choice(adjectives)
    groups = [g for g in adj.extra["topics"] if not (fixed.get("no_time") and g == "weather_time")]
    if not groups:
        return None
    group = rng.choice(groups)
    kinds = {"present": 6, "past": 3, "neg": 4, "neg_past": 2, "yn": 3, "yn_past": 1, "dou": 1, "dou_past": 1}
    if group in ("feeling", "body", "weather_time", "weather"):
        kinds = {k: w for k, w in kinds.items() if not k.startswith("dou")}
    if "kinds" in fixed:
        kinds = {k: w for k, w in kinds.items() if k in fixed["kinds"]}
    if "clause" in fixed:
        kinds = (
            {"present": 3, "past": 1, "neg": 1}
            if fixed["clause"] in ("kara", "kedo")
            else {"present": 3, "neg": 1}
        )
    kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
    tense = "past" if kind.endswith("past") else "nonpast"
    polite = rng.random() < 0.6 and "clause" not in fixed
    question = kind.startswith(("yn", "dou"))

    time_ja, time_g = "", []
    topic_ja, topic_g = "", []
    if group == "weather_time":
        word = rng.choice(
            [
                w
                for w in lex.words(lex.raw["topic_groups"]["weather_time"])
                if w.extra["tense"] in _TENSES_FOR[tense]
            ]
        )
        topic_ja, time_g = word.surface(rng) + "は", list(word.gloss)
    elif group in ("feeling", "body", "weather"):
        if group == "feeling" or rng.random() < 0.3:
            who = "あなた" if question else "私"
            if group == "feeling" and rng.random() < 0.4:
                who = ""
            if who:
                word = lex.person(who)
                topic_ja, topic_g = word.surface(rng) + "は", list(word.gloss)
        if group == "body":
            word = rng.choice(lex.category("body"))
            topic_ja, topic_g = topic_ja + word.surface(rng) + "が", topic_g + list(word.gloss)
        elif group == "weather":
            topic_ja, topic_g = "天気が", ["天気"]
    else:
        topic = _topic(rng, lex, group, fixed)
        if topic is None:
            return None
        topic_ja, topic_g = topic[0] + ("って" if not polite and rng.random() < 0.25 else "は"), topic[1]

    # Only passing states take a time word: 今日は忙しい, not 今日は親切.
    timed = group in ("weather_place", "weather", "activity", "feeling") or adj.gloss[0] in (
        "忙しい",
        "暇",
        "元気",
    )
    if timed and not fixed.get("no_time") and rng.random() < 0.35:
        words = [
            w for w in lex.times if w.extra["tense"] in _TENSES_FOR[tense] and w.extra["tense"] != "habit"
        ]
        word = rng.choice(words)
        time_g = list(word.gloss)
        if group in ("weather_place", "activity") and topic_ja:
            time_ja = word.surface(rng) + "の"
        else:
            time_ja = word.surface(rng) + rng.choice(["、", "は"] if group == "weather" else ["、", ""])

    if kind.startswith("dou"):
        if polite:
            pred = ("どうでした" if kind == "dou_past" else "どうです") + _polite_question_end(rng)
        else:
            pred = "どうだった？" if kind == "dou_past" else "どう？"
        return time_ja + topic_ja + pred, time_g + topic_g + ["どう"]

    surface = adj.extra["alt"] if adj.extra.get("alt") and rng.random() < 0.15 else adj.ja
    cls = adj.extra["class"]
    if cls == "ii" and surface != "いい":
        cls = "i"
    if "clause" in fixed:
        pred = _adjective_clause(surface, cls, kind, fixed["clause"], rng)
    else:
        pred = _adjective_form(surface, cls, kind, polite, rng)
        if not question:
            # な after a plain i-adjective (寒いな, 楽しかったな): a musing, not signed
            casual = cls in ("i", "ii") and not polite and rng.random() < 0.15
            pred += "な" if casual else _statement_end(rng)
        elif polite:
            pred = pred[:-1] + _polite_question_end(rng)
    intensifier_ja, intensifier_g = "", []
    if kind in ("present", "past", "yn") and rng.random() < 0.2:
        intensifier_ja, intensifier_g = "とても", ["とても"]
    suffix = {"neg": ["ない"], "neg_past": ["ない"], "yn": ["?"], "yn_past": ["?"]}.get(kind, [])
    japanese = time_ja + topic_ja + intensifier_ja + pred
    return japanese, time_g + topic_g + intensifier_g + [adj.gloss[0]] + suffix


def _copula_sentence(rng: random.Random, lex: _Lexicon, fixed: Mapping) -> tuple[str, list[str]]:
    kind = rng.choices(["present", "past", "neg", "neg_past", "yn", "wh"], weights=[6, 1, 3, 1, 3, 2])[0]
    polite = rng.random() < 0.6
    question = kind in ("yn", "wh")
    if rng.random() < 0.3:  # これは本です: pointing at a thing
        word = _fingerspelled(rng, lex, fixed, "thing") or rng.choice(
            lex.category("thing") + lex.category("food")
        )
        topic_ja, topic_g = rng.choice(["これ", "それ", "あれ"]) + rng.choice(["は", "は", "って"]), ["IX"]
        pred_word = word
    else:
        if rng.random() < 0.25 or kind == "wh":
            topic_ja, topic_g = rng.choice(["この人", "その人", "あの人"]) + "は", ["IX", "人"]
        else:
            topic_ja, topic_g = _subject(rng, lex, question, fixed)
            topic_ja += "は"
        pred_word = rng.choice(lex.roles)
        if topic_g[0] in ("彼", "彼女", "IX") and rng.random() < 0.3:
            pred_word = rng.choice([w for w in lex.people if w.extra.get("family")])
            topic_ja, topic_g = topic_ja + "私の", topic_g + ["私"]
    if kind == "wh":
        if topic_g == ["IX"]:
            return topic_ja + "何" + ("です" + _polite_question_end(rng) if polite else "？"), ["IX", "何"]
        return topic_ja + "誰" + ("です" + _polite_question_end(rng) if polite else "？"), topic_g + ["誰"]
    pred = _adjective_form(pred_word.surface(rng), "noun", kind, polite, rng)
    if not question:
        pred += _statement_end(rng)
    elif polite:
        pred = pred[:-1] + _polite_question_end(rng)
    suffix = {"neg": ["違う"], "neg_past": ["違う"], "yn": ["?"]}.get(kind, [])
    return topic_ja + pred, topic_g + list(pred_word.gloss) + suffix


def _exist_form(animate: bool, form: str, polite: bool) -> str:
    if animate:
        return conjugate(
            "いる",
            "ichidan",
            {"present": "masu", "past": "mashita", "neg": "masen"}[form]
            if polite
            else {"present": "dict", "past": "ta", "neg": "nai"}[form],
        )
    polite_forms = {"present": "あります", "past": "ありました", "neg": "ありません"}
    plain_forms = {"present": "ある", "past": "あった", "neg": "ない"}
    return (polite_forms if polite else plain_forms)[form]


def _existence_sentence(rng: random.Random, lex: _Lexicon, fixed: Mapping) -> tuple[str, list[str]]:
    place_gloss = rng.choice(list(lex.raw["existence"]))
    place = lex.by_gloss[place_gloss]
    thing = lex.by_gloss[rng.choice(lex.raw["existence"][place_gloss])]
    if place_gloss in ("家", "部屋"):
        thing = _fingerspelled(rng, lex, fixed, "exist_home") or thing
    animate = thing.gloss[0] in lex.raw["animate"]
    verb = "いる" if animate else "ある"
    kind = rng.choices(
        ["present", "past", "neg", "yn", "where", "what", "count"], weights=[4, 1, 3, 3, 2, 2, 2]
    )[0]
    polite = rng.random() < 0.6
    if kind == "count" and not animate:
        kind = "present"
    if kind == "where":
        pred = "どこに" + (
            _exist_form(animate, "present", True) + _polite_question_end(rng)
            if polite
            else _exist_form(animate, "present", False) + "の？"
        )
        return thing.surface(rng) + "は" + pred, [*thing.gloss, verb, "どこ"]
    if kind == "what":
        person = thing.gloss[0] in ("子供", "人", "先生", "友達")
        qword = "誰" if person else "何"
        pred = _exist_form(animate, "present", polite) + (_polite_question_end(rng) if polite else "？")
        return place.surface(rng) + "に" + qword + "が" + pred, [*place.gloss, verb, qword]
    quantity_ja, quantity_g = "", []
    if kind == "count":
        counter = "人" if thing.gloss[0] in ("子供", "人", "先生", "友達") else "匹"
        text, glosses = _number(rng, rng.randint(2, 9))
        quantity_ja, quantity_g = text + counter, [*glosses, counter]
        kind = "present"
    if kind == "yn":
        pred = _exist_form(animate, "present", polite) + (_polite_question_end(rng) if polite else "？")
        suffix = ["?"]
    else:
        pred = _exist_form(animate, kind, polite) + _statement_end(rng)
        suffix = ["ない"] if kind == "neg" else []
    marker = "には" if kind == "neg" and rng.random() < 0.5 else "に"
    japanese = place.surface(rng) + marker + thing.surface(rng) + "が" + quantity_ja + pred
    return japanese, [*place.gloss, *thing.gloss, *quantity_g, verb, *suffix]


def _family_sentence(rng: random.Random, lex: _Lexicon, fixed: Mapping) -> tuple[str, list[str]]:
    kin = rng.choice(
        [w for w in lex.people if w.extra.get("family") and w.gloss[0] not in ("父", "母", "夫", "妻")]
        + lex.category("kin")
    )
    kind = rng.choice(["count", "count", "yn", "neg", "how_many", "family_size", "name"])
    polite = rng.random() < 0.6
    subject_ja, subject_g = ("私は", ["私"]) if rng.random() < 0.4 else ("", [])
    if kind == "name":  # 妹の名前はユキです: the name is fingerspelled
        pool = fixed.get("fingerspell", "train")
        name = rng.choice([word for word in lex.fingerspelled[pool] if "person" in word.cats])
        if pool == "train" and rng.random() < RANDOM_SPELLING_SHARE:
            name = _random_word(rng, "person")
        kin = lex.person(rng.choice(["兄", "姉", "弟", "妹", "子供", "友達", "先生"]))
        end = ("です" if polite else rng.choice(["", "だ"])) + _statement_end(rng)
        owner_ja, owner_g = ("私の", ["私"]) if rng.random() < 0.5 else ("", [])
        japanese = owner_ja + kin.surface(rng) + "の名前は" + name.surface(rng) + end
        return japanese, [*owner_g, *kin.gloss, "名前", *name.gloss]
    if kind == "family_size":
        end = "です" + _polite_question_end(rng) if polite else "？"
        owner_ja, owner_g = ("あなたの", ["あなた"]) if subject_g else ("", [])
        return owner_ja + "家族は何人" + end, owner_g + ["家族", "何人"]
    if kind == "how_many":
        end = "います" + _polite_question_end(rng) if polite else "いるの？"
        return kin.ja + "は何人" + end, [*kin.gloss, "いる", "何人"]
    if kind == "yn":
        end = "います" + _polite_question_end(rng) if polite else "いる？"
        return kin.surface(rng) + "が" + end, [*kin.gloss, "いる", "?"]
    if kind == "neg":
        subject_ja = subject_ja.replace("私は", "私には")
        return subject_ja + kin.surface(rng) + "は" + ("いません" if polite else "いない") + _statement_end(
            rng
        ), subject_g + [*kin.gloss, "いる", "ない"]
    text, glosses = _number(rng, rng.randint(1, 4))
    end = ("います" if polite else "いる") + _statement_end(rng)
    return subject_ja + kin.surface(rng) + "が" + text + "人" + end, subject_g + [
        *kin.gloss,
        *glosses,
        "人",
        "いる",
    ]


def _preference_sentence(rng: random.Random, lex: _Lexicon, fixed: Mapping) -> tuple[str, list[str]]:
    """好き / 嫌い / 欲しい / できる / 上手 / 下手 with a noun object marked by が."""
    frame = rng.choices(["like", "want", "skill"], weights=[5, 2, 3])[0]
    kind = rng.choices(["present", "neg", "yn", "wh"], weights=[6, 3, 3, 2])[0]
    polite = rng.random() < 0.6
    question = kind in ("yn", "wh")
    subject_ja, subject_g = "", []
    if frame == "want":
        if rng.random() < 0.5:
            subject_ja, subject_g = ("あなたは", ["あなた"]) if question else ("私は", ["私"])
    elif rng.random() < 0.6:
        subject_ja, subject_g = _subject(rng, lex, question, fixed)
        subject_ja += "って" if not polite and rng.random() < 0.2 else "は"
    cat, predicate = {
        "like": ("like", rng.choice(["好き", "好き", "嫌い"])),
        "want": ("want", "欲しい"),
        "skill": ("skill", rng.choice(["できる", "上手", "下手"])),
    }[frame]
    noun = _fingerspelled(rng, lex, fixed, cat) or rng.choice(lex.category(cat))
    if kind == "wh" and predicate in ("下手", "嫌い"):
        kind = "present"
    if kind == "wh":
        if predicate == "欲しい":
            pred = "欲しいです" + _polite_question_end(rng) if polite else "欲しいの？"
        elif predicate == "できる":
            pred = "できます" + _polite_question_end(rng) if polite else "できるの？"
        else:
            pred = predicate + ("です" + _polite_question_end(rng) if polite else "なの？")
        return subject_ja + "何が" + pred, subject_g + [predicate, "何"]
    if predicate == "できる":
        forms = {
            "present": ("できます", "できる"),
            "neg": ("できません", "できない"),
            "yn": ("できますか", "できる？"),
        }
        pred = forms[kind][0 if polite else 1]
        gloss_pred = {"present": ["できる"], "neg": ["無理"], "yn": ["できる", "?"]}[kind]
    else:
        cls = "i" if predicate == "欲しい" else "na"
        pred = _adjective_form(predicate, cls, kind, polite, rng)
        gloss_pred = [predicate] + {"neg": ["ない"], "yn": ["?"]}.get(kind, [])
        if kind == "present" and predicate == "好き" and rng.random() < 0.25:
            pred = rng.choice(["大好き", "とても好き"]) + ("です" if polite else "")
            gloss_pred = ["とても", "好き"]
    if question:
        pred = pred[:-1] + _polite_question_end(rng) if polite else pred
    else:
        pred += _statement_end(rng)
    particle = "は" if kind == "neg" and rng.random() < 0.5 else "が"
    return subject_ja + noun.surface(rng) + particle + pred, subject_g + list(noun.gloss) + gloss_pred


def _number_sentence(rng: random.Random, lex: _Lexicon, fixed: Mapping) -> tuple[str, list[str]]:
    """Prices, ages and the time of day."""
    frame = rng.choice(["price", "price", "age", "age", "clock"])
    polite = rng.random() < 0.6
    if frame == "price":
        word = _fingerspelled(rng, lex, fixed, "buy") or rng.choice(
            [w for w in lex.category("buy") if "thing" in w.cats or "food" in w.cats]
        )
        if rng.random() < 0.7:
            topic_ja, topic_g = rng.choice(["この", "その", "あの"]) + word.ja + "は", ["IX", *word.gloss]
        else:
            topic_ja, topic_g = rng.choice(["これ", "それ", "あれ"]) + "は", ["IX"]
        if rng.random() < 0.35:
            end = "いくらですか" + rng.choice(["", "？", "。"]) if polite else "いくら？"
            return topic_ja + end, topic_g + ["いくら"]
        price = rng.choice(
            [
                100 * rng.randint(1, 9),
                1000 * rng.randint(1, 9),
                1000 * rng.randint(1, 9) + 100 * rng.randint(1, 9),
            ]
        )
        text, glosses = _number(rng, price)
        past = rng.random() < 0.25
        end = ("でした" if past else "です") if polite else ("だった" if past else "")
        return topic_ja + text + "円" + end + _statement_end(rng), topic_g + glosses + ["円"]
    if frame == "age":
        word = _fingerspelled(rng, lex, fixed, "person") or rng.choice(
            [w for w in lex.people if w.gloss[0] not in ("私たち",)]
        )
        if word.gloss[0] in ("子供", "弟", "妹"):
            age = rng.randint(1, 15)
        elif word.gloss[0] in ("祖父", "祖母"):
            age = rng.randint(60, 99)
        else:
            age = rng.randint(18, 59)
        question = word.gloss[0] == "あなた" or rng.random() < 0.3
        if question:
            end = "何歳です" + _polite_question_end(rng) if polite else "何歳？"
            return word.surface(rng) + "は" + end, [*word.gloss, "何歳"]
        text, glosses = _number(rng, age)
        end = "歳" + ("です" if polite else "") + _statement_end(rng)
        return word.surface(rng) + "は" + text + end, [*word.gloss, *glosses, "歳"]
    if rng.random() < 0.3:
        return "今" + rng.choice(["", "、"]) + (
            "何時です" + _polite_question_end(rng) if polite else "何時？"
        ), ["今", "何時"]
    text, glosses = _number(rng, rng.randint(1, 12))
    half = rng.random() < 0.25
    return (
        "今"
        + rng.choice(["", "、", "は"])
        + text
        + "時"
        + ("半" if half else "")
        + ("です" if polite else "")
        + _statement_end(rng),
        ["今", *glosses, "時"] + (["半"] if half else []),
    )


def _two_clause_sentence(rng: random.Random, lex: _Lexicon, fixed: Mapping) -> tuple[str, list[str]] | None:
    """Two clauses joined by から (reason), けど (contrast), て (sequence) or たら (condition); only the first
    may carry a time word, so time stays first. Glosses: data/README.md, "Two-clause sentences"."""
    connective = rng.choice(list(_CLAUSE_KINDS))
    first_template = _verb_sentence if rng.random() < 0.75 else _adjective_sentence
    first = first_template(rng, lex, {**fixed, "clause": connective})
    second_template = rng.choices(
        [_verb_sentence, _adjective_sentence, _copula_sentence, _preference_sentence], weights=[6, 3, 1, 1]
    )[0]
    second = second_template(rng, lex, {**fixed, "no_time": True})
    if first is None or second is None:
        return None
    joiner = rng.choice(["", "、"] if connective != "kedo" else ["", "、", "、", " "])
    japanese = first[0] + joiner + second[0]
    before, after = _CLAUSE_GLOSSES[connective]
    glosses = before + first[1] + after + second[1]
    if len(japanese) > MAX_TWO_CLAUSE_CHARACTERS or len(glosses) > MAX_TWO_CLAUSE_GLOSSES:
        return None
    return japanese, glosses


_TEMPLATES = (
    (_verb_sentence, 60),
    (_two_clause_sentence, 24),
    (_adjective_sentence, 16),
    (_copula_sentence, 6),
    (_existence_sentence, 6),
    (_family_sentence, 3),
    (_preference_sentence, 6),
    (_number_sentence, 3),
)
# How each held-out pairing is produced for the test split: (template, fixed slots).
_HELD_OUT_RECIPES = {
    ("<母>", "<読む>"): (_verb_sentence, {"subject": "母", "verb": "読む"}),
    ("<先生>", "<泳ぐ>"): (_verb_sentence, {"subject": "先生", "verb": "泳ぐ"}),
    ("<友達>", "<買う>"): (_verb_sentence, {"subject": "友達", "verb": "買う"}),
    ("<田中>", "<働く>"): (_verb_sentence, {"subject": "田中", "verb": "働く"}),
    ("<明日>", "<書く>"): (_verb_sentence, {"time": "明日", "verb": "書く"}),
    ("<昨日>", "<会う>"): (_verb_sentence, {"time": "昨日", "verb": "会う"}),
    ("<毎日>", "<走る>"): (_verb_sentence, {"time": "毎日", "verb": "走る"}),
    ("<来週>", "<旅行>"): (_verb_sentence, {"time": "来週", "verb": "旅行"}),
    ("<飲む>", "<ない>"): (_verb_sentence, {"verb": "飲む", "kinds": ("neg", "neg_past", "why_neg")}),
    ("<待つ>", "<ない>"): (_verb_sentence, {"verb": "待つ", "kinds": ("neg", "neg_past", "why_neg")}),
    ("<起きる>", "<ない>"): (_verb_sentence, {"verb": "起きる", "kinds": ("neg", "neg_past", "why_neg")}),
    ("<洗う>", "<終わる>"): (_verb_sentence, {"verb": "洗う", "kinds": ("completion", "yn_done")}),
    ("<作る>", "<終わる>"): (_verb_sentence, {"verb": "作る", "kinds": ("completion", "yn_done")}),
    ("<高い>", "<ない>"): (_adjective_sentence, {"adjective": "高い", "kinds": ("neg", "neg_past")}),
    ("<静か>", "<ない>"): (_adjective_sentence, {"adjective": "静か", "kinds": ("neg", "neg_past")}),
    ("<帰る>", "<いつ>"): (_verb_sentence, {"verb": "帰る", "wh_slot": "time"}),
    ("<使う>", "<何>"): (_verb_sentence, {"verb": "使う", "wh_slot": "object"}),
    ("<テレビ>", "<見る>"): (_verb_sentence, {"verb": "見る", "object": "テレビ"}),
    ("<日本語>", "<教える>"): (_verb_sentence, {"verb": "教える", "object": "日本語"}),
}


# ---------------------------------------------------------------------------------------------------------
# Building the corpus
# ---------------------------------------------------------------------------------------------------------


def _bracket(glosses: list[str]) -> str:
    return " ".join(f"<{g}>" for g in glosses)


def _held_out_in(gloss: str) -> list[tuple[str, str]]:
    tokens = set(gloss.split())
    return [(a, b) for _, a, b in HELD_OUT_PAIRINGS if a in tokens and b in tokens]


def _load_hand_written(path: Path = HAND_WRITTEN_FILE) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        japanese, gloss = line.split("\t")
        if not gloss.strip():
            raise ValueError(f"{path.name} line {number} has no gloss")
        pairs.append((japanese.strip(), " ".join(gloss.split())))
    return pairs


class _PairSet:
    """Unique Japanese sentences, each with one gloss (a second, different gloss is a generator bug)."""

    def __init__(self) -> None:
        self.gloss_of: dict[str, str] = {}

    def add(self, japanese: str, gloss: str) -> bool:
        for token in gloss.split():
            if not (token.startswith("<") and token.endswith(">")) or token in PARTICLE_GLOSSES:
                raise ValueError(f"bad gloss token {token!r} for {japanese!r}")
        if unicodedata.normalize("NFKC", gloss) != gloss:
            raise ValueError(f"gloss {gloss!r} changes under NFKC; the tokenizer would see another string")
        known = self.gloss_of.get(japanese)
        if known is not None:
            if known != gloss:
                raise ValueError(f"{japanese!r} glossed two ways: {known!r} and {gloss!r}")
            return False
        self.gloss_of[japanese] = gloss
        return True


_FULL_WIDTH_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")
_HALF_WIDTH_PUNCTUATION = str.maketrans({"？": "?", "！": "!", "。": ".", "、": ","})


def _typed(rng: random.Random, japanese: str) -> str:
    """How people type: full-width digits, half-width punctuation, a space where a comma would go. The
    tokenizer's NFKC and whitespace rules make these the same input characters; the corpus shows them anyway."""
    if rng.random() < 0.3:
        japanese = japanese.translate(_FULL_WIDTH_DIGITS)
    if rng.random() < 0.12:
        japanese = japanese.translate(_HALF_WIDTH_PUNCTUATION)
    if "、" in japanese and rng.random() < 0.15:
        japanese = japanese.replace("、", rng.choice([" ", "　"]), 1)
    return japanese


def _draw(rng: random.Random, template, fixed: Mapping) -> tuple[str, str] | None:
    result = template(rng, _lexicon(), fixed)
    return None if result is None else (_typed(rng, result[0]), _bracket(result[1]))


@cache
def held_out_spellings() -> dict[str, tuple[str, ...]]:
    """Held-out fingerspelled words: their gloss run -> the spellings (katakana, hiragana) no train or
    validation sentence may contain."""
    return {
        " ".join(_bracket(list(w.gloss)).split()): (w.ja, *w.variants)
        for w in _lexicon().fingerspelled["held_out"]
    }


def _holds_held_out_word(japanese: str, gloss: str) -> bool:
    runs = fingerspelled_runs(gloss)
    return any(
        any(spelling in japanese for spelling in spellings) or any(seq in run for run in runs)
        for seq, spellings in held_out_spellings().items()
    )


def spelling_alphabet() -> tuple[str, str]:
    """Every kana `random_spelling` can draw, as one (japanese, gloss) pair: katakana and hiragana, and each
    one's fingerspelling gloss. A vocabulary built with it can encode every respelled pair."""
    katakana = sorted(set("".join(_MORAE)) | {"ッ", "ー", "ン"})
    return "".join(katakana) + to_hiragana("".join(katakana)), _bracket(fingerspell("".join(katakana)))


def random_spelling(rng: random.Random) -> str:
    """A random katakana practice word for respelling, holding no held-out word. Wider than the generator's
    `_random_word`: 2-5 morae, each followed at times by ー, ン or ッ, the last one too, as in マフラー or
    サーフィン; words that only ever ended in a plain mora taught the model to spell on past a final ー."""
    while True:
        count = rng.randint(2, 5)
        morae = []
        for index in range(count):
            morae.append(rng.choice(_MORAE))
            extra = rng.random()
            if extra < 0.15:
                morae.append("ー")
            elif extra < 0.27:
                morae.append("ン")
            elif extra < 0.35 and index + 1 < count:
                morae.append("ッ")
        word = "".join(morae)
        if not _holds_held_out_word(word, _bracket(fingerspell(word))):
            return word


def respell(japanese: str, gloss: str, rng: random.Random) -> tuple[str, str]:
    """The pair with each fingerspelled word replaced by a fresh `random_spelling`, in hiragana
    `RESPELLING_HIRAGANA_SHARE` of the time, else katakana; a spelled word the text does not hold as written is
    kept. Training on pairs respelled every epoch teaches the kana -> sign mapping rather than a list of words."""
    tokens = gloss.split()
    out: list[str] = []
    index = 0
    while index < len(tokens):
        if not is_fingerspelling(tokens[index]):
            out.append(tokens[index])
            index += 1
            continue
        end = index
        while end < len(tokens) and is_fingerspelling(tokens[end]):
            end += 1
        run = tokens[index:end]
        katakana = "".join(token[len(FINGERSPELLING_PREFIX) + 1 : -1] for token in run)
        written = next((form for form in (katakana, to_hiragana(katakana)) if form in japanese), None)
        if written is None:
            out += run
        else:
            word = random_spelling(rng)
            hiragana = rng.random() < RESPELLING_HIRAGANA_SHARE
            japanese = japanese.replace(written, to_hiragana(word) if hiragana else word, 1)
            out += _bracket(fingerspell(word)).split()
        index = end
    return japanese, " ".join(out)


def _choose_validation(rng: random.Random, pool: list[dict], size: int) -> tuple[list[dict], list[dict]]:
    """Move `size` random rows to validation, keeping every gloss they use in train at least once."""
    order = list(range(len(pool)))
    rng.shuffle(order)
    counts = Counter(token for row in pool for token in row["gloss"].split())
    chosen: set[int] = set()
    for index in order:
        if len(chosen) == size:
            break
        tokens = pool[index]["gloss"].split()
        if all(counts[token] > tokens.count(token) for token in set(tokens)):
            counts.subtract(tokens)
            chosen.add(index)
    validation = [pool[i] for i in order if i in chosen]
    train = [pool[i] for i in order if i not in chosen]
    return train, validation


def build_corpus(seed: int = 0) -> dict[str, list[dict]]:
    """Regenerate the corpus: {"train": [...], "validation": [...], "test": [...]}, rows with id/ja/gloss/source.

    Deterministic in `seed`. Test holds every row with a held-out pairing (`HELD_OUT_PAIRINGS`) or a held-out
    fingerspelled word, and only glosses and characters that train also has; train and validation never
    contain either. `natural` is `data/natural.tsv` as written, and no other split repeats one of its sentences.
    """
    rng = random.Random(seed)
    seen = _PairSet()
    test: list[dict] = []
    pool: list[dict] = []
    natural = []
    for japanese, gloss in _load_hand_written(NATURAL_FILE):
        if not seen.add(japanese, gloss):
            raise ValueError(f"{NATURAL_FILE.name}: {japanese!r} is written twice")
        natural.append({"ja": japanese, "gloss": gloss, "source": "natural"})

    for japanese, gloss in _load_hand_written():
        if any(row["ja"] == japanese for row in natural):
            raise ValueError(f"{japanese!r} is in both {HAND_WRITTEN_FILE.name} and {NATURAL_FILE.name}")
        if seen.add(japanese, gloss):
            held_out = _held_out_in(gloss) or _holds_held_out_word(japanese, gloss)
            (test if held_out else pool).append({"ja": japanese, "gloss": gloss, "source": "hand"})

    for _, first, second in HELD_OUT_PAIRINGS:
        template, fixed = _HELD_OUT_RECIPES[(first, second)]
        made = 0
        for _ in range(_MAX_ATTEMPTS):
            if made == TEST_PER_PAIRING:
                break
            drawn = _draw(rng, template, fixed)
            if drawn is None or (first, second) not in _held_out_in(drawn[1]):
                continue
            if seen.add(*drawn):
                test.append({"ja": drawn[0], "gloss": drawn[1], "source": "template"})
                made += 1
        if made < TEST_PER_PAIRING:
            raise RuntimeError(f"only {made} distinct test sentences for the pairing {first} {second}")

    templates, weights = zip(*_TEMPLATES, strict=True)
    made = 0
    for _ in range(_MAX_ATTEMPTS):  # every template, with held-out names and loanwords in its slots
        if made == TEST_FINGERSPELLED:
            break
        drawn = _draw(rng, templates[made % len(templates)], {"fingerspell": "held_out"})
        if drawn is None or _held_out_in(drawn[1]) or not _holds_held_out_word(*drawn):
            continue
        if seen.add(*drawn):
            test.append({"ja": drawn[0], "gloss": drawn[1], "source": "template"})
            made += 1

    generated = 0
    for _ in range(_MAX_ATTEMPTS):
        if generated == TEMPLATE_PAIRS:
            break
        drawn = _draw(rng, rng.choices(templates, weights=weights)[0], {})
        if drawn is None or _held_out_in(drawn[1]) or _holds_held_out_word(*drawn):
            continue
        if seen.add(*drawn):
            pool.append({"ja": drawn[0], "gloss": drawn[1], "source": "template"})
            generated += 1

    validation_size = round(VALIDATION_FRACTION * (len(pool) + len(test)))
    train, validation = _choose_validation(rng, pool, validation_size)
    train_glosses = {token for row in train for token in row["gloss"].split()}
    train_chars = {char for row in train for char in row["ja"]}
    test = [
        row for row in test if set(row["gloss"].split()) <= train_glosses and set(row["ja"]) <= train_chars
    ]
    rng.shuffle(test)
    splits = {"train": train, "validation": validation, "test": test, "natural": natural}
    return {
        name: [{"id": f"jsl-{name}-{i:05d}", **row} for i, row in enumerate(rows)]
        for name, rows in splits.items()
    }


def generated_training_pairs(builds: int) -> list[dict]:
    """The shipped train split, then the train splits of `builds - 1` more generator runs (seeds 1, 2, ...): each
    sentence once, none that the shipped validation, test or natural split holds. Every build keeps the held-out
    pairings and fingerspelled words out of train, so the extra pairs show the model no test pairing or word."""
    shipped = {name: _read_jsonl(CORPUS_DIR / f"{name}.jsonl") for name in SPLITS}
    taken = {row["ja"] for name in ("validation", "test", "natural") for row in shipped[name]}
    rows = []
    for seed in range(builds):
        for row in shipped["train"] if seed == 0 else build_corpus(seed)["train"]:
            if row["ja"] not in taken:
                taken.add(row["ja"])
                rows.append(row if seed == 0 else {**row, "id": row["id"].replace("train", f"train{seed}")})
    return rows


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_corpus(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write `build_corpus(seed)` as `{train,validation,test}.jsonl` in `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in build_corpus(seed).items():
        paths[name] = out_dir / f"{name}.jsonl"
        paths[name].write_text(_jsonl(rows), encoding="utf-8", newline="\n")
    return paths


def corpus_summary(splits: Mapping[str, list[dict]]) -> dict[str, int]:
    """Pairs per split, total pairs and distinct glosses overall (the figures quoted in data/README.md)."""
    summary = {name: len(rows) for name, rows in splits.items()}
    summary["total"] = sum(summary.values())
    summary["distinct_glosses"] = len(gloss_vocabulary(row for rows in splits.values() for row in rows))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate (or check) the shipped JSL gloss corpus.")
    parser.add_argument("--out", type=Path, default=CORPUS_DIR, help="output folder (default: the package's)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (the shipped corpus uses 0)")
    parser.add_argument("--check", action="store_true", help="verify the files in --out instead of writing")
    args = parser.parse_args(argv)
    splits = build_corpus(args.seed)
    if args.check:
        stale = [
            name
            for name, rows in splits.items()
            if not (args.out / f"{name}.jsonl").is_file()
            or (args.out / f"{name}.jsonl").read_text(encoding="utf-8") != _jsonl(rows)
        ]
        if stale:
            print(f"stale corpus files in {args.out}: {', '.join(stale)}; rerun without --check")
            return 1
    else:
        write_corpus(args.out, args.seed)
    print(json.dumps(corpus_summary(splits), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
