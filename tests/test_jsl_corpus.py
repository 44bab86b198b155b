"""The shipped Japanese -> JSL gloss corpus: size, determinism, compositional test split, gloss order rules,
and loading users' own pair files."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from hftune.errors import HftuneError
from hftune.jsl import corpus
from hftune.jsl.corpus import (
    _TEMPLATES,
    CORPUS_DIR,
    HELD_OUT_PAIRINGS,
    PARTICLE_GLOSSES,
    _draw,
    _lexicon,
    build_corpus,
    conjugate,
    fingerspell,
    fingerspelled_runs,
    generated_training_pairs,
    gloss_classes,
    gloss_vocabulary,
    held_out_spellings,
    kanji_number,
    load_gloss_pairs,
    load_jsl_corpus,
    potential_form,
    random_spelling,
    respell,
    spelling_alphabet,
    to_hiragana,
    write_corpus,
)
from hftune.jsl.tokenization_jsl import source_tokens


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    return build_corpus(seed=0)


@pytest.fixture(scope="module")
def all_rows(built) -> list[dict]:
    return [row for rows in built.values() for row in rows]


def test_shipped_corpus_size_and_columns():
    data = load_jsl_corpus()
    assert list(data) == ["train", "validation", "test", "natural"]
    sizes = {name: len(split) for name, split in data.items() if name != "natural"}
    total = sum(sizes.values())
    assert total >= 4000
    assert 0.75 <= sizes["train"] / total <= 0.85
    assert 0.07 <= sizes["validation"] / total <= 0.13
    assert 0.07 <= sizes["test"] / total <= 0.13
    assert len(gloss_vocabulary(row for split in data.values() for row in split)) >= 200
    assert set(data["train"].column_names) == {"id", "ja", "gloss", "source"}
    assert set(data["train"]["source"]) == {"hand", "template"}
    assert set(data["natural"]["source"]) == {"natural"} and len(data["natural"]) >= 150
    assert len(load_jsl_corpus("test")) == sizes["test"]


def test_readme_quotes_the_real_counts(all_rows, built):
    readme = (CORPUS_DIR / "README.md").read_text(encoding="utf-8")
    for name, rows in built.items():
        assert f"| {name} | {len(rows)} | {len(gloss_vocabulary(rows))} |" in readme
    assert f"| **total** | **{len(all_rows)}** | **{len(gloss_vocabulary(all_rows))}** |" in readme
    assert "Apache License 2.0" in readme
    assert "synthetic" in readme and "no Deaf signer has validated it" in readme


def test_regeneration_is_deterministic_and_equals_shipped_files(built, tmp_path):
    assert build_corpus(seed=0) == built
    assert build_corpus(seed=1) != built
    paths = write_corpus(tmp_path, seed=0)
    for name, path in paths.items():
        assert path.read_bytes() == (CORPUS_DIR / f"{name}.jsonl").read_bytes(), f"{name}.jsonl is stale"


def test_test_split_is_compositional(built):
    train, validation, test = built["train"], built["validation"], built["test"]
    seen_tokens = [set(row["gloss"].split()) for row in train + validation]
    for kind, first, second in HELD_OUT_PAIRINGS:
        assert not any(first in tokens and second in tokens for tokens in seen_tokens), (kind, first, second)
        in_test = [row for row in test if {first, second} <= set(row["gloss"].split())]
        assert len(in_test) >= 10, (kind, first, second)
        # Both words are known from train, just never together.
        assert any(first in tokens for tokens in seen_tokens) and any(
            second in tokens for tokens in seen_tokens
        )
    held_out = {(a, b) for _, a, b in HELD_OUT_PAIRINGS}
    spelled = held_out_spellings()
    for row in test:
        tokens = set(row["gloss"].split())
        runs = fingerspelled_runs(row["gloss"])
        assert any(a in tokens and b in tokens for a, b in held_out) or any(
            seq in run for run in runs for seq in spelled
        ), row
    train_vocab = set(gloss_vocabulary(train))
    assert set(gloss_vocabulary(test)) <= train_vocab
    assert set(gloss_vocabulary(validation)) <= train_vocab
    train_chars = {char for row in train for char in row["ja"]}
    assert all(set(row["ja"]) <= train_chars for row in test)


def test_no_duplicate_japanese_and_one_gloss_per_sentence(all_rows):
    sentences = [row["ja"] for row in all_rows]
    assert len(sentences) == len(set(sentences))
    assert len({row["id"] for row in all_rows}) == len(all_rows)


def test_gloss_order_rules(all_rows):
    assert_gloss_rules(all_rows)


def assert_gloss_rules(rows):
    """The README's order rules. A two-clause sentence may open with <もし> (condition) before its time word."""
    classes = gloss_classes()
    gloss_token = re.compile(r"^<[^<>\s]+>$")
    for row in rows:
        tokens = row["gloss"].split()
        assert tokens and all(gloss_token.match(token) for token in tokens), row
        assert not set(tokens) & PARTICLE_GLOSSES, row
        questions = [i for i, token in enumerate(tokens) if token in classes["question"]]
        assert questions in ([], [len(tokens) - 1]), f"question word not last: {row}"
        if "<?>" in tokens:
            assert tokens.index("<?>") == len(tokens) - 1 and not questions, row
        for i, token in enumerate(tokens):
            if token in ("<ない>", "<まだ>"):
                assert i > 0 and tokens[i - 1] in classes["predicate"], (
                    f"negation not after a predicate: {row}"
                )
        times = [i for i, token in enumerate(tokens) if token in classes["time"]]
        if times:
            before = tokens[: times[-1]]
            assert all(t in classes["time"] or t in classes["number"] or t == "<もし>" for t in before), (
                f"time not first: {row}"
            )


def test_known_examples_follow_the_conventions(all_rows):
    gloss_of = {row["ja"]: row["gloss"] for row in all_rows}
    assert gloss_of["佐藤さんはいつ図書館で雑誌を読みますか"] == "<佐藤> <図書館> <雑誌> <読む> <いつ>"
    assert gloss_of["わたしはたべます"] == "<私> <食べる>"
    assert gloss_of["ありがとう"] == "<ありがとう>"
    # Inflection and spelling variants collapse onto dictionary-form glosses.
    assert any("たべ" in ja and "<食べる>" in gloss for ja, gloss in gloss_of.items() if "食べ" not in ja)
    assert any(ja.startswith("お母さん") and gloss.startswith("<母>") for ja, gloss in gloss_of.items())
    negated = [
        g for ja, g in gloss_of.items() if ja.endswith(("ませんでした。", "ませんでした")) and "<ない>" in g
    ]
    assert len(negated) > 20
    done = [g for ja, g in gloss_of.items() if "もう" in ja and g.endswith("<終わる>")]
    assert done, "no completion examples"


def test_conjugation_of_verb_classes():
    assert conjugate("行く", "iku", "te") == "行って"
    assert conjugate("行く", "iku", "nai") == "行かない"
    assert conjugate("来る", "kuru", "nai") == "来ない"
    assert conjugate("くる", "kuru", "nai") == "こない"
    assert conjugate("くる", "kuru", "masu") == "きます"
    assert conjugate("帰る", "godan", "masu") == "帰ります"
    assert conjugate("見る", "ichidan", "nakatta") == "見なかった"
    assert conjugate("泳ぐ", "godan", "ta") == "泳いだ"
    assert conjugate("読む", "godan", "te") == "読んで"
    assert conjugate("買う", "godan", "nai") == "買わない"
    assert conjugate("話す", "godan", "masendeshita") == "話しませんでした"
    assert conjugate("勉強する", "suru", "tai") == "勉強したい"
    assert kanji_number(25) == "二十五"
    assert kanji_number(3500) == "三千五百"
    assert kanji_number(110) == "百十"


def test_load_user_jsonl_csv_and_tsv(tmp_path):
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(
        json.dumps({"ja": "ありがとう", "gloss": "<ありがとう>"}, ensure_ascii=False)
        + "\n\n"
        + json.dumps({"ja": "わたしはたべます", "gloss": "<私>   <食べる>", "note": "x"}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    data = load_gloss_pairs(jsonl)
    assert data.column_names == ["ja", "gloss"]
    assert data["gloss"] == ["<ありがとう>", "<私> <食べる>"]

    csv_file = tmp_path / "pairs.csv"  # Excel on Windows writes a byte-order mark
    csv_file.write_text(
        'text,target\nこんにちは,<こんにちは>\n"行きません","<行く> <ない>"\n', encoding="utf-8-sig"
    )
    data = load_gloss_pairs(csv_file, ja_column="text", gloss_column="target")
    assert data["ja"] == ["こんにちは", "行きません"] and data["gloss"][1] == "<行く> <ない>"

    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("ja\tgloss\n眠いです\t<眠い>\n", encoding="utf-8")
    assert load_gloss_pairs(tsv)["gloss"] == ["<眠い>"]


def test_load_user_file_errors(tmp_path):
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("japanese,gloss\nありがとう,<ありがとう>\n", encoding="utf-8")
    with pytest.raises(HftuneError, match=r"pairs\.csv has no column 'ja' \(columns: 'japanese', 'gloss'\)"):
        load_gloss_pairs(csv_file)

    blank = tmp_path / "blank.jsonl"
    blank.write_text(
        '{"ja": "ありがとう", "gloss": "<ありがとう>"}\n{"ja": "はい", "gloss": "  "}\n', encoding="utf-8"
    )
    with pytest.raises(HftuneError, match=r"blank\.jsonl line 2: column 'gloss' is empty"):
        load_gloss_pairs(blank)

    empty = tmp_path / "empty.csv"
    empty.write_text("ja,gloss\n", encoding="utf-8")
    with pytest.raises(HftuneError, match=r"empty\.csv has no rows"):
        load_gloss_pairs(empty)

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"ja": "はい"\n', encoding="utf-8")
    with pytest.raises(HftuneError, match=r"broken\.jsonl line 1 is not valid JSON"):
        load_gloss_pairs(broken)

    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("ja,gloss\ncafé,<x>\n".encode("latin-1"))
    with pytest.raises(HftuneError, match=r"cannot read gloss pair file .*latin1\.csv"):
        load_gloss_pairs(latin1)

    with pytest.raises(HftuneError, match=r"missing\.jsonl does not exist"):
        load_gloss_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(HftuneError, match=r"suffix '\.txt'"):
        (tmp_path / "pairs.txt").write_text("x", encoding="utf-8")
        load_gloss_pairs(tmp_path / "pairs.txt")
    with pytest.raises(HftuneError, match="unknown JSL corpus split 'dev'"):
        load_jsl_corpus("dev")


def test_main_check_reports_fresh_files(capsys):
    assert corpus.main(["--check"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total"] >= 1500 and summary["distinct_glosses"] >= 200


# --- fingerspelling, natural phrasing, two clauses, the natural split ---------------------------------------


def test_fingerspelling_notation():
    assert fingerspell("ケンジ") == ["指:ケ", "指:ン", "指:ジ"]
    assert fingerspell("けんじ") == fingerspell("ケンジ")  # the script does not change the signs
    assert fingerspell("ピョートル") == [
        "指:ピ",
        "指:ョ",
        "指:ー",
        "指:ト",
        "指:ル",
    ]  # small kana, long vowel
    assert fingerspell("ニック")[1] == "指:ッ"
    with pytest.raises(ValueError, match="not kana"):
        fingerspell("佐藤")
    assert fingerspelled_runs("<明日> <指:ケ> <指:ン> <来る> <指:ピ> <指:ザ>") == [
        "<指:ケ> <指:ン>",
        "<指:ピ> <指:ザ>",
    ]


def test_respelling_draws_new_words_in_either_script_and_never_a_held_out_one():
    import random

    rng = random.Random(0)
    pairs = [
        ("ケンジさんは明日来ます", "<明日> <指:ケ> <指:ン> <指:ジ> <来る>"),
        ("けんじくんは学生だ", "<指:ケ> <指:ン> <指:ジ> <学生>"),
    ]
    held = held_out_spellings()
    seen = set()
    scripts = Counter()
    for _ in range(300):
        for japanese, gloss in pairs:
            new_ja, new_gloss = respell(japanese, gloss, rng)
            (run,) = fingerspelled_runs(new_gloss)
            word = "".join(token[3:-1] for token in run.split())
            written = word if new_ja.startswith(word) else to_hiragana(word)
            scripts[(japanese[0], written == word)] += 1
            assert new_ja == japanese.replace(japanese[:3], written, 1), (new_ja, new_gloss)
            assert new_gloss.replace(run, "X") == gloss.replace("<指:ケ> <指:ン> <指:ジ>", "X")
            assert not any(seq in run for seq in held), run
            seen.add(word)
    assert len(seen) > 400  # fresh words, not a short list
    # Whatever script the text used, about half the new words are hiragana (no script change marks their end).
    for first in "ケけ":
        assert 0.4 < scripts[(first, False)] / 300 < 0.6, scripts
    assert respell("私は食べる", "<私> <食べる>", rng) == ("私は食べる", "<私> <食べる>")
    # A spelled word the text does not hold as written is kept.
    assert respell("佐藤さん", "<指:サ> <指:ト> <指:ウ>", rng) == ("佐藤さん", "<指:サ> <指:ト> <指:ウ>")


def test_respelling_words_are_as_long_as_real_loanwords_and_may_end_in_a_long_vowel():
    import random

    rng = random.Random(1)
    words = [random_spelling(rng) for _ in range(2000)]
    glosses = [fingerspell(word) for word in words]
    # Held-out words such as マフラー, サーフィン and フェルナンド (6 glosses) are in range; the corpus's own
    # practice words never ended in ー, and the model spelled on past the ー of マフラー into the next kana.
    assert min(map(len, glosses)) == 2 and max(map(len, glosses)) >= 9
    assert sum(len(g) >= 6 for g in glosses) > 0.2 * len(words)
    for ending in "ーンク":
        assert any(word.endswith(ending) for word in words), ending
    assert all(not word.endswith("ッ") and not word.startswith(("ー", "ン", "ッ")) for word in words)
    assert set("".join(words)) <= set(spelling_alphabet()[0])


def test_held_out_fingerspelled_words_only_in_test(built):
    spellings = held_out_spellings()
    train_like = built["train"] + built["validation"]
    for sequence, written in spellings.items():
        assert not any(any(w in row["ja"] for w in written) for row in train_like), sequence
        assert not any(sequence in run for row in train_like for run in fingerspelled_runs(row["gloss"]))
    in_test = [
        row
        for row in built["test"]
        if any(seq in run for run in fingerspelled_runs(row["gloss"]) for seq in spellings)
    ]
    assert len(in_test) >= 140
    # Every held-out word is tested, in katakana and in hiragana, and the model has seen each of its kana signs.
    assert all(any(seq in row["gloss"] for row in in_test) for seq in spellings)
    assert any(any(w[1] in row["ja"] for w in spellings.values()) for row in in_test)
    train_glosses = set(gloss_vocabulary(built["train"]))
    assert all(set(row["gloss"].split()) <= train_glosses for row in in_test)


def test_generated_training_pairs_add_sentences_no_other_split_holds():
    shipped = load_jsl_corpus()
    rows = generated_training_pairs(2)
    # The shipped train split first, as it is, then a second build's train sentences that are new.
    assert [row["ja"] for row in rows[: shipped["train"].num_rows]] == shipped["train"]["ja"]
    assert len(rows) > 1.8 * shipped["train"].num_rows
    sentences = [row["ja"] for row in rows]
    assert len(set(sentences)) == len(sentences)
    others = {ja for split in ("validation", "test", "natural") for ja in shipped[split]["ja"]}
    assert not others & set(sentences)
    # What makes test a test stays out: its held-out pairings and fingerspelled words.
    held = held_out_spellings()
    for row in rows:
        assert not corpus._held_out_in(row["gloss"]), row
        runs = fingerspelled_runs(row["gloss"])
        for sequence, written in held.items():
            assert not any(w in row["ja"] for w in written) and not any(sequence in run for run in runs), row
    assert rows[-1]["id"].startswith("jsl-train1-")
    assert generated_training_pairs(1) == rows[: shipped["train"].num_rows]


def test_every_template_fingerspells_names_or_loanwords():
    import random

    rng = random.Random(0)
    for template, _ in _TEMPLATES:
        drawn = [_draw(rng, template, {}) for _ in range(400)]
        spelled = [d for d in drawn if d and fingerspelled_runs(d[1])]
        assert spelled, f"{template.__name__} never fingerspells"
    train = load_jsl_corpus("train")
    spelled = [row for row in train if fingerspelled_runs(row["gloss"])]
    assert len(spelled) >= 200
    assert any(
        "ぁ" <= row["ja"][0] <= "ゟ" and fingerspelled_runs(row["gloss"])[0].startswith("<指:")
        for row in spelled
    )


def test_natural_phrasing_is_covered(built):
    rows = built["train"]

    def count(predicate) -> int:
        return sum(1 for row in rows if predicate(row["ja"], row["gloss"].split()))

    covered = {
        "ちゃった -> completion": count(
            lambda ja, g: ("ちゃった" in ja or "じゃった" in ja) and "<終わる>" in g
        ),
        "〜てる": count(lambda ja, g: re.search(r"[てで]る", ja) is not None),
        "なきゃ -> 必要": count(lambda ja, g: "なきゃ" in ja and "<必要>" in g),
        "じゃない -> 違う": count(lambda ja, g: "じゃない" in ja and "<違う>" in g),
        "potential (not ことができる)": count(
            lambda ja, g: (
                bool({"<できる>", "<無理>"} & set(g))
                and "こと" not in ja
                and re.search("[せめけげれ]ない|[せめけげれ]る|[せめけげれ]ます", ja) is not None
            )
        ),
        "って topic": count(lambda ja, g: "って" in ja),
        "final ね/よ/な": count(lambda ja, g: ja.rstrip("。！!.").endswith(("ね", "よ", "な"))),
        "plain question の/か": count(lambda ja, g: ja.endswith(("の？", "か？", "か?"))),
        "full-width digits": count(lambda ja, g: re.search("[０-９]", ja) is not None),
        "half-width punctuation": count(lambda ja, g: any(c in ja for c in "?!.,")),
        "spaces": count(lambda ja, g: " " in ja or "\u3000" in ja),
        "kana-only words": count(lambda ja, g: "がっこう" in ja or "としょかん" in ja or "べんきょう" in ja),
        "ください / ませんか request": count(
            lambda ja, g: ("くれませんか" in ja or "ください" in ja) and "<お願い>" in g
        ),
        "ませんか invitation": count(
            lambda ja, g: ja.rstrip("？?。").endswith("ませんか") and g[-1] == "<?>"
        ),
        "から": count(lambda ja, g: "<だから>" in g),
        "けど": count(lambda ja, g: "<しかし>" in g),
        "たら": count(lambda ja, g: g[0] == "<もし>" and "ら" in ja),
    }
    assert {name: n for name, n in covered.items() if n < 10} == {}
    assert potential_form("話す", "godan") == "話せる" and potential_form("食べる", "ichidan") == "食べられる"
    assert (
        potential_form("勉強する", "suru") == "勉強できる"
        and potential_form("来る", "kuru", casual=True) == "来れる"
    )


def test_every_lexicon_word_has_a_kana_spelling():
    lex = _lexicon()
    kanji = re.compile(r"[\u4e00-\u9fff]")
    words = lex.people + lex.roles + lex.places + lex.nouns + lex.times
    missing = [
        w.ja
        for w in words
        if kanji.search(w.ja) and not (w.reading or any(not kanji.search(v) for v in w.variants))
    ]
    missing += [w.ja for w in lex.verbs + lex.adjectives if kanji.search(w.ja) and not w.extra.get("alt")]
    assert not missing


def test_two_clause_sentences_have_their_documented_order(built):
    two = [row for row in built["train"] if {"<だから>", "<しかし>", "<もし>"} & set(row["gloss"].split())]
    assert len(two) >= 300
    for row in two:
        tokens = row["gloss"].split()
        assert len(row["ja"]) <= 50, row
        if "<もし>" in tokens:
            assert tokens[0] == "<もし>", row
        for connective in ("<だから>", "<しかし>"):
            if connective in tokens:
                assert 0 < tokens.index(connective) < len(tokens) - 1, row


def test_natural_split_follows_the_readme_rules(built):
    """The checker for the hand-written natural split: every gloss is in the vocabulary (README: the glosses
    train teaches), the README's order rules hold, and no sentence is in another split."""
    natural, train = built["natural"], built["train"]
    assert natural == [dict(row) for row in load_jsl_corpus("natural")]
    assert len(natural) >= 150 and {row["source"] for row in natural} == {"natural"}
    vocabulary = set(gloss_vocabulary(train))
    for row in natural:
        assert set(row["gloss"].split()) <= vocabulary, row
        assert set(source_tokens(row["ja"])) <= {c for r in train for c in source_tokens(r["ja"])}, row
    assert_gloss_rules(natural)
    others = {row["ja"] for name in ("train", "validation", "test") for row in built[name]}
    assert not others & {row["ja"] for row in natural}
    readme = (CORPUS_DIR / "README.md").read_text(encoding="utf-8")
    assert "## The natural split" in readme
