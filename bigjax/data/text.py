"""Text preprocessing: cleaning documents, then packing (LM) or padding (classification) tokens."""

import dataclasses
import hashlib
import unicodedata

import numpy as np

from bigjax.data.tokenizers import EOS_ID, PAD_ID
from bigjax.errors import UserError

WHITESPACE = ('keep', 'lines', 'collapse')


@dataclasses.dataclass
class CleaningReport:
    """How many documents a split had, and why the dropped ones were dropped."""

    kept: int = 0
    dropped_empty: int = 0
    dropped_duplicate: int = 0

    def __str__(self) -> str:
        return (f'kept {self.kept} documents, dropped {self.dropped_empty} empty and '
                f'{self.dropped_duplicate} duplicate')


def clean_text(text: str, *, unicode_form: str, whitespace: str) -> str:
    """Unicode normalisation, then whitespace: 'keep' only unifies line endings; 'lines' also
    strips trailing whitespace and blank lines at either end; 'collapse' turns every run of
    whitespace into one space (prose)."""
    if unicode_form:
        text = unicodedata.normalize(unicode_form, text)
    text = text.replace('\r\n', '\n').replace('\r', '\n')
    if whitespace == 'lines':
        text = '\n'.join(line.rstrip() for line in text.split('\n')).strip('\n')
    elif whitespace == 'collapse':
        text = ' '.join(text.split())
    return text


class Cleaner:
    """clean_text over documents that arrive chunk by chunk, dropping empty documents and exact
    duplicates (after cleaning) across all chunks; `report` counts what it kept and dropped."""

    def __init__(self, *, unicode_form: str = 'NFC', whitespace: str = 'lines',
                 drop_duplicates: bool = True):
        if whitespace not in WHITESPACE:
            raise UserError(f'data.text.whitespace={whitespace!r} is not one of {WHITESPACE}')
        if unicode_form not in ('', 'NFC', 'NFKC', 'NFD', 'NFKD'):
            raise UserError(f'data.text.unicode_form={unicode_form!r} is not one of NFC, NFKC, '
                            'NFD, NFKD or "" (none)')
        self.unicode_form, self.whitespace = unicode_form, whitespace
        self.report = CleaningReport()
        self._seen = DigestSet() if drop_duplicates else None

    def __call__(self, documents: list[str], labels=None) -> tuple[list[str], np.ndarray | None]:
        """The chunk's cleaned documents that are kept, and their labels (if given)."""
        texts = [clean_text(d, unicode_form=self.unicode_form, whitespace=self.whitespace)
                 for d in documents]
        keep = np.fromiter((bool(t.strip()) for t in texts), bool, len(texts))
        self.report.dropped_empty += len(texts) - int(keep.sum())
        if self._seen is not None:
            rows = np.flatnonzero(keep)
            digests = np.frombuffer(b''.join(
                hashlib.sha256(texts[i].encode('utf-8')).digest()[:8] for i in rows), np.uint64)
            new = self._seen.add(digests)
            keep[rows[~new]] = False
            self.report.dropped_duplicate += int((~new).sum())
        kept = [t for t, k in zip(texts, keep) if k]
        self.report.kept += len(kept)
        return kept, (np.asarray(labels)[keep] if labels is not None else None)


class DigestSet:
    """64-bit document digests seen so far, as sorted numpy runs merged like a binary counter:
    8 bytes a document (twice that during the largest merge), where a Python set of sha256
    digests takes ~100. Two different documents share a digest with probability ~n^2 / 2^65:
    2e-5 for lm1b's 30 M sentences (the later one would be dropped as a duplicate)."""

    def __init__(self):
        self._runs: list[np.ndarray] = []  # sorted, distinct, longest first

    def add(self, digests: np.ndarray) -> np.ndarray:
        """Whether each digest is new (not added before, nor earlier in `digests`); adds them."""
        unique, first = np.unique(digests, return_index=True)
        fresh = np.ones(len(unique), bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, unique), len(run) - 1)
            fresh &= run[at] != unique
        is_new = np.zeros(len(digests), bool)
        is_new[first[fresh]] = True
        run = unique[fresh]
        while self._runs and len(self._runs[-1]) <= len(run):
            run = np.concatenate([self._runs.pop(), run])
            run.sort(kind='stable')  # Two sorted runs: a linear merge.
        if len(run):
            self._runs.append(run)
        return is_new


def token_dtype(vocab_size: int):
    """The smallest integer type that holds every id: uint16 up to 65,536 ids, else int32
    (Llama 3's 128,256, Gemma 3's 262,144; what the model's input is cast to anyway)."""
    return np.uint16 if vocab_size <= 2 ** 16 else np.int32


class Packer:
    """LM examples from documents whose tokens arrive chunk by chunk: the documents joined with
    end-of-document ids, cut into windows of seq_len + 1 tokens that overlap by one (inputs are
    [:-1], targets [1:]); the tail that never fills a window is dropped."""

    def __init__(self, seq_len: int, dtype, eos_id: int = EOS_ID):
        self.seq_len, self.dtype, self.eos_id = seq_len, dtype, eos_id
        self._rest = np.zeros(0, dtype)  # tokens after the last full window's start

    def __call__(self, token_docs: list[np.ndarray]) -> np.ndarray:
        """The windows completed by these documents, (num_windows, seq_len + 1)."""
        ends = np.cumsum([len(ids) for ids in token_docs], dtype=np.int64)
        tokens = np.concatenate([self._rest, *token_docs]).astype(self.dtype)
        stream = np.insert(tokens, len(self._rest) + ends, self.eos_id)
        num_windows = max((len(stream) - 1) // self.seq_len, 0)
        self._rest = stream[num_windows * self.seq_len:]
        if not num_windows:
            return np.zeros((0, self.seq_len + 1), self.dtype)
        windows = np.lib.stride_tricks.sliding_window_view(stream, self.seq_len + 1)
        return windows[::self.seq_len][:num_windows]


def pad(token_docs: list[np.ndarray], seq_len: int, dtype, keep: str = 'first') -> np.ndarray:
    """Classification examples: each document's first (or, keep='last', last) seq_len tokens,
    then PAD_ID. Shape (num_docs, seq_len); padding is where tokens == PAD_ID."""
    out = np.full((len(token_docs), seq_len), PAD_ID, dtype)
    for i, ids in enumerate(token_docs):
        ids = ids[:seq_len] if keep == 'first' else ids[max(len(ids) - seq_len, 0):]
        out[i, :len(ids)] = ids
    return out
