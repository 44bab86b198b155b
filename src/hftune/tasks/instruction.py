"""Instruction tuning of a causal LM: prompt formats, response-only labels, packing, data, generation.

Each example is a prompt and a response. The prompt is the Alpaca template (`--prompt_format alpaca`) or
the tokenizer's chat template (`chat`); prompt and response are tokenised separately and concatenated, so
the prompt tokens seen in training are exactly the ones `generate` sees, and the labels are -100 on every
prompt token: the loss covers the response (and its end-of-sequence token) only.

Over-long examples lose tokens from the start of the prompt, never from the response; an example whose
response alone leaves no room for a prompt token is dropped. Both are counted and printed.

`--packing` concatenates short examples into rows of up to `max_seq_length` tokens. Each row carries
`position_ids` that restart at 0 for every example and no attention mask: transformers then builds a
block-diagonal causal mask (`masking_utils.find_packed_sequence_indices`, eager and SDPA attention), so no
token attends across examples. Models whose attention ignores `position_ids` for masking would let it
cross; the labels stay correct either way (every example starts with a masked prompt token).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hftune.config.checks import check_existing_folder, check_model_kind, check_range, read_json
from hftune.data import read_data_file
from hftune.data.prompts import (
    IGNORE_INDEX,
    JSL_INSTRUCTION,
    PROMPT_FORMATS,
    prompt_ids,
    record_messages,
    response_ids,
)
from hftune.errors import HftuneError
from hftune.jsl.corpus import CORPUS_NAME, load_jsl_corpus
from hftune.methods import METHODS, get_method, lora_target_modules
from hftune.metrics import gloss_metrics
from hftune.models import EMBEDDED_CAUSAL_LM_HUB_ID, count_parameters, embedded_causal_lm_path, hub_load_error
from hftune.reporting.plots import plot_training_curves
from hftune.results import RunRecord, read_results
from hftune.runtime import fail_fast_when_hub_unreachable, log, peft_checkpointing_probe_quiet
from hftune.training.callbacks import MemoryCallback
from hftune.training.lifecycle import claim_run, save_run, trainer_hyperparameters, training_facts
from hftune.training.trainer import AtomicCheckpointTrainer

JSL_DATASET = "jsl"


# --- arguments -------------------------------------------------------------------------------------


@dataclass
class InstructionDataArguments:
    dataset_name: str | None = field(
        default=JSL_DATASET,
        metadata={
            "help": f"Hub dataset id with instruction/input/output or messages columns, or `{JSL_DATASET}` "
            "(embedded: Japanese -> JSL gloss translation from the hftune corpus). Ignored with --train_file."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration name."}
    )
    train_file: str | None = field(
        default=None,
        metadata={"help": "Local json/jsonl of records: instruction, optional input, output; or messages."},
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Local validation file. Without one, 10%% of the training data is held out."},
    )
    test_file: str | None = field(
        default=None,
        metadata={"help": "Local held-out file for the final generation scores (else validation)."},
    )
    prompt_format: str = field(
        default="alpaca",
        metadata={
            "help": "alpaca: the `### Instruction / ### Input / ### Response` template; chat: the tokenizer's "
            "chat template with the user turn = instruction + input and the assistant turn = output.",
            "choices": list(PROMPT_FORMATS),
        },
    )
    max_seq_length: int = field(
        default=256,
        metadata={
            "help": "Longest example in tokens. Longer ones lose the start of the prompt; an example whose "
            "response alone does not fit is dropped. Both are counted and printed."
        },
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "Pack several short training examples into each row of max_seq_length tokens; attention "
            "stays within each example (position_ids restart per example)."
        },
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Use at most this many training examples (a seeded random subset); -1: all of them."
        },
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Use at most this many validation and held-out examples (seeded random subsets); -1: all."
        },
    )


@dataclass
class InstructionArguments:
    method: str = field(
        default="lora",
        metadata={
            "help": "lora: train low-rank adapters (with --load_in_4bit: QLoRA); full: train every weight.",
            "choices": ["lora", "full"],
        },
    )
    merge: bool = field(
        default=False,
        metadata={"help": "Also save the base model with the adapter merged in, under merged/."},
    )
    max_new_tokens: int = field(
        default=96, metadata={"help": "Generation length cap for the held-out scores."}
    )
    generation_batch_size: int = field(
        default=16, metadata={"help": "Prompts per generate() call (left-padded) for the held-out scores."}
    )


# --- prompts ---------------------------------------------------------------------------------------


# --- examples: masking, truncation, packing ---------------------------------------------------------


@dataclass
class EncodingReport:
    kept: int = 0
    truncated: int = 0  # prompt shortened from the left
    dropped: int = 0  # the response alone did not fit

    def summary(self, split: str, max_seq_length: int) -> str:
        return (
            f"{split}: {self.kept} examples kept, {self.truncated} had their prompt left-truncated and "
            f"{self.dropped} were dropped (response longer than max_seq_length={max_seq_length} allows)"
        )


def build_example(prompt: Sequence[int], response: Sequence[int], max_seq_length: int) -> dict | None:
    """input_ids and labels (-100 on the prompt); the prompt is cut from the left to fit, None if nothing fits."""
    room = max_seq_length - len(response)
    if room < 1:  # at least one prompt token, so the first response token has something to follow
        return None
    prompt = list(prompt)[-room:]
    return {"input_ids": prompt + list(response), "labels": [IGNORE_INDEX] * len(prompt) + list(response)}


def encode_records(
    records, tokenizer, prompt_format: str, max_seq_length: int
) -> tuple[list[dict], EncodingReport]:
    """Encode records (a Dataset or list of dicts) into training examples; the report counts cuts and drops."""
    examples, report = [], EncodingReport()
    for record in records:
        prompt = prompt_ids(record, tokenizer, prompt_format)
        response = response_ids(record, tokenizer, prompt_format)
        example = build_example(prompt, response, max_seq_length)
        if example is None:
            report.dropped += 1
            continue
        report.kept += 1
        report.truncated += len(prompt) + len(response) > max_seq_length
        examples.append(example)
    return examples, report


def pack_examples(examples: Sequence[Mapping[str, list[int]]], max_seq_length: int) -> list[dict]:
    """Concatenate consecutive examples into rows of at most max_seq_length tokens, with per-example position_ids."""
    rows: list[dict] = []
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for example in examples:
        n = len(example["input_ids"])
        if row["input_ids"] and len(row["input_ids"]) + n > max_seq_length:
            rows.append(row)
            row = {"input_ids": [], "labels": [], "position_ids": []}
        row["input_ids"] += example["input_ids"]
        row["labels"] += example["labels"]
        row["position_ids"] += list(range(n))
    if row["input_ids"]:
        rows.append(row)
    return rows


@dataclass
class InstructionCollator:
    """Right-pads a batch: input_ids with the pad id, labels with -100.

    Unpacked rows get an attention mask. Packed rows (with position_ids) get none: their padding is one more
    segment whose positions restart at 0, so the block-diagonal mask keeps it apart.
    """

    pad_token_id: int

    def __call__(self, features: list[Mapping[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        packed = "position_ids" in features[0]
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
        batch["position_ids" if packed else "attention_mask"] = []
        for f in features:
            pad = width - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            if packed:
                batch["position_ids"].append(list(f["position_ids"]) + list(range(pad)))
            else:
                batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


# --- training loss ---------------------------------------------------------------------------------


def response_only_loss(model, inputs: Mapping[str, torch.Tensor], num_items_in_batch=None, output_layer=None):
    """(loss, outputs) of a causal LM whose output layer runs on the response positions only.

    The same loss as the model's own (cross-entropy of each labelled next token, summed over the batch and
    divided by `num_items_in_batch` when Trainer counts tokens across accumulated batches, else averaged), but
    the output layer sees only the positions whose next token is labelled: a forward pre-hook picks those rows
    of its input. The logits of a 49k-token vocabulary over every prompt position are most of a small model's
    training memory, and the prompts are most of the tokens. TRL's SFTTrainer does the same by default
    (`loss_type="chunked_nll"`). `outputs.logits` holds those rows only, shape (labelled tokens, vocabulary).
    """
    inputs = dict(inputs)
    targets = inputs.pop("labels")[:, 1:]
    labelled = targets != IGNORE_INDEX
    head = output_layer if output_layer is not None else model.get_output_embeddings()

    def labelled_rows(module, args):
        (hidden,) = args
        return (hidden[:, :-1][labelled],)

    handle = head.register_forward_pre_hook(labelled_rows)
    try:
        outputs = model(**inputs)
    finally:
        handle.remove()
    loss = torch.nn.functional.cross_entropy(outputs.logits.float(), targets[labelled], reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else labelled.sum()
    return loss / torch.as_tensor(denominator, device=loss.device), outputs


class ResponseOnlyLossTrainer(AtomicCheckpointTrainer):
    """Trainer with `response_only_loss` (and the atomic, resumable checkpoints of every hftune recipe)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # num_items_in_batch is only counted when the model takes loss kwargs; Trainer divides the loss by the
        # accumulation steps in the other case, which is then a per-batch mean here, as Trainer expects.
        # The wrapped model runs the forward (DDP's gradient sync needs it); the unwrapped one names the head.
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        loss, outputs = response_only_loss(model, inputs, num_items_in_batch, output_layer=head)
        return (loss, outputs) if return_outputs else loss


def _check_columns(dataset, where: str) -> None:
    columns = set(dataset.column_names)
    if "messages" in columns or {"instruction", "output"} <= columns:
        return
    raise HftuneError(
        f"{where} has columns {sorted(columns)}; instruction data needs `instruction`, optional `input` and "
        "`output` columns, or a `messages` column (list of {role, content})"
    )


def jsl_records(split) -> list[dict]:
    """Corpus rows as Alpaca records: the fixed instruction, the Japanese as input, the glosses as output."""
    return [{"instruction": JSL_INSTRUCTION, "input": row["ja"], "output": row["gloss"]} for row in split]


def load_instruction_splits(args: InstructionDataArguments, seed: int = 42):
    """(DatasetDict with train, validation and maybe test, dataset name for results)."""
    import datasets
    from datasets import Dataset, DatasetDict

    if args.train_file:
        splits = {"train": read_data_file(args.train_file)}
        for name, path in (("validation", args.validation_file), ("test", args.test_file)):
            if path:
                splits[name] = read_data_file(path)
        source = args.train_file
    elif args.validation_file or args.test_file:
        raise HftuneError(
            "--validation_file/--test_file were given without --train_file; pass --train_file too"
        )
    elif args.dataset_name == JSL_DATASET:
        corpus = load_jsl_corpus()
        # train / validation / test; the corpus's `natural` split is scored by the JSL recipe only
        splits = {
            name: Dataset.from_list(jsl_records(corpus[name])) for name in ("train", "validation", "test")
        }
        source = CORPUS_NAME
    elif args.dataset_name:
        fail_fast_when_hub_unreachable(args.dataset_name, kind="dataset")
        try:
            loaded = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
        except Exception as err:  # datasets raises many types for a missing or malformed repo
            raise HftuneError(
                f"dataset {args.dataset_name!r} could not be loaded ({type(err).__name__}: {str(err)[:200]}); "
                "check the Hub id, or use --train_file for local data"
            ) from None
        if "train" not in loaded:
            raise HftuneError(
                f"dataset {args.dataset_name!r} has no 'train' split (it has: {', '.join(loaded)})"
            )
        splits = {"train": loaded["train"]}
        validation = next((n for n in ("validation", "valid", "dev") if n in loaded), None)
        if validation:
            splits["validation"] = loaded[validation]
        if "test" in loaded:
            splits["test"] = loaded["test"]
        source = args.dataset_name
    else:
        raise HftuneError(f"no data given: pass --dataset_name (a Hub id or {JSL_DATASET}) or --train_file")
    for name, split in splits.items():
        _check_columns(split, f"{source} ({name} split)")
    if "validation" not in splits:
        held = splits["train"].train_test_split(test_size=0.1, seed=seed)
        splits["train"], splits["validation"] = held["train"], held["test"]
    splits["train"] = _subset(splits["train"], args.max_train_samples, seed, "--max_train_samples")
    for name in ("validation", "test"):
        if name in splits:
            splits[name] = _subset(splits[name], args.max_eval_samples, seed, "--max_eval_samples")
    return DatasetDict(splits), source


def _subset(split, n: int | None, seed: int, flag: str):
    """A seeded random subset of n rows; None or a negative n keeps every row."""
    if n == 0:
        raise HftuneError(f"{flag} 0 leaves no examples; pass a positive number, or -1 for all of them")
    if n is None or n < 0 or n >= len(split):
        return split
    return split.shuffle(seed=seed).select(range(n))


# --- models ----------------------------------------------------------------------------------------


def load_causal_lm(
    name_or_path: str,
    *,
    tokenizer_name: str | None = None,
    trust_remote_code: bool = False,
    quantization_config=None,
    dtype: torch.dtype | None = torch.float32,
):
    """(model, tokenizer) of a causal LM; the tokenizer gets a pad token (eos) if it has none."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_name or name_or_path, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            trust_remote_code=trust_remote_code,
            quantization_config=quantization_config,
            dtype=dtype,
        )
    except OSError as err:
        raise hub_load_error(name_or_path, err) from None
    if quantization_config is not None:
        _release_weight_file(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _release_weight_file(model) -> None:
    """Copy the unquantised CPU weights (embeddings, norms) out of the memory-mapped safetensors file.

    Quantising reads every weight of the file, and those pages stay resident as long as any tensor still
    points into the mapping: on CPU a QLoRA process would keep the whole fp32 file in memory (measured: 571 MB
    of file pages for SmolLM2-135M, more than its 4-bit weights and LoRA state together). Copies let it go."""
    for param in model.parameters():
        if param.device.type == "cpu" and param.dtype.is_floating_point:
            param.data = param.data.clone()


def load_instruction_model(run_dir: str | Path, *, device: str = "cpu"):
    """(model, tokenizer, run results) of a saved run: an adapter over its base model, or a full model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = Path(run_dir)
    results_path = run_dir / "results.json"
    results = read_results(run_dir).to_dict() if results_path.is_file() else {}
    check_instruction_folder(run_dir, results)
    if (run_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = json.loads((run_dir / "adapter_config.json").read_text(encoding="utf-8"))[
            "base_model_name_or_path"
        ]
        if not Path(base).is_dir() and results.get("base_model_embedded"):
            base = embedded_causal_lm_path()  # the cache moved (another machine or HFTUNE_CACHE)
        model, _ = load_causal_lm(base)
        with peft_checkpointing_probe_quiet():
            model = PeftModel.from_pretrained(model, str(run_dir))
    elif (run_dir / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(run_dir), dtype=torch.float32)
    else:
        raise HftuneError(
            f"{run_dir} holds neither adapter_config.json nor config.json; pass a folder the "
            "instruction_tuning recipe saved (or its merged/ subfolder) to --model"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer, results


def check_instruction_folder(run_dir: Path, results: Mapping[str, Any]) -> None:
    """Refuse a run of another task (a classifier, a JSL model) before its weights are loaded as a causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    fix = "pass a folder recipes/instruction_tuning.py saved (or its merged/ subfolder)"
    task = results.get("task")
    adapter = read_json(run_dir / "adapter_config.json")
    task_type = adapter.get("task_type") if isinstance(adapter, dict) else None
    if (task and task != "instruction-tuning") or (task_type and task_type != "CAUSAL_LM"):
        what = (
            f"a {task} run (method {results.get('method')})"
            if task
            else f"a LoRA adapter (task_type {task_type})"
        )
        raise HftuneError(f"--model {run_dir} is {what}, not an instruction-tuned causal LM; {fix}")
    config = read_json(run_dir / "config.json")
    if adapter is None and isinstance(config, dict):
        check_model_kind(config, "causal-lm", str(run_dir), "--model", MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, fix)


# --- generation ------------------------------------------------------------------------------------


def clean_response(text: str) -> str:
    """The first line of a generated answer with whitespace collapsed: what is scored as glosses."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[0].split()) if lines else ""


@dataclass
class Generations:
    texts: list[str]
    ms_per_sentence: float  # p50 over batches of (batch wall time / batch size)
    sentences_per_second: float


@torch.no_grad()
def generate_responses(
    model,
    tokenizer,
    records: Sequence[Mapping[str, Any]],
    *,
    prompt_format: str = "alpaca",
    max_new_tokens: int = 96,
    batch_size: int = 16,
) -> Generations:
    """Greedy answers to the records' prompts, batched with left padding; timing per sentence."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts: list[str] = []
    per_sentence_ms: list[float] = []
    total_seconds = 0.0
    for start in range(0, len(records), batch_size):
        prompts = [prompt_ids(r, tokenizer, prompt_format) for r in records[start : start + batch_size]]
        width = max(len(p) for p in prompts)
        # Left padding: every prompt ends at the same column, where generation continues.
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        started = time.perf_counter()
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        seconds = time.perf_counter() - started
        total_seconds += seconds
        per_sentence_ms.append(1000 * seconds / len(prompts))
        texts += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return Generations(
        texts=[t.strip() for t in texts],
        ms_per_sentence=statistics.median(per_sentence_ms) if per_sentence_ms else 0.0,
        sentences_per_second=len(records) / total_seconds if total_seconds else 0.0,
    )


def generate_command(argv: list[str]) -> int:
    """`hftune generate --model DIR [--instruction ...] [--input ...] [--max_new_tokens N]`."""
    parser = argparse.ArgumentParser(
        prog="hftune generate", description="Generate with an instruction-tuned model."
    )
    parser.add_argument(
        "--model", required=True, help="Run folder (adapter or full model) or its merged/ folder."
    )
    parser.add_argument(
        "--instruction",
        default=None,
        help="The instruction. Default: the run's own (JSL runs: translate to gloss).",
    )
    parser.add_argument("--input", default="", help="Optional input the instruction applies to.")
    parser.add_argument("--max_new_tokens", type=int, default=96, help="Generation length cap.")
    parser.add_argument(
        "--prompt_format",
        choices=PROMPT_FORMATS,
        default=None,
        help="Default: the format the run was trained with.",
    )
    args = parser.parse_args(argv)
    check_range("max_new_tokens", args.max_new_tokens)
    check_existing_folder(args.model, "--model", "a run folder recipes/instruction_tuning.py saved")
    model, tokenizer, results = load_instruction_model(args.model)
    instruction = args.instruction or results.get("instruction")
    if not instruction:
        raise HftuneError(f"{args.model} records no default instruction; pass --instruction")
    prompt_format = args.prompt_format or results.get("hyperparameters", {}).get("prompt_format", "alpaca")
    record = {"instruction": instruction, "input": args.input, "output": ""}
    generations = generate_responses(
        model,
        tokenizer,
        [record],
        prompt_format=prompt_format,
        max_new_tokens=args.max_new_tokens,
        batch_size=1,
    )
    print(generations.texts[0])
    return 0


# --- the training run ------------------------------------------------------------------------------


def _references(records: Sequence[Mapping[str, Any]]) -> list[str]:
    return [clean_response(record_messages(r)[1]) for r in records]


def run_instruction_tuning(
    model,
    tokenizer,
    splits,
    training_args,
    *,
    data_args: InstructionDataArguments,
    instruct_args: InstructionArguments,
    lora_args,
    method: str,
    decision,
    base_model: str,
    base_model_embedded: bool,
    dataset: str,
) -> dict:
    """Train with Trainer on response-only labels, score greedy generations on the held-out split, save, report."""
    from datasets import Dataset

    artifact = get_method(method).artifact if method in METHODS else "full"
    trainable, total = count_parameters(model)
    log(f"{method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")

    with claim_run(training_args.output_dir) as run:
        encoded = {}
        for name in ("train", "validation"):
            examples, report = encode_records(
                splits[name], tokenizer, data_args.prompt_format, data_args.max_seq_length
            )
            log(report.summary(name, data_args.max_seq_length))
            if not examples:
                raise HftuneError(
                    f"no {name} example fits in --max_seq_length {data_args.max_seq_length}; raise it"
                )
            if name == "train" and data_args.packing:
                examples = pack_examples(examples, data_args.max_seq_length)
                log(
                    f"train: packed {report.kept} examples into {len(examples)} rows of "
                    f"<= {data_args.max_seq_length} tokens"
                )
            encoded[name] = Dataset.from_list(examples)

        memory = MemoryCallback()
        trainer = ResponseOnlyLossTrainer(
            model=model,
            args=training_args,
            train_dataset=encoded["train"],
            eval_dataset=encoded["validation"],
            processing_class=tokenizer,
            data_collator=InstructionCollator(tokenizer.pad_token_id),
            callbacks=[memory],
        )
        # No KV cache while training: it is useless there, and its presence turns off the per-example mask
        # transformers derives from packed position_ids, letting packed examples attend to each other.
        model.config.use_cache = False
        run.training_started()
        started = time.perf_counter()
        train_output = trainer.train(resume_from_checkpoint=run.resume_from)
        train_seconds = time.perf_counter() - started
        validation_loss = trainer.evaluate().get("eval_loss")
        model.config.use_cache = True  # saved with a full model: generation wants the cache
        if not trainer.is_world_process_zero():
            return {}

        eval_split = "test" if "test" in splits else "validation"
        held_out = list(splits[eval_split])
        log(f"generating greedy answers for {len(held_out)} {eval_split} examples ...")
        generations = generate_responses(
            trainer.model,
            tokenizer,
            held_out,
            prompt_format=data_args.prompt_format,
            max_new_tokens=instruct_args.max_new_tokens,
            batch_size=instruct_args.generation_batch_size,
        )
        predictions = [clean_response(text) for text in generations.texts]
        references = _references(held_out)
        metrics = gloss_metrics(predictions, references)

        record = RunRecord(
            task="instruction-tuning",
            method=method,
            artifact=artifact,
            base_model=EMBEDDED_CAUSAL_LM_HUB_ID if base_model_embedded else base_model,
            base_model_path=base_model,
            base_model_embedded=base_model_embedded,
            dataset=dataset,
            language=["ja"] if dataset == CORPUS_NAME else [],
            instruction=JSL_INSTRUCTION if dataset == CORPUS_NAME else None,
            eval_split=eval_split,
            split_sizes={name: len(split) for name, split in splits.items()},
            metrics=metrics,
            validation_loss=validation_loss,
            generation={"num_beams": 1, "max_new_tokens": instruct_args.max_new_tokens},
            generation_latency_ms=round(generations.ms_per_sentence, 2),
            generation_sentences_per_second=round(generations.sentences_per_second, 2),
            **training_facts(
                trainable=trainable,
                total=total,
                train_seconds=train_seconds,
                samples_per_second=train_output.metrics.get("train_samples_per_second"),
                peak_memory_mb=memory.peak_mb,
                seed=training_args.seed,
                decision=decision,
                resume_from=run.resume_from,
            ),
            hyperparameters={
                "prompt_format": data_args.prompt_format,
                "max_seq_length": data_args.max_seq_length,
                "packing": data_args.packing,
                **trainer_hyperparameters(training_args),
                "max_steps": training_args.max_steps,
                "gradient_checkpointing": bool(training_args.activation_checkpointing),
                "max_new_tokens": instruct_args.max_new_tokens,
                **(
                    {
                        "lora_r": lora_args.lora_r,
                        "lora_alpha": lora_args.lora_alpha,
                        "lora_dropout": lora_args.lora_dropout,
                        "lora_target_modules": lora_target_modules(trainer.model, lora_args),
                        "load_in_4bit": lora_args.load_in_4bit,
                    }
                    if artifact == "adapter"
                    else {}
                ),
            },
            log_history=trainer.state.log_history,
        )

        def write_artifacts(folder: Path) -> None:
            # model.save_pretrained, not Trainer.save_model: the latter adds training_args.bin, a pickle.
            trainer.model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            if instruct_args.merge and artifact == "adapter":
                save_merged(folder, base_model, folder / "merged")
            with (folder / "predictions.jsonl").open("w", encoding="utf-8") as handle:
                for row, prediction, reference in zip(held_out, predictions, references, strict=True):
                    line = {
                        "prompt": record_messages(row)[0][-1]["content"],
                        "reference": reference,
                        "prediction": prediction,
                    }
                    handle.write(json.dumps(line, ensure_ascii=False) + "\n")

        def make_plots(folder: Path) -> list[Path | None]:
            return [
                plot_training_curves(trainer.state.log_history, folder / "training_curves.png", metric="loss")
            ]

        save_run(run.output_dir, record, write_artifacts=write_artifacts, make_plots=make_plots)
    log(
        f"{eval_split}: exact match {metrics['exact_match']:.3f}, gloss WER {metrics['gloss_wer']:.3f}, "
        f"{generations.ms_per_sentence:.1f} ms/sentence; saved to {run.output_dir}"
    )
    return record.to_dict()


def save_merged(adapter_dir: Path, base_model: str, out: Path) -> Path:
    """The base model in full precision with the adapter folded in: loads without peft (also after QLoRA)."""
    from peft import PeftModel

    base, tokenizer = load_causal_lm(base_model)
    with peft_checkpointing_probe_quiet():
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
