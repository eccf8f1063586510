"""Fused causal attention on CPU (causal_attention.cc through XLA FFI), differentiable.

The forward kernel returns the output and each query's log-sum-exp; the backward kernel
recomputes the weights from them, so no T x T array is ever stored. Inputs are float32 in the
fused projection's layout; the length is padded to the kernel's block of 64 (padded keys come
after every real query, so causality hides them). Segment ids (documents packed into a row) keep
each query to the keys of its own segment; a sliding window of W (Mistral, Gemma local layers)
to its W latest keys, itself included, and key blocks outside every window are skipped. Under a
multi-device mesh XLA gathers the inputs for the call: the kernel is for CPU training on one
device (or process).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bigjax import kernels

BLOCK = 64
HEAD_WIDTHS = (16, 32, 64, 128)


_REGISTERED = []  # the library whose handlers XLA:CPU calls, once registered


def register(purpose: str) -> None:
    """Builds (once per machine) and loads the kernel, and registers it with XLA:CPU once per
    process. `purpose` names the setting that asked for it, in the error when it cannot be
    built."""
    if _REGISTERED:
        return
    library = kernels.library('causal_attention', purpose)
    for target, symbol in (
            ('bigjax_causal_attention_fwd', library.BigjaxCausalAttentionForward),
            ('bigjax_causal_attention_bwd', library.BigjaxCausalAttentionBackward),
            ('bigjax_causal_attention_segments_fwd', library.BigjaxCausalAttentionSegmentsForward),
            ('bigjax_causal_attention_segments_bwd',
             library.BigjaxCausalAttentionSegmentsBackward)):
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform='cpu')
    _REGISTERED.append(library)


def fast_here() -> bool:
    """Whether this CPU runs the kernel fast: its register tiles are sized for AVX-512's 32
    registers of 16 floats. On AVX2 it measured 4x slower than the einops attention, and a char
    LM's steps 2x slower (benchmarks/README.md), so fused_attention takes einops there."""
    return kernels.cpu_has('avx512f')


def supports(q_BTHK, k_BSGK) -> bool:
    """Whether the kernel computes this call: float32, a head width it was built for, and
    query heads that split evenly over the key/value heads."""
    return (q_BTHK.dtype == jnp.float32 and k_BSGK.dtype == jnp.float32
            and q_BTHK.shape[-1] in HEAD_WIDTHS and q_BTHK.shape[2] % k_BSGK.shape[2] == 0)


def causal_attention(q_BTHK, k_BTGK, v_BTGK, *, purpose: str, qkv_BTGCK=None,
                     segments_BT=None, window: int = 0) -> jax.Array:
    """softmax(q k^T / sqrt(K), causal) v for queries and keys at positions 0..T-1; with
    segments_BT (int, (B, T)), query t sees key s only where their segment ids are equal; with
    window W > 0 (static), only where t - W < s (sliding-window attention; 0: no window).

    The kernel reads and writes the fused projection's layout (B, T, G, R + 2, K): per
    key/value head its R query heads, its key and its value. Pass that array as qkv_BTGCK when
    q, k and v are its slices, so the gradient lands in it directly; otherwise it is packed here.
    """
    if window < 0:
        raise ValueError(f'causal_attention: window must be >= 0 (0: none), got {window}')
    register(purpose)
    batch, length, heads, width = q_BTHK.shape
    groups = k_BTGK.shape[2]
    if qkv_BTGCK is None:
        qkv_BTGCK = jnp.concatenate(
            [q_BTHK.reshape(batch, length, groups, heads // groups, width),
             k_BTGK[:, :, :, None], v_BTGK[:, :, :, None]], axis=3)
    padded = -length % BLOCK
    if padded:
        qkv_BTGCK = jnp.pad(qkv_BTGCK, ((0, 0), (0, padded), (0, 0), (0, 0), (0, 0)))
    if segments_BT is None:
        return _attend(window, qkv_BTGCK)[:, :length]
    # Padded positions get a segment of their own (-1): only they see each other.
    segments_BT = jnp.pad(segments_BT.astype(jnp.int32), ((0, 0), (0, padded)),
                          constant_values=-1)
    return _attend_segments(window, qkv_BTGCK, segments_BT)[:, :length]


def _forward_call(window, qkv_BTGCK, *segments):
    batch, length, groups, slots, width = qkv_BTGCK.shape
    heads = groups * (slots - 2)
    shapes = (jax.ShapeDtypeStruct((batch, length, heads, width), jnp.float32),
              jax.ShapeDtypeStruct((batch, heads, length), jnp.float32))
    target = 'bigjax_causal_attention_segments_fwd' if segments else 'bigjax_causal_attention_fwd'
    return jax.ffi.ffi_call(target, shapes)(qkv_BTGCK, *segments, window=np.int64(window))


def _backward_call(window, qkv_BTGCK, segments, out_BTHK, lse_BHT, dout_BTHK):
    shape = jax.ShapeDtypeStruct(qkv_BTGCK.shape, jnp.float32)
    target = 'bigjax_causal_attention_segments_bwd' if segments else 'bigjax_causal_attention_bwd'
    return jax.ffi.ffi_call(target, shape)(qkv_BTGCK, *segments, out_BTHK, lse_BHT, dout_BTHK,
                                           window=np.int64(window))


# The window is static (a model hyperparameter): the first, non-differentiable argument.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(window, qkv_BTGCK):
    return _forward_call(window, qkv_BTGCK)[0]


def _attend_forward(window, qkv_BTGCK):
    out_BTHK, lse_BHT = _forward_call(window, qkv_BTGCK)
    return out_BTHK, (qkv_BTGCK, out_BTHK, lse_BHT)


def _attend_backward(window, residuals, dout_BTHK):
    qkv_BTGCK, out_BTHK, lse_BHT = residuals
    return (_backward_call(window, qkv_BTGCK, (), out_BTHK, lse_BHT, dout_BTHK),)


_attend.defvjp(_attend_forward, _attend_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend_segments(window, qkv_BTGCK, segments_BT):
    return _forward_call(window, qkv_BTGCK, segments_BT)[0]


def _attend_segments_forward(window, qkv_BTGCK, segments_BT):
    out_BTHK, lse_BHT = _forward_call(window, qkv_BTGCK, segments_BT)
    return out_BTHK, (qkv_BTGCK, segments_BT, out_BTHK, lse_BHT)


def _attend_segments_backward(window, residuals, dout_BTHK):
    qkv_BTGCK, segments_BT, out_BTHK, lse_BHT = residuals
    return (_backward_call(window, qkv_BTGCK, (segments_BT,), out_BTHK, lse_BHT, dout_BTHK),
            None)


_attend_segments.defvjp(_attend_segments_forward, _attend_segments_backward)
