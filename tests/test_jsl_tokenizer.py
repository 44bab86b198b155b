"""JslTokenizer: characters in, glosses out, one joint vocabulary saved as vocab.json."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from hftune.jsl import JslTokenizer
from hftune.jsl.tokenization_jsl import SPECIAL_TOKENS

PAIRS = [
    ("ありがとう", "<ありがとう>"),
    ("わたしはたべます", "<私> <食べる>"),
    ("きのう図書館に行きました", "<昨日> <図書館> <行く> <終わる>"),
    ("あした学校に行きません", "<明日> <学校> <行く> <ない>"),
    ("佐藤さんはいつ図書館で雑誌を読みますか", "<佐藤> <図書館> <雑誌> <読む> <いつ>"),
]
DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "hftune" / "jsl" / "data"


@pytest.fixture(scope="module")
def tokenizer() -> JslTokenizer:
    return JslTokenizer.build_from_pairs(PAIRS)


def test_vocab_has_fixed_special_ids_and_both_sides(tokenizer):
    vocab = tokenizer.get_vocab()
    assert [vocab[token] for token in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    ) == (0, 1, 2, 3)
    assert "図" in vocab and "<図書館>" in vocab and "<私>" in vocab
    assert len(tokenizer) == tokenizer.vocab_size == len(vocab)
    assert sorted(vocab.values()) == list(range(len(vocab)))


def test_build_is_deterministic_and_min_freq_filters():
    shuffled = list(PAIRS)
    random.Random(1).shuffle(shuffled)
    a, b = JslTokenizer.build_from_pairs(PAIRS), JslTokenizer.build_from_pairs(shuffled)
    assert a.get_vocab() == b.get_vocab()
    assert a.vocab_hash() == b.vocab_hash()
    frequent = JslTokenizer.build_from_pairs(PAIRS, min_freq=2)
    assert "<行く>" in frequent.get_vocab() and "<図書館>" in frequent.get_vocab()
    assert "<私>" not in frequent.get_vocab() and "佐" not in frequent.get_vocab()
    assert frequent.vocab_hash() != a.vocab_hash()
    assert frequent("佐藤")["input_ids"] == [frequent.unk_token_id] * 2 + [frequent.eos_token_id]


def test_source_is_characters_nfkc_without_whitespace(tokenizer):
    assert tokenizer.tokenize("わたし は\tたべます ") == list("わたしはたべます")
    # NFKC folds half-width katakana and full-width ASCII before lookup.
    half_width = JslTokenizer.build_from_pairs([("カタカナAB", "<x>")])
    assert half_width.tokenize("ｶﾀｶﾅＡＢ") == list("カタカナAB")
    assert half_width.unk_token_id not in half_width("ｶﾀｶﾅＡＢ")["input_ids"]


def test_unknown_characters_become_unk_and_never_raise(tokenizer):
    ids = tokenizer("ありがとう😀\x00龘")["input_ids"]
    assert ids[-4:] == [tokenizer.unk_token_id] * 3 + [tokenizer.eos_token_id]
    # Text that looks like a special token is user text, not a control token.
    assert tokenizer("<s>")["input_ids"] == [
        tokenizer.unk_token_id,
        tokenizer.unk_token_id,
        tokenizer.unk_token_id,
        2,
    ]
    labels = tokenizer(text_target="<私> <宇宙>")["input_ids"]
    assert labels == [tokenizer.convert_tokens_to_ids("<私>"), tokenizer.unk_token_id, tokenizer.eos_token_id]


def test_empty_input_is_just_eos(tokenizer):
    assert tokenizer("")["input_ids"] == [tokenizer.eos_token_id]
    assert tokenizer("  　")["input_ids"] == [tokenizer.eos_token_id]
    assert tokenizer(text_target="")["input_ids"] == [tokenizer.eos_token_id]
    assert tokenizer.decode([tokenizer.eos_token_id], skip_special_tokens=True) == ""


def test_text_target_gives_labels_and_returns_to_input_mode(tokenizer):
    enc = tokenizer(
        ["ありがとう", "わたしはたべます"], text_target=["<ありがとう>", "<私> <食べる>"], padding=True
    )
    assert enc["labels"][1] == [
        *tokenizer.convert_tokens_to_ids(["<私>", "<食べる>"]),
        tokenizer.eos_token_id,
    ]
    assert enc["labels"][0][-1] == tokenizer.pad_token_id
    assert enc["input_ids"][0] == [
        *tokenizer.convert_tokens_to_ids(list("ありがとう")),
        tokenizer.eos_token_id,
        0,
        0,
        0,
    ]
    assert enc["attention_mask"][0] == [1] * 6 + [0] * 3
    assert "token_type_ids" not in enc
    # After a text_target call the tokenizer is back on the source side.
    assert tokenizer.tokenize("<私>") == ["<", "私", ">"]


def test_decode_round_trips_gloss_strings(tokenizer):
    for _, gloss in PAIRS:
        ids = tokenizer(text_target=gloss)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == gloss
    batch = tokenizer(text_target=[gloss for _, gloss in PAIRS], padding=True)["input_ids"]
    assert tokenizer.batch_decode(batch, skip_special_tokens=True) == [gloss for _, gloss in PAIRS]
    assert (
        tokenizer.decode(tokenizer(text_target="<私>　<食べる>")["input_ids"], skip_special_tokens=True)
        == "<私> <食べる>"
    )


def test_truncation_respects_max_length(tokenizer):
    enc = tokenizer("佐藤さんはいつ図書館で雑誌を読みますか", truncation=True, max_length=5)
    assert len(enc["input_ids"]) == 5 and enc["input_ids"][-1] == tokenizer.eos_token_id


def test_save_and_reload_keeps_vocab_and_hash(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert saved == tokenizer.get_vocab()
    reloaded = JslTokenizer.from_pretrained(tmp_path)
    assert reloaded.vocab_hash() == tokenizer.vocab_hash()
    text = "きのう図書館に行きました"
    assert reloaded(text, text_target="<昨日> <行く>") == tokenizer(text, text_target="<昨日> <行く>")
    assert isinstance(AutoTokenizer.from_pretrained(tmp_path), JslTokenizer)


def test_corpus_glosses_round_trip_without_unk():
    files = sorted(DATA_DIR.glob("*.jsonl"))
    if not files:
        pytest.skip(f"corpus not written yet at {DATA_DIR}")
    rows = [
        json.loads(line)
        for path in files
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    pairs = [(row["ja"], row["gloss"]) for row in rows]
    tokenizer = JslTokenizer.build_from_pairs(pairs)
    glosses = {token for _, gloss in pairs for token in gloss.split()}
    assert len(glosses) >= 200
    for ja, gloss in pairs[:300]:
        enc = tokenizer(ja, text_target=gloss)
        assert tokenizer.unk_token_id not in enc["input_ids"] + enc["labels"]
        assert tokenizer.decode(enc["labels"], skip_special_tokens=True) == " ".join(gloss.split())
