"""Everything decided about a run before anything is written or compiled: `plan(config)`.

A Plan holds the mesh, the model, the optimizer, the abstract train state with its shardings,
the dataset and the schedule. Training, evaluation, the report, sampling, export and
ahead-of-time compilation (bigjax/aot.py) all start from one; `load_state` adds a run's own
latest checkpoint laid out on the mesh.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
from etils import epath

from bigjax import config as config_lib
from bigjax import data as data_lib
from bigjax import finetune, metrics, models, optim, parallel, perf, platform, preference, steps
from bigjax import tasks
from bigjax import workdir as workdir_lib
from bigjax.checkpoint import Checkpointer
from bigjax.data import augment
from bigjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When things happen, in steps."""

    total_steps: int
    steps_per_epoch: int
    log_every: int
    eval_every: int
    checkpoint_every: int


def make_schedule(train_config, num_train_examples: int | None) -> Schedule:
    """The schedule of `train_config` over `num_train_examples`; None (the data is not read:
    ahead-of-time compilation) counts train.num_steps, or one step per epoch."""
    c = train_config
    if num_train_examples is not None and c.batch_size > num_train_examples:
        raise UserError(f'train.batch_size={c.batch_size} is larger than the '
                        f'{num_train_examples} training examples: lower it')
    steps_per_epoch = 1 if num_train_examples is None else num_train_examples // c.batch_size
    total = c.num_steps if c.num_steps > 0 else round(c.num_epochs * steps_per_epoch)
    if c.num_steps < 0 or total <= 0:
        raise UserError(f'train.num_steps={c.num_steps} (0 = use num_epochs) and '
                        f'train.num_epochs={c.num_epochs} must give at least one step')
    if c.log_every <= 0 or c.eval_every < 0 or c.checkpoint_every < 0 or c.keep_checkpoints < 1:
        raise UserError('train.log_every and train.keep_checkpoints must be >= 1, '
                        'train.eval_every and train.checkpoint_every >= 0 (0 = once per epoch)')
    return Schedule(total, steps_per_epoch, c.log_every, c.eval_every or steps_per_epoch,
                    c.checkpoint_every or steps_per_epoch)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A run, decided: what `plan` returns."""

    config: Any
    workdir: epath.Path | None
    mesh: jax.sharding.Mesh
    rules: tuple  # logical axis -> mesh axes
    dataset: data_lib.Dataset
    schedule: Schedule
    model: Any
    tx: Any
    init: Any  # rng -> TrainState with logical-axis boxes (nn.unbox before use)
    abstract_state: Any  # unboxed shapes and dtypes
    state_shardings: Any  # same tree as abstract_state
    flops_per_example: float  # training FLOPs, 0 where there is no formula (the CNN)
    peak_flops: float  # of all devices; 0 without a FLOPs formula
    frozen: Any  # parameter name -> not trained
    load_plan: Any  # finetune.LoadPlan of config.init_from, or None

    def task(self) -> tasks.Task:
        """The task of this run's data (for images this reads the training split: its
        normalisation statistics)."""
        return tasks.make_task(self.dataset, self.config)


def plan(config, workdir=None, *, devices=None, read_data: bool = True,
         init_from: bool = True) -> Plan:
    """Checks the config, data, model and optimizer, and traces the model (nothing compiled).

    devices: the mesh's devices (default: all; a TPU topology's to compile for it without
    one). read_data=False describes the data from the config and its metadata alone
    (data.describe). init_from=False leaves config.init_from alone (a run restoring its own
    checkpoint does not need it).
    """
    config_lib.check(config)
    platform.use_compilation_cache(config.compilation_cache_dir)
    devices = jax.devices() if devices is None else list(devices)
    models.prepare(config.model, devices[0].platform)
    mesh = parallel.make_mesh(config.mesh, devices)
    rules = parallel.sharding_rules(config)
    microbatches = config.train.microbatches
    if microbatches < 1:
        raise UserError(f'train.microbatches={microbatches} must be >= 1')
    parallel.check_batch_size('train.batch_size', config.train.batch_size, mesh, microbatches)
    parallel.check_batch_size('train.eval_batch_size', eval_batch_size(config), mesh)
    data_lib.check_normalization(config.data.normalize)
    augment.check(config.data.augment)
    if workdir is not None:
        workdir = workdir_lib.resolve(workdir)
    dataset = data_lib.open_dataset(config.data) if read_data else data_lib.describe(config.data)
    reference_copy = preference.needs_copy(config, dataset.kind)
    schedule = make_schedule(config.train, len(dataset.train) if read_data else None)
    if augment.is_enabled(config.data.augment) and dataset.kind != 'image':
        raise UserError(f'data.augment transforms images and {config.data.name!r} is '
                        f'{dataset.kind} data: leave data.augment at its defaults')
    _check_logits_chunk(config, dataset)
    model = models.build_model(config.model, dataset)
    lora = finetune.uses_lora(config)
    frozen = finetune.frozen_predicate(config) if config.frozen or lora else None
    tx = optim.build_optimizer(config.optim, schedule.total_steps, frozen)
    init = functools.partial(steps.init_state, model=model, tx=tx,
                             sample_input=tasks.sample_input(dataset), rules=rules, mesh=mesh,
                             reference_copy=reference_copy)
    boxed_state = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
    abstract_state = nn.unbox(boxed_state)
    finetune.check_patterns(config, abstract_state.params)
    load_plan = None
    if init_from and config.init_from.path:
        load_plan = finetune.plan_load(config.init_from, abstract_state)
        finetune.check_tokenizer(load_plan, config.data)
        load_plan = finetune.with_label_words(load_plan, config.init_from, dataset)
        preference.check_load(config, dataset.kind, load_plan)
    flops_per_example, peak = 0.0, 0.0
    if isinstance(model, models.TRANSFORMERS):  # MFU has a formula.
        length = model.sequence_length(tasks.sample_input(dataset).shape)
        flops_per_example = tasks.sequences_per_example(dataset.kind) * length * (
            perf.train_flops_per_token(abstract_state.params, model.cfg, length,
                                       causal=model.causal))
        peak = perf.peak_flops(config.train.peak_flops, devices)
    state_shardings = parallel.state_shardings(boxed_state, mesh, rules)
    parallel.check_divisible(abstract_state.params, state_shardings.params)
    return Plan(config, workdir, mesh, rules, dataset, schedule, model, tx, init,
                abstract_state, state_shardings, flops_per_example, peak,
                frozen or (lambda name: False), load_plan)


def load_state(config, workdir) -> tuple[Plan, Any, int]:
    """(plan, train state, step) of the latest checkpoint in `workdir`, laid out on the mesh:
    for evaluating, sampling, reporting and exporting a trained model. Its init_from is not
    read again (the pretrained run may be gone). Nothing is written; a workdir without a
    checkpoint is refused before the data are read."""
    path = workdir_lib.resolve(workdir)
    with Checkpointer(path, keep=config.train.keep_checkpoints, read_only=True) as checkpointer:
        step = checkpointer.latest_step()
        if step is None:
            raise UserError(f'{path} holds no checkpoint: train there first')
        run = plan(config, path, init_from=False)
        try:
            checkpointer.check_compatible(step, run.abstract_state)
            state, _, _ = checkpointer.restore(step, *abstract_checkpoint(run))
        except UserError:
            raise
        except Exception as e:  # Orbax and TensorStore raise many types for damaged files.
            raise UserError(f'the checkpoint at step {step} in {checkpointer.directory} cannot '
                            f'be restored ({type(e).__name__}): rerun training on this workdir, '
                            'which moves it aside and resumes from the one before') from None
    return run, state, step


def abstract_checkpoint(run: Plan) -> tuple[Any, Any]:
    """(state, metric window) as abstract arrays laid out on the mesh: what a checkpoint of
    `run` restores into."""
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         run.abstract_state, run.state_shardings)
    replicated = parallel.replicated(run.mesh)
    window = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                          jax.eval_shape(lambda: metrics.empty_window(
                              tasks.train_sum_names(run.dataset.kind))))
    return state, window


def eval_batch_size(config) -> int:
    return config.train.eval_batch_size or config.train.batch_size


def _check_logits_chunk(config, dataset) -> None:
    chunk = config.train.logits_chunk
    if chunk and (dataset.kind not in data_lib.LM_KINDS or chunk < 0 or dataset.seq_len % chunk):
        raise UserError(f'train.logits_chunk={chunk} is for language models and must divide '
                        f'data.text.seq_len={dataset.seq_len} (0 = off)')
