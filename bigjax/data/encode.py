"""Cleaned documents to token arrays in a cache folder, a chunk at a time, in bounded memory.

Documents are grouped into chunks of about CHUNK_CHARS characters; each chunk is encoded
(tokenizers.encode_documents: the family's BOS first where it has one; when the tokenizer runs on
all cores without holding the GIL, as Hugging Face's BPE does, the next chunk is read and cleaned
meanwhile), packed or padded, and appended to .npy files (cache.ArrayWriter). Only a couple of
chunks are held at a time, whatever the corpus size.
"""

import functools
from concurrent import futures
from typing import Iterable, Iterator

import numpy as np
from etils import epath

from bigjax.data import cache, text, tokenizers
from bigjax.data.tokenizers import Tokenizer

# Characters encoded at a time (~4 M): enough for encode_batch to keep every core busy, few
# enough that the chunks' Encodings (far larger than their ids) stay within a few hundred MB.
CHUNK_CHARS = 1 << 22

Blocks = Iterable[tuple[list[str], np.ndarray | None]]  # (documents, their labels or None)


def write_lm(blocks: Blocks, tokenizer: Tokenizer, folder: epath.Path, seq_len: int, dtype,
             name: str = 'tokens') -> tuple[int, int]:
    """`name`.npy in `folder`: the documents' tokens packed into windows (text.Packer). Returns
    (windows, tokens with the end-of-document ids); no window means the text is too short."""
    packer = text.Packer(seq_len, dtype, tokenizer.eos_id)
    writer = cache.ArrayWriter(folder / f'{name}.npy', (seq_len + 1,), dtype)
    num_tokens = 0
    for _, token_docs in _encoded(blocks, tokenizer):
        writer.append(packer(token_docs))
        num_tokens += sum(len(ids) + 1 for ids in token_docs)
    return writer.close(), num_tokens


def write_classification(blocks: Blocks, tokenizer: Tokenizer, folder: epath.Path,
                         seq_len: int, dtype, keep: str) -> int:
    """tokens.npy (each document's tokens cut to seq_len and padded, text.pad) and label.npy
    (int32) in `folder`; returns the number of documents."""
    tokens = cache.ArrayWriter(folder / 'tokens.npy', (seq_len,), dtype)
    labels = cache.ArrayWriter(folder / 'label.npy', (), np.int32)
    for (_, chunk_labels), token_docs in _encoded(blocks, tokenizer):
        tokens.append(text.pad(token_docs, seq_len, dtype, keep))
        labels.append(chunk_labels)
    labels.close()
    return tokens.close()


def _chunks(blocks: Blocks, max_chars: int) -> Iterator[tuple[list[str], np.ndarray | None]]:
    """The documents (and labels) of `blocks` regrouped, in order, into chunks that end at the
    document that brings them to max_chars characters."""
    docs, labels, chars = [], [], 0
    for block_docs, block_labels in blocks:
        for i, doc in enumerate(block_docs):
            docs.append(doc)
            labels.append(None if block_labels is None else block_labels[i])
            chars += len(doc)
            if chars >= max_chars:
                yield docs, _labels(labels)
                docs, labels, chars = [], [], 0
    if docs:
        yield docs, _labels(labels)


def _labels(labels: list) -> np.ndarray | None:
    return None if labels[0] is None else np.asarray(labels, np.int32)


def _encoded(blocks: Blocks, tokenizer: Tokenizer):
    """(chunk, each document's ids: encode_documents) for each chunk of `blocks`, in order. A
    tokenizer that encodes in parallel outside the GIL works on a chunk while the next one is read;
    any other encodes in line (a second Python thread would only contend for the GIL)."""
    chunks = _chunks(blocks, CHUNK_CHARS)
    encode = functools.partial(tokenizers.encode_documents, tokenizer)
    if not tokenizer.encodes_in_parallel:
        for chunk in chunks:
            yield chunk, encode(chunk[0])
        return
    with futures.ThreadPoolExecutor(1) as worker:
        pending = None
        for chunk in chunks:
            encoding = worker.submit(encode, chunk[0])
            if pending:
                yield pending[0], pending[1].result()
            pending = chunk, encoding
        if pending:
            yield pending[0], pending[1].result()
