"""bigjax from a researcher's own code: a model, dataset and task registered outside bigjax
(tests/research_pieces.py) train through launch.py, resume exactly, run on a mesh and in a study;
the public setup (plan, load_state) serves runs whose pretrained run is gone."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import research_pieces
from bigjax import config as config_lib
from bigjax import data, export, models, plan, report, sample, study, tasks, train, writers
from bigjax.errors import UserError
from conftest import REPO, load_config

IMPORT = '--import=tests.research_pieces'
CONFIG = 'tests/research_config.py'


def research_config(**train_overrides):
    config = config_lib.from_file(CONFIG)
    config.report.enabled = False
    config.train.update(train_overrides)
    return config


def losses(workdir) -> list[tuple[int, str, float]]:
    return [(m['step'], m['split'], m['loss']) for m in writers.read_metrics(workdir)]


def test_own_model_data_and_task_train_through_launch_on_a_mesh(tmp_path):
    out = subprocess.run([sys.executable, 'launch.py', IMPORT, f'--config={CONFIG}',
                          f'--workdir={tmp_path}', '--config.report.enabled=False'],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    evals = [m for m in writers.read_metrics(tmp_path) if m['split'] == 'eval']
    # The targets' variance is |w|^2 ~ 16: the model learns most of the function.
    assert evals[-1]['loss'] < 0.5 * evals[0]['loss'] and 'accuracy' not in evals[-1]
    saved = json.loads((tmp_path / 'config.json').read_text())
    assert saved['model']['residual_mlp'] == {'width': 32, 'depth': 2}
    assert saved['mesh'] == {'data': 4, 'fsdp': 2, 'tensor': 1}
    out = subprocess.run([sys.executable, 'launch.py', IMPORT, f'--config={CONFIG}',
                          f'--workdir={tmp_path}', '--mode=report'],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'residual_mlp' in (tmp_path / 'report.html').read_text()


def test_own_pieces_resume_bitwise_identical(tmp_path):
    config = research_config(num_steps=30)
    expected = train.run(config, tmp_path / 'straight')
    assert train.run(config, tmp_path / 'resumed', stop_at_step=13) is None
    assert train.run(config, tmp_path / 'resumed') == expected
    assert losses(tmp_path / 'resumed') == losses(tmp_path / 'straight')


def test_own_pieces_in_a_study(tmp_path):
    tiny = study.Study(name='widths', config=CONFIG, space={'model.residual_mlp.width': [8, 32]},
                       metric='loss', goal='min', imports=('research_pieces',),
                       fixed={'train.num_steps': 20, 'train.eval_every': 20})
    rows = study.run(tiny, tmp_path)
    assert [row['status'] for row in rows] == ['done', 'done'], rows
    assert all(np.isfinite(row['metrics']['loss']) for row in rows)


def test_registry_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"model.name='nope' is not one of \[.*'residual_mlp'.*"
                                         r"register it with bigjax.models.register"):
        models.MODELS.get('nope')
    with pytest.raises(UserError, match="'residual_mlp' is already registered"):
        models.register('residual_mlp', research_pieces.ResidualMLP, inputs='regression')
    config = research_config()
    config.model.name = 'cnn'
    with pytest.raises(UserError, match="model.name='cnn' takes image data, and the dataset is "
                                        'regression'):
        plan.plan(config)
    config.data.name = 'digits_of_mine'
    with pytest.raises(UserError, match="unknown dataset 'digits_of_mine'.*noisy_linear"):
        plan.plan(config)
    out = subprocess.run([sys.executable, 'launch.py', '--import=no_such_module', f'--config={CONFIG}',
                          f'--workdir={tmp_path}'], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.strip() == (
        "error: --import=no_such_module: no module 'no_such_module' in the current folder "
        f'({REPO}) or on PYTHONPATH; run from the folder that holds no_such_module, or add that '
        'folder to PYTHONPATH')


def test_public_names_suffice_for_a_research_loop():
    """docs/own-code.md's research loop, run as written."""
    page = (REPO / 'docs' / 'own-code.md').read_text()
    section = page[page.index('## A research loop with the public API'):]
    [code] = re.findall(r'```python\n(.*?)```', section, re.S)[:1]
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = [float(line.split()[-1]) for line in out.stdout.splitlines()
               if line.startswith('step')]
    assert len(printed) >= 3 and printed[-1] < 0.5 * printed[0], out.stdout


def test_a_finetuned_run_outlives_its_pretrained_run(tmp_path):
    pretrain = load_config('transformer_cpu', 'smoke')
    train.run(pretrain, tmp_path / 'pre')
    finetune = load_config('transformer_cpu', 'smoke')
    finetune.init_from.path = str(tmp_path / 'pre')
    finetune.model.transformer.lora_rank = 2
    train.run(finetune, tmp_path / 'ft')
    shutil.rmtree(tmp_path / 'pre')
    run, state, step = plan.load_state(finetune, tmp_path / 'ft')
    assert step == finetune.train.num_steps and run.load_plan is None
    assert report.from_workdir(finetune, tmp_path / 'ft').name == 'report.html'
    assert sample.from_workdir(finetune, tmp_path / 'ft', 'def ', num_tokens=8,
                               temperature=0.0, top_k=0)
    assert 'Exported step' in export.export(finetune, tmp_path / 'ft', tmp_path / 'out')


def test_builtin_kinds_are_registered_like_your_own():
    assert {'cnn', 'vit', 'transformer_lm', 'transformer_classifier'} <= set(models.MODELS.names())
    assert {'synthetic', 'text_files', 'image_folder'} <= set(data.DATASETS.names())
    assert {'image', 'text_lm', 'text_classification'} <= set(tasks.TASKS.names())
