"""Metrics as sums accumulated on device (sharding-friendly), turned into values on the host."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def classification_sums(logits_NC: jax.Array, labels_N: jax.Array,
                        weights_N: jax.Array | None = None) -> dict[str, jax.Array]:
    """Summed cross-entropy, correct predictions and count over weighted predictions.

    Any leading shape N works: (B,) for classifiers, (B, T) for next-token prediction. A zero
    weight (padding) leaves a prediction out.
    """
    weights_N = (jnp.ones(labels_N.shape, jnp.float32) if weights_N is None
                 else jnp.broadcast_to(weights_N, labels_N.shape).astype(jnp.float32))
    loss_N = optax.softmax_cross_entropy_with_integer_labels(logits_NC.astype(jnp.float32),
                                                             labels_N)
    correct_N = (jnp.argmax(logits_NC, -1) == labels_N).astype(jnp.float32)
    return {'loss_sum': jnp.sum(loss_N * weights_N),
            'correct': jnp.sum(correct_N * weights_N),
            'count': jnp.sum(weights_N)}


def zero_sums() -> dict[str, jax.Array]:
    """The sums of no examples: where accumulation starts."""
    return {name: jnp.zeros((), jnp.float32) for name in ('loss_sum', 'correct', 'count')}


def add(a: dict, b: dict) -> dict:
    return jax.tree.map(jnp.add, a, b)


def summarize(sums: dict, kind: str = 'image') -> dict[str, float]:
    """Host values from fetched sums: mean loss and accuracy (per token for LMs, with
    perplexity)."""
    sums = jax.device_get(sums)
    count = float(np.maximum(sums['count'], 1))
    values = {'loss': float(sums['loss_sum']) / count, 'accuracy': float(sums['correct']) / count}
    if kind == 'text_lm':
        values['perplexity'] = float(np.exp(min(values['loss'], 80.0)))
    return values
