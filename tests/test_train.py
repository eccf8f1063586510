import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from bigjax import config as config_lib
from bigjax import platform, train, writers
from bigjax.data.sources import LOCAL_BUILDERS
from bigjax.errors import UserError
from conftest import CONFIGS, REPO, load_config

TIMING_KEYS = ('steps_per_sec', 'examples_per_sec', 'time')


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def final_params(workdir, step):
    """The parameters saved at `step`, as numpy arrays."""
    restored = ocp.PyTreeCheckpointer().restore(workdir / 'checkpoints' / str(step) / 'state')
    return restored['params']


def digits_smoke(**train_overrides):
    config = load_config('cnn_digits', 'smoke')
    config.train.update(train_overrides)
    return config


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_smoke_runs_end_to_end(name, tmp_path):
    config = load_config(name, 'smoke')
    if config.data.name in LOCAL_BUILDERS:
        result = train.run(config, tmp_path)
    else:
        with tfds.testing.mock_data(num_examples=48):
            result = train.run(config, tmp_path)
    assert np.isfinite(result['loss'])
    rows = writers.read_metrics(tmp_path)
    train_rows = [r for r in rows if r['split'] == 'train']
    assert train_rows and all('loss' in r and 'learning_rate' in r for r in train_rows)
    # It learnt, even at smoke size: the train loss fell and the weights moved between the
    # mid-run and the final checkpoint.
    assert train_rows[-1]['loss'] < train_rows[0]['loss']
    mid, final = (jax.tree.leaves(final_params(tmp_path, step)) for step in
                  (config.train.checkpoint_every, config.train.num_steps))
    assert any(not np.array_equal(a, b) for a, b in zip(mid, final))
    assert all(r['examples_per_sec'] > 0 for r in train_rows)
    assert without_timing(rows)[-1] == {'step': config.train.num_steps, 'split': 'eval', **result}
    assert json.loads((tmp_path / 'config.json').read_text())['data']['name'] == config.data.name
    assert (tmp_path / 'checkpoints' / str(config.train.num_steps)).is_dir()
    assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))


def test_loss_falls_on_digits(tmp_path):
    config = digits_smoke(num_steps=60, log_every=20)
    config.model.cnn.dropout = 0.0
    config.optim.schedule = 'constant'
    result = train.run(config, tmp_path)
    losses = [r['loss'] for r in writers.read_metrics(tmp_path) if r['split'] == 'train']
    assert losses[-1] < 0.6 * losses[0]
    assert result['accuracy'] > 0.5  # chance is 0.1


def test_synthetic_data_runs(tmp_path):
    config = digits_smoke(num_steps=4, log_every=2, eval_every=4, checkpoint_every=4)
    config.data.name = 'synthetic'
    config.data.synthetic.update(image_shape=(12, 12, 3), num_classes=5, train_examples=64,
                                 eval_examples=20)
    result = train.run(config, tmp_path)
    assert set(result) == {'loss', 'accuracy', 'precision_macro', 'recall_macro', 'f1_macro',
                           'auc_macro'}  # top-5 accuracy only for more than 5 classes


def test_resume_after_interruption_is_bitwise_identical(tmp_path):
    config = digits_smoke(num_steps=24, log_every=4, eval_every=8, checkpoint_every=8)
    config.data.augment.update(crop_padding=1, rotation_degrees=10.0, scale_max=1.1)
    expected = train.run(config, tmp_path / 'straight')
    # Stop mid log-window (step 7), resume, and get the same numbers down to the last bit.
    assert train.run(config, tmp_path / 'resumed', stop_at_step=7) is None
    assert train.run(config, tmp_path / 'resumed') == expected
    assert (without_timing(writers.read_metrics(tmp_path / 'resumed')) ==
            without_timing(writers.read_metrics(tmp_path / 'straight')))
    jax.tree.map(np.testing.assert_array_equal, final_params(tmp_path / 'resumed', 24),
                 final_params(tmp_path / 'straight', 24))


def test_the_suite_keeps_compiled_steps_out_of_the_users_compilation_cache(tmp_path):
    """conftest gives the tests a cache of their own, in $BIGJAX_COMPILATION_CACHE_DIR (the
    launch.py subprocesses inherit it): ~/.cache/bigjax/jax is not written."""
    users = pathlib.Path('~/.cache/bigjax/jax').expanduser()
    listing = lambda: sorted(users.iterdir()) if users.is_dir() else []
    suites = os.environ.get(config_lib.CACHE_VARIABLE, '')
    assert suites and pathlib.Path(suites) != users, 'conftest sets no cache of the suite\'s own'
    before, suites = listing(), pathlib.Path(suites)
    min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.clear_caches()  # compiled afresh, as in a new process
    try:
        config = digits_smoke(num_steps=2, log_every=2, eval_every=2, checkpoint_every=2)
        train.run(config, tmp_path)
    finally:
        jax.config.update('jax_persistent_cache_min_compile_time_secs', min_seconds)
    assert suites != users and pathlib.Path(config.compilation_cache_dir) == suites
    assert any(p.name.startswith('jit__train') for p in suites.iterdir())
    assert listing() == before


def test_a_new_run_loads_its_compiled_steps_from_the_compilation_cache(tmp_path):
    """As a restarted process would: jax's in-memory caches cleared, only the folder left."""
    hits = []
    listener = lambda event, **_: hits.append(event == '/jax/compilation_cache/cache_hits')
    min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)  # the smoke steps are fast
    jax.monitoring.register_event_listener(listener)
    try:
        config = digits_smoke(num_steps=4, log_every=2, eval_every=4, checkpoint_every=4)
        config.compilation_cache_dir = str(tmp_path / 'cache')
        first = train.run(config, tmp_path / 'first')
        assert any(p.name.startswith('jit__train') for p in (tmp_path / 'cache').iterdir())
        jax.clear_caches()
        hits.clear()
        assert train.run(config, tmp_path / 'second') == first
        assert sum(hits) >= 2  # the train and eval steps at least
        kept = sorted((tmp_path / 'cache').iterdir())
        platform.use_compilation_cache('')  # off: nothing looked up, nothing kept
        hits.clear()
        jax.jit(lambda x: x * 3)(1.0)
        assert not any(hits) and sorted((tmp_path / 'cache').iterdir()) == kept
    finally:
        jax.monitoring.unregister_event_listener(listener)
        jax.config.update('jax_persistent_cache_min_compile_time_secs', min_seconds)


def test_training_data_on_the_devices_gives_the_same_run_as_batching_on_the_host(tmp_path):
    runs = {}
    for max_mb in (256, 0):  # the digits fit: held on the devices; 0: batched on the host
        config = digits_smoke(num_steps=12, log_every=4)
        config.data.augment.update(rotation_degrees=10.0, crop_padding=1)
        config.data.on_device_max_mb = max_mb
        train.run(config, tmp_path / str(max_mb))
        runs[max_mb] = without_timing(writers.read_metrics(tmp_path / str(max_mb)))
    assert runs[256] == runs[0]


def test_finished_run_returns_at_once(tmp_path, monkeypatch):
    config = digits_smoke()
    expected = train.run(config, tmp_path)
    metrics_before = (tmp_path / 'metrics.jsonl').read_text()

    def no_compiling(*args, **kwargs):
        raise AssertionError('a finished run must not compile')
    monkeypatch.setattr(jax, 'jit', no_compiling)
    assert train.run(config, tmp_path) == expected
    assert (tmp_path / 'metrics.jsonl').read_text() == metrics_before


def tensorboard_scalars(logdir, tag):
    """Steps of `tag` as TensorBoard shows them: a run's START event at step s hides the steps
    >= s that earlier runs wrote (tensorboardX's purge_step)."""
    from tensorboardX.proto import event_pb2
    steps = []
    for path in sorted(logdir.glob('events.out.tfevents.*'), key=lambda p: p.stat().st_mtime):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            length = int.from_bytes(data[offset:offset + 8], 'little')
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            if event.session_log.status == event_pb2.SessionLog.START:
                steps = [s for s in steps if s < event.step]
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return steps


def test_tensorboard_after_resume_shows_each_logged_step_once(tmp_path):
    config = digits_smoke(num_steps=24, log_every=4, eval_every=8, checkpoint_every=8)
    train.run(config, tmp_path, stop_at_step=10)
    (tmp_path / 'checkpoints' / '10').rename(tmp_path / 'removed')  # As if killed before 10.
    train.run(config, tmp_path)
    assert tensorboard_scalars(tmp_path / 'tensorboard', 'train/loss') == [4, 8, 12, 16, 20, 24]
    assert tensorboard_scalars(tmp_path / 'tensorboard', 'eval/accuracy') == [8, 16, 24]


TORCH_LEFT_OUT = """
import importlib.util, sys
from bigjax import writers
writer = writers.MetricWriter(sys.argv[1], enabled=True, start_step=0)
writer.write(1, 'train', {'loss': 1.0})
writer.close()
print('torch' in sys.modules)
if importlib.util.find_spec('torch'):
    import torch
    print(float(torch.ones(2).sum()))
"""


def test_tensorboard_is_written_without_importing_torch(tmp_path):
    """tensorboardX imports torch where it is installed (1.6 s of every run); the writer leaves
    it out, and `import torch` still works after."""
    result = subprocess.run([sys.executable, '-c', TORCH_LEFT_OUT, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == 'False'
    assert tensorboard_scalars(tmp_path / 'tensorboard', 'train/loss') == [1]


def test_relative_workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train.run(digits_smoke(), 'relative/run', stop_at_step=10)
    assert train.run(digits_smoke(), 'relative/run')['accuracy'] >= 0
    assert (tmp_path / 'relative' / 'run' / 'checkpoints' / '20').is_dir()


def test_resuming_with_a_changed_config_says_what_changed(tmp_path, capsys):
    train.run(digits_smoke(), tmp_path, stop_at_step=10)
    config = digits_smoke(num_steps=30)
    config.optim.learning_rate = 0.002
    train.run(config, tmp_path)
    assert ('Resuming with a changed config: optim.learning_rate: 0.003 -> 0.002; '
            'train.num_steps: 20 -> 30') in capsys.readouterr().err


@pytest.mark.parametrize('section, key, value, message', [
    (None, 'seed', -1, 'seed=-1 must be >= 0'),
    ('train', 'keep_checkpoints', 0, 'keep_checkpoints must be >= 1'),
    ('train', 'num_steps', -5, 'must give at least one step'),
    ('train', 'num_epochs', 0.0, 'must give at least one step'),
    ('model.cnn', 'dropout', 1.5, r'dropout=1.5 must be in \[0, 1\)'),
    ('model.cnn', 'padding', 'VALID', 'too small to pool'),
    ('data', 'normalize', 'minmax', 'data.normalize'),
    ('data', 'eval_split', 'test[:0]', 'has no examples'),
    ('optim', 'name', 'lion', 'optim.name'),
])
def test_bad_values_are_clear_errors_before_anything_is_written(tmp_path, section, key, value,
                                                                 message):
    config = digits_smoke()
    node = config
    for part in section.split('.') if section else ():
        node = node[part]
    node[key] = value
    if key == 'num_epochs':
        config.train.num_steps = 0
    with pytest.raises(UserError, match=message):
        train.run(config, tmp_path / 'run')
    assert not (tmp_path / 'run').exists()


def test_batch_size_devices_cannot_divide_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r'train.batch_size=12 .* 8 batch shards.*try 8'):
        train.run(digits_smoke(batch_size=12), tmp_path / 'run')
    assert not (tmp_path / 'run').exists()


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    (tmp_path / 'a_file').write_text('not a folder')
    with pytest.raises(UserError, match='cannot be written.*choose another --workdir'):
        train.run(digits_smoke(), tmp_path / 'a_file' / 'run')


def test_checkpoint_from_incompatible_config_names_the_shapes(tmp_path):
    train.run(digits_smoke(), tmp_path, stop_at_step=10)
    config_before = (tmp_path / 'config.json').read_text()
    config = digits_smoke()
    config.model.cnn.features = (4, 16)
    with pytest.raises(UserError, match=r'params\.conv1\.kernel is \(3, 3, 1, 8\) there and '
                                        r'\(3, 3, 1, 4\) here'):
        train.run(config, tmp_path)
    assert (tmp_path / 'config.json').read_text() == config_before


def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path):
    train.run(digits_smoke(), tmp_path, stop_at_step=10)
    config = digits_smoke()
    config.optim.learning_rate = 1e30
    with pytest.raises(UserError, match=r'NaN/Inf at step 1[1-5]; .* last good checkpoint '
                                        r'\(step 10\)'):
        train.run(config, tmp_path)
    assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['10']


def test_mnist_config_resumes_under_mock_data(tmp_path):
    config = load_config('cnn_mnist', 'smoke')
    with tfds.testing.mock_data(num_examples=48):
        expected = train.run(config, tmp_path / 'straight')
        train.run(config, tmp_path / 'resumed', stop_at_step=3)
        assert train.run(config, tmp_path / 'resumed') == expected
