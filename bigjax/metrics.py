"""Metrics as sums accumulated on device (sharding-friendly), turned into values on the host."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def classification_sums(logits_BC: jax.Array, labels_B: jax.Array,
                        mask_B: jax.Array | None = None) -> dict[str, jax.Array]:
    """Summed cross-entropy, correct predictions and example count over the real rows."""
    weight_B = jnp.ones(labels_B.shape, jnp.float32) if mask_B is None else mask_B.astype(jnp.float32)
    loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BC.astype(jnp.float32), labels_B)
    correct_B = (jnp.argmax(logits_BC, -1) == labels_B).astype(jnp.float32)
    return {'loss_sum': jnp.sum(loss_B * weight_B),
            'correct': jnp.sum(correct_B * weight_B),
            'count': jnp.sum(weight_B)}


def zero_sums() -> dict[str, jax.Array]:
    """The sums of no examples: where accumulation starts."""
    return {name: jnp.zeros((), jnp.float32) for name in ('loss_sum', 'correct', 'count')}


def add(a: dict, b: dict) -> dict:
    return jax.tree.map(jnp.add, a, b)


def summarize(sums: dict) -> dict[str, float]:
    """Host values from fetched sums: mean loss and accuracy."""
    sums = jax.device_get(sums)
    count = float(np.maximum(sums['count'], 1))
    return {'loss': float(sums['loss_sum']) / count, 'accuracy': float(sums['correct']) / count}
