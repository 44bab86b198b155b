"""`hftune leaderboard`: real tiny LoRA runs of the real recipe, rendered; `--run` launches recipes (slow)."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch

from hftune.errors import HftuneError
from hftune.reporting import leaderboard
from hftune.reporting.cards import write_model_card
from hftune.results import RunRecord, read_results
from hftune.runtime import resource_dir

RUNS = {"lora_r2": 2, "lora_r16": 16}  # two real runs that differ only in LoRA rank
# Tiny budget: 60 examples, 1 epoch of 4 steps, no per-epoch evaluation or checkpoints.
TINY_RECIPE_ARGS = [
    "--max_seq_length", "32", "--per_device_train_batch_size", "16", "--eval_strategy", "no",
    "--save_strategy", "no", "--load_best_model_at_end", "false",
]  # fmt: skip


def write_tiny_emotion(emotion_dir: Path, out: Path) -> tuple[Path, Path]:
    """10 training messages per emotion (so every label is known) and the first 40 validation messages."""
    out.mkdir(parents=True, exist_ok=True)
    by_label: dict[str, list[str]] = {}
    with (emotion_dir / "train.txt").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter=";"):
            by_label.setdefault(row["label_name"], []).append(row["text"])
    with (emotion_dir / "validation.txt").open(encoding="utf-8") as handle:
        validation = [(row["text"], row["label_name"]) for row in csv.DictReader(handle, delimiter=";")][:40]
    train = [(text, label) for label in sorted(by_label) for text in by_label[label][:10]]
    paths = []
    for name, rows in (("train.csv", train), ("validation.csv", validation)):
        with (out / name).open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        paths.append(out / name)
    return paths[0], paths[1]


def run_recipe_in_process(recipe: str, argv: list[str]) -> None:
    """The real recipe script, run in this process: no launcher start-up, so the shared runs stay cheap."""
    path = resource_dir("recipes") / recipe
    environ, threads = dict(os.environ), torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", [str(path), *argv])
            runpy.run_path(str(path), run_name="__main__")
    finally:  # the recipe sets thread counts and precision variables for its own process
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)


@functools.cache
def _train_tiny_runs(root: Path, emotion_dir: Path) -> tuple[Path, Path, Path]:
    train_file, validation_file = write_tiny_emotion(emotion_dir, root / "data")
    for name, rank in RUNS.items():
        run_recipe_in_process(
            "sentiment_lora.py",
            ["--train_file", str(train_file), "--validation_file", str(validation_file), "--num_train_epochs", "1",
             "--lora_r", str(rank), "--output_dir", str(root / "runs" / name), *TINY_RECIPE_ARGS],
        )  # fmt: skip
    return root / "runs", train_file, validation_file


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, emotion_dir) -> tuple[Path, Path, Path]:
    """(ROOT with the real runs ROOT/lora_r2 and ROOT/lora_r16, their train file, their validation file)."""
    return _train_tiny_runs(tmp_path_factory.getbasetemp() / "tiny_runs", emotion_dir)


@pytest.mark.slow  # three `accelerate launch` processes: ~2 min on a quiet 2-core machine, far more when shared
def test_run_trains_each_method_and_reports_the_failing_one(tmp_path, emotion_dir):
    train_file, validation_file = write_tiny_emotion(emotion_dir, tmp_path / "data")
    lora = leaderboard.METHODS["lora"]
    methods = {
        name: dataclasses.replace(lora, name=name, recipe_flags=("--lora_r", str(r)))
        for name, r in RUNS.items()
    }
    # A method whose recipe rejects its flags: reported, while the others still render.
    methods["broken"] = dataclasses.replace(lora, name="broken", recipe_flags=("--no_such_flag", "1"))
    root = tmp_path / "runs"
    argv = ["--run", "--methods", *methods, "--train_file", str(train_file), "--validation_file",
            str(validation_file), "--num_train_epochs", "1", "--output_dir", str(root), "--", *TINY_RECIPE_ARGS]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(leaderboard, "leaderboard_methods", lambda: methods)
        assert leaderboard.leaderboard_command(argv) == 1  # one method failed
    board = json.loads((root / "leaderboard.json").read_text(encoding="utf-8"))
    assert sorted(row["run"] for row in board["rows"]) == sorted(RUNS)
    assert "no_such_flag" in board["failed"]["broken"]
    assert (root / "logs" / "broken.log").is_file()
    for name, rank in RUNS.items():
        results = read_results(root / name)
        assert results.seed == 42 and results.split_sizes == {"train": 60, "validation": 40}
        assert results.hyperparameters["num_train_epochs"] == 1
        assert results.hyperparameters["max_seq_length"] == 32
        assert json.loads((root / name / "adapter_config.json").read_text(encoding="utf-8"))["r"] == rank


def test_tiny_runs_differ_only_in_lora_rank(tiny_runs):
    r2, r16 = read_results(tiny_runs[0] / "lora_r2"), read_results(tiny_runs[0] / "lora_r16")
    assert r16.trainable_params > r2.trainable_params and r16.total_params > r2.total_params
    assert r2.split_sizes == r16.split_sizes == {"train": 60, "validation": 40}


def test_renders_markdown_json_and_png_from_run_folders(tiny_runs, tmp_path, capsys):
    root = tiny_runs[0]
    code = leaderboard.leaderboard_command([str(root / name) for name in RUNS] + ["--output", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    table = (tmp_path / "leaderboard.md").read_text(encoding="utf-8").strip()
    assert table in printed
    header = table.splitlines()[0]
    for column in (
        "accuracy",
        "f1 macro",
        "trainable params",
        "trainable %",
        "peak memory (MB)",
        "disk size (MB)",
    ):
        assert f" {column} |" in header
    assert "gloss WER" not in header  # no JSL run in this table
    board = json.loads((tmp_path / "leaderboard.json").read_text(encoding="utf-8"))
    for row in board["rows"]:
        results = read_results(root / row["run"])
        assert row["accuracy"] == results.metrics["accuracy"]
        assert row["trainable_params"] == results.trainable_params
        assert row["peak_memory_mb"] == results.peak_memory_mb
        assert f"| {row['run']} | text-classification | lora |" in table
    png = tmp_path / "leaderboard.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("sort", "extra", "expected"),
    [
        ("trainable_params", [], ["lora_r2", "lora_r16"]),  # lower is better: ascending by default
        ("trainable params", ["--descending"], ["lora_r16", "lora_r2"]),  # by header too
        ("run", ["--ascending"], ["lora_r16", "lora_r2"]),
    ],
)
def test_sorts_by_any_column(tiny_runs, tmp_path, sort, extra, expected):
    root = tiny_runs[0]
    leaderboard.leaderboard_command([str(root / "lora_r2"), str(root / "lora_r16"), "--sort", sort, *extra,
                                     "--output", str(tmp_path)])  # fmt: skip
    board = json.loads((tmp_path / "leaderboard.json").read_text(encoding="utf-8"))
    assert [row["run"] for row in board["rows"]] == expected


def test_unknown_sort_column_names_it_and_the_valid_ones(tiny_runs, tmp_path):
    with pytest.raises(
        HftuneError, match=r"--sort 'bleu' is not a column.*accuracy, f1_macro, trainable_params"
    ):
        leaderboard.leaderboard_command(
            [str(tiny_runs[0] / "lora_r2"), "--sort", "bleu", "--output", str(tmp_path)]
        )


def test_a_folder_of_runs_stands_for_its_runs(tiny_runs):
    rows = leaderboard.collect_rows(
        [str(tiny_runs[0])]
    )  # ROOT of --run: logs/ and leaderboard files are skipped
    assert sorted(row["run"] for row in rows) == sorted(RUNS)


def test_run_folder_without_results_is_named(tiny_runs, tmp_path):
    unfinished = tmp_path / "unfinished_run"
    unfinished.mkdir()
    with pytest.raises(HftuneError, match=r"run folder .*unfinished_run has no results.json"):
        leaderboard.leaderboard_command(
            [str(tiny_runs[0] / "lora_r2"), str(unfinished), "--output", str(tmp_path)]
        )


def test_missing_path_is_named(tmp_path):
    with pytest.raises(HftuneError, match=r"run folder ./no/such/run does not exist"):
        leaderboard.collect_rows(["./no/such/run"])


def test_rows_from_model_index_card_text(tiny_runs):
    """A published repo is compared through its card's model-index (text as downloaded), JSL runs included."""
    results = read_results(tiny_runs[0] / "lora_r2")
    card_text = (tiny_runs[0] / "lora_r2" / "README.md").read_text(encoding="utf-8")
    rows = leaderboard.rows_from_card(card_text, "org/sentiment-lora")
    assert len(rows) == 1
    assert rows[0]["method"] == "lora" and rows[0]["task"] == "text-classification"
    assert rows[0]["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert rows[0]["accuracy"] == pytest.approx(results.metrics["accuracy"])
    assert rows[0]["f1_macro"] == pytest.approx(results.metrics["f1_macro"])
    assert rows[0]["trainable_params"] is None  # the card alone carries no efficiency figures

    jsl_results = {"task": "jsl-seq2seq", "method": "scratch", "artifact": "remote-code", "dataset": "jsl_corpus",
                   "eval_split": "test", "metrics": {"gloss_wer": 0.21, "bleu": 55.0, "chrf": 70.5, "exact_match": 0.4},
                   "trainable_params": 1_000_000, "total_params": 1_000_000, "peak_memory_mb": 900.0}  # fmt: skip
    jsl_dir = tiny_runs[0].parent / "jsl_card"
    jsl_dir.mkdir(exist_ok=True)
    jsl_card = write_model_card(jsl_dir, jsl_results)
    jsl_rows = leaderboard.rows_from_card(
        jsl_card.read_text(encoding="utf-8"), "org/jsl-seq2seq", RunRecord.from_dict(jsl_results)
    )
    board = leaderboard.build_leaderboard(rows + jsl_rows, sort="gloss_wer")
    keys = [c.key for c in board.columns]
    assert {"accuracy", "gloss_wer", "bleu", "chrf", "exact_match"} <= set(keys)
    assert [row["run"] for row in board.rows] == ["org/jsl-seq2seq", "org/sentiment-lora"]  # missing WER last
    assert board.rows[0]["method"] == "scratch" and board.rows[0]["trainable_pct"] == 100.0
    assert leaderboard.plot_leaderboard(
        board.rows, ["accuracy", "exact_match"], tiny_runs[0].parent / "mixed.png"
    )


def test_repo_id_reads_the_cached_card(tiny_runs, tmp_path, monkeypatch):
    """A repo id resolves through the HF cache offline: only README.md (+ results.json) is read."""
    hub = tmp_path / "hub"
    snapshot = hub / "models--org--sentiment-lora" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for name in ("README.md", "results.json"):
        shutil.copyfile(tiny_runs[0] / "lora_r2" / name, snapshot / name)
    (hub / "models--org--sentiment-lora" / "refs").mkdir()
    (hub / "models--org--sentiment-lora" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    rows = leaderboard.collect_rows(["org/sentiment-lora"])
    results = read_results(tiny_runs[0] / "lora_r2")
    assert rows[0]["run"] == "org/sentiment-lora"
    assert rows[0]["accuracy"] == pytest.approx(results.metrics["accuracy"])
    assert rows[0]["trainable_params"] == results.trainable_params
    with pytest.raises(HftuneError, match="org/not-there is neither a local run folder nor in the HF cache"):
        leaderboard.collect_rows(["org/not-there"])


def test_latency_share_and_weights_columns(tiny_runs, tmp_path):
    """`hftune evaluate --latency` times the run against its base model (and, LoRA being mergeable, the merged
    copy); the leaderboard shows those ratios, the adapter's weight file size and the share the notes quote."""
    from hftune.evaluation import evaluate_command

    run = tmp_path / "lora_r2"
    shutil.copytree(tiny_runs[0] / "lora_r2", run)
    assert evaluate_command([str(run), "--validation_file", str(tiny_runs[2]), "--latency"]) == 0
    latency = read_results(run).extra["inference_latency"]
    for model in ("base", "trained", "merged"):
        assert latency[f"{model}_batch_1_ms"] > 0 and latency[f"{model}_batch_32_ms"] > 0
    assert leaderboard.leaderboard_command([str(run), "--output", str(tmp_path / "board")]) == 0
    row = json.loads((tmp_path / "board" / "leaderboard.json").read_text(encoding="utf-8"))["rows"][0]
    assert row["latency_1_x"] == latency["trained_batch_1_x_base"]
    assert row["merged_32_x"] == latency["merged_batch_32_x_base"]
    assert row["quoted_share"] == "~0.1%"
    assert row["weights_mb"] == (run / "adapter_model.safetensors").stat().st_size / 2**20
    header = (tmp_path / "board" / "leaderboard.md").read_text(encoding="utf-8").splitlines()[0]
    for column in ("notes' share", "weights (MB)", "latency b1 (x base)", "merged b32 (x base)"):
        assert f" {column} |" in header


def test_per_method_learning_rates_from_the_config(tmp_path):
    """`learning_rates` in the leaderboard config gives a method its rate (the others keep their recipe's);
    an unknown method or a rate that is not a positive number is refused before anything trains."""
    config = tmp_path / "board.yaml"
    config.write_text("methods: [adapters, lora]\nlearning_rates:\n  adapters: 3.0e-3\n", encoding="utf-8")
    parser = leaderboard.build_parser()
    leaderboard._apply_config(parser, str(config))
    args = parser.parse_args(["--run", "--output_dir", str(tmp_path / "runs")])
    adapters = leaderboard.method_command("adapters", args, [])
    assert adapters[adapters.index("--learning_rate") + 1] == "0.003"
    assert "--learning_rate" not in leaderboard.method_command("lora", args, [])
    assert leaderboard.method_learning_rates(["prefix=3e-2"]) == {"prefix": 0.03}
    with pytest.raises(HftuneError, match="'adaptors' is not a method; choose from"):
        leaderboard.method_learning_rates({"adaptors": 1e-3})
    with pytest.raises(HftuneError, match="--learning_rates lora=fast: the rate must be a positive number"):
        leaderboard.method_learning_rates(["lora=fast"])
    with pytest.raises(HftuneError, match="lora=0"):
        leaderboard.leaderboard_command(
            ["--run", "--output_dir", str(tmp_path / "x"), "--learning_rates", "lora=0"]
        )
    assert not (tmp_path / "x" / "lora").exists()


def test_plot_labels_of_close_methods_do_not_overprint():
    """Five methods at nearly the same share and score (the LoRA family near 1%) get five readable labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hftune.reporting.leaderboard import _label_points

    rows = [
        {"method": name, "run": name, "trainable_pct": 0.98 + 0.01 * i, "accuracy": 0.888 + 0.001 * i}
        for i, name in enumerate(["lora", "dora", "rslora", "pissa", "olora"])
    ]
    fig, ax = plt.subplots()
    ax.scatter([r["trainable_pct"] for r in rows], [r["accuracy"] for r in rows])
    ax.set_xscale("log")
    ax.autoscale_view()
    _label_points(ax, rows, "accuracy")
    fig.canvas.draw()
    boxes = [text.get_window_extent() for text in ax.texts]
    assert sorted(text.get_text() for text in ax.texts) == sorted(r["method"] for r in rows)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plt.close(fig)
