"""Prepared arrays (decoded images, tokenized text) cached beside the data as .npy files.

A cache entry is a folder named by a hash of its key, holding one .npy per array, the key and a
JSON report. It is built in a temporary folder (arrays too large to hold in memory are streamed
into it with ArrayWriter) and renamed into place, key.json written last, so a run killed while
building never leaves an entry that a later run trusts; the next build on that host removes the
temporary folder it left. Entries are memory-mapped on load, so each process reads only the rows
it uses. A cache in an object store (gs://…, shared by every host and by the next VM) is used
through a copy of each entry on this host's disk: built there and uploaded file by file, key.json
last, or downloaded; nothing is appended or renamed in the object store.
"""

import hashlib
import json
import os
import shutil
import socket
from typing import Callable

import numpy as np
from etils import epath

from bigjax import workdir as workdir_lib
from bigjax.errors import UserError

Arrays = dict[str, np.ndarray]
LOCAL_COPIES = '~/.cache/bigjax/objects'  # this host's copies of entries in object stores


def cached(directory: epath.Path, key: dict,
           build: Callable[[epath.Path], tuple[Arrays, dict]]) -> tuple[Arrays, dict]:
    """(arrays, report) for `key`: loaded from `directory`, or built and saved. `build(folder)`
    returns (arrays, report), the arrays to save as they are; it may also stream larger arrays
    into `folder` itself (ArrayWriter)."""
    if workdir_lib.is_object_store(directory):
        return _through_local_copy(directory, key, build)
    text = json.dumps(key, sort_keys=True)
    folder = directory / _entry_name(key)
    if (folder / 'key.json').exists():
        try:
            return _load(folder)
        except (OSError, ValueError) as e:
            raise UserError(f'the cache entry {folder} is unreadable ({e}): delete that folder '
                            'and rerun to rebuild it') from None
    _remove_abandoned(directory, folder.name)
    tmp = directory / f'{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}'
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        arrays, report = build(tmp)
        for name, array in arrays.items():
            np.save(tmp / f'{name}.npy', array)
        (tmp / 'report.json').write_text(json.dumps(report))
        (tmp / 'key.json').write_text(text)  # Written last: its presence marks a complete entry.
        if not folder.exists():
            tmp.rename(folder)
    except OSError:
        if not (folder / 'key.json').exists():
            raise
    finally:  # Built by another process first, or failed: nothing of this attempt is kept.
        if tmp.exists():
            shutil.rmtree(tmp)
    return _load(folder)


def _entry_name(key: dict) -> str:
    """The folder name of `key`'s entry, the same in an object store and on local disk."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _through_local_copy(directory: epath.Path, key: dict, build) -> tuple[Arrays, dict]:
    """`cached` for an entry in an object store: loaded from this host's copy, downloaded into
    it, or built into it and then uploaded (again, if an upload was cut short)."""
    local = epath.Path(os.path.expanduser(LOCAL_COPIES)) / os.fspath(directory).replace('://', '/')
    name = _entry_name(key)
    remote = directory / name
    if not (local / name / 'key.json').exists() and (remote / 'key.json').exists():
        return cached(local, key, lambda folder: _download(remote, folder))
    arrays, report = cached(local, key, build)
    if not (remote / 'key.json').exists():
        remote.mkdir(parents=True, exist_ok=True)
        for path in sorted((local / name).iterdir(), key=lambda p: p.name == 'key.json'):
            workdir_lib.copy_file(path, remote / path.name)  # key.json last: marks it complete
    return arrays, report


def _download(remote: epath.Path, folder: epath.Path) -> tuple[Arrays, dict]:
    for path in remote.iterdir():
        if path.name not in ('key.json', 'report.json'):
            workdir_lib.copy_file(path, folder / path.name)
    return {}, json.loads((remote / 'report.json').read_text())


class ArrayWriter:
    """An .npy file of rows appended a chunk at a time, for arrays too large to hold in memory:
    the rows go to a side file, and close() writes the .npy (header, then the rows) and deletes
    the side file."""

    def __init__(self, path: epath.Path, row_shape: tuple, dtype):
        self.path, self.row_shape, self.dtype = path, tuple(row_shape), np.dtype(dtype)
        self.num_rows = 0
        self._side_path = path.with_suffix('.rows')
        self._side = self._side_path.open('wb')

    def append(self, rows: np.ndarray) -> None:
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f'rows of shape {rows.shape[1:]} appended to {self.row_shape}')
        self._side.write(np.ascontiguousarray(rows, self.dtype).tobytes())
        self.num_rows += len(rows)

    def close(self) -> int:
        """Writes the .npy; returns its number of rows."""
        self._side.close()
        header = {'descr': np.lib.format.dtype_to_descr(self.dtype), 'fortran_order': False,
                  'shape': (self.num_rows, *self.row_shape)}
        with self.path.open('wb') as out, self._side_path.open('rb') as side:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(side, out, workdir_lib.COPY_BYTES)
        self._side_path.unlink()
        return self.num_rows


def _remove_abandoned(directory: epath.Path, name: str) -> None:
    """Deletes temporary folders of `name` that processes of this host which are no longer
    running left behind (a killed build)."""
    prefix = f'{name}.tmp-{socket.gethostname()}-'
    for tmp in directory.glob(f'{prefix}*'):
        pid = tmp.name[len(prefix):]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Running, as another user.
        pass
    return True


def _load(folder: epath.Path) -> tuple[Arrays, dict]:
    arrays = {path.stem: np.load(path, mmap_mode='r') for path in folder.glob('*.npy')}
    return arrays, json.loads((folder / 'report.json').read_text())
