"""lm-evaluation-harness on bigjax LMs (bigjax/eval_harness.py, bigjax/harness_model.py): the same
weights scored by lm-eval's own hf backend and by bigjax give the same log-likelihoods, accuracy
and greedy strings; during training the scores are eval metrics; errors are one line."""

import json
import sys

import numpy as np
import pytest

lm_eval = pytest.importorskip('lm_eval')
torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
from hf_models import llama, saved, tokenizer_folder  # noqa: E402  (they import torch)

from bigjax import config as config_lib  # noqa: E402
from bigjax import eval_harness  # noqa: E402
from bigjax.errors import UserError  # noqa: E402

CORPUS = ['def spam(eggs):\n    try:\n        return eggs[0]\n    except IndexError:\n'
          '        return None\n',
          'class Ham:\n    """A ham."""\n    size = 3\n    except KeyError as e:\n'] * 40
TASKS = 'bigjax_exceptions_mc,bigjax_exceptions_gen'


@pytest.fixture(scope='module')
def tuned_run(tmp_path_factory):
    """A tiny Llama with its own BPE, LoRA-tuned a few steps by bigjax with train.eval_tasks on,
    and exported for transformers: (config, workdir, export folder, final eval metrics)."""
    from bigjax import export, train
    root = tmp_path_factory.mktemp('harness')
    folder = root / 'hf'
    vocab_size = tokenizer_folder(folder, CORPUS)
    saved(llama(vocab_size=vocab_size, max_position_embeddings=128), folder)
    config = config_lib.from_file(f'configs/hf_finetune.py:{folder},smoke')
    config.train.eval_tasks = 'bigjax_exceptions_mc'
    config.train.eval_tasks_limit = 4
    workdir = root / 'run'
    final = train.run(config, workdir)
    export.export(config, workdir, root / 'out', 'hf')
    return config, workdir, root / 'out', final


def test_bigjax_and_the_hf_backend_score_the_export_alike(tuned_run):
    """Per request: the same log-likelihood (1e-4) and greedy flag for every choice, the same
    greedy string for every generation, hence the same accuracy and exact match."""
    from lm_eval.models.huggingface import HFLM

    from bigjax import harness_model
    from bigjax import plan as plan_lib
    config, workdir, exported, _ = tuned_run
    tasks = eval_harness.Tasks(TASKS.split(','), config.data, 'test')
    plan, state, _ = plan_lib.load_state(config, workdir)
    results = {}
    for name, lm in [('bigjax', harness_model.BigjaxLM(plan=plan, params=state.params)),
                     ('hf', HFLM(pretrained=str(exported), device='cpu', batch_size=4))]:
        results[name] = lm_eval.simple_evaluate(model=lm, tasks=tasks.names,
                                                task_manager=tasks.manager, limit=6,
                                                bootstrap_iters=0, log_samples=True)
    for task in tasks.names:
        ours, theirs = (results[name]['samples'][task] for name in ('bigjax', 'hf'))
        assert [s['arguments'] for s in ours] == [s['arguments'] for s in theirs]
        for a, b in zip(ours, theirs):
            if task.endswith('_mc'):
                assert len(a['resps']) == 7
                for [(logp_a, greedy_a)], [(logp_b, greedy_b)] in zip(a['resps'], b['resps']):
                    assert abs(logp_a - logp_b) < 1e-4 and greedy_a == greedy_b
            else:
                assert a['resps'] == b['resps'] and a['filtered_resps'] == b['filtered_resps']
        assert results['bigjax']['results'][task] == results['hf']['results'][task]


def test_rolling_empty_context_and_stop_string_requests_match_the_hf_backend(tuned_run):
    """loglikelihood_rolling over texts longer than max_len (several windows), a loglikelihood
    with an empty context (conditioned on the prefix token), and generations cut at a stop
    string of several characters match hf's."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from bigjax import harness_model
    from bigjax import plan as plan_lib
    config, workdir, exported, _ = tuned_run
    plan, state, _ = plan_lib.load_state(config, workdir)
    ours = harness_model.BigjaxLM(plan=plan, params=state.params)
    theirs = HFLM(pretrained=str(exported), device='cpu', batch_size=4)
    texts = [CORPUS[0] * 12, CORPUS[1], 'x']
    rolling = [Instance('loglikelihood_rolling', {}, (t,), i) for i, t in enumerate(texts)]
    assert len(ours.tok_encode(texts[0])) > 2 * ours.max_length  # three windows at least
    np.testing.assert_allclose(ours.loglikelihood_rolling(rolling),
                               theirs.loglikelihood_rolling(rolling), rtol=1e-5, atol=1e-4)
    pairs = [Instance('loglikelihood', {}, ('', ' except KeyError'), 0),
             Instance('loglikelihood', {}, ('class Ham: ', 'size = 3'), 1)]
    for (la, ga), (lb, gb) in zip(ours.loglikelihood(pairs), theirs.loglikelihood(pairs)):
        assert abs(la - lb) < 1e-4 and ga == gb
    prompt = CORPUS[0][:40]
    free = Instance('generate_until', {}, (prompt, {'until': [], 'max_gen_toks': 12}), 0)
    [text] = ours.generate_until([free])
    assert text == theirs.generate_until([free])[0] and len(text) > 6
    stop = text[3:6]
    cut = Instance('generate_until', {}, (prompt, {'until': [stop], 'max_gen_toks': 12}), 0)
    assert ours.generate_until([cut]) == theirs.generate_until([cut]) == [text.split(stop)[0]]


def test_eval_tasks_during_training_and_evaluate_mode_write_results_the_report_shows(tuned_run):
    """train.eval_tasks logs TASK/METRIC at every eval; --mode=evaluate writes
    eval_harness/step_<N>_<tasks>.json and the report shows the newest score of each task."""
    from bigjax import report, writers
    config, workdir, _, final = tuned_run
    assert 0 <= final['bigjax_exceptions_mc/acc'] <= 1
    evals = [row for row in writers.read_metrics(workdir) if row['split'] == 'eval']
    assert len(evals) >= 2 and all('bigjax_exceptions_mc/acc_norm' in row for row in evals)
    summary = eval_harness.from_workdir(config, workdir, 'bigjax_exceptions_gen', limit=3)
    assert 'exact_match' in summary and 'eval_harness/step_' in summary
    record = json.loads(next((workdir / 'eval_harness').glob('*bigjax_exceptions_gen.json'))
                        .read_text())
    assert record['limit'] == 3 and record['n-samples']['bigjax_exceptions_gen']['effective'] == 3
    latest = eval_harness.read_latest(workdir)
    assert set(latest) == {'bigjax_exceptions_mc', 'bigjax_exceptions_gen'}
    report.from_workdir(config, workdir)
    page = (workdir / 'report.html').read_text()
    assert 'lm-evaluation-harness' in page and 'bigjax_exceptions_gen' in page


def test_lm_evals_own_entry_point_loads_a_run_by_name(tuned_run):
    """The model registered as 'bigjax' (lm_eval --model bigjax --model_args config=...,workdir=...)
    loads the run's latest checkpoint and scores it as the bigjax model given the state does."""
    from bigjax import harness_model
    from bigjax import plan as plan_lib
    config, workdir, _, _ = tuned_run
    tasks = eval_harness.Tasks(['bigjax_exceptions_mc'], config.data, 'test')
    plan, state, _ = plan_lib.load_state(config, workdir)
    models = {'by name': ('bigjax', {'config': f'configs/hf_finetune.py:{config.init_from.path},'
                                               'smoke', 'workdir': str(workdir)}),
              'given': (harness_model.BigjaxLM(plan=plan, params=state.params), None)}
    responses = {}
    for name, (model, model_args) in models.items():
        results = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks.names,
                                          task_manager=tasks.manager, limit=3,
                                          bootstrap_iters=0, log_samples=True)
        responses[name] = [s['resps'] for s in results['samples']['bigjax_exceptions_mc']]
    assert len(responses['given']) == 3 and responses['by name'] == responses['given']


@pytest.mark.parametrize('tasks, message', [
    ('', 'names no task'),
    ('no_such_task_anywhere', "'no_such_task_anywhere' is neither an lm-eval task"),
])
def test_task_errors_are_one_line_before_the_checkpoint_is_read(tasks, message, tmp_path):
    config = config_lib.from_file('configs/transformer_cpu.py:smoke')
    with pytest.raises(UserError, match=message) as error:
        eval_harness.from_workdir(config, tmp_path / 'no_run_here', tasks)
    assert '\n' not in str(error.value)


def test_a_task_whose_data_cannot_be_downloaded_says_so(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
    with pytest.raises(UserError, match="task 'arc_easy' needs its data from the Hugging Face") \
            as error:
        eval_harness.Tasks(['arc_easy'], config_lib.default_config().data, '--mode=evaluate')
    assert '\n' not in str(error.value)


def test_without_lm_eval_evaluate_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'lm_eval', None)
    config = config_lib.from_file('configs/transformer_cpu.py:smoke')
    with pytest.raises(UserError, match='requirements-eval.txt'):
        eval_harness.from_workdir(config, tmp_path, 'bigjax_exceptions_mc')
