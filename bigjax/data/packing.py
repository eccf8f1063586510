"""Examples packed into windows that keep them apart: several tokenized conversations share a
window of `length` tokens, each in a segment of its own (segment ids 1, 2, ... from the window's
start; 0 is padding), with a weight per token (1 where it is learnt).

Packing is first-fit over the OPEN_WINDOWS most recently opened windows: an example goes into
the first of them it fits, else opens a new one, and the oldest is written once more than
OPEN_WINDOWS are open. It is deterministic, streams (a few windows in memory, whatever the
corpus) and wastes less than filling one window at a time. Windows go to .npy files in a cache
folder as they close (cache.ArrayWriter).
"""

import numpy as np

from bigjax.data import cache, text

ARRAYS = ('tokens', 'segments', 'weights')  # the per-token arrays of a packed window
OPEN_WINDOWS = 8


class Packer:
    """Adds examples (ids, weights of at most `length` tokens) to windows written as
    <prefix>tokens.npy, <prefix>segments.npy and <prefix>weights.npy in `folder`. pack=False
    gives each example a window of its own (padded)."""

    def __init__(self, length: int, dtype, pad_id: int, folder, prefix: str = '',
                 pack: bool = True):
        self.length, self.pad_id, self.pack = length, pad_id, pack
        self.writers = {
            'tokens': cache.ArrayWriter(folder / f'{prefix}tokens.npy', (length,), dtype),
            'segments': cache.ArrayWriter(folder / f'{prefix}segments.npy', (length,),
                                          text.token_dtype(length + 1)),
            'weights': cache.ArrayWriter(folder / f'{prefix}weights.npy', (length,), np.uint8)}
        self.open: list[list] = []  # per open window: its examples, (ids, weights)
        self.used: list[int] = []
        self.examples = self.tokens = self.learnt = 0

    def add(self, ids: np.ndarray, weights: np.ndarray) -> None:
        if not 0 < len(ids) <= self.length or len(ids) != len(weights):
            raise ValueError(f'an example of {len(ids)} tokens for windows of {self.length}')
        self.examples += 1
        self.tokens += len(ids)
        self.learnt += int(weights[1:].sum())
        if self.pack:
            for i, used in enumerate(self.used):
                if used + len(ids) <= self.length:
                    self.open[i].append((ids, weights))
                    self.used[i] += len(ids)
                    return
        self.open.append([(ids, weights)])
        self.used.append(len(ids))
        if len(self.open) > (OPEN_WINDOWS if self.pack else 0):
            self._write(self.open.pop(0))
            self.used.pop(0)

    def _write(self, examples: list) -> None:
        tokens = np.full((1, self.length), self.pad_id, np.int64)
        segments = np.zeros((1, self.length), np.int64)
        weights = np.zeros((1, self.length), np.uint8)
        start = 0
        for segment, (ids, example_weights) in enumerate(examples, 1):
            end = start + len(ids)
            tokens[0, start:end], segments[0, start:end] = ids, segment
            weights[0, start:end] = example_weights
            start = end
        for name, rows in (('tokens', tokens), ('segments', segments), ('weights', weights)):
            self.writers[name].append(rows)

    def close(self) -> dict:
        """Writes the open windows and the files; returns windows, examples, fill (the share of
        window tokens that are real) and learnt_tokens (targets with weight 1)."""
        for examples in self.open:
            self._write(examples)
        self.open, self.used = [], []
        windows = [writer.close() for writer in self.writers.values()][0]
        return {'windows': windows, 'examples': self.examples,
                'fill': self.tokens / max(windows * self.length, 1),
                'learnt_tokens': self.learnt}
