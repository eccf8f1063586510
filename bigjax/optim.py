"""optax optimizer and learning-rate schedule from the `optim` section of a config.

Weight decay touches only kernels (parameters with 2+ dimensions), never biases or norm scales.
For sgd/momentum/adam it is L2 regularisation (decay * param added to the gradient); for adamw
it is decoupled decay.
"""

import jax
import optax

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


def build_optimizer(optim_config, total_steps: int) -> optax.GradientTransformation:
    """clip (optional) -> L2 decay (optional, not adamw) -> optimizer with its schedule."""
    c = optim_config
    schedule = learning_rate_schedule(c, total_steps)
    if c.name == 'sgd':
        optimizer = optax.sgd(schedule)
    elif c.name == 'momentum':
        optimizer = optax.sgd(schedule, momentum=c.momentum, nesterov=c.nesterov)
    elif c.name == 'adam':
        optimizer = optax.adam(schedule, b1=c.b1, b2=c.b2, eps=c.eps)
    elif c.name == 'adamw':
        optimizer = optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps,
                                weight_decay=c.weight_decay, mask=kernels_only)
    else:
        raise UserError(f'optim.name={c.name!r} is not one of {OPTIMIZERS}')
    if c.weight_decay < 0 or c.grad_clip_norm < 0:
        raise UserError('optim.weight_decay and optim.grad_clip_norm must be >= 0')
    parts = []
    if c.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(c.grad_clip_norm))
    if c.weight_decay > 0 and c.name != 'adamw':
        parts.append(optax.add_decayed_weights(c.weight_decay, mask=kernels_only))
    return optax.chain(*parts, optimizer)
