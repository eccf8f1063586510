"""The training loop: check -> data -> init or restore -> steps -> log/eval/checkpoint -> final eval.

Rerunning on the same workdir resumes from the latest checkpoint and ends bitwise identical to an
uninterrupted run; a finished run returns at once. The only host syncs in the loop are at log,
eval and checkpoint steps.
"""

import contextlib
import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
from etils import epath

from bigjax import config as config_lib
from bigjax import data as data_lib
from bigjax import metrics, models, optim, parallel, steps, writers
from bigjax.checkpoint import Checkpointer
from bigjax.errors import UserError
from bigjax.writers import log


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When things happen, in steps."""

    total_steps: int
    steps_per_epoch: int
    log_every: int
    eval_every: int
    checkpoint_every: int


def make_schedule(train_config, num_train_examples: int) -> Schedule:
    c = train_config
    if c.batch_size > num_train_examples:
        raise UserError(f'train.batch_size={c.batch_size} is larger than the '
                        f'{num_train_examples} training examples: lower it')
    steps_per_epoch = num_train_examples // c.batch_size
    total = c.num_steps if c.num_steps > 0 else round(c.num_epochs * steps_per_epoch)
    if total <= 0:
        raise UserError('train.num_steps or train.num_epochs must give at least one step')
    if c.log_every <= 0 or c.eval_every < 0 or c.checkpoint_every < 0:
        raise UserError('train.log_every must be > 0, train.eval_every and '
                        'train.checkpoint_every >= 0 (0 = once per epoch)')
    return Schedule(total, steps_per_epoch, c.log_every, c.eval_every or steps_per_epoch,
                    c.checkpoint_every or steps_per_epoch)


def run(config, workdir: str, *, stop_at_step: int | None = None) -> dict | None:
    """Trains as `config` says in `workdir`, resuming from its latest checkpoint.

    Returns the final eval metrics. With `stop_at_step`, training stops after that step is
    checkpointed (staged training, or a stand-in for preemption) and returns None.
    Every check that can fail on user input runs before anything is compiled or written.
    """
    writers.show_log()
    config_lib.check(config)
    mesh = parallel.make_mesh(config.mesh)
    parallel.check_batch_size('train.batch_size', config.train.batch_size, mesh)
    parallel.check_batch_size('train.eval_batch_size', _eval_batch_size(config), mesh)
    workdir = epath.Path(workdir)
    _check_writable(workdir)
    dataset = data_lib.open_dataset(config.data)
    schedule = make_schedule(config.train, len(dataset.train))
    model = models.build_model(config.model, dataset.num_classes)
    tx = optim.build_optimizer(config.optim, schedule.total_steps)

    with Checkpointer(workdir, keep=config.train.keep_checkpoints) as checkpointer:
        latest = checkpointer.latest_step()
        if latest is not None and latest >= schedule.total_steps:
            return _already_finished(workdir, latest)
        if stop_at_step is not None and not (latest or 0) < stop_at_step <= schedule.total_steps:
            raise ValueError(f'stop_at_step={stop_at_step} is not after the checkpoint at step '
                             f'{latest or 0} and within the {schedule.total_steps} steps')
        return _train(config, workdir, mesh, dataset, schedule, model, tx, checkpointer, latest,
                      stop_at_step)


def _train(config, workdir, mesh, dataset, schedule, model, tx, checkpointer, latest,
           stop_at_step):
    """Init or restore, then steps with logging, eval and checkpoints; returns the final eval."""
    stats = data_lib.normalization_stats(dataset.train.arrays['image'], dataset.pixel_max,
                                         config.data.normalize)
    prepare = functools.partial(_prepare, stats=stats)
    train_iter = data_lib.ArrayTrainIterator(dataset.train.arrays, config.train.batch_size,
                                             config.seed, jax.process_index(),
                                             jax.process_count())
    replicated = parallel.replicated(mesh)
    state, window = _init_or_restore(config, dataset, model, tx, replicated, checkpointer,
                                     latest, train_iter)
    state_sharding = jax.tree.map(lambda a: a.sharding, state)
    train_fn = jax.jit(
        functools.partial(_train_and_accumulate, model=model, tx=tx, prepare=prepare),
        donate_argnums=(0, 1), out_shardings=(state_sharding, replicated))
    eval_fn = jax.jit(functools.partial(_eval_and_accumulate, model=model, prepare=prepare),
                      donate_argnums=(0,), out_shardings=replicated)
    evaluate = functools.partial(_evaluate, eval_fn=eval_fn, arrays=dataset.eval.arrays,
                                 batch_size=_eval_batch_size(config), mesh=mesh)
    lr_schedule = optim.learning_rate_schedule(config.optim, schedule.total_steps)

    start_step = latest or 0
    is_main = jax.process_index() == 0
    config_json = json.loads(config.to_json_best_effort())
    if is_main:
        _write_atomically(workdir / 'config.json', json.dumps(config_json, indent=2) + '\n')
    writer = writers.MetricWriter(workdir, enabled=is_main, start_step=start_step)
    progress = writers.Progress(start_step, schedule.total_steps, enabled=is_main)
    timer = _TrainTimer(start_step)
    final_eval = None
    try:
        for step in range(start_step + 1, schedule.total_steps + 1):
            batch = parallel.global_batch(next(train_iter), mesh)
            state, window = train_fn(state, window, batch)
            if step == start_step + 1:
                jax.block_until_ready(state)  # Keep compilation out of the throughput.
                log.info('First step (compilation included) took %.1fs', timer.restart(step))
            progress.update(step)
            last = step == schedule.total_steps
            log_now = step % schedule.log_every == 0 or last
            checkpoint = step % schedule.checkpoint_every == 0 or last or step == stop_at_step
            with timer.paused():
                if log_now or checkpoint:
                    _stop_if_nonfinite(window, checkpointer)
                if log_now:
                    values = metrics.summarize(window['sums'])
                    values['learning_rate'] = float(lr_schedule(step - 1))
                    values.update(timer.rates(step, config.train.batch_size))
                    writer.write(step, 'train', values)
                    progress.report(step, 'train', values)
                    window = jax.device_put(_empty_window(), replicated)
                if step % schedule.eval_every == 0 or last:
                    final_eval = evaluate(state)
                    writer.write(step, 'eval', final_eval)
                    progress.report(step, 'eval', final_eval)
                if checkpoint:
                    checkpointer.save(step, state, window, train_iter.state(), config_json)
            if log_now:
                timer.restart(step)
            if step == stop_at_step:
                return None
    finally:
        progress.close()
        writer.close()
    log.info('Final eval at step %d: %s', schedule.total_steps, writers.format_values(final_eval))
    return final_eval


def _init_or_restore(config, dataset, model, tx, replicated, checkpointer, latest, train_iter):
    """(state, metric window) born on the mesh: fresh, or from the latest checkpoint."""
    sample_input = jnp.zeros((1, *dataset.image_shape), jnp.float32)
    init = functools.partial(steps.init_state, model=model, tx=tx, sample_input=sample_input)
    rng = jax.random.PRNGKey(config.seed)
    abstract_state = jax.eval_shape(init, rng)
    if latest is None:
        state = jax.jit(init, out_shardings=jax.tree.map(lambda _: replicated, abstract_state))(rng)
        return state, jax.device_put(_empty_window(), replicated)
    checkpointer.check_compatible(latest, abstract_state)
    state, window, data_state = checkpointer.restore(
        latest, _with_sharding(abstract_state, replicated),
        _with_sharding(jax.eval_shape(_empty_window), replicated))
    train_iter.restore(data_state)
    log.info('Resumed from the checkpoint at step %d in %s', latest, checkpointer.directory)
    return state, window


def _eval_batch_size(config) -> int:
    return config.train.eval_batch_size or config.train.batch_size


class _TrainTimer:
    """Training throughput between log steps, leaving out time spent on eval and checkpoints."""

    def __init__(self, step: int):
        self.restart(step)

    def restart(self, step: int) -> float:
        """Starts a new window after `step`; returns the seconds the previous one took."""
        now = time.monotonic()
        seconds = now - getattr(self, 'start', now)
        self.start, self.first_step, self.paused_seconds = now, step, 0.0
        return seconds

    @contextlib.contextmanager
    def paused(self):
        began = time.monotonic()
        yield
        self.paused_seconds += time.monotonic() - began

    def rates(self, step: int, batch_size: int) -> dict:
        seconds = time.monotonic() - self.start - self.paused_seconds
        if step <= self.first_step or seconds <= 0:
            return {}
        steps_per_sec = (step - self.first_step) / seconds
        return {'steps_per_sec': steps_per_sec, 'examples_per_sec': steps_per_sec * batch_size}


def _prepare(batch: dict, rng: jax.Array, train: bool, *, stats: dict) -> jax.Array:
    del rng, train  # Augmentation will use them.
    return data_lib.normalize(batch['image'], stats)


def _empty_window() -> dict:
    """Metric sums since the last log step, and the first step whose loss was not finite."""
    return {'sums': metrics.zero_sums(), 'nonfinite_step': jnp.full((), -1, jnp.int32)}


def _train_and_accumulate(state, window, batch, *, model, tx, prepare):
    step = state.step + 1
    state, sums = steps.train_step(state, batch, model=model, tx=tx, prepare=prepare)
    first_bad = (window['nonfinite_step'] < 0) & ~jnp.isfinite(sums['loss_sum'])
    return state, {'sums': metrics.add(window['sums'], sums),
                   'nonfinite_step': jnp.where(first_bad, step, window['nonfinite_step'])}


def _eval_and_accumulate(sums, state, batch, *, model, prepare):
    return metrics.add(sums, steps.eval_step(state, batch, model=model, prepare=prepare))


def _evaluate(state, *, eval_fn, arrays, batch_size, mesh) -> dict:
    sums = None
    for local_batch in data_lib.eval_batches(arrays, batch_size, jax.process_index(),
                                             jax.process_count()):
        batch = parallel.global_batch(local_batch, mesh)
        if sums is None:
            sums = jax.device_put(metrics.zero_sums(), parallel.replicated(mesh))
        sums = eval_fn(sums, state, batch)
    return metrics.summarize(sums)


def _stop_if_nonfinite(window: dict, checkpointer: Checkpointer) -> None:
    bad_step = int(jax.device_get(window['nonfinite_step']))
    if bad_step >= 0:
        checkpointer.wait()  # A save in flight is of an earlier, finite step.
        kept = checkpointer.latest_step()
        raise UserError(
            f'the training loss became NaN/Inf at step {bad_step}; stopped without saving it. '
            + (f'The last good checkpoint (step {kept}) is kept in {checkpointer.directory}. '
               if kept is not None else '')
            + 'Lower optim.learning_rate or set optim.grad_clip_norm')


def _already_finished(workdir: epath.Path, step: int) -> dict | None:
    evals = [row for row in writers.read_metrics(workdir) if row.get('split') == 'eval']
    final = {k: v for k, v in evals[-1].items() if k not in ('step', 'split')} if evals else None
    log.info('The run in %s already finished at step %d%s. Use a new --workdir, or raise '
             'train.num_steps / train.num_epochs to train on.', workdir, step,
             f' (final eval: {writers.format_values(final)})' if final else '')
    return final


def _with_sharding(abstract_tree, sharding):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        abstract_tree)


def _check_writable(workdir: epath.Path) -> None:
    probe = workdir / f'.write_probe.{jax.process_index()}'
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_text('ok')
        probe.unlink()
    except OSError as e:
        raise UserError(f'the workdir {workdir} cannot be written ({e.strerror or e}): '
                        'choose another --workdir') from None


def _write_atomically(path: epath.Path, text: str) -> None:
    tmp = path.parent / (path.name + '.tmp')
    tmp.write_text(text)
    tmp.replace(path)
