"""Pure training and evaluation steps: arrays in, arrays out, no I/O and no globals.

The task (bigjax/tasks.py) turns a raw batch into the model's input on device and the model's
output into metric sums. Models are traced under the logical sharding rules and the mesh
(parallel.layout), so their activation constraints map onto it.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bigjax import finetune, metrics, parallel
from bigjax.tasks import Task


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; saved whole in checkpoints."""

    step: jax.Array  # int32 scalar: steps taken
    params: Any
    model_state: Any  # mutable collections other than params (e.g. batch_stats), and a frozen
    # copy of the starting parameters where the task's reference needs one
    # (finetune.REFERENCE); {} if none
    opt_state: Any
    rng: jax.Array  # base PRNG key (uint32[2]); step s uses fold_in(rng, s)


def init_state(rng: jax.Array, *, model: nn.Module, tx: optax.GradientTransformation,
               sample_input: jax.Array, rules=(), mesh=None, reference_copy: bool = False
               ) -> TrainState:
    """A fresh state whose parameters (and their optimizer state) keep their logical-axis boxes:
    nn.get_partition_spec reads the boxes; nn.unbox drops them. reference_copy: keep a frozen
    copy of the parameters too (finetune.with_loaded makes it the loaded ones)."""
    params_rng, state_rng = jax.random.split(rng)
    with parallel.layout(mesh, rules):
        variables = dict(model.init({'params': params_rng}, sample_input, train=False))
    params = variables.pop('params')
    if reference_copy:
        variables[finetune.REFERENCE] = params
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                      opt_state=tx.init(params), rng=state_rng)


def _apply(model, state, params, inputs, *, train: bool, rng=None, **kwargs):
    """Model output and updated model_state, whether or not the model has mutable collections."""
    collections = {k: v for k, v in state.model_state.items() if k != finetune.REFERENCE}
    variables = {'params': params, **collections}
    rngs = {'dropout': rng} if train else {}
    if train and collections:
        outputs, updated = model.apply(variables, inputs, train=True, rngs=rngs,
                                       mutable=list(collections), **kwargs)
        return outputs, {**state.model_state, **updated}
    return model.apply(variables, inputs, train=train, rngs=rngs, **kwargs), state.model_state


def _outputs(task: Task, model, state, params, inputs, batch, *, train: bool, rng=None):
    """The model's output on `inputs` (with the task's reference model's beside it, where the
    task has one: never differentiated) and the updated model_state."""
    kwargs = task.call_kwargs(batch)
    outputs, model_state = _apply(model, state, params, inputs, train=train, rng=rng, **kwargs)
    if task.reference is not None:
        reference_params = jax.lax.stop_gradient(task.reference(params, state.model_state))
        reference, _ = _apply(model, state, reference_params, inputs, train=False, **kwargs)
        outputs = (outputs, jax.tree.map(  # arrays only: static values (a soft cap) stay so
            lambda x: jax.lax.stop_gradient(x) if isinstance(x, jax.Array) else x, reference))
    return outputs, model_state


def split_microbatches(batch: dict, count: int) -> dict:
    """(B, ...) -> (count, B // count, ...); microbatch i holds rows i, i + count, ... so each
    device keeps an equal share of every microbatch."""
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(-1, count, *x.shape[1:]), 0, 1), batch)


def train_step(state: TrainState, batch: dict, *, model: nn.Module,
               tx: optax.GradientTransformation, task: Task, rules=(), mesh=None,
               microbatches: int = 1, train_sums: tuple = metrics.TRAIN_SUMS
               ) -> tuple[TrainState, dict]:
    """One optimizer step; gradients of `microbatches` slices of the batch are accumulated
    first, which equals one step on the whole batch. Returns the new state and the metric sums
    named `train_sums` (tasks.train_sum_names)."""
    rng = jax.random.fold_in(state.rng, state.step)

    def summed_loss(params, model_state, micro_batch, micro_rng):
        prepare_rng, dropout_rng = jax.random.split(micro_rng)
        inputs = task.inputs(micro_batch, prepare_rng, True)
        with parallel.layout(mesh, rules):
            outputs, model_state = _outputs(task, model, state.replace(model_state=model_state),
                                            params, inputs, micro_batch, train=True,
                                            rng=dropout_rng)
        sums = metrics.train_sums(task.sums(outputs, micro_batch), train_sums)
        return sums['loss_sum'], (sums, model_state)

    grad_fn = jax.grad(summed_loss, has_aux=True)
    if microbatches == 1:
        grads, (sums, model_state) = grad_fn(state.params, state.model_state, batch, rng)
    else:
        def accumulate(carry, xs):
            grads, sums, model_state = carry
            index, micro_batch = xs
            micro_grads, (micro_sums, model_state) = grad_fn(
                state.params, model_state, micro_batch, jax.random.fold_in(rng, index))
            return (jax.tree.map(jnp.add, grads, micro_grads), metrics.add(sums, micro_sums),
                    model_state), None

        zero_grads = jax.tree.map(jnp.zeros_like, state.params)
        (grads, sums, model_state), _ = jax.lax.scan(
            accumulate, (zero_grads, metrics.zero_sums(train_sums), state.model_state),
            (jnp.arange(microbatches), split_microbatches(batch, microbatches)))
    grads = jax.tree.map(lambda g: g / jnp.maximum(sums['count'], 1.0), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              model_state=model_state, opt_state=opt_state)
    return new_state, sums


def eval_step(state: TrainState, batch: dict, *, model: nn.Module, task: Task, rules=(),
              mesh=None) -> dict:
    """Evaluation sums over the rows of `batch` whose `mask` is set."""
    inputs = task.inputs(batch, state.rng, False)
    with parallel.layout(mesh, rules):
        outputs, _ = _outputs(task, model, state, state.params, inputs, batch, train=False)
    return task.eval_sums(outputs, batch)
