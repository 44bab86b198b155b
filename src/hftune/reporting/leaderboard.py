"""`hftune leaderboard`: compare runs side by side, from local run folders or published repos.

One row per (run, evaluated dataset and split): a run's own validation result, then one row per
`hftune evaluate` result. A local run is read from its `results.json`; a Hub repo from its card's
model-index (the card is all that is downloaded), with `results.json` added when the repo has one.
Classifiers, JSL seq2seq models and instruction-tuned models sit in one table: each fills the quality
columns its task has (accuracy / f1_macro, or gloss_wer / bleu / chrf / exact_match).

`--run` first trains every method of `hftune.methods` that has a recipe on the same data, model, epochs and seed, each in its
own `accelerate launch` process writing ROOT/<method>, then renders those runs.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftune.config import load_yaml_config
from hftune.config.checks import check_range, check_training_length, check_writable_folder
from hftune.errors import HftuneError
from hftune.methods import METHODS, Method
from hftune.models import embedded_encoder_path
from hftune.reporting.cards import read_model_index
from hftune.results import RESULTS_FILE, RunRecord, read_results
from hftune.runtime import check_repo_id, resource_dir

QUALITY_METRICS: tuple[str, ...] = ("accuracy", "f1_macro", "gloss_wer", "bleu", "chrf", "exact_match")
DEFAULT_PLOT_METRICS: tuple[str, ...] = ("accuracy", "exact_match")
# hftune cards tag themselves with these (results.json conventions): how a card names its task and method.
TASKS: tuple[str, ...] = ("text-classification", "jsl-seq2seq", "instruction-tuning")
# The JSL model trains from scratch or continues a saved one: methods of its own, outside the method registry.
JSL_METHODS: tuple[str, ...] = ("scratch", "continued")


def leaderboard_methods() -> dict[str, Method]:
    """The registered methods `--run` trains by default: every one with a recipe that runs well on a CPU."""
    return {name: m for name, m in METHODS.items() if m.recipe and m.on_leaderboard}


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    higher_is_better: bool | None  # None: text, sorted A-Z by default
    fmt: Callable[[Any], str] = str
    always: bool = True  # False: shown only when some row has a value


def _fixed(digits: int) -> Callable[[Any], str]:
    return lambda value: f"{value:,.{digits}f}"


COLUMNS: tuple[Column, ...] = (
    Column("run", "run", None),
    Column("task", "task", None),
    Column("method", "method", None),
    Column("base_model", "base model", None),
    Column("dataset", "dataset", None),
    Column("split", "split", None),
    Column("accuracy", "accuracy", True, _fixed(4), always=False),
    Column("f1_macro", "f1 macro", True, _fixed(4), always=False),
    Column("gloss_wer", "gloss WER", False, _fixed(4), always=False),
    Column("bleu", "BLEU", True, _fixed(2), always=False),
    Column("chrf", "chrF", True, _fixed(2), always=False),
    Column("exact_match", "exact match", True, _fixed(4), always=False),
    Column("trainable_params", "trainable params", False, lambda v: f"{int(v):,}"),
    Column("trainable_pct", "trainable %", False, lambda v: f"{v:.3g}"),
    # the share the user's notes quote for the method (registry), beside the measured one
    Column("quoted_share", "notes' share", None, always=False),
    Column("train_time_s", "train time (s)", False, _fixed(1)),
    Column("samples_per_s", "samples/s", True, _fixed(2)),
    Column("peak_memory_mb", "peak memory (MB)", False, _fixed(0)),
    Column("disk_size_mb", "disk size (MB)", False, _fixed(2)),
    # the saved weights alone (*.safetensors: the adapter, the BitFit tensors or the whole model)
    Column("weights_mb", "weights (MB)", False, _fixed(2), always=False),
    # `hftune evaluate --latency`: forward time over the plain base model's, batch 1 and 32; merged: the adapter
    # merged into the base weights (LoRA family, IA3), none where it cannot merge
    Column("latency_1_x", "latency b1 (x base)", False, _fixed(2), always=False),
    Column("latency_32_x", "latency b32 (x base)", False, _fixed(2), always=False),
    Column("merged_1_x", "merged b1 (x base)", False, _fixed(2), always=False),
    Column("merged_32_x", "merged b32 (x base)", False, _fixed(2), always=False),
    # batched greedy generation over the held-out split, wall time per sentence (both generative recipes)
    Column("generation_latency_ms", "generation ms/sentence", False, _fixed(1), always=False),
)
_COLUMNS_BY_KEY = {column.key: column for column in COLUMNS}


# --- rows -------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _display_dataset(dataset: Any) -> str:
    """Local data files are shown as `folder/file`: full paths say nothing on another machine."""
    text = str(dataset or "")
    path = Path(text)
    if path.suffix and len(path.parts) > 2:
        return "/".join(path.parts[-2:])
    return text


def _weights_mb(folder: Path | None) -> float | None:
    weights = list(folder.glob("*.safetensors")) if folder is not None and folder.is_dir() else []
    return sum(path.stat().st_size for path in weights) / 2**20 if weights else None


def _efficiency(record: RunRecord | None, folder: Path | None = None) -> dict[str, Any]:
    if record is None:  # a Hub repo with a card only
        return dict.fromkeys(
            ("trainable_params", "trainable_pct", "train_time_s", "samples_per_s", "peak_memory_mb",
             "disk_size_mb", "generation_latency_ms")
        )  # fmt: skip
    latency = record.extra.get("inference_latency") or {}
    method = METHODS.get(str(record.method))
    trainable, total = _number(record.trainable_params), _number(record.total_params)
    ratio = _number(record.trainable_ratio)
    if ratio is None and trainable is not None and total:
        ratio = trainable / total
    generation_latency = _number(record.generation_latency_ms)
    if generation_latency is None:
        generation_latency = _number(record.metrics.get("generation_latency_ms"))
    return {
        "trainable_params": trainable,
        "trainable_pct": None if ratio is None else 100 * ratio,
        "train_time_s": _number(record.train_runtime_s),
        "samples_per_s": _number(record.train_samples_per_second),
        "peak_memory_mb": _number(record.peak_memory_mb),
        "disk_size_mb": _number(record.disk_size_mb),
        "generation_latency_ms": generation_latency,
        "quoted_share": method.quoted_share if method else None,
        "weights_mb": _weights_mb(folder),
        "latency_1_x": _number(latency.get("trained_batch_1_x_base")),
        "latency_32_x": _number(latency.get("trained_batch_32_x_base")),
        "merged_1_x": _number(latency.get("merged_batch_1_x_base")),
        "merged_32_x": _number(latency.get("merged_batch_32_x_base")),
    }


def _quality(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    return {name: _number(metrics.get(name)) for name in QUALITY_METRICS}


def rows_from_results(record: RunRecord, run: str, source: str | None = None) -> list[dict[str, Any]]:
    """A run's row (its own eval split) and one per entry of results.json["evaluations"]."""
    common = {
        "run": run,
        "task": record.task,
        "method": record.method,
        "base_model": record.base_model,
        **_efficiency(record, Path(source) if source else None),
        "source": source or run,
    }
    rows = [
        {
            **common,
            "dataset": _display_dataset(record.dataset),
            "split": record.eval_split,
            **_quality(record.metrics or {}),
        }
    ]
    for evaluation in record.evaluations or []:
        row = {
            **common,
            "dataset": _display_dataset(evaluation.get("dataset")),
            "split": evaluation.get("split"),
            **_quality(evaluation.get("metrics") or {}),
        }
        latency = _number(evaluation.get("generation_latency_ms"))
        if latency is not None:
            row["generation_latency_ms"] = latency
        rows.append(row)
    return rows


def _card_metadata(card: str | Path) -> dict[str, Any]:
    from huggingface_hub import ModelCard

    try:
        loaded = ModelCard.load(card) if isinstance(card, Path) else ModelCard(card)
    except Exception as err:  # yaml and huggingface_hub raise several types for a broken header
        where = card if isinstance(card, Path) else "card text"
        raise HftuneError(
            f"model card {where}: metadata does not parse ({err}); fix its YAML header"
        ) from None
    return loaded.data.to_dict()


def rows_from_card(
    card: str | Path, run: str, results: RunRecord | None = None, source: str | None = None
) -> list[dict[str, Any]]:
    """One row per (dataset, split) of a card's model-index; `card` is a path or the card's text.

    The card's tags name the hftune task and method; efficiency columns come from `results` when given.
    """
    index = read_model_index(card)
    if not index:
        raise HftuneError(
            f"model card of {run} has no model-index results; evaluate it with `hftune evaluate` first"
        )
    metadata = _card_metadata(card)
    tags = metadata.get("tags") or []
    known_methods = (*METHODS, *JSL_METHODS)
    task = (results and results.task) or next((t for t in tags if t in TASKS), metadata.get("pipeline_tag"))
    method = (results and results.method) or next((t for t in tags if t in known_methods), None)
    common = {
        "run": run,
        "task": task,
        "method": method,
        "base_model": metadata.get("base_model") or (results and results.base_model),
        **_efficiency(results),
        "source": source or run,
    }
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for result in index:
        key = (result["dataset_name"] or result["dataset_type"], result["dataset_split"] or "")
        groups.setdefault(key, {})[result["metric_type"]] = result["metric_value"]
    return [
        {**common, "dataset": dataset, "split": split or None, **_quality(metrics)}
        for (dataset, split), metrics in groups.items()
    ]


def _download_card(repo_id: str) -> tuple[Path, RunRecord | None]:
    """The repo's README.md (required) and results.json (when published with it), without the weights."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    check_repo_id(repo_id, "the leaderboard arguments")
    try:
        card = Path(hf_hub_download(repo_id, "README.md"))
    except LocalEntryNotFoundError:
        raise HftuneError(
            f"{repo_id} is neither a local run folder nor in the HF cache, and the Hub cannot be reached; "
            "check the path, or connect once to download the card"
        ) from None
    except HfHubHTTPError as err:
        raise HftuneError(
            f"{repo_id}: its model card could not be downloaded ({str(err).splitlines()[0]})"
        ) from None
    try:
        results = read_results(Path(hf_hub_download(repo_id, RESULTS_FILE)).parent)
    except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, ValueError, HftuneError):
        results = None  # not every repo was published by hftune: the card alone still gives the metrics
    return card, results


def collect_rows(sources: Sequence[str]) -> list[dict[str, Any]]:
    """Rows for run folders (results.json), folders of runs, and Hub repo ids (model-index), in the order given."""
    rows: list[dict[str, Any]] = []
    for source in sources:
        path = Path(source).expanduser()
        runs_inside = sorted(p.parent for p in path.glob(f"*/{RESULTS_FILE}")) if path.is_dir() else []
        if path.is_dir() and not (path / RESULTS_FILE).is_file() and runs_inside:
            # A `--run` ROOT (or any folder of runs) stands for the runs in it.
            rows += collect_rows([str(run) for run in runs_inside])
        elif path.is_dir():
            if not (path / RESULTS_FILE).is_file():
                raise HftuneError(
                    f"run folder {source} has no {RESULTS_FILE}: it is not a finished hftune run; "
                    "finish (or re-run) its recipe, or leave it out"
                )
            rows += rows_from_results(read_results(path), path.resolve().name, str(path))
        elif path.exists():
            raise HftuneError(f"{source} is a file; pass run folders or Hub repo ids")
        elif source.startswith((".", "/", "~")) or source.count("/") != 1:
            raise HftuneError(
                f"run folder {source} does not exist; pass a run's --output_dir or a Hub repo id"
            )
        else:
            card, results = _download_card(source)
            rows += rows_from_card(card, source, results, source)
    return rows


# --- the table --------------------------------------------------------------------------------------------


def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[Column]:
    return [c for c in COLUMNS if c.always or any(row.get(c.key) is not None for row in rows)]


def find_column(name: str, columns: Sequence[Column]) -> Column:
    """A column by key or header, case-insensitive; an unknown name lists the valid ones."""
    wanted = name.strip().lower().replace("-", "_")
    for column in columns:
        if wanted in (column.key, column.header.lower()):
            return column
    raise HftuneError(
        f"--sort {name!r} is not a column of this leaderboard; sort by one of: {', '.join(c.key for c in columns)}"
    )


def sort_rows(
    rows: Sequence[dict[str, Any]], column: Column, ascending: bool | None = None
) -> list[dict[str, Any]]:
    """Best first by default (highest accuracy, lowest WER/memory/time; text A-Z); missing values last."""
    if ascending is None:
        ascending = column.higher_is_better is not True
    present = [row for row in rows if row.get(column.key) is not None]
    missing = [row for row in rows if row.get(column.key) is None]
    key = (
        (lambda r: str(r[column.key]).lower())
        if column.higher_is_better is None
        else (lambda r: r[column.key])
    )
    return sorted(present, key=key, reverse=not ascending) + missing


def render_markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    def cell(column: Column, value: Any) -> str:
        if value is None:
            return "-"
        return column.fmt(value).replace("|", "\\|")

    lines = [
        "| " + " | ".join(c.header for c in columns) + " |",
        "| " + " | ".join("---" if c.higher_is_better is None else "---:" for c in columns) + " |",
    ]
    lines += ["| " + " | ".join(cell(c, row.get(c.key)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def plot_leaderboard(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], path: Path) -> Path | None:
    """One panel per quality metric: metric vs trainable-parameter share (log x), marker area by peak memory.

    Returns None (and writes nothing) when no row has both a metric of `metrics` and a positive share.
    """
    panels = []
    for metric in metrics:
        points, seen = [], set()
        for row in rows:
            spot = (row.get("run"), row.get("trainable_pct"), row.get(metric))
            # An evaluation that scored exactly like the run's own result would only overprint it.
            if row.get(metric) is not None and (row.get("trainable_pct") or 0) > 0 and spot not in seen:
                seen.add(spot)
                points.append(row)
        if points:
            panels.append((metric, points))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    memories = [r["peak_memory_mb"] for _, points in panels for r in points if r.get("peak_memory_mb")]
    largest = max(memories, default=0.0)
    methods = sorted({str(r.get("method")) for _, points in panels for r in points})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (metric, points) in zip(axes[0], panels, strict=True):
        for row in points:
            memory = row.get("peak_memory_mb")
            size = 60 + 540 * memory / largest if memory and largest else 60
            method = str(row.get("method"))
            ax.scatter(
                row["trainable_pct"], row[metric], s=size, color=colours[method], alpha=0.6, edgecolors="k"
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}%"))
        ax.margins(0.2)
        ax.autoscale_view()
        _label_points(ax, points, metric)
        ax.set_xlabel("trainable parameters (% of total, log scale)")
        ax.set_ylabel(_COLUMNS_BY_KEY[metric].header)
        ax.set_title(f"{_COLUMNS_BY_KEY[metric].header} vs trainable share")
        ax.grid(True, which="both", alpha=0.3)
    note = f"marker area ~ peak memory (largest {largest:,.0f} MB)" if largest else "peak memory not recorded"
    fig.text(0.01, 0.01, note, fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _label_points(ax, points: Sequence[Mapping[str, Any]], metric: str) -> None:
    """Name each point, moving a label down (with a line to its point) while it would overprint one placed
    before: methods of similar share and score (the LoRA family near 1%) otherwise stack into one blot."""
    line_height, char_width = 13.0, 7.0  # points, for the default 10-point font
    to_points = 72.0 / ax.figure.dpi
    placed: list[tuple[float, float, float]] = []  # (x, y, width) of each label, in points
    spots = sorted(points, key=lambda row: -ax.transData.transform((row["trainable_pct"], row[metric]))[1])
    for row in spots:
        method = str(row.get("method"))
        # Several runs of one method (e.g. two LoRA ranks) need their run name to be told apart.
        label = method if row.get("run") in (None, method) else f"{method} ({row['run']})"
        x, y = (v * to_points for v in ax.transData.transform((row["trainable_pct"], row[metric])))
        width, offset = char_width * len(label), 7.0
        while any(
            abs(y + offset - other_y) < line_height
            and x + 7 < other_x + other_width
            and other_x < x + 7 + width
            for other_x, other_y, other_width in placed
        ):
            offset -= line_height
        placed.append((x + 7, y + offset, width))
        moved = offset != 7.0
        ax.annotate(
            label,
            (row["trainable_pct"], row[metric]),
            textcoords="offset points",
            xytext=(28 if moved else 7, offset),  # a moved label clears the markers it passes
            arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6} if moved else None,
        )


@dataclass
class Leaderboard:
    rows: list[dict[str, Any]]
    columns: list[Column]
    sort_column: Column
    ascending: bool
    failures: dict[str, str]

    def markdown(self) -> str:
        text = render_markdown(self.rows, self.columns)
        if self.failures:
            text += "\n\nFailed: " + "; ".join(f"{m}: {why}" for m, why in self.failures.items())
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": [{"key": c.key, "header": c.header} for c in self.columns],
            "sort": {"column": self.sort_column.key, "ascending": self.ascending},
            "rows": [
                {c.key: row.get(c.key) for c in self.columns} | {"source": row.get("source")}
                for row in self.rows
            ],
            "failed": self.failures,
        }


def build_leaderboard(
    rows: list[dict[str, Any]],
    sort: str | None = None,
    ascending: bool | None = None,
    metrics: Sequence[str] = DEFAULT_PLOT_METRICS,
    failures: Mapping[str, str] | None = None,
) -> Leaderboard:
    """Choose the columns and order; by default sort by the first of `metrics` the table has."""
    if not rows:
        raise HftuneError("no runs to compare: pass run folders or Hub repo ids (or --run to train them)")
    columns = table_columns(rows)
    if sort is None:
        keys = {c.key for c in columns}
        sort = next((m for m in metrics if m in keys), next((m for m in QUALITY_METRICS if m in keys), "run"))
    column = find_column(sort, columns)
    if ascending is None:
        ascending = column.higher_is_better is not True
    return Leaderboard(sort_rows(rows, column, ascending), columns, column, ascending, dict(failures or {}))


def write_leaderboard(board: Leaderboard, out_dir: Path, metrics: Sequence[str]) -> dict[str, Path | None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "leaderboard.md"
    markdown.write_text(board.markdown() + "\n", encoding="utf-8")
    as_json = out_dir / "leaderboard.json"
    as_json.write_text(json.dumps(board.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {
        "markdown": markdown,
        "json": as_json,
        "png": plot_leaderboard(board.rows, metrics, out_dir / "leaderboard.png"),
    }


# --- --run: train every method ----------------------------------------------------------------------------

# Flags passed to every recipe when given, so all methods share data, model, budget and seed.
SHARED_RUN_FLAGS: tuple[str, ...] = (
    "train_file",
    "validation_file",
    "dataset_name",
    "model_name_or_path",
    "num_train_epochs",
    "per_device_train_batch_size",
    "max_train_samples",
    "max_eval_samples",
    "max_seq_length",
    "seed",
)


def _layer_count(model_name_or_path: str | None) -> int:
    from transformers import AutoConfig

    name = model_name_or_path or embedded_encoder_path()
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise HftuneError(
            f"cannot read the config of --model_name_or_path {name!r} ({err}); check it"
        ) from None
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None)
    if not layers:
        raise HftuneError(
            f"model {name!r} has no num_hidden_layers in its config; cannot freeze its lower half"
        )
    return int(layers)


def method_command(method: str, args: argparse.Namespace, recipe_args: Sequence[str]) -> list[str]:
    """The `accelerate launch` command line that trains `method` into ROOT/<method>."""
    registered = leaderboard_methods()[method]
    recipe, extra = resource_dir("recipes") / registered.recipe, registered.recipe_flags
    if not recipe.is_file():
        raise HftuneError(f"recipe {recipe} for method {method!r} is missing from this hftune install")
    config = resource_dir("accelerate_configs") / "cpu.yaml"
    if any("{lower_half}" in flag for flag in extra):
        lower_half = str(_layer_count(args.model_name_or_path) // 2)
        extra = tuple(flag.replace("{lower_half}", lower_half) for flag in extra)
    shared = []
    for name in SHARED_RUN_FLAGS:
        value = getattr(args, name)
        if value is not None:
            shared += [f"--{name}", str(value)]
    rate = method_learning_rates(getattr(args, "learning_rates", None)).get(method)
    if rate is not None:
        shared += ["--learning_rate", str(rate)]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    return [
        *launch,
        str(recipe),
        *shared,
        *extra,
        *recipe_args,
        "--output_dir",
        str(Path(args.output_dir) / method),
    ]


def _log_tail(log: Path, lines: int = 3) -> str:
    text = [
        line.strip()
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
        if line.strip()
    ]
    errors = [line for line in text if line.startswith(("error:", "Error", "Traceback")) or "Error:" in line]
    return " / ".join((errors or text)[-lines:])[:400]


def time_inference(method: str, run_dir: Path, args: argparse.Namespace, log: Path) -> bool:
    """Re-score the saved run in a fresh process (`hftune evaluate`, which reloads it as a user would) and time
    its forward passes against the base model (`--latency`); appends to the method's log. False on failure."""
    data = (
        ["--validation_file", args.validation_file]
        if args.validation_file
        else ["--dataset_name", args.dataset_name or str(read_results(run_dir).dataset)]
    )
    if args.max_eval_samples:
        data += ["--max_eval_samples", str(args.max_eval_samples)]
    # A feature classifier (logistic regression over pooled embeddings) has no single forward pass to time.
    latency = [] if METHODS[method].artifact == "features" else ["--latency"]
    command = [sys.executable, "-m", "hftune.cli", "evaluate", str(run_dir), *data, *latency]
    with log.open("a", encoding="utf-8") as handle:
        handle.write("\n" + " ".join(command) + "\n\n")
        handle.flush()
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode == 0


def train_methods(args: argparse.Namespace, recipe_args: Sequence[str]) -> tuple[list[Path], dict[str, str]]:
    """Train each method in its own process; returns finished run folders and {method: why it failed}."""
    root = Path(args.output_dir)
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    finished, failures = [], {}
    for number, method in enumerate(args.methods, 1):
        run_dir = root / method
        if (run_dir / RESULTS_FILE).is_file() and not args.overwrite:
            # Relaunching a finished run resumes from its last checkpoint and would record a near-zero time.
            print(
                f"hftune: [{number}/{len(args.methods)}] {method}: reusing finished run {run_dir} (--overwrite retrains)"
            )
            finished.append(run_dir)
            continue
        if args.overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        log = logs / f"{method}.log"
        try:
            command = method_command(method, args, recipe_args)
        except HftuneError as err:
            failures[method] = str(err)
            print(f"hftune: [{number}/{len(args.methods)}] {method}: FAILED ({err})", flush=True)
            continue
        print(f"hftune: [{number}/{len(args.methods)}] {method}: training (log: {log})", flush=True)
        started = time.perf_counter()
        with log.open("w", encoding="utf-8") as handle:
            handle.write(" ".join(command) + "\n\n")
            handle.flush()
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode
        seconds = time.perf_counter() - started
        if code == 0 and (run_dir / RESULTS_FILE).is_file():
            print(f"hftune: [{number}/{len(args.methods)}] {method}: done in {seconds:.0f} s", flush=True)
            finished.append(run_dir)
            if not time_inference(method, run_dir, args, log):
                failures[f"{method} latency"] = (
                    f"`hftune evaluate --latency` failed: {_log_tail(log)} (log: {log})"
                )
            continue
        why = f"exit code {code}" if code else f"no {RESULTS_FILE} written"
        failures[method] = f"{why}: {_log_tail(log)} (log: {log})"
        print(
            f"hftune: [{number}/{len(args.methods)}] {method}: FAILED after {seconds:.0f} s, {failures[method]}",
            flush=True,
        )
    return finished, failures


# --- command line -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hftune leaderboard",
        description="Compare runs side by side (markdown, JSON, PNG). With --run, first train every method. "
        "Arguments after `--` go to every recipe unchanged.",
    )
    parser.add_argument(
        "runs", nargs="*", help="run folders (with results.json), folders of runs, or Hub repo ids ORG/NAME"
    )
    parser.add_argument(
        "--sort", help="column to sort by, key or header (default: the first --metric present)"
    )
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--ascending", action="store_true", default=None, help="smallest first")
    order.add_argument("--descending", dest="ascending", action="store_false", help="largest first")
    parser.add_argument(
        "--metric",
        action="append",
        choices=QUALITY_METRICS,
        help="quality metric to plot (repeatable; default: accuracy and exact_match, those present)",
    )
    parser.add_argument("--output", type=Path, help="folder for leaderboard.md/.json/.png (default: ./leaderboard, "
                        "or the --output_dir of --run)")  # fmt: skip
    parser.add_argument("--config", help="YAML file whose keys set any of these options (see benchmarks/)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    run = parser.add_argument_group("--run: train every method with the same data, model, budget and seed")
    run.add_argument("--run", action="store_true", help="train the methods, then render their leaderboard")
    run.add_argument(
        "--methods", nargs="+", choices=list(leaderboard_methods()), default=list(leaderboard_methods())
    )
    run.add_argument(
        "--output_dir", default="outputs/leaderboard", help="ROOT: each method writes ROOT/<method>"
    )
    run.add_argument(
        "--overwrite", action="store_true", help="retrain methods whose ROOT/<method> already finished"
    )
    run.add_argument("--train_file")
    run.add_argument("--validation_file")
    run.add_argument("--dataset_name")
    run.add_argument("--model_name_or_path")
    run.add_argument("--num_train_epochs", type=float, default=3.0)
    run.add_argument("--per_device_train_batch_size", type=int)
    run.add_argument("--max_train_samples", type=int)
    run.add_argument("--max_eval_samples", type=int)
    run.add_argument("--max_seq_length", type=int)
    run.add_argument("--seed", type=int, default=42)
    run.add_argument(
        "--learning_rates",
        nargs="+",
        metavar="METHOD=LR",
        help="a method's learning rate (default: its recipe's); in --config a mapping method: rate",
    )
    return parser


def method_learning_rates(values) -> dict[str, float]:
    """--learning_rates as {method: rate}, from METHOD=LR words or a --config mapping; unknown methods and
    rates that are not positive numbers are refused."""
    if not values:
        return {}
    pairs = values.items() if isinstance(values, dict) else [str(v).partition("=")[::2] for v in values]
    rates = {}
    for method, rate in pairs:
        if method not in leaderboard_methods():
            raise HftuneError(
                f"--learning_rates: {method!r} is not a method; choose from {', '.join(leaderboard_methods())}"
            )
        try:
            rates[method] = float(rate)
        except (TypeError, ValueError):
            rates[method] = -1.0
        if not rates[method] > 0:
            raise HftuneError(
                f"--learning_rates {method}={rate}: the rate must be a positive number, e.g. {method}=3e-3"
            )
    return rates


def _apply_config(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """Set the parser's defaults from a YAML file; returns its `recipe_args` list."""
    values = load_yaml_config(path)
    recipe_args = values.pop("recipe_args", None) or []
    dests = {a.dest for a in parser._actions} - {"help", "config", "runs"}
    unknown = sorted(set(values) - dests)
    if unknown:
        raise HftuneError(
            f"{path}: unknown key(s) {', '.join(unknown)}; use any of {', '.join(sorted(dests))}, recipe_args"
        )
    parser.set_defaults(**values)
    return [str(a) for a in recipe_args]


def leaderboard_command(argv: list[str]) -> int:
    """`hftune leaderboard RUN_DIR_OR_REPO_ID... [--sort COLUMN] [--ascending] [--output DIR] [--metric M]`.

    Prints the markdown table; returns 1 when a method of `--run` failed (the others still render).
    """
    argv = list(argv)
    recipe_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        recipe_args = _apply_config(parser, pre.config) + recipe_args
    args = parser.parse_args(argv)
    # Values from --config bypass argparse's choices.
    for flag, values, valid in (
        ("methods", args.methods, leaderboard_methods()),
        ("metric", args.metric or [], QUALITY_METRICS),
    ):
        unknown = [v for v in values if v not in valid]
        if unknown:
            raise HftuneError(
                f"--{flag} {' '.join(map(str, unknown))} is not known; choose from {', '.join(valid)}"
            )
    metrics = args.metric or list(DEFAULT_PLOT_METRICS)
    if args.output is not None:
        check_writable_folder(args.output, "--output")
    if args.run:
        check_writable_folder(args.output_dir)
        check_training_length(args.num_train_epochs, -1)
        method_learning_rates(args.learning_rates)  # refused before any method trains
        for name in (
            "per_device_train_batch_size",
            "max_train_samples",
            "max_eval_samples",
            "max_seq_length",
            "seed",
        ):
            check_range(name, getattr(args, name))

    failures: dict[str, str] = {}
    sources = list(args.runs)
    if args.run:
        finished, failures = train_methods(args, recipe_args)
        sources += [str(path) for path in finished]
    elif recipe_args:
        raise HftuneError(f"recipe arguments after `--` ({' '.join(recipe_args)}) need --run")
    if not sources and failures:
        raise HftuneError("every method failed: " + "; ".join(f"{m}: {why}" for m, why in failures.items()))
    board = build_leaderboard(collect_rows(sources), args.sort, args.ascending, metrics, failures)
    out_dir = args.output or (Path(args.output_dir) if args.run else Path("leaderboard"))
    written = write_leaderboard(board, out_dir, metrics)
    print(board.markdown())
    print("\nwrote " + ", ".join(str(p) for p in written.values() if p is not None))
    return 1 if failures else 0
