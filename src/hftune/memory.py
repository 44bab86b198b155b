"""Peak training memory: an estimate per component, and a plan that fits a run to a budget.

The estimate adds four tensor groups, then a margin:
- weights: every parameter at its storage dtype (fp32 master weights under fp16/bf16 mixed precision),
  frozen block `nn.Linear` weights at 4.13 bits (NF4 + double-quantised absmax) or 8 bits + row scales;
- gradients: trainable parameters only, in their dtype;
- optimizer state: AdamW keeps two fp32 moments per trainable parameter; bitsandbytes' 8-bit AdamW keeps
  two 1-byte moments plus one fp32 absmax per 256 values (tensors under 4096 values stay 32-bit);
- activations: the bytes of the tensors autograd saves for backward, *measured* by one small forward and
  backward on CPU under `torch.autograd.graph.saved_tensors_hooks` (deduplicated by storage, parameters
  excluded), at three probe shapes, fitted to `const + batch * (a * seq + b * seq**2)`: the `seq**2` term is
  eager attention's probability matrix, the constant is batch-independent (under autocast: the half-precision
  weight copies saved for backward). Mixed precision is measured under CPU bf16 autocast, which stores the
  same 2-byte tensors as CUDA fp16 autocast.
Then: on CUDA a fixed 400 MiB for the CUDA context and cuBLAS workspace (0.3-0.5 GB on consumer cards; it
is outside `torch.cuda.max_memory_allocated` but inside `nvidia-smi`), and a 10% margin on the tensors for
allocator fragmentation and transient buffers during backward.

Not modelled: the caching allocator's reserved-but-free pool (nvidia-smi shows it; it is why a run that
allocates 1.5 GB can show 4-5 GB), data loader workers, and evaluation with large generation batches.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hftune.config.checks import check_range, parse_size
from hftune.errors import HftuneError
from hftune.hardware import decide_precision, detect_hardware
from hftune.methods import METHODS, PlanSettings, get_method, method_for_recipe
from hftune.models import embedded_encoder_path

GIB = 2**30
MIB = 2**20
CUDA_CONTEXT_BYTES = 400 * MIB
SAFETY_MARGIN = 0.10
OPTIMIZERS = ("adamw", "adamw_8bit")
# TrainingArguments.optim value for each optimizer choice.
TRAINER_OPTIM = {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit"}
_BNB_MIN_8BIT_SIZE = 4096
_BNB_BLOCKSIZE = 256
# NF4: 4 bits per weight + absmax per 64-weight block, itself quantised to 8 bits with an fp32 absmax per 256.
_NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)


def format_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GB" if n >= GIB else f"{n / MIB:.0f} MB"


# ----------------------------------------------------------------------------------------------------
# Activations: measured with saved-tensor hooks
# ----------------------------------------------------------------------------------------------------


def _dummy_batch(model: nn.Module, batch: int, seq: int) -> dict[str, torch.Tensor]:
    config = model.config
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (batch, seq), generator=generator).to(device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(config, "is_encoder_decoder", False) or _is_causal_lm(model):
        inputs["labels"] = ids.clone()
    else:
        inputs["labels"] = torch.zeros(batch, dtype=torch.long, device=device)
    return inputs


def _is_causal_lm(model: nn.Module) -> bool:
    names = [type(model).__name__, *(getattr(model.config, "architectures", None) or [])]
    base = getattr(model, "get_base_model", None)
    if base is not None:
        names.append(type(base()).__name__)
    return any(name.endswith("ForCausalLM") for name in names)


def saved_activation_bytes(model: nn.Module, batch: int, seq: int, precision: str = "fp32") -> int:
    """Bytes autograd keeps for backward in one training forward at (batch, seq); runs the backward too."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs:
            seen.setdefault(ptr, storage.nbytes())
        return tensor

    was_training = model.training
    model.train()
    inputs = _dummy_batch(model, batch, seq)
    mixed = precision in ("fp16", "bf16")
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed),
    ):
        loss = model(**inputs).loss
    if loss.requires_grad:
        loss.backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return sum(seen.values())


@dataclass
class ActivationProfile:
    """Saved-activation bytes = const + batch * (per_token * seq + per_token_seq * seq**2)."""

    const_bytes: float
    per_token_bytes: float
    per_token_seq_bytes: float
    num_layers: int
    hidden_size: int
    element_bytes: int
    probes: dict[str, int] = field(default_factory=dict)

    def bytes_for(self, batch: int, seq: int, gradient_checkpointing: bool = False) -> float:
        per_sample = self.per_token_bytes * seq + self.per_token_seq_bytes * seq**2
        if not gradient_checkpointing:
            return self.const_bytes + batch * per_sample
        # Checkpointing keeps each layer's input plus one layer's full activations while it is recomputed.
        layers = max(self.num_layers, 1)
        boundaries = layers * seq * self.hidden_size * self.element_bytes
        return self.const_bytes + batch * (per_sample / layers + boundaries)


def _layer_count_and_hidden(config) -> tuple[int, int]:
    layers = next(
        (
            getattr(config, k)
            for k in ("num_hidden_layers", "n_layers", "num_layers", "n_layer")
            if hasattr(config, k)
        ),
        1,
    )
    hidden = next(
        (getattr(config, k) for k in ("hidden_size", "dim", "d_model", "n_embd") if hasattr(config, k)), 0
    )
    return int(layers), int(hidden)


def measure_activation_profile(
    model: nn.Module, precision: str = "fp32", probe_seq: int = 32
) -> ActivationProfile:
    """Measure saved bytes at (1, s), (2, s), (1, 2s) and solve for the constant, linear and seq**2 terms."""
    if any(p.is_meta for p in model.parameters()):
        raise HftuneError(
            "the activation probe needs real tensors but the model is on the meta device; build it on CPU "
            "(random init is fine) or pass activation_bytes_per_token."
        )
    s = probe_seq
    m11 = saved_activation_bytes(model, 1, s, precision)
    m21 = saved_activation_bytes(model, 2, s, precision)
    m12 = saved_activation_bytes(model, 1, 2 * s, precision)
    per_sample_s = m21 - m11
    const = max(m11 - per_sample_s, 0)
    per_sample_2s = m12 - const
    quad = max((per_sample_2s - 2 * per_sample_s) / (2 * s * s), 0.0)
    linear = max((per_sample_s - quad * s * s) / s, 0.0)
    layers, hidden = _layer_count_and_hidden(model.config)
    return ActivationProfile(
        const_bytes=const,
        per_token_bytes=linear,
        per_token_seq_bytes=quad,
        num_layers=layers,
        hidden_size=hidden,
        element_bytes=2 if precision in ("fp16", "bf16") else 4,
        probes={f"b1_s{s}": m11, f"b2_s{s}": m21, f"b1_s{2 * s}": m12},
    )


# ----------------------------------------------------------------------------------------------------
# The estimate
# ----------------------------------------------------------------------------------------------------


# Module names of task heads: trained by every method, never quantised.
HEAD_NAMES = frozenset({"lm_head", "classifier", "pre_classifier", "score", "qa_outputs"})


def _quantizable_weight_names(model: nn.Module) -> dict[str, int]:
    """Frozen block `nn.Linear` weights bitsandbytes would quantise -> their in_features."""
    names = {}
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or "lora_" in name:
            continue
        if any(part in HEAD_NAMES for part in name.split(".")):
            continue
        if not module.weight.requires_grad:
            names[f"{name}.weight"] = module.in_features
    return names


@dataclass
class MemoryEstimate:
    weights_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    activations_bytes: float
    overhead_bytes: float
    margin_bytes: float
    total_params: int
    trainable_params: int
    settings: dict = field(default_factory=dict)

    @property
    def tensors_bytes(self) -> float:
        """Weights + gradients + optimizer state + activations: the figure the CPU measurement checks."""
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes + self.activations_bytes

    @property
    def total_bytes(self) -> float:
        return self.tensors_bytes + self.overhead_bytes + self.margin_bytes

    def table(self) -> str:
        s = self.settings
        rows = [
            (
                "weights",
                self.weights_bytes,
                f"{self.total_params / 1e6:.1f}M params, {s.get('weights_note', '')}",
            ),
            ("gradients", self.gradients_bytes, f"{self.trainable_params / 1e6:.2f}M trainable params"),
            ("optimizer state", self.optimizer_bytes, s.get("optimizer", "")),
            ("activations", self.activations_bytes, s.get("activations_note", "")),
            (
                "CUDA context",
                self.overhead_bytes,
                "cuBLAS workspace + context" if self.overhead_bytes else "n/a",
            ),
            ("safety margin", self.margin_bytes, f"{SAFETY_MARGIN:.0%} of tensors"),
        ]
        lines = [f"{'component':<16} {'memory':>10}  note", "-" * 72]
        lines += [f"{name:<16} {format_bytes(value):>10}  {note}" for name, value, note in rows]
        lines += ["-" * 72, f"{'peak estimate':<16} {format_bytes(self.total_bytes):>10}"]
        return "\n".join(lines)


def estimate_training_memory(
    model: nn.Module,
    *,
    batch_size: int,
    seq_len: int,
    trainable_only: bool = True,
    optimizer: str = "adamw",
    precision: str = "fp32",
    quantization: str | None = None,
    gradient_checkpointing: bool = False,
    activation_bytes_per_token: float | None = None,
    activation_profile: ActivationProfile | None = None,
    device: str = "cpu",
) -> MemoryEstimate:
    """Estimate peak training memory of `model` as prepared for training (frozen / LoRA / BitFit applied).

    `trainable_only=False` counts gradients and optimizer state for every parameter (full fine-tuning).
    Activations come from `activation_bytes_per_token` (x batch x seq) if given, else from
    `activation_profile`, else a fresh `measure_activation_profile(model, precision)`.
    """
    if optimizer not in OPTIMIZERS:
        raise HftuneError(f"optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}.")
    quantized = _quantizable_weight_names(model) if quantization else {}
    weights = grads = opt_state = 0.0
    total = trainable = 0
    for name, param in model.named_parameters():
        n = param.numel()
        total += n
        if name in quantized:
            weights += n * _NF4_BYTES_PER_PARAM if quantization == "4bit" else n + 4 * n / quantized[name]
        else:
            weights += n * param.element_size()
        if not (param.requires_grad or not trainable_only):
            continue
        trainable += n
        grads += n * param.element_size()
        if optimizer == "adamw" or n < _BNB_MIN_8BIT_SIZE:
            opt_state += 2 * n * param.element_size()
        else:
            opt_state += 2 * (n + 4 * math.ceil(n / _BNB_BLOCKSIZE))
    if activation_bytes_per_token is not None:
        activations = activation_bytes_per_token * batch_size * seq_len
        act_note = f"{activation_bytes_per_token:.0f} B/token given"
    else:
        profile = activation_profile or measure_activation_profile(model, precision)
        activations = profile.bytes_for(batch_size, seq_len, gradient_checkpointing)
        if quantization and profile.element_bytes == 2:
            # The probe ran unquantised under autocast, saving a 2-byte copy of each frozen linear weight;
            # bitsandbytes' 4/8-bit matmuls dequantise again in backward instead of saving one.
            copies = sum(p.numel() * 2 for n, p in model.named_parameters() if n in quantized)
            activations -= min(copies, profile.const_bytes)
        act_note = f"measured, batch {batch_size} x seq {seq_len}" + (
            ", checkpointed" if gradient_checkpointing else ""
        )
    overhead = CUDA_CONTEXT_BYTES if device == "cuda" else 0
    tensors = weights + grads + opt_state + activations
    weights_note = f"{quantization} block linears" if quantization else "fp32 master weights"
    return MemoryEstimate(
        weights_bytes=weights,
        gradients_bytes=grads,
        optimizer_bytes=opt_state,
        activations_bytes=activations,
        overhead_bytes=overhead,
        margin_bytes=SAFETY_MARGIN * tensors,
        total_params=total,
        trainable_params=trainable,
        settings={
            "batch_size": batch_size,
            "seq_len": seq_len,
            "precision": precision,
            "quantization": quantization,
            "optimizer": "AdamW 8-bit (bitsandbytes)"
            if optimizer == "adamw_8bit"
            else "AdamW, 2 fp32 moments",
            "gradient_checkpointing": gradient_checkpointing,
            "device": device,
            "weights_note": weights_note,
            "activations_note": act_note,
        },
    )


# ----------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------


@dataclass
class MemoryPlan:
    budget_bytes: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    optim: str  # a TrainingArguments.optim value
    estimate: MemoryEstimate
    requested_estimate: MemoryEstimate
    reasons: list[str] = field(default_factory=list)

    @property
    def effective_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    def summary(self) -> str:
        return (
            f"per_device_train_batch_size={self.per_device_train_batch_size} "
            f"gradient_accumulation_steps={self.gradient_accumulation_steps} "
            f"gradient_checkpointing={self.gradient_checkpointing} optim={self.optim}: "
            f"{format_bytes(self.estimate.total_bytes)} of {format_bytes(self.budget_bytes)}"
        )


def _batch_candidates(effective: int) -> list[int]:
    powers = {2**k for k in range(int(math.log2(effective)) + 1)}
    return sorted(powers | {effective}, reverse=True)


def plan_for_budget(
    model: nn.Module,
    *,
    budget_bytes: int,
    batch_size: int,
    gradient_accumulation_steps: int = 1,
    seq_len: int,
    precision: str = "fp32",
    quantization: str | None = None,
    device: str = "cuda",
    optimizer: str = "adamw",
    allow_8bit_optimizer: bool = True,
    activation_profile: ActivationProfile | None = None,
    budget_flag: str = "--budget",
) -> MemoryPlan:
    """Largest per-device batch that fits, accumulation keeping the effective batch, then checkpointing
    and the 8-bit optimizer only if no batch fits without them. `budget_flag` is named in the error."""
    if batch_size < 1 or gradient_accumulation_steps < 1:
        raise HftuneError(
            f"batch size {batch_size} x accumulation {gradient_accumulation_steps} must both be >= 1."
        )
    profile = activation_profile or measure_activation_profile(model, precision)
    effective = batch_size * gradient_accumulation_steps

    def estimate(batch: int, ckpt: bool, optim: str) -> MemoryEstimate:
        return estimate_training_memory(
            model,
            batch_size=batch,
            seq_len=seq_len,
            optimizer=optim,
            precision=precision,
            quantization=quantization,
            gradient_checkpointing=ckpt,
            activation_profile=profile,
            device=device,
        )

    requested = estimate(batch_size, False, optimizer)
    stages = [(False, optimizer, [])]
    stages.append((True, optimizer, ["gradient checkpointing on: no batch fits without it"]))
    if optimizer != "adamw_8bit" and allow_8bit_optimizer and device != "mps":
        stages.append(
            (True, "adamw_8bit", ["gradient checkpointing on", "8-bit AdamW: optimizer state too large"])
        )
    for ckpt, optim, stage_reasons in stages:
        for batch in _batch_candidates(effective):
            est = estimate(batch, ckpt, optim)
            if est.total_bytes > budget_bytes:
                continue
            accum = math.ceil(effective / batch)
            reasons = [
                f"requested {batch_size} x {gradient_accumulation_steps} needs {format_bytes(requested.total_bytes)}"
                f" of {format_bytes(budget_bytes)}: {'fits' if requested.total_bytes <= budget_bytes else 'does not fit'}",
                f"largest per-device batch that fits: {batch}, accumulation {accum} "
                f"(effective batch {batch * accum}, requested {effective})",
                *stage_reasons,
            ]
            return MemoryPlan(budget_bytes, batch, accum, ckpt, TRAINER_OPTIM[optim], est, requested, reasons)
    smallest = estimate(1, stages[-1][0], stages[-1][1]).total_bytes
    raise HftuneError(
        f"budget {format_bytes(budget_bytes)} is too small: even batch 1 with gradient checkpointing"
        f"{' and 8-bit AdamW' if stages[-1][1] == 'adamw_8bit' else ''} needs {format_bytes(smallest)}; "
        f"use {budget_flag} {math.ceil(smallest / GIB * 10) / 10}GB or more, or a lighter --method (lora, qlora)."
    )


def plan_for_training_args(
    model: nn.Module, training_args, budget: str | int, decision, *, seq_len: int = 128
) -> MemoryPlan:
    """The plan for a recipe's `--memory_budget`: the model as prepared for training (its real dtypes,
    quantisation and trainable parameters), the batch, accumulation and optimizer of `training_args`, and
    the device and precision of the hardware `decision` (`hftune.hardware.PrecisionDecision`)."""
    budget_bytes = parse_size(budget, "--memory_budget") if isinstance(budget, str) else int(budget)
    optim = str(getattr(training_args.optim, "value", training_args.optim))
    # Other optimizers (SGD, Adafactor) keep at most AdamW's two moments: planning with AdamW is an upper bound.
    optimizer = "adamw_8bit" if "8bit" in optim else "adamw"
    plan = plan_for_budget(
        model,
        budget_bytes=budget_bytes,
        batch_size=training_args.per_device_train_batch_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        seq_len=seq_len,
        precision=decision.precision,
        # An already quantised model's parameters are counted at their real storage size.
        quantization=None,
        device=decision.device,
        optimizer=optimizer,
        budget_flag="--memory_budget",
    )
    if plan.optim == TRAINER_OPTIM[optimizer]:
        plan.optim = optim  # the plan did not need another optimizer: keep the user's exact choice
    return plan


def apply_memory_budget(training_args, plan: MemoryPlan):
    """Write the plan into a `TrainingArguments` (in place) and return it."""
    from transformers.training_args import OptimizerNames

    training_args.per_device_train_batch_size = plan.per_device_train_batch_size
    training_args.gradient_accumulation_steps = plan.gradient_accumulation_steps
    # transformers 5 reads `activation_checkpointing`; `gradient_checkpointing` is its deprecated mirror.
    training_args.activation_checkpointing = plan.gradient_checkpointing
    training_args.gradient_checkpointing = plan.gradient_checkpointing
    if plan.gradient_checkpointing:
        # Reentrant checkpointing gives zero gradients with frozen embeddings or LoRA (peft#1142).
        training_args.activation_checkpointing_kwargs = {"use_reentrant": False}
        training_args.gradient_checkpointing_kwargs = {"use_reentrant": False}
    training_args.optim = OptimizerNames(plan.optim)
    return training_args


# ----------------------------------------------------------------------------------------------------
# Building a model shape without weights, applying a method for planning
# ----------------------------------------------------------------------------------------------------


def _distilbert_config():
    from transformers import DistilBertConfig

    return DistilBertConfig()


def _smollm2_135m_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
    )


# Shapes planned offline without fetching a config from the Hub.
KNOWN_SHAPES: dict[str, Callable] = {
    "distilbert-base-uncased": _distilbert_config,
    "distilbert/distilbert-base-uncased": _distilbert_config,
    "HuggingFaceTB/SmolLM2-135M": _smollm2_135m_config,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _smollm2_135m_config,
}


def model_from_config(
    model_name_or_path: str | None, task: str | None = None, num_labels: int = 2
) -> nn.Module:
    """A randomly initialised model with the shape of `model_name_or_path` (no weights are read)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    name = model_name_or_path or embedded_encoder_path()
    if name in KNOWN_SHAPES:
        config = KNOWN_SHAPES[name]()
    else:
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise HftuneError(
                f"--model_name_or_path {name!r}: no config found ({type(err).__name__}); pass a local model "
                f"folder or one of {', '.join(KNOWN_SHAPES)}."
            ) from None
    causal = task == "causal-lm" or (
        task is None and any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    )
    torch.manual_seed(0)
    if causal:
        return AutoModelForCausalLM.from_config(config)
    config.num_labels = num_labels
    return AutoModelForSequenceClassification.from_config(config)


def prepare_for_method(
    model: nn.Module,
    method: str,
    freeze_layers: int | None = None,
    lora_r: int = 8,
    lora_target_modules: list[str] | None = None,
) -> nn.Module:
    """Set `requires_grad` (or wrap with LoRA) with the method's registered plan function, which applies the
    recipes' own method code, so the plan counts exactly what the run will train. `freeze` defaults to the
    embeddings plus the lower half of the layers."""
    registered = get_method(method)
    settings = PlanSettings(
        freeze_layers=freeze_layers,
        lora_r=lora_r,
        lora_target_modules=lora_target_modules,
        causal_lm=_is_causal_lm(model),
    )
    return registered.plan(model, settings)


# ----------------------------------------------------------------------------------------------------
# `hftune plan`
# ----------------------------------------------------------------------------------------------------

_PLAN_KEYS = {
    "model_name_or_path": str,
    "method": str,
    "per_device_train_batch_size": int,
    "max_seq_length": int,
    "gradient_accumulation_steps": int,
    "freeze_layers": int,
    "load_in_4bit": bool,
    "load_in_8bit": bool,
    "lora_r": int,
    "precision": str,
    "optim": str,
}


def _settings_from_target(target: str) -> dict:
    """A YAML config with recipe flag names, or a recipe .py (its defaults; the method from its name)."""
    import yaml

    path = Path(target)
    if not path.is_file():
        raise HftuneError(f"plan target {target!r} does not exist; pass a recipe .py or a config .yaml.")
    if path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise HftuneError(
                f"{target} is not valid YAML ({err.__class__.__name__}); fix the file."
            ) from None
        if not isinstance(data, dict):
            raise HftuneError(f"{target} must hold a mapping of recipe flags, not {type(data).__name__}.")
        settings = {}
        for key, kind in _PLAN_KEYS.items():
            if data.get(key) is not None:
                settings[key] = kind(data[key])
        return settings
    if path.suffix == ".py":
        registered = method_for_recipe(path)
        return {"method": registered.name} if registered else {}
    raise HftuneError(f"plan target {target!r} must be a .yaml config or a recipe .py file.")


def plan_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hftune plan", description="Estimate peak training memory; fit a budget."
    )
    parser.add_argument("target", help="recipe .py or config .yaml (keys use the recipe flag names)")
    parser.add_argument("--budget", required=True, help="memory budget per device, e.g. 6GB")
    parser.add_argument(
        "--device", choices=("cuda", "mps", "cpu"), help="device to plan for (default: this one)"
    )
    parser.add_argument("--model_name_or_path", help="Hub id, local folder or known shape (weights not read)")
    parser.add_argument("--method", choices=[m for m in METHODS if METHODS[m].plan is not None])
    parser.add_argument(
        "--batch_size", "--per_device_train_batch_size", dest="per_device_train_batch_size", type=int
    )
    parser.add_argument("--max_seq_length", type=int)
    parser.add_argument("--gradient_accumulation_steps", type=int)
    parser.add_argument(
        "--freeze_layers", type=int, help="freeze method: embeddings + this many lower layers"
    )
    parser.add_argument("--lora_r", type=int)
    parser.add_argument("--load_in_4bit", action="store_true", default=None)
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"))
    parser.add_argument("--optim", choices=OPTIMIZERS)
    args = parser.parse_args(argv)

    budget = parse_size(args.budget)
    settings = _settings_from_target(args.target)
    settings.update({k: v for k, v in vars(args).items() if v is not None and k in _PLAN_KEYS})
    for name in ("per_device_train_batch_size", "max_seq_length", "gradient_accumulation_steps", "lora_r"):
        check_range(name, settings.get(name))
    method = settings.get("method", "lora")
    quantization = "4bit" if settings.get("load_in_4bit") else get_method(method).quantization
    quantization = quantization or ("8bit" if settings.get("load_in_8bit") else None)
    hw = detect_hardware()
    device = args.device or hw.device_type
    precision = settings.get("precision", "auto")
    if precision == "auto":
        # Only this machine's own device can be probed; fp16 and bf16 store the same 2-byte tensors.
        precision = decide_precision(hw).precision if device == hw.device_type else "fp16"

    model = model_from_config(settings.get("model_name_or_path"))
    model = prepare_for_method(model, method, settings.get("freeze_layers"), settings.get("lora_r", 8))
    plan = plan_for_budget(
        model,
        budget_bytes=budget,
        batch_size=settings.get("per_device_train_batch_size", 8),
        gradient_accumulation_steps=settings.get("gradient_accumulation_steps", 1),
        seq_len=settings.get("max_seq_length", 128),
        precision=precision,
        quantization=quantization,
        device=device,
        optimizer=settings.get("optim", "adamw"),
    )
    req = plan.requested_estimate.settings
    print(
        f"hftune plan: {type(model).__name__} ({settings.get('model_name_or_path') or 'embedded MiniLM'}), "
        f"method {method}, {device}, {precision}{', ' + quantization if quantization else ''}"
    )
    print(f"\nrequested setting: batch {req['batch_size']} x seq {req['seq_len']}")
    print(plan.requested_estimate.table())
    print(f"\nplan for {format_bytes(budget)}: {plan.summary()}")
    for reason in plan.reasons:
        print(f"  - {reason}")
    if plan.estimate.settings != plan.requested_estimate.settings:
        print(plan.estimate.table())
    return 0
