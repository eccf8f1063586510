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
    return (6.0 * matmul_params(params, cfg.tied_embeddings)
            + attention_flops_per_token(cfg, tokens, causal))


def attention_flops_per_token(cfg, tokens: int, causal: bool) -> float:
    """Training FLOPs of attention's two products per token: 12 H K times the keys a query sees,
    summed over layers: T (T/2 causally), or in a local layer of window W at most 2W - 1
    (W - W^2 / 2T causally)."""
    def keys(layer: int) -> float:
        window = min(cfg.window, tokens) if cfg.local(layer) else tokens
        if causal:
            return window - window * window / (2 * tokens)
        return min(tokens, 2 * window - 1) if cfg.local(layer) else tokens
    return 12 * sum(map(keys, range(cfg.depth))) * cfg.num_heads * cfg.head_dim


def peak_flops(configured: float, devices=None) -> float:
    """FLOP/s of `devices` together (default: all; see module docstring)."""
    if configured > 0:
        return configured
    devices = jax.devices() if devices is None else devices
    device = devices[0]
    if device.platform == 'cpu':
        return measured_matmul_flops()
    for name, flops in PEAK_FLOPS:
        if name in device.device_kind:
            return flops * len(devices)
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


ATTENTION_KERNELS = ('pallas_call', 'dot_product_attention_fwd_wrapper',
                     'dot_product_attention_bwd_wrapper', 'ffi_call')  # opaque to the count


def matmul_flops(closed_jaxpr) -> tuple[float, bool]:
    """(FLOPs of the matrix products and convolutions a traced program executes, whether it
    calls a fused kernel whose products the count cannot see). Counted: every dot_general and
    convolution, in loops (scan) times their length, in shard_map bodies times the shards, the
    larger branch of a cond, the recomputation that remat adds; not what runs inside Pallas,
    cuDNN attention or FFI kernels. XLA's cost analysis counts a loop's body once, so it
    undercounts a scanned layer stack."""
    return _jaxpr_flops(closed_jaxpr.jaxpr)


def _jaxpr_flops(jaxpr) -> tuple[float, bool]:
    total, kernels = 0.0, False
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ATTENTION_KERNELS:
            kernels = True
            continue
        if name == 'dot_general':
            (_, rhs_contract), (_, rhs_batch) = eqn.params['dimension_numbers']
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            rhs_free = [d for i, d in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch)]
            total += 2.0 * np.prod(lhs, dtype=float) * np.prod(rhs_free, dtype=float)
        elif name == 'conv_general_dilated':
            rhs, out = eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
            out_features = rhs[eqn.params['dimension_numbers'].rhs_spec[0]]
            total += 2.0 * np.prod(out, dtype=float) * np.prod(rhs, dtype=float) / out_features
        inner = [_jaxpr_flops(j) for j in _sub_jaxprs(eqn.params)]
        if not inner:
            continue
        kernels |= any(k for _, k in inner)
        if name == 'cond':
            total += max(f for f, _ in inner)
        else:
            total += sum(f for f, _ in inner) * _repeats(eqn)
    return total, kernels


def _sub_jaxprs(params) -> list:
    found = []
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, 'eqns'):
                found.append(item)
            elif hasattr(item, 'jaxpr') and hasattr(item.jaxpr, 'eqns'):
                found.append(item.jaxpr)
    return found


def _repeats(eqn) -> float:
    """How many times an equation runs its inner program."""
    name = eqn.primitive.name
    if name == 'scan':
        return float(eqn.params['length'])
    if name == 'shard_map':
        return float(np.prod(list(eqn.params['mesh'].shape.values())))
    return 1.0
