"""What a dataset is to bigjax (Dataset, Split) and the names a config opens one by.

`register(name, open_fn)` makes data.name=name open `open_fn(data config) -> Dataset`; bigjax's
own (synthetic, text_files, image_folder) are registered the same way (bigjax/data/__init__.py).
Any other name is a tfds dataset (datasets.py). A Dataset's kind picks its task (bigjax.tasks):
'image', 'text_lm', 'text_classification', 'text_preference' (pairs of answers), or a kind of
your own with a task registered for it.
"""

import dataclasses
import functools
from typing import Callable

import numpy as np

from bigjax.data import tokenizers
from bigjax.registry import Registry

LM_KINDS = ('text_lm', 'text_preference')  # kinds a language model trains on


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: its size now, its arrays on demand (decoding happens on first access)."""

    num_examples: int
    read_fn: Callable[[], dict[str, np.ndarray]]

    def __len__(self) -> int:
        return self.num_examples

    @functools.cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        return self.read_fn()


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and eval splits and what a model needs to know about them."""

    name: str
    kind: str  # a kind with a registered task (bigjax.tasks)
    train: Split
    eval: Split
    num_classes: int = 0  # classification kinds
    class_names: tuple = ()  # classification kinds: one per class
    image_shape: tuple = ()  # 'image'
    pixel_max: float = 0.0  # 'image': the largest pixel value
    seq_len: int = 0  # text kinds
    vocab_size: int = 0  # text kinds
    tokenizer: tokenizers.Tokenizer | None = None  # text kinds (None for synthetic tokens)
    token_arrays: tuple = ('tokens',)  # text_lm: the arrays an example has per token (packed
    # conversations add 'segments' and 'weights', bigjax.data.packing)
    chat: object = None  # chat and preference data: bigjax.data.chat.Chat (template, held-out
    # prompts)
    eval_parts: tuple = ()  # ((name, Split), ...) also scored one by one (metrics NAME/loss,
    # ...): data.mixture's sources, whose eval splits `eval` joins in this order
    train_order: Callable | None = None  # (global_batch_size, seed) -> the order of training
    # rows (iterator.EpochOrder's methods); None: shuffled epochs. data.mixture draws its own


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    open: Callable  # data config -> Dataset
    describe: Callable | None  # data config -> Dataset without reading examples (None: open)


DATASETS = Registry('data.name', 'bigjax.data.register')


def register(name: str, open_fn: Callable, *, describe: Callable | None = None,
             replace: bool = False) -> None:
    """data.name=name opens `open_fn(data_config)`, a Dataset (its splits may read lazily).
    describe(data_config): the same Dataset without reading any example, for ahead-of-time
    compilation on a machine without the data (default: open_fn)."""
    DATASETS.register(name, DatasetEntry(open_fn, describe), replace=replace)
