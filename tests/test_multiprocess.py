"""Two local processes joined by jax.distributed (CPU, 4 devices each) train like one, stop
together at one saved step when one of them gets SIGTERM, resume, and write the same report."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from bigjax import writers
from conftest import REPO

SMOKE = ['--config=configs/transformer_cpu.py:smoke', '--config.train.num_steps=60',
         '--config.train.eval_every=30', '--config.train.checkpoint_every=30']


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
    two = [f'--coordinator_address={address}', '--num_processes=2']
    started = time.time()
    processes = [launch(tmp_path / 'two', 4, *two, f'--process_id={i}') for i in range(2)]
    while not any(row['time'] > started for row in writers.read_metrics(tmp_path / 'two')):
        assert processes[0].poll() is None, processes[0].stdout.read()
        time.sleep(0.02)
    processes[1].send_signal(signal.SIGTERM)  # One host is preempted: both stop at one step.
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    [saved] = {line.split('saved step ')[1].split()[0] for output in outputs
               for line in output.splitlines() if 'Interrupted by SIGTERM' in line}
    assert 0 < int(saved) < 60 and (tmp_path / 'two' / 'checkpoints' / saved).is_dir()
    processes = [launch(tmp_path / 'two', 4, *two, f'--process_id={i}') for i in range(2)]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stdout.read()
    one, two = losses(tmp_path / 'one'), losses(tmp_path / 'two')
    assert [row[:2] for row in two] == [row[:2] for row in one] and len(one) >= 4
    np.testing.assert_allclose([row[2] for row in two], [row[2] for row in one], rtol=1e-5)
    assert (tmp_path / 'two' / 'checkpoints' / '60').is_dir()
    # The report runs the model on parameters spread over both processes; process 0 writes it.
    pages = [(tmp_path / run / 'report.html').read_text() for run in ('one', 'two')]
    assert pages[1].count('<img ') == pages[0].count('<img ') > 0
