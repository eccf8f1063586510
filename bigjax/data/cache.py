"""Prepared arrays (decoded images, tokenized text) cached beside the data as .npy files.

A cache entry is a folder named by a hash of its key, holding one .npy per array, the key and a
JSON report. It is written to a temporary folder and renamed into place, so a kill never leaves a
half entry; entries are memory-mapped on load, so each process reads only the rows it uses.
"""

import hashlib
import json
import os
import shutil
import socket
from typing import Callable

import numpy as np
from etils import epath

from bigjax.errors import UserError

Arrays = dict[str, np.ndarray]


def cached(directory: epath.Path, key: dict, build: Callable[[], tuple[Arrays, dict]]
           ) -> tuple[Arrays, dict]:
    """(arrays, report) for `key`: loaded from `directory`, or built by `build()` and saved."""
    text = json.dumps(key, sort_keys=True)
    folder = directory / hashlib.sha256(text.encode()).hexdigest()[:20]
    if (folder / 'key.json').exists():
        try:
            return _load(folder)
        except (OSError, ValueError) as e:
            raise UserError(f'the cache entry {folder} is unreadable ({e}): delete that folder '
                            'and rerun to rebuild it') from None
    arrays, report = build()
    tmp = directory / f'{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}'
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(tmp / f'{name}.npy', array)
    (tmp / 'report.json').write_text(json.dumps(report))
    (tmp / 'key.json').write_text(text)  # Written last: its presence marks a complete entry.
    if folder.exists():  # Another process finished the same entry first.
        shutil.rmtree(tmp)
    else:
        tmp.rename(folder)
    return _load(folder)


def _load(folder: epath.Path) -> tuple[Arrays, dict]:
    arrays = {path.stem: np.load(path, mmap_mode='r') for path in folder.glob('*.npy')}
    return arrays, json.loads((folder / 'report.json').read_text())
