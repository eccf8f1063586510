"""The fused CPU attention kernel (bigjax/kernels) against the einops reference, and its build."""

import ctypes

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from bigjax import kernels, models, train
from bigjax.errors import UserError
from bigjax.kernels import causal_attention
from bigjax.models import attention
from bigjax.models import transformer as T

pytestmark = pytest.mark.skipif(kernels._compiler() is None, reason='no C++ compiler')


def qkv(batch, length, heads, groups, width, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    return (jax.random.normal(keys[0], (batch, length, heads, width)),
            jax.random.normal(keys[1], (batch, length, groups, width)),
            jax.random.normal(keys[2], (batch, length, groups, width)),
            jax.random.normal(keys[3], (batch, length, heads, width)))


def outputs_and_grads(attend, q, k, v, cotangent):
    out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, causal=True), q, k, v)
    return (out, *vjp(cotangent))


@pytest.mark.parametrize('batch, length, heads, groups, width', [
    (2, 128, 4, 4, 64),  # multi-head, whole blocks
    (2, 100, 8, 2, 32),  # grouped-query heads, a length padded to the block
    (1, 64, 2, 1, 128),  # one key/value head, the widest head
    (3, 70, 4, 2, 16),
])
def test_fused_attention_and_its_gradients_equal_the_einops_reference(batch, length, heads,
                                                                      groups, width):
    q, k, v, cotangent = qkv(batch, length, heads, groups, width)
    fused = jax.jit(lambda *a: outputs_and_grads(attention.fused_attention, *a))(q, k, v, cotangent)
    reference = outputs_and_grads(attention.einops_attention, q, k, v, cotangent)
    for name, ours, theirs in zip(('out', 'dq', 'dk', 'dv'), fused, reference):
        np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-5, err_msg=name)


def test_the_kernel_reads_and_writes_the_packed_projection():
    """Given the fused projection, the kernel attends over it in place: same output, and the
    gradient of the packed array holds dq, dk and dv in their slots."""
    q, k, v, cotangent = qkv(2, 64, 4, 2, 16)
    packed = jnp.concatenate([q.reshape(2, 64, 2, 2, 16), k[:, :, :, None], v[:, :, :, None]], 3)

    def attend(packed):
        q, k, v = packed[:, :, :, :2].reshape(2, 64, 4, 16), packed[:, :, :, 2], packed[:, :, :, 3]
        return causal_attention.causal_attention(q, k, v, purpose='test', qkv_BTGCK=packed)

    out, vjp = jax.vjp(attend, packed)
    (grad,) = vjp(cotangent)
    reference = outputs_and_grads(attention.einops_attention, q, k, v, cotangent)
    np.testing.assert_allclose(out, reference[0], atol=2e-5)
    np.testing.assert_allclose(grad[:, :, :, :2].reshape(2, 64, 4, 16), reference[1], atol=2e-5)
    np.testing.assert_allclose(grad[:, :, :, 2], reference[2], atol=2e-5)
    np.testing.assert_allclose(grad[:, :, :, 3], reference[3], atol=2e-5)


@pytest.mark.parametrize('positions', ['learned', 'rope'])
def test_an_lm_with_fused_attention_matches_the_einops_lm(positions):
    """Same parameters, same logits and gradients, whichever attention the LM uses."""
    def build(attention_name):
        cfg = T.TransformerConfig(width=64, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=128,
                                  max_len=80, positions=positions, attention=attention_name)
        return T.TransformerLM(cfg, 40)

    x = jax.random.randint(jax.random.PRNGKey(1), (2, 80), 0, 40)
    fused, einops_lm = build('fused'), build('einops')
    params = nn.unbox(fused.init(jax.random.PRNGKey(0), x, train=False))['params']
    loss = lambda model: jax.jit(jax.value_and_grad(
        lambda p: jnp.mean(model.apply({'params': p}, x, train=False) ** 2)))
    (value, grads), (reference_value, reference_grads) = loss(fused)(params), loss(einops_lm)(params)
    np.testing.assert_allclose(value, reference_value, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads,
                 reference_grads)


def test_the_kernel_under_a_mesh_equals_the_reference():
    """Sharded inputs (batch over 'data', heads over 'tensor'): XLA gathers them for the call,
    and outputs and gradients stay those of the reference."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ('data', 'tensor'))
    sharding = NamedSharding(mesh, PartitionSpec('data', None, 'tensor', None))
    q, k, v, cotangent = (jax.device_put(x, sharding) for x in qkv(4, 64, 4, 2, 16))
    fused = jax.jit(lambda *a: outputs_and_grads(attention.fused_attention, *a))(q, k, v, cotangent)
    reference = outputs_and_grads(attention.einops_attention, q, k, v, cotangent)
    for ours, theirs in zip(fused, reference):
        np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-5)


def windowed_reference(q_BTHK, k_BTGK, v_BTGK, window, segments_BT=None):
    """softmax over the keys t - window < s <= t (of query t's segment, with ids), directly."""
    repeats = q_BTHK.shape[2] // k_BTGK.shape[2]
    k_BTHK, v_BTHK = jnp.repeat(k_BTGK, repeats, axis=2), jnp.repeat(v_BTGK, repeats, axis=2)
    scores_BHTS = jnp.einsum('bthk,bshk->bhts', q_BTHK, k_BTHK) / np.sqrt(q_BTHK.shape[-1])
    t_T1, s_1S = jnp.arange(q_BTHK.shape[1])[:, None], jnp.arange(k_BTGK.shape[1])[None, :]
    mask_BHTS = ((s_1S <= t_T1) & (t_T1 - s_1S < window))[None, None]
    if segments_BT is not None:
        mask_BHTS = mask_BHTS & (segments_BT[:, None, :, None] == segments_BT[:, None, None, :])
    weights_BHTS = jax.nn.softmax(jnp.where(mask_BHTS, scores_BHTS, -jnp.inf), axis=-1)
    return jnp.einsum('bhts,bshk->bthk', weights_BHTS, v_BTHK)


def packed_segments(length):
    """Two rows of documents whose boundaries fall inside blocks: cuts at 30, 101 and 150 in
    the first, at 140 in the second."""
    cuts = ([30, 101, 150], [140])
    return jnp.stack([jnp.searchsorted(jnp.array(c), jnp.arange(length), side='right')
                      for c in cuts]).astype(jnp.int32)


@pytest.mark.parametrize('segmented', [False, True])
@pytest.mark.parametrize('window', [1, 37, 64, 130])
def test_windowed_attention_and_its_gradients_equal_a_direct_reference(window, segmented):
    """Windows shorter than the length, within a block, a block, and across blocks, on a length
    that is no multiple of the block, with grouped-query heads, alone and with documents."""
    q, k, v, cotangent = qkv(2, 200, 4, 2, 16, seed=window)
    segments_BT = packed_segments(200) if segmented else None
    fused = jax.jit(lambda q, k, v: jax.vjp(lambda q, k, v: causal_attention.causal_attention(
        q, k, v, purpose='test', segments_BT=segments_BT, window=window), q, k, v))
    out, vjp = fused(q, k, v)
    reference, reference_vjp = jax.vjp(
        lambda q, k, v: windowed_reference(q, k, v, window, segments_BT), q, k, v)
    np.testing.assert_allclose(out, reference, atol=1e-5, rtol=1e-5, err_msg='out')
    for name, ours, theirs in zip(('dq', 'dk', 'dv'), vjp(cotangent), reference_vjp(cotangent)):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5, err_msg=name)


def test_the_window_skips_the_key_blocks_outside_it():
    """With W = 64 over four blocks, the last query block never reads key blocks 0 and 1, and
    key block 0 never meets query blocks 2 and 3: NaN there leaves those results untouched (a
    visited block would spread it, masked weights being 0 and 0 * NaN NaN)."""
    q, k, v, dout = qkv(1, 256, 2, 1, 16)

    @jax.jit
    def attend(v, dout):
        out, vjp = jax.vjp(lambda q, k, v: causal_attention.causal_attention(
            q, k, v, purpose='test', window=64), q, k, v)
        return (out, *vjp(dout))

    out, _, dk, dv = attend(v, dout)
    poisoned_out = attend(v.at[:, :128].set(jnp.nan), dout)[0]
    _, _, poisoned_dk, poisoned_dv = attend(v, dout.at[:, 128:].set(jnp.nan))
    np.testing.assert_array_equal(poisoned_out[:, 192:], out[:, 192:])
    np.testing.assert_array_equal(poisoned_dk[:, :64], dk[:, :64])
    np.testing.assert_array_equal(poisoned_dv[:, :64], dv[:, :64])


def test_a_negative_window_is_an_error():
    q, k, v, _ = qkv(1, 64, 2, 1, 16)
    with pytest.raises(ValueError, match='window must be >= 0'):
        causal_attention.causal_attention(q, k, v, purpose='test', window=-1)


def test_cases_the_kernel_does_not_cover_use_the_reference():
    q, k, v, _ = qkv(2, 64, 4, 2, 8)  # head width 8: not built
    valid = jnp.arange(64)[None, :] < jnp.array([[40], [64]])
    for kwargs in ({'causal': True}, {'causal': False, 'key_valid_BS': valid}):
        np.testing.assert_array_equal(attention.fused_attention(q, k, v, **kwargs),
                                      attention.einops_attention(q, k, v, **kwargs))


@pytest.mark.parametrize('avx512', [True, False])
def test_the_kernel_runs_where_the_cpu_has_avx512_and_einops_elsewhere_with_nothing_built(
        monkeypatch, tmp_path, avx512):
    monkeypatch.undo()  # conftest's "always the kernel"
    flags = 'flags\t: fpu sse2 avx2 fma' + (' avx512f avx512bw' if avx512 else '')
    monkeypatch.setattr(kernels, '_cpu_id', lambda: flags)
    assert causal_attention.fast_here() == avx512
    q, k, v, _ = qkv(2, 64, 4, 2, 16)
    fused, reference = (attention.fused_attention(q, k, v, causal=True),
                        attention.einops_attention(q, k, v, causal=True))
    if avx512:  # the kernel: equal to the reference within rounding, not bit for bit
        np.testing.assert_allclose(fused, reference, atol=2e-6)
        assert not np.array_equal(fused, reference)
    else:
        np.testing.assert_array_equal(fused, reference)
        config = load_config('transformer_cpu', 'smoke')
        monkeypatch.setenv('CXX', 'no-such-compiler')  # nothing is built: no error
        monkeypatch.setattr(causal_attention, '_REGISTERED', [])
        models.prepare(config.model, 'cpu')
        assert not causal_attention._REGISTERED


def test_a_missing_compiler_is_one_clear_line_before_any_data_is_read(monkeypatch, tmp_path):
    config = load_config('transformer_cpu', 'smoke')
    config.model.transformer.attention = 'fused'
    config.data.name = 'no_such_dataset'  # would fail later, when the data is opened
    monkeypatch.setenv('CXX', 'no-such-compiler')
    monkeypatch.setenv('BIGJAX_KERNEL_CACHE', str(tmp_path))
    monkeypatch.setattr(causal_attention, '_REGISTERED', [])  # as in a fresh process
    monkeypatch.setattr(kernels, '_LOADED', {})
    with pytest.raises(UserError, match=r"attention='fused' builds a C\+\+ kernel .* no C\+\+ "
                                        r"compiler was found \(CXX='no-such-compiler'\)"):
        train.run(config, str(tmp_path / 'work'))
    assert not (tmp_path / 'work').exists()


def test_a_failed_build_is_a_clear_error_and_leaves_no_partial_library(monkeypatch, tmp_path):
    monkeypatch.setenv('CXX', 'false')  # a "compiler" that always fails
    monkeypatch.setenv('BIGJAX_KERNEL_CACHE', str(tmp_path))
    with pytest.raises(UserError, match='building causal_attention.cc with .*false failed'):
        kernels.build('causal_attention', 'test')
    assert list(tmp_path.iterdir()) == []


def test_builds_are_cached_per_source_and_compiler(monkeypatch, tmp_path):
    """A second build loads the cached library without compiling; an edited source or another
    compiler builds a new one, so a stale kernel is never loaded."""
    monkeypatch.setenv('BIGJAX_KERNEL_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(kernels, 'SOURCE_DIR', str(tmp_path))
    source = tmp_path / 'answer.cc'
    compiles = []
    run = kernels.subprocess.run
    monkeypatch.setattr(kernels.subprocess, 'run',
                        lambda command, **kw: compiles.append(command[0]) or run(command, **kw))

    def built(answer):
        source.write_text(f'extern "C" int answer() {{ return {answer}; }}\n')
        path = kernels.build('answer', 'test')
        return path, ctypes.cdll.LoadLibrary(path).answer()

    first, value = built(1)
    assert value == 1 and len(compiles) == 1
    assert built(1) == (first, 1) and len(compiles) == 1
    edited, value = built(2)
    assert value == 2 and edited != first and len(compiles) == 2
    compiler = tmp_path / 'bin' / 'c++'
    compiler.parent.mkdir()
    compiler.symlink_to(kernels._compiler())
    monkeypatch.setenv('CXX', str(compiler))
    other, value = built(2)
    assert value == 2 and other not in (first, edited) and compiles[-1] == str(compiler)
    assert sorted(p.name for p in (tmp_path / 'cache').iterdir()) == sorted(
        p.rsplit('/', 1)[1] for p in (first, edited, other))
