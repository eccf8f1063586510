"""The Weights & Biases writer, in W&B's offline mode (no network, no ~/.config/wandb): what a run
logs there, read back from the offline run's transaction log (.wandb)."""

import importlib.util
import json
import pathlib
import struct
import sys

import pytest

from bigjax import config as config_lib
from bigjax import data as data_lib
from bigjax import train, writers
from bigjax.errors import UserError
from conftest import load_config

needs_wandb = pytest.mark.skipif(importlib.util.find_spec('wandb') is None,
                                 reason='wandb is not installed (pip install -r '
                                        'requirements-test.txt)')
BLOCK, HEADER = 32768, 7  # the .wandb log: 32 KiB blocks; a 7-byte header before each piece
FULL, LAST = 1, 4  # a record whole in one piece, or a record's last piece


@pytest.fixture
def offline(monkeypatch, tmp_path) -> pathlib.Path:
    """W&B offline, its files and settings under tmp_path; returns the folder of its runs."""
    folder = tmp_path / 'wandb_dir'
    folder.mkdir()
    for name in ('WANDB_API_KEY', 'WANDB_BASE_URL', 'WANDB_ENTITY', 'WANDB_PROJECT'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_DIR', str(folder))
    for name in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR', 'WANDB_ARTIFACT_DIR'):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    return folder


def records(path: pathlib.Path):
    """The protobuf records of a .wandb file: after its 7-byte file header, records cut into
    pieces that each have (crc32, length, kind) before them and never cross a block's end."""
    from wandb.proto import wandb_internal_pb2
    data, position, pending = path.read_bytes(), HEADER, b''
    assert data[:4] == b':W&B'
    while position + HEADER <= len(data):
        room = BLOCK - position % BLOCK
        if room < HEADER:  # zero padding at a block's end
            position += room
            continue
        _, length, kind = struct.unpack('<IHB', data[position:position + HEADER])
        pending += data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        if kind in (FULL, LAST):
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b''


def offline_runs(folder: pathlib.Path) -> list[dict]:
    """Each offline run folder (one per start of a run), in start order: its id, name, project,
    config, history {step: {key: value}}, summary and folder."""
    runs = []
    for run_dir in folder.glob('wandb/offline-run-*'):
        run = {'history': {}, 'summary': {}, 'dir': run_dir}
        for record in records(next(run_dir.glob('run-*.wandb'))):
            kind = record.WhichOneof('record_type')
            if kind == 'run':
                run.update(id=record.run.run_id, name=record.run.display_name,
                           project=record.run.project, start=record.run.start_time.ToNanoseconds(),
                           config={item.key: json.loads(item.value_json)
                                   for item in record.run.config.update})
            elif kind == 'history':
                items = {item.key or '/'.join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                run['history'][items.pop('_step')] = {k: v for k, v in items.items()
                                                      if not k.startswith('_')}
            elif kind == 'summary':
                run['summary'].update({item.key: json.loads(item.value_json)
                                       for item in record.summary.update if item.key})
        runs.append(run)
    return sorted(runs, key=lambda run: run['start'])


def metrics_by_step(workdir) -> dict:
    """metrics.jsonl as W&B and TensorBoard name its scalars: {step: {'split/name': value}}."""
    steps = {}
    for row in writers.read_metrics(workdir):
        steps.setdefault(row['step'], {}).update(
            {f"{row['split']}/{k}": v for k, v in row.items() if k not in ('step', 'split', 'time')})
    return steps


def digits(*writer_names, **train_overrides):
    config = load_config('cnn_digits', 'smoke')
    config.writers = writer_names
    config.train.update(num_steps=8, log_every=2, eval_every=4, checkpoint_every=4,
                        **train_overrides)
    return config


@needs_wandb
def test_wandb_run_holds_the_scalars_config_and_report_figures(offline, tmp_path):
    config = digits('tensorboard', 'wandb')
    config.report.enabled = True
    # config.wandb.mode stays 'online' (no API key here): WANDB_MODE=offline wins, as in wandb.
    train.run(config, tmp_path / 'digits_run')
    workdir = tmp_path / 'digits_run'
    training, report = offline_runs(offline)  # the report's figures reopen the run
    assert training['id'] == report['id'] == (workdir / 'wandb_id').read_text().strip()
    assert training['name'] == 'digits_run' and training['project'] == 'bigjax'
    assert training['history'] == metrics_by_step(workdir)  # TensorBoard's scalars, every one
    assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
    saved = {k: v for k, v in training['config'].items() if k != '_wandb'}
    assert saved == json.loads((workdir / 'config.json').read_text())
    figures = {p.stem for p in (workdir / 'report').glob('*.png')}
    assert {'loss', 'confusion_matrix', 'examples'} <= figures
    images = {k.removeprefix('report/'): v for k, v in report['summary'].items()
              if k.startswith('report/')}
    assert set(images) == figures
    assert all(v['_type'] == 'image-file' and (report['dir'] / 'files' / v['path']).is_file()
               for v in images.values())


@needs_wandb
def test_a_restart_resumes_the_same_wandb_run(offline, tmp_path, monkeypatch):
    monkeypatch.delenv('WANDB_MODE')
    config = digits('wandb')
    config.wandb.update(mode='offline', name='digits', tags=('smoke',))
    assert train.run(config, tmp_path, stop_at_step=4) is None
    train.run(config, tmp_path)
    first, resumed = offline_runs(offline)
    assert first['id'] == resumed['id'] == (tmp_path / 'wandb_id').read_text().strip()
    assert first['name'] == resumed['name'] == 'digits'
    # Each start logs its own steps; together they are the run's whole history.
    assert max(first['history']) == 4 and min(resumed['history']) == 6
    assert {**first['history'], **resumed['history']} == metrics_by_step(tmp_path)
    assert not (tmp_path / 'tensorboard').exists()


def test_wandb_without_its_package_is_a_one_line_error_before_anything_runs(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # `import wandb` raises ImportError
    monkeypatch.setattr(data_lib, 'open_dataset', lambda *a, **k: pytest.fail('data was read'))
    with pytest.raises(UserError) as error:
        train.run(digits('tensorboard', 'wandb'), tmp_path / 'run')
    assert str(error.value) == ("config.writers includes 'wandb' but the wandb package is not "
                                'installed: pip install wandb (or drop it from config.writers)')
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('key, value, message', [
    ('writers', ('tensorboard', 'mlflow'), 'config.writers='),
    ('writers', ('wandb', 'wandb'), 'config.writers='),
    ('wandb.mode', 'dryrun', 'wandb.mode='),
    ('wandb.tags', ('a', ''), 'wandb.tags='),
])
def test_bad_writer_settings_are_one_line_errors(key, value, message):
    config = load_config('cnn_digits', 'smoke')
    section, _, name = key.rpartition('.')
    (config[section] if section else config)[name] = value
    with pytest.raises(UserError, match='^' + message) as error:
        config_lib.check(config)
    assert '\n' not in str(error.value)
