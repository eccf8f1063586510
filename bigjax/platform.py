"""The CPU defaults bigjax sets, in one place, before any backend starts; and the platform a
program is traced for.

What is installed does not say what a machine has (README's test command installs libtpu
everywhere), so bigjax looks at the machine: with no TPU or GPU present (jax's own checks of
PCI devices and device files, which start no backend), JAX runs on the CPU without probing
libtpu or CUDA, XLA:CPU gets bigjax's flags (its YNNPACK fusions are slower than its own dot
and convolution emitters on the machines we measure, benchmarks/README.md) and the training
loop keeps the memory its steps free (reuse_freed_memory). On a TPU VM or GPU box nothing is
set. A user's JAX_PLATFORMS or XLA_FLAGS wins (with JAX_PLATFORMS=cpu the defaults apply even
there), and BIGJAX_NO_XLA_DEFAULTS=1 sets nothing. A JAX backend started before bigjax was
imported keeps what it read (harmless).
"""

import contextlib
import ctypes
import glob
import importlib.util
import os
import sys

import jax
from jax._src import hardware_utils
from jax.experimental.compilation_cache import compilation_cache

from bigjax import workdir as workdir_lib

CPU_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=',)
ACCELERATOR_PLUGINS = ('jax_cuda13_plugin', 'jax_cuda12_plugin', 'jax_rocm7_plugin', 'libtpu')
TPU_DEVICE_FILES = ('/dev/accel*', '/dev/vfio/[0-9]*')  # TPU chips jax's PCI table may not name yet
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}


def accelerator_present() -> bool:
    """Whether this machine has a TPU or GPU for JAX. On Linux, from its devices; elsewhere (no
    /sys to read) from the plugins installed."""
    if not sys.platform.startswith('linux'):
        return any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)
    return bool(hardware_utils.num_available_tpu_chips_and_device_id()[0]
                or any(glob.glob(pattern) for pattern in TPU_DEVICE_FILES)
                or hardware_utils.has_visible_nvidia_gpu()
                or hardware_utils.num_available_amd_gpus(stop_at=1))


def set_cpu_defaults() -> None:
    """CPU only (the user's JAX_PLATFORMS=cpu, or no accelerator here): XLA:CPU's flags, JAX
    kept to the CPU unless the user named platforms, and one malloc arena for the threads XLA
    is about to start (so reuse_freed_memory can keep their buffers). Otherwise nothing."""
    if os.environ.get('BIGJAX_NO_XLA_DEFAULTS') == '1':
        return
    platforms = (jax.config.jax_platforms or '').strip().lower()  # JAX_PLATFORMS, read by jax
    if platforms and platforms != 'cpu':
        return
    if not platforms:
        if accelerator_present():
            return
        jax.config.update('jax_platforms', 'cpu')
    flags = os.environ.get('XLA_FLAGS', '')
    added = [flag for flag in CPU_FLAGS if flag.split('=')[0] not in flags]
    os.environ['XLA_FLAGS'] = ' '.join([flags, *added]).strip()
    if libc := _glibc():
        libc.mallopt(M_ARENA_MAX, 1)


def malloc_arenas_per_thread() -> None:
    """glibc's own malloc arenas (up to 8 per core) instead of set_cpu_defaults' one, for a
    process that compiles for other hardware: libtpu's compiler threads queue on one arena
    (100m for a v5e chip here: 96-110 s on one, 73-99 s without it; noisy). glibc fixes the
    arena count when a second thread first allocates, so call before JAX starts a backend."""
    if libc := _glibc():
        libc.mallopt(M_ARENA_MAX, 8 * (os.cpu_count() or 1))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks',
        'fordblks', 'keepcost')]


@contextlib.contextmanager
def reuse_freed_memory(keep_free_max: int | None = None):
    """While XLA:CPU runs steps, glibc's malloc keeps the buffers a step frees for the next one
    instead of unmapping them and faulting fresh pages in again (the CNN's step mapped ~56 MB
    of new pages, ~14,000 page faults, about a fifth of its time: benchmarks/README.md). Large
    blocks come from the heap rather than their own mappings while inside (data is prepared
    before); glibc's defaults come back after. Yields `release`, to call now and then: it gives
    the free memory back to the system once more than `keep_free_max` bytes of it are held
    (by default min(1 GiB, a sixteenth of the machine's memory)).
    Nothing changes off the CPU, off glibc or with BIGJAX_NO_XLA_DEFAULTS=1."""
    opted_out = os.environ.get('BIGJAX_NO_XLA_DEFAULTS') == '1'
    libc = _glibc() if jax.default_backend() == 'cpu' and not opted_out else None
    if libc is None:
        yield lambda: None
        return
    if keep_free_max is None:
        keep_free_max = min(2 ** 30, os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') // 16)

    def release() -> None:
        if libc.mallinfo2().fordblks > keep_free_max:
            libc.malloc_trim(0)

    libc.mallinfo2.restype = _MallInfo2
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, keep_free_max)
    try:
        yield release
    finally:
        for parameter, value in GLIBC_DEFAULTS.items():
            libc.mallopt(parameter, value)
        libc.malloc_trim(0)


def _glibc():
    """The process's C library if it is glibc 2.33 or newer (mallopt, mallinfo2)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2  # noqa: B018 (musl, macOS, older glibc: AttributeError)
        return libc
    except (OSError, AttributeError):
        return None


def use_compilation_cache(directory: str) -> None:
    """Keeps compiled programs in `directory` (jax's persistent cache; '' = off), so a restarted
    or resumed run loads its train and eval steps instead of compiling them again."""
    path = os.fspath(workdir_lib.resolve(directory)) if directory else None
    if jax.config.jax_compilation_cache_dir != path:
        compilation_cache.set_cache_dir(path)
        compilation_cache.reset_cache()  # jax reads the setting once per process otherwise


def target() -> str:
    """The platform ('cpu', 'gpu', 'tpu') the program being traced will run on: the devices of
    the mesh in context (parallel.layout; a TPU topology compiled on a CPU machine), else the
    default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    platform = jax.default_backend() if mesh.empty else mesh.abstract_device.platform
    return 'gpu' if platform in ('cuda', 'rocm') else platform
