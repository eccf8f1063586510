"""Faults lose nothing: SIGTERM and kill -9 at random moments, a damaged newest checkpoint, a full
disk, and a second run on a held workdir; each followed by a rerun that ends bitwise identical."""

import errno
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bigjax import train, writers
from bigjax.errors import UserError
from conftest import REPO, load_config

LAUNCH_OVERRIDES = ('--config.train.num_steps=600', '--config.train.log_every=20',
                    '--config.train.eval_every=200', '--config.train.checkpoint_every=50',
                    '--config.data.augment.rotation_degrees=10', '--config.data.prefetch=3',
                    '--config.report.enabled=False')


def launch(workdir, *extra, wait=True, env=None):
    command = [sys.executable, 'launch.py', '--config=configs/cnn_digits.py:smoke',
               f'--workdir={workdir}', *LAUNCH_OVERRIDES, *extra]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    if not wait:
        return process
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def without_timing(rows):
    return [{k: v for k, v in row.items() if not k.endswith('_per_sec') and k != 'time'}
            for row in rows]


def saved_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / 'checkpoints').glob('*') if p.name.isdigit())


def interrupt_while_training(process, workdir, started: float, delay_s: float, signum) -> None:
    """Sends `signum` `delay_s` after the process logs its first training metrics (a row
    written since `started`)."""
    while process.poll() is None:
        if any(row['time'] > started for row in writers.read_metrics(workdir)):
            time.sleep(delay_s)
            process.send_signal(signum)
            return
        time.sleep(0.02)
    pytest.fail('the run ended before it could be interrupted:\n' + process.stdout.read())


def test_sigterm_and_kill_9_at_random_moments_then_rerun_is_bitwise_identical(tmp_path):
    code, output = launch(tmp_path / 'straight')
    assert code == 0, output
    workdir, rng = tmp_path / 'interrupted', np.random.default_rng(0)
    for signum in (signal.SIGTERM, signal.SIGKILL, signal.SIGTERM):
        before, started = (saved_steps(workdir) or [0])[-1], time.time()
        process = launch(workdir, wait=False)
        interrupt_while_training(process, workdir, started, rng.uniform(0, 0.5), signum)
        output, _ = process.communicate(timeout=300)
        if signum == signal.SIGKILL:
            assert process.returncode == -signal.SIGKILL
            continue
        # SIGTERM: the step in flight is saved (rarely a multiple of checkpoint_every), exit 0.
        assert process.returncode == 0, output
        [line] = [line for line in output.splitlines() if 'Interrupted by SIGTERM' in line]
        step = int(line.split('saved step ')[1].split()[0])
        assert step > before and step in saved_steps(workdir), (line, saved_steps(workdir))
        assert line.endswith('Rerun the same command to resume.')
    code, output = launch(workdir)
    assert code == 0 and 'Resumed from the checkpoint' in output, output
    assert (without_timing(writers.read_metrics(workdir)) ==
            without_timing(writers.read_metrics(tmp_path / 'straight')))
    code, output = launch(workdir)
    assert code == 0 and 'already finished at step 600' in output, output


def digits(**train_overrides):
    config = load_config('cnn_digits', 'smoke')
    config.train.update(num_steps=30, log_every=5, eval_every=30, checkpoint_every=10,
                        **train_overrides)
    return config


def final_params(workdir, step):
    restored = ocp.PyTreeCheckpointer().restore(workdir / 'checkpoints' / str(step) / 'state')
    return restored['params']


def assert_same_run(workdir, straight):
    assert without_timing(writers.read_metrics(workdir)) == without_timing(
        writers.read_metrics(straight))
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir, 30),
                 final_params(straight, 30))


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('straight')
    train.run(digits(), workdir)
    return workdir


def damage(folder, how: str) -> None:
    files = sorted(p for p in folder.rglob('*') if p.is_file())
    assert files
    for path in files[::2]:
        if how == 'truncate':
            path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
        else:
            path.unlink()


def test_damaged_newest_checkpoint_is_moved_aside_and_the_one_before_resumes(
        tmp_path, straight, capsys):
    train.run(digits(), tmp_path, stop_at_step=20)
    damage(tmp_path / 'checkpoints' / '20', 'truncate')
    train.run(digits(), tmp_path)
    log = capsys.readouterr().err
    assert 'The checkpoint at step 20 cannot be restored' in log, log
    assert 'Resumed from the checkpoint at step 10' in log
    assert (tmp_path / 'checkpoints.damaged' / '20').is_dir()  # moved, not deleted
    assert_same_run(tmp_path, straight)


def test_only_the_newest_keep_checkpoints_stay_and_the_run_resumes_from_them(tmp_path, straight):
    config = digits(keep_checkpoints=2)
    config.train.checkpoint_every = 5
    train.run(config, tmp_path, stop_at_step=20)
    assert saved_steps(tmp_path) == [15, 20]
    train.run(config, tmp_path)
    assert saved_steps(tmp_path) == [25, 30]
    assert_same_run(tmp_path, straight)


def test_no_restorable_checkpoint_is_a_clear_error_that_keeps_them(tmp_path):
    train.run(digits(), tmp_path, stop_at_step=10)
    damage(tmp_path / 'checkpoints' / '10', 'delete')
    with pytest.raises(UserError, match=r'no checkpoint in .*checkpoints can be restored \(moved '
                                        r'to .*checkpoints.damaged\): rerun to start again'):
        train.run(digits(), tmp_path)
    assert (tmp_path / 'checkpoints.damaged' / '10').is_dir()


def test_full_disk_is_a_clear_error_and_the_rerun_resumes(tmp_path, straight, monkeypatch):
    save = ocp.CheckpointManager.save

    def disk_full_at_20(self, step, *args, **kwargs):
        if step == 20:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, 'save', disk_full_at_20)
    with pytest.raises(UserError, match=r'writing .*checkpoints failed \(no space left on the '
                                        r'device; [\d,]+ MB free there\): free some space'):
        train.run(digits(), tmp_path)
    assert saved_steps(tmp_path) == [10]
    monkeypatch.undo()
    train.run(digits(), tmp_path)
    assert_same_run(tmp_path, straight)


def test_a_second_run_on_a_held_workdir_stops_at_once_and_a_dead_holder_does_not_block(
        tmp_path, straight):
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time; from etils import epath; '
         'from bigjax import workdir; '
         'held = workdir.held(epath.Path(sys.argv[1])); held.__enter__(); print("held", '
         'flush=True); time.sleep(300)', str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(UserError, match=f'the workdir {tmp_path} is in use by process '
                                        f'{holder.pid} on {socket.gethostname()}: wait'):
        train.run(digits(), tmp_path)
    assert not (tmp_path / 'checkpoints').exists() and not writers.read_metrics(tmp_path)
    holder.kill()  # kill -9: the kernel lets go of its lock.
    holder.wait()
    train.run(digits(), tmp_path)
    assert_same_run(tmp_path, straight)
