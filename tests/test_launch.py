"""launch.py as users run it: one-line errors (faults and resumes: tests/test_faults.py)."""

import subprocess
import sys

import pytest

from conftest import REPO

SMOKE = 'configs/cnn_digits.py:smoke'


def launch(workdir, *overrides, config=SMOKE, wait=True):
    command = [sys.executable, 'launch.py', f'--config={config}', f'--workdir={workdir}',
               *overrides]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    if not wait:
        return process
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout + stderr


@pytest.mark.parametrize('override, message', [
    ('--config.train.nosuch=3', "error: --config.train.nosuch: the config has no key 'nosuch'"),
    ('--config.train.batch_size=abc', 'error: flag --config.train.batch_size=abc: invalid literal'),
    ('--config.train.batch_size=12', 'error: train.batch_size=12 must be a positive multiple'),
])
def test_bad_overrides_are_one_line_errors_before_anything_is_written(tmp_path, override, message):
    code, output = launch(tmp_path / 'run', override)
    assert code == 1
    assert output.strip().splitlines()[-1].startswith(message), output
    assert 'Traceback' not in output
    assert not (tmp_path / 'run').exists()


def test_missing_config_file_is_a_one_line_error(tmp_path):
    code, output = launch(tmp_path / 'run', config='configs/nope.py')
    assert code == 1 and output.strip() == (
        "error: cannot load the config file: [Errno 2] No such file or directory: 'configs/nope.py'")


@pytest.mark.parametrize('mode', ['sample', 'export'])
def test_a_read_only_mode_on_a_workdir_without_a_checkpoint_is_one_line_and_writes_nothing(
        tmp_path, mode):
    code, output = launch(tmp_path / 'run', f'--mode={mode}', f'--export_dir={tmp_path / "out"}')
    assert code == 1 and output.strip() == (
        f'error: {tmp_path / "run"} holds no checkpoint: train there first'), output
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'out').exists()


def test_a_damaged_hugging_face_config_json_is_one_line_naming_where(tmp_path):
    (tmp_path / 'config.json').write_text('{"model_type": "llama",\n "hidden_size": 6')
    code, output = launch(tmp_path / 'run', config=f'configs/hf_finetune.py:{tmp_path}')
    assert code == 1 and output.strip() == (
        f"error: {tmp_path / 'config.json'} is not valid JSON (Expecting ',' delimiter at line 2, "
        "column 18): a model's config.json is cut short or damaged: fetch the model again "
        "(hf download, or transformers' save_pretrained)"), output
    assert not (tmp_path / 'run').exists()
