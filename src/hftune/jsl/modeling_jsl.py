"""Pre-LN Transformer encoder-decoder that turns Japanese characters into JSL gloss tokens.

This file travels to the Hub as remote code: it may import only the standard library, torch, transformers
and its sibling files.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
)

from .configuration_jsl import JslSeq2SeqConfig

# transformers 5.24 renamed generate()'s `past_key_values` to `cache`: it passes `cache=` to forward and reads the
# output's `cache` field; 5.23 uses `past_key_values` for both. forward accepts either name, and the outputs use the
# installed version's field name (5.24 would also take the old one, but logs a deprecation warning).
CACHE_FIELD = (
    "cache" if "cache" in {field.name for field in dataclasses.fields(Seq2SeqLMOutput)} else "past_key_values"
)


def sinusoidal_positions(positions: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Fixed sin/cos encodings (Vaswani et al.) for integer `positions`, shape (len, dim).

    Computed in float32 on the fly: no buffer to save or load, and nothing in float64 (MPS has none).
    """
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, device=positions.device, dtype=torch.float32) * (-math.log(10000.0) / max(half, 1))
    )
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]
    table = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if dim % 2:
        table = nn.functional.pad(table, (0, 1))
    return table.to(dtype)


def padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(batch, key_len) 1/0 mask -> additive (batch, 1, 1, key_len) mask, or None when nothing is masked."""
    if attention_mask is None:
        return None
    blocked = attention_mask[:, None, None, :] == 0
    return torch.zeros(blocked.shape, dtype=dtype, device=attention_mask.device).masked_fill(
        blocked, torch.finfo(dtype).min
    )


def causal_mask(
    query_len: int,
    past_len: int,
    decoder_attention_mask: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Additive mask letting query i (absolute position past_len + i) see keys 0..past_len + i, minus padding."""
    key_positions = torch.arange(past_len + query_len, device=device)
    query_positions = torch.arange(past_len, past_len + query_len, device=device)
    blocked = key_positions[None, :] > query_positions[:, None]
    blocked = blocked[None, None, :, :]
    if decoder_attention_mask is not None:
        blocked = blocked | (decoder_attention_mask[:, None, None, -(past_len + query_len) :] == 0)
    return torch.zeros(blocked.shape, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)


class JslAttention(nn.Module):
    """Multi-head scaled dot-product attention: self-attention, or cross-attention when `key_value_states`
    (the encoder output) is given. Decoder instances read and extend the KV cache of their `layer_idx`.

    Runs torch's fused `scaled_dot_product_attention` over whole sequences, and the explicit softmax for a
    cached one-token decoding step or when the attention weights are asked for."""

    def __init__(self, config: JslSeq2SeqConfig, layer_idx: int | None = None) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.d_model // config.num_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        is_cross = key_value_states is not None
        query = self._heads(self.q_proj(hidden_states))
        if is_cross and past_key_values is not None and past_key_values.is_updated.get(self.layer_idx, False):
            # Encoder keys/values never change during generation: computed once at the first step.
            layer_cache = past_key_values.cross_attention_cache.layers[self.layer_idx]
            key, value = layer_cache.keys, layer_cache.values
        else:
            source = key_value_states if is_cross else hidden_states
            key = self._heads(self.k_proj(source))
            value = self._heads(self.v_proj(source))
            if past_key_values is not None:
                if is_cross:
                    key, value = past_key_values.cross_attention_cache.update(key, value, self.layer_idx)
                    past_key_values.is_updated[self.layer_idx] = True
                else:
                    key, value = past_key_values.self_attention_cache.update(key, value, self.layer_idx)

        # The fused kernel for training and whole sequences; a cached decoding step (one query per sequence)
        # runs the explicit softmax instead: three small ops cost less than the fused kernel's set-up on CPU.
        if not output_attentions and query.shape[-2] > 1:
            output = nn.functional.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=attention_mask,
                dropout_p=self.attention_dropout if self.training else 0.0,
                scale=self.scaling,
            )
            return self.out_proj(output.transpose(1, 2).reshape(hidden_states.shape)), None
        scores = torch.matmul(query, key.transpose(-1, -2)) * self.scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        # float32 softmax keeps fp16/bf16 runs stable (no-op cast in float32).
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        probs = nn.functional.dropout(weights, p=self.attention_dropout, training=self.training)
        output = torch.matmul(probs, value).transpose(1, 2).reshape(hidden_states.shape)
        return self.out_proj(output), weights if output_attentions else None


class JslFeedForward(nn.Module):
    """Position-wise d_model -> d_ff -> d_model block with GELU."""

    def __init__(self, config: JslSeq2SeqConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_ff)
        self.fc2 = nn.Linear(config.d_ff, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(nn.functional.gelu(self.fc1(hidden_states))))


class JslEncoderLayer(nn.Module):
    """Pre-LN block: x + SelfAttn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: JslSeq2SeqConfig) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.self_attn = JslAttention(config)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.feed_forward = JslFeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.self_attn(
            self.self_attn_layer_norm(hidden_states), attention_mask, output_attentions=output_attentions
        )
        hidden_states = hidden_states + self.dropout(attended)
        hidden_states = hidden_states + self.dropout(self.feed_forward(self.final_layer_norm(hidden_states)))
        return hidden_states, weights


class JslDecoderLayer(nn.Module):
    """Pre-LN block: causal self-attention, cross-attention over the encoder output, feed-forward; each residual."""

    def __init__(self, config: JslSeq2SeqConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.self_attn = JslAttention(config, layer_idx=layer_idx)
        self.cross_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.cross_attn = JslAttention(config, layer_idx=layer_idx)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.feed_forward = JslFeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        self_attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        past_key_values: EncoderDecoderCache | None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        attended, self_weights = self.self_attn(
            self.self_attn_layer_norm(hidden_states),
            self_attention_mask,
            past_key_values=past_key_values,
            output_attentions=output_attentions,
        )
        hidden_states = hidden_states + self.dropout(attended)
        attended, cross_weights = self.cross_attn(
            self.cross_attn_layer_norm(hidden_states),
            encoder_attention_mask,
            key_value_states=encoder_hidden_states,
            past_key_values=past_key_values,
            output_attentions=output_attentions,
        )
        hidden_states = hidden_states + self.dropout(attended)
        hidden_states = hidden_states + self.dropout(self.feed_forward(self.final_layer_norm(hidden_states)))
        return hidden_states, self_weights, cross_weights


@dataclasses.dataclass
class JslEncoderOutput(BaseModelOutput):
    """The encoder output plus, for a model with `config.spelling_copy`, what its copy head reads at every decoding
    step: each input position's copy key (batch, source_len, d_model) and which spelling gloss it can be copied
    as (batch, source_len, glosses), 1/0. generate() expands both for beams like the hidden state."""

    copy_keys: torch.FloatTensor | None = None
    copy_map: torch.FloatTensor | None = None


def spelling_positions(config, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(batch, source_len, glosses) bool: input position j holds a source character of `config.spelling_sources[g]`
    (padding excluded)."""
    sources = config.spelling_sources
    table = [-1] * config.vocab_size  # vocabulary id -> its spelling gloss's column, -1 for none
    for column, entry in enumerate(sources):
        for source in entry[1:]:
            table[source] = column
    columns = torch.tensor(table, device=input_ids.device)[input_ids]
    hits = columns[..., None] == torch.arange(len(sources), device=input_ids.device)
    if attention_mask is not None:
        hits = hits & (attention_mask[..., None] > 0)
    return hits


class JslEncoder(nn.Module):
    """Token embedding (owned here, shared with the decoder and lm_head) + positions + encoder blocks + final LN."""

    main_input_name = "input_ids"

    def __init__(self, config: JslSeq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.embed_scale = math.sqrt(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([JslEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.layer_norm = nn.LayerNorm(config.d_model)
        # The copy head's keys, computed once per input like the cross-attention keys, from each position and the
        # one before it: "the kana after the one just spelled" is then a direct match (spelling runs left to right).
        self.copy_key = nn.Linear(2 * config.d_model, config.d_model) if config.spelling_copy else None

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> JslEncoderOutput:
        hidden_states = self.embed_tokens(input_ids) * self.embed_scale
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden_states = self.dropout(
            hidden_states + sinusoidal_positions(positions, self.config.d_model, hidden_states.dtype)
        )
        mask = padding_mask(attention_mask, hidden_states.dtype)
        all_hidden: list[torch.Tensor] = []
        all_attentions: list[torch.Tensor] = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            hidden_states, weights = layer(hidden_states, mask, output_attentions=bool(output_attentions))
            if output_attentions:
                all_attentions.append(weights)
        hidden_states = self.layer_norm(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        copy_keys = copy_map = None
        if self.copy_key is not None:
            previous = nn.functional.pad(hidden_states[:, :-1], (0, 0, 1, 0))
            copy_keys = self.copy_key(torch.cat([hidden_states, previous], dim=-1))
            copy_map = spelling_positions(self.config, input_ids, attention_mask).to(hidden_states.dtype)
        return JslEncoderOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
            copy_keys=copy_keys,
            copy_map=copy_map,
        )


class JslDecoder(nn.Module):
    """Decoder blocks + final LN over already-embedded target tokens; positions continue after the cached length."""

    def __init__(self, config: JslSeq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            [JslDecoderLayer(config, layer_idx=i) for i in range(config.decoder_layers)]
        )
        self.layer_norm = nn.LayerNorm(config.d_model)
        self._position_table: torch.Tensor | None = None  # not a buffer: never saved, rebuilt on demand

    def positions(self, start: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Rows start..start+length of the sinusoid table, computed once per device/dtype instead of at every
        decoding step (the same values: each row depends on its position only)."""
        table = self._position_table
        if table is None or table.shape[0] < start + length or table.dtype != dtype or table.device != device:
            size = max(start + length, self.config.max_target_length + 2)
            # A normal tensor even when first built under inference_mode, so training can use it later.
            with torch.inference_mode(False), torch.no_grad():
                table = sinusoidal_positions(torch.arange(size, device=device), self.config.d_model, dtype)
            self._position_table = table
        return table[start : start + length]

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        query_len = inputs_embeds.shape[1]
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        hidden_states = self.dropout(
            inputs_embeds + self.positions(past_len, query_len, inputs_embeds.dtype, inputs_embeds.device)
        )
        if query_len == 1 and attention_mask is None:
            self_mask = None  # one cached decoding step may see every key: skip building a mask per step
        else:
            self_mask = causal_mask(
                query_len, past_len, attention_mask, hidden_states.dtype, hidden_states.device
            )
        cross_mask = padding_mask(encoder_attention_mask, hidden_states.dtype)
        all_hidden: list[torch.Tensor] = []
        self_attentions: list[torch.Tensor] = []
        cross_attentions: list[torch.Tensor] = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            hidden_states, self_weights, cross_weights = layer(
                hidden_states,
                self_mask,
                encoder_hidden_states,
                cross_mask,
                past_key_values,
                output_attentions,
            )
            if output_attentions:
                self_attentions.append(self_weights)
                cross_attentions.append(cross_weights)
        hidden_states = self.layer_norm(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(self_attentions) if output_attentions else None,
            cross_attentions=tuple(cross_attentions) if output_attentions else None,
            **{CACHE_FIELD: past_key_values},
        )


LOOP_WINDOW = 6  # a generated tail of this many tokens repeating one or two glosses ends the output


def periodic_tail(generated: torch.Tensor) -> torch.Tensor:
    """Per row: do the last LOOP_WINDOW tokens repeat with period 1 or 2 (A A A A A A, A B A B A B)? No gloss
    sequence of the corpus does; an undertrained or out-of-domain decoder that does has lost the input."""
    if generated.shape[1] < LOOP_WINDOW:
        return torch.zeros(generated.shape[0], dtype=torch.bool, device=generated.device)
    tail = generated[:, -LOOP_WINDOW:]
    return (tail[:, 2:] == tail[:, :-2]).all(dim=1)


class SourceLengthBound(LogitsProcessor):
    """Forces `</s>` in a row that already holds `limits[row]` generated tokens (the decoder start token is not
    counted) or whose output loops (`periodic_tail`). `limits` has one entry per input; beams and returned
    sequences of one input share its limit."""

    def __init__(self, limits: torch.Tensor, eos_token_id: int) -> None:
        self.limits = limits
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        limits = self.limits.to(input_ids.device).repeat_interleave(
            input_ids.shape[0] // self.limits.shape[0]
        )
        full = (limits <= input_ids.shape[1] - 1) | periodic_tail(input_ids[:, 1:])
        if full.any():
            scores = scores.clone()
            scores[full] = -math.inf
            scores[full, self.eos_token_id] = 0.0
        return scores


class SpellingBudget(LogitsProcessor):
    """Masks a gloss of `config.spelling_sources` in a row that has already emitted it as many times as the row's
    input holds its source characters: fingerspelling spells the input's kana, so it never repeats or invents one.
    `budgets` is (inputs, glosses); beams and returned sequences of one input share its row."""

    def __init__(self, glosses: torch.Tensor, budgets: torch.Tensor) -> None:
        self.glosses = glosses
        self.budgets = budgets

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        glosses = self.glosses.to(input_ids.device)
        budgets = self.budgets.to(input_ids.device).repeat_interleave(
            input_ids.shape[0] // self.budgets.shape[0], 0
        )
        used = (input_ids[:, 1:, None] == glosses[None, None, :]).sum(1)
        spent = used >= budgets
        if spent.any():
            scores = scores.clone()
            rows, columns = spent.nonzero(as_tuple=True)
            scores[rows, glosses[columns]] = -math.inf
        return scores


def spelling_budgets(config, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """(gloss ids, (batch, glosses) counts of each gloss's source ids in each input), or None without
    `config.spelling_sources`."""
    sources = getattr(config, "spelling_sources", None)
    if not sources:
        return None
    if attention_mask is None:
        attention_mask = (input_ids != config.pad_token_id).long()
    glosses = torch.tensor([entry[0] for entry in sources], device=input_ids.device)
    return glosses, spelling_positions(config, input_ids, attention_mask).sum(1)


def output_length_limits(
    config, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Per input: floor(output_length_ratio * its characters) + output_length_slack (`</s>` not counted); with
    `config.output_length_spelling`, floor(ratio * its other characters) + its spelled characters + slack."""
    if attention_mask is None:
        attention_mask = (input_ids != config.pad_token_id).long()
    # float64 on the CPU (MPS has none), as Python, numpy and JavaScript compute it: the ONNX decoders agree
    characters = (attention_mask.sum(-1) - 1).clamp(min=0).cpu().double()
    spelled = torch.zeros_like(characters)
    if getattr(config, "output_length_spelling", False) and getattr(config, "spelling_sources", None):
        spelled = spelling_positions(config, input_ids, attention_mask).any(-1).sum(-1).cpu().double()
    limits = (
        torch.floor((characters - spelled) * config.output_length_ratio).long()
        + spelled.long()
        + int(config.output_length_slack)
    )
    return limits.to(input_ids.device)


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher-forcing decoder inputs: `decoder_start` + labels[:-1], with -100 (ignored positions) as pad."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


class JslSeq2SeqPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading glue shared by the JSL models."""

    config_class = JslSeq2SeqConfig
    config: JslSeq2SeqConfig
    base_model_prefix = "jsl"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["JslEncoderLayer", "JslDecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # Scaled by sqrt(d_model) in forward, so unit-variance token vectors next to the sinusoids.
            nn.init.normal_(module.weight, mean=0.0, std=self.config.d_model**-0.5)
            # Skip when from_pretrained already loaded this weight: the row slice would bypass its init guard.
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                nn.init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class JslSeq2SeqForConditionalGeneration(JslSeq2SeqPreTrainedModel, GenerationMixin):
    """Japanese characters -> JSL gloss tokens. `generate()` supports greedy, beam search, sampling and
    `num_return_sequences`, with a real `EncoderDecoderCache` (self-attention K/V grow one step at a time,
    cross-attention K/V are computed once from the encoder output)."""

    _tied_weights_keys = {"lm_head.weight": "encoder.embed_tokens.weight"}

    def __init__(self, config: JslSeq2SeqConfig) -> None:
        super().__init__(config)
        self.encoder = JslEncoder(config)
        self.decoder = JslDecoder(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # The copy head's query: the decoder state and the gloss it was just fed (the last one spelled).
        self.copy_query = nn.Linear(2 * config.d_model, config.d_model) if config.spelling_copy else None
        self.post_init()
        # Room for a full gloss sequence (transformers' default max_length of 20 would cut it); a saved
        # generation_config.json overrides this, and a max_new_tokens passed to generate() wins silently.
        self.generation_config.max_new_tokens = config.max_target_length

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def get_encoder(self, modality: str | None = None) -> JslEncoder:
        return self.encoder

    def get_decoder(self) -> JslDecoder:
        return self.decoder

    def generate(
        self,
        inputs=None,
        generation_config=None,
        logits_processor=None,
        bound_output_length: bool = True,
        **kwargs,
    ):
        """`GenerationMixin.generate`, plus as logits processors (when the input ids are given) the per-input output
        bound of `config.output_length_ratio` (when set and `bound_output_length` is True) and the spelling budget of
        `config.spelling_sources`."""
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        ratio = getattr(self.config, "output_length_ratio", None)
        processors = list(logits_processor or [])
        if bound_output_length and ratio is not None and input_ids is not None:
            limits = output_length_limits(self.config, input_ids, kwargs.get("attention_mask"))
            processors.append(SourceLengthBound(limits, self.config.eos_token_id))
        budgets = (
            None
            if input_ids is None
            else spelling_budgets(self.config, input_ids, kwargs.get("attention_mask"))
        )
        if budgets is not None:
            processors.append(SpellingBudget(*budgets))
        if processors:
            logits_processor = LogitsProcessorList(processors)
        return super().generate(
            inputs, generation_config=generation_config, logits_processor=logits_processor, **kwargs
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One generate() step's inputs: the target tokens not yet in the KV cache, plus what generate() carries
        between steps (encoder output and mask, the cache under either name, use_cache), passed on unchanged.

        GenerationMixin's generic version also serves decoder-only and multimodal models, and for custom-code
        models it inspects forward's signature at every step; in a cached batch-64 decode that is ~4% of the time.
        """
        if next_sequence_length is not None:
            input_ids = input_ids[:, -next_sequence_length:]
        kwargs.pop("labels", None)
        return {"decoder_input_ids": input_ids, **kwargs}

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple[torch.Tensor, ...] | None = None,
        past_key_values: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> Seq2SeqLMOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch, target_len)`, *optional*):
            Gloss token ids ending in `</s>`, -100 where the loss should ignore a position. When given and
            `decoder_input_ids` is not, the decoder inputs are `labels` shifted right behind
            `decoder_start_token_id`.
        num_items_in_batch (*optional*):
            Passed by `Trainer`: the loss is then summed and divided by this count, so gradient accumulation and
            multi-process runs weigh every target token equally.
        cache (`Cache`, *optional*):
            The KV cache under the name transformers >= 5.24 `generate()` passes; the same as `past_key_values`
            (give one or the other).
        """
        if cache is not None:
            if past_key_values is not None:
                raise ValueError("Pass the KV cache as `cache` or `past_key_values`, not both")
            past_key_values = cache
        output_attentions = bool(
            output_attentions if output_attentions is not None else self.config.output_attentions
        )
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        if decoder_input_ids is None:
            raise ValueError("JslSeq2SeqForConditionalGeneration.forward needs decoder_input_ids or labels")

        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError(
                    "JslSeq2SeqForConditionalGeneration.forward needs input_ids or encoder_outputs"
                )
            encoder_outputs = self.encoder(
                input_ids,
                attention_mask=attention_mask,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = JslEncoderOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )

        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(
                DynamicCache(config=self.config), DynamicCache(config=self.config)
            )
        elif not use_cache:
            past_key_values = None

        decoder_inputs_embeds = self.encoder.embed_tokens(decoder_input_ids) * self.encoder.embed_scale
        decoder_outputs = self.decoder(
            decoder_inputs_embeds,
            encoder_outputs.last_hidden_state,
            attention_mask=decoder_attention_mask,
            encoder_attention_mask=attention_mask,
            past_key_values=past_key_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.lm_head(decoder_outputs.last_hidden_state)
        if self.copy_query is not None:
            copy_keys = getattr(encoder_outputs, "copy_keys", None)
            copy_map = getattr(encoder_outputs, "copy_map", None)
            if copy_keys is None or copy_map is None:
                raise ValueError(
                    "this model copies fingerspelling (config.spelling_copy): pass encoder_outputs as the "
                    "model's encoder returns them (a JslEncoderOutput with copy_keys and copy_map), or input_ids"
                )
            logits = self.add_copy_scores(
                logits, decoder_outputs.last_hidden_state, decoder_inputs_embeds, copy_keys, copy_map
            )

        loss = None
        if labels is not None:
            loss = self._loss(logits, labels, num_items_in_batch)

        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            **{CACHE_FIELD: past_key_values},
        )
        return output if return_dict else output.to_tuple()

    def add_copy_scores(
        self,
        logits: torch.Tensor,
        decoder_hidden: torch.Tensor,
        decoder_inputs_embeds: torch.Tensor,
        copy_keys: torch.Tensor,
        copy_map: torch.Tensor,
    ) -> torch.Tensor:
        """CopyNet's joint scores: each spelling gloss g becomes logaddexp(its generation logit, log sum_j
        exp(query . key_j / sqrt(d))) over the input positions j that hold one of g's kana, so the softmax over the
        result mixes generating and copying. The query reads the decoder state and its input embedding (the gloss
        just emitted). In float32 whatever the model's dtype; other logits are unchanged."""
        glosses = torch.tensor([entry[0] for entry in self.config.spelling_sources], device=logits.device)
        query = self.copy_query(torch.cat([decoder_hidden, decoder_inputs_embeds], dim=-1)).float()
        scores = torch.matmul(query, copy_keys.float().transpose(1, 2)) * self.config.d_model**-0.5
        copy_map = copy_map.float()
        copyable = copy_map.sum(-1)[:, None, :] > 0  # (batch, 1, source_len)
        scores = scores.masked_fill(~copyable, -1e9)  # finite: an input without kana gives no NaN
        top = scores.amax(-1, keepdim=True).detach()
        summed = torch.matmul(torch.exp(scores - top), copy_map)  # (batch, target_len, glosses)
        copied = torch.log(summed.clamp_min(1e-30)) + top
        index = glosses.expand(*logits.shape[:-1], glosses.shape[0])
        generated = logits.float().gather(-1, index)
        high = torch.maximum(generated, copied)
        joined = high + torch.log(torch.exp(generated - high) + torch.exp(copied - high))
        return logits.scatter(-1, index, joined.to(logits.dtype))

    def _loss(
        self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None
    ) -> torch.Tensor:
        # float32 loss even when the model runs in bf16/fp16, for a stable softmax.
        flat_logits = logits.reshape(-1, logits.shape[-1]).float()
        flat_labels = labels.reshape(-1).to(logits.device)
        smoothing = self.config.label_smoothing
        if num_items_in_batch is None:
            return nn.functional.cross_entropy(
                flat_logits, flat_labels, ignore_index=-100, label_smoothing=smoothing
            )
        total = nn.functional.cross_entropy(
            flat_logits, flat_labels, ignore_index=-100, label_smoothing=smoothing, reduction="sum"
        )
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
