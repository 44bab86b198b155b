"""Instruction prompts: the Alpaca template and chat templates, tokenised exactly as training and generation see
them, with the response's tokens (the only ones the loss covers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hftune.errors import HftuneError

JSL_INSTRUCTION = "次の日本語を日本手話のグロスに翻訳してください"


PROMPT_FORMATS = ("alpaca", "chat")


IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips


ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


ALPACA_PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"


def render_alpaca_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - the Alpaca field name
    """The Alpaca prompt up to and including `### Response:\\n`; the Input block only when input is non-empty."""
    if input and input.strip():
        return ALPACA_PROMPT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def user_text(record: Mapping[str, Any]) -> str:
    extra = record.get("input") or ""
    return f"{record['instruction']}\n\n{extra}" if extra.strip() else str(record["instruction"])


def record_messages(record: Mapping[str, Any]) -> tuple[list[dict], str]:
    """(prompt messages, assistant response) of an Alpaca or `messages` record."""
    messages = record.get("messages")
    if messages is None:
        return [{"role": "user", "content": user_text(record)}], str(record.get("output") or "")
    if not messages or messages[-1].get("role") != "assistant":
        raise HftuneError(
            f"a `messages` record ends with role {messages[-1].get('role') if messages else None!r}; "
            "the last message must be the assistant's answer to train on"
        )
    return [dict(m) for m in messages[:-1]], str(messages[-1].get("content") or "")


def _alpaca_fields(record: Mapping[str, Any]) -> tuple[str, str]:
    messages = record.get("messages")
    if messages is None:
        return str(record["instruction"]), str(record.get("input") or "")
    prompt_messages, _ = record_messages(record)
    users = [m for m in prompt_messages if m.get("role") == "user"]
    if len(users) != 1 or any(m.get("role") not in ("user", "system") for m in prompt_messages):
        raise HftuneError(
            "a multi-turn `messages` record cannot be rendered with --prompt_format alpaca; "
            "use --prompt_format chat"
        )
    return str(users[0].get("content") or ""), ""


def prompt_ids(record: Mapping[str, Any], tokenizer, prompt_format: str) -> list[int]:
    """Token ids of the prompt, exactly as training saw them and generation must see them."""
    if prompt_format == "alpaca":
        instruction, extra = _alpaca_fields(record)
        return tokenizer(render_alpaca_prompt(instruction, extra), add_special_tokens=True)["input_ids"]
    if prompt_format == "chat":
        prompt_messages, _ = record_messages(record)
        text = _chat_template(tokenizer, prompt_messages, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    raise HftuneError(
        f"--prompt_format {prompt_format!r} is unknown; choose one of {', '.join(PROMPT_FORMATS)}"
    )


def _chat_template(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise HftuneError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; use --prompt_format alpaca"
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def response_ids(record: Mapping[str, Any], tokenizer, prompt_format: str) -> list[int]:
    """Token ids the model must learn to produce after the prompt, ending with end-of-sequence."""
    prompt_messages, response = record_messages(record)
    if prompt_format == "chat":
        # The template's text after the generation prompt: the answer plus its end-of-turn tokens.
        prompt_text = _chat_template(tokenizer, prompt_messages, add_generation_prompt=True)
        full_text = _chat_template(
            tokenizer,
            [*prompt_messages, {"role": "assistant", "content": response}],
            add_generation_prompt=False,
        )
        if not full_text.startswith(prompt_text):
            raise HftuneError(
                f"the chat template of {getattr(tokenizer, 'name_or_path', '')!r} rewrites the prompt when an "
                "answer follows, so the answer cannot be separated from it; use --prompt_format alpaca"
            )
        return tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is None:
        raise HftuneError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos token; set one")
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
