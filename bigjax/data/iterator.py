"""Deterministic, resumable batching of in-memory arrays, sharded by process.

Training batch `step` is a pure function of (seed, step): epoch e is a fresh permutation of the
examples seeded by (seed, e), cut into batches with the remainder dropped. The iterator's state
is therefore just the next step, which the checkpoint stores, so a resumed run sees exactly the
batches an uninterrupted run would have seen.
"""

from typing import Iterator

import numpy as np

from bigjax.errors import UserError


class EpochOrder:
    """The rows of global batch `step`: epoch e is a permutation of the examples seeded by
    (seed, e), cut into batches with the remainder dropped."""

    def __init__(self, num_examples: int, global_batch_size: int, seed: int):
        if global_batch_size > num_examples:
            raise UserError(f'train.batch_size={global_batch_size} is larger than the '
                            f'{num_examples} training examples: lower it')
        self.num_examples, self.global_batch_size, self.seed = (num_examples, global_batch_size,
                                                                seed)
        self.steps_per_epoch = num_examples // global_batch_size
        self._epoch, self._order = -1, None

    def rows(self, step: int) -> np.ndarray:
        epoch, index_in_epoch = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        start = index_in_epoch * self.global_batch_size
        return self._order[start:start + self.global_batch_size]

    def drawn(self, first_step: int, stop_step: int) -> dict:
        """What batches [first_step, stop_step) drew, for the log: nothing to say here."""
        del first_step, stop_step
        return {}


class ArrayTrainIterator:
    """Endless training batches in the order `order` gives (default: shuffled epochs); each
    process gets its rows of every global batch.

    With `indices_only`, a batch is {'index': int32 row numbers} instead of the rows, for data
    held on the devices and gathered there (the same rows in the same order).
    """

    def __init__(self, arrays: dict[str, np.ndarray], global_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, *, indices_only: bool = False,
                 order=None):
        """order: an object with rows(step) -> the global batch's row numbers and
        drawn(first_step, stop_step) -> log values, as EpochOrder (data.mixture's is
        bigjax.data.mixture.MixtureOrder)."""
        self.arrays = arrays
        self.indices_only = indices_only
        self.num_examples = len(next(iter(arrays.values())))
        self.order = order or EpochOrder(self.num_examples, global_batch_size, seed)
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.process_index = process_index
        self.next_step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch(self.next_step)
        self.next_step += 1
        return batch

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch `step`."""
        start = self.process_index * self.local_batch_size
        rows = self.order.rows(step)[start:start + self.local_batch_size]
        if self.indices_only:
            return {'index': rows.astype(np.int32)}
        return {name: array[rows] for name, array in self.arrays.items()}

    def drawn(self, first_step: int, stop_step: int) -> dict:
        """Log values about batches [first_step, stop_step) (a mixture: the share of each source)."""
        return self.order.drawn(first_step, stop_step)

    def state(self) -> dict:
        return {'next_step': self.next_step}

    def restore(self, state: dict) -> None:
        self.next_step = int(state['next_step'])


def train_iterator(dataset, global_batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1, *, indices_only: bool = False) -> ArrayTrainIterator:
    """The training batches of a Dataset, in its own order if it has one (data.mixture)."""
    order = dataset.train_order(global_batch_size, seed) if dataset.train_order else None
    return ArrayTrainIterator(dataset.train.arrays, global_batch_size, seed, process_index,
                              process_count, indices_only=indices_only, order=order)


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
