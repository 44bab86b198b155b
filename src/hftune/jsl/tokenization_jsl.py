"""Joint character / gloss tokenizer for the JSL model.

Source side (`text`): Japanese, NFKC-normalised, whitespace dropped, one token per character.
Target side (`text_target`): JSL glosses separated by whitespace, one token per gloss (e.g. `<私> <食べる>`).
Both sides share one vocabulary, saved as `vocab.json`; unknown characters or glosses map to `<unk>`.

This file travels to the Hub as remote code: it may import only the standard library, torch, transformers
and its sibling files.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any

from transformers import PreTrainedTokenizer

VOCAB_FILES_NAMES = {"vocab_file": "vocab.json"}
# Fixed ids so a config and a tokenizer built separately agree on pad=0, bos=1, eos=2, unk=3.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def source_tokens(text: str) -> list[str]:
    """Japanese text -> characters: NFKC (full-width ASCII and half-width kana fold), whitespace dropped."""
    return [char for char in unicodedata.normalize("NFKC", text) if not char.isspace()]


def target_tokens(text: str) -> list[str]:
    """Gloss string -> gloss tokens, split on any whitespace (including the ideographic space)."""
    return unicodedata.normalize("NFKC", text).split()


def canonical_vocab_json(vocab: dict[str, int]) -> str:
    """The one serialisation the vocabulary hash is computed over (independent of file formatting)."""
    return json.dumps(vocab, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


class JslTokenizer(PreTrainedTokenizer):
    """Character tokenizer for Japanese input and gloss tokenizer for JSL output, over one joint vocabulary.

    `tokenizer(text)` encodes Japanese characters; `tokenizer(text, text_target=glosses)` also returns `labels`
    (transformers switches the tokenizer into target mode for `text_target`). Every sequence ends with `</s>`,
    so empty input encodes to `[eos]`. `decode(ids, skip_special_tokens=True)` returns the gloss string,
    tokens joined by single spaces.

    Args:
        vocab_file (`str`, *optional*): path of a `vocab.json` mapping token -> id.
        vocab (`dict[str, int]`, *optional*): the mapping itself (used by `build_from_pairs`).
        pad_token, bos_token, eos_token, unk_token: the special tokens, which must be in the vocabulary.
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | None = None,
        vocab: dict[str, int] | None = None,
        pad_token: str = "<pad>",
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        **kwargs: Any,
    ) -> None:
        if vocab is None and vocab_file is not None:
            with open(vocab_file, encoding="utf-8") as handle:
                vocab = json.load(handle)
        if vocab is None:
            vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
        missing = [
            str(token) for token in (pad_token, bos_token, eos_token, unk_token) if str(token) not in vocab
        ]
        if missing:
            source = vocab_file or "the vocab passed in"
            raise ValueError(
                f"special tokens {missing} are missing from {source}; rebuild it with build_from_pairs"
            )
        self.vocab: dict[str, int] = {str(token): int(index) for token, index in vocab.items()}
        self.ids_to_tokens: dict[int, str] = {index: token for token, index in self.vocab.items()}
        self._target_mode = False
        # Source text is user text: "<s>" typed by a user is three characters, never a control token.
        kwargs.setdefault("split_special_tokens", True)
        kwargs.setdefault("special_tokens_pattern", "eos")
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        kwargs.setdefault("model_max_length", 64)
        super().__init__(
            pad_token=pad_token, bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, **kwargs
        )

    @classmethod
    def build_from_pairs(
        cls, pairs: Iterable[tuple[str, str]], min_freq: int = 1, **kwargs: Any
    ) -> JslTokenizer:
        """Vocabulary from (japanese, gloss) pairs: the special tokens, then every source character and every
        gloss token seen at least `min_freq` times, each group sorted so the same pairs give the same ids."""
        char_counts: Counter[str] = Counter()
        gloss_counts: Counter[str] = Counter()
        for japanese, gloss in pairs:
            char_counts.update(source_tokens(japanese))
            gloss_counts.update(target_tokens(gloss))
        vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
        for counts in (char_counts, gloss_counts):
            for token in sorted(token for token, count in counts.items() if count >= min_freq):
                vocab.setdefault(token, len(vocab))
        return cls(vocab=vocab, **kwargs)

    def unknown_symbols(self, pairs: Iterable[tuple[str, str]]) -> list[str]:
        """Characters, then glosses, of (japanese, gloss) pairs that the vocabulary lacks, each group sorted
        (the order `build_from_pairs` gives a new vocabulary)."""
        chars: set[str] = set()
        glosses: set[str] = set()
        for japanese, gloss in pairs:
            chars.update(token for token in source_tokens(japanese) if token not in self.vocab)
            glosses.update(token for token in target_tokens(gloss) if token not in self.vocab)
        return sorted(chars) + sorted(glosses - chars)

    def add_symbols(self, tokens: Iterable[str]) -> list[str]:
        """Append `tokens` the vocabulary lacks at its end (existing ids never change); returns those added."""
        added = []
        for token in tokens:
            if token not in self.vocab:
                self.vocab[token] = len(self.vocab)
                self.ids_to_tokens[self.vocab[token]] = token
                added.append(token)
        self._update_total_vocab_size()  # len() is cached by PreTrainedTokenizer
        return added

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return {**self.vocab, **self.added_tokens_encoder}

    def vocab_hash(self) -> str:
        """sha256 of the canonical JSON of the full vocabulary (recorded in the model config at save time)."""
        return hashlib.sha256(canonical_vocab_json(self.get_vocab()).encode("utf-8")).hexdigest()

    def _switch_to_input_mode(self) -> None:
        self._target_mode = False

    def _switch_to_target_mode(self) -> None:
        self._target_mode = True

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return target_tokens(text) if self._target_mode else source_tokens(text)

    def _convert_token_to_id(self, token: str) -> int:
        return self.vocab.get(token, self.vocab[str(self.unk_token)])

    def _convert_id_to_token(self, index: int) -> str:
        return self.ids_to_tokens.get(index, str(self.unk_token))

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return " ".join(tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (f"{filename_prefix}-" if filename_prefix else "") + VOCAB_FILES_NAMES["vocab_file"]
        path = os.path.join(save_directory, name)
        ordered = dict(sorted(self.vocab.items(), key=lambda item: item[1]))
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(ordered, handle, ensure_ascii=False, indent=1)
            handle.write("\n")
        return (path,)
