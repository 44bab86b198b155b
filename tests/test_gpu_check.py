"""benchmarks/gpu_check.py on CPU: the dry run plans every setting and runs the JSL CPU half, a failed check exits 1,
a bad flag exits 2, the training path the GPU will take runs on CPU with a stand-in allocator, and every verdict
rule holds on hand-made numbers (benchmarks/gpu_verdicts.py)."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
MIB = 2**20
GIB = 2**30
SETTINGS = ("user", "lora", "qlora", "bitfit")
CUDA_ONLY = ("fits", "memory_estimate", "finite_loss", "fp16_skipped_steps")


def _import_from_benchmarks(name: str):
    """Import a benchmarks/ module without letting `common`'s thread and Hub settings leak into this process."""
    saved = dict(os.environ)
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
        os.environ.clear()
        os.environ.update(saved)


v = _import_from_benchmarks("gpu_verdicts")


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_THREADS": "1", "HFTUNE_CPU_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
    )  # fmt: skip


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, str]:
    out = tmp_path_factory.mktemp("gpu_check")
    done = _run(["--dry-run", "--output_dir", str(out), "--jsl_size", "tiny", "--jsl_train_samples", "320",
                 "--jsl_epochs", "2", "--generation_repeats", "5"])  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_dry_run_plans_every_setting_for_an_fp16_6gb_card(dry_run) -> None:
    _, report, _ = dry_run
    assert report["dry_run"] is True and report["summary"]["failed"] == []
    assert report["emulation"]["budget_bytes"] == 6 * GIB and report["emulation"]["hardware"][
        "cuda_capability"
    ] == [7, 5]
    runs = {(r["setting"], r["variant"]): r for r in report["runs"]}
    # The user's 8 x 4 is planned as asked and as the plan for 6 GB changes it (a larger batch, same effective 32).
    assert set(runs) == {(s, "requested") for s in SETTINGS} | {("user", "plan")}
    user, user_plan = runs["user", "requested"], runs["user", "plan"]
    assert (user["per_device_train_batch_size"], user["gradient_accumulation_steps"]) == (8, 4)
    assert user_plan["per_device_train_batch_size"] * user_plan["gradient_accumulation_steps"] == 32
    assert user_plan["per_device_train_batch_size"] > 8
    assert user_plan["predicted_tensors_bytes"] > user["predicted_tensors_bytes"]  # more activations at once
    for run in report["runs"]:
        assert run["precision"] == "fp16" and run["plan_fits_budget"]
        e = run["estimate"]
        assert run["predicted_tensors_bytes"] == pytest.approx(
            e["weights"] + e["gradients"] + e["optimizer"] + e["activations"]
        )
        assert e["activations"] > 0 and e["overhead"] == 400 * MIB
        assert run["predicted_tensors_bytes"] < run["predicted_peak_bytes"] <= 6 * GIB
        assert "measured" not in run
    # What each method trains, and the 4-bit weights, show in the plan.
    assert runs["qlora", "requested"]["quantization"] == "4bit"
    assert (
        runs["qlora", "requested"]["estimate"]["weights"]
        < 0.75 * runs["lora", "requested"]["estimate"]["weights"]
    )
    trainable = {s: runs[s, "requested"]["trainable_params"] for s in SETTINGS}
    assert trainable["bitfit"] < trainable["lora"] < trainable["user"]
    assert report["model"]["name"] == "minilm" and report["data"]["source"]


def test_dry_run_lists_every_cuda_check_as_skipped_and_runs_the_rest(dry_run) -> None:
    done, report, markdown = dry_run
    summary = report["summary"]
    checks = {c["name"]: c for c in report["checks"]}
    expected_skips = {f"{s}/requested/{what}" for s in SETTINGS for what in CUDA_ONLY}
    expected_skips |= {f"user/plan/{what}" for what in CUDA_ONLY}
    expected_skips |= {"jsl/cuda_fp32_logits", "jsl/cuda_fp32_glosses", "jsl/cuda_generation_speed",
                       "jsl/fp16_saved_on_cuda_logits", "jsl/bf16_saved_on_cuda_logits"}  # fmt: skip
    assert set(summary["skipped"]) == expected_skips
    assert all(checks[name]["detail"] == "needs CUDA (--dry-run)" for name in expected_skips)
    ran = {"preflight/emulated_fp16", "preflight/emulated_bf16_refused", "jsl/cpu_training",
           "jsl/fp16_saved_on_cpu_logits", "jsl/bf16_saved_on_cpu_logits"}  # fmt: skip
    ran |= {f"{s}/{what}" for s in SETTINGS for what in ("plan", "plan_applied", "cpu_smoke")}
    assert set(summary["passed"]) == ran
    assert "bf16 needs CUDA compute capability >= 8.0" in checks["preflight/emulated_bf16_refused"]["detail"]
    # The half-precision round trip ran for real, from CPU: a real rounding error, under the 1e-2 criterion.
    halves = {h["dtype"]: h for h in report["jsl"]["half_precision"]}
    assert (
        halves["fp16"]["stored_dtype"] == "torch.float16"
        and halves["bf16"]["stored_dtype"] == "torch.bfloat16"
    )
    assert 0 < halves["fp16"]["relative_error"] < halves["bf16"]["relative_error"] < 1e-2
    assert report["jsl"]["speed"]["cpu"]["batched_greedy_sentences_per_second"] > 0
    assert report["jsl"]["training"]["steps"] == 20  # 320 pairs / batch 32 x 2 epochs
    # The preflight on this machine is printed and tabled; every check has a row.
    assert "gpu_check: preflight: text-classification recipes" in done.stdout
    assert "| preflight | device | precision | why |" in markdown and "dry run" in markdown
    assert all(f"| {name} |" in markdown for name in checks)
    assert f"**{len(summary['passed'])} passed, 0 failed, {len(expected_skips)} skipped.**" in markdown


def test_an_impossible_budget_fails_its_check_and_exits_1(tmp_path: Path) -> None:
    done = _run(
        ["--dry-run", "--budget", "10MB", "--settings", "user", "--no_jsl", "--output_dir", str(tmp_path)]
    )
    assert done.returncode == 1, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["summary"]["failed"] == ["user/plan"]
    detail = next(c["detail"] for c in report["checks"] if c["name"] == "user/plan")
    assert "budget 10 MB is too small" in detail
    assert "| user/plan | FAIL |" in (tmp_path / "gpu_check.md").read_text()


@pytest.fixture(scope="module")
def gpu_check():
    return _import_from_benchmarks("gpu_check")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--budget", "lots"], "--budget 'lots' is not a size"),
        (["--settings", "user", "prefix"], "--settings prefix: not a setting"),
        (["--steps", "0"], "--steps 0 must be at least 1"),
        (["--data", "/nonexistent/emotion"], "--data /nonexistent/emotion: no train.txt there"),
    ],
)
def test_bad_flags_exit_2_before_anything_is_written(
    gpu_check, tmp_path: Path, capsys, flags: list[str], message: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--dry-run", "--output_dir", str(out), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


class StandInAllocator:
    """What `CudaMemory` reports on a GPU, with set numbers: 100 MiB at start, the given peaks during training."""

    def __init__(self, peak_allocated: int, peak_reserved: int) -> None:
        self.peak_allocated, self.peak_reserved = peak_allocated, peak_reserved

    def release(self) -> int:
        return 100 * MIB

    def reset_peak(self) -> None:
        pass

    def peaks(self) -> tuple[int, int]:
        return self.peak_allocated, self.peak_reserved


def test_the_gpu_training_path_runs_on_cpu_with_a_stand_in_allocator(gpu_check, tmp_path: Path) -> None:
    """Everything a GPU run does but read the allocator: the recipe parsing, prepare_training_args with the emulated
    card (fp16), both variants of the user's setting and BitFit trained with hftune's Trainer, the verdicts and the
    table."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from hftune.hardware import detect_hardware
    from hftune.models import embedded_encoder_path

    folder = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=64, num_labels=6)).save_pretrained(folder)  # fmt: skip
    AutoTokenizer.from_pretrained(embedded_encoder_path()).save_pretrained(folder)
    args = gpu_check.parse_args(["--steps", "2", "--warmup_steps", "0"])
    data, _ = gpu_check.load_data("synthetic", tmp_path, seed=0)
    real = detect_hardware()
    allocator = StandInAllocator(peak_allocated=100 * MIB + 60 * MIB, peak_reserved=300 * MIB)
    ctx = {"args": args, "work": tmp_path, "data": data, "model_path": str(folder), "model_type": "bert",
           "turing": gpu_check.emulated_turing(real), "dry_run": False, "memory_fraction": None,
           "budget_bytes": 6 * GIB, "memory": allocator,
           "train_dataset": lambda tokenizer: gpu_check.tokenized_train(data, tokenizer)}  # fmt: skip
    rows, checks = [], []
    settings = gpu_check.settings_for(2)
    for name in ("user", "bitfit"):  # both into the same lists, as main() runs them
        gpu_check.run_setting(settings[name], ctx, rows, checks)

    runs = [(r["setting"], r["variant"], r["per_device_train_batch_size"], r["gradient_accumulation_steps"])
            for r in rows]  # fmt: skip
    assert runs == [("user", "requested", 8, 4), ("user", "plan", 32, 1), ("bitfit", "requested", 32, 1)]
    by_name = {c.name: c for c in checks}
    assert len(by_name) == len(checks) == 3 * 4 + 2 * 2  # 4 verdicts per run; plan, plan_applied per setting
    for row in rows:
        measured = row["measured"]
        assert measured["steps_done"] == 2 and not measured["out_of_memory"]
        assert len(measured["losses"]) == 2 and all(math.isfinite(x) for x in measured["losses"])
        assert measured["peak_allocated_bytes"] == 60 * MIB  # the allocator's peak less what was there before
        assert measured["samples_per_second"] > 0
        tag = f"{row['setting']}/{row['variant']}"
        assert by_name[f"{tag}/fits"].status == v.PASS  # 300 MiB reserved + 400 MiB context within 6 GiB
        assert by_name[f"{tag}/finite_loss"].status == v.PASS
        skipped = by_name[f"{tag}/fp16_skipped_steps"].figures
        assert skipped == {"skipped_steps": 0, "steps": 2, "precision": "fp16"}
        estimate = by_name[f"{tag}/memory_estimate"]
        assert estimate.figures["measured_mb"] == 60
        assert estimate.figures["error"] == pytest.approx(
            (row["predicted_tensors_bytes"] - 60 * MIB) / (60 * MIB)
        )
    assert by_name["user/plan_applied"].status == by_name["bitfit/plan_applied"].status == v.PASS

    report = {"gpu": {"torch": "t", "transformers": "t", "peft": "p", "bitsandbytes": "b"}, "dry_run": False,
              "emulation": {"description": "6GB"}, "model": {"description": "tiny"},
              "data": {"source": "synthetic", "train_rows": 1}, "preflight": [], "runs": rows, "jsl": None,
              "checks": [c.as_dict() for c in checks], "summary": v.summarize(checks)}  # fmt: skip
    table = gpu_check.markdown_report(report)
    error = by_name["user/plan/memory_estimate"].figures["error"]
    assert "| user | plan | 32 x 1 | fp16 | " in table and f"| {error:+.1%} | 2 | 0 | yes |" in table


def test_the_jsl_gpu_branch_runs_on_cpu(gpu_check, tmp_path: Path) -> None:
    """The JSL checks a GPU run makes, with CPU standing in for the card: same numbers, so zero error."""
    args = gpu_check.parse_args(["--jsl_size", "tiny", "--jsl_train_samples", "64", "--jsl_epochs", "1",
                                 "--generation_repeats", "2"])  # fmt: skip
    result, checks = {}, []
    gpu_check.jsl_checks(args, tmp_path, "cpu", result, checks)
    by_name = {c.name: c for c in checks}
    assert all(c.status == v.PASS for c in checks), [c.detail for c in checks if c.status != v.PASS]
    assert set(by_name) == {"jsl/cpu_training", "jsl/cuda_fp32_logits", "jsl/cuda_fp32_glosses",
                            "jsl/cuda_generation_speed", "jsl/fp16_saved_on_cpu_logits",
                            "jsl/bf16_saved_on_cpu_logits"}  # fmt: skip
    assert by_name["jsl/cuda_fp32_logits"].figures["relative_error"] == 0.0
    assert set(result["speed"]) == {"cpu", "cuda"} and result["training"]["steps"] == 2
    assert [h["saved_from"] for h in result["half_precision"]] == ["cpu", "cpu"]


def test_random_distilbert_folder_loads_as_the_recipes_load_it(gpu_check, tmp_path: Path) -> None:
    from hftune.models import count_parameters, load_classifier

    texts = ["i feel happy today", "i am so angry about the traffic", "this is a surprise"] * 20
    folder = gpu_check.random_distilbert_folder(texts, 6, tmp_path / "distilbert", vocab_size=500)
    model, tokenizer = load_classifier(str(folder), {i: f"l{i}" for i in range(6)}, attention_dropout=0.0)
    assert type(model).__name__ == "DistilBertForSequenceClassification"
    assert count_parameters(model)[1] == 66_958_086  # DistilBERT-base's shape with a 6-label head
    encoded = tokenizer(["i feel happy"], padding="max_length", max_length=16, return_tensors="pt")
    assert set(encoded) == {"input_ids", "attention_mask"} and tokenizer.pad_token_id == 0
    assert model(**encoded).logits.shape == (1, 6)


def test_a_part_that_raises_becomes_a_failed_check_and_the_run_goes_on(gpu_check, capsys) -> None:
    checks = []
    assert gpu_check.guarded("lora/run", checks, lambda: 1 / 0) is None
    (check,) = checks
    assert check.status == v.FAIL and check.detail.startswith("ZeroDivisionError")
    assert "Traceback" in check.figures["traceback"] and "lora/run raised" in capsys.readouterr().out


def test_an_image_with_an_older_transformers_is_refused_with_the_fix(gpu_check, monkeypatch) -> None:
    from hftune.errors import HftuneError

    real = gpu_check._version_of
    monkeypatch.setattr(
        gpu_check, "_version_of", lambda name: "5.17.0" if name == "transformers" else real(name)
    )
    with pytest.raises(
        HftuneError, match=r"transformers 5\.17\.0 \(needs >= 5\.23\): carry the pinned wheels"
    ):
        gpu_check.check_versions()


def test_markdown_cells_keep_pipes_and_newlines_inside(gpu_check) -> None:
    assert gpu_check._cell("max |diff| / max |ref|\nnext") == "max \\|diff\\| / max \\|ref\\| next"


# --- verdicts on hand-made numbers -------------------------------------------------------------------------------


def test_memory_fraction_caps_a_large_card_at_the_budget() -> None:
    assert v.memory_fraction(6 * GIB, 140 * GIB) == pytest.approx(6 / 140)
    assert v.memory_fraction(6 * GIB, 6 * GIB) == 1.0
    with pytest.raises(ValueError, match="larger than the card"):
        v.memory_fraction(8 * GIB, 6 * GIB)


def test_memory_estimate_check_passes_within_the_tolerance_either_side() -> None:
    assert v.relative_error(110, 100) == pytest.approx(0.10)
    assert v.memory_estimate_check("m", 114 * MIB, 100 * MIB, 0.15).status == v.PASS
    assert v.memory_estimate_check("m", 86 * MIB, 100 * MIB, 0.15).status == v.PASS
    over = v.memory_estimate_check("m", 120 * MIB, 100 * MIB, 0.15)
    under = v.memory_estimate_check("m", 80 * MIB, 100 * MIB, 0.15)
    assert over.status == under.status == v.FAIL
    assert "+20.0% (over" in over.detail and "-20.0% (under" in under.detail


def test_fit_check_counts_the_cuda_context_against_the_budget() -> None:
    common = {"steps_done": 40, "steps_wanted": 40, "budget_bytes": 6 * GIB, "context_bytes": 400 * MIB}
    assert v.fit_check("f", out_of_memory=False, peak_reserved_bytes=5 * GIB, **common).status == v.PASS
    # Under the 6 GiB cap, but a real 6 GB card would also hold the 400 MiB CUDA context.
    tight = v.fit_check("f", out_of_memory=False, peak_reserved_bytes=6 * GIB - 100 * MIB, **common)
    assert tight.status == v.FAIL and "of the 6,144 MiB budget" in tight.detail
    oom = v.fit_check("f", out_of_memory=True, peak_reserved_bytes=None, **{**common, "steps_done": 3})
    assert oom.status == v.FAIL and "out of memory after 3 of 40" in oom.detail
    short = v.fit_check("f", out_of_memory=False, peak_reserved_bytes=GIB, **{**common, "steps_done": 39})
    assert short.status == v.FAIL


def test_finite_loss_check_names_the_first_bad_step() -> None:
    assert v.finite_loss_check("l", [1.8, 1.5, 1.2]).status == v.PASS
    bad = v.finite_loss_check("l", [1.8, float("nan"), float("inf")])
    assert bad.status == v.FAIL and "2 of 3" in bad.detail and "step 2" in bad.detail
    assert v.finite_loss_check("l", []).status == v.FAIL


def test_skipped_steps_check_allows_a_few_fp16_skips_and_none_without_a_scaler() -> None:
    flags = [True, True] + [False] * 38
    assert v.skipped_steps_check("s", flags, "fp16", 0.25).status == v.PASS
    assert v.skipped_steps_check("s", [True] * 11 + [False] * 29, "fp16", 0.25).status == v.FAIL
    assert v.skipped_steps_check("s", [False] * 40, "bf16", 0.25).status == v.PASS
    assert (
        v.skipped_steps_check("s", flags, "fp32", 0.25).status == v.FAIL
    )  # nothing should skip without fp16
    assert v.skipped_steps_check("s", [], "fp16", 0.25).status == v.FAIL


def test_samples_per_second_leaves_the_warmup_steps_out() -> None:
    # step 1 ends at 10 s (slow start), then one step per 0.5 s: 4 steps x 32 samples in 2 s after the warm-up
    ends = [10.0, 10.5, 11.0, 11.5, 12.0]
    assert v.samples_per_second(ends, 32, warmup_steps=0) == pytest.approx(4 * 32 / 2.0)
    assert v.samples_per_second(ends, 32, warmup_steps=1) == pytest.approx(3 * 32 / 1.5)
    assert v.samples_per_second(ends[:2], 32, warmup_steps=1) is None


def test_agreement_and_identical_outputs_checks() -> None:
    assert v.agreement_check("a", 3e-5, 1e-4, "logits").status == v.PASS
    assert v.agreement_check("a", 2e-4, 1e-4, "logits").status == v.FAIL
    assert v.agreement_check("a", float("nan"), 1e-4, "logits").status == v.FAIL
    assert v.identical_outputs_check("g", ["<a>", "<b>"], ["<a>", "<b>"], "glosses").status == v.PASS
    differ = v.identical_outputs_check("g", ["<a>", "<b>", "<c>"], ["<a>", "<x>", "<c>"], "glosses")
    assert differ.status == v.FAIL and differ.figures["first_differences"] == [
        {"index": 1, "reference": "<b>", "other": "<x>"}
    ]
    assert v.identical_outputs_check("g", ["<a>"], [], "glosses").status == v.FAIL


def test_summarize_exits_1_only_when_a_check_failed() -> None:
    checks = [v.Check("a", v.PASS, ""), v.skipped("b", "needs CUDA")]
    assert v.summarize(checks) == {"passed": ["a"], "failed": [], "skipped": ["b"], "exit_code": 0}
    assert v.summarize([*checks, v.failed("c", "broken")])["exit_code"] == 1
