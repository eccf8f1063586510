"""Attention as pure functions: softmax attention written with einops (the reference, with
causal query blocks that skip masked keys), jax.nn.dot_product_attention with the same masking
(cuDNN flash attention on GPU), fused kernels (C++ on CPU, Pallas splash attention on TPU), the
weights for pictures, and rotary positions.

Every path takes the same masks: causal, key_valid_BS (keys that may be seen) and segment ids
(query_segments_BT, key_segments_BS): a query sees only keys of its own segment, so documents
packed into one row do not see each other. Self-attention passes the same ids for both.

Shape suffixes: B batch, T query length, S key length, H query heads, G key/value heads,
R = H // G query heads per key/value head, K head width, N = B * G.
"""

import math

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from bigjax import platform
from bigjax.kernels import causal_attention


def rotate(x_BTNK: jax.Array, positions_BT: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding: channel i and i + K/2 turned by position * theta^(-2i/K)."""
    half = x_BTNK.shape[-1] // 2
    frequencies = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles_BT1K = (positions_BT[..., None].astype(jnp.float32) * frequencies)[:, :, None, :]
    sin, cos = jnp.sin(angles_BT1K), jnp.cos(angles_BT1K)
    first, second = x_BTNK[..., :half].astype(jnp.float32), x_BTNK[..., half:].astype(jnp.float32)
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin],
                           -1).astype(x_BTNK.dtype)


def einops_attention(q_BTHK, k_BSGK, v_BSGK, *, causal: bool, query_offset=0,
                     key_valid_BS=None, query_segments_BT=None, key_segments_BS=None
                     ) -> jax.Array:
    """Softmax attention written with einops.

    Query t (at position query_offset + t) sees key s when s <= query_offset + t (if causal),
    key_valid_BS[b, s] (if given) and query_segments_BT[b, t] == key_segments_BS[b, s] (if
    given). Causal attention from position 0 is computed in query blocks that skip the keys
    every query of the block is masked from: up to 37.5 % less work.
    """
    length = q_BTHK.shape[1]
    blocks = 1
    if causal and key_valid_BS is None and isinstance(query_offset, int) and query_offset == 0:
        blocks = next(n for n in (4, 2, 1) if length % n == 0 and length // n >= 32 or n == 1)
    size = length // blocks
    outs = []
    for i in range(blocks):
        keys = (i + 1) * size if blocks > 1 else k_BSGK.shape[1]
        query_segments = (None if query_segments_BT is None
                          else query_segments_BT[:, i * size:(i + 1) * size])
        key_segments = None if key_segments_BS is None else key_segments_BS[:, :keys]
        outs.append(_attend(q_BTHK[:, i * size:(i + 1) * size], k_BSGK[:, :keys],
                            v_BSGK[:, :keys], query_offset + i * size + jnp.arange(size),
                            causal, None if key_valid_BS is None else key_valid_BS[:, :keys],
                            query_segments, key_segments))
    return outs[0] if blocks == 1 else jnp.concatenate(outs, axis=1)


def _attend(q_BTHK, k_BSGK, v_BSGK, positions_T, causal: bool, key_valid_BS,
            query_segments_BT, key_segments_BS) -> jax.Array:
    """One block of queries. The R query heads that share a key/value head are stacked along
    the query axis, so it is two plain batched matrix products over N = B * G (the layout
    XLA:CPU runs fastest; grouped-query attention comes for free)."""
    groups, repeats = k_BSGK.shape[2], q_BTHK.shape[2] // k_BSGK.shape[2]
    v_NSK = einops.rearrange(v_BSGK, 'b s g k -> (b g) s k')
    probs_NQS = _stacked_weights(q_BTHK, k_BSGK, positions_T, causal, key_valid_BS,
                                 query_segments_BT, key_segments_BS).astype(v_NSK.dtype)
    out_NQK = einops.einsum(probs_NQS, v_NSK, 'n q s, n s k -> n q k')
    return einops.rearrange(out_NQK, '(b g) (r t) k -> b t (g r) k', g=groups, r=repeats)


def attention_weights(q_BTHK, k_BSGK, *, causal: bool, key_valid_BS=None,
                      query_segments_BT=None, key_segments_BS=None) -> jax.Array:
    """The softmax weights einops_attention uses, per head: (B, H, T, S) float32 (for
    pictures; queries start at position 0)."""
    groups, repeats = k_BSGK.shape[2], q_BTHK.shape[2] // k_BSGK.shape[2]
    probs_NQS = _stacked_weights(q_BTHK, k_BSGK, jnp.arange(q_BTHK.shape[1]), causal,
                                 key_valid_BS, query_segments_BT, key_segments_BS)
    return einops.rearrange(probs_NQS, '(b g) (r t) s -> b (g r) t s', g=groups, r=repeats)


def _stacked_weights(q_BTHK, k_BSGK, positions_T, causal: bool, key_valid_BS,
                     query_segments_BT, key_segments_BS) -> jax.Array:
    """Masked softmax weights in the stacked layout of _attend: (N = B * G, Q = R * T, S)."""
    groups, repeats = k_BSGK.shape[2], q_BTHK.shape[2] // k_BSGK.shape[2]
    q_NQK = einops.rearrange(q_BTHK, 'b t (g r) k -> (b g) (r t) k', g=groups)
    k_NSK = einops.rearrange(k_BSGK, 'b s g k -> (b g) s k')
    scores_NQS = einops.einsum(q_NQK, k_NSK, 'n q k, n s k -> n q s').astype(jnp.float32)
    scores_NQS = scores_NQS / jnp.sqrt(jnp.float32(q_BTHK.shape[-1]))
    allowed = jnp.ones((1, 1, 1), bool)
    if causal:
        query_pos_Q = einops.repeat(positions_T, 't -> (r t)', r=repeats)
        allowed = allowed & (query_pos_Q[:, None] >= jnp.arange(k_BSGK.shape[1])[None, :])[None]
    if key_valid_BS is not None:
        allowed = allowed & einops.repeat(key_valid_BS, 'b s -> (b g) 1 s', g=groups)
    if query_segments_BT is not None:
        query_NQ = einops.repeat(query_segments_BT, 'b t -> (b g) (r t)', g=groups, r=repeats)
        key_NS = einops.repeat(key_segments_BS, 'b s -> (b g) s', g=groups)
        allowed = allowed & (query_NQ[:, :, None] == key_NS[:, None, :])
    scores_NQS = jnp.where(allowed, scores_NQS, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores_NQS, axis=-1)


def library_attention(q_BTHK, k_BSGK, v_BSGK, *, causal: bool, query_offset=0,
                      key_valid_BS=None, query_segments_BT=None, key_segments_BS=None
                      ) -> jax.Array:
    """jax.nn.dot_product_attention (cuDNN flash attention on GPU where it applies); the same
    masking as einops_attention. Key and segment masks go in as a dense boolean mask, which
    XLA's implementation takes (cuDNN's only for plain causal attention)."""
    plain_causal = (isinstance(query_offset, int) and query_offset == 0
                    and key_valid_BS is None and query_segments_BT is None)
    if causal and plain_causal:
        return jax.nn.dot_product_attention(q_BTHK, k_BSGK, v_BSGK, is_causal=True,
                                            implementation=_library_implementation(q_BTHK))
    allowed_BTS = jnp.ones((1, 1, 1), bool)
    if causal:
        query_pos_T = query_offset + jnp.arange(q_BTHK.shape[1])
        allowed_BTS = allowed_BTS & (query_pos_T[:, None] >= jnp.arange(k_BSGK.shape[1]))[None]
    if key_valid_BS is not None:
        allowed_BTS = allowed_BTS & key_valid_BS[:, None, :]
    if query_segments_BT is not None:
        allowed_BTS = allowed_BTS & (query_segments_BT[:, :, None] == key_segments_BS[:, None, :])
    mask = jnp.broadcast_to(allowed_BTS, (q_BTHK.shape[0], q_BTHK.shape[1], k_BSGK.shape[1]))
    return jax.nn.dot_product_attention(q_BTHK, k_BSGK, v_BSGK, mask=mask[:, None])


def _library_implementation(q_BTHK) -> str | None:
    """None lets JAX choose (cuDNN on a GPU it runs on); compiling for a GPU from a machine
    without one (bigjax/aot.py) names cuDNN, which JAX would not pick from the CPU backend."""
    deviceless_gpu = platform.target() == 'gpu' and jax.default_backend() != 'gpu'
    return 'cudnn' if deviceless_gpu and q_BTHK.dtype in (jnp.bfloat16, jnp.float16) else None


FUSED = "model.transformer.attention='fused'"


def prepare_fused() -> None:
    """Builds the CPU kernel of fused_attention now, so that a machine without a C++ compiler
    fails with one clear line before any data is read."""
    causal_attention.register(FUSED)


def fused_attention(q_BTHK, k_BSGK, v_BSGK, *, causal: bool, query_offset=0,
                    key_valid_BS=None, query_segments_BT=None, key_segments_BS=None,
                    qkv_BTGCK=None) -> jax.Array:
    """The fastest fused attention each platform has: on CPU bigjax's C++ kernel for causal
    self-attention in float32 (segment ids included), on TPU Pallas splash attention for
    self-attention over lengths in multiples of 128 (the einops reference, or on TPU
    library_attention, for every other case: key masks on CPU, decoding with a cache), on GPU
    library_attention (cuDNN). qkv_BTGCK: the fused projection's output when q, k and v are its
    slices (see kernels.causal_attention)."""
    backend = platform.target()
    self_attention = (isinstance(query_offset, int) and query_offset == 0
                      and q_BTHK.shape[1] == k_BSGK.shape[1])
    masks = dict(key_valid_BS=key_valid_BS, query_segments_BT=query_segments_BT,
                 key_segments_BS=key_segments_BS)
    if backend == 'tpu' and self_attention and splash_supports(q_BTHK):
        return splash_attention(q_BTHK, k_BSGK, v_BSGK, causal=causal,
                                key_valid_BS=key_valid_BS, segments_BT=query_segments_BT)
    if backend != 'cpu':
        return library_attention(q_BTHK, k_BSGK, v_BSGK, causal=causal,
                                 query_offset=query_offset, **masks)
    if (causal and self_attention and key_valid_BS is None
            and causal_attention.supports(q_BTHK, k_BSGK)):
        return causal_attention.causal_attention(
            q_BTHK, k_BSGK, v_BSGK, purpose=FUSED, qkv_BTGCK=qkv_BTGCK,
            segments_BT=query_segments_BT)
    return einops_attention(q_BTHK, k_BSGK, v_BSGK, causal=causal, query_offset=query_offset,
                            **masks)


SPLASH_BLOCKS = (512, 256, 128)  # the largest that divides the length is the kernel's tile


def splash_supports(q_BTHK) -> bool:
    """Splash attention tiles the length in blocks of at least 128 (TPU vector lanes)."""
    return q_BTHK.shape[1] % SPLASH_BLOCKS[-1] == 0


def splash_attention(q_BTHK, k_BSGK, v_BSGK, *, causal: bool, key_valid_BS=None,
                     segments_BT=None, interpret: bool = False) -> jax.Array:
    """Self-attention through Pallas' TPU splash attention kernel (flash attention that skips
    the blocks a causal mask hides; grouped-query heads native; key padding and packed
    documents as segment ids). Under a mesh (parallel.layout) each device runs the kernel on its
    shard: the batch split as 'batch' says, the heads as 'heads' says. `interpret`: Pallas'
    interpreter (CPU tests)."""
    batch, length, heads, width = q_BTHK.shape
    mesh = jax.sharding.get_abstract_mesh()
    batch_axes, head_axes = (None, None) if mesh.empty else nn.logical_to_mesh_axes(
        ('batch', 'heads'))
    batch_shards, head_shards = (math.prod(mesh.shape[name] for name in _names(axes))
                                 for axes in (batch_axes, head_axes))
    if batch % batch_shards or k_BSGK.shape[2] % head_shards:  # e.g. tracing init on one row
        mesh, head_shards = jax.sharding.AbstractMesh((), ()), 1
    block = next(b for b in SPLASH_BLOCKS if length % b == 0)
    mask = splash_mask.CausalMask((length, length)) if causal else splash_mask.FullMask(
        (length, length))
    kernel = splash.make_splash_mha(
        splash_mask.MultiHeadMask([mask] * (heads // head_shards)), head_shards=1,
        q_seq_shards=1, interpret=interpret,
        block_sizes=splash.BlockSizes(
            block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block))
    masked = key_valid_BS is not None or segments_BT is not None

    def attend(q_BHTK, k_BGSK, v_BGSK, query_ids_BT, key_ids_BS):
        def one(q_HTK, k_GSK, v_GSK, query_ids_T, key_ids_S):
            segments = splash.SegmentIds(q=query_ids_T, kv=key_ids_S) if masked else None
            return kernel(q_HTK, k_GSK, v_GSK, segment_ids=segments)
        return jax.vmap(one)(q_BHTK, k_BGSK, v_BGSK, query_ids_BT, key_ids_BS)

    if not mesh.empty:
        heads_spec = jax.sharding.PartitionSpec(batch_axes, head_axes, None, None)
        rows_spec = jax.sharding.PartitionSpec(batch_axes, None)
        attend = jax.shard_map(attend, mesh=mesh, out_specs=heads_spec, check_vma=False,
                               in_specs=(heads_spec, heads_spec, heads_spec, rows_spec,
                                         rows_spec))
    # Queries and keys in their document's segment (all in segment 0 without documents); a key
    # that may not be seen (key_valid_BS) in segment -1, which no query is in.
    query_ids_BT = (jnp.zeros((batch, length), jnp.int32) if segments_BT is None
                    else segments_BT.astype(jnp.int32))
    key_ids_BS = (query_ids_BT if key_valid_BS is None
                  else jnp.where(key_valid_BS, query_ids_BT, -1))
    q_BHTK = jnp.swapaxes(q_BTHK, 1, 2) * jnp.asarray(width ** -0.5, q_BTHK.dtype)
    out_BHTK = attend(q_BHTK, jnp.swapaxes(k_BSGK, 1, 2), jnp.swapaxes(v_BSGK, 1, 2),
                      query_ids_BT, key_ids_BS)
    return jnp.swapaxes(out_BHTK, 1, 2)


def _names(axes) -> tuple:
    """Mesh axis names of one logical axis's mapping (None, a name, or a tuple of names)."""
    return () if axes is None else axes if isinstance(axes, tuple) else (axes,)
