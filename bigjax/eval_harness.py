"""Downstream evaluation with EleutherAI's lm-evaluation-harness: its tasks (hellaswag, arc_easy,
lambada_openai, ..., a task YAML of your own, or bigjax's offline bigjax_exceptions_mc / _gen)
scored on a bigjax LM (harness_model.BigjaxLM).

launch.py --mode=evaluate --tasks=... scores a run's latest checkpoint; train.eval_tasks scores
the model at every eval during training (metrics named TASK/METRIC). Each evaluation writes
<workdir>/eval_harness/step_<N>_<tasks>.json, which report.html shows. Tasks are found (and their
data fetched) before the checkpoint is read or anything compiled.
"""

import functools
import json
import os
import re
import time

import jax
from etils import epath

from bigjax import writers
from bigjax.data.core import LM_KINDS
from bigjax.errors import UserError

DIR = 'eval_harness'
INSTALL = 'pip install -r requirements-eval.txt'


def check_installed(what: str) -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError(f'{what} runs lm-evaluation-harness, which is not installed: {INSTALL}') \
            from None


def task_names(spec: str, what: str) -> list[str]:
    names = [name.strip() for name in spec.split(',') if name.strip()]
    if not names:
        raise UserError(f'{what} names no task: give lm-eval task names or task YAML files, '
                        'e.g. hellaswag,arc_easy or bigjax_exceptions_mc (offline)')
    return names


class Tasks:
    """lm-eval tasks by name, checked and their data fetched now: unknown names and data that
    cannot be downloaded are one-line errors."""

    def __init__(self, names: list[str], data_config, what: str):
        check_installed(what)
        from bigjax.data import harness_tasks
        self.names = names
        offline = any(n.startswith(harness_tasks.PREFIX) for n in names)
        self.manager = _task_manager(str(harness_tasks.folder_for(data_config)) if offline
                                     else None)
        for name in names:
            try:
                self.manager.load([name])
            except KeyError:
                raise UserError(f'{what}: {name!r} is neither an lm-eval task, group or tag nor a '
                                'task YAML file (`lm_eval ls tasks` lists them; bigjax\'s offline '
                                'ones are bigjax_exceptions_mc and bigjax_exceptions_gen)') from None
            except (ConnectionError, OSError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f'{what}: task {name!r} needs its data from the Hugging Face Hub '
                                f'and it cannot be fetched here ({first}): run it once where there '
                                'is internet (datasets keeps a copy in ~/.cache/huggingface), or '
                                'give a task YAML over local files') from None

    def evaluate(self, lm, *, limit: int = 0, num_fewshot: int = -1,
                 apply_chat_template: bool = False, bootstrap_iters: int = 100_000) -> dict:
        """lm-eval's results dict (simple_evaluate) of these tasks on `lm`."""
        import lm_eval
        return lm_eval.simple_evaluate(
            model=lm, tasks=self.names, task_manager=self.manager, limit=limit or None,
            num_fewshot=None if num_fewshot < 0 else num_fewshot,
            apply_chat_template=apply_chat_template, bootstrap_iters=bootstrap_iters,
            log_samples=False)


@functools.lru_cache(maxsize=4)
def _task_manager(include: str | None):
    """lm-eval's index of its tasks (and those under `include`): ~10 s to build, so kept."""
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=include)


def _metrics(values: dict) -> list[tuple[str, str, object]]:
    """(metric, filter, value) of a task's lm-eval results, whose keys read 'METRIC,FILTER'."""
    return [(*key.split(',', 1), value) for key, value in values.items() if ',' in key]


def scores(results: dict) -> dict[str, float]:
    """{TASK/METRIC (/FILTER where it is not 'none'): value} of each numeric result."""
    return {f'{task}/{metric}' + ('' if filter_name == 'none' else f'/{filter_name}'):
            float(value)
            for task, values in results['results'].items()
            for metric, filter_name, value in _metrics(values)
            if '_stderr' not in metric and isinstance(value, (int, float))}


def write(workdir, step: int, results: dict, settings: dict) -> epath.Path | None:
    """<workdir>/eval_harness/step_<N>_<tasks>.json (process 0 only)."""
    if jax.process_index() != 0:
        return None
    slug = re.sub(r'[^A-Za-z0-9_.-]+', '-', '+'.join(
        os.path.splitext(os.path.basename(n))[0] for n in settings['tasks']))[:80]
    path = epath.Path(workdir) / DIR / f'step_{step}_{slug}.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {'step': step, **settings,
              **{k: results.get(k) for k in ('results', 'groups', 'n-shot', 'n-samples',
                                             'versions', 'higher_is_better')},
              'lm_eval_version': results.get('config', {}).get('lm_eval_version')}
    path.write_text(json.dumps(record, indent=1, default=str) + '\n')
    return path


def read_latest(workdir) -> dict[str, dict]:
    """{task: {'step', 'limit', 'num_fewshot', 'values': {metric: value}, 'stderr': {...}}} of the
    newest evaluation of each task in <workdir>/eval_harness."""
    folder = epath.Path(workdir) / DIR
    if not folder.exists():
        return {}
    newest = {}
    for path in folder.glob('step_*.json'):
        record = json.loads(path.read_text())
        for task, values in (record.get('results') or {}).items():
            if task in newest and newest[task]['step'] > record['step']:
                continue
            plain = {metric: value for metric, _, value in _metrics(values)}
            newest[task] = {
                'step': record['step'], 'limit': record.get('limit'),
                'num_fewshot': (record.get('n-shot') or {}).get(task),
                'chat': record.get('apply_chat_template'),
                'values': {k: v for k, v in plain.items() if '_stderr' not in k},
                'stderr': {k.replace('_stderr', ''): v for k, v in plain.items()
                           if '_stderr' in k}}
    return newest


def from_workdir(config, workdir, tasks: str, *, limit: int = 0, num_fewshot: int = -1,
                 apply_chat_template: bool = False) -> str:
    """--mode=evaluate: the tasks scored on `workdir`'s latest checkpoint; returns lm-eval's
    table and where the results went."""
    if limit < 0:
        raise UserError(f'--limit={limit} must be >= 0 (0 = every example)')
    chosen = Tasks(task_names(tasks, '--tasks'), config.data, '--mode=evaluate')
    from bigjax import harness_model
    from bigjax import plan as plan_lib
    plan, state, step = plan_lib.load_state(config, workdir)
    lm = harness_model.BigjaxLM(plan=plan, params=state.params, seed=config.seed)
    start = time.time()
    results = chosen.evaluate(lm, limit=limit, num_fewshot=num_fewshot,
                              apply_chat_template=apply_chat_template)
    settings = {'tasks': chosen.names, 'limit': limit, 'num_fewshot': num_fewshot,
                'apply_chat_template': apply_chat_template,
                'seconds': round(time.time() - start, 1)}
    path = write(plan.workdir, step, results, settings)
    from lm_eval.utils import make_table
    return (f'{make_table(results)}\nStep {step} of {plan.workdir}, in {settings["seconds"]} s'
            + (f'; written to {path}' if path else ''))


class DuringTraining:
    """train.eval_tasks at each eval: scores logged as TASK/METRIC, results written beside."""

    def __init__(self, plan):
        train_config = plan.config.train
        if train_config.eval_tasks_limit < 0:
            raise UserError(f'train.eval_tasks_limit={train_config.eval_tasks_limit} must be >= 0 '
                            '(0 = every example)')
        if plan.dataset.kind not in LM_KINDS:
            raise UserError('train.eval_tasks scores language models: leave it empty for '
                            f'{plan.dataset.kind} data')
        self.plan, self.limit = plan, train_config.eval_tasks_limit
        self.tasks = Tasks(task_names(train_config.eval_tasks, 'train.eval_tasks'),
                           plan.config.data, 'train.eval_tasks')
        self.lm = None

    def __call__(self, state, step: int) -> dict[str, float]:
        from bigjax import harness_model
        if self.lm is None:
            self.lm = harness_model.BigjaxLM(plan=self.plan, params=state.params,
                                             seed=self.plan.config.seed)
        self.lm.params = state.params
        start = time.time()
        results = self.tasks.evaluate(self.lm, limit=self.limit, bootstrap_iters=0)
        writers.log.info('lm-eval %s at step %d in %.0f s', ','.join(self.tasks.names), step,
                         time.time() - start)
        write(self.plan.workdir, step, results,
              {'tasks': self.tasks.names, 'limit': self.limit, 'num_fewshot': -1,
               'apply_chat_template': False, 'seconds': round(time.time() - start, 1)})
        return scores(results)
