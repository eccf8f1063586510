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

from bigjax import metrics, parallel
from bigjax.tasks import Task


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; saved whole in checkpoints."""

    step: jax.Array  # int32 scalar: steps taken
    params: Any
    model_state: Any  # mutable collections other than params (e.g. batch_stats); {} if none
    opt_state: Any
    rng: jax.Array  # base PRNG key (uint32[2]); step s uses fold_in(rng, s)


def init_state(rng: jax.Array, *, model: nn.Module, tx: optax.GradientTransformation,
               sample_input: jax.Array, rules=(), mesh=None) -> TrainState:
    """A fresh state whose parameters (and their optimizer state) keep their logical-axis boxes:
    nn.get_partition_spec reads the boxes; nn.unbox drops them."""
    params_rng, state_rng = jax.random.split(rng)
    with parallel.layout(mesh, rules):
        variables = dict(model.init({'params': params_rng}, sample_input, train=False))
    params = variables.pop('params')
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                      opt_state=tx.init(params), rng=state_rng)


def _apply(model, state, params, inputs, *, train: bool, rng=None, **kwargs):
    """Model output and updated model_state, whether or not the model has mutable collections."""
    variables = {'params': params, **state.model_state}
    rngs = {'dropout': rng} if train else {}
    if train and state.model_state:
        return model.apply(variables, inputs, train=True, rngs=rngs,
                           mutable=list(state.model_state), **kwargs)
    return model.apply(variables, inputs, train=train, rngs=rngs, **kwargs), state.model_state


def split_microbatches(batch: dict, count: int) -> dict:
    """(B, ...) -> (count, B // count, ...); microbatch i holds rows i, i + count, ... so each
    device keeps an equal share of every microbatch."""
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(-1, count, *x.shape[1:]), 0, 1), batch)


def train_step(state: TrainState, batch: dict, *, model: nn.Module,
               tx: optax.GradientTransformation, task: Task, rules=(), mesh=None,
               microbatches: int = 1) -> tuple[TrainState, dict]:
    """One optimizer step; gradients of `microbatches` slices of the batch are accumulated
    first, which equals one step on the whole batch. Returns the new state and metric sums."""
    rng = jax.random.fold_in(state.rng, state.step)

    def summed_loss(params, model_state, micro_batch, micro_rng):
        prepare_rng, dropout_rng = jax.random.split(micro_rng)
        inputs = task.inputs(micro_batch, prepare_rng, True)
        with parallel.layout(mesh, rules):
            outputs, model_state = _apply(model, state.replace(model_state=model_state), params,
                                          inputs, train=True, rng=dropout_rng,
                                          **task.call_kwargs(micro_batch))
        sums = metrics.train_sums(task.sums(outputs, micro_batch))
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
            accumulate, (zero_grads, metrics.zero_sums(), state.model_state),
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
        outputs, _ = _apply(model, state, state.params, inputs, train=False,
                            **task.call_kwargs(batch))
    return task.eval_sums(outputs, batch)
