"""Workdirs and data_dirs in an object store (gs://…): nothing appended, nothing renamed, and a
resumed run reads back what the last one wrote. gs:// here is an in-process store with an object
store's rules (fsspec's memory filesystem that refuses append and records renames)."""

import errno
import json
import os
import struct
import time

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
    """No append; a rename is a copy and a delete, recorded so tests can show none happened;
    every object opened for writing is recorded too."""

    protocol = ('gs', 'gcs')
    store, pseudo_dirs, renamed, written = {}, [''], [], []

    @classmethod
    def _strip_protocol(cls, path):
        path = fsspec.utils.stringify_path(path)
        for prefix in ('gs://', 'gcs://'):
            path = path[len(prefix):] if path.startswith(prefix) else path
        return '/' + path.strip('/')

    def _open(self, path, mode='rb', **kwargs):
        if 'a' in mode:
            raise OSError(errno.EOPNOTSUPP, 'an object store has no append', path)
        if 'w' in mode or 'x' in mode:
            self.written.append(path)
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
    ObjectStore.written.clear()
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


def test_a_flush_with_nothing_new_rewrites_no_object(gs):
    """metrics.jsonl and the TensorBoard events are rewritten whole on an object store: only when
    rows or events were added since they were last written."""
    root = workdir.resolve('gs://bucket/runs/a')
    metrics = '/bucket/runs/a/' + writers.METRICS_FILE
    writer = writers.MetricWriter(root, enabled=True, start_step=0)
    writer.write(10, 'train', {'loss': 0.5})
    deadline = time.monotonic() + 30  # until tensorboardX's thread has handed the event over
    while writer.flush() or event_tags(root / 'tensorboard') != {'train/loss': [10]}:
        assert time.monotonic() < deadline, 'the event at step 10 was never written'
        time.sleep(0.01)
    gs.written.clear()
    writer.flush()
    writer.flush()
    assert gs.written == []
    writer.write(20, 'train', {'loss': 0.25})
    writer.flush()
    writer.close()  # tensorboardX flushes several times at close
    events = [path for path in gs.written if path != metrics]
    assert gs.written.count(metrics) == 1 and len(events) == 1, gs.written
    assert [row['step'] for row in writers.read_metrics(root)] == [10, 20]
    assert event_tags(root / 'tensorboard') == {'train/loss': [10, 20]}


def test_the_checkpointer_moves_a_damaged_checkpoint_aside_by_copying(gs, monkeypatch):
    """Checkpointer.move_aside on gs:// (no rename there): the newest step's files copied to
    checkpoints.damaged/<step>, then deleted; the step before is then the newest."""
    from orbax.checkpoint._src.path import gcs_utils  # asks GCS's API; this bucket is flat
    monkeypatch.setattr(gcs_utils, 'is_hierarchical_namespace_enabled', lambda path: False)
    run = epath.Path('gs://bucket/run')
    for step in (5, 7):
        folder = run / 'checkpoints' / str(step)
        (folder / 'state').mkdir(parents=True)
        (folder / 'state' / 'array').write_bytes(bytes([step]) * 100)
        (folder / '_CHECKPOINT_METADATA').write_text('{}')
        (folder / 'commit_success.txt').write_text('')  # a finished step on gs://
    with checkpoint.Checkpointer(run, keep=3) as checkpointer:
        assert checkpointer.latest_step() == 7
        target = checkpointer.move_aside(7)
        assert target == run / checkpoint.DAMAGED_DIR / '7'
        assert checkpointer.latest_step() == 5
        assert not (run / 'checkpoints' / '7').exists()
        assert (target / 'state' / 'array').read_bytes() == b'\x07' * 100
        assert (target / '_CHECKPOINT_METADATA').read_text() == '{}'
        assert checkpointer.move_aside(5) == run / checkpoint.DAMAGED_DIR / '5'
        assert checkpointer.latest_step() is None
    assert not gs.renamed, gs.renamed


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
