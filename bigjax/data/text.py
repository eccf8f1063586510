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


def clean_documents(documents, labels=None, *, unicode_form: str = 'NFC',
                    whitespace: str = 'lines', drop_duplicates: bool = True):
    """Cleans each document and drops empty and (exact, after cleaning) duplicate ones.

    Returns (documents, labels or None, CleaningReport). Labels, if given, follow their document.
    """
    if whitespace not in WHITESPACE:
        raise UserError(f'data.text.whitespace={whitespace!r} is not one of {WHITESPACE}')
    if unicode_form not in ('', 'NFC', 'NFKC', 'NFD', 'NFKD'):
        raise UserError(f'data.text.unicode_form={unicode_form!r} is not one of NFC, NFKC, NFD, '
                        'NFKD or "" (none)')
    report, seen, kept_docs, kept_labels = CleaningReport(), set(), [], []
    for i, document in enumerate(documents):
        text = clean_text(document, unicode_form=unicode_form, whitespace=whitespace)
        if not text.strip():
            report.dropped_empty += 1
            continue
        if drop_duplicates:
            digest = hashlib.sha256(text.encode('utf-8')).digest()
            if digest in seen:
                report.dropped_duplicate += 1
                continue
            seen.add(digest)
        kept_docs.append(text)
        if labels is not None:
            kept_labels.append(labels[i])
    report.kept = len(kept_docs)
    return kept_docs, (np.asarray(kept_labels) if labels is not None else None), report


def token_dtype(vocab_size: int):
    """The smallest integer type that holds every id: uint16 up to 65,536 ids."""
    return np.uint16 if vocab_size <= 2 ** 16 else np.int32


def pack(token_docs: list[np.ndarray], seq_len: int, dtype) -> np.ndarray:
    """LM examples: documents joined with end-of-document ids, cut into windows of seq_len + 1
    tokens that overlap by one (inputs are [:-1], targets [1:]); the tail that does not fill a
    window is dropped. Shape (num_windows, seq_len + 1)."""
    stream = np.concatenate([np.append(ids, EOS_ID) for ids in token_docs]).astype(dtype)
    num_windows = (len(stream) - 1) // seq_len
    if num_windows < 1:
        raise UserError(f'the split has {len(stream)} tokens, too few for one sequence of '
                        f'data.text.seq_len={seq_len}: lower seq_len')
    starts = np.arange(num_windows) * seq_len
    return stream[starts[:, None] + np.arange(seq_len + 1)]


def pad(token_docs: list[np.ndarray], seq_len: int, dtype, keep: str = 'first') -> np.ndarray:
    """Classification examples: each document's first (or, keep='last', last) seq_len tokens,
    then PAD_ID. Shape (num_docs, seq_len); padding is where tokens == PAD_ID."""
    out = np.full((len(token_docs), seq_len), PAD_ID, dtype)
    for i, ids in enumerate(token_docs):
        ids = ids[:seq_len] if keep == 'first' else ids[max(len(ids) - seq_len, 0):]
        out[i, :len(ids)] = ids
    return out
