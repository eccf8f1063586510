"""Workdirs and data_dirs in an object store (gs://…): nothing appended, nothing renamed, and a
resumed run reads back what the last one wrote. gs:// here is an in-process store with an object
store's rules (fsspec's memory filesystem that refuses append and records renames)."""

import errno
import json
import os
import struct

import fsspec
import numpy as np
import pytest
from etils import epath
from etils.epath import backend, gpath
from fsspec.implementations.memory import MemoryFileSystem

from bigjax import checkpoint, data, report, workdir, writers
from bigjax.data import cache, text_files
from test_files import text_config, write


class ObjectStore(MemoryFileSystem):
    """No append; a rename is a copy and a delete, recorded so tests can show none happened."""

    protocol = ('gs', 'gcs')
    store, pseudo_dirs, renamed = {}, [''], []

    @classmethod
    def _strip_protocol(cls, path):
        path = fsspec.utils.stringify_path(path)
        for prefix in ('gs://', 'gcs://'):
            path = path[len(prefix):] if path.startswith(prefix) else path
        return '/' + path.strip('/')

    def _open(self, path, mode='rb', **kwargs):
        if 'a' in mode:
            raise OSError(errno.EOPNOTSUPP, 'an object store has no append', path)
        return super()._open(path, mode, **kwargs)

    def mv(self, path1, path2, **kwargs):
        self.renamed.append((path1, path2))
        self.copy(path1, path2, recursive=True)
        self.rm(path1, recursive=True)


@pytest.fixture
def gs(monkeypatch, tmp_path):
    """gs:// served by ObjectStore through etils.epath, and this host's ~/.cache in tmp_path."""
    monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)  # fsspec, not tf.io.gfile
    for protocol in ObjectStore.protocol:
        fsspec.register_implementation(protocol, ObjectStore, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()
    monkeypatch.setattr(cache, 'LOCAL_COPIES', str(tmp_path / 'local_copies'))
    ObjectStore.store.clear()
    ObjectStore.pseudo_dirs[:] = ['']
    ObjectStore.renamed.clear()
    yield ObjectStore
    backend.fsspec_backend._get_filesystem.cache_clear()
    assert not ObjectStore.renamed, f'renamed in the object store: {ObjectStore.renamed}'


def event_tags(folder: epath.Path) -> dict[str, list[int]]:
    """Steps per scalar tag in the TensorBoard event files of `folder` (TFRecord framing)."""
    from tensorboardX.proto import event_pb2
    tags = {}
    for path in sorted(folder.glob('events.out.tfevents.*')):
        raw, offset = path.read_bytes(), 0
        while offset < len(raw):
            (length,) = struct.unpack('<Q', raw[offset:offset + 8])
            event = event_pb2.Event.FromString(raw[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_metrics_details_config_and_events_resume_on_an_object_store(gs, monkeypatch):
    root = workdir.resolve('gs://bucket/runs/a')
    workdir.check_writable(root, 0)
    workdir.write_config(root, {'seed': 0})
    writer = writers.MetricWriter(root, enabled=True, start_step=0)
    for step in (10, 20, 30):
        writer.write(step, 'train', {'loss': 1.0 / step})
        writer.write_details(step, {'confusion': [[step]]})
    assert writers.read_metrics(root) == []  # rewritten whole, not every line
    writer.flush()  # at a checkpoint
    assert [row['step'] for row in writers.read_metrics(root)] == [10, 20, 30]
    monkeypatch.setattr(writers, 'OBJECT_STORE_FLUSH_SECONDS', 0.0)
    writer.write(40, 'train', {'loss': 0.02})  # due: rewritten at once
    assert [row['step'] for row in writers.read_metrics(root)] == [10, 20, 30, 40]
    writer.close()
    assert event_tags(root / 'tensorboard') == {'train/loss': [10, 20, 30, 40]}

    resumed = writers.MetricWriter(root, enabled=True, start_step=20)  # restored at step 20
    assert [row['step'] for row in writers.read_metrics(root)] == [10, 20]
    assert writers.read_latest_details(root) == (20, {'confusion': [[20]]})
    resumed.write(30, 'train', {'loss': 0.5})
    resumed.close()
    assert [(row['step'], row['loss']) for row in writers.read_metrics(root)][-1] == (30, 0.5)
    assert json.loads((root / 'config.json').read_text()) == {'seed': 0}
    figures = report._Figures(root / report.FIGURES_DIR, enabled=True)
    assert 'data:image/png;base64,' in figures.add('empty', '', lambda f: f.write(b'\x89PNG'))
    assert (root / report.FIGURES_DIR / 'empty.png').read_bytes() == b'\x89PNG'


def test_a_damaged_checkpoint_is_moved_aside_by_copying(gs):
    step = epath.Path('gs://bucket/run/checkpoints/7')
    (step / 'state').mkdir(parents=True)
    (step / 'state' / 'array').write_bytes(b'\x00' * 100)
    (step / '_CHECKPOINT_METADATA').write_text('{}')
    target = epath.Path('gs://bucket/run/checkpoints.damaged/7')
    workdir.move(step, target)
    assert not step.exists()
    assert (target / 'state' / 'array').read_bytes() == b'\x00' * 100
    assert (target / '_CHECKPOINT_METADATA').read_text() == '{}'
    assert checkpoint.workdir_lib is workdir  # Checkpointer.move_aside moves with workdir.move


def test_token_caches_in_an_object_store_are_shared_by_hosts_and_the_next_vm(gs, tmp_path,
                                                                            monkeypatch):
    path = write(tmp_path / 'corpus.txt', 'the quick brown fox jumps over the lazy dog\n' * 50)
    config = text_config(tmp_path, path, seq_len=8)
    config.data_dir = 'gs://bucket/data'
    first = data.open_dataset(config)
    entries = list(epath.Path('gs://bucket/data/bigjax_cache/text_files').iterdir())
    assert len(entries) == 1 and (entries[0] / 'key.json').exists()
    names = {p.name for p in entries[0].iterdir()}
    assert {'key.json', 'report.json'} < names and any(n.endswith('.npy') for n in names)

    fresh_host = tmp_path / 'another_host'  # its disk has no copy: it downloads, reads nothing
    monkeypatch.setattr(cache, 'LOCAL_COPIES', str(fresh_host))
    monkeypatch.setattr(text_files, 'read_utf8', lambda p: pytest.fail('prepared again'))
    again = data.open_dataset(config)
    for name, array in first.train.arrays.items():
        np.testing.assert_array_equal(again.train.arrays[name], array)
        assert isinstance(again.train.arrays[name], np.memmap)  # from this host's copy
    assert os.path.isdir(fresh_host / 'gs' / 'bucket' / 'data' / 'bigjax_cache' / 'text_files')


def test_an_upload_cut_short_is_finished_by_the_next_run(gs, tmp_path):
    directory = epath.Path('gs://bucket/cache')
    built = []

    def build(folder):
        built.append(folder)
        return {'tokens': np.arange(12, dtype=np.int32).reshape(3, 4)}, {'documents': 3}

    arrays, report_ = cache.cached(directory, {'k': 1}, build)
    [entry] = directory.iterdir()
    (entry / 'key.json').unlink()  # as if the upload stopped before its last file
    (entry / 'tokens.npy').unlink()
    arrays, report_ = cache.cached(directory, {'k': 1}, build)  # this host's copy is complete
    assert len(built) == 1 and report_ == {'documents': 3}
    assert (entry / 'key.json').exists() and (entry / 'tokens.npy').exists()
    np.testing.assert_array_equal(arrays['tokens'], np.arange(12).reshape(3, 4))
