"""Transformers in flax.linen with einops attention: decoder LM, encoder classifier and ViT.

One backbone of pre-norm blocks (LayerNorm or RMSNorm; GELU or SwiGLU MLP; learned or rotary
positions; multi-head or grouped-query attention) under three heads. Parameters carry logical
axis names ('embed', 'heads', 'kv', 'mlp', 'vocab') that parallel.py maps onto the device mesh;
activations are constrained to ('batch', ...) so the batch stays split over data and fsdp.

Shape suffixes: B batch, T query length, S key length, D width, H query heads, G key/value
heads, R = H // G query heads per key/value head, K head width, F MLP width, V vocabulary.
"""

import functools

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.errors import UserError
from bigjax.models.attention import (
    attention_weights,
    einops_attention,
    fused_attention,
    library_attention,
    rope_frequencies,
    rotate,
    soft_cap,
)
from bigjax.models.projection import Projection, projection
from bigjax.models.transformer_config import DTYPES, REMAT_POLICIES, TransformerConfig


def _init(init_fn, *axes):
    return nn.with_logical_partitioning(init_fn, axes)


def _constrain(x, *axes):
    return nn.with_logical_constraint(x, axes)


def _lora(module: nn.Module, cfg: 'TransformerConfig', target: str, x_NI, kernel_in: tuple,
          kernel_out: tuple, in_axes: tuple, out_axes: tuple):
    """LoRA's alpha / rank * (x @ a) @ b for the projection `target` (kernel shape
    kernel_in + kernel_out), or None where it has no adapter. b starts at zero, so an adapted
    model computes exactly what its base model does until it trains."""
    if cfg.lora_rank == 0 or target not in cfg.lora_targets:
        return None
    rank, dtype = cfg.lora_rank, DTYPES[cfg.param_dtype]
    a = module.param(f'{target}_lora_a', _init(nn.initializers.lecun_normal(
        in_axis=tuple(range(len(kernel_in))), out_axis=-1), *in_axes, None),
        (*kernel_in, rank), dtype)
    b = module.param(f'{target}_lora_b', _init(nn.initializers.zeros, None, *out_axes),
                     (rank, *kernel_out), dtype)
    compute = DTYPES[cfg.dtype]
    h_NR = x_NI.reshape(x_NI.shape[0], -1).astype(compute) @ a.reshape(-1, rank).astype(compute)
    delta = (h_NR @ b.reshape(rank, -1).astype(compute)) * (cfg.lora_alpha / rank)
    return delta.reshape(x_NI.shape[0], *kernel_out)


def _norm(cfg: TransformerConfig, name: str, axis: str = 'embed') -> nn.Module:
    kwargs = dict(dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype], name=name,
                  epsilon=cfg.norm_eps, scale_init=_init(nn.initializers.ones, axis))
    if cfg.norm == 'rmsnorm':
        return nn.RMSNorm(**kwargs)
    return nn.LayerNorm(bias_init=_init(nn.initializers.zeros, 'embed'), **kwargs)


def rope(cfg: TransformerConfig, local: bool) -> tuple[jax.Array, float]:
    """The rotary frequencies and cos/sin scale of a local or a global block: local blocks of a
    local/global model rotate with rope_local_theta, unscaled; every other block as configured."""
    if local and cfg.global_every:
        return rope_frequencies(cfg.head_dim, cfg.rope_local_theta or cfg.rope_theta)
    return rope_frequencies(
        cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor,
        cfg.rope_original_max_len, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
        cfg.rope_beta_fast, cfg.rope_beta_slow, cfg.rope_attention_factor, cfg.rope_truncate)


def rope_of_kind(cfg: TransformerConfig, local) -> tuple[jax.Array, float]:
    """rope() of a block whose kind may be traced (see by_kind): both, selected."""
    if isinstance(local, bool):
        return rope(cfg, local)
    (local_K2, local_scale), (global_K2, global_scale) = rope(cfg, True), rope(cfg, False)
    scale = global_scale if local_scale == global_scale else jnp.where(
        local, local_scale, global_scale)
    return jnp.where(local, local_K2, global_K2), scale


def by_kind(local, compute):
    """compute(local: bool) for a block: `local` a Python bool, or under nn.scan over blocks of
    both kinds a traced one (then both are traced and lax.cond runs the block's own)."""
    if isinstance(local, bool):
        return compute(local)
    return jax.lax.cond(local, lambda: compute(True), lambda: compute(False))


class Attention(nn.Module):
    """Projections act on the flattened tokens (N = B * T): 2-D products that XLA:CPU runs
    faster than their 3-D form."""

    cfg: TransformerConfig
    causal: bool

    @nn.compact
    def __call__(self, x_BTD, key_valid_BS, positions_BT, segments_BT, *, local=False,
                 decode: bool = False):
        """segments_BT: each token's document (None: one); a query sees only its own
        document's keys, in decoding too (the cache keeps the keys' ids). local: whether this
        block attends to a window (a traced bool under nn.scan over blocks of both kinds)."""
        cfg = self.cfg
        batch, length, width = x_BTD.shape
        x_ND = x_BTD.reshape(batch * length, width)
        groups, repeats = cfg.kv_heads, cfg.num_heads // cfg.kv_heads
        # One product for queries, keys and values: per key/value head g, its R query heads,
        # its key and its value. Sharding 'heads' splits whole groups, so it stays local.
        qkv_NGCK = Projection((width,), (groups, repeats + 2, cfg.head_dim),
                              ('embed', 'heads', None, 'kv'), DTYPES[cfg.dtype],
                              DTYPES[cfg.param_dtype], 'qkv' in cfg.bias, name='qkv')(x_ND)
        adapter = _lora(self, cfg, 'qkv', x_ND, (width,), (groups, repeats + 2, cfg.head_dim),
                        ('embed',), ('heads', None, 'kv'))
        if adapter is not None:
            qkv_NGCK = qkv_NGCK + adapter.astype(qkv_NGCK.dtype)
        qkv_BTGCK = qkv_NGCK.reshape(batch, length, groups, repeats + 2, cfg.head_dim)
        q_BTHK = _constrain(einops.rearrange(qkv_BTGCK[:, :, :, :repeats],
                                             'b t g r k -> b t (g r) k'),
                            'batch', 'length', 'heads', 'kv')
        k_BTGK, v_BTGK = qkv_BTGCK[:, :, :, repeats], qkv_BTGCK[:, :, :, repeats + 1]
        if cfg.qk_norm:
            q_BTHK = _norm(cfg, 'query_norm', 'kv')(q_BTHK)
            k_BTGK = _norm(cfg, 'key_norm', 'kv')(k_BTGK)
        if cfg.positions == 'rope':
            frequencies_K2, scale = rope_of_kind(cfg, local)
            q_BTHK = rotate(q_BTHK, positions_BT, frequencies_K2, scale)
            k_BTGK = rotate(k_BTGK, positions_BT, frequencies_K2, scale)
        if cfg.attention_scale:  # every attention path divides the scores by sqrt(K)
            q_BTHK = q_BTHK * jnp.asarray(cfg.attention_scale * cfg.head_dim ** 0.5,
                                          q_BTHK.dtype)
        query_offset, key_segments_BS = 0, segments_BT
        if decode:
            k_BTGK, v_BTGK, key_segments_BS, query_offset = self._extend_cache(
                k_BTGK, v_BTGK, segments_BT)
        masks = dict(key_valid_BS=key_valid_BS, query_segments_BT=segments_BT,
                     key_segments_BS=None if segments_BT is None else key_segments_BS,
                     softcap=cfg.attention_softcap)
        window = lambda kind: cfg.window if kind else 0
        if self.is_mutable_collection('intermediates') and not decode:  # for pictures
            self.sow('intermediates', 'attention_weights', by_kind(local, lambda kind: (
                attention_weights(q_BTHK, k_BTGK, causal=self.causal, window=window(kind),
                                  **masks))))
        in_place = cfg.positions != 'rope' and not cfg.qk_norm and not cfg.attention_scale
        attend = {'einops': einops_attention, 'dot_product': library_attention,
                  'fused': functools.partial(  # the kernel reads the projection in place
                      fused_attention, qkv_BTGCK=qkv_BTGCK if in_place else None)
                  }[cfg.attention]
        out_BTHK = _constrain(by_kind(local, lambda kind: attend(
            q_BTHK, k_BTGK, v_BTGK, causal=self.causal, query_offset=query_offset,
            window=window(kind), **masks)), 'batch', 'length', 'heads', 'kv')
        out_NHK = out_BTHK.reshape(batch * length, cfg.num_heads, cfg.head_dim)
        out_ND = Projection((cfg.num_heads, cfg.head_dim), (width,), ('heads', 'kv', 'embed'),
                            DTYPES[cfg.dtype], DTYPES[cfg.param_dtype], 'out' in cfg.bias,
                            name='out')(out_NHK)
        adapter = _lora(self, cfg, 'out', out_NHK, (cfg.num_heads, cfg.head_dim), (width,),
                        ('heads', 'kv'), ('embed',))
        if adapter is not None:
            out_ND = out_ND + adapter.astype(out_ND.dtype)
        return out_ND.reshape(batch, length, width)

    def _extend_cache(self, k_BTGK, v_BTGK, segments_BT):
        """Decoding: appends this call's keys/values (and segment ids: 0 when not given) to the
        cache; returns the whole cache and the position of this call's first token (causal
        masking hides the unwritten rest)."""
        batch, length, groups, width = k_BTGK.shape
        shape = (batch, self.cfg.max_len, groups, width)
        cached_k = self.variable('cache', 'cached_key', jnp.zeros, shape, k_BTGK.dtype)
        cached_v = self.variable('cache', 'cached_value', jnp.zeros, shape, v_BTGK.dtype)
        cached_segments = self.variable('cache', 'cached_segments', jnp.zeros,
                                        (batch, self.cfg.max_len), jnp.int32)
        index = self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
        start = index.value
        if segments_BT is None:
            segments_BT = jnp.zeros((batch, length), jnp.int32)
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BTGK, (0, start, 0, 0))
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BTGK, (0, start, 0, 0))
        cached_segments.value = jax.lax.dynamic_update_slice(
            cached_segments.value, segments_BT.astype(jnp.int32), (0, start))
        index.value = start + length
        return cached_k.value, cached_v.value, cached_segments.value, start


class Mlp(nn.Module):
    """up (and gate, for SwiGLU and GeGLU) -> activation -> down, on the flattened tokens."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x_BTD):
        cfg = self.cfg
        def dense(features, axes, name):
            def apply(x_NI):
                y_NO = nn.Dense(features, dtype=DTYPES[cfg.dtype],
                                param_dtype=DTYPES[cfg.param_dtype], name=name,
                                use_bias=name in cfg.bias,
                                kernel_init=_init(nn.initializers.lecun_normal(), *axes),
                                bias_init=_init(nn.initializers.zeros, axes[1]),
                                dot_general=projection)(x_NI)
                adapter = _lora(self, cfg, name, x_NI, (x_NI.shape[-1],), (features,),
                                axes[:1], axes[1:])
                return y_NO if adapter is None else y_NO + adapter.astype(y_NO.dtype)
            return apply

        x_ND = x_BTD.reshape(-1, cfg.width)
        h_NF = dense(cfg.mlp_dim, ('embed', 'mlp'), 'up')(x_ND)
        if cfg.mlp in ('swiglu', 'geglu'):
            gate = nn.silu if cfg.mlp == 'swiglu' else nn.gelu  # flax's gelu: the tanh form
            h_NF = gate(dense(cfg.mlp_dim, ('embed', 'mlp'), 'gate')(x_ND)) * h_NF
        else:
            # Recomputed in the backward pass rather than stored: one pass less over the
            # widest activation (the CPU LM step ~2 % faster, benchmarks/README.md).
            h_NF = jax.checkpoint(nn.gelu)(h_NF)
        h_NF = _constrain(h_NF, 'batch', 'mlp')
        return dense(cfg.width, ('mlp', 'embed'), 'down')(h_NF).reshape(x_BTD.shape)


class Block(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x)), with dropout on each branch (with
    post_norms each branch's output normed too). `local`: whether it attends to a window; under
    nn.scan over blocks of both kinds the call's `local_flag` says it instead. Under nn.scan
    (`scanned`) it returns (x, None), as a scanned layer must."""

    cfg: TransformerConfig
    causal: bool
    train: bool
    decode: bool = False
    scanned: bool = False
    local: bool = False

    @nn.compact
    def __call__(self, x_BTD, key_valid_BS, positions_BT, segments_BT, local_flag=None):
        cfg = self.cfg
        drop = nn.Dropout(cfg.dropout, deterministic=not self.train)
        post = (lambda name: _norm(cfg, name)) if cfg.post_norms else (lambda name: lambda x: x)
        y_BTD = Attention(cfg, self.causal, name='attention')(
            _norm(cfg, 'attention_norm')(x_BTD), key_valid_BS, positions_BT, segments_BT,
            local=self.local if local_flag is None else local_flag, decode=self.decode)
        x_BTD = x_BTD + drop(post('attention_post_norm')(y_BTD))
        y_BTD = Mlp(cfg, name='mlp')(_norm(cfg, 'mlp_norm')(x_BTD))
        x_BTD = x_BTD + drop(post('mlp_post_norm')(y_BTD))
        x_BTD = _constrain(x_BTD, 'batch', 'length', None)
        return (x_BTD, None) if self.scanned else x_BTD


class Encoder(nn.Module):
    """Positions (learned, added here; or rotary, inside attention), blocks, final norm.

    With scan_layers the blocks are one nn.scan over stacked parameters ('blocks', leading
    axis 'layers' of size depth): XLA compiles one block instead of depth copies; blocks of
    two kinds (local and global) get their kind as a scanned flag."""

    cfg: TransformerConfig
    causal: bool

    @nn.compact
    def __call__(self, x_BTD, key_valid_BS, positions_BT, train: bool, decode: bool = False,
                 segments_BT=None):
        cfg = self.cfg
        if cfg.positions == 'learned':
            table_LD = self.param('position_embedding', _init(nn.initializers.normal(0.02),
                                                              None, 'embed'),
                                  (cfg.max_len, cfg.width), DTYPES[cfg.param_dtype])
            x_BTD = x_BTD + jnp.take(table_LD, positions_BT, axis=0).astype(x_BTD.dtype)
        x_BTD = nn.Dropout(cfg.dropout, deterministic=not train)(x_BTD)
        block = Block
        if cfg.remat != 'none':
            block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat],
                             prevent_cse=not cfg.scan_layers)
        kinds = [cfg.local(i) for i in range(cfg.depth)]
        if cfg.scan_layers:
            mixed = len(set(kinds)) > 1
            layers = nn.scan(block, variable_axes={'params': 0, 'cache': 0, 'intermediates': 0},
                             split_rngs={'params': True, 'dropout': True},
                             in_axes=(nn.broadcast, nn.broadcast, nn.broadcast,
                                      0 if mixed else nn.broadcast),
                             length=cfg.depth, metadata_params={nn.PARTITION_NAME: 'layers'})
            x_BTD, _ = layers(cfg, self.causal, train, decode, scanned=True, local=kinds[0],
                              name='blocks')(x_BTD, key_valid_BS, positions_BT, segments_BT,
                                             jnp.array(kinds) if mixed else None)
        else:
            for i in range(cfg.depth):
                x_BTD = block(cfg, self.causal, train, decode, local=kinds[i],
                              name=f'block{i}')(x_BTD, key_valid_BS, positions_BT, segments_BT)
        return _norm(cfg, 'final_norm')(x_BTD)


def segment_positions(segments_BT: jax.Array) -> jax.Array:
    """Each token's position within its segment: 0 where the segment id changes (and at the
    start of the row), counting up until the next change."""
    t_BT = jnp.broadcast_to(jnp.arange(segments_BT.shape[1]), segments_BT.shape)
    changes_BT = jnp.concatenate([jnp.ones_like(segments_BT[:, :1], bool),
                                  segments_BT[:, 1:] != segments_BT[:, :-1]], axis=1)
    return t_BT - jax.lax.cummax(jnp.where(changes_BT, t_BT, 0), axis=1)


class TransformerLM(nn.Module):
    """Decoder-only LM: tokens (B, T) -> next-token logits (B, T, V), float32.

    With `decode=True` the call appends to a key/value cache ('cache' collection) and `positions`
    say where the tokens are; see bigjax/sample.py. `segments_BT` (int, (B, T)) packs several
    documents into a row: each token attends only to its own document, and positions restart at
    each document (unless given).
    """

    cfg: TransformerConfig
    vocab_size: int
    causal = True

    def sequence_length(self, input_shape) -> int:
        return input_shape[1]

    @nn.compact
    def __call__(self, tokens_BT, *, train: bool, decode: bool = False, positions_BT=None,
                 segments_BT=None, features: bool = False):
        """Logits; or, with `features`, the final states (B, T, D), the output layer (D, V) in
        the compute dtype and the logits' soft cap, for a loss that never holds every logit
        (metrics.chunked)."""
        cfg = self.cfg
        if positions_BT is None:
            positions_BT = (jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
                            if segments_BT is None else segment_positions(segments_BT))
        embed = nn.Embed(self.vocab_size, cfg.width, dtype=DTYPES[cfg.dtype],
                         param_dtype=DTYPES[cfg.param_dtype], name='token_embedding',
                         embedding_init=_init(nn.initializers.normal(0.02), 'vocab', 'embed'))
        x_BTD = embed(tokens_BT)
        if cfg.embed_scale:  # sqrt(width) rounded to the parameters' dtype, as Gemma's is
            x_BTD = x_BTD * jnp.asarray(cfg.width ** 0.5, DTYPES[cfg.param_dtype]).astype(
                x_BTD.dtype)
        x_BTD = _constrain(x_BTD, 'batch', 'length', None)
        x_BTD = Encoder(cfg, causal=True, name='encoder')(x_BTD, None, positions_BT, train, decode,
                                                          segments_BT)
        x_ND = x_BTD.reshape(-1, cfg.width)
        if cfg.tied_embeddings:
            if features:
                return x_BTD, embed.embedding.T.astype(DTYPES[cfg.dtype]), cfg.logit_softcap
            logits_NV = embed.attend(x_ND)
        else:
            head = Projection((cfg.width,), (self.vocab_size,), ('embed', 'vocab'),
                              DTYPES[cfg.dtype], DTYPES[cfg.param_dtype], name='head')
            if features:
                return x_BTD, head(), cfg.logit_softcap
            logits_NV = head(x_ND)
        logits_BTV = soft_cap(logits_NV.reshape(*tokens_BT.shape, self.vocab_size).astype(
            jnp.float32), cfg.logit_softcap)
        return _constrain(logits_BTV, 'batch', 'length', 'vocab')


def _classify(module: nn.Module, cfg: TransformerConfig, num_classes: int, x_BTD, valid_BT,
              train: bool):
    """Encoder + pooling + head, with their parameters at the top of `module` (class_token,
    encoder, head), so an LM's encoder loads into a classifier by name. 'cls' and 'mean' pooling
    attend both ways behind a class token; 'last' attends causally, like the LM, and reads the
    last valid token (valid tokens come first)."""
    batch = x_BTD.shape[0]
    causal = module.causal
    if not causal:
        class_token = module.param('class_token', _init(nn.initializers.zeros, None, None, 'embed'),
                                   (1, 1, cfg.width), DTYPES[cfg.param_dtype])
        x_BTD = jnp.concatenate([jnp.broadcast_to(class_token, (batch, 1, cfg.width)).astype(
            x_BTD.dtype), x_BTD], 1)
        valid_BT = jnp.concatenate([jnp.ones((batch, 1), bool), valid_BT], 1)
    length = x_BTD.shape[1]
    if length > cfg.max_len:
        raise UserError(f'{length} tokens{"" if causal else " (class token included)"} exceed '
                        f'model.transformer.max_len={cfg.max_len}')
    positions_BT = jnp.broadcast_to(jnp.arange(length), (batch, length))
    # Causally, no valid token sees the padding after it: no key mask needed.
    x_BTD = Encoder(cfg, causal=causal, name='encoder')(x_BTD, None if causal else valid_BT,
                                                        positions_BT, train)
    if cfg.pool == 'cls':
        pooled_BD = x_BTD[:, 0]
    elif cfg.pool == 'last':
        last_B = jnp.maximum(valid_BT.sum(1) - 1, 0)
        pooled_BD = x_BTD[jnp.arange(batch), last_B]
    else:
        weight_BT1 = valid_BT[..., None].astype(x_BTD.dtype)
        pooled_BD = (x_BTD * weight_BT1).sum(1) / weight_BT1.sum(1)
    return nn.Dense(num_classes, dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype],
                    name='head', kernel_init=_init(nn.initializers.zeros, 'embed', None),
                    bias_init=_init(nn.initializers.zeros, None))(pooled_BD).astype(jnp.float32)


class TransformerClassifier(nn.Module):
    """Encoder (or, with pool='last', decoder) classifier: tokens (B, T) with PAD_ID = 0 as
    padding after the text -> class logits (B, C)."""

    cfg: TransformerConfig
    vocab_size: int
    num_classes: int

    @property
    def causal(self) -> bool:
        return self.cfg.pool == 'last'

    def sequence_length(self, input_shape) -> int:
        return input_shape[1] + (0 if self.causal else 1)  # the class token

    @nn.compact
    def __call__(self, tokens_BT, *, train: bool):
        embed = nn.Embed(self.vocab_size, self.cfg.width, dtype=DTYPES[self.cfg.dtype],
                         param_dtype=DTYPES[self.cfg.param_dtype], name='token_embedding',
                         embedding_init=_init(nn.initializers.normal(0.02), 'vocab', 'embed'))
        x_BTD = _constrain(embed(tokens_BT), 'batch', 'length', None)
        return _classify(self, self.cfg, self.num_classes, x_BTD, tokens_BT != 0, train)


class ViT(nn.Module):
    """Vision Transformer: images (B, H, W, C) -> patches -> encoder -> class logits (B, C)."""

    cfg: TransformerConfig
    num_classes: int
    causal = False

    def sequence_length(self, input_shape) -> int:
        return (input_shape[1] // self.cfg.patch_size) * (input_shape[2] // self.cfg.patch_size) + 1

    @nn.compact
    def __call__(self, images_BHWC, *, train: bool):
        cfg = self.cfg
        if cfg.pool == 'last':
            raise UserError("model.transformer.pool='last' is for text classifiers; a ViT "
                            "pools with 'cls' or 'mean'")
        height, width = images_BHWC.shape[1:3]
        if height % cfg.patch_size or width % cfg.patch_size:
            raise UserError(f'model.transformer.patch_size={cfg.patch_size} does not divide the '
                            f'{height}x{width} images')
        patches = nn.Conv(cfg.width, (cfg.patch_size, cfg.patch_size), strides=cfg.patch_size,
                          padding='VALID', dtype=DTYPES[cfg.dtype],
                          param_dtype=DTYPES[cfg.param_dtype], name='patch_embedding',
                          kernel_init=_init(nn.initializers.lecun_normal(),
                                            None, None, None, 'embed'),
                          bias_init=_init(nn.initializers.zeros, 'embed'))(images_BHWC)
        x_BTD = einops.rearrange(patches, 'b h w d -> b (h w) d')
        valid_BT = jnp.ones(x_BTD.shape[:2], bool)
        return _classify(self, cfg, self.num_classes, x_BTD, valid_BT, train)
