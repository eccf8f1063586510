import subprocess
import sys

import jax.numpy as jnp
import pytest

from bigjax import export, sample, train
from bigjax.errors import UserError
from conftest import REPO, load_config


@pytest.fixture(scope='module')
def trained_lm(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('lm')
    train.run(load_config('transformer_cpu', 'smoke'), workdir)
    return workdir


def test_sampling_from_a_trained_workdir(trained_lm):
    config = load_config('transformer_cpu', 'smoke')
    text = sample.from_workdir(config, trained_lm, 'def ', num_tokens=20, temperature=0.0,
                               top_k=0)
    assert isinstance(text, str) and text
    assert text == sample.from_workdir(config, trained_lm, 'def ', num_tokens=20,
                                       temperature=0.0, top_k=0)


def test_sample_mode_of_launch(trained_lm):
    out = subprocess.run([sys.executable, 'launch.py', '--config=configs/transformer_cpu.py:smoke',
                          f'--workdir={trained_lm}', '--mode=sample', '--prompt=import ',
                          '--num_tokens=10', '--temperature=0'],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def test_export_mode_of_launch(trained_lm, tmp_path):
    """--mode=export writes a checkpoint folder (here of an LM without adapters)."""
    command = [sys.executable, 'launch.py', '--config=configs/transformer_cpu.py:smoke',
               f'--workdir={trained_lm}', '--mode=export']
    out = subprocess.run(command + [f'--export_dir={tmp_path}/lm'], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f'to {tmp_path}/lm: ' in out.stdout and (tmp_path / 'lm' / 'state').is_dir()
    with pytest.raises(UserError, match='needs --export_dir'):
        export.export(load_config('transformer_cpu', 'smoke'), trained_lm, '')


def test_sampling_errors_are_clear(trained_lm, tmp_path):
    config = load_config('transformer_cpu', 'smoke')
    with pytest.raises(UserError, match='holds no checkpoint: train there first'):
        sample.from_workdir(config, tmp_path, 'x', num_tokens=5, temperature=1.0, top_k=0)
    with pytest.raises(UserError, match='must not be empty'):
        sample.generate_any_length(None, None, jnp.zeros((1, 0), jnp.int32), None, num_tokens=4)
