"""Text <-> token ids: byte-level (no training), characters of the training text, byte-level
BPE trained once and cached, or a Hugging Face model's own tokenizer.json ('hf:FOLDER').

bigjax's own reserve id 0 for padding and id 1 for end-of-document; a model's own has its ids
(eos_id, pad_id, and bos_id where its family starts every text with a BOS, as Llama 3, Gemma and
Mistral do: documents and prompts then start with it). Byte and BPE round-trip any UTF-8 text
exactly (whitespace and newlines included, which code needs); characters round-trip any text made
of the training text's characters (others become one unknown id).

Documents are encoded with special tokens as text ('<eos>' written in a document is text); a
rendered chat (encode_chats) is encoded as transformers encodes apply_chat_template's output:
special tokens written by the template are those tokens ('<pad>' and '<eos>' for bigjax's own).
"""

import functools
import hashlib
import itertools
import json
import os
import re
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from bigjax import hf, workdir
from bigjax.errors import UserError

PAD_ID = 0
EOS_ID = 1
UNKNOWN_ID = 2  # 'char': a character the training text does not have
TOKENIZERS = ('byte', 'char', 'bpe', 'hf:FOLDER')
LEARNT = ('char', 'bpe')  # learnt from the training text (and cached)
PRETRAINED = 'hf:'  # data.text.tokenizer='hf:FOLDER': FOLDER/tokenizer.json, a model's own

# Hugging Face's byte-level pre-tokenizer pattern (GPT-2's) for ASCII text, where Python's re
# classes can state it exactly (tests compare it with the tokenizer's own pre-tokenizer).
_SPACE = r'\t\n\x0b\x0c\r '
ASCII_PIECES = re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_SPACE}A-Za-z0-9]+"
                          rf"|[{_SPACE}]+(?![^{_SPACE}])|[{_SPACE}]+")
# Hosts with at most this many cores encode ASCII text through PieceMemo, in line: an lm1b-like
# sentence costs Hugging Face's BPE ~90 us of CPU and PieceMemo ~20 us on one core (measured,
# benchmarks/README.md). From 4 cores on, Hugging Face's threads should be as fast, beside the
# reading (an estimate from those costs).
MEMO_MAX_CPUS = 3


class Tokenizer(Protocol):
    name: str  # identifies the exact vocabulary, for cache keys
    vocab_size: int
    encodes_in_parallel: bool  # encode_batch runs on several cores, outside Python's GIL
    json: str | None  # its Hugging Face tokenizer.json, where it has one (bpe, hf:)
    eos_id: int  # ends each document (and starts a prompt where there is no bos_id)
    pad_id: int  # fills classification examples
    bos_id: int | None  # starts every document and prompt, where the family's tokenizer adds one
    special_tokens: dict  # {'bos_token': text, 'eos_token': text, ...} for chat templates
    chat_template: str | None  # its own chat template (a model's), if any

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...

    def encode_chats(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, (start, end) characters of each id) of each rendered chat, its special tokens'
        texts encoded as those tokens."""

    def decode(self, ids) -> str: ...

    def token_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """(UTF-8 bytes, characters) each id stands for, int32 (vocab_size,): summed over a
        text's ids they give its length, for bits per byte/character."""


OWN_SPECIAL_TOKENS = {'<pad>': PAD_ID, '<eos>': EOS_ID}  # bigjax's own tokenizers' specials
OWN_TEMPLATE_TOKENS = {'bos_token': '<eos>', 'eos_token': '<eos>', 'pad_token': '<pad>'}


class ByteTokenizer:
    """UTF-8 bytes shifted past the two special ids: vocabulary of 258."""

    name = 'byte'
    vocab_size = 258
    encodes_in_parallel = False
    json = None
    eos_id, pad_id, bos_id = EOS_ID, PAD_ID, None
    special_tokens, chat_template = OWN_TEMPLATE_TOKENS, None
    _offset = 2

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode('utf-8'), np.uint8).astype(np.int32) + self._offset
                for t in texts]

    def encode_chats(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        def piece(part: str):
            data = np.frombuffer(part.encode('utf-8'), np.uint8)
            chars = np.cumsum((data & 0xC0) != 0x80) - 1  # the character each byte belongs to
            return data.astype(np.int32) + self._offset, chars
        return [_encode_pieces(text, piece) for text in texts]

    def decode(self, ids) -> str:
        ids = np.asarray(ids)
        return bytes((ids[ids >= self._offset] - self._offset).astype(np.uint8)).decode(
            'utf-8', errors='replace')

    def token_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        return _lengths([b''] * self._offset + [bytes([b]) for b in range(256)])


class BpeTokenizer:
    """A byte-level BPE model (Hugging Face `tokenizers`) from its JSON serialisation."""

    eos_id, pad_id, bos_id = EOS_ID, PAD_ID, None
    special_tokens, chat_template = OWN_TEMPLATE_TOKENS, None

    def __init__(self, json_text: str, memoise: bool | None = None):
        """memoise: encode ASCII documents through PieceMemo (None: on hosts of at most
        MEMO_MAX_CPUS cores, when the tokenizer is the plain byte-level BPE that train_bpe makes)."""
        from tokenizers import Tokenizer as HfTokenizer
        self.json = json_text
        self._tokenizer = HfTokenizer.from_str(json_text)
        self._tokenizer.encode_special_tokens = True  # '<eos>' in a document is text, not id 1
        self.vocab_size = self._tokenizer.get_vocab_size()
        self.name = f'bpe{self.vocab_size}-{hashlib.sha256(json_text.encode()).hexdigest()[:12]}'
        if memoise is None:
            memoise = len(os.sched_getaffinity(0)) <= MEMO_MAX_CPUS
        self._memo = PieceMemo(self._encode) if memoise and _plain_byte_level(json_text) else None
        self.encodes_in_parallel = self._memo is None

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self._memo is None:
            return self._encode(texts)
        is_ascii = [t.isascii() for t in texts]
        memoised = iter(self._memo.encode([t for t, a in zip(texts, is_ascii) if a]))
        others = iter(self._encode([t for t, a in zip(texts, is_ascii) if not a]))
        return [next(memoised) if a else next(others) for a in is_ascii]

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, np.int32) for e in self._tokenizer.encode_batch(texts)]

    def encode_chats(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        return _chat_encodings(self.json, texts)

    def decode(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids if i != PAD_ID and i != EOS_ID])

    def token_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        to_byte = {char: byte for byte, char in _byte_level_chars().items()}
        tokens = [b''] * self.vocab_size
        for token, index in self._tokenizer.get_vocab().items():
            if index not in (PAD_ID, EOS_ID):
                tokens[index] = bytes(to_byte[char] for char in token)
        return _lengths(tokens)


class PieceMemo:
    """Byte-level BPE of ASCII texts with each distinct piece (a word with its leading space, a
    number, a run of punctuation or spaces: ASCII_PIECES) encoded by `encode` once, then looked
    up. BPE never merges across pieces, so the ids equal encoding the whole text. Holds at most
    MAX_PIECES pieces (cleared when full): memory stays bounded whatever the corpus."""

    MAX_PIECES = 1 << 18

    def __init__(self, encode: Callable[[list[str]], list[np.ndarray]]):
        self._encode = encode
        self._clear()

    def _clear(self):
        self._index: dict[str, int] = {}
        self._ids = np.zeros(0, np.int32)  # every piece's ids, one after another
        self._start = np.zeros(0, np.int64)  # where each piece's ids begin in _ids
        self._length = np.zeros(0, np.int64)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        pieces = [ASCII_PIECES.findall(t) for t in texts]
        flat = list(itertools.chain.from_iterable(pieces))
        new = set(flat).difference(self._index)
        if len(self._index) + len(new) > self.MAX_PIECES:
            self._clear()
            new = set(flat)
        if new:
            self._add(sorted(new))
        index = np.fromiter(map(self._index.__getitem__, flat), np.int64, len(flat))
        lengths = self._length[index]
        ends = np.cumsum(lengths)
        positions = (np.arange(ends[-1] if len(ends) else 0)
                     + np.repeat(self._start[index] - (ends - lengths), lengths))
        ids = self._ids[positions]
        piece_ends = np.concatenate([np.zeros(1, np.int64), ends])
        text_ends = piece_ends[np.cumsum([0] + [len(p) for p in pieces])].tolist()
        return [ids[start:end] for start, end in zip(text_ends[:-1], text_ends[1:])]

    def _add(self, new: list[str]) -> None:
        ids = self._encode(new)
        lengths = np.asarray([len(i) for i in ids], np.int64)
        self._index.update(zip(new, range(len(self._index), len(self._index) + len(new))))
        self._start = np.concatenate([self._start, len(self._ids) + np.cumsum(lengths) - lengths])
        self._length = np.concatenate([self._length, lengths])
        self._ids = np.concatenate([self._ids, *ids]).astype(np.int32)


def _plain_byte_level(json_text: str) -> bool:
    """Whether a tokenizer is byte-level BPE and nothing else (no normaliser, post-processor or
    dropout; GPT-2's pattern, no prefix space): what PieceMemo reproduces exactly."""
    spec = json.loads(json_text)
    pre = spec.get('pre_tokenizer') or {}
    model = spec.get('model') or {}
    return (spec.get('normalizer') is None and spec.get('post_processor') is None
            and pre.get('type') == 'ByteLevel' and not pre.get('add_prefix_space')
            and pre.get('use_regex', True) and model.get('type') == 'BPE'
            and model.get('dropout') is None)


class CharTokenizer:
    """One id per distinct character of the training text, in code point order, after the pad,
    end-of-document and unknown ids (nanoGPT's character-level setting)."""

    _offset = 3
    encodes_in_parallel = False
    json = None
    eos_id, pad_id, bos_id = EOS_ID, PAD_ID, None
    special_tokens, chat_template = OWN_TEMPLATE_TOKENS, None

    def __init__(self, chars: str):
        self.chars = chars
        self.vocab_size = self._offset + len(chars)
        self._ids = {c: i + self._offset for i, c in enumerate(chars)}
        self.name = f'char{len(chars)}-{hashlib.sha256(chars.encode()).hexdigest()[:12]}'

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> 'CharTokenizer':
        return cls(''.join(sorted(set().union(*map(set, texts)))))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.fromiter((self._ids.get(c, UNKNOWN_ID) for c in t), np.int32, len(t))
                for t in texts]

    def encode_chats(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [_encode_pieces(text, lambda part: (self.encode_batch([part])[0],
                                                   np.arange(len(part)))) for text in texts]

    def decode(self, ids) -> str:
        return ''.join(self.chars[i - self._offset] if i >= self._offset else '\ufffd'
                       for i in map(int, ids) if i not in (PAD_ID, EOS_ID))

    def token_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        return _lengths([b''] * 2 + ['\ufffd'.encode()] + [c.encode() for c in self.chars])


def _encode_pieces(text: str, encode_piece) -> tuple[np.ndarray, np.ndarray]:
    """encode_chats for tokenizers that encode text piece by piece: the special tokens' texts
    (OWN_SPECIAL_TOKENS) become their ids, the text between them encode_piece(part) ->
    (ids, the character of each id within part)."""
    pattern = '|'.join(re.escape(token) for token in OWN_SPECIAL_TOKENS)
    ids, starts, position = [], [], 0
    for match in [*re.finditer(pattern, text), None]:
        end = match.start() if match else len(text)
        if end > position:
            part_ids, part_chars = encode_piece(text[position:end])
            ids.append(np.asarray(part_ids, np.int32))
            starts.append(position + np.asarray(part_chars, np.int64))
        if match:
            ids.append(np.asarray([OWN_SPECIAL_TOKENS[match.group()]], np.int32))
            starts.append(np.asarray([match.start()], np.int64))
            position = match.end()
    ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    ends = np.maximum(np.append(starts[1:], len(text)), starts + 1)
    return ids, np.stack([starts, ends], axis=1)


@functools.lru_cache(maxsize=8)
def hf_tokenizer(json_text: str):
    """A tokenizer.json loaded with its special tokens recognised in text (as transformers
    encodes a rendered chat), once per process."""
    from tokenizers import Tokenizer as HfTokenizer
    return HfTokenizer.from_str(json_text)


def _chat_encodings(json_text: str, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """encode_chats of a tokenizer.json: encode_batch, on every core outside the GIL."""
    return [(np.asarray(e.ids, np.int32), np.asarray(e.offsets, np.int64).reshape(-1, 2))
            for e in hf_tokenizer(json_text).encode_batch(texts, add_special_tokens=False)]


def _byte_level_chars() -> dict[int, str]:
    """The printable character byte-level BPE writes for each byte (GPT-2's convention:
    printable Latin-1 bytes stand for themselves, the rest map to code points from 256 on)."""
    printable = [*range(ord('!'), ord('~') + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def _lengths(tokens: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Bytes per token, and characters per token counted as the bytes that start a UTF-8
    character (so a character split across tokens is counted once)."""
    num_bytes = np.asarray([len(t) for t in tokens], np.int32)
    num_chars = np.asarray([sum((b & 0xC0) != 0x80 for b in t) for t in tokens], np.int32)
    return num_bytes, num_chars


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


def sample(read_block: Callable[[int], list[str]], num_blocks: int, max_chars: int
           ) -> list[str]:
    """The texts a tokenizer learns from: blocks of a corpus (read_block(i), i < num_blocks) taken
    in spread_order until they hold max_chars characters (0: no limit), then joined in corpus
    order. A corpus of at most max_chars characters is therefore learnt whole, in order."""
    taken, chars = {}, 0
    for block in spread_order(num_blocks):
        if max_chars and chars >= max_chars:
            break
        taken[block] = read_block(block)
        chars += sum(map(len, taken[block]))
    return [t for block in sorted(taken) for t in taken[block]]


def spread_order(n: int) -> Iterator[int]:
    """0 .. n-1 in bit-reversed order (0, n/2, n/4, 3n/4, ...): every prefix is spread evenly
    over the range."""
    bits = (n - 1).bit_length() if n > 1 else 0
    for i in range(1 << bits):
        j = int(f'{i:0{bits}b}'[::-1], 2) if bits else 0
        if j < n:
            yield j


def train(kind: str, texts: list[str], vocab_size: int) -> str:
    """A trained tokenizer of `kind` ('char' or 'bpe') as a string, for caches (see load)."""
    if kind == 'char':
        return CharTokenizer.from_texts(texts).chars
    return train_bpe(texts, vocab_size)


def load(kind: str, trained: str = '') -> Tokenizer:
    """The tokenizer of `kind`, from what `train` returned (nothing for 'byte' and 'hf:')."""
    if kind == 'byte':
        return ByteTokenizer()
    if kind.startswith(PRETRAINED):
        return PretrainedTokenizer(kind[len(PRETRAINED):])
    return CharTokenizer(trained) if kind == 'char' else BpeTokenizer(trained)


def described_vocab_size(kind: str) -> int:
    """The vocabulary of `kind` without learning it: a model's own from its config.json where
    there is one (no tokenizer.json needed: compiling for hardware reads no text)."""
    if kind.startswith(PRETRAINED):
        model = _json_file(os.path.join(hf.folder(kind), 'config.json'))
        if 'vocab_size' in model:
            return model['vocab_size']
    return load(kind).vocab_size


def check_padding(tokenizer: Tokenizer, task: str) -> None:
    """Classifiers read padding as id 0 (models/transformer.py): a model's own tokenizer must
    pad with it."""
    if task == 'classification' and tokenizer.pad_id != PAD_ID:
        raise UserError(f'{tokenizer.name} pads with id {tokenizer.pad_id}, and text '
                        f'classification needs padding id {PAD_ID}: use it for language '
                        "modelling, or data.text.tokenizer='bpe'")


def check(text_config) -> None:
    kind = text_config.tokenizer
    if kind not in ('byte', *LEARNT) and not (kind.startswith(PRETRAINED) and kind[3:].strip()):
        raise UserError(f'data.text.tokenizer={text_config.tokenizer!r} is not one of {TOKENIZERS}')
    if text_config.tokenizer == 'bpe' and text_config.vocab_size < 258:
        raise UserError(f'data.text.vocab_size={text_config.vocab_size} must be >= 258 for the '
                        'bpe tokenizer (256 bytes + pad + end-of-document)')
    if text_config.tokenizer_sample < 0:
        raise UserError(f'data.text.tokenizer_sample={text_config.tokenizer_sample} must be >= 0 '
                        '(characters a tokenizer learns from; 0 = the whole split)')


class PretrainedTokenizer:
    """A Hugging Face model's own tokenizer: FOLDER/tokenizer.json, its end-of-text and padding
    tokens from tokenizer_config.json (or config.json's ids; padding defaults to end-of-text), its
    size the model's vocab_size where config.json gives one (embeddings may have spare rows).
    A document is its BOS (bos_id, where the family's tokenizer adds one), its text and eos_id."""

    encodes_in_parallel = True

    def __init__(self, folder: str):
        from tokenizers import Tokenizer as HfTokenizer
        folder = hf.folder(folder)
        path = os.path.join(folder, 'tokenizer.json')
        if not os.path.isfile(path):
            raise UserError(f'data.text.tokenizer=hf:{folder}: no tokenizer.json there (a folder '
                            "as transformers' save_pretrained writes it)")
        with open(path) as f:
            self.json = f.read()
        self._tokenizer = HfTokenizer.from_str(self.json)
        self._tokenizer.encode_special_tokens = True  # special tokens in a document are text
        settings, model = (_json_file(os.path.join(folder, name))
                           for name in ('tokenizer_config.json', 'config.json'))

        def token_id(key: str):
            token = settings.get(f'{key}_token')
            token = token.get('content') if isinstance(token, dict) else token
            found = self._tokenizer.token_to_id(token) if token else None
            given = model.get(f'{key}_token_id')
            return found if found is not None else (given[0] if isinstance(given, list)
                                                    else given)

        self.special_tokens = {f'{key}_token': text for key in SPECIAL_TOKEN_NAMES
                               if (text := _token_text(settings.get(f'{key}_token')))}
        self.chat_template = _chat_template(folder, settings)
        self.eos_id = token_id('eos')
        if self.eos_id is None:
            raise UserError(f'{folder} names no end-of-text token (tokenizer_config.json '
                            "eos_token or config.json eos_token_id): bigjax separates documents "
                            'with it')
        pad = token_id('pad')
        self.pad_id = self.eos_id if pad is None else pad
        self.bos_id = _added_bos(self.json)
        self.vocab_size = max(self._tokenizer.get_vocab_size(), model.get('vocab_size', 0))
        self.name = (f'hf{self.vocab_size}-{hashlib.sha256(self.json.encode()).hexdigest()[:12]}'
                     + ('' if self.bos_id is None else f'-bos{self.bos_id}'))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, np.int32)
                for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def encode_chats(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        return _chat_encodings(self.json, texts)

    def decode(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Byte-level pieces by their bytes, byte fallbacks ('<0x0A>') as one byte, SentencePiece
        pieces with '▁' as a space; special tokens as nothing."""
        to_byte = {char: byte for byte, char in _byte_level_chars().items()}
        special = {token.content for token in self._tokenizer.get_added_tokens_decoder().values()
                   if token.special}
        tokens = [b''] * self.vocab_size
        for token, index in self._tokenizer.get_vocab().items():
            if token in special or index >= self.vocab_size:
                continue
            if re.fullmatch(r'<0x[0-9A-Fa-f]{2}>', token):
                tokens[index] = bytes([int(token[3:5], 16)])
            elif all(char in to_byte for char in token):
                tokens[index] = bytes(to_byte[char] for char in token)
            else:
                tokens[index] = token.replace('\u2581', ' ').encode()
        return _lengths(tokens)


SPECIAL_TOKEN_NAMES = ('bos', 'eos', 'unk', 'sep', 'pad', 'cls', 'mask')  # transformers' named


def _added_bos(json_text: str) -> int | None:
    """The id a tokenizer.json's post-processor puts before every text: the special token that
    starts its TemplateProcessing (alone or in a Sequence), if any. transformers 5 decides by this
    alone: it drops tokenizer_config.json's add_bos_token where there is a tokenizer.json."""
    spec = json.loads(json_text).get('post_processor') or {}
    for processor in spec.get('processors', [spec]):
        first = (processor.get('single') or [{}])[0]
        if processor.get('type') == 'TemplateProcessing' and 'SpecialToken' in first:
            return processor['special_tokens'][first['SpecialToken']['id']]['ids'][0]
    return None


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Each text's ids as a document starts: after the family's BOS where it has one (the
    end-of-document id that follows is the packer's)."""
    ids = tokenizer.encode_batch(texts)
    if tokenizer.bos_id is None:
        return ids
    bos = np.asarray([tokenizer.bos_id], np.int32)
    return [np.concatenate([bos, i]) for i in ids]


def prompt_start(tokenizer: Tokenizer) -> int:
    """The id a prompt starts with, as a document does: the family's BOS where its tokenizer adds
    one, else the end of text (a document follows the one before)."""
    return tokenizer.eos_id if tokenizer.bos_id is None else tokenizer.bos_id


def _token_text(token) -> str | None:
    return token.get('content') if isinstance(token, dict) else token


def _chat_template(folder: str, settings: dict) -> str | None:
    """A Hugging Face folder's chat template as transformers loads it: chat_template.jinja
    first, else tokenizer_config.json's chat_template (of several, the one named 'default')."""
    path = os.path.join(folder, 'chat_template.jinja')
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as f:
            return f.read()
    template = settings.get('chat_template')
    if isinstance(template, list):
        named = {t.get('name'): t.get('template') for t in template}
        template = named.get('default')
    return template or None


def _json_file(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    return workdir.read_json(path, "the model folder's files are cut short or damaged: fetch the "
                             "model again (hf download, or transformers' save_pretrained)")
