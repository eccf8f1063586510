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


def rope_frequencies(head_dim: int, theta: float, scaling: str = 'none', factor: float = 1.0,
                     original_max_len: int = 0, low_freq_factor: float = 1.0,
                     high_freq_factor: float = 4.0, beta_fast: float = 32.0,
                     beta_slow: float = 1.0, attention_factor: float = 0.0,
                     truncate: bool = True) -> tuple[jax.Array, float]:
    """Rotary angular frequencies (K/2,) theta^(-2i/K), rescaled as transformers' rope_type
    `scaling` rescales them ('none', 'linear', 'llama3', 'yarn'), and the factor that scales
    cos and sin (yarn's attention factor; 1 otherwise)."""
    half = head_dim // 2
    frequencies = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    if scaling == 'linear':
        return frequencies / factor, 1.0
    if scaling == 'llama3':  # long wavelengths slowed by `factor`, short kept, a ramp between
        wavelengths = 2 * math.pi / frequencies
        smooth = (original_max_len / wavelengths - low_freq_factor) / (
            high_freq_factor - low_freq_factor)
        ramp = (1 - smooth) * frequencies / factor + smooth * frequencies
        return jnp.where(wavelengths > original_max_len / low_freq_factor, frequencies / factor,
                         jnp.where(wavelengths < original_max_len / high_freq_factor,
                                   frequencies, ramp)), 1.0
    if scaling == 'yarn':  # interpolated below a band of dimensions, extrapolated above it
        def dimension(rotations):
            return head_dim * math.log(original_max_len / (rotations * 2 * math.pi)) / (
                2 * math.log(theta))
        low, high = dimension(beta_fast), dimension(beta_slow)
        if truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, head_dim - 1)
        ramp = jnp.clip((jnp.arange(half, dtype=jnp.float32) - low) / (
            max(high - low, 0.001)), 0, 1)
        scale = attention_factor or (0.1 * math.log(factor) + 1 if factor > 1 else 1.0)
        return frequencies / factor * ramp + frequencies * (1 - ramp), scale
    return frequencies, 1.0


def rotate(x_BTNK: jax.Array, positions_BT: jax.Array, frequencies_K2: jax.Array,
           scale: float = 1.0) -> jax.Array:
    """Rotary position embedding: channel i and i + K/2 turned by position * frequencies[i]
    (rope_frequencies), times `scale`."""
    half = x_BTNK.shape[-1] // 2
    angles_BT1K = (positions_BT[..., None].astype(jnp.float32) * frequencies_K2)[:, :, None, :]
    sin, cos = jnp.sin(angles_BT1K), jnp.cos(angles_BT1K)
    if isinstance(scale, jax.Array) or scale != 1.0:
        sin, cos = sin * scale, cos * scale
    first, second = x_BTNK[..., :half].astype(jnp.float32), x_BTNK[..., half:].astype(jnp.float32)
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin],
                           -1).astype(x_BTNK.dtype)


def soft_cap(x: jax.Array, cap: float) -> jax.Array:
    """cap * tanh(x / cap): Gemma 2's bound on attention scores and logits (cap 0: x)."""
    return cap * jnp.tanh(x / cap) if cap else x


def einops_attention(q_BTHK, k_BSGK, v_BSGK, *, causal: bool, query_offset=0,
                     key_valid_BS=None, query_segments_BT=None, key_segments_BS=None,
                     window: int = 0, softcap: float = 0.0) -> jax.Array:
    """Softmax attention written with einops.

    Query t (at position query_offset + t) sees key s when s <= query_offset + t (if causal),
    query_offset + t - s < window (if window > 0), key_valid_BS[b, s] (if given) and
    query_segments_BT[b, t] == key_segments_BS[b, s] (if given); scores pass through
    soft_cap(softcap). Causal attention from position 0 is computed in query blocks that skip
    the keys every query of the block is masked from: up to 37.5 % less work, and with a window
    all but ~window keys per block.
    """
    length = q_BTHK.shape[1]
    blocks = 1
    if causal and key_valid_BS is None and isinstance(query_offset, int) and query_offset == 0:
        blocks = next(n for n in (4, 2, 1) if length % n == 0 and length // n >= 32 or n == 1)
        if window:
            blocks = _window_blocks(length, window, blocks)
    size = length // blocks
    outs = []
    for i in range(blocks):
        first = max(0, i * size - window + 1) if blocks > 1 and window else 0
        keys = (i + 1) * size if blocks > 1 else k_BSGK.shape[1]
        cut = lambda x: None if x is None else x[:, first:keys]
        query_segments = (None if query_segments_BT is None
                          else query_segments_BT[:, i * size:(i + 1) * size])
        outs.append(_attend(q_BTHK[:, i * size:(i + 1) * size], cut(k_BSGK), cut(v_BSGK),
                            query_offset + i * size + jnp.arange(size), first + jnp.arange(
                                keys - first), causal, window, softcap, cut(key_valid_BS),
                            query_segments, cut(key_segments_BS)))
    return outs[0] if blocks == 1 else jnp.concatenate(outs, axis=1)


def _window_blocks(length: int, window: int, blocks: int) -> int:
    """Query blocks for windowed causal attention: the most blocks of at least 32 queries and
    no smaller than the window dividing `length` (at least the plain causal count)."""
    fitting = [n for n in range(blocks, length // 32 + 1)
               if length % n == 0 and length // n >= window]
    return max(fitting, default=blocks)


def _attend(q_BTHK, k_BSGK, v_BSGK, query_positions_T, key_positions_S, causal: bool,
            window: int, softcap: float, key_valid_BS, query_segments_BT, key_segments_BS
            ) -> jax.Array:
    """One block of queries. The R query heads that share a key/value head are stacked along
    the query axis, so it is two plain batched matrix products over N = B * G (the layout
    XLA:CPU runs fastest; grouped-query attention comes for free)."""
    groups, repeats = k_BSGK.shape[2], q_BTHK.shape[2] // k_BSGK.shape[2]
    v_NSK = einops.rearrange(v_BSGK, 'b s g k -> (b g) s k')
    probs_NQS = _stacked_weights(q_BTHK, k_BSGK, query_positions_T, key_positions_S, causal,
                                 window, softcap, key_valid_BS, query_segments_BT,
                                 key_segments_BS).astype(v_NSK.dtype)
    out_NQK = einops.einsum(probs_NQS, v_NSK, 'n q s, n s k -> n q k')
    return einops.rearrange(out_NQK, '(b g) (r t) k -> b t (g r) k', g=groups, r=repeats)


def attention_weights(q_BTHK, k_BSGK, *, causal: bool, key_valid_BS=None,
                      query_segments_BT=None, key_segments_BS=None, window: int = 0,
                      softcap: float = 0.0) -> jax.Array:
    """The softmax weights einops_attention uses, per head: (B, H, T, S) float32 (for
    pictures; queries start at position 0)."""
    groups, repeats = k_BSGK.shape[2], q_BTHK.shape[2] // k_BSGK.shape[2]
    probs_NQS = _stacked_weights(q_BTHK, k_BSGK, jnp.arange(q_BTHK.shape[1]),
                                 jnp.arange(k_BSGK.shape[1]), causal, window, softcap,
                                 key_valid_BS, query_segments_BT, key_segments_BS)
    return einops.rearrange(probs_NQS, '(b g) (r t) s -> b (g r) t s', g=groups, r=repeats)


def allowed_positions(query_positions_T, key_positions_S, causal: bool, window: int):
    """(T, S): query position t may see key position s (causal: s <= t; window: t - s < w)."""
    difference_TS = query_positions_T[:, None] - key_positions_S[None, :]
    allowed_TS = jnp.ones(difference_TS.shape, bool)
    if causal:
        allowed_TS = allowed_TS & (difference_TS >= 0)
    if window:
        allowed_TS = allowed_TS & (difference_TS < window)
    return allowed_TS


def _stacked_weights(q_BTHK, k_BSGK, query_positions_T, key_positions_S, causal: bool,
                     window: int, softcap: float, key_valid_BS, query_segments_BT,
                     key_segments_BS) -> jax.Array:
    """Masked softmax weights in the stacked layout of _attend: (N = B * G, Q = R * T, S)."""
    groups, repeats = k_BSGK.shape[2], q_BTHK.shape[2] // k_BSGK.shape[2]
    q_NQK = einops.rearrange(q_BTHK, 'b t (g r) k -> (b g) (r t) k', g=groups)
    k_NSK = einops.rearrange(k_BSGK, 'b s g k -> (b g) s k')
    scores_NQS = einops.einsum(q_NQK, k_NSK, 'n q k, n s k -> n q s').astype(jnp.float32)
    scores_NQS = soft_cap(scores_NQS / jnp.sqrt(jnp.float32(q_BTHK.shape[-1])), softcap)
    allowed = jnp.ones((1, 1, 1), bool)
    if causal or window:
        allowed_TS = allowed_positions(query_positions_T, key_positions_S, causal, window)
        allowed = allowed & einops.repeat(allowed_TS, 't s -> 1 (r t) s', r=repeats)
    if key_valid_BS is not None:
        allowed = allowed & einops.repeat(key_valid_BS, 'b s -> (b g) 1 s', g=groups)
    if query_segments_BT is not None:
        query_NQ = einops.repeat(query_segments_BT, 'b t -> (b g) (r t)', g=groups, r=repeats)
        key_NS = einops.repeat(key_segments_BS, 'b s -> (b g) s', g=groups)
        allowed = allowed & (query_NQ[:, :, None] == key_NS[:, None, :])
    scores_NQS = jnp.where(allowed, scores_NQS, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores_NQS, axis=-1)


def library_attention(q_BTHK, k_BSGK, v_BSGK, *, causal: bool, query_offset=0,
                      key_valid_BS=None, query_segments_BT=None, key_segments_BS=None,
                      window: int = 0, softcap: float = 0.0) -> jax.Array:
    """jax.nn.dot_product_attention (cuDNN flash attention on GPU where it applies); the same
    masking as einops_attention. Key and segment masks go in as a dense boolean mask, which
    XLA's implementation takes (cuDNN's only for plain causal attention, windowed or not). It
    has no soft cap: capped scores take einops_attention."""
    if softcap:
        return einops_attention(q_BTHK, k_BSGK, v_BSGK, causal=causal, query_offset=query_offset,
                                key_valid_BS=key_valid_BS, query_segments_BT=query_segments_BT,
                                key_segments_BS=key_segments_BS, window=window, softcap=softcap)
    plain_causal = (isinstance(query_offset, int) and query_offset == 0
                    and key_valid_BS is None and query_segments_BT is None)
    if causal and plain_causal:
        return jax.nn.dot_product_attention(q_BTHK, k_BSGK, v_BSGK, is_causal=True,
                                            local_window_size=(window - 1, 0) if window else None,
                                            implementation=_library_implementation(q_BTHK))
    allowed_BTS = allowed_positions(query_offset + jnp.arange(q_BTHK.shape[1]),
                                    jnp.arange(k_BSGK.shape[1]), causal, window)[None]
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
                    window: int = 0, softcap: float = 0.0, qkv_BTGCK=None) -> jax.Array:
    """The fastest fused attention each platform has: on CPUs with AVX-512 bigjax's C++ kernel
    for causal self-attention in float32 (segment ids and windows included), on TPU Pallas splash
    attention for self-attention over lengths in multiples of 128 (the einops reference, or on
    TPU library_attention, for every other case: key masks or soft caps on CPU, CPUs without
    AVX-512, decoding with a cache), on GPU library_attention (cuDNN). qkv_BTGCK: the fused
    projection's output when q, k and v are its slices (see kernels.causal_attention)."""
    backend = platform.target()
    self_attention = (isinstance(query_offset, int) and query_offset == 0
                      and q_BTHK.shape[1] == k_BSGK.shape[1])
    masks = dict(key_valid_BS=key_valid_BS, query_segments_BT=query_segments_BT,
                 key_segments_BS=key_segments_BS, window=window, softcap=softcap)
    if backend == 'tpu' and self_attention and splash_supports(q_BTHK):
        return splash_attention(q_BTHK, k_BSGK, v_BSGK, causal=causal,
                                key_valid_BS=key_valid_BS, segments_BT=query_segments_BT,
                                window=window, softcap=softcap)
    if backend != 'cpu':
        return library_attention(q_BTHK, k_BSGK, v_BSGK, causal=causal,
                                 query_offset=query_offset, **masks)
    if (causal and self_attention and key_valid_BS is None and not softcap
            and causal_attention.fast_here() and causal_attention.supports(q_BTHK, k_BSGK)):
        return causal_attention.causal_attention(
            q_BTHK, k_BSGK, v_BSGK, purpose=FUSED, qkv_BTGCK=qkv_BTGCK,
            segments_BT=query_segments_BT, window=window)
    return einops_attention(q_BTHK, k_BSGK, v_BSGK, causal=causal, query_offset=query_offset,
                            **masks)


SPLASH_BLOCKS = (512, 256, 128)  # the largest that divides the length is the kernel's tile


def splash_supports(q_BTHK) -> bool:
    """Splash attention tiles the length in blocks of at least 128 (TPU vector lanes)."""
    return q_BTHK.shape[1] % SPLASH_BLOCKS[-1] == 0


def splash_attention(q_BTHK, k_BSGK, v_BSGK, *, causal: bool, key_valid_BS=None,
                     segments_BT=None, window: int = 0, softcap: float = 0.0,
                     interpret: bool = False) -> jax.Array:
    """Self-attention through Pallas' TPU splash attention kernel (flash attention that skips
    the blocks a causal mask hides; grouped-query heads native; key padding and packed
    documents as segment ids; a window as a local mask, whose blocks outside it are skipped;
    soft-capped scores). Under a mesh (parallel.layout) each device runs the kernel on its
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
    if window:
        mask = splash_mask.LocalMask((length, length), (window - 1, 0 if causal else window - 1),
                                     offset=0)
    else:
        mask = splash_mask.CausalMask((length, length)) if causal else splash_mask.FullMask(
            (length, length))
    kernel = splash.make_splash_mha(
        splash_mask.MultiHeadMask([mask] * (heads // head_shards)), head_shards=1,
        q_seq_shards=1, interpret=interpret, attn_logits_soft_cap=softcap or None,
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
