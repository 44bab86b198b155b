"""Property tests: arbitrary Unicode, emoji, control characters and very long strings never crash the JSL
tokenizer or `translate`, and `translate` always answers with a string of gloss tokens."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_jsl_translate import loaded, one_thread, train_tiny_jsl_folder  # noqa: F401 - module fixtures

from hftune.jsl.train import gloss_tokens
from hftune.jsl.translate import translate

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Everything hypothesis can draw (no surrogates: Python str from files and argv never holds lone ones),
# weighted towards what real input brings: Japanese, emoji, control and format characters, whitespace.
CHARACTERS = st.one_of(
    st.characters(),
    st.characters(min_codepoint=0x3040, max_codepoint=0x30FF),
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),
    st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]),
    st.sampled_from(list("ありがとう私食べる図書館\u3000\ufeff\u200b")),
)
TEXTS = st.one_of(st.text(CHARACTERS, max_size=80), st.text(CHARACTERS, min_size=200, max_size=3000))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return train_tiny_jsl_folder(tmp_path_factory.mktemp("jsl") / "model")


@PROPERTY_SETTINGS
@given(text=TEXTS)
def test_tokenizer_never_crashes_and_maps_unknowns_to_unk(loaded, text):  # noqa: F811
    _, tokenizer = loaded
    ids = tokenizer(text, truncation=True, max_length=tokenizer.model_max_length)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    assert len(ids) <= tokenizer.model_max_length
    assert all(0 <= i < len(tokenizer) for i in ids)
    full = tokenizer(text)["input_ids"]
    assert len(full) == len(tokenizer.tokenize(text)) + 1
    assert isinstance(tokenizer.decode(full), str)
    targets = tokenizer(text_target=text)["input_ids"]
    assert targets[-1] == tokenizer.eos_token_id and all(0 <= i < len(tokenizer) for i in targets)


@PROPERTY_SETTINGS
@given(texts=st.lists(TEXTS, min_size=1, max_size=6))
def test_translate_answers_every_input_with_gloss_tokens(loaded, texts):  # noqa: F811
    model, tokenizer = loaded
    glosses = translate(texts, model, tokenizer, batch_size=4)
    assert len(glosses) == len(texts)
    allowed = set(gloss_tokens(tokenizer))
    for text, gloss in zip(texts, glosses, strict=True):
        assert isinstance(gloss, str) and "\n" not in gloss
        assert set(gloss.split()) <= allowed
        if not tokenizer.tokenize(text):
            assert gloss == ""
