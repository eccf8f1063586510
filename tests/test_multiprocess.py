"""Two local processes joined by jax.distributed (CPU, 4 devices each) train like one and write
the same report."""

import os
import socket
import subprocess
import sys

import numpy as np

from bigjax import writers
from conftest import REPO

SMOKE = ['--config=configs/transformer_cpu.py:smoke']


def launch(workdir, devices: int, *extra):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    return subprocess.Popen([sys.executable, 'launch.py', f'--workdir={workdir}', *SMOKE, *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def losses(workdir):
    return [(r['split'], r['step'], r['loss']) for r in writers.read_metrics(workdir)]


def test_two_processes_train_like_one(tmp_path):
    single = launch(tmp_path / 'one', 8)
    assert single.wait(timeout=600) == 0, single.stdout.read()
    address = f'127.0.0.1:{free_port()}'
    processes = [launch(tmp_path / 'two', 4, f'--coordinator_address={address}',
                        '--num_processes=2', f'--process_id={i}') for i in range(2)]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stdout.read()
    one, two = losses(tmp_path / 'one'), losses(tmp_path / 'two')
    assert [row[:2] for row in two] == [row[:2] for row in one] and len(one) >= 4
    np.testing.assert_allclose([row[2] for row in two], [row[2] for row in one], rtol=1e-5)
    assert (tmp_path / 'two' / 'checkpoints' / '8').is_dir()
    # The report runs the model on parameters spread over both processes; process 0 writes it.
    pages = [(tmp_path / run / 'report.html').read_text() for run in ('one', 'two')]
    assert pages[1].count('<img ') == pages[0].count('<img ') > 0
