"""Hyperparameter studies: a base config, a space of overrides, a metric; grid, random or
Bayesian (optuna TPE) search; every trial a real training run in its own process and folder.

<workdir>/trials/<id>/ holds trial.json (its overrides), run/ (the training workdir) and, once it
ended, result.json (status, metrics, seconds, error). A trial that crashes or diverges is recorded
as failed and the study goes on; rerunning skips ended trials and resumes interrupted ones. The
Bayesian search keeps its optuna study in <workdir>/optuna.db. At the end, study_results.py
writes results.csv, results.md and the plots.

With a shared storage (--storage=postgresql+psycopg://...), every search keeps its bookkeeping in
optuna instead (study_shared.py), so that the same command on several machines shares one study:
the database hands out each trial once, and a trial whose worker stops sending heartbeats is
retried by another.
"""

import argparse
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import random
import subprocess
import threading
import time
from typing import Any

from etils import epath

from bigjax import config as config_lib
from bigjax import registry
from bigjax import study_shared
from bigjax import study_results as results
from bigjax import workdir as workdir_lib
from bigjax.errors import UserError

SEARCHES = ('grid', 'random', 'bayes')
GOALS = ('max', 'min')


@dataclasses.dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [low, high] (on a log scale if log)."""

    low: float
    high: float
    log: bool = False


@dataclasses.dataclass(frozen=True)
class IntRange:
    """An int drawn uniformly from low..high inclusive."""

    low: int
    high: int


@dataclasses.dataclass(frozen=True)
class Study:
    """What to search. `space` maps a dotted config key to a list of values (grid, or uniform
    choice) or a distribution (random and bayes only); a tuple of keys maps to a list of value
    tuples that go together (a zip). `fixed` overrides every trial (e.g. shorter runs)."""

    name: str
    config: str  # 'configs/cnn_digits.py[:arg]', as launch.py's --config
    space: dict
    metric: str  # a final eval metric of train.run, e.g. 'accuracy' or 'loss'
    goal: str = 'max'
    fixed: dict = dataclasses.field(default_factory=dict)
    search: str = 'grid'  # the default of --search
    trials: int = 0  # the default of --trials; 0 = the whole grid (grid) or 10
    imports: tuple = ()  # modules imported first, here and in every trial (what they register)


def check(study: Study, search: str) -> None:
    """Raises UserError for an empty space, an unknown search or goal, a key the base config
    lacks, or a distribution in a grid: before any trial runs."""
    if search not in SEARCHES:
        raise UserError(f'--search={search!r} is not one of {list(SEARCHES)}')
    if study.goal not in GOALS:
        raise UserError(f'Study.goal={study.goal!r} is not one of {list(GOALS)}')
    if not study.space:
        raise UserError(f'study {study.name!r} has an empty search space: name at least one key')
    registry.import_modules(study.imports)
    config = config_lib.from_file(study.config)
    for key, values in list(study.space.items()) + [(k, [v]) for k, v in study.fixed.items()]:
        for name in (key if isinstance(key, tuple) else (key,)):
            _lookup(config, name)
        if isinstance(values, (list, tuple)):
            if not values:
                raise UserError(f'the search space of {key!r} is an empty list')
            if isinstance(key, tuple) and any(len(v) != len(key) for v in values):
                raise UserError(f'{key!r} zips {len(key)} keys: each value must be a '
                                f'{len(key)}-tuple')
        elif search == 'grid':
            raise UserError(f'grid search needs a list of values for {key!r}, not {values!r}; '
                            'use --search=random or --search=bayes')
        elif not isinstance(values, (Uniform, IntRange)) or values.low > values.high:
            raise UserError(f'{key!r}: {values!r} is not a list, Uniform or IntRange with '
                            'low <= high')


def _lookup(config, dotted: str):
    node = config
    for part in dotted.split('.'):
        if not hasattr(node, 'keys') or part not in node:
            raise UserError(f'override key {dotted!r} is not in the base config (bigjax/config.py '
                            'lists every key)')
        node = node[part]
    return node


def grid(space: dict) -> list[dict]:
    """Every combination, the last key varying fastest; zipped keys vary together."""
    keys = list(space)
    return [_expand(dict(zip(keys, combo))) for combo in itertools.product(*space.values())]


def sample(space: dict, seed: int, index: int) -> dict:
    """Trial `index` of a random search: the same point for the same seed and index."""
    rng = random.Random(f'{seed}-{index}')
    point = {}
    for key, values in space.items():
        if isinstance(values, Uniform):
            low, high = (math.log(values.low), math.log(values.high)) if values.log else (
                values.low, values.high)
            value = rng.uniform(low, high)
            point[key] = math.exp(value) if values.log else value
        elif isinstance(values, IntRange):
            point[key] = rng.randint(values.low, values.high)
        else:
            point[key] = values[rng.randrange(len(values))]
    return _expand(point)


def _expand(point: dict) -> dict:
    """Zipped keys ((a, b): (1, 2)) as separate overrides {a: 1, b: 2}."""
    out = {}
    for key, value in point.items():
        out.update(zip(key, value) if isinstance(key, tuple) else [(key, value)])
    return out


def suggest(trial, space: dict) -> dict:
    """An optuna trial's point: distributions as floats/ints, lists by index (any values)."""
    point = {}
    for key, values in space.items():
        name = ','.join(key) if isinstance(key, tuple) else key
        if isinstance(values, Uniform):
            point[key] = trial.suggest_float(name, values.low, values.high, log=values.log)
        elif isinstance(values, IntRange):
            point[key] = trial.suggest_int(name, values.low, values.high)
        else:
            point[key] = values[trial.suggest_categorical(name, list(range(len(values))))]
    return _expand(point)


def device_groups(workers: int) -> list[dict]:
    """The environment of each worker slot. With several workers on a machine with GPUs, each
    sees its own share of them (CUDA_VISIBLE_DEVICES); otherwise nothing changes (CPU trials share
    the cores; a TPU host runs one trial at a time)."""
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    if visible is not None:
        gpus = [g for g in visible.split(',') if g.strip()]
    else:
        try:
            listing = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True,
                                     timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            listing = ''
        gpus = [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith('GPU ')]
    if workers == 1 or not gpus:
        return [{} for _ in range(workers)]
    if len(gpus) < workers:
        raise UserError(f'--workers={workers} needs at least one GPU each; this machine shows '
                        f'{len(gpus)}')
    share = len(gpus) // workers
    return [{'CUDA_VISIBLE_DEVICES': ','.join(gpus[i * share:(i + 1) * share])}
            for i in range(workers)]


def run_trial(study: Study, overrides: dict, folder: str, env: dict | None = None) -> None:
    """One trial, in its own process (its output to <folder>/log.txt; `env` set before JAX
    starts): trains, then writes result.json (done or failed)."""
    os.environ.update(env or {})
    if (parent := multiprocessing.parent_process()) is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    from bigjax import train
    start = time.time()
    log = os.open(os.path.join(folder, 'log.txt'), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)  # this process's output, the training log included, goes to the trial's log
    os.dup2(log, 2)
    try:
        registry.import_modules(study.imports)
        config = config_lib.from_file(study.config)
        config.report.enabled = False
        config.update_from_flattened_dict({**study.fixed, **overrides})
        metrics = train.run(config, os.path.join(folder, 'run'))
        value = metrics.get(study.metric)
        if value is None:
            raise UserError(f'the run reports no metric {study.metric!r}; it has {sorted(metrics)}')
        result = {'status': 'done', 'metrics': metrics, 'error': ''}
        if not math.isfinite(value):
            result = {'status': 'failed', 'metrics': metrics, 'error': f'{study.metric} = {value}'}
    except Exception as e:  # A failed trial is a result; the study goes on.
        result = {'status': 'failed', 'metrics': {}, 'error': f'{type(e).__name__}: {e}'}
    result['seconds'] = round(time.time() - start, 1)
    workdir_lib.write_atomically(epath.Path(folder) / 'result.json', json.dumps(result) + '\n')


def _exit_with(parent) -> None:
    """Ends this trial process when the study process that started it dies (even by SIGKILL), so
    that a killed worker leaves no trial running that another worker may retry."""
    parent.join()
    os._exit(1)


class _Runner:
    """Runs trials in up to `workers` processes at once; a process that dies is a failed trial."""

    def __init__(self, study: Study, workdir: epath.Path, workers: int):
        self.study, self.workdir, self.workers = study, workdir, workers
        self.context = multiprocessing.get_context('spawn')
        self.running: dict[str, Any] = {}  # trial id -> (process, slot)
        self.slots = device_groups(workers)  # each slot's environment

    def folder(self, trial_id: str) -> epath.Path:
        return self.workdir / 'trials' / trial_id

    def result(self, trial_id: str) -> dict | None:
        path = self.folder(trial_id) / 'result.json'
        return json.loads(path.read_text()) if path.exists() else None

    def start(self, trial_id: str, overrides: dict) -> None:
        folder = self.folder(trial_id)
        folder.mkdir(parents=True, exist_ok=True)
        workdir_lib.write_atomically(folder / 'trial.json',
                                     json.dumps({'overrides': overrides}) + '\n')
        print(f'trial {trial_id}: {_describe(overrides)}', flush=True)
        slot = min(set(range(self.workers)) - {slot for _, slot in self.running.values()})
        process = self.context.Process(target=run_trial, args=(
            self.study, overrides, os.fspath(folder), self.slots[slot]))
        process.start()
        self.running[trial_id] = (process, slot)

    def wait_for_one(self) -> tuple[str, dict]:
        """Blocks until a running trial ends; (its id, its result)."""
        while (ended := self.poll()) is None:
            time.sleep(0.2)
        return ended

    def poll(self) -> tuple[str, dict] | None:
        """A running trial that has ended (its id, its result), or None."""
        for trial_id, (process, _) in list(self.running.items()):
            if not process.is_alive():
                process.join()
                del self.running[trial_id]
                result = self.result(trial_id)
                if result is None:
                    result = {'status': 'failed', 'metrics': {}, 'seconds': 0.0,
                              'error': f'the trial process died (exit code {process.exitcode})'}
                    workdir_lib.write_atomically(self.folder(trial_id) / 'result.json',
                                                 json.dumps(result) + '\n')
                _report(self.study, trial_id, result)
                return trial_id, result
        return None


def _report(study: Study, trial_id: str, result: dict) -> None:
    """Prints one line for an ended trial."""
    metric = result['metrics'].get(study.metric)
    print(f'trial {trial_id}: {result["status"]}'
          + (f', {study.metric} {metric:.6g}' if metric is not None else '')
          + (f' ({result["error"]})' if result['error'] else ''), flush=True)


def _describe(overrides: dict) -> str:
    return ' '.join(f'{k}={v}' for k, v in overrides.items())


def run(study: Study, workdir, *, search: str | None = None, trials: int = 0, workers: int = 1,
        seed: int = 0, storage: str | None = None,
        heartbeat_s: int = study_shared.HEARTBEAT_S) -> list[dict]:
    """Runs (or resumes) the study; returns one row per trial and writes the results. With
    `storage`, a database URL, the study is the one every worker naming that URL shares."""
    search = search or study.search
    check(study, search)
    if workers < 1:
        raise UserError(f'--workers={workers} must be >= 1')
    budget = _budget(study, search, trials)
    shared = study_shared.open_shared(study, search, seed, budget, storage,
                                     heartbeat_s) if storage else None
    workdir = workdir_lib.resolve(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    runner = _Runner(study, workdir, workers)
    if shared:
        study_shared.run_shared(study, runner, search, budget, seed, *shared)
    elif search == 'bayes':
        _run_bayes(study, runner, budget, seed)
    else:
        points = grid(study.space) if search == 'grid' else None
        for index in range(budget):
            trial_id = f'{index:04d}'
            if runner.result(trial_id) is not None:
                continue
            while len(runner.running) >= workers:
                runner.wait_for_one()
            runner.start(trial_id, points[index] if points else sample(study.space, seed, index))
        while runner.running:
            runner.wait_for_one()
    rows = (results.from_optuna(shared[0].get_trials(deepcopy=False)) if shared
            else results.collect(study, workdir))
    results.write(study, workdir, rows)
    return rows


def _budget(study: Study, search: str, trials: int) -> int:
    """How many trials: --trials, else the study's, else the whole grid (grid) or 10; a grid's
    budget at most its size."""
    size = len(grid(study.space)) if search == 'grid' else None
    budget = trials or study.trials or size or 10
    return min(budget, size) if size else budget


def tpe_sampler(seed: int, budget: int):
    """The Bayesian search's TPE sampler (its first min(5, budget) points at random)."""
    import optuna
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, budget))


def _run_bayes(study: Study, runner: _Runner, budget: int, seed: int) -> None:
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f'sqlite:///{runner.workdir / "optuna.db"}'
    direction = 'maximize' if study.goal == 'max' else 'minimize'
    optuna_study = optuna.create_study(
        study_name=study.name, storage=storage, direction=direction, load_if_exists=True,
        sampler=tpe_sampler(seed, budget))
    pending: dict[str, int] = {}

    def tell(trial_id: str, result: dict) -> None:
        number = pending.pop(trial_id)
        value = result['metrics'].get(study.metric)
        if result['status'] == 'done':
            optuna_study.tell(number, value)
        else:
            optuna_study.tell(number, state=optuna.trial.TrialState.FAIL)

    # Trials a killed study left running: rerun them (their runs resume) and report them.
    for frozen in optuna_study.get_trials(deepcopy=False,
                                          states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = f'{frozen.number:04d}'
        pending[trial_id] = frozen.number
        result = runner.result(trial_id)
        if result is not None:
            tell(trial_id, result)
            continue
        while len(runner.running) >= runner.workers:
            tell(*runner.wait_for_one())
        overrides = json.loads((runner.folder(trial_id) / 'trial.json').read_text())['overrides']
        runner.start(trial_id, overrides)
    while True:
        ended = len(optuna_study.get_trials(deepcopy=False, states=(
            optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)))
        if ended + len(runner.running) >= budget:
            break
        while len(runner.running) >= runner.workers:
            tell(*runner.wait_for_one())
        trial = optuna_study.ask()
        trial_id = f'{trial.number:04d}'
        pending[trial_id] = trial.number
        runner.start(trial_id, suggest(trial, study.space))
    while runner.running:
        tell(*runner.wait_for_one())


def main(study: Study) -> None:
    """The command line of an experiments/ script that defines `study`."""
    parser = argparse.ArgumentParser(description=f'Study {study.name}: {study.metric} '
                                                 f'({study.goal}) over {list(study.space)}')
    parser.add_argument('--workdir', required=True, help='the study folder (reruns resume)')
    parser.add_argument('--search', default=study.search, help=f'one of {list(SEARCHES)}')
    parser.add_argument('--trials', type=int, default=0,
                        help='trial budget; 0 = the study\'s default (grid: all)')
    parser.add_argument('--workers', type=int, default=1, help='trials run at once')
    parser.add_argument('--seed', type=int, default=0, help='random and bayes search seed')
    parser.add_argument('--import', dest='imports', action='append', default=[],
                        help='a module to import first, here and in every trial (one that '
                             'registers your model, dataset or task); repeatable')
    parser.add_argument('--storage', default=None,
                        help='a database URL (postgresql+psycopg://user@host:5432/db) shared by '
                             'workers on several machines that run this same command; default: '
                             'this machine only (grid/random: trial folders, bayes: '
                             '<workdir>/optuna.db)')
    parser.add_argument('--heartbeat', type=int, default=study_shared.HEARTBEAT_S,
                        help='with --storage: seconds between heartbeats; a trial silent for '
                             f'{study_shared.GRACE_HEARTBEATS} of them is retried elsewhere')
    args = parser.parse_args()
    study = dataclasses.replace(study, imports=tuple(study.imports) + tuple(args.imports))
    try:
        rows = run(study, args.workdir, search=args.search, trials=args.trials,
                   workers=args.workers, seed=args.seed, storage=args.storage,
                   heartbeat_s=args.heartbeat)
    except UserError as e:
        raise SystemExit(f'error: {e}')
    print('\n' + results.markdown(study, rows))
    winner = results.best(study, rows)
    if winner:
        print(f'best: trial {winner["trial"]} {_describe(winner["overrides"])} -> '
              f'{study.metric} {winner["metrics"][study.metric]:.6g}')
    print(f'results: {os.path.join(args.workdir, "results.csv")}, results.md and plots there')
