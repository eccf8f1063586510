"""Background preparation of the next batches, with the iterator state that goes with each.

A worker thread pulls batches from the iterator and turns them into device arrays up to `depth`
batches ahead of the training loop. Each batch comes with the iterator's state right after it,
so a checkpoint records the position of the batches the loop has consumed, not of those queued.
"""

import collections
import concurrent.futures
from typing import Any, Callable, Iterator


def prefetch(iterator, depth: int, to_device: Callable[[Any], Any]) -> Iterator[tuple[Any, dict]]:
    """Yields (to_device(batch), iterator state after it), preparing `depth` batches ahead."""

    def produce():
        batch = next(iterator)
        return to_device(batch), iterator.state()

    if depth <= 0:
        while True:
            yield produce()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='prefetch') as worker:
        queued = collections.deque(worker.submit(produce) for _ in range(depth))
        while True:
            ready = queued.popleft().result()
            queued.append(worker.submit(produce))
            yield ready
