"""optax optimizer and learning-rate schedule from the `optim` section of a config.

Weight decay touches only kernels (parameters with 2+ dimensions), never biases or norm scales.
For sgd/momentum/adam it is L2 regularisation (decay * param added to the gradient); for adamw
it is decoupled decay. Frozen parameters (a predicate on their '/'-joined names) get zero
updates and no optimizer state; `lr_multipliers` scale the rate of the parameters they match.
"""

import re
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bigjax import pytree
from bigjax.errors import UserError

OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw')
SCHEDULES = ('constant', 'step', 'cosine')


def learning_rate_schedule(optim_config, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 over `warmup_steps`, then the configured schedule."""
    c = optim_config
    if c.learning_rate <= 0:
        raise UserError(f'optim.learning_rate={c.learning_rate} must be > 0')
    if not 0 <= c.warmup_steps < max(total_steps, 1):
        raise UserError(f'optim.warmup_steps={c.warmup_steps} must be >= 0 and below the '
                        f'{total_steps} training steps')
    decay_steps = max(total_steps - c.warmup_steps, 1)
    if c.schedule == 'constant':
        main = optax.constant_schedule(c.learning_rate)
    elif c.schedule == 'step':
        if c.step_every <= 0:
            raise UserError(f'optim.step_every={c.step_every} must be > 0')
        main = optax.exponential_decay(c.learning_rate, transition_steps=c.step_every,
                                       decay_rate=c.step_factor, staircase=True)
    elif c.schedule == 'cosine':
        main = optax.cosine_decay_schedule(c.learning_rate, decay_steps, alpha=c.end_lr_ratio)
    else:
        raise UserError(f'optim.schedule={c.schedule!r} is not one of {SCHEDULES}')
    if c.warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps)
    return optax.join_schedules([warmup, main], [c.warmup_steps])


def kernels_only(params):
    """Weight-decay mask: True for parameters with two or more dimensions."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _by_name(fn: Callable[[str, object], object]):
    """A function of a params tree mapping each array to fn(name, array); a parameter still in
    its logical-axis box (as at init) counts as one leaf, named without the box."""
    def unboxed(leaf):
        return leaf.value if isinstance(leaf, nn.meta.AxisMetadata) else leaf
    return lambda params: jax.tree_util.tree_map_with_path(
        lambda path, leaf: fn(pytree.path_name(path), unboxed(leaf)), params,
        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def _optimizer(c, schedule) -> optax.GradientTransformation:
    if c.name == 'sgd':
        return optax.sgd(schedule)
    if c.name == 'momentum':
        return optax.sgd(schedule, momentum=c.momentum, nesterov=c.nesterov)
    if c.name == 'adam':
        return optax.adam(schedule, b1=c.b1, b2=c.b2, eps=c.eps)
    if c.name == 'adamw':
        return optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                           mask=kernels_only)
    raise UserError(f'optim.name={c.name!r} is not one of {OPTIMIZERS}')


def build_optimizer(optim_config, total_steps: int,
                    frozen: Callable[[str], bool] | None = None) -> optax.GradientTransformation:
    """[zero frozen grads] -> clip (optional) -> L2 decay (optional, not adamw) -> L1 (optional)
    -> optimizer with
    its schedule, per learning-rate group (frozen ones: none, so no state)."""
    c = optim_config
    schedule = learning_rate_schedule(c, total_steps)
    optimizer = _optimizer(c, schedule)
    if c.weight_decay < 0 or c.grad_clip_norm < 0 or c.l1 < 0:
        raise UserError('optim.weight_decay, optim.l1 and optim.grad_clip_norm must be >= 0')
    multipliers = [(re.compile(pattern), factor) for pattern, factor in c.lr_multipliers]
    parts = []
    decay_mask = kernels_only
    if frozen is not None:
        parts.append(optax.masked(optax.set_to_zero(), _by_name(lambda n, _: frozen(n))))
        decay_mask = _by_name(lambda n, p: p.ndim > 1 and not frozen(n))
    if c.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(c.grad_clip_norm))
    if c.weight_decay > 0 and c.name != 'adamw':
        parts.append(optax.add_decayed_weights(c.weight_decay, mask=decay_mask))
    if c.l1 > 0:
        parts.append(optax.masked(optax.stateless(
            lambda updates, params: jax.tree.map(lambda u, p: u + c.l1 * jnp.sign(p), updates,
                                                 params)), decay_mask))
    if frozen is None and not multipliers:
        return optax.chain(*parts, optimizer)

    def label(name: str, _) -> str:
        if frozen is not None and frozen(name):
            return 'frozen'
        return next((f'x{factor}' for pattern, factor in multipliers
                     if pattern.fullmatch(name)), 'x1')

    groups = {'frozen': optax.set_to_zero(), 'x1': optimizer}
    for _, factor in multipliers:
        groups[f'x{factor}'] = _optimizer(c, lambda step, f=factor: schedule(step) * f)
    return optax.chain(*parts, optax.multi_transform(groups, _by_name(label)))
