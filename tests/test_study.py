"""Studies: grid/random/bayes points, failed trials recorded, resume, results that match the runs."""

import csv
import importlib
import json

import numpy as np
import optuna
import pytest

from bigjax import study, study_results, writers
from bigjax.errors import UserError
from conftest import REPO

TINY = dict(config='configs/cnn_digits.py:smoke',
            fixed={'train.num_steps': 4, 'train.log_every': 2, 'train.eval_every': 4,
                   'train.checkpoint_every': 4})


def test_grid_enumerates_exactly_the_product_with_zipped_keys_together():
    space = {'optim.learning_rate': [0.1, 0.01],
             ('train.batch_size', 'optim.warmup_steps'): [(16, 0), (32, 5)],
             'optim.schedule': ['constant']}
    points = study.grid(space)
    assert points == [
        {'optim.learning_rate': lr, 'train.batch_size': b, 'optim.warmup_steps': w,
         'optim.schedule': 'constant'} for lr in (0.1, 0.01) for b, w in ((16, 0), (32, 5))]


def test_random_points_respect_bounds_and_seed():
    space = {'optim.learning_rate': study.Uniform(1e-4, 1e-1, log=True),
             'optim.warmup_steps': study.IntRange(0, 10), 'optim.schedule': ['constant', 'cosine']}
    points = [study.sample(space, seed=3, index=i) for i in range(200)]
    assert points == [study.sample(space, seed=3, index=i) for i in range(200)]
    assert points != [study.sample(space, seed=4, index=i) for i in range(200)]
    lrs = [p['optim.learning_rate'] for p in points]
    assert 1e-4 <= min(lrs) < 1e-3 and 1e-2 < max(lrs) <= 1e-1  # log-uniform: both decades
    assert {p['optim.warmup_steps'] for p in points} == set(range(11))
    assert {p['optim.schedule'] for p in points} == {'constant', 'cosine'}


def test_bayes_points_respect_bounds_and_seed():
    space = {'optim.learning_rate': study.Uniform(1e-4, 1e-1, log=True),
             'optim.warmup_steps': study.IntRange(0, 10), 'model.cnn.features': [(4,), (8, 8)]}

    def points(seed):
        search = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed,
                                                                        n_startup_trials=3))
        out = []
        for _ in range(8):
            trial = search.ask()
            point = study.suggest(trial, space)
            search.tell(trial, point['optim.learning_rate'])  # TPE then steers to small rates
            out.append(point)
        return out

    first = points(0)
    assert first == points(0) and first != points(1)
    assert all(1e-4 <= p['optim.learning_rate'] <= 1e-1 and 0 <= p['optim.warmup_steps'] <= 10
               and p['model.cnn.features'] in ((4,), (8, 8)) for p in first)


@pytest.mark.parametrize('space, search, message', [
    ({}, 'grid', 'empty search space'),
    ({'optim.learning_rat': [0.1]}, 'grid', "override key 'optim.learning_rat' is not in"),
    ({'optim.learning_rate': [0.1]}, 'hyperband', "--search='hyperband' is not one of"),
    ({'optim.learning_rate': study.Uniform(0.1, 1.0)}, 'grid', 'grid search needs a list'),
    ({'optim.learning_rate': []}, 'random', 'is an empty list'),
    ({('optim.learning_rate', 'train.batch_size'): [(0.1,)]}, 'grid', 'must be a 2-tuple'),
])
def test_bad_studies_are_clear_errors_before_any_trial(space, search, message, tmp_path):
    bad = study.Study(name='bad', space=space, metric='accuracy', **TINY)
    with pytest.raises(UserError, match=message):
        study.run(bad, tmp_path, search=search)
    assert not (tmp_path / 'trials').exists()


def test_a_failed_trial_is_recorded_the_study_resumes_and_results_match_the_runs(tmp_path):
    grid_study = study.Study(name='tiny', space={'model.cnn.activation': ['relu', 'nope', 'tanh']},
                             metric='accuracy', **TINY)
    rows = study.run(grid_study, tmp_path, workers=2)
    assert [(r['overrides']['model.cnn.activation'], r['status']) for r in rows] == [
        ('relu', 'done'), ('nope', 'failed'), ('tanh', 'done')]
    assert "model.cnn.activation='nope'" in rows[1]['error']
    with open(tmp_path / 'results.csv') as f:
        table = list(csv.DictReader(f))
    for row in table:
        if row['status'] == 'done':
            final = [m for m in writers.read_metrics(tmp_path / 'trials' / row['trial'] / 'run')
                     if m['split'] == 'eval'][-1]
            assert float(row['accuracy']) == pytest.approx(final['accuracy'], rel=1e-12)
            assert float(row['loss']) == pytest.approx(final['loss'], rel=1e-12)
    markdown = (tmp_path / 'results.md').read_text()
    winner = study_results.best(grid_study, rows)
    assert f'| **{winner["trial"]}** |' in markdown and 'failed: UserError' in markdown
    assert (tmp_path / 'plots' / 'curves_train_loss.png').exists()
    assert (tmp_path / 'plots' / 'accuracy_vs_model.cnn.activation.png').exists()
    # Resume: ended trials are not rerun; an interrupted one (no result yet) is.
    ended = {r['trial']: (tmp_path / 'trials' / r['trial'] / 'result.json').stat().st_mtime_ns
             for r in rows}
    (tmp_path / 'trials' / '0002' / 'result.json').unlink()
    again = study.run(grid_study, tmp_path)
    assert [r['status'] for r in again] == ['done', 'failed', 'done']
    for trial in ('0000', '0001'):
        assert (tmp_path / 'trials' / trial / 'result.json').stat().st_mtime_ns == ended[trial]
    assert again[2]['metrics'] == rows[2]['metrics']  # its finished run is simply read back


def test_bayes_study_resumes_from_its_optuna_storage(tmp_path):
    bayes = study.Study(name='tiny_bayes', metric='loss', goal='min', search='bayes',
                        space={'optim.learning_rate': study.Uniform(1e-3, 1e-1, log=True)}, **TINY)
    first = study.run(bayes, tmp_path, trials=2, seed=0, workers=2)
    assert len(first) == 2 and all(r['status'] == 'done' for r in first)
    more = study.run(bayes, tmp_path, trials=3, seed=0)
    assert [r['overrides'] for r in more[:2]] == [r['overrides'] for r in first]
    assert len(more) == 3 and all(1e-3 <= r['overrides']['optim.learning_rate'] <= 1e-1
                                  for r in more)
    stored = optuna.load_study(study_name='tiny_bayes',
                               storage=f'sqlite:///{tmp_path / "optuna.db"}')
    assert sorted(t.value for t in stored.trials) == sorted(r['metrics']['loss'] for r in more)


IMPORTANCE_STUDY = study.Study(
    name='importance', metric='accuracy', **TINY,
    space={'optim.learning_rate': study.Uniform(1e-4, 1e-1, log=True),
           'model.cnn.activation': ['relu', 'tanh', 'gelu'],
           ('train.batch_size', 'optim.warmup_steps'): [(16, 0), (32, 5)]})


def trial_rows(accuracy, n=24, status='done'):
    """Rows of `n` trials (as study_results.collect reads them) spread over IMPORTANCE_STUDY's
    space, each scoring accuracy(learning_rate, activation)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        lr, activation = float(10 ** rng.uniform(-4, -1)), ('relu', 'tanh', 'gelu')[i % 3]
        rows.append({'trial': f'{i:04d}', 'status': status, 'seconds': 1.0, 'error': '',
                     'overrides': {'optim.learning_rate': lr, 'model.cnn.activation': activation,
                                   'train.batch_size': (16, 32)[i % 2],
                                   'optim.warmup_steps': (0, 5)[i % 2]},
                     'metrics': {'accuracy': accuracy(lr, activation)}})
    return rows


@pytest.mark.parametrize('decides, accuracy', [
    ('optim.learning_rate', lambda lr, activation: 1 - abs(np.log10(lr) + 2.5) / 2),
    ('model.cnn.activation',
     lambda lr, activation: {'relu': 0.9, 'tanh': 0.5, 'gelu': 0.2}[activation]),
], ids=['learning_rate', 'activation'])
def test_importance_puts_the_hyperparameter_that_decides_the_metric_first(decides, accuracy):
    importance = study_results.importances(IMPORTANCE_STUDY, trial_rows(accuracy))
    # A zip of keys is one hyperparameter.
    assert set(importance) == {'optim.learning_rate', 'model.cnn.activation',
                               'train.batch_size,optim.warmup_steps'}
    assert list(importance)[0] == decides and importance[decides] > 0.8  # ranked, largest first
    assert sum(importance.values()) == pytest.approx(1)


def test_importance_needs_four_finished_trials_with_something_varying():
    def accuracy(lr, activation):
        return lr

    assert study_results.importances(IMPORTANCE_STUDY, trial_rows(accuracy, n=3)) == {}
    failed = trial_rows(accuracy, n=3) + trial_rows(accuracy, n=5, status='failed')[3:]
    assert study_results.importances(IMPORTANCE_STUDY, failed) == {}
    rows = trial_rows(accuracy, n=6)
    same = [dict(row, overrides=rows[0]['overrides']) for row in rows]
    assert study_results.importances(IMPORTANCE_STUDY, same) == {}


def test_importance_of_a_study_whose_trials_all_score_the_same_is_empty():
    rows = trial_rows(lambda lr, activation: 0.1)  # e.g. every trial at chance
    assert study_results.importances(IMPORTANCE_STUDY, rows) == {}


def test_parallel_workers_each_get_their_own_gpus(monkeypatch):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1,2,3')
    assert study.device_groups(2) == [{'CUDA_VISIBLE_DEVICES': '0,1'},
                                      {'CUDA_VISIBLE_DEVICES': '2,3'}]
    assert [g['CUDA_VISIBLE_DEVICES'] for g in study.device_groups(3)] == ['0', '1', '2']
    assert study.device_groups(1) == [{}]
    with pytest.raises(UserError, match='--workers=5 needs at least one GPU each'):
        study.device_groups(5)
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')  # no GPU: CPU trials share the machine
    assert study.device_groups(2) == [{}, {}]


@pytest.mark.parametrize('path', sorted((REPO / 'experiments').glob('*.py')),
                         ids=lambda p: p.stem)
def test_every_shipped_study_is_valid(path):
    module = importlib.import_module(f'experiments.{path.stem}')  # as studies import it
    if not hasattr(module, 'STUDY'):
        pytest.skip('not a hyperparameter study')
    study.check(module.STUDY, module.STUDY.search)
    json.dumps(study.grid(module.STUDY.space) if module.STUDY.search == 'grid' else
               study.sample(module.STUDY.space, 0, 0))
