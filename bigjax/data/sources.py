"""Where examples come from: tfds datasets (offline local builders included) and synthetic data.

A source is opened cheaply (its length is known at once) and read into host memory on demand,
so a finished run can be recognised without decoding a dataset.
"""

import dataclasses
import functools
import importlib
import os
import socket
from typing import Callable

import numpy as np

from bigjax.errors import UserError

# Local tfds builders, registered with tfds when their module is imported.
LOCAL_BUILDERS = {'sklearn_digits': 'bigjax.data.digits'}
# Largest pixel value of image datasets whose tfds info does not say.
PIXEL_MAX = {'sklearn_digits': 16}
DOWNLOAD_HOST = ('storage.googleapis.com', 443)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: its size now, its arrays ({'image': uint8 NHWC, 'label': int32}) on demand."""

    num_examples: int
    read_fn: Callable[[], dict[str, np.ndarray]]

    def __len__(self) -> int:
        return self.num_examples

    @functools.cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        return self.read_fn()


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Train and eval splits of an image classification dataset."""

    name: str
    train: Split
    eval: Split
    num_classes: int
    image_shape: tuple[int, int, int]
    pixel_max: float


def open_dataset(data_config) -> ImageDataset:
    """Opens the configured dataset's train and eval splits without reading them."""
    if data_config.name == 'synthetic':
        return _synthetic(data_config)
    return _tfds(data_config)


def _synthetic(data_config) -> ImageDataset:
    """Random images and labels with the configured shapes: for benchmarks, not for learning."""
    syn = data_config.synthetic
    shape = tuple(syn.image_shape)
    if len(shape) != 3 or min(shape) < 1 or syn.num_classes < 2 or min(
            syn.train_examples, syn.eval_examples) < 1:
        raise UserError('data.synthetic needs image_shape (height, width, channels) >= 1, '
                        'num_classes >= 2 and train_examples, eval_examples >= 1')

    def split(num_examples, seed):
        def read():
            rng = np.random.default_rng(seed)
            return {
                'image': rng.integers(0, 256, (num_examples, *shape), dtype=np.uint8),
                'label': rng.integers(0, syn.num_classes, num_examples).astype(np.int32),
            }
        return Split(num_examples, read)

    return ImageDataset('synthetic', split(syn.train_examples, 0), split(syn.eval_examples, 1),
                        syn.num_classes, shape, 255.0)


def _tfds(data_config) -> ImageDataset:
    import tensorflow_datasets as tfds

    name = data_config.name
    if name in LOCAL_BUILDERS:
        importlib.import_module(LOCAL_BUILDERS[name])
    try:
        builder = tfds.builder(name, data_dir=data_config.data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(
            f'unknown dataset {name!r}: use a tfds name (https://www.tensorflow.org/datasets/catalog), '
            f'one of the offline datasets {sorted(LOCAL_BUILDERS)}, or "synthetic"') from None
    train = _open_split(builder, data_config.train_split, data_config)
    eval_ = _open_split(builder, data_config.eval_split, data_config)
    features = builder.info.features
    if 'image' not in features or 'label' not in features:
        raise UserError(f'dataset {name!r} has no image and label features: '
                        'it is not an image classification dataset')
    shape = tuple(features['image'].shape)
    if None in shape:
        raise UserError(f'dataset {name!r} has images of varying size {shape}; '
                        'only fixed-size images are supported')
    return ImageDataset(name, train, eval_, features['label'].num_classes, shape,
                        float(PIXEL_MAX.get(name, 255)))


def _open_split(builder, split: str, data_config) -> Split:
    source = _data_source(builder, split, data_config)

    def read():
        examples = list(source)
        return {
            'image': np.stack([e['image'] for e in examples]).astype(np.uint8),
            'label': np.asarray([e['label'] for e in examples], dtype=np.int32),
        }
    return Split(len(source), read)


def _data_source(builder, split: str, data_config):
    """A random-access source of `split`, preparing the dataset first if it has to."""
    name = builder.info.name
    if not builder.is_prepared():
        try:  # tfds.testing.mock_data serves datasets that are not prepared.
            return builder.as_data_source(split)
        except Exception:  # A real unprepared dataset cannot be read: prepare it below.
            pass
        _prepare(builder, data_config)
    if builder.info.file_format is None or builder.info.file_format.value != 'array_record':
        raise UserError(
            f'dataset {name!r} in {builder.data_dir} is stored as {builder.info.file_format}, '
            f'bigjax reads array_record: set --config.data.data_dir to an empty folder, '
            f'or rebuild it with `tfds build {name} --file_format=array_record`')
    known = list(builder.info.splits)
    if split.split('[')[0] not in known:
        raise UserError(f'dataset {name!r} has no split {split!r}; its splits are {known}')
    if builder.info.splits[split].num_examples == 0:
        raise UserError(f'split {split!r} of dataset {name!r} has no examples')
    return builder.as_data_source(split)


def _prepare(builder, data_config) -> None:
    name = builder.info.name
    remote = name not in LOCAL_BUILDERS
    how = (f'prepare it on a machine with internet (`tfds build {name} '
           f'--file_format=array_record --data_dir=DIR`) and set --config.data.data_dir=DIR, '
           'or train offline with configs/cnn_digits.py')
    if remote and not data_config.download:
        raise UserError(f'dataset {name!r} is not prepared in {builder.data_dir} and '
                        f'data.download is False: {how}')
    if remote and not _online():
        raise UserError(f'dataset {name!r} is not prepared in {builder.data_dir} and cannot be '
                        f'downloaded ({DOWNLOAD_HOST[0]} is unreachable): {how}')
    builder.download_and_prepare(file_format='array_record')


def _online(timeout_s: float = 3.0) -> bool:
    """Whether the download host answers; behind a proxy, tfds is left to find out."""
    if any(os.environ.get(name) for name in ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY')):
        return True
    try:
        socket.create_connection(DOWNLOAD_HOST, timeout=timeout_s).close()
        return True
    except OSError:
        return False
