"""Faults lose nothing: SIGTERM, SIGINT and kill -9 at random moments, a second signal during the
save, a damaged newest (or final) checkpoint, a full disk met by a save or a metrics line, and a
second run on a held workdir; each followed by a rerun that ends bitwise identical."""

import errno
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from bigjax import train, writers
from bigjax import plan as plan_lib
from bigjax.checkpoint import Checkpointer
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


@pytest.fixture(scope='module')
def launched_straight(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('launched_straight')
    code, output = launch(workdir)
    assert code == 0, output
    return workdir


def test_sigterm_and_kill_9_at_random_moments_then_rerun_is_bitwise_identical(
        tmp_path, launched_straight):
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
            without_timing(writers.read_metrics(launched_straight)))
    code, output = launch(workdir)
    assert code == 0 and 'already finished at step 600' in output, output


def test_sigint_the_notebooks_stop_button_saves_the_step_and_the_rerun_ends_the_same(
        tmp_path, launched_straight):
    process = launch(tmp_path, wait=False)
    interrupt_while_training(process, tmp_path, time.time(), 0.2, signal.SIGINT)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    [line] = [line for line in output.splitlines() if 'Interrupted by SIGINT' in line]
    step = int(line.split('saved step ')[1].split()[0])
    assert step in saved_steps(tmp_path) and 'Traceback' not in output, (line, output)
    code, output = launch(tmp_path)
    assert code == 0 and f'Resumed from the checkpoint at step {step}' in output, output
    assert (without_timing(writers.read_metrics(tmp_path)) ==
            without_timing(writers.read_metrics(launched_straight)))


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


CHECKPOINTS_FULL = (r'writing .*checkpoints failed \(no space left on the device; [\d,]+ MB '
                    r'free there\): free some space')


def fails_clearly_then_reruns_the_same(tmp_path, straight, monkeypatch, message: str,
                                       kept: list) -> None:
    """The run under the fault stops with the one-line error `message`, keeping the checkpoints
    `kept`; with the fault gone, the rerun ends as the straight run did."""
    with pytest.raises(UserError, match=message):
        train.run(digits(), tmp_path)
    assert saved_steps(tmp_path) == kept
    monkeypatch.undo()
    train.run(digits(), tmp_path)
    assert_same_run(tmp_path, straight)


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


def test_no_restorable_checkpoint_is_a_clear_error_that_keeps_them_and_the_rerun_starts_over(
        tmp_path, straight, capsys):
    train.run(digits(), tmp_path, stop_at_step=10)
    damage(tmp_path / 'checkpoints' / '10', 'delete')
    with pytest.raises(UserError, match=r'no checkpoint in .*checkpoints can be restored \(moved '
                                        r'to .*checkpoints.damaged\): rerun to start again'):
        train.run(digits(), tmp_path)
    assert (tmp_path / 'checkpoints.damaged' / '10').is_dir()
    capsys.readouterr()
    train.run(digits(), tmp_path)  # as the error says: from step 0, to the end
    assert 'Resumed' not in capsys.readouterr().err
    assert_same_run(tmp_path, straight)


def test_a_damaged_final_checkpoint_is_not_finished_the_one_before_resumes(
        tmp_path, straight, capsys):
    train.run(digits(), tmp_path)
    damage(tmp_path / 'checkpoints' / '30', 'truncate')
    with pytest.raises(UserError, match=r'the checkpoint at step 30 in .*checkpoints cannot be '
                                        r'restored \(\w+\): rerun training on this workdir'):
        plan_lib.load_state(digits(), tmp_path)  # what sample, report and export meet
    capsys.readouterr()
    train.run(digits(), tmp_path)
    log = capsys.readouterr().err
    assert 'already finished' not in log, log
    assert 'The checkpoint at step 30 cannot be restored' in log
    assert 'Resumed from the checkpoint at step 20' in log
    assert (tmp_path / 'checkpoints.damaged' / '30').is_dir()
    assert_same_run(tmp_path, straight)
    assert plan_lib.load_state(digits(), tmp_path)[2] == 30
    train.run(digits(), tmp_path)
    assert 'already finished at step 30' in capsys.readouterr().err


def test_a_second_signal_during_the_save_is_only_logged_and_the_save_completes(
        tmp_path, straight, monkeypatch, capsys):
    save = Checkpointer.save

    def signalled(self, step, *args):
        if step == 10:
            os.kill(os.getpid(), signal.SIGINT)  # the stop button: the run stops after step 11
        save(self, step, *args)
        if step == 11:
            os.kill(os.getpid(), signal.SIGINT)  # pressed again, while step 11 is being written

    monkeypatch.setattr(Checkpointer, 'save', signalled)
    try:
        assert train.run(digits(), tmp_path) is None
    except KeyboardInterrupt:
        pytest.fail('the second SIGINT cut the save short')
    log = capsys.readouterr().err
    assert 'SIGINT received while stopping' in log and 'Interrupted by SIGINT: saved step 11' in log
    monkeypatch.undo()
    train.run(digits(), tmp_path)
    assert 'Resumed from the checkpoint at step 11' in capsys.readouterr().err
    assert_same_run(tmp_path, straight)


def test_full_disk_is_a_clear_error_and_the_rerun_resumes(tmp_path, straight, monkeypatch):
    save = ocp.CheckpointManager.save

    def disk_full_at_20(self, step, *args, **kwargs):
        if step == 20:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, 'save', disk_full_at_20)
    fails_clearly_then_reruns_the_same(tmp_path, straight, monkeypatch, CHECKPOINTS_FULL, [10])


def test_a_full_disk_met_when_the_asynchronous_save_is_awaited_is_a_clear_error(
        tmp_path, straight, monkeypatch):
    """Where a real full disk shows: the write in the background fails, wait() reports it (Orbax
    raises it once, and the step never lands)."""
    wait, failed = ocp.CheckpointManager.wait_until_finished, []

    def disk_full_writing_30(self):
        wait(self)
        if 30 in self.all_steps() and not failed:
            failed.append(30)
            (self.directory / '30').rmtree()
            self.reload()
            raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(ocp.CheckpointManager, 'wait_until_finished', disk_full_writing_30)
    fails_clearly_then_reruns_the_same(tmp_path, straight, monkeypatch, CHECKPOINTS_FULL,
                                       [10, 20])
    assert failed


def test_a_failed_metrics_write_is_a_clear_error_and_the_rerun_ends_the_same(
        tmp_path, straight, monkeypatch):
    """The disk fills while a metrics line is half written: the line is cut short."""
    path_type, open_ = type(epath.Path(tmp_path)), type(epath.Path(tmp_path)).open

    def full_at_step_20(self, mode='r', *args, **kwargs):
        file = open_(self, mode, *args, **kwargs)
        if self.name == writers.METRICS_FILE and mode == 'a':
            write = file.write

            def cut_short(text):
                if text.startswith('{"step": 20,'):
                    write(text[:len(text) // 2])
                    raise OSError(errno.ENOSPC, 'No space left on device')
                return write(text)
            file.write = cut_short
        return file

    monkeypatch.setattr(path_type, 'open', full_at_step_20)
    fails_clearly_then_reruns_the_same(
        tmp_path, straight, monkeypatch,
        rf'writing {tmp_path} failed \(no space left on the device; [\d,]+ MB free there\)', [10])


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
