"""Test setup: 8 host devices (so every test runs sharded), CPU only even where libtpu is
installed (it compiles TPU programs here: tests/test_compile.py), and a private tfds data_dir
and JAX compilation cache (the user's ~/.cache/bigjax/jax is neither read nor written)."""

import os
import pathlib
import shutil
import tempfile

os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ['TPU_SKIP_MDS_QUERY'] = '1'  # libtpu: no wait on a TPU VM's metadata server
DEVICES_FLAG = '--xla_force_host_platform_device_count=8'  # pytest-xdist's workers inherit it
if DEVICES_FLAG not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICES_FLAG}".strip()


def private_dir(variable: str, prefix: str) -> str | None:
    """A temporary folder of the suite's own in $variable (launch.py subprocesses inherit it),
    unless the user set one; each pytest-xdist worker makes its own rather than share the one it
    inherits. Removed at the end (pytest_unconfigure)."""
    inherited = f'BIGJAX_TESTS_{variable}'
    if os.environ.get(variable) not in (None, os.environ.get(inherited)):
        return None
    os.environ[variable] = os.environ[inherited] = tempfile.mkdtemp(prefix=prefix)
    return os.environ[variable]


PRIVATE_DIRS = [folder for folder in (private_dir('TFDS_DATA_DIR', 'bigjax_tfds_'),
                                      private_dir('BIGJAX_COMPILATION_CACHE_DIR', 'bigjax_jax_'))
                if folder]

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

from bigjax import config as config_lib  # noqa: E402
from bigjax import platform  # noqa: E402
from bigjax.kernels import causal_attention  # noqa: E402

# This process compiles TPU programs (tests/test_compile.py), as --mode=compile does: glibc's
# arenas per thread, chosen before the CPU backend starts (the CPU defaults run in subprocesses).
platform.malloc_arenas_per_thread()

REPO = pathlib.Path(__file__).resolve().parent.parent
# Every config but hf_finetune, which needs a Hugging Face model folder (tests/test_hf.py runs its
# smoke on a tiny one built with transformers).
CONFIGS = sorted(p.stem for p in (REPO / 'configs').glob('*.py') if p.stem != 'hf_finetune')


def load_config(name: str, arg: str | None = None, *, report: bool = False):
    """configs/<name>.py's get_config(arg), as launch.py's --config=configs/<name>.py[:arg];
    without the end-of-run report unless asked (tests/test_report.py covers it; it costs
    seconds per run)."""
    config = config_lib.from_file(f'configs/{name}.py' + (f':{arg}' if arg else ''))
    config.report.enabled = report
    return config


@pytest.fixture(autouse=True)
def fused_attention_takes_the_kernel(monkeypatch):
    """attention='fused' runs the C++ kernel in every test in this process, also on CPUs where
    it takes the einops attention for speed (causal_attention.fast_here): those tests are of
    the kernel. tests/test_kernels.py checks the choice itself."""
    monkeypatch.setattr(causal_attention, 'fast_here', lambda: True)


def pytest_unconfigure(config):
    for folder in PRIVATE_DIRS:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope='session', autouse=True)
def eight_devices():
    assert jax.device_count() == 8, 'tests expect 8 forced host devices'
