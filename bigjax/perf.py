"""Model FLOPs and the hardware peak, for model FLOPs utilisation (MFU).

MFU = training FLOPs per token x tokens/s / peak FLOP/s. Training FLOPs per token are 6 N for
the N weights used in matrix products (embedding lookups are free; a tied embedding counts once,
as the output layer) plus attention: 6 L T D for causal models, 12 L T D otherwise.
The peak is config.train.peak_flops if set, else the chip's dense bf16 rate from PEAK_FLOPS
times the device count, else, on CPU, a matrix product timed at start-up.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from bigjax.errors import UserError

PEAK_FLOPS = (  # device_kind substring -> dense bf16 FLOP/s per chip; first match wins
    ('TPU v6 lite', 918e12), ('TPU v6e', 918e12), ('TPU v5 lite', 197e12),
    ('TPU v5e', 197e12), ('TPU v5p', 459e12), ('TPU v5', 459e12), ('TPU v4', 275e12),
    ('H200', 989e12), ('H100', 989e12), ('A100', 312e12),
)
NOT_MATMUL = ('position_embedding', 'class_token')


def matmul_params(params, tied_embeddings: bool) -> int:
    """Weights used in matrix products: 2+-dimensional parameters, less lookup tables."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = {str(getattr(key, 'key', key)) for key in path}
        if leaf.ndim < 2 or names & set(NOT_MATMUL):
            continue
        if 'token_embedding' in names and not tied_embeddings:
            continue
        total += int(np.prod(leaf.shape))
    return total


def train_flops_per_token(params, cfg, tokens: int, causal: bool) -> float:
    """6 N + attention, for a transformer with config `cfg` on sequences of `tokens`."""
    attention = (6 if causal else 12) * cfg.depth * tokens * cfg.width
    return 6.0 * matmul_params(params, cfg.tied_embeddings) + attention


def peak_flops(configured: float) -> float:
    """FLOP/s of all devices together (see module docstring)."""
    if configured > 0:
        return configured
    device = jax.devices()[0]
    if device.platform == 'cpu':
        return measured_matmul_flops()
    for name, flops in PEAK_FLOPS:
        if name in device.device_kind:
            return flops * jax.device_count()
    raise UserError(f'no peak FLOP/s known for {device.device_kind!r} (needed for MFU): set '
                    'train.peak_flops to the peak of all devices together')


def measured_matmul_flops(size: int = 2048, repeats: int = 5) -> float:
    """The best FLOP/s of a float32 size x size matrix product on the default device."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best
