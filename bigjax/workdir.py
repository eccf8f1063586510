"""The run's folder: where it is, whether it can be written, who holds it, and its config.json."""

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from bigjax.errors import UserError

LOCK_FILE = '.lock'


def resolve(workdir) -> epath.Path:
    """An absolute path for a local workdir (Orbax needs one); URLs such as gs://… as given."""
    text = os.fspath(workdir)
    if not text.strip():
        raise UserError('--workdir is empty: name a folder for checkpoints and metrics')
    if is_object_store(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def check_writable(workdir: epath.Path, process_index: int) -> None:
    """Creates the workdir if needed and proves it can be written, or raises UserError."""
    probe = workdir / f'.write_probe.{process_index}'
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_text('ok')
        probe.unlink()
    except OSError as e:
        raise UserError(f'the workdir {workdir} cannot be written ({e.strerror or e}): '
                        'choose another --workdir') from None


def is_object_store(path) -> bool:
    """gs://, s3://…: no append, no atomic rename, no locks; writing an object whole is atomic."""
    return '://' in os.fspath(path)


def write_atomically(path: epath.Path, text: str) -> None:
    """Replaces `path` whole, so a kill never leaves half a file: a temporary file renamed over
    it on a disk; one write on an object store, whose readers see the old object or the new."""
    if is_object_store(path):
        path.write_text(text)
        return
    tmp = path.parent / (path.name + '.tmp')
    tmp.write_text(text)
    tmp.replace(path)


COPY_BYTES = 16 << 20  # files are copied in pieces of this size (host memory stays bounded)


def copy_file(source: epath.Path, target: epath.Path) -> None:
    """Copies one file, between disks and object stores alike, a piece at a time."""
    with source.open('rb') as read, target.open('wb') as write:
        shutil.copyfileobj(read, write, COPY_BYTES)


def copy_tree(source: epath.Path, target: epath.Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        (copy_tree if path.is_dir() else copy_file)(path, target / path.name)


def move(source: epath.Path, target: epath.Path) -> None:
    """Renames a folder; on an object store (no rename) copies its files, then deletes it."""
    if is_object_store(source):
        copy_tree(source, target)
        source.rmtree()
    else:
        source.rename(target)


def read_json(path, advice: str):
    """The JSON in the file `path`, or a one-line UserError naming it, where it breaks (a file
    cut short, a stray character) and `advice`: what to do."""
    try:
        return json.loads(epath.Path(path).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f'{path} is not valid JSON ({e.msg} at line {e.lineno}, column '
                        f'{e.colno}): {advice}') from None


def write_config(workdir: epath.Path, config_json: dict) -> None:
    write_atomically(workdir / 'config.json', json.dumps(config_json, indent=2) + '\n')


@contextlib.contextmanager
def held(workdir: epath.Path):
    """Holds <workdir>/.lock while a run trains there, so a second run on it stops at once with a
    one-line error naming the first (host and pid). The lock is the kernel's (flock): a process
    that dies, however it dies, lets go of it. Process 0 holds it for a multi-process run and tells
    the others whether it got it. Object stores (gs://) cannot be locked: not checked there."""
    if is_object_store(workdir):
        yield
        return
    lock, owner = None, ''
    if jax.process_index() == 0:
        lock = open(workdir / LOCK_FILE, 'a+')
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.truncate(0)
            lock.write(f'{socket.gethostname()} {os.getpid()}\n')
            lock.flush()
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or 'another process'
            lock.close()
            lock = None
    got = lock is not None
    if jax.process_count() > 1:
        got = bool(multihost_utils.broadcast_one_to_all(np.int32(got)))
    if not got:
        host, _, pid = owner.partition(' ')
        who = f'process {pid} on {host}' if pid else 'another run (see process 0)'
        raise UserError(f'the workdir {workdir} is in use by {who}: wait for that run to end or '
                        'stop it, or choose another --workdir')
    try:
        yield
    finally:
        if lock is not None:
            lock.close()  # Releases the flock; the file stays, its owner line stale.


def write_failed(path, error: BaseException) -> UserError:
    """A one-line error for a failed write under `path`: the reason and the free space left."""
    reason = getattr(error, 'strerror', None) or str(error).splitlines()[0][:160]
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        reason = 'no space left on the device'
    try:
        free = f'{shutil.disk_usage(os.fspath(path)).free / 2**20:,.0f} MB free there'
    except OSError:
        free = 'free space unknown'
    return UserError(f'writing {path} failed ({reason}; {free}): free some space or choose '
                     'another --workdir, then rerun; the checkpoints already written are intact '
                     'and the run resumes from the newest')
