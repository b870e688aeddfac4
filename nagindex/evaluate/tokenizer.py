"""The proxy models' vocabulary: one small byte-level BPE per evaluation, shared by every arm.

Trained on a seeded random sample of the pool, never on the held-out examples and never on one
arm's documents, so no arm gets a vocabulary fitted to it. Byte-level (GPT-2's scheme, all 256
bytes in the base alphabet), so any text is encodable and bits per byte are exact whatever the
vocabulary. One special token ends every document. ``tokenizers`` (Rust, the package
transformers uses) is imported lazily.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError

EOD = "<|endofdoc|>"


class ProxyTokenizer:
    """A trained byte-level BPE: ``encode`` texts to int32 id arrays; ``eod`` ends a document."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.eod: int = tokenizer.token_to_id(EOD)
        self.vocab_size: int = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int) -> ProxyTokenizer:
        """A ``vocab_size`` BPE (at least the 256 bytes and the end token) learnt from ``texts``."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise NagIndexError(f"proxy vocabulary: at least 257 entries (256 bytes + end token), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOD],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(list(texts), trainer)
        return cls(tok)

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text (no end token added)."""
        return [np.asarray(e.ids, dtype=np.int32) for e in self._tok.encode_batch(list(texts))]

    def stream(self, docs: Sequence[np.ndarray]) -> np.ndarray:
        """``docs`` concatenated, each followed by the end token: what a proxy model trains on."""
        if not docs:
            return np.zeros(0, np.int32)
        out = np.full(sum(len(d) + 1 for d in docs), self.eod, np.int32)
        at = 0
        for d in docs:
            out[at:at + len(d)] = d
            at += len(d) + 1
        return out
