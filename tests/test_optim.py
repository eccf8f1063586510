import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax import optim
from bigjax.config import default_config
from bigjax.errors import UserError


def optim_config(**overrides):
    config = default_config().optim
    config.update(overrides)
    return config


def test_constant_schedule_with_warmup():
    schedule = optim.learning_rate_schedule(optim_config(learning_rate=0.1, warmup_steps=10), 100)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(99)],
                               [0.0, 0.05, 0.1, 0.1], rtol=1e-6)


def test_step_schedule_decays_every_n_steps():
    schedule = optim.learning_rate_schedule(
        optim_config(learning_rate=1.0, schedule='step', step_every=30, step_factor=0.5), 100)
    np.testing.assert_allclose([schedule(0), schedule(29), schedule(30), schedule(61)],
                               [1.0, 1.0, 0.5, 0.25], rtol=1e-6)


def test_warmup_cosine_schedule_ends_at_end_ratio():
    schedule = optim.learning_rate_schedule(
        optim_config(learning_rate=1.0, schedule='cosine', warmup_steps=10, end_lr_ratio=0.1), 110)
    np.testing.assert_allclose([schedule(0), schedule(10), schedule(60), schedule(110)],
                               [0.0, 1.0, 0.55, 0.1], rtol=1e-5)


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
@pytest.mark.parametrize('extras', [{}, {'weight_decay': 1e-3, 'grad_clip_norm': 1.0}])
def test_every_optimizer_minimises_a_quadratic(name, extras):
    tx = optim.build_optimizer(optim_config(name=name, learning_rate=0.05, **extras), 200)
    params = {'w': jnp.ones((3, 2)), 'b': jnp.ones(2)}
    loss = lambda p: sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))

    def step(_, carry):
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    params, _ = jax.jit(lambda c: jax.lax.fori_loop(0, 200, step, c))((params, tx.init(params)))
    assert loss(params) < 0.01 * 8  # from 8 at the start


@pytest.mark.parametrize('penalty, expected', [({'weight_decay': 0.5}, [[-1.0, 0.5]]),
                                               ({'l1': 0.5}, [[-0.5, 0.5]])])
def test_l2_and_l1_penalties_only_touch_kernels(penalty, expected):
    """L2 adds weight_decay * w to the gradient, L1 adds l1 * sign(w); biases are left alone."""
    tx = optim.build_optimizer(optim_config(name='sgd', learning_rate=1.0, **penalty), 10)
    params = {'kernel': jnp.array([[2.0, -1.0]]), 'bias': jnp.ones(2)}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    np.testing.assert_allclose(updates['kernel'], expected)
    np.testing.assert_allclose(updates['bias'], np.zeros(2))


def test_clipping_bounds_the_update():
    tx = optim.build_optimizer(optim_config(name='sgd', learning_rate=1.0, grad_clip_norm=1.0), 10)
    params = {'w': jnp.zeros(4)}
    updates, _ = tx.update({'w': jnp.full(4, 100.0)}, tx.init(params), params)
    np.testing.assert_allclose(optax.global_norm(updates), 1.0, rtol=1e-5)


@pytest.mark.parametrize('overrides, message', [
    ({'name': 'lion'}, 'optim.name'),
    ({'schedule': 'linear'}, 'optim.schedule'),
    ({'learning_rate': 0.0}, 'optim.learning_rate'),
    ({'warmup_steps': 100}, 'optim.warmup_steps'),
    ({'schedule': 'step', 'step_every': 0}, 'optim.step_every'),
    ({'l1': -1.0}, 'optim.l1'),
])
def test_bad_optim_config_is_a_clear_error(overrides, message):
    with pytest.raises(UserError, match=message):
        optim.build_optimizer(optim_config(**overrides), 100)
