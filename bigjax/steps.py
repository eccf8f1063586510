"""Pure training and evaluation steps: arrays in, arrays out, no I/O and no globals.

`prepare(batch, rng, train)` turns a raw batch into the model's input on device
(normalisation today; augmentation plugs in here), so the host only ships uint8 pixels.
"""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import optax

from bigjax import metrics

Prepare = Callable[[dict, jax.Array, bool], jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; saved whole in checkpoints."""

    step: jax.Array  # int32 scalar: steps taken
    params: Any
    model_state: Any  # mutable collections other than params (e.g. batch_stats); {} if none
    opt_state: Any
    rng: jax.Array  # base PRNG key (uint32[2]); step s uses fold_in(rng, s)


def init_state(rng: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
               sample_input: jax.Array) -> TrainState:
    params_rng, state_rng = jax.random.split(rng)
    variables = dict(model.init({'params': params_rng}, sample_input, train=False))
    params = variables.pop('params')
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                      model_state=variables, opt_state=tx.init(params), rng=state_rng)


def _apply(model, state, params, inputs, *, train: bool, rng=None):
    """Logits and updated model_state, whether or not the model has mutable collections."""
    variables = {'params': params, **state.model_state}
    rngs = {'dropout': rng} if train else {}
    if train and state.model_state:
        return model.apply(variables, inputs, train=True, rngs=rngs,
                           mutable=list(state.model_state))
    return model.apply(variables, inputs, train=train, rngs=rngs), state.model_state


def train_step(state: TrainState, batch: dict, *, model: nn.Module,
               tx: optax.GradientTransformation, prepare: Prepare) -> tuple[TrainState, dict]:
    """One optimizer step on a classification batch; returns the new state and metric sums."""
    rng = jax.random.fold_in(state.rng, state.step)
    prepare_rng, dropout_rng = jax.random.split(rng)
    inputs = prepare(batch, prepare_rng, True)

    def loss_fn(params):
        logits, model_state = _apply(model, state, params, inputs, train=True, rng=dropout_rng)
        sums = metrics.classification_sums(logits, batch['label'])
        return sums['loss_sum'] / sums['count'], (sums, model_state)

    (_, (sums, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              model_state=model_state, opt_state=opt_state)
    return new_state, sums


def eval_step(state: TrainState, batch: dict, *, model: nn.Module, prepare: Prepare) -> dict:
    """Metric sums over the rows of `batch` whose `mask` is set."""
    inputs = prepare(batch, state.rng, False)
    logits, _ = _apply(model, state, state.params, inputs, train=False)
    return metrics.classification_sums(logits, batch['label'], batch['mask'])
