"""A study shared by workers on several machines through a database (optuna's RDB storage,
e.g. PostgreSQL): `study.py --storage=URL`. Trial i of the budget is an optuna trial marked with
index=i; the database hands each queued trial to one worker, which beats its heartbeat while the
trial runs; a trial whose heartbeat stops is failed by any worker and queued again.
"""

import json
import random
import time
import warnings

from bigjax import study as study_lib
from bigjax.errors import UserError

HEARTBEAT_S = 10  # seconds between a shared study's heartbeats
GRACE_HEARTBEATS = 3  # a trial silent for this many heartbeats is retried by another worker


def open_shared(study, search: str, seed: int, budget: int, url: str, heartbeat_s: int):
    """(the optuna study, its RDBStorage) of a shared study in the database at `url`, created by
    whichever worker comes first; UserError for a bad URL, a missing driver, a server that cannot
    be reached, or a study that other workers run with another search or seed."""
    import optuna
    import sqlalchemy
    if heartbeat_s < 1:
        raise UserError(f'--heartbeat={heartbeat_s} must be at least 1 (seconds)')
    try:
        shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f'--storage={url!r} is not a database URL; e.g. '
                        'postgresql+psycopg://user@host:5432/database') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = _rdb_storage(url, heartbeat_s)
        shared = optuna.create_study(
            study_name=study.name, storage=storage, load_if_exists=True,
            direction='maximize' if study.goal == 'max' else 'minimize',
            sampler=study_lib.tpe_sampler(seed, budget))
    except ImportError as e:
        raise UserError(f'--storage={shown} needs its database driver: pip install '
                        f'"psycopg[binary]" for PostgreSQL ({e.__cause__ or e})') from e
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        raise UserError(f'cannot open the study storage {shown}: '
                        f'{getattr(e, "orig", None) or e}') from e
    for key, value in (('search', search), ('seed', seed)):
        stored = shared.user_attrs.get(key)
        if stored is None:
            shared.set_user_attr(key, value)
        elif stored != value:
            raise UserError(f'study {study.name!r} in {shown} runs with --{key}={stored}, not '
                            f'{value}: start every worker with the same flags')
    return shared, storage


def _rdb_storage(url: str, heartbeat_s: int):
    """optuna's RDBStorage with heartbeats and retries of trials whose heartbeat stopped. Workers
    that start at once on a new database race to create its tables: the losers try again."""
    import optuna
    import sqlalchemy
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats and retries are "experimental" in optuna
                warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback()
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=heartbeat_s, heartbeat_stale_trial_callback=retry,
                    grace_period=GRACE_HEARTBEATS * heartbeat_s)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == 2:
                raise
            time.sleep(0.5)


def run_shared(study, runner, search: str, budget: int, seed: int, shared,
                storage) -> None:
    """Runs trials of a shared study until none is queued or running on any worker. Trial i of the
    budget is an optuna trial with user attribute index=i (its point: grid(...)[i], sample(..., i)
    or TPE's); the database hands each queued trial to one worker, which beats its heartbeat while
    the trial runs; a trial whose heartbeat stops is failed by any worker and re-queued (optuna's
    retry callback, same index and parameters), and then runs in the same folder (resuming where
    the workdir is shared)."""
    import optuna
    state = optuna.trial.TrialState
    points = study_lib.grid(study.space) if search == 'grid' else None
    claimed = {}  # trial id (its folder) -> the optuna trial this worker runs it as
    last_beat = 0.0
    while True:
        if (ended := runner.poll()) is not None:
            _tell(shared, storage, claimed.pop(ended[0]), ended[1], study.metric)
        if time.time() - last_beat >= storage.get_heartbeat_interval():
            for frozen in claimed.values():
                storage.record_heartbeat(frozen._trial_id)
            last_beat = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(shared)
        trials = shared.get_trials(deepcopy=False)
        if requeue(shared, trials, budget, storage.get_heartbeat_stale_trial_callback()):
            continue
        frozen = claim(shared, storage) if len(runner.running) < runner.workers else None
        if frozen is None:
            if not runner.running and not any(t.state in (state.WAITING, state.RUNNING)
                                               for t in trials):
                return
            time.sleep(0.5)
            continue
        index = frozen.user_attrs['index']
        trial_id = f'{index:04d}'
        if (result := runner.result(trial_id)) is not None:  # ended, its worker died before telling
            overrides = json.loads((runner.folder(trial_id) / 'trial.json').read_text())
            storage.set_trial_user_attr(frozen._trial_id, 'overrides', overrides['overrides'])
            _tell(shared, storage, frozen, result, study.metric)
            continue
        if search == 'bayes':
            shared.sampler = study_lib.tpe_sampler(
                random.Random(f'{seed}-{index}').getrandbits(32), budget)
            overrides = study_lib.suggest(optuna.Trial(shared, frozen._trial_id), study.space)
        else:
            overrides = points[index] if points else study_lib.sample(study.space, seed, index)
        storage.set_trial_user_attr(frozen._trial_id, 'overrides', overrides)
        claimed[trial_id] = frozen
        runner.start(trial_id, overrides)


def claim(shared, storage):
    """The next queued trial for this worker to run, set running with its heartbeat started (the
    database lets one worker win each). A copy of a trial that another worker holds (two workers
    queued the same index at once) is failed and skipped. None when no queued trial is left."""
    import optuna
    state = optuna.trial.TrialState
    for frozen in shared.get_trials(deepcopy=False, states=(state.WAITING,)):
        try:
            if not storage.set_trial_state_values(frozen._trial_id, state.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        storage.record_heartbeat(frozen._trial_id)
        if not _taken(frozen, shared.get_trials(deepcopy=False)):
            return frozen
        shared.tell(frozen.number, state=state.FAIL)
    return None


def _taken(frozen, trials) -> bool:
    """Whether another trial holds `frozen`'s index: one that ended with a result, or one queued or
    running ahead of it (when two workers queued the same index at once, the first copy wins)."""
    import optuna
    active = (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
    return any(t.number != frozen.number and t.user_attrs.get('index') == frozen.user_attrs['index']
               and ('result' in t.user_attrs or (t.state in active and t.number < frozen.number))
               for t in trials)


def requeue(shared, trials, budget: int, retry) -> bool:
    """Queues every index below the budget that no trial holds (none queued, running or ended with
    a result): new ones (a new study, a larger budget) empty, lost ones as a retry of the try that
    had its parameters. Whether it queued any."""
    import optuna
    active = (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
    queued = False
    for index in range(budget):
        tries = [t for t in trials if t.user_attrs.get('index') == index]
        if any('result' in t.user_attrs or t.state in active for t in tries):
            continue
        if tries:
            retry(shared, max(tries, key=lambda t: (bool(t.params), t.number)))
        else:
            shared.enqueue_trial({}, user_attrs={'index': index})
        queued = True
    return queued


def _tell(shared, storage, frozen, result: dict, metric: str) -> None:
    """Records an ended trial's result in the shared study (the value TPE learns from if done)."""
    import optuna
    storage.set_trial_user_attr(frozen._trial_id, 'result', result)
    if result['status'] == 'done':
        shared.tell(frozen.number, result['metrics'][metric])
    else:
        shared.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
