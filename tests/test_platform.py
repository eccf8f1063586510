"""bigjax's CPU defaults: taken on a machine with no accelerator whatever is installed, left
alone on an accelerator host and where the user said otherwise."""

import os
import subprocess
import sys

import jax
import pytest
from jax._src import hardware_utils

from bigjax import platform
from conftest import REPO

[FLAG] = platform.CPU_FLAGS
FLAG_NAME = FLAG.split('=')[0]
USER_FLAGS = '--xla_force_host_platform_device_count=8'


def no_accelerator(monkeypatch) -> None:
    monkeypatch.setattr(hardware_utils, 'num_available_tpu_chips_and_device_id', lambda: (0, None))
    monkeypatch.setattr(hardware_utils, 'has_visible_nvidia_gpu', lambda: False)
    monkeypatch.setattr(hardware_utils, 'num_available_amd_gpus', lambda stop_at=None: 0)
    monkeypatch.setattr(platform.glob, 'glob', lambda pattern: [])


@pytest.fixture
def cpu_machine(monkeypatch):
    """A Linux machine with no accelerator, no JAX_PLATFORMS, no opt-out; the user's XLA_FLAGS."""
    no_accelerator(monkeypatch)
    monkeypatch.setattr(sys, 'platform', 'linux')
    monkeypatch.delenv('BIGJAX_NO_XLA_DEFAULTS', raising=False)
    monkeypatch.setenv('XLA_FLAGS', USER_FLAGS)
    before = jax.config.jax_platforms
    jax.config.update('jax_platforms', None)  # as if JAX_PLATFORMS were unset (conftest sets it)
    yield monkeypatch
    jax.config.update('jax_platforms', before)


ACCELERATOR_HOSTS = {
    'tpu_vm': ('num_available_tpu_chips_and_device_id',
               lambda: (4, hardware_utils.TpuVersion.v5e)),
    'tpu_chip_jax_does_not_name': None,  # /dev/accel0, as on TPU VMs of any generation
    'nvidia_gpu': ('has_visible_nvidia_gpu', lambda: True),
    'amd_gpu': ('num_available_amd_gpus', lambda stop_at=None: 1),
}


@pytest.mark.parametrize('host', ACCELERATOR_HOSTS)
def test_an_accelerator_host_gets_nothing(cpu_machine, host):
    if ACCELERATOR_HOSTS[host]:
        cpu_machine.setattr(hardware_utils, *ACCELERATOR_HOSTS[host])
    else:
        cpu_machine.setattr(platform.glob, 'glob',
                            lambda pattern: ['/dev/accel0'] if pattern == '/dev/accel*' else [])
    platform.set_cpu_defaults()
    assert os.environ['XLA_FLAGS'] == USER_FLAGS
    assert jax.config.jax_platforms is None
    jax.config.update('jax_platforms', 'cpu')  # the user's JAX_PLATFORMS=cpu: the flags apply
    platform.set_cpu_defaults()
    assert os.environ['XLA_FLAGS'] == f'{USER_FLAGS} {FLAG}'


def test_a_cpu_machine_runs_on_the_cpu_with_the_flags_after_the_users_own(cpu_machine):
    platform.set_cpu_defaults()
    assert jax.config.jax_platforms == 'cpu'
    assert os.environ['XLA_FLAGS'] == f'{USER_FLAGS} {FLAG}'
    platform.set_cpu_defaults()  # bigjax imported again (a subprocess that inherits the env)
    assert os.environ['XLA_FLAGS'] == f'{USER_FLAGS} {FLAG}'
    cpu_machine.delenv('XLA_FLAGS')
    platform.set_cpu_defaults()
    assert os.environ['XLA_FLAGS'] == FLAG


def test_the_users_platforms_flags_and_opt_out_win(cpu_machine):
    jax.config.update('jax_platforms', 'tpu')
    platform.set_cpu_defaults()
    assert (jax.config.jax_platforms, os.environ['XLA_FLAGS']) == ('tpu', USER_FLAGS)
    jax.config.update('jax_platforms', None)
    cpu_machine.setenv('BIGJAX_NO_XLA_DEFAULTS', '1')
    platform.set_cpu_defaults()
    assert (jax.config.jax_platforms, os.environ['XLA_FLAGS']) == (None, USER_FLAGS)
    cpu_machine.delenv('BIGJAX_NO_XLA_DEFAULTS')
    cpu_machine.setenv('XLA_FLAGS', f'{FLAG_NAME}=SOMETHING_ELSE')
    platform.set_cpu_defaults()
    assert os.environ['XLA_FLAGS'] == f'{FLAG_NAME}=SOMETHING_ELSE'


def test_elsewhere_than_linux_what_is_installed_decides(cpu_machine):
    cpu_machine.setattr(sys, 'platform', 'darwin')
    cpu_machine.setattr(platform.importlib.util, 'find_spec', lambda name: None)
    assert not platform.accelerator_present()
    cpu_machine.setattr(platform.importlib.util, 'find_spec',
                        lambda name: object() if name == 'libtpu' else None)
    assert platform.accelerator_present()


@pytest.mark.skipif(platform.accelerator_present(), reason='this machine has an accelerator')
def test_on_this_cpu_machine_importing_bigjax_takes_the_cpu_quietly_whatever_is_installed():
    """No JAX_PLATFORMS: libtpu (installed by requirements-tpu.txt) is not probed, so none of its
    warnings, nor loaded (the process is the one a machine without it runs), and this XLA
    accepts the flags (it aborts on a flag it does not know)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('XLA_FLAGS', 'BIGJAX_NO_XLA_DEFAULTS', 'JAX_PLATFORMS',
                        'TPU_SKIP_MDS_QUERY')}
    result = subprocess.run(
        [sys.executable, '-c', 'import os, bigjax, jax; print(jax.jit(lambda x: x + 1)(1), '
         'jax.default_backend(), os.path.exists("/proc/self/maps") and "libtpu" in '
         'open("/proc/self/maps").read(), '
         'os.environ["XLA_FLAGS"])'], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['2', 'cpu', 'False', FLAG]
    assert 'TPU' not in result.stderr and 'CUDA' not in result.stderr, result.stderr


GLIBC_ON_A_CPU_ONLY_MACHINE = pytest.mark.skipif(
    platform._glibc() is None or platform.accelerator_present(),
    reason='needs glibc and a CPU-only machine')


REUSE_SCRIPT = '''
import resource, statistics
import bigjax, jax, jax.numpy as jnp
from bigjax import platform
step = jax.jit(lambda x: jnp.dot(x * 2, x.T).sum())  # ~72 MB of buffers a call
x = jnp.ones((3000, 3000))
def faults_per_call(release=lambda: None):
    for _ in range(10):  # until the heap holds what a call needs
        step(x).block_until_ready()
    faults = []
    for _ in range(5):  # the median: a call that meets the heap fragmented is rare
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step(x).block_until_ready()
        release()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return statistics.median(faults)
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2 ** 20
print(faults_per_call())
with platform.reuse_freed_memory() as release:
    print(faults_per_call(release), rss_mb())
print(rss_mb())
with platform.reuse_freed_memory(keep_free_max=10 * 2 ** 20) as release:
    print(faults_per_call(release))
'''


@GLIBC_ON_A_CPU_ONLY_MACHINE
def test_a_cpu_training_loop_reuses_the_memory_its_steps_free_and_gives_it_back_after():
    """Outside, every call faults in fresh pages for its buffers (~18,000 here); inside, none
    once the heap holds a call's worth; after, the memory is returned; and a cap on what may
    be held brings the faults back."""
    result = subprocess.run([sys.executable, '-c', REUSE_SCRIPT], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    assert result.returncode == 0, result.stderr
    lines = [[float(v) for v in line.split()] for line in result.stdout.splitlines()]
    (outside,), (inside, rss_inside), (rss_after,), (capped,) = lines
    assert outside > 5000 and capped > 1000
    assert inside < outside / 20
    assert rss_after < rss_inside - 60  # at least most of the call's worth (~72 MB) it held


ARENAS_SCRIPT = '''
import ctypes, os, sys, threading
from bigjax import platform
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
if sys.argv[1] == 'compile':
    platform.malloc_arenas_per_thread()
together = threading.Barrier(3)
def work():  # three threads allocating at once
    together.wait()
    libc.free(libc.malloc(1 << 16))
    together.wait()
threads = [threading.Thread(target=work) for _ in range(3)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.malloc_stats()
'''


@GLIBC_ON_A_CPU_ONLY_MACHINE
def test_cpu_processes_keep_one_malloc_arena_and_compiling_processes_one_per_thread():
    """The CPU defaults put every thread on one arena (so the training loop can keep what its
    steps free); a process about to compile for a TPU gives its threads their own."""
    arenas = {}
    for mode in ('cpu', 'compile'):
        result = subprocess.run([sys.executable, '-c', ARENAS_SCRIPT, mode], cwd=REPO, text=True,
                                capture_output=True, timeout=120,
                                env={k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'})
        assert result.returncode == 0, result.stderr
        arenas[mode] = result.stderr.count('Arena ')
    assert arenas['cpu'] == 1 and arenas['compile'] == 4, arenas
