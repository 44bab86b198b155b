"""The JSL (Japanese -> Japanese Sign Language gloss) seq2seq model, its tokenizer and corpus.

Importing this package registers the model with the transformers Auto classes, so that
`AutoConfig` / `AutoModelForSeq2SeqLM` / `AutoTokenizer` resolve `model_type: "jsl-seq2seq"` locally, and marks
the classes for `register_for_auto_class`, so `save_pretrained` writes `auto_map` and copies
configuration_jsl.py, modeling_jsl.py and tokenization_jsl.py next to the weights: the saved folder then loads
with `trust_remote_code=True` on a machine that has only torch and transformers.

`AutoModel` is deliberately not mapped: there is no headless base model, and mapping it to the LM-head class
would hand users a generator where they asked for an encoder.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

from .configuration_jsl import JslSeq2SeqConfig
from .modeling_jsl import JslSeq2SeqForConditionalGeneration, JslSeq2SeqPreTrainedModel
from .tokenization_jsl import JslTokenizer

AutoConfig.register(JslSeq2SeqConfig.model_type, JslSeq2SeqConfig, exist_ok=True)
AutoModelForSeq2SeqLM.register(JslSeq2SeqConfig, JslSeq2SeqForConditionalGeneration, exist_ok=True)
AutoTokenizer.register(JslSeq2SeqConfig, tokenizer_class=JslTokenizer, exist_ok=True)

JslSeq2SeqConfig.register_for_auto_class("AutoConfig")
JslSeq2SeqForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
JslTokenizer.register_for_auto_class("AutoTokenizer")

__all__ = [
    "JslSeq2SeqConfig",
    "JslSeq2SeqForConditionalGeneration",
    "JslSeq2SeqPreTrainedModel",
    "JslTokenizer",
]
