"""bigjax's default XLA flags: set on a CPU-only install, left alone when they do not apply."""

import importlib.util
import os
import subprocess
import sys

import pytest

from bigjax import platform
from conftest import REPO

[FLAG] = platform.CPU_FLAGS
FLAG_NAME = FLAG.split('=')[0]


@pytest.fixture
def cpu_install(monkeypatch):
    """No accelerator plugin installed, no JAX_PLATFORMS, no opt-out: the defaults apply."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *args: None
                        if name in platform.ACCELERATOR_PLUGINS else find_spec(name, *args))
    for name in ('JAX_PLATFORMS', 'BIGJAX_NO_XLA_DEFAULTS'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
    return monkeypatch


def with_plugin(monkeypatch, plugin: str) -> None:
    """Makes `plugin` (an accelerator's jax plugin) look installed."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *args: object()
                        if name == plugin else find_spec(name, *args))


def test_cpu_only_install_gets_the_flags_after_the_users_own(cpu_install):
    platform.set_xla_defaults()
    assert os.environ['XLA_FLAGS'] == f'--xla_force_host_platform_device_count=8 {FLAG}'
    platform.set_xla_defaults()  # bigjax imported again (a subprocess that inherits the env)
    assert os.environ['XLA_FLAGS'] == f'--xla_force_host_platform_device_count=8 {FLAG}'
    cpu_install.delenv('XLA_FLAGS')
    platform.set_xla_defaults()
    assert os.environ['XLA_FLAGS'] == FLAG


def test_opting_out_leaves_xla_flags_alone(cpu_install):
    cpu_install.setenv('BIGJAX_NO_XLA_DEFAULTS', '1')
    platform.set_xla_defaults()
    assert os.environ['XLA_FLAGS'] == '--xla_force_host_platform_device_count=8'


@pytest.mark.parametrize('plugin', platform.ACCELERATOR_PLUGINS)
def test_an_accelerator_install_gets_no_cpu_flags_unless_jax_platforms_is_cpu(cpu_install,
                                                                             plugin):
    with_plugin(cpu_install, plugin)
    cpu_install.setenv('JAX_PLATFORMS', 'tpu' if plugin == 'libtpu' else 'cuda')
    platform.set_xla_defaults()
    assert os.environ['XLA_FLAGS'] == '--xla_force_host_platform_device_count=8'
    cpu_install.delenv('JAX_PLATFORMS')
    platform.set_xla_defaults()
    assert os.environ['XLA_FLAGS'] == '--xla_force_host_platform_device_count=8'
    cpu_install.setenv('JAX_PLATFORMS', ' CPU ')  # tests on a TPU VM (conftest), or a CPU run
    platform.set_xla_defaults()
    assert os.environ['XLA_FLAGS'] == f'--xla_force_host_platform_device_count=8 {FLAG}'


def test_a_value_the_user_set_is_kept_not_duplicated(cpu_install):
    cpu_install.setenv('XLA_FLAGS', f'{FLAG_NAME}=SOMETHING_ELSE')
    platform.set_xla_defaults()
    assert os.environ['XLA_FLAGS'] == f'{FLAG_NAME}=SOMETHING_ELSE'


def test_importing_bigjax_sets_the_flags_and_this_xla_accepts_them():
    env = {k: v for k, v in os.environ.items()
           if k not in ('XLA_FLAGS', 'BIGJAX_NO_XLA_DEFAULTS')}
    # XLA aborts a process whose XLA_FLAGS names a flag it does not know.
    result = subprocess.run(
        [sys.executable, '-c', 'import os, bigjax, jax; print(jax.jit(lambda x: x + 1)(1), '
         'os.environ["XLA_FLAGS"])'], cwd=REPO, env={**env, 'JAX_PLATFORMS': 'cpu'},
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['2', FLAG]
