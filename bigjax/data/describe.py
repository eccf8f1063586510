"""A dataset described from its config and metadata alone, reading no example: what
ahead-of-time compilation (launch.py --mode=compile) needs, on a machine without the data."""

import dataclasses

import numpy as np

from bigjax.data import datasets, sources, text, tokenizers
from bigjax.data.core import DATASETS, Dataset, Split
from bigjax.errors import UserError


def describe(data_config) -> Dataset:
    """The Dataset `open_dataset` would return, with its kind, classes, shapes and vocabulary
    size, and splits that cannot be read. A BPE vocabulary counts data.text.vocab_size ids (the
    size it reaches on any corpus large enough). A registered dataset without a describe
    function is opened (its splits read when used)."""
    name = data_config.name
    if name in DATASETS:
        entry = DATASETS.get(name)
        return _selected((entry.describe or entry.open)(data_config), data_config)
    features = sources.open_builder(data_config).info.features
    if 'image' in features and 'label' in features and None not in features['image'].shape:
        return _selected(Dataset(name, 'image', _UNREAD, _UNREAD,
                                 num_classes=features['label'].num_classes,
                                 class_names=tuple(features['label'].names),
                                 image_shape=tuple(features['image'].shape), pixel_max=255.0),
                         data_config)
    t = data_config.text
    if t.feature not in features:
        raise UserError(f'dataset {name!r} has neither fixed-size images with labels nor the '
                        f'text feature {t.feature!r}: its features are {list(features)}')
    task = t.task if t.task != 'auto' else (
        'classification' if t.label_feature in features else 'lm')
    names = ()
    if task == 'classification':
        names = datasets.class_names(features, t.label_feature)
    return _selected(_text(data_config, task, names), data_config)


def text_files(data_config) -> Dataset:
    """data.name='text_files' described: windows of tokens for a language model."""
    return _text(data_config, 'lm', ())


def chat(data_config) -> Dataset:
    """Chat data described: packed windows of conversations (tokens, segments, weights)."""
    from bigjax.data import packing
    return dataclasses.replace(_text(data_config, 'lm', ()), token_arrays=packing.ARRAYS)


def preference(data_config) -> Dataset:
    """Preference data described: pairs of answers (tokens, weights: (2, seq_len + 1))."""
    from bigjax.data import pairs
    return dataclasses.replace(_text(data_config, 'lm', ()), kind=pairs.KIND,
                               token_arrays=pairs.ARRAYS)


def _selected(dataset: Dataset, data_config) -> Dataset:
    """The classes data.classes keeps (datasets.select, without reading the examples)."""
    classes = tuple(data_config.classes)
    if not classes or dataset.kind == 'text_lm':
        return dataset
    return dataclasses.replace(dataset, num_classes=len(classes),
                               class_names=tuple(dataset.class_names[c] for c in classes))


def _text(data_config, task: str, class_names: tuple) -> Dataset:
    t = data_config.text
    tokenizers.check(t)
    if t.tokenizer == 'char':
        raise UserError("data.text.tokenizer='char' learns its vocabulary from the data, which "
                        "compiling without data cannot read: use 'byte' or 'bpe', or train once")
    vocab = t.vocab_size if t.tokenizer == 'bpe' else tokenizers.described_vocab_size(t.tokenizer)
    kind = f'text_{task}'
    return Dataset(data_config.name, kind, _UNREAD, _UNREAD, num_classes=len(class_names),
                   class_names=class_names, seq_len=t.seq_len, vocab_size=vocab)


def _not_read() -> dict:
    raise UserError('this dataset was described, not read (ahead-of-time compilation): its '
                    'examples are not available')


_UNREAD = Split(0, _not_read)


def batch_shapes(dataset: Dataset, batch_size: int, *, eval_batch: bool = False
                 ) -> dict[str, tuple[tuple, np.dtype]]:
    """{name: (shape, dtype)} of a global batch of `dataset` as the iterators yield it
    (evaluation batches also carry 'mask'). Kinds other than bigjax's own take each array's
    row shape and dtype from their training split."""
    if dataset.kind == 'image':
        shapes = {'image': ((batch_size, *dataset.image_shape), np.dtype(np.uint8)),
                  'label': ((batch_size,), np.dtype(np.int32))}
    elif dataset.kind in ('text_lm', 'text_classification', 'text_preference'):
        length = dataset.seq_len + (0 if dataset.kind == 'text_classification' else 1)
        row = (2, length) if dataset.kind == 'text_preference' else (length,)  # answer pairs
        dtypes = {'tokens': text.token_dtype(dataset.vocab_size),
                  'segments': text.token_dtype(length + 1), 'weights': np.uint8}
        shapes = {name: ((batch_size, *row), np.dtype(dtypes[name]))
                  for name in dataset.token_arrays}
        if dataset.kind == 'text_classification':
            shapes['label'] = ((batch_size,), np.dtype(np.int32))
    else:
        shapes = {name: ((batch_size, *array.shape[1:]), array.dtype)
                  for name, array in dataset.train.arrays.items()}
    if eval_batch:
        shapes['mask'] = ((batch_size,), np.dtype(np.bool_))
    return shapes
