"""The training loop: check -> data -> init or restore -> steps -> log/eval/checkpoint -> final eval.

Rerunning on the same workdir resumes from the latest checkpoint and ends bitwise identical to an
uninterrupted run; a finished run returns at once. The only host syncs in the loop are at log,
eval and checkpoint steps.
"""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from bigjax import data as data_lib
from bigjax import chat_eval, eval_harness, finetune, metrics, optim, parallel, steps, tasks
from bigjax import platform, writers
from bigjax import plan as plan_lib
from bigjax import workdir as workdir_lib
from bigjax.checkpoint import Checkpointer
from bigjax.errors import UserError
from bigjax.preemption import Preemption
from bigjax.writers import log


def run(config, workdir, *, stop_at_step: int | None = None) -> dict | None:
    """Trains as `config` says in `workdir`, resuming from its latest checkpoint.

    Returns the final eval metrics. With `stop_at_step`, training stops after that step is
    checkpointed (staged training) and returns None; so does a run stopped by SIGTERM or SIGINT
    (preemption.py), after saving the step it was on.
    Every check that can fail on user input runs before anything is compiled or written.
    """
    writers.show_log()
    plan = plan_lib.plan(config, workdir)
    workdir_lib.check_writable(plan.workdir, jax.process_index())
    harness = eval_harness.DuringTraining(plan) if config.train.eval_tasks else None
    with workdir_lib.held(plan.workdir), Preemption() as preemption, \
            Checkpointer(plan.workdir, keep=config.train.keep_checkpoints) as checkpointer, \
            platform.reuse_freed_memory() as release_memory:
        latest = checkpointer.latest_step()
        total = plan.schedule.total_steps
        if latest is not None and latest >= total:
            if _restores(plan, checkpointer, latest):
                return _already_finished(plan.workdir, latest)
            latest = checkpointer.latest_step()  # The steps after the one before are redone.
        if stop_at_step is not None and not (latest or 0) < stop_at_step <= total:
            raise ValueError(f'stop_at_step={stop_at_step} is not after the checkpoint at step '
                             f'{latest or 0} and within the {total} steps')
        return _train(plan, checkpointer, preemption, stop_at_step, harness, release_memory)


def _train(plan: plan_lib.Plan, checkpointer: Checkpointer, preemption: Preemption,
           stop_at_step: int | None, harness, release_memory) -> dict | None:
    """Init or restore, then steps with logging, eval and checkpoints; returns the final eval.
    `release_memory` is called at each log step (platform.reuse_freed_memory)."""
    config, mesh, schedule = plan.config, plan.mesh, plan.schedule
    task = plan.task()
    on_device = parallel.replicate_small(plan.dataset.train.arrays, plan.mesh,
                                         config.data.on_device_max_mb)
    if on_device is not None:
        log.info('Training data held on the devices, batched there by index '
                 '(data.on_device_max_mb=%s)', config.data.on_device_max_mb)
    train_iter = data_lib.train_iterator(plan.dataset, config.train.batch_size, config.seed,
                                         jax.process_index(), jax.process_count(),
                                         indices_only=on_device is not None)
    replicated = parallel.replicated(mesh)
    sum_names = tasks.train_sum_names(plan.dataset.kind)
    config_json = json.loads(config.to_json_best_effort())
    trainable, total = finetune.parameter_counts(plan.abstract_state.params, plan.frozen)
    log.info('Parameters: %s trainable of %s', f'{trainable:,}', f'{total:,}')
    resumed = _resume(plan, checkpointer, train_iter, config_json)
    latest = resumed[0] if resumed else None
    if resumed is None:
        loaded = finetune.load(plan.load_plan, plan.state_shardings) if plan.load_plan else {}
        state = jax.jit(lambda rng, loaded: finetune.with_loaded(nn.unbox(plan.init(rng)), loaded),
                        out_shardings=plan.state_shardings)(jax.random.PRNGKey(config.seed),
                                                            loaded)
        del loaded  # the state has its own copy: the import is not held twice for the run
        if plan.load_plan:
            log.info('%s', plan.load_plan.describe())
        window = jax.device_put(metrics.empty_window(sum_names), replicated)
    else:
        _, state, window = resumed
    train_fn = train_program(plan, task)
    learning_rate = jax.jit(optim.learning_rate_schedule(config.optim, schedule.total_steps))
    evaluate = Evaluator(plan, task, harness)

    start_step = latest or 0
    is_main = jax.process_index() == 0
    if is_main:
        workdir_lib.write_config(plan.workdir, config_json)
    writer = writers.MetricWriter(plan.workdir, enabled=is_main, start_step=start_step,
                                  config=config)
    progress = writers.Progress(start_step, schedule.total_steps, enabled=is_main)
    throughput = writers.Throughput(start_step)
    profiler = _Profiler(plan.workdir / 'profile', config.train.profile_start_step,
                         config.train.profile_steps)
    final_eval = None
    window_start = start_step - start_step % schedule.log_every  # the metric window's first batch
    in_flight = parallel.DispatchLimit()
    batches = data_lib.prefetch(train_iter, config.data.prefetch,
                                functools.partial(parallel.global_batch, mesh=mesh))
    try:
        for step in range(start_step + 1, schedule.total_steps + 1):
            profiler.before(step)
            with jax.profiler.StepTraceAnnotation('train', step_num=step):  # the profile's steps
                batch, data_state = next(batches)
                state, window, done = train_fn(state, window, batch, on_device)
            in_flight.add(done)
            profiler.after(step, state)
            if step == start_step + 1:
                jax.block_until_ready(state)
                log.info('First step (compilation included) took %.1fs',
                         throughput.first_step_done(step))
            progress.update(step)
            last = step == schedule.total_steps
            log_now = step % schedule.log_every == 0 or last
            stop = step == stop_at_step or (not last and preemption.reached(step))
            checkpoint = step % schedule.checkpoint_every == 0 or last or stop
            if log_now or checkpoint:  # Waits for the steps so far (training time).
                _stop_if_nonfinite(window, checkpointer)
            with throughput.paused():
                if log_now:
                    values = metrics.summarize(window['sums'], plan.dataset.kind)
                    values['learning_rate'] = float(learning_rate(step - 1))
                    values.update(train_iter.drawn(window_start, step))
                    window_start = step
                    values.update(throughput.rates(
                        step, config.train.batch_size, tasks.tokens_per_example(plan.dataset),
                        plan.flops_per_example, plan.peak_flops))
                    writer.write(step, 'train', values)
                    progress.report(step, 'train', values)
                    window = jax.device_put(metrics.empty_window(sum_names), replicated)
                    release_memory()
                if step % schedule.eval_every == 0 or last:
                    final_eval, details = evaluate.values(state, step)
                    writer.write(step, 'eval', final_eval)
                    if details:
                        writer.write_details(step, details)
                    progress.report(step, 'eval', final_eval)
                if checkpoint:
                    writer.flush()
                    checkpointer.save(step, state, window, data_state, config_json)
            if log_now:
                throughput.restart(step)
            if stop:
                if preemption.signal_name:
                    checkpointer.wait()
                    log.warning('Interrupted by %s: saved step %d in %s. Rerun the same '
                                'command to resume.', preemption.signal_name, step,
                                checkpointer.directory)
                return None
    finally:
        batches.close()
        profiler.close()
        progress.close()
        writer.close()
    log.info('Final eval at step %d: %s', schedule.total_steps, writers.format_values(final_eval))
    if config.report.enabled:
        from bigjax import report  # matplotlib only when a report is written
        page = report.build(plan, state, schedule.total_steps)
        log.info('Wrote %s', page)
        writer.add_figures(page.parent / report.FIGURES_DIR)  # to the W&B run, if any
    return final_eval


class _Profiler:
    """A jax.profiler trace of steps [start, start + count) into <workdir>/profile."""

    def __init__(self, directory: epath.Path, start: int, count: int):
        self.directory, self.start, self.stop = directory, start, start + count
        self.active = False

    def before(self, step: int) -> None:
        if self.start > 0 and step == self.start:
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step == self.stop - 1:
            jax.block_until_ready(state)
            self.close()
            log.info('Profiled steps %d-%d into %s', self.start, step, self.directory)

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def _resume(plan: plan_lib.Plan, checkpointer: Checkpointer, train_iter, config_json
            ) -> tuple[int, object, dict] | None:
    """(step, state, metric window) from the newest checkpoint that restores, laid out on the
    mesh, or None when there is none. One that cannot be read is moved aside (never deleted)
    and the one before it is tried; a config that does not fit them is a UserError."""
    damaged = []
    while (step := checkpointer.latest_step()) is not None:
        try:
            checkpointer.check_compatible(step, plan.abstract_state)
            changed = _changed_keys(checkpointer.saved_config(step), config_json)
            state, window, data_state = checkpointer.restore(
                step, *plan_lib.abstract_checkpoint(plan))
        except UserError:
            raise
        except Exception as e:  # Orbax and TensorStore raise many types for damaged files.
            damaged.append(_move_aside(checkpointer, step, e))
            continue
        if changed:
            log.warning('Resuming with a changed config: %s', '; '.join(changed))
        train_iter.restore(data_state)
        log.info('Resumed from the checkpoint at step %d in %s', step, checkpointer.directory)
        return step, state, window
    if damaged:
        raise _none_restores(checkpointer, damaged[0])
    return None


def _restores(plan: plan_lib.Plan, checkpointer: Checkpointer, step: int) -> bool:
    """Whether the checkpoint at `step` (a finished run's last) restores, as _resume would
    restore it: the arrays' bytes are read (no checksum says more for less). One that does not
    is moved aside; with none before it, that is the UserError _resume gives."""
    try:
        checkpointer.check_compatible(step, plan.abstract_state)
        checkpointer.restore(step, *plan_lib.abstract_checkpoint(plan))  # then dropped
    except UserError:
        raise
    except Exception as e:  # Orbax and TensorStore raise many types for damaged files.
        moved = _move_aside(checkpointer, step, e)
        if checkpointer.latest_step() is None:
            raise _none_restores(checkpointer, moved) from None
        return False
    return True


def _move_aside(checkpointer: Checkpointer, step: int, error: Exception) -> epath.Path:
    moved = checkpointer.move_aside(step)
    log.warning('The checkpoint at step %d cannot be restored (%s: %s): moved it to %s; trying '
                'the one before', step, type(error).__name__,
                str(error).splitlines()[0][:120] if str(error) else '', moved)
    return moved


def _none_restores(checkpointer: Checkpointer, moved: epath.Path) -> UserError:
    return UserError(f'no checkpoint in {checkpointer.directory} can be restored (moved to '
                     f'{moved.parent}): rerun to start again from step 0 in this workdir, or put '
                     'back a copy of a good checkpoint there')


def _changed_keys(before: dict, after: dict, prefix: str = '') -> list[str]:
    changed = []
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += _changed_keys(old, new, f'{prefix}{key}.')
        elif old != new:
            changed.append(f'{prefix}{key}: {old!r} -> {new!r}')
    return changed


def train_program(plan: plan_lib.Plan, task: tasks.Task):
    """The loop's step jitted with its shardings and donation (what --mode=compile compiles):
    (state, window, batch, on_device) -> (state, window, step number to wait on)."""
    replicated = parallel.replicated(plan.mesh)
    return jax.jit(
        functools.partial(_train_and_accumulate, model=plan.model, tx=plan.tx, task=task,
                          rules=plan.rules, mesh=plan.mesh,
                          microbatches=plan.config.train.microbatches,
                          train_sums=tasks.train_sum_names(plan.dataset.kind)),
        donate_argnums=(0, 1),
        in_shardings=(plan.state_shardings, replicated, parallel.batch_sharding(plan.mesh),
                      replicated),
        out_shardings=(plan.state_shardings, replicated, replicated))


def eval_program(plan: plan_lib.Plan, task: tasks.Task):
    """One evaluation batch's sums added to the running sums, jitted: (sums, state, batch) ->
    sums; and the step alone (its output's shapes are the sums')."""
    step = functools.partial(steps.eval_step, model=plan.model, task=task, rules=plan.rules,
                             mesh=plan.mesh)
    replicated = parallel.replicated(plan.mesh)
    return jax.jit(lambda sums, state, batch: metrics.add(sums, step(state, batch)),
                   in_shardings=(replicated, plan.state_shardings,
                                 parallel.batch_sharding(plan.mesh)),
                   out_shardings=replicated), step


def _train_and_accumulate(state, window, batch, on_device, **step_kwargs):
    """The step, its sums added to the window, and a scalar to wait on (not donated). With
    data on the devices, `batch` holds row numbers and the rows are gathered here."""
    if on_device is not None:
        batch = {name: jnp.take(array, batch['index'], axis=0)
                 for name, array in on_device.items()}
    step = state.step + 1
    state, sums = steps.train_step(state, batch, **step_kwargs)
    first_bad = (window['nonfinite_step'] < 0) & ~jnp.isfinite(sums['loss_sum'])
    return state, {'sums': metrics.add(window['sums'], sums),
                   'nonfinite_step': jnp.where(first_bad, step, window['nonfinite_step'])}, step


class Evaluator:
    """Evaluation of a state over the whole eval split (every example once): its sums, on the
    host, and the metrics and details (classifiers: confusion matrix, ROC; chat data: held-out
    prompts answered and scored; train.eval_tasks: lm-eval's scores) they give. A dataset with
    eval parts (data.mixture's sources) is evaluated part by part: the sums add up to the whole
    split's, and each part's metrics are reported too (NAME/loss, ...)."""

    def __init__(self, plan: plan_lib.Plan, task: tasks.Task, harness=None):
        self.plan, self.harness = plan, harness
        self.mesh = plan.mesh
        self.parts = plan.dataset.eval_parts or (('', plan.dataset.eval),)
        self.batch_size = plan_lib.eval_batch_size(plan.config)
        self.accumulate, self.step = eval_program(plan, task)
        self.zeros = None

    def _sums(self, state, arrays: dict) -> dict:
        in_flight = parallel.DispatchLimit()
        sums = None
        for local_batch in data_lib.eval_batches(arrays, self.batch_size,
                                                 jax.process_index(), jax.process_count()):
            batch = parallel.global_batch(local_batch, self.mesh)
            if sums is None:
                if self.zeros is None:
                    self.zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                                              jax.eval_shape(self.step, state, batch))
                sums = jax.device_put(self.zeros, parallel.replicated(self.mesh))
            sums = self.accumulate(sums, state, batch)
            in_flight.add(sums)
        return jax.device_get(sums)

    def values(self, state, step: int) -> tuple[dict, dict]:
        """(metrics, details for eval/step_<N>.json or {}) of the state at `step`."""
        part_sums = [self._sums(state, split.arrays) for _, split in self.parts]
        sums = _added(part_sums)
        values = metrics.summarize(sums, self.plan.dataset.kind)
        if len(self.parts) > 1:
            for (name, _), one in zip(self.parts, part_sums):
                values.update({f'{name}/{key}': value for key, value in metrics.summarize(
                    one, self.plan.dataset.kind).items()})
        details = {}
        if 'confusion' in sums:
            details = metrics.details(sums, self.plan.dataset.class_names)
        chat = self.plan.dataset.chat
        if chat is not None and chat.prompts:
            scores, details = chat_eval.evaluate(self.plan, state)
            values.update(scores)
        if self.harness is not None:
            values.update(self.harness(state, step))
        return values, details


def _added(sums: list[dict]) -> dict:
    return jax.tree.map(lambda *parts: sum(parts[1:], parts[0]), *sums)


def _stop_if_nonfinite(window: dict, checkpointer: Checkpointer) -> None:
    bad_step = int(jax.device_get(window['nonfinite_step']))
    if bad_step >= 0:
        checkpointer.wait()  # A save in flight is of an earlier, finite step.
        kept = checkpointer.latest_step()
        raise UserError(
            f'the training loss became NaN/Inf at step {bad_step}; stopped without saving it. '
            + (f'The last good checkpoint (step {kept}) is kept in {checkpointer.directory}. '
               if kept is not None else '')
            + 'Lower optim.learning_rate or set optim.grad_clip_norm, then rerun to resume from '
            'it, or start over in a new --workdir')


def _already_finished(workdir: epath.Path, step: int) -> dict | None:
    evals = [row for row in writers.read_metrics(workdir) if row.get('split') == 'eval']
    final = {k: v for k, v in evals[-1].items() if k not in ('step', 'split', 'time')} if evals else None
    log.info('The run in %s already finished at step %d%s. Use a new --workdir, or raise '
             'train.num_steps / train.num_epochs to train on.', workdir, step,
             f' (final eval: {writers.format_values(final)})' if final else '')
    return final

