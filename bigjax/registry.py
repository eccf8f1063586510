"""Names a config chooses by (model.name, data.name, a dataset's kind) and what they stand for.

bigjax's own models, datasets and tasks are registered exactly as a user's are; `import_modules`
imports a user's modules (launch.py --import, a study's `imports`) so they can register theirs.
"""

import importlib
import os
import sys
from typing import Any, Iterable

from bigjax.errors import UserError


class Registry:
    """name -> entry, with one-line errors that say how to add a name."""

    def __init__(self, key: str, register_fn: str):
        self.key = key  # what a config sets, e.g. 'model.name'
        self.register_fn = register_fn  # how to add one, e.g. 'bigjax.models.register'
        self._entries: dict[str, Any] = {}

    def register(self, name: str, entry: Any, *, replace: bool = False) -> None:
        if not isinstance(name, str) or not name or '/' in name:
            raise UserError(f'{self.register_fn}: a name is a non-empty string without "/", '
                            f'got {name!r}')
        if name in self._entries and not replace:
            raise UserError(f'{self.register_fn}({name!r}, ...): {self.key} {name!r} is already '
                            'registered; choose another name, or pass replace=True')
        self._entries[name] = entry

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise UserError(f'{self.key}={name!r} is not one of {self.names()}: register it with '
                            f'{self.register_fn}(...) in a module that --import names')
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)


def import_modules(names: Iterable[str]) -> None:
    """Imports each dotted module name (which registers what it defines), in order, from the
    Python path and the current folder (as `python -m` would; `python launch.py` puts only
    launch.py's folder on the path)."""
    names = list(names)
    if names and os.getcwd() not in sys.path and '' not in sys.path:
        sys.path.insert(1, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise  # the module exists; something it imports does not
            raise UserError(f'--import={name}: no module {e.name!r} in the current folder '
                            f'({os.getcwd()}) or on PYTHONPATH; run from the folder that holds '
                            f'{e.name.split(".")[0]}, or add that folder to PYTHONPATH') from None
