import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from bigjax import parallel, sample
from bigjax.config import check, default_config
from bigjax.errors import UserError
from bigjax.models import attention, transformer as T


def config(**overrides):
    return T.TransformerConfig(**{**dict(width=32, depth=2, num_heads=4, mlp_dim=64,
                                         max_len=24), **overrides})


def lm(cfg, vocab=50):
    model = T.TransformerLM(cfg, vocab)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32),
                                 train=False))['params']
    return model, params


def tokens(shape, seed=1, vocab=50):
    return jax.random.randint(jax.random.PRNGKey(seed), shape, 2, vocab)


def qkv(batch=2, length=64, heads=4, groups=2, width=8):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    return (jax.random.normal(keys[0], (batch, length, heads, width)),
            jax.random.normal(keys[1], (batch, length, groups, width)),
            jax.random.normal(keys[2], (batch, length, groups, width)))


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('groups', [4, 2, 1])
def test_einops_attention_equals_jax_dot_product_attention(causal, groups):
    q, k, v = qkv(groups=groups)
    valid = None if causal else jnp.arange(64)[None, :] < jnp.array([[50], [64]])
    ours = attention.einops_attention(q, k, v, causal=causal, key_valid_BS=valid)
    theirs = attention.library_attention(q, k, v, causal=causal, key_valid_BS=valid)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_blocked_causal_attention_equals_the_masked_full_computation():
    q, k, v = qkv(length=128)  # 4 query blocks of 32
    full = attention.einops_attention(q, k, v, causal=True, query_offset=jnp.int32(0))  # unblocked path
    np.testing.assert_allclose(attention.einops_attention(q, k, v, causal=True), full, atol=1e-5)


def direct_attention(q, k, v, window, softcap, segments=None):
    """Local causal attention written out: query t sees key s when 0 <= t - s < window (and the
    segments match), scores soft-capped: the reference of every attention path."""
    k, v = (jnp.repeat(x, q.shape[2] // x.shape[2], axis=2) for x in (k, v))
    scores = jnp.einsum('bthk,bshk->bhts', q, k) / np.sqrt(q.shape[-1])
    scores = softcap * jnp.tanh(scores / softcap) if softcap else scores
    t, s = np.arange(q.shape[1])[:, None], np.arange(k.shape[1])[None, :]
    allowed = (t >= s) & (t - s < window)
    if segments is not None:
        allowed = allowed & (segments[:, None, :, None] == segments[:, None, None, :])
    weights = jax.nn.softmax(jnp.where(allowed, scores, -1e30), axis=-1)
    return jnp.einsum('bhts,bshk->bthk', weights, v)


@pytest.mark.parametrize('window, softcap', [(37, 1.5), (300, 0.0)])
def test_every_attention_path_honours_windows_and_soft_caps(window, softcap):
    """einops (query blocks that skip keys outside the window), jax.nn.dot_product_attention
    and, in Pallas' interpreter, TPU splash attention (a local mask, the kernel's soft cap):
    the direct computation's outputs, with packed documents too."""
    q, k, v = qkv(batch=2, length=256, heads=4, groups=2, width=32)
    q = q * 3  # scores large enough for the cap to bind
    segments = 1 + (jnp.arange(256)[None, :] >= jnp.array([[100], [256]]))
    for ids in (None, segments):
        expected = direct_attention(q, k, v, window, softcap, ids)
        masks = dict(query_segments_BT=ids, key_segments_BS=ids, window=window, softcap=softcap)
        for attend in (attention.einops_attention, attention.library_attention):
            np.testing.assert_allclose(attend(q, k, v, causal=True, **masks), expected,
                                       atol=2e-5, err_msg=attend.__name__)
        splash = attention.splash_attention(q, k, v, causal=True, segments_BT=ids,
                                            window=window, softcap=softcap, interpret=True)
        np.testing.assert_allclose(splash, expected, atol=2e-5, err_msg='splash')


def test_blocks_of_two_kinds_scan_as_one_and_match_the_unrolled_model():
    """Gemma-3-like local/global layers (every 3rd global, its own rotary base, scaled): under
    scan_layers each block's kind is a scanned flag; the logits and a KV-cache decode equal the
    unrolled model's, whose blocks know their kind statically."""
    overrides = dict(positions='rope', norm='rmsnorm', mlp='geglu', depth=3, window=5,
                     global_every=3, rope_local_theta=100.0, rope_scaling='linear',
                     rope_factor=4.0, qk_norm=True, post_norms=True, embed_scale=True,
                     attention_softcap=2.0, logit_softcap=5.0, head_width=16)
    unrolled, params = lm(config(**overrides))
    scanned = T.TransformerLM(config(**overrides, scan_layers=True), 50)
    stacked = jax.tree.map(lambda *layers: jnp.stack(layers), *(
        params['encoder'][f'block{i}'] for i in range(3)))
    scanned_params = {**params, 'encoder': {'final_norm': params['encoder']['final_norm'],
                                            'blocks': stacked}}
    x = tokens((2, 16))
    np.testing.assert_allclose(scanned.apply({'params': scanned_params}, x, train=False),
                               unrolled.apply({'params': params}, x, train=False), atol=1e-5)
    generated = [sample.generate(model, p, x[:, :3], jax.random.PRNGKey(0), num_tokens=6,
                                 temperature=0.0, top_k=0)
                 for model, p in ((unrolled, params), (scanned, scanned_params))]
    np.testing.assert_array_equal(*generated)


@pytest.mark.parametrize('overrides', [{}, {'positions': 'rope', 'mlp': 'swiglu',
                                            'norm': 'rmsnorm', 'num_kv_heads': 2},
                                       {'attention': 'dot_product', 'tied_embeddings': False}])
def test_lm_is_causal(overrides):
    model, params = lm(config(**overrides))
    x = tokens((2, 16))
    y = x.at[:, 10].set((x[:, 10] + 1) % 50)  # change token 10 only
    apply = jax.jit(lambda x: model.apply({'params': params}, x, train=False))
    logits_x, logits_y = apply(x), apply(y)
    np.testing.assert_array_equal(logits_x[:, :10], logits_y[:, :10])
    assert not np.allclose(logits_x[:, 10:], logits_y[:, 10:])


def test_classifier_ignores_padding():
    cfg = config(max_len=40)
    model = T.TransformerClassifier(cfg, vocab_size=50, num_classes=3)
    x = jnp.concatenate([tokens((2, 12)), jnp.zeros((2, 4), jnp.int32)], axis=1)
    params = model.init(jax.random.PRNGKey(0), x, train=False)
    longer = jnp.concatenate([x, jnp.zeros((2, 20), jnp.int32)], axis=1)  # more padding
    np.testing.assert_allclose(model.apply(params, x, train=False),
                               model.apply(params, longer, train=False), atol=1e-5)
    assert model.apply(params, x, train=False).shape == (2, 3)


def test_decoder_classifier_reads_the_lms_last_state():
    """pool='last': the LM's encoder run causally, its state at the last token (before the
    padding) into the head; padding changes nothing; every token matters; no class token."""
    cfg = config(pool='last', max_len=16)
    model = T.TransformerClassifier(cfg, vocab_size=50, num_classes=3)
    x = jnp.concatenate([tokens((2, 12)), jnp.zeros((2, 4), jnp.int32)], axis=1)
    x = x.at[1, 9:].set(0)  # example 1 has 9 tokens
    params = nn.unbox(model.init(jax.random.PRNGKey(0), x, train=False))['params']
    assert 'class_token' not in params and model.sequence_length(x.shape) == 16
    head = {'kernel': jax.random.normal(jax.random.PRNGKey(3), (32, 3)), 'bias': jnp.zeros(3)}
    params = {**params, 'head': head}
    logits = model.apply({'params': params}, x, train=False)
    lm_model = T.TransformerLM(cfg, 50)
    lm_params = {k: v for k, v in params.items() if k != 'head'}
    _, state = lm_model.apply({'params': lm_params}, x, train=False,
                              capture_intermediates=True)
    hidden_BTD = state['intermediates']['encoder']['__call__'][0]
    expected = jnp.stack([hidden_BTD[0, 11], hidden_BTD[1, 8]]) @ head['kernel']
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.apply({'params': params}, x[1:2, :9], train=False),
                               logits[1:2], rtol=1e-5, atol=1e-5)  # unpadded
    changed = model.apply({'params': params}, x.at[:, 0].set((x[:, 0] + 1) % 48 + 2),
                          train=False)
    assert all(not np.allclose(changed[i], logits[i]) for i in range(2))
    with pytest.raises(UserError, match="pool='last' is for text classifiers"):
        T.ViT(config(pool='last'), num_classes=2).init(jax.random.PRNGKey(0),
                                                       jnp.zeros((1, 8, 8, 1)), train=False)
    vit_config = default_config()
    vit_config.model.name, vit_config.model.transformer.pool = 'vit', 'last'
    with pytest.raises(UserError, match="pool='last' .* is for transformer_classifier"):
        check(vit_config)  # before any data is read


def test_vit_shapes_and_patch_error():
    model = T.ViT(config(patch_size=2, max_len=17), num_classes=10)
    images = jnp.zeros((3, 8, 8, 1))
    params = model.init(jax.random.PRNGKey(0), images, train=False)
    assert model.apply(params, images, train=False).shape == (3, 10)
    assert model.sequence_length(images.shape) == 17
    with pytest.raises(UserError, match='patch_size=2 does not divide the 9x9 images'):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 9, 9, 1)), train=False)


@pytest.mark.parametrize('positions', ['learned', 'rope'])
def test_kv_cache_decoding_equals_full_recomputation(positions):
    model, params = lm(config(positions=positions, num_kv_heads=2))
    prompt = tokens((3, 5))
    cached = sample.generate(model, params, prompt, jax.random.PRNGKey(2), num_tokens=10,
                             temperature=0.0)
    apply = jax.jit(lambda x: model.apply({'params': params}, x, train=False))
    full = prompt
    for _ in range(10):
        logits = apply(full)
        full = jnp.concatenate([full, jnp.argmax(logits[:, -1], -1)[:, None].astype(jnp.int32)],
                               axis=1)
    np.testing.assert_array_equal(cached, full)


@pytest.mark.parametrize('positions', ['learned', 'rope'])
def test_prompts_of_different_lengths_batched_left_padded_answer_as_each_alone(positions):
    """Batched answers (chat_eval): left padding is a segment no prompt token sees and positions
    start at each prompt's first token, so each row generates what its prompt alone does; a row
    stops at its first stop id and repeats it, while the others go on."""
    model, params = lm(config(positions=positions, num_kv_heads=2))
    prompts = [tokens((1, n), seed=n)[0] for n in (3, 7, 5)]
    alone = [np.asarray(sample.generate(model, params, p[None], jax.random.PRNGKey(0),
                                        num_tokens=6, temperature=0.0))[0, len(p):]
             for p in prompts]
    rows = np.zeros((3, 7), np.int32)
    for i, p in enumerate(prompts):
        rows[i, 7 - len(p):] = p
    lengths = jnp.asarray([len(p) for p in prompts])
    batched = np.asarray(sample.generate(model, params, jnp.asarray(rows), jax.random.PRNGKey(0),
                                         num_tokens=6, temperature=0.0, lengths_B=lengths))
    np.testing.assert_array_equal(batched[:, 7:], np.stack(alone))
    stop = int(alone[1][2])  # the third token row 1 draws
    stopped = np.asarray(sample.generate(
        model, params, jnp.asarray(rows), jax.random.PRNGKey(0), num_tokens=6, temperature=0.0,
        lengths_B=lengths, stop_ids=(stop,)))[:, 7:]
    for row, expected in zip(stopped, alone):
        hits = np.flatnonzero(expected == stop)
        cut = hits[0] + 1 if len(hits) else 6
        np.testing.assert_array_equal(row[:cut], expected[:cut])
        assert (row[cut:] == stop).all()
    assert (stopped[1, 2:] == stop).all()


def test_sampling_past_max_len_slides_a_window():
    """Within max_len, generate_any_length is generate; past it, each new token follows the
    last max_len // 2 tokens (checked greedily against recomputation on those windows). It
    compiles once for the prompt and once for the sliding windows, the last one included."""
    model, params = lm(config())  # max_len 24
    prompt = tokens((2, 5))
    compiled = sample.generate._cache_size()
    out = sample.generate_any_length(model, params, prompt, jax.random.PRNGKey(0),
                                     num_tokens=40, temperature=0.0)  # 19 + 12 + 9 of 12
    assert out.shape == (2, 45)
    assert sample.generate._cache_size() - compiled == 2
    np.testing.assert_array_equal(out[:, :24], sample.generate(
        model, params, prompt, jax.random.PRNGKey(0), num_tokens=19, temperature=0.0))
    apply = jax.jit(lambda x: model.apply({'params': params}, x, train=False))
    window = out[:, 24 - 12:24]  # the cache was full: the next token follows the last 12
    np.testing.assert_array_equal(out[:, 24], jnp.argmax(apply(window)[:, -1], -1))


def test_sampling_respects_top_k_and_the_rng():
    model, params = lm(config())
    prompt = tokens((4, 3))
    a = sample.generate(model, params, prompt, jax.random.PRNGKey(5), num_tokens=8,
                        temperature=1.0, top_k=1)
    greedy = sample.generate(model, params, prompt, jax.random.PRNGKey(6), num_tokens=8,
                             temperature=0.0)
    np.testing.assert_array_equal(a, greedy)  # top-1 sampling is greedy whatever the rng
    b = sample.generate(model, params, prompt, jax.random.PRNGKey(5), num_tokens=8)
    np.testing.assert_array_equal(b, sample.generate(model, params, prompt, jax.random.PRNGKey(5),
                                                     num_tokens=8))
    logits = jnp.array([[0.0, 1.0, 5.0, 2.0]])
    draws = [int(sample.next_token(logits, jax.random.PRNGKey(i), 1.0, 2)[0]) for i in range(40)]
    assert set(draws) <= {2, 3} and len(set(draws)) == 2


def stacked(params, depth: int):
    """Params of blocks apart (block<i>) in the scan_layers layout: encoder/blocks, with the
    layer axis first."""
    encoder = dict(params['encoder'])
    blocks = [encoder.pop(f'block{i}') for i in range(depth)]
    return {**params, 'encoder': {**encoder, 'blocks': jax.tree.map(
        lambda *layers: jnp.stack(layers), *blocks)}}


@pytest.mark.parametrize('remat', ['none', 'block', 'dots'])
def test_scanned_layers_compute_what_blocks_apart_compute(remat):
    x = tokens((2, 16))
    model, params = lm(config(num_kv_heads=2))
    scanned = T.TransformerLM(config(num_kv_heads=2, scan_layers=True, remat=remat), 50)
    fresh = nn.unbox(scanned.init(jax.random.PRNGKey(0), x, train=False))['params']
    params_scanned = stacked(params, 2)
    assert jax.tree.map(jnp.shape, params_scanned) == jax.tree.map(jnp.shape, fresh)
    np.testing.assert_allclose(scanned.apply({'params': params_scanned}, x, train=False),
                               model.apply({'params': params}, x, train=False), atol=1e-5)
    loss = lambda m: lambda p: m.apply({'params': p}, x, train=False).std()
    np.testing.assert_allclose(
        jax.grad(loss(scanned))(params_scanned)['encoder']['blocks']['mlp']['up']['kernel'],
        stacked(jax.grad(loss(model))(params), 2)['encoder']['blocks']['mlp']['up']['kernel'],
        rtol=1e-4, atol=1e-6)
    prompt = tokens((1, 5))
    greedy = [sample.generate(m, p, prompt, jax.random.PRNGKey(0), num_tokens=6, temperature=0)
              for m, p in ((model, params), (scanned, params_scanned))]
    np.testing.assert_array_equal(*greedy)


@pytest.mark.parametrize('remat, policy', [('none', None), ('block', 'policy=None'),
                                           ('dots', 'DotsSaveable(only_if_no_batch_dims=True)')])
def test_remat_policies_recompute_as_named_and_keep_the_gradients(remat, policy):
    x = tokens((2, 16))
    base, params = lm(config(mlp='swiglu'))
    model = T.TransformerLM(config(mlp='swiglu', remat=remat), 50)
    grad = lambda m: jax.grad(lambda p: m.apply({'params': p}, x, train=False).std())
    program = str(jax.make_jaxpr(grad(model))(params))
    assert (policy in program) if policy else 'policy=' not in program
    np.testing.assert_allclose(grad(model)(params)['encoder']['block1']['mlp']['gate']['kernel'],
                               grad(base)(params)['encoder']['block1']['mlp']['gate']['kernel'],
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('tied, cap', [(True, 0.0), (False, 0.0), (False, 0.5)])
def test_features_and_output_layer_give_the_logits(tied, cap):
    x = tokens((2, 16))
    model, params = lm(config(tied_embeddings=tied, logit_softcap=cap))
    hidden_BTD, unembed_DV, softcap = model.apply({'params': params}, x, train=False,
                                                  features=True)
    logits = model.apply({'params': params}, x, train=False)
    np.testing.assert_allclose(attention.soft_cap(hidden_BTD @ unembed_DV, softcap), logits,
                               atol=1e-5)
    assert softcap == cap and (not cap or np.abs(logits).max() < cap)


def test_splash_attention_equals_the_reference_on_a_mesh():
    """The TPU kernel in Pallas' interpreter, sharded over data x fsdp x tensor (8 devices):
    causal, with key padding, and causal with packed documents (segment ids, padding after)."""
    q, k, v = qkv(batch=4, length=256, heads=4, groups=2, width=32)
    valid = jnp.arange(256)[None, :] < jnp.array([[256], [200], [130], [5]])
    cuts = jnp.array([[100, 256], [256, 256], [5, 250], [128, 200]])
    segments = (1 + (jnp.arange(256)[None, :, None] >= cuts[:, None, :]).sum(-1)) * (
        jnp.arange(256)[None, :] < jnp.array([[256], [236], [256], [200]]))
    mesh_config = default_config()
    mesh_config.mesh.data, mesh_config.mesh.fsdp, mesh_config.mesh.tensor = 2, 2, 2
    mesh = parallel.make_mesh(mesh_config.mesh)
    rules = parallel.sharding_rules(mesh_config)
    on_mesh = jax.device_put((q, k, v), NamedSharding(mesh, PartitionSpec(('data', 'fsdp'))))
    for causal, key_valid, ids in ((True, None, None), (False, valid, None),
                                   (True, None, segments)):
        def loss(q, k, v, attend):
            return (attend(q, k, v, causal=causal, key_valid_BS=key_valid, query_segments_BT=ids,
                           key_segments_BS=ids) ** 2).sum()

        splash = lambda q, k, v, query_segments_BT, key_segments_BS, **kw: (
            attention.splash_attention(q, k, v, segments_BT=query_segments_BT, interpret=True,
                                       **kw))
        with parallel.layout(mesh, rules):
            out, grads = jax.jit(jax.value_and_grad(functools.partial(loss, attend=splash),
                                                    argnums=(0, 1, 2)))(*on_mesh)
        reference = jax.value_and_grad(functools.partial(loss, attend=attention.einops_attention),
                                       argnums=(0, 1, 2))(q, k, v)
        np.testing.assert_allclose(out, reference[0], rtol=1e-5)
        for got, want in zip(grads, reference[1]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bf16_compute_runs_every_matmul_in_bf16_and_returns_float32_logits():
    """dtype='bfloat16' changes the arithmetic, not the model: each matrix product is computed
    in bf16 (none is with float32), the logits come back in float32 for the loss and stay within
    bf16's precision of the float32 model's. (remat: test_remat_policies_... above.)"""
    x = tokens((2, 16))
    base_model, params = lm(config())
    bf16_model = T.TransformerLM(config(dtype='bfloat16'), 50)
    products = lambda model: re.findall(r'(\w+)\[[\d,]*\] = dot_general', str(jax.make_jaxpr(
        lambda p: model.apply({'params': p}, x, train=False))(params)))
    assert set(products(base_model)) == {'f32'} and products(bf16_model) == ['bf16'] * len(
        products(base_model))
    bf16 = bf16_model.apply({'params': params}, x, train=False)
    f32 = base_model.apply({'params': params}, x, train=False)
    assert bf16.dtype == jnp.float32 and not np.array_equal(bf16, f32)
    np.testing.assert_allclose(bf16, f32, atol=0.02 * np.abs(f32).max())


@pytest.mark.parametrize('overrides, message', [
    ({'num_heads': 3}, 'num_heads=3 does not divide width=32'),
    ({'num_kv_heads': 3}, 'num_kv_heads=3 does not divide num_heads=4'),
    ({'mlp': 'relu'}, 'model.transformer.mlp'),
    ({'dtype': 'float16'}, 'model.transformer.dtype'),
    ({'dropout': 1.0}, 'dropout'),
    ({'bias': ('qkv', 'head')}, r"bias=\('qkv', 'head'\) must be a subset"),
    ({'norm_eps': 0.0}, 'norm_eps=0.0'),
])
def test_bad_transformer_config_is_a_clear_error(overrides, message):
    with pytest.raises(UserError, match=message):
        config(**overrides).check()
