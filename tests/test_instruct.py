"""Instruction tuning: templates, response-only labels, truncation, packing, LoRA/QLoRA training, reload, CLI.

The real SmolLM2 tokenizer everywhere (prompt rendering and masking depend on it). Mechanics that any causal
LM shows (packing masks, padded generation, gradients, QLoRA, the recipe's plumbing) use a tiny random Llama
with that tokenizer; one fixture trains LoRA on the real SmolLM2-135M-Instruct weights (converted once into
the hftune cache: ~30 s the first time).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hftune.config import LoraArguments
from hftune.data.prompts import IGNORE_INDEX, JSL_INSTRUCTION, prompt_ids, render_alpaca_prompt, response_ids
from hftune.errors import HftuneError
from hftune.methods import apply_lora
from hftune.tasks.instruction import (
    InstructionCollator,
    InstructionDataArguments,
    build_example,
    clean_response,
    encode_records,
    generate_command,
    generate_responses,
    jsl_records,
    load_causal_lm,
    load_instruction_model,
    load_instruction_splits,
    pack_examples,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

PAIRS = [
    ("祖母は毎日走りませんでした。", "<毎日> <祖母> <走る> <ない>"),
    ("今日お茶をのみません", "<今日> <お茶> <飲む> <ない>"),
    ("弟はお菓子をもうつくった。", "<弟> <お菓子> <作る> <終わる>"),
    ("ありがとう", "<ありがとう>"),
    ("わたしはたべます", "<私> <食べる>"),
    ("明日学校に行きますか", "<明日> <学校> <行く> <?>"),
    ("母は本を読みました", "<母> <本> <読む> <終わる>"),
    ("あなたの名前は何ですか", "<あなた> <名前> <何>"),
]
SHORT = 32  # tokens: keeps training tests fast; prompts are left-truncated, responses kept whole
RECORDS = jsl_records([{"ja": ja, "gloss": gloss} for ja, gloss in PAIRS])


@pytest.fixture(scope="session")
def smollm_path() -> str:
    from hftune.models import embedded_causal_lm_path

    return embedded_causal_lm_path()


@pytest.fixture(scope="session")
def tokenizer(smollm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_path)


@pytest.fixture(scope="session")
def tiny(tokenizer):
    """A 2-layer random Llama over the real SmolLM2 vocabulary.

    Untied embeddings: a random model with tied ones mostly repeats its input's last token (here the newline
    ending the prompt), so its greedy answers would be empty and compare nothing.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_dir(tiny, tokenizer, tmp_path_factory) -> Path:
    """The tiny model saved as a normal HF folder: what `--model_name_or_path` and QLoRA loading read."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _lora(model, **overrides):
    args = LoraArguments(lora_r=8, lora_alpha=16, lora_dropout=0.0,
                         lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], **overrides)  # fmt: skip
    return apply_lora(model, args, task_type="CAUSAL_LM")


def _batch(tokenizer, records, prompt_format="alpaca", max_seq_length=256):
    examples, _ = encode_records(records, tokenizer, prompt_format, max_seq_length)
    return InstructionCollator(tokenizer.pad_token_id)(examples)


def _train_steps(model, batch, steps, lr=1e-3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


# --- templates and masking -------------------------------------------------------------------------


def test_alpaca_template_is_the_issue_template():
    assert render_alpaca_prompt("Translate", "ありがとう") == (
        "### Instruction:\nTranslate\n\n### Input:\nありがとう\n\n### Response:\n"
    )
    assert render_alpaca_prompt("Say hi", "") == "### Instruction:\nSay hi\n\n### Response:\n"
    assert render_alpaca_prompt("Say hi", "  ") == "### Instruction:\nSay hi\n\n### Response:\n"


def test_chat_format_uses_the_tokenizer_template(tokenizer):
    record = {"instruction": "Translate", "input": "ありがとう", "output": "<ありがとう>"}
    user = [{"role": "user", "content": "Translate\n\nありがとう"}]
    expected_prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(prompt_ids(record, tokenizer, "chat")) == expected_prompt
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": "<ありがとう>"}], tokenize=False
    )
    assert expected_prompt + tokenizer.decode(response_ids(record, tokenizer, "chat")) == full
    # A messages record renders the same way.
    messages = {"messages": [*user, {"role": "assistant", "content": "<ありがとう>"}]}
    assert prompt_ids(messages, tokenizer, "chat") == prompt_ids(record, tokenizer, "chat")


@pytest.mark.parametrize("prompt_format", ["alpaca", "chat"])
def test_labels_mask_every_prompt_token(tokenizer, prompt_format):
    record = RECORDS[0]
    prompt = prompt_ids(record, tokenizer, prompt_format)
    response = response_ids(record, tokenizer, prompt_format)
    example = build_example(prompt, response, max_seq_length=512)
    assert example["input_ids"] == prompt + response
    for position, (token, label) in enumerate(zip(example["input_ids"], example["labels"], strict=True)):
        if position < len(prompt):
            assert label == IGNORE_INDEX, (
                f"prompt token {position} ({tokenizer.decode([token])!r}) is trained on"
            )
        else:
            assert label == token, f"response token {position} ({tokenizer.decode([token])!r}) is masked"
    trained = [label for label in example["labels"] if label != IGNORE_INDEX]
    assert tokenizer.decode(trained).startswith(record["output"])
    assert tokenizer.eos_token_id in trained  # the model learns to stop
    assert record["input"] in tokenizer.decode(prompt)


def test_messages_record_with_alpaca_format_and_multi_turn_refusal(tokenizer):
    single = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    assert tokenizer.decode(prompt_ids(single, tokenizer, "alpaca")) == render_alpaca_prompt("Hi")
    multi = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}  # fmt: skip
    with pytest.raises(HftuneError, match="prompt_format chat"):
        prompt_ids(multi, tokenizer, "alpaca")
    with pytest.raises(HftuneError, match="last message must be the assistant"):
        response_ids({"messages": multi["messages"][:-1]}, tokenizer, "chat")


def test_overlong_examples_lose_prompt_tokens_from_the_left_and_are_counted(tokenizer):
    record = RECORDS[0]
    prompt = prompt_ids(record, tokenizer, "alpaca")
    response = response_ids(record, tokenizer, "alpaca")
    limit = len(response) + 5
    example = build_example(prompt, response, limit)
    assert len(example["input_ids"]) == limit
    assert example["input_ids"] == prompt[-5:] + response  # the prompt's tail ("### Response:\n") survives
    assert example["labels"][5:] == response  # the response is never cut
    assert build_example(prompt, response, len(response)) is None  # no room for a prompt token

    long_answer = {"instruction": "x", "input": "", "output": "<長い> " * 200}
    examples, report = encode_records([*RECORDS[:3], long_answer], tokenizer, "alpaca", max_seq_length=limit)
    assert (report.kept, report.dropped) == (3, 1)
    assert report.truncated == sum(
        len(prompt_ids(r, tokenizer, "alpaca")) + len(response_ids(r, tokenizer, "alpaca")) > limit
        for r in RECORDS[:3]
    )
    assert report.truncated >= 1
    assert all(len(e["input_ids"]) <= limit for e in examples)
    assert "1 were dropped" in report.summary("train", limit)


def test_collator_pads_labels_with_ignore_index(tokenizer):
    examples, _ = encode_records(RECORDS[:3], tokenizer, "alpaca", 256)
    batch = InstructionCollator(tokenizer.pad_token_id)(examples)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["labels"][row, :n].tolist() == example["labels"]


@torch.no_grad()
def test_packed_examples_do_not_attend_to_each_other(tiny, tokenizer):
    examples, _ = encode_records(RECORDS[:3], tokenizer, "alpaca", 256)
    rows = pack_examples(examples, max_seq_length=2 * max(len(e["input_ids"]) for e in examples))
    assert len(rows) < len(examples)
    first = rows[0]
    lengths = [len(e["input_ids"]) for e in examples[: first["position_ids"].count(0)]]
    assert len(lengths) >= 2
    assert first["labels"] == sum((e["labels"] for e in examples[: len(lengths)]), [])

    batch = InstructionCollator(tokenizer.pad_token_id)([first])
    assert "attention_mask" not in batch
    packed_logits = tiny(**batch, use_cache=False).logits[0]
    second = torch.tensor([examples[1]["input_ids"]])
    alone = tiny(input_ids=second).logits[0]
    start = lengths[0]
    torch.testing.assert_close(packed_logits[start : start + lengths[1]], alone, atol=1e-4, rtol=1e-4)


# --- data ------------------------------------------------------------------------------------------


def test_local_files_and_bad_columns(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in RECORDS) + "\n", encoding="utf-8")
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"messages": [{"role": "user", "content": "a"},
                                              {"role": "assistant", "content": "b"}]}] * 3), encoding="utf-8")  # fmt: skip
    splits, source = load_instruction_splits(
        InstructionDataArguments(train_file=str(train), test_file=str(chat))
    )
    assert source == str(train)
    assert len(splits["train"]) + len(splits["validation"]) == len(RECORDS) and len(splits["validation"]) >= 1
    assert splits["test"][0]["messages"][1]["content"] == "b"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "b"}\n', encoding="utf-8")
    with pytest.raises(HftuneError, match=r"bad.jsonl.*needs `instruction`"):
        load_instruction_splits(InstructionDataArguments(train_file=str(bad)))


def test_embedded_jsl_data_keeps_the_corpus_splits_and_caps_them():
    everything, source = load_instruction_splits(InstructionDataArguments(max_eval_samples=5))
    assert source == "hftune-jsl-corpus" and set(everything) == {"train", "validation", "test"}
    assert len(everything["test"]) == len(everything["validation"]) == 5
    assert len(everything["train"]) > 1000  # None: no cap
    assert everything["train"][0]["instruction"] == JSL_INSTRUCTION
    assert everything["train"][0]["output"].startswith("<")

    capped, _ = load_instruction_splits(InstructionDataArguments(max_train_samples=7, max_eval_samples=-1))
    assert len(capped["train"]) == 7
    assert len(capped["test"]) > 5  # -1: every held-out example
    all_train, _ = load_instruction_splits(InstructionDataArguments(max_train_samples=-1))
    assert len(all_train["train"]) == len(everything["train"])
    with pytest.raises(HftuneError, match="--max_train_samples 0"):
        load_instruction_splits(InstructionDataArguments(max_train_samples=0))


def test_clean_response_keeps_the_first_line():
    assert clean_response("  <私>  <食べる>\nextra words\n") == "<私> <食べる>"
    assert clean_response("\n\n") == ""


# --- training mechanics on the tiny model ----------------------------------------------------------


def test_batched_left_padded_generation_matches_one_by_one(tiny, tokenizer):
    records = [RECORDS[3], {"instruction": "Say hi", "input": "", "output": ""}]  # different lengths
    batched = generate_responses(tiny, tokenizer, records, max_new_tokens=6, batch_size=2)
    single = generate_responses(tiny, tokenizer, records, max_new_tokens=6, batch_size=1)
    assert batched.texts == single.texts
    assert batched.ms_per_sentence > 0 and batched.sentences_per_second > 0


def test_gradient_checkpointing_with_lora_gives_nonzero_grads(tiny, tokenizer):
    lora = _lora(copy.deepcopy(tiny))
    # What Trainer calls for --gradient_checkpointing, with the kwargs prepare_training_args sets.
    lora.activation_checkpointing_enable({"use_reentrant": False})
    assert lora.base_model.model.model.gradient_checkpointing
    lora.train()
    lora(**_batch(tokenizer, RECORDS[:2], max_seq_length=SHORT)).loss.backward()
    # lora_B starts at zero, so it is the first to get a gradient.
    grads = [p.grad for n, p in lora.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_response_only_loss_equals_the_models_loss_and_gradients(tiny, tokenizer):
    """The recipe's loss runs the output layer on labelled positions only, yet gives the model's own loss and
    the same gradients; Trainer's token count (num_items_in_batch) divides the sum the same way as the model."""
    from hftune.tasks.instruction import response_only_loss

    lora = _lora(copy.deepcopy(tiny)).train()
    batch = _batch(tokenizer, RECORDS[:3])  # whole prompts, different lengths: padding is masked too
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < labelled < batch["labels"][:, 1:].numel() // 2  # most positions are prompt or padding

    expected = lora(**batch).loss
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in lora.named_parameters() if p.grad is not None}
    lora.zero_grad()
    loss, outputs = response_only_loss(lora, batch)
    loss.backward()
    assert outputs.logits.shape == (labelled, len(tokenizer))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert expected_grads
    for name, grad in expected_grads.items():
        torch.testing.assert_close(dict(lora.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        summed = response_only_loss(lora, batch, num_items_in_batch=torch.tensor(2 * labelled))[0]
        by_model = lora(**batch, num_items_in_batch=torch.tensor(2 * labelled)).loss
    torch.testing.assert_close(summed, by_model, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(summed, expected.detach() / 2, rtol=1e-5, atol=1e-6)


def test_qlora_trains_on_cpu(tiny_dir, tokenizer):
    from hftune.methods import quantization_config

    args = LoraArguments(lora_r=8, lora_alpha=16, lora_dropout=0.0,
                         lora_target_modules=["q_proj", "v_proj"], load_in_4bit=True)  # fmt: skip
    model, _ = load_causal_lm(
        str(tiny_dir), quantization_config=quantization_config(args, model_type_head=["lm_head"])
    )
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.uint8  # packed NF4
    qlora = apply_lora(model, args, task_type="CAUSAL_LM")
    batch = _batch(tokenizer, RECORDS[:2], max_seq_length=SHORT)
    losses = _train_steps(qlora, batch, steps=3, lr=1e-2)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(p.abs().sum() > 0 for n, p in qlora.named_parameters() if "lora_B" in n)  # an update happened
    assert losses[-1] < losses[0]


# --- the real SmolLM2 weights: LoRA learns, the adapter reloads --------------------------------------


@pytest.fixture(scope="module")
def trained_lora(smollm_path, tokenizer):
    model, _ = load_causal_lm(smollm_path)
    torch.manual_seed(0)
    lora = _lora(model)
    batch = _batch(tokenizer, RECORDS[:2], max_seq_length=SHORT)
    with torch.no_grad():
        lora.eval()
        before = lora(**batch).loss.item()
    _train_steps(lora, batch, steps=3, lr=2e-3)
    with torch.no_grad():
        after = lora(**batch).loss.item()
    return lora, before, after


def test_lora_steps_lower_the_loss_on_a_fixed_batch(trained_lora):
    lora, before, after = trained_lora
    assert after < 0.9 * before, (before, after)
    assert all(not p.requires_grad for n, p in lora.named_parameters() if "lora_" not in n)


def test_saved_adapter_reloads_and_generates_the_same_tokens(trained_lora, tokenizer, tmp_path):
    lora, _, _ = trained_lora
    lora.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    reloaded, reloaded_tokenizer, _ = load_instruction_model(tmp_path)
    records = RECORDS[:2]
    before = generate_responses(lora, tokenizer, records, max_new_tokens=6, batch_size=2)
    after = generate_responses(reloaded, reloaded_tokenizer, records, max_new_tokens=6, batch_size=2)
    assert before.texts == after.texts
    assert any(text for text in before.texts)


# --- the recipe and `hftune generate` --------------------------------------------------------------


def test_recipe_end_to_end_then_generate(tmp_path, tiny_dir):
    """The recipe's plumbing on the tiny model: train, score, save, card, then `hftune generate`."""
    data = tmp_path / "data"
    data.mkdir()
    for name, rows in (("train", RECORDS * 2), ("validation", RECORDS[:2]), ("test", RECORDS[:3])):
        (data / f"{name}.jsonl").write_text(
            "\n".join(json.dumps(r, ensure_ascii=False) for r in rows), "utf-8"
        )
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HFTUNE_CPU_THREADS": "2"}
    cmd = [sys.executable, str(REPO_ROOT / "recipes" / "instruction_tuning.py"),
           "--model_name_or_path", str(tiny_dir), "--train_file", str(data / "train.jsonl"),
           "--validation_file", str(data / "validation.jsonl"), "--test_file", str(data / "test.jsonl"),
           "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
           "--max_seq_length", "256", "--max_new_tokens", "8", "--precision", "fp32", "--packing",
           "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train: 16 examples kept, 0 had their prompt left-truncated and 0 were dropped" in done.stdout
    rows = int(re.search(r"train: packed 16 examples into (\d+) rows", done.stdout).group(1))
    assert rows < 16  # ~100-token examples, two to a 256-token row
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (results["task"], results["method"], results["artifact"]) == (
        "instruction-tuning",
        "lora",
        "adapter",
    )
    assert set(results["metrics"]) == {"gloss_wer", "bleu", "chrf", "exact_match"}
    assert results["generation_latency_ms"] > 0 and results["eval_split"] == "test"
    assert results["peak_memory_mb"] > 0 and results["hyperparameters"]["packing"] is True
    assert results["split_sizes"] == {"train": 16, "validation": 2, "test": 3}
    assert (out / "adapter_model.safetensors").is_file() and (out / "training_curves.png").is_file()
    assert not (out / "training_args.bin").exists()
    assert "model-index" in (out / "README.md").read_text(encoding="utf-8")
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text("utf-8").splitlines()]
    assert [p["reference"] for p in predictions] == [r["output"] for r in RECORDS[:3]]

    generate = [sys.executable, "-m", "hftune.cli", "generate", "--model", str(out),
                "--instruction", JSL_INSTRUCTION, "--input", "ありがとう", "--max_new_tokens", "8"]  # fmt: skip
    done = subprocess.run(generate, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()

    with pytest.raises(HftuneError, match="nope' does not exist"):
        generate_command(["--model", str(tmp_path / "nope")])
