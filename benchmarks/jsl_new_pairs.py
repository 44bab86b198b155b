"""Writes the "user's own pairs" of the continued-training target (issue 18): 20 words whose glosses the shipped
corpus lacks and that none of its sentences writes, each in 16 sentence patterns the corpus teaches (glossed by
its conventions: data/README.md). For each word a seeded shuffle gives 10 patterns to train.csv (200 pairs), 2 to
validation.csv (40) and 4 to test.csv (80, held out: the scores of the target). Every pattern trains with other words, so the held-out pairs
test the new glosses in known sentence shapes, not unseen grammar.

    python benchmarks/jsl_new_pairs.py --output_dir benchmarks/results/jsl_new_pairs
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from hftune.jsl.corpus import gloss_vocabulary, load_jsl_corpus, to_hiragana, to_katakana

NEW_WORDS = (
    "パンダ", "コアラ", "ゾウ", "ライオン", "ペンギン", "イルカ", "トマト", "メロン", "ぶどう", "バイオリン",
    "ランプ", "カーテン", "えんぴつ", "ぼうし", "くつした", "ハンカチ", "ほうき", "はさみ", "ふうせん", "ソファ",
)  # fmt: skip
PATTERNS = (
    ("{w}を買いました", "<{w}> <買う>"),
    ("{w}が嫌いです", "<{w}> <嫌い>"),
    ("{w}はどこですか", "<{w}> <どこ>"),
    ("家に{w}がありません", "<家> <{w}> <ある> <ない>"),
    ("私は{w}を買いたいです", "<私> <{w}> <買う> <好き>"),
    ("昨日{w}を見ました", "<昨日> <{w}> <見る>"),
    ("{w}をください", "<{w}> <お願い>"),
    ("せんせいは{w}が好きです", "<先生> <{w}> <好き>"),
    ("母は{w}を買いました", "<母> <{w}> <買う>"),
    ("明日{w}を買います", "<明日> <{w}> <買う>"),
    ("{w}を見ませんでした", "<{w}> <見る> <ない>"),
    ("{w}はいくらですか", "<{w}> <いくら>"),
    ("妹は{w}が好きですか？", "<妹> <{w}> <好き> <?>"),
    ("部屋に{w}がありますか", "<部屋> <{w}> <ある> <?>"),
    ("友達と一緒に{w}を見ました", "<友達> <一緒> <{w}> <見る>"),
    ("鈴木さんは{w}を買いますか。", "<鈴木> <{w}> <買う> <?>"),
)
SPLITS = {"train": 10, "validation": 2, "test": 4}  # patterns per word


def new_pairs(seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    corpus = [row for split in load_jsl_corpus().values() for row in split]
    known = set(gloss_vocabulary(corpus))
    clash = [word for word in NEW_WORDS if f"<{word}>" in known]
    if clash:
        raise SystemExit(f"the corpus already has the glosses {clash}: pick other new words")
    # A word the corpus writes (its test split fingerspells names and loanwords) would turn a correct corpus
    # answer into a "forgotten" one once the model learns its new sign.
    written = [
        w
        for w in NEW_WORDS
        if any(f in row["ja"] for row in corpus for f in (to_katakana(w), to_hiragana(w)))
    ]
    if written:
        raise SystemExit(f"corpus sentences hold {written}: pick words the corpus never writes")
    rng = random.Random(seed)
    splits: dict[str, list[tuple[str, str]]] = {name: [] for name in SPLITS}
    for word in NEW_WORDS:
        patterns = list(PATTERNS)
        rng.shuffle(patterns)
        start = 0
        for name, count in SPLITS.items():
            splits[name] += [
                (ja.format(w=word), gloss.format(w=word)) for ja, gloss in patterns[start : start + count]
            ]
            start += count
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="benchmarks/results/jsl_new_pairs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in new_pairs(args.seed).items():
        with open(out / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ja", "gloss"])
            writer.writerows(rows)
        print(f"{out / name}.csv: {len(rows)} pairs")


if __name__ == "__main__":
    main()
