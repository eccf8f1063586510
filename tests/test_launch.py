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
    ('--config.model.my_mlp.width=3', "error: --config.model.my_mlp.width: the config has no key "
     "'my_mlp' (bigjax/config.py lists every key; a model of your own has its options once "
     '--import names the module that registers it)'),
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
        f"error: config file 'configs/nope.py' not found: there is no {REPO / 'configs/nope.py'}"
    ), output


def test_run_from_ones_own_folder_finds_bigjax_configs_and_ones_own_package(tmp_path):
    """`python ../bigjax/launch.py --import=my_pkg.model --config=configs/...` from a project
    folder: the config is bigjax's, the package the current folder's."""
    (tmp_path / 'my_pkg').mkdir()
    (tmp_path / 'my_pkg' / '__init__.py').write_text('')
    (tmp_path / 'my_pkg' / 'model.py').write_text(
        'import sys\nprint("my_pkg imported", file=sys.stderr)\n')
    out = subprocess.run([sys.executable, str(REPO / 'launch.py'), '--import=my_pkg.model',
                          f'--config={SMOKE}', f'--workdir={tmp_path / "run"}', '--mode=sample'],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        'my_pkg imported', f'error: {tmp_path / "run"} holds no checkpoint: train there first'
    ], out.stderr


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
