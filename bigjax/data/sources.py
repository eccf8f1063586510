"""Access to tfds datasets, offline local builders included: opening, preparing, reading splits.

Splits are read a range of records at a time: text and labels straight from the array_record
files' tf.train.Example protos, other features (images) through tfds' decoding. Every failure a
user can cause or fix (unknown name, missing split, no internet, a corrupted or wrongly formatted
prepared folder) is a one-line UserError that says what to do.
"""

import dataclasses
import fcntl
import importlib
import os
import socket

import jax
from etils import epath
from jax.experimental import multihost_utils

from bigjax.data.core import DATASETS
from bigjax.errors import UserError

# Local tfds builders, registered with tfds when their module is imported.
LOCAL_BUILDERS = {'sklearn_digits': 'bigjax.data.digits',
                  'python_stdlib': 'bigjax.data.python_stdlib',
                  'python_exceptions': 'bigjax.data.python_exceptions'}
DOWNLOAD_HOST = ('storage.googleapis.com', 443)


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
    """A random-access split and where derived files (caches) for it belong."""

    name: str  # the dataset, e.g. 'mnist' or 'python_stdlib/py311'
    split: str
    source: object  # len() and iteration over example dicts
    features: object  # tfds FeaturesDict
    cache_dir: epath.Path | None  # None when the data is not on disk (tfds.testing.mock_data)
    cache_key: dict
    files: tuple = ()  # tfds FileInstructions of the split's records; () when not on disk
    readers: dict = dataclasses.field(default_factory=dict, repr=False)  # open, by file name


def open_builder(data_config):
    """The tfds builder of data.name (a local builder's module is imported first)."""
    import tensorflow_datasets as tfds

    name = data_config.name
    if name.split('/')[0] in LOCAL_BUILDERS:
        importlib.import_module(LOCAL_BUILDERS[name.split('/')[0]])
    try:
        return tfds.builder(name, data_dir=data_config.data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(
            f'unknown dataset {name!r}: use a tfds name (https://www.tensorflow.org/datasets/catalog), '
            f'one of the offline datasets {sorted(LOCAL_BUILDERS)}, or one registered with '
            f'bigjax.data.register: {DATASETS.names()}') from None


def open_split(builder, split: str, data_config) -> TfdsSplit:
    """A random-access source of `split`, preparing the dataset first if it has to."""
    name = builder.info.full_name
    if not builder.is_prepared():
        try:  # tfds.testing.mock_data serves datasets that are not prepared.
            source = builder.as_data_source(split)
            return TfdsSplit(name, split, source, builder.info.features, None, {})
        except Exception:  # A real unprepared dataset cannot be read: prepare it below.
            pass
        if jax.process_index() == 0:  # One process prepares; the others wait, then read.
            _prepare_once(builder, data_config)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f'bigjax: {name} prepared')
    import tensorflow_datasets as tfds  # A builder made before the data existed (here, or
    root = builder.data_dir_root  # by a peer) misreads it: read what is on disk now.
    builder = tfds.builder_from_directory(builder.data_dir)
    if builder.info.file_format is None or builder.info.file_format.value != 'array_record':
        raise UserError(
            f'dataset {name!r} in {builder.data_dir} is stored as {builder.info.file_format}, '
            f'bigjax reads array_record: set --config.data.data_dir to an empty folder, where '
            f'bigjax prepares it as array_record')
    known = list(builder.info.splits)
    unknown = [part for part in split.split('+') if part.split('[')[0] not in known]
    if unknown:  # tfds split syntax: 'train[:90%]', 'validation+test'
        raise UserError(f'dataset {name!r} has no split {unknown[0]!r}; its splits are {known}')
    if builder.info.splits[split].num_examples == 0:
        raise UserError(f'split {split!r} of dataset {name!r} has no examples')
    try:
        source = builder.as_data_source(split)
    except Exception as e:  # array_record raises several types for damaged files.
        raise corrupted(builder, e) from None
    key = {'dataset': name, 'split': split, 'metadata': dict(builder.info.metadata or {})}
    return TfdsSplit(name, split, source, builder.info.features, cache_root(root) / name, key,
                     tuple(builder.info.splits[split].file_instructions))


def cache_root(data_root) -> epath.Path:
    """Where caches of datasets under `data_root` go: beside them (in an object store too, where
    every host and the next VM find them; cache.py reads them through a copy on disk)."""
    return epath.Path(data_root) / 'bigjax_cache'


def read_examples(split: TfdsSplit, builder, start: int, stop: int) -> list[dict]:
    """Examples [start, stop) of the split, decoded by tfds; a damaged file is a UserError."""
    if not split.files:  # tfds.testing.mock_data's sources serve one example at a time.
        return [split.source[i] for i in range(start, stop)]
    try:
        return list(split.source.__getitems__(list(range(start, stop))))
    except Exception as e:
        raise corrupted(builder, e) from None


def read_scalars(split: TfdsSplit, builder, names: tuple[str, ...], start: int, stop: int
                 ) -> dict[str, list]:
    """Scalar features `names` of records [start, stop) in order, {name: [bytes (text) or int]}:
    parsed from the records' tf.train.Example protos, ~4x faster than tfds' decoding (which data
    not on disk, tfds.testing.mock_data, gets). A damaged file is a UserError."""
    if not split.files:
        examples = read_examples(split, builder, start, stop)  # mocks give text as str
        return {name: [e[name].encode() if isinstance(e[name], str) else e[name]
                       for e in examples] for name in names}
    from tensorflow_datasets.proto import tf_example_pb2
    try:
        protos = [tf_example_pb2.Example.FromString(record).features.feature
                  for record in _records(split, start, stop)]
        return {name: [_first_value(p[name]) for p in protos] for name in names}
    except Exception as e:
        raise corrupted(builder, e) from None


def _first_value(feature):
    """The value of a tf.train.Feature holding one (bytes, int64 or float)."""
    return getattr(feature, feature.WhichOneof('kind')).value[0]


def _records(split: TfdsSplit, start: int, stop: int) -> list[bytes]:
    """Serialized records [start, stop) of the split, read as ranges of its files."""
    from array_record.python.array_record_module import ArrayRecordReader
    records, offset = [], 0
    for file in split.files:
        begin, end = max(start - offset, 0), min(stop - offset, file.take)
        if begin < end:
            if file.filename not in split.readers:
                split.readers[file.filename] = ArrayRecordReader(
                    os.fspath(file.filename), 'readahead_buffer_size:0')
            records += split.readers[file.filename].read(file.skip + begin, file.skip + end)
        offset += file.take
    return records


def corrupted(builder, error: Exception) -> UserError:
    return UserError(f'the prepared dataset in {builder.data_dir} cannot be read '
                     f'({type(error).__name__}: {str(error)[:160]}): delete that folder and '
                     'rerun to prepare it again')


def _prepare_once(builder, data_config) -> None:
    """Prepares the dataset unless another run on this machine did while we waited for the lock
    (runs started together, e.g. a study's parallel trials, would otherwise collide)."""
    root = os.fspath(builder.data_dir_root)
    if '://' in root:
        _prepare(builder, data_config)
        return
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f'.{builder.info.name}.prepare.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not builder.is_prepared():
            _prepare(builder, data_config)


def prepare_command(name: str, data_dir: str) -> str:
    """A shell command that downloads and prepares a tfds dataset as bigjax reads it (tfds' own
    `tfds build` needs apache_beam, which bigjax does not install)."""
    return (f'`python -c "import tensorflow_datasets as tfds; tfds.builder(\'{name}\', '
            f'data_dir=\'{data_dir}\').download_and_prepare(file_format=\'array_record\')"`')


def _prepare(builder, data_config) -> None:
    name = builder.info.name
    remote = name not in LOCAL_BUILDERS
    how = (f'prepare it on a machine with internet ({prepare_command(name, "DIR")}), copy DIR '
           'here and set --config.data.data_dir=DIR, or train offline with configs/cnn_digits.py')
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
