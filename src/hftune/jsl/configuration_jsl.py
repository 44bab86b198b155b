"""Configuration of the JSL encoder-decoder (Japanese text -> JSL gloss sequence).

This file travels to the Hub as remote code: it may import only the standard library, torch, transformers
and its sibling files.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class JslSeq2SeqConfig(PretrainedConfig):
    r"""Hyper-parameters of [`JslSeq2SeqForConditionalGeneration`].

    The model is a Pre-LN Transformer encoder-decoder whose encoder reads Japanese characters and whose decoder
    writes JSL gloss tokens. Both sides share one joint vocabulary (see `JslTokenizer`) and one embedding
    matrix; positions use fixed sinusoidal encodings, so there are no position parameters.

    Args:
        vocab_size (`int`, defaults to 512):
            Size of the joint vocabulary (special tokens + Japanese characters + gloss tokens). Must equal
            `len(tokenizer)`.
        d_model (`int`, defaults to 256):
            Width of the embeddings and of every hidden state.
        num_heads (`int`, defaults to 4):
            Attention heads in every self- and cross-attention block; `d_model` must be divisible by it.
        encoder_layers (`int`, defaults to 3):
            Number of encoder blocks (self-attention + feed-forward).
        decoder_layers (`int`, defaults to 3):
            Number of decoder blocks (causal self-attention + cross-attention + feed-forward). The KV cache holds
            one entry per decoder block; `num_hidden_layers` is an alias of this value.
        d_ff (`int`, defaults to 1024):
            Inner width of the GELU feed-forward block.
        dropout (`float`, defaults to 0.1):
            Dropout on embeddings, on each sub-block output before the residual add, and inside the feed-forward.
        attention_dropout (`float`, defaults to 0.0):
            Dropout on the attention probabilities.
        max_source_length (`int`, defaults to 64):
            Longest Japanese input in characters (including `</s>`); the tokenizer truncates beyond it.
        max_target_length (`int`, defaults to 32):
            Longest gloss output in tokens (including `</s>`); the default generation length.
        output_length_ratio (`float`, *optional*):
            When set, `generate()` ends each row with `</s>` once it holds `floor(ratio * input characters) +
            output_length_slack` gloss tokens, or once its last 6 tokens repeat one or two glosses, so a short or
            unusual input cannot run on to `max_new_tokens`.
        output_length_slack (`int`, defaults to 3):
            Gloss tokens allowed on top of `output_length_ratio * input characters`.
        output_length_spelling (`bool`, defaults to `False`):
            With `spelling_sources`: each input character a spelling gloss spells (a kana) counts one whole token in
            that bound, the others `output_length_ratio`, since a fingerspelled word takes one gloss per kana.
        spelling_sources (`list[list[int]]`, *optional*):
            `[gloss_id, source_id, ...]` entries: `generate()` emits the gloss at most as many times as the input
            holds any of the source ids. The JSL model lists each fingerspelling gloss `<指:カ>` with `カ` and `か`,
            so a spelled word uses the input's kana, each once, and cannot repeat or invent one.
        spelling_copy (`bool`, defaults to `False`):
            Adds a copy head (CopyNet, Gu et al. 2016) over `spelling_sources`: each fingerspelling gloss also
            scores `log sum exp(query . key_j)` over the input positions j that hold one of its source characters,
            joined with its generation score by `logaddexp`. Spelling a name never seen in training then points at
            the input's kana instead of recalling a spelled word. Needs `spelling_sources`.
        tie_word_embeddings (`bool`, defaults to `True`):
            Whether the output projection (`lm_head`) reuses the shared token embedding matrix.
        label_smoothing (`float`, defaults to 0.0):
            Label smoothing of the cross-entropy loss computed when `labels` are given.
        init_std (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of linear layers. Token embeddings use
            `d_model ** -0.5` because they are multiplied by `sqrt(d_model)`.
        pad_token_id (`int`, defaults to 0): id of `<pad>`; labels use -100 instead, which the loss ignores.
        bos_token_id (`int`, defaults to 1): id of `<s>`.
        eos_token_id (`int`, defaults to 2): id of `</s>`, which ends every source and target sequence.
        unk_token_id (`int`, defaults to 3): id of `<unk>`, used for characters and glosses outside the vocabulary.
        decoder_start_token_id (`int`, defaults to 1):
            First decoder input; `labels` are shifted right behind it to build `decoder_input_ids`.
        use_cache (`bool`, defaults to `True`):
            Whether the decoder returns its key/value cache (an `EncoderDecoderCache`) for fast generation.
        is_encoder_decoder (`bool`, defaults to `True`):
            Always `True`: tells `generate()` to run the encoder once and decode from `decoder_start_token_id`.
        vocab_hash (`str` or `None`, defaults to `None`):
            sha256 of the tokenizer's canonical vocabulary JSON, recorded at save time so a loader can refuse a
            tokenizer that does not belong to these weights.
        training_metadata (`dict`, defaults to `{}`):
            Free-form provenance written at save time (package/torch/transformers versions, seed, git commit,
            time, ...).
    """

    model_type = "jsl-seq2seq"
    # The KV cache in outputs: `past_key_values` up to transformers 5.23, `cache` since 5.24.
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    # Standard names other transformers code reads; the cache sizes itself from the decoder.
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "decoder_layers",
    }

    def __init__(
        self,
        vocab_size: int = 512,
        d_model: int = 256,
        num_heads: int = 4,
        encoder_layers: int = 3,
        decoder_layers: int = 3,
        d_ff: int = 1024,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        max_source_length: int = 64,
        max_target_length: int = 32,
        output_length_ratio: float | None = None,
        output_length_slack: int = 3,
        output_length_spelling: bool = False,
        spelling_sources: list[list[int]] | None = None,
        spelling_copy: bool = False,
        tie_word_embeddings: bool = True,
        label_smoothing: float = 0.0,
        init_std: float = 0.02,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        unk_token_id: int = 3,
        decoder_start_token_id: int = 1,
        use_cache: bool = True,
        is_encoder_decoder: bool = True,
        vocab_hash: str | None = None,
        training_metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if d_model % num_heads != 0:
            raise ValueError(
                f"d_model={d_model} is not divisible by num_heads={num_heads}; pick num_heads that divides d_model"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.num_heads = num_heads
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.d_ff = d_ff
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.output_length_ratio = output_length_ratio
        self.output_length_slack = output_length_slack
        self.output_length_spelling = bool(output_length_spelling)
        self.spelling_sources = [[int(i) for i in entry] for entry in spelling_sources or []]
        if spelling_copy and not self.spelling_sources:
            raise ValueError(
                "spelling_copy=True needs spelling_sources: the copy head copies their source characters"
            )
        self.spelling_copy = bool(spelling_copy)
        self.label_smoothing = label_smoothing
        self.init_std = init_std
        self.unk_token_id = unk_token_id
        self.decoder_start_token_id = decoder_start_token_id
        self.use_cache = use_cache
        self.vocab_hash = vocab_hash
        self.training_metadata = dict(training_metadata or {})
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            is_encoder_decoder=is_encoder_decoder,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
