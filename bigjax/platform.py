"""XLA flags that bigjax sets by default, in one place, before any backend starts; and the
platform a program is traced for.

On CPU, XLA's YNNPACK fusions are slower than its own dot and convolution emitters on the
machines we measure (benchmarks/README.md: the CNN step 1.85x faster, the LM step ~1.07x without
them), so they are turned off unless XLA_FLAGS already says otherwise. Nothing is set when an
accelerator plugin is installed and JAX_PLATFORMS does not say 'cpu' (accelerator runs do not use
these CPU paths) or when the environment variable BIGJAX_NO_XLA_DEFAULTS=1. A JAX backend started
before bigjax was imported has read XLA_FLAGS already and keeps XLA's defaults (harmless).
"""

import importlib.util
import os

import jax
from jax.experimental.compilation_cache import compilation_cache

from bigjax import workdir as workdir_lib

CPU_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=',)
ACCELERATOR_PLUGINS = ('jax_cuda13_plugin', 'jax_cuda12_plugin', 'jax_rocm7_plugin', 'libtpu')


def set_xla_defaults() -> None:
    if os.environ.get('BIGJAX_NO_XLA_DEFAULTS') == '1':
        return
    cpu_only = os.environ.get('JAX_PLATFORMS', '').strip().lower() == 'cpu'
    if not cpu_only and any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS):
        return
    flags = os.environ.get('XLA_FLAGS', '')
    added = [flag for flag in CPU_FLAGS if flag.split('=')[0] not in flags]
    os.environ['XLA_FLAGS'] = ' '.join([flags, *added]).strip()


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
