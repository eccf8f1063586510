"""A dataset described from its config and metadata alone, reading no example: what
ahead-of-time compilation (launch.py --mode=compile) needs, on a machine without the data."""

import dataclasses

import numpy as np

from bigjax.data import datasets, image_folder, sources, text, tokenizers
from bigjax.data.datasets import Dataset, Split
from bigjax.errors import UserError

BYTE_VOCAB = tokenizers.ByteTokenizer.vocab_size


def describe(data_config) -> Dataset:
    """The Dataset `open_dataset` would return, with its kind, classes, shapes and vocabulary
    size, and splits that cannot be read. A BPE vocabulary counts data.text.vocab_size ids (the
    size it reaches on any corpus large enough)."""
    name = data_config.name
    if name == 'synthetic':
        return _selected(datasets.synthetic(data_config), data_config)  # made when read
    if name == 'image_folder':  # lists the files, decodes none
        return _selected(image_folder.open_image_folder(data_config), data_config)
    if name == 'text_files':
        return _text(data_config, 'lm', ())
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
    vocab = BYTE_VOCAB if t.tokenizer == 'byte' else t.vocab_size
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
    (evaluation batches also carry 'mask')."""
    if dataset.kind == 'image':
        shapes = {'image': ((batch_size, *dataset.image_shape), np.dtype(np.uint8))}
    else:
        length = dataset.seq_len + (1 if dataset.kind == 'text_lm' else 0)
        shapes = {'tokens': ((batch_size, length), np.dtype(text.token_dtype(dataset.vocab_size)))}
    if dataset.kind != 'text_lm':
        shapes['label'] = ((batch_size,), np.dtype(np.int32))
    if eval_batch:
        shapes['mask'] = ((batch_size,), np.dtype(np.bool_))
    return shapes
