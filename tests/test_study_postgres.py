"""Studies shared through PostgreSQL: two workers on one study, one killed mid-trial; each trial
ends once and the killed one is retried by the other. A real server (initdb/pg_ctl) per module."""

import glob
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import optuna
import pytest

from bigjax import study, study_shared, writers
from bigjax.errors import UserError
from conftest import REPO

TINY = dict(config='configs/cnn_digits.py:smoke',
            fixed={'train.num_steps': 4, 'train.log_every': 2, 'train.eval_every': 4,
                   'train.checkpoint_every': 4})
WORKER = '''import sys
sys.path.insert(0, {repo!r})
from bigjax import study
if __name__ == '__main__':  # trials are spawned processes that import this file
    study.main(study.Study(name='shared', metric='accuracy', space={space!r}, **{tiny!r}))
'''
RATES = [1e-3, 1e-2]
SEEDS = [0, 1]  # two trials (one per worker, then the survivor retries the killed one) that
# differ in values only: the second to compile its steps finds them in the compilation cache


def postgres_binary(name: str) -> str | None:
    """initdb or pg_ctl: on PATH, or where Debian's postgresql package puts them."""
    return shutil.which(name) or max(glob.glob(f'/usr/lib/postgresql/*/bin/{name}'), default=None)


@pytest.fixture(scope='module')
def postgres():
    """A private PostgreSQL server on a free port; its URL. As root, run as the postgres OS user
    (initdb refuses root), in a folder that user owns outside pytest's private tmp."""
    initdb, pg_ctl = postgres_binary('initdb'), postgres_binary('pg_ctl')
    if not (initdb and pg_ctl):
        pytest.skip('PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql')
    folder = tempfile.mkdtemp(prefix='bigjax_pg_')
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(folder, 'postgres')
        as_user = ['runuser', '-u', 'postgres', '--']
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    data = os.path.join(folder, 'data')
    subprocess.run(as_user + [initdb, '-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync'],
                   check=True, stdout=subprocess.DEVNULL)
    started = subprocess.run(as_user + [
        pg_ctl, '-D', data, '-l', os.path.join(folder, 'log'), '-w', 'start',
        '-o', f'-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off'],
        stdout=subprocess.DEVNULL)
    if started.returncode:
        log = pathlib.Path(folder, 'log')
        pytest.fail(f'pg_ctl start failed: {log.read_text() if log.exists() else ""}')
    yield f'postgresql+psycopg://postgres@127.0.0.1:{port}/postgres'
    subprocess.run(as_user + [pg_ctl, '-D', data, '-m', 'immediate', '-w', 'stop'],
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(folder, ignore_errors=True)


def live_processes(group: int) -> list[int]:
    """The processes of a process group that are running (not zombies), from /proc."""
    pids = []
    for stat in pathlib.Path('/proc').glob('[0-9]*/stat'):
        try:
            state, _, pgrp = stat.read_text().rsplit(')', 1)[1].split()[:3]
        except (OSError, IndexError):
            continue
        if int(pgrp) == group and state != 'Z':
            pids.append(int(stat.parent.name))
    return pids


def wait_for(condition, seconds: float):
    deadline = time.time() + seconds
    while not (value := condition()):
        assert time.time() < deadline, 'timed out'
        time.sleep(0.1)
    return value


def test_two_workers_share_a_study_and_a_killed_workers_trial_is_retried(postgres, tmp_path):
    script = tmp_path / 'tiny_study.py'
    script.write_text(WORKER.format(repo=str(REPO), space={'seed': SEEDS}, tiny=TINY))
    command = [sys.executable, str(script), f'--workdir={tmp_path / "study"}',
               f'--storage={postgres}', '--heartbeat=1']
    logs = {name: tmp_path / f'{name}.log' for name in ('killed', 'survivor')}
    env = {**os.environ, 'XLA_FLAGS': ''}  # one CPU device per trial: sharding is not tested here
    workers = {name: subprocess.Popen(command, cwd=REPO, env=env, stdout=open(log, 'w'),
                                      stderr=subprocess.STDOUT, start_new_session=True)
               for name, log in logs.items()}
    output = lambda name: logs[name].read_text()
    try:
        # The killed worker has claimed a trial, and its trial process is running (it opened its
        # log once JAX was imported; training has not ended).
        killed = wait_for(lambda: re.search(r'^trial (\d{4}): seed', output('killed'), re.M),
                          30).group(1)
        wait_for((tmp_path / 'study' / 'trials' / killed / 'log.txt').exists, 20)
        workers['killed'].kill()
        workers['killed'].wait()
        # Its trial process dies with it: nothing of it goes on running beside the retry.
        wait_for(lambda: not live_processes(workers['killed'].pid), 3)
        assert workers['survivor'].wait(timeout=40) == 0, output('survivor')
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
    assert not re.search(rf'^trial {killed}: (done|failed)', output('killed'), re.M)
    assert re.search(rf'^trial {killed}: seed', output('survivor'), re.M)  # retried there
    ended = re.findall(r'^trial (\d{4}): done', output('killed') + output('survivor'), re.M)
    assert sorted(ended) == ['0000', '0001']  # each trial ran to its end once
    # The database: one complete trial per point; the killed one failed (stale) and retried.
    trials = optuna.load_study(study_name='shared', storage=postgres).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs['index'] for t in complete) == [0, 1]
    assert sorted(t.user_attrs['overrides']['seed'] for t in complete) == SEEDS
    retry = next(t for t in complete if t.user_attrs['index'] == int(killed))
    lost = next(t for t in trials if t.number == retry.system_attrs['failed_trial'])
    assert lost.state == optuna.trial.TrialState.FAIL and 'result' not in lost.user_attrs
    # Each recorded value is its run's final evaluation; the survivor's results.md has both.
    for t in complete:
        run = tmp_path / 'study' / 'trials' / f'{t.user_attrs["index"]:04d}' / 'run'
        final = [m for m in writers.read_metrics(run) if m['split'] == 'eval'][-1]
        assert t.value == pytest.approx(final['accuracy'], rel=1e-12)
    table = (tmp_path / 'study' / 'results.md').read_text().splitlines()
    assert sorted(re.search(r'\d{4}', line).group() for line in table
                  if line.startswith('| ') and line.rstrip(' |*').endswith('done')) == [
        '0000', '0001'], table

def test_a_trial_that_two_workers_queued_at_once_runs_once(postgres):
    tiny = study.Study(name='queued_twice', metric='accuracy', space={'seed': SEEDS}, **TINY)
    workers = [study_shared.open_shared(tiny, 'grid', 0, 2, postgres, 1) for _ in range(2)]
    for shared, storage in workers:  # both found the study empty and queue both trials
        assert study_shared.requeue(shared, [], 2, storage.get_heartbeat_stale_trial_callback())
    claimed = [study_shared.claim(shared, storage) for shared, storage in workers * 2]
    assert sorted(t.user_attrs['index'] for t in claimed if t) == [0, 1]
    assert study_shared.claim(*workers[0]) is None  # the copies were failed, not left queued


def test_workers_of_one_shared_study_must_run_the_same_search(postgres, tmp_path):
    tiny = study.Study(name='same_flags', metric='accuracy',
                       space={'optim.learning_rate': RATES}, **TINY)
    study_shared.open_shared(tiny, 'grid', 0, 3, postgres, 1)
    with pytest.raises(UserError, match='runs with --search=grid, not random'):
        study.run(tiny, tmp_path, search='random', storage=postgres)
    with pytest.raises(UserError, match='runs with --seed=0, not 1'):
        study.run(tiny, tmp_path, seed=1, storage=postgres)
    assert not (tmp_path / 'trials').exists()


def test_a_storage_that_cannot_be_used_is_one_clear_error_before_any_trial(tmp_path,
                                                                          monkeypatch):
    tiny = study.Study(name='unusable', metric='accuracy',
                       space={'optim.learning_rate': RATES}, **TINY)
    with pytest.raises(UserError, match='is not a database URL'):
        study.run(tiny, tmp_path, storage='postgres//host/db')
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        closed = s.getsockname()[1]  # nothing listens there once closed
    url = f'postgresql+psycopg://user:secret@127.0.0.1:{closed}/db'
    with pytest.raises(UserError, match='cannot open the study storage') as error:
        study.run(tiny, tmp_path, storage=url)
    assert 'secret' not in str(error.value)  # the password is not printed
    monkeypatch.setitem(sys.modules, 'psycopg', None)  # as if psycopg were not installed
    with pytest.raises(UserError, match=r'driver: pip install "psycopg\[binary\]"'):
        study.run(tiny, tmp_path, storage=url)
    assert not (tmp_path / 'trials').exists()
