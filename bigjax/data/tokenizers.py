"""Text <-> token ids: byte-level (no training) or byte-level BPE trained once and cached.

Both reserve id 0 for padding and id 1 for end-of-document, and both round-trip any UTF-8 text
exactly (whitespace and newlines included, which code needs).
"""

import hashlib
from typing import Iterable, Protocol

import numpy as np

from bigjax.errors import UserError

PAD_ID = 0
EOS_ID = 1
TOKENIZERS = ('byte', 'bpe')


class Tokenizer(Protocol):
    name: str  # identifies the exact vocabulary, for cache keys
    vocab_size: int

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...

    def decode(self, ids) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes shifted past the two special ids: vocabulary of 258."""

    name = 'byte'
    vocab_size = 258
    _offset = 2

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode('utf-8'), np.uint8).astype(np.int32) + self._offset
                for t in texts]

    def decode(self, ids) -> str:
        ids = np.asarray(ids)
        return bytes((ids[ids >= self._offset] - self._offset).astype(np.uint8)).decode(
            'utf-8', errors='replace')


class BpeTokenizer:
    """A byte-level BPE model (Hugging Face `tokenizers`) from its JSON serialisation."""

    def __init__(self, json_text: str):
        from tokenizers import Tokenizer as HfTokenizer
        self._tokenizer = HfTokenizer.from_str(json_text)
        self.vocab_size = self._tokenizer.get_vocab_size()
        self.name = f'bpe{self.vocab_size}-{hashlib.sha256(json_text.encode()).hexdigest()[:12]}'

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, np.int32) for e in self._tokenizer.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids if i != PAD_ID and i != EOS_ID])


def train_bpe(texts: Iterable[str], vocab_size: int) -> str:
    """Trains byte-level BPE on `texts`; returns its JSON serialisation."""
    from tokenizers import Tokenizer as HfTokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = HfTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['<pad>', '<eos>'],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer.to_str()


def check(text_config) -> None:
    if text_config.tokenizer not in TOKENIZERS:
        raise UserError(f'data.text.tokenizer={text_config.tokenizer!r} is not one of {TOKENIZERS}')
    if text_config.tokenizer == 'bpe' and not 258 <= text_config.vocab_size <= 65536:
        raise UserError(f'data.text.vocab_size={text_config.vocab_size} must be in [258, 65536] '
                        'for the bpe tokenizer (256 bytes + pad + end-of-document at least)')
