"""C++ kernels for XLA:CPU, compiled on first use with the machine's C++ compiler and cached.

The shared library of `<name>.cc` is built once per source, compiler, jaxlib and CPU into
$BIGJAX_KERNEL_CACHE (default ~/.cache/bigjax/kernels) with -O3 for the native instruction set,
written under a temporary name and renamed, so concurrent processes never load a partial file.
"""

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jaxlib

from bigjax.errors import UserError

SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))


def _compiler() -> str | None:
    named = os.environ.get('CXX')
    if named:
        return shutil.which(named)
    return shutil.which('g++') or shutil.which('c++')


def _flags() -> list[str]:
    native = '-mcpu=native' if platform.machine() in ('arm64', 'aarch64') else '-march=native'
    return ['-O3', native, '-std=c++17', '-shared', '-fPIC', '-isystem', jax.ffi.include_dir()]


def _cpu_id() -> str:
    """What -march=native compiles for, so a cache shared between machines stays correct."""
    try:
        with open('/proc/cpuinfo') as f:
            return next((line for line in f if line.startswith(('flags', 'Features'))), '')
    except OSError:
        return platform.processor()


def cpu_has(feature: str) -> bool:
    """Whether this CPU lists `feature` (e.g. 'avx512f') among its flags."""
    return feature in _cpu_id().split()


def build(name: str, purpose: str) -> str:
    """The path of `name`.cc compiled into a shared library (built now unless cached).
    `purpose` names the setting that asked for it, for the error a user sees when no compiler
    is found or the build fails."""
    compiler = _compiler()
    if compiler is None:
        raise UserError(f'{purpose} builds a C++ kernel on first use and no C++ compiler was '
                        f'found (CXX={os.environ.get("CXX", "")!r}): install g++ or set CXX, '
                        f'or choose another setting')
    source = os.path.join(SOURCE_DIR, f'{name}.cc')
    with open(source, 'rb') as f:
        text = f.read()
    key = hashlib.sha256(b'\0'.join([text, compiler.encode(), ' '.join(_flags()).encode(),
                                     jaxlib.__version__.encode(), _cpu_id().encode()]))
    cache = os.environ.get('BIGJAX_KERNEL_CACHE',
                           os.path.join(os.path.expanduser('~'), '.cache', 'bigjax', 'kernels'))
    path = os.path.join(cache, f'{name}-{key.hexdigest()[:16]}.so')
    if os.path.exists(path):
        return path
    os.makedirs(cache, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(suffix='.so', dir=cache)
    os.close(descriptor)
    try:
        result = subprocess.run([compiler, *_flags(), source, '-o', partial],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            lines = result.stderr.splitlines()
            first_error = next((line for line in lines if 'error' in line),
                               lines[0] if lines else f'exit status {result.returncode}')
            raise UserError(f'{purpose}: building {name}.cc with {compiler} failed: '
                            f'{first_error}')
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


_LOADED: dict[str, ctypes.CDLL] = {}


def library(name: str, purpose: str) -> ctypes.CDLL:
    """The compiled kernel library `name`, built if needed and loaded once per process."""
    if name not in _LOADED:
        _LOADED[name] = ctypes.cdll.LoadLibrary(build(name, purpose))
    return _LOADED[name]
