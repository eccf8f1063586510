"""Deterministic, resumable batching of in-memory arrays, sharded by process.

Training batch `step` is a pure function of (seed, step): epoch e is a fresh permutation of the
examples seeded by (seed, e), cut into batches with the remainder dropped. The iterator's state
is therefore just the next step, which the checkpoint stores, so a resumed run sees exactly the
batches an uninterrupted run would have seen.
"""

from typing import Iterator

import numpy as np

from bigjax.errors import UserError


class ArrayTrainIterator:
    """Endless shuffled training batches; each process gets its rows of every global batch.

    With `indices_only`, a batch is {'index': int32 row numbers} instead of the rows, for data
    held on the devices and gathered there (the same rows in the same order).
    """

    def __init__(self, arrays: dict[str, np.ndarray], global_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, *, indices_only: bool = False):
        self.arrays = arrays
        self.indices_only = indices_only
        self.num_examples = len(next(iter(arrays.values())))
        if global_batch_size > self.num_examples:
            raise UserError(f'train.batch_size={global_batch_size} is larger than the '
                            f'{self.num_examples} training examples: lower it')
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.seed = seed
        self.process_index = process_index
        self.next_step = 0
        self._epoch, self._order = -1, None

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch_size

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch(self.next_step)
        self.next_step += 1
        return batch

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch `step`."""
        epoch, index_in_epoch = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        start = index_in_epoch * self.global_batch_size + self.process_index * self.local_batch_size
        rows = self._order[start:start + self.local_batch_size]
        if self.indices_only:
            return {'index': rows.astype(np.int32)}
        return {name: array[rows] for name, array in self.arrays.items()}

    def state(self) -> dict:
        return {'next_step': self.next_step}

    def restore(self, state: dict) -> None:
        self.next_step = int(state['next_step'])


def eval_batches(arrays: dict[str, np.ndarray], global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Every example exactly once, in order; the last batch is padded and `mask` marks real rows."""
    num_examples = len(next(iter(arrays.values())))
    local_batch_size = global_batch_size // process_count
    for start in range(0, num_examples, global_batch_size):
        rows = start + process_index * local_batch_size + np.arange(local_batch_size)
        mask = rows < num_examples
        rows = np.where(mask, rows, 0)
        batch = {name: array[rows] for name, array in arrays.items()}
        batch['mask'] = mask
        yield batch
