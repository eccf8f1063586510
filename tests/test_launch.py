"""launch.py as users run it: one-line errors, and a real SIGKILL followed by an exact resume."""

import os
import signal
import subprocess
import sys
import time

import pytest

from bigjax import writers
from conftest import REPO

SMOKE = 'configs/cnn_digits.py:smoke'


def launch(workdir, *overrides, config=SMOKE, wait=True):
    command = [sys.executable, 'launch.py', f'--config={config}', f'--workdir={workdir}',
               *overrides]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    if not wait:
        return process
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout + stderr


@pytest.mark.parametrize('override, message', [
    ('--config.train.nosuch=3', "error: --config.train.nosuch: the config has no key 'nosuch'"),
    ('--config.train.batch_size=abc', 'error: flag --config.train.batch_size=abc: invalid literal'),
    ('--config.train.batch_size=12', 'error: train.batch_size=12 must be a positive multiple'),
])
def test_bad_overrides_are_one_line_errors_before_anything_is_written(tmp_path, override, message):
    code, output = launch(tmp_path / 'run', override)
    assert code == 1
    assert output.strip().splitlines()[-1].startswith(message), output
    assert 'Traceback' not in output
    assert not (tmp_path / 'run').exists()


def test_missing_config_file_is_a_one_line_error(tmp_path):
    code, output = launch(tmp_path / 'run', config='configs/nope.py')
    assert code == 1 and output.strip() == (
        "error: cannot load the config file: [Errno 2] No such file or directory: 'configs/nope.py'")


def test_sigkill_then_rerun_resumes_bitwise_identical(tmp_path):
    overrides = ('--config.train.num_steps=600', '--config.train.log_every=20',
                 '--config.train.eval_every=200', '--config.train.checkpoint_every=50',
                 '--config.data.augment.rotation_degrees=10', '--config.data.prefetch=3',
                 '--config.report.enabled=False')
    code, output = launch(tmp_path / 'straight', *overrides)
    assert code == 0, output

    process = launch(tmp_path / 'killed', *overrides, wait=False)
    checkpoints = tmp_path / 'killed' / 'checkpoints'
    while process.poll() is None:
        steps = [int(p.name) for p in checkpoints.glob('*') if p.name.isdigit()]
        if steps and max(steps) >= 100:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, 'the run finished before it could be killed'

    code, output = launch(tmp_path / 'killed', *overrides)
    assert code == 0 and 'Resumed from the checkpoint' in output, output
    strip = lambda rows: [{k: v for k, v in row.items()
                           if not k.endswith('_per_sec') and k != 'time'} for row in rows]
    assert (strip(writers.read_metrics(tmp_path / 'killed')) ==
            strip(writers.read_metrics(tmp_path / 'straight')))

    code, output = launch(tmp_path / 'killed', *overrides)
    assert code == 0 and 'already finished at step 600' in output, output
