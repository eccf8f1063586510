"""The run's folder: where it is, whether it can be written, and its config.json."""

import json
import os

from etils import epath

from bigjax.errors import UserError


def resolve(workdir) -> epath.Path:
    """An absolute path for a local workdir (Orbax needs one); URLs such as gs://… as given."""
    text = os.fspath(workdir)
    if not text.strip():
        raise UserError('--workdir is empty: name a folder for checkpoints and metrics')
    if '://' in text:
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


def write_atomically(path: epath.Path, text: str) -> None:
    """Writes a temporary file and renames it over `path`: a kill never leaves half a file."""
    tmp = path.parent / (path.name + '.tmp')
    tmp.write_text(text)
    tmp.replace(path)


def write_config(workdir: epath.Path, config_json: dict) -> None:
    write_atomically(workdir / 'config.json', json.dumps(config_json, indent=2) + '\n')
