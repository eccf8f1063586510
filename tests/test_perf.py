import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import perf, train
from bigjax.errors import UserError
from bigjax.models.transformer import TransformerConfig, TransformerLM
from conftest import load_config


def test_flops_formula_counts_matmul_weights_and_attention():
    cfg = TransformerConfig(width=32, depth=2, num_heads=4, mlp_dim=64, max_len=16)
    params = jax.eval_shape(lambda: TransformerLM(cfg, 50).init(
        jax.random.PRNGKey(0), np.zeros((1, 16), np.int32), train=False))['params']
    params = jax.tree.map(lambda box: box.value if hasattr(box, 'value') else box, params,
                          is_leaf=lambda x: hasattr(x, 'value'))
    per_layer = 4 * 32 * 32 + 2 * 32 * 64  # q, k, v, out; up, down
    matmul = 2 * per_layer + 50 * 32  # + the tied embedding as output layer
    assert perf.matmul_params(params, tied_embeddings=True) == matmul
    assert perf.train_flops_per_token(params, cfg, 16, causal=True) == 6 * matmul + 6 * 2 * 16 * 32


def test_peak_flops(monkeypatch):
    assert perf.peak_flops(123.0) == 123.0
    monkeypatch.setattr(perf, 'measured_matmul_flops', lambda: 4.5e10)
    assert perf.peak_flops(0.0) == 4.5e10  # CPU: a matmul measured now
    fake = types.SimpleNamespace(platform='gpu', device_kind='NVIDIA H100 80GB HBM3')
    assert perf.peak_flops(0.0, [fake] * 8) == 8 * 989e12
    fake.device_kind = 'Mystery Accelerator 9000'
    with pytest.raises(UserError, match="no peak FLOP/s known for 'Mystery Accelerator 9000'.*"
                                        'train.peak_flops'):
        perf.peak_flops(0.0, [fake])


def test_the_measured_peak_is_the_fastest_of_the_timed_products(monkeypatch):
    """2 n^3 FLOPs over the best of the timed runs (times from a fake clock: 3 s, 0.5 s, 2 s)."""
    clock = iter([0.0, 3.0, 10.0, 10.5, 20.0, 22.0])
    monkeypatch.setattr(perf.time, 'perf_counter', lambda: next(clock))
    assert perf.measured_matmul_flops(size=64, repeats=3) == 2 * 64 ** 3 / 0.5
    assert next(clock, 'used up') == 'used up'


def test_matmul_flops_count_every_product_a_step_executes():
    x, w = jnp.ones((32, 64)), jnp.ones((5, 64, 64))
    dense = jax.make_jaxpr(jax.grad(lambda x, w: jnp.tanh(x @ w[0]).sum(), argnums=(0, 1)))(x, w)
    assert perf.matmul_flops(dense) == (3 * 2 * 32 * 64 * 64, False)  # forward, two backward

    def layers(x, w):  # 5 layers scanned, each recomputed in the backward pass
        return jax.lax.scan(jax.checkpoint(lambda h, w: (jnp.tanh(h @ w), None)), x, w)[0].sum()
    assert perf.matmul_flops(jax.make_jaxpr(jax.grad(layers, argnums=(0, 1)))(x, w)) == (
        5 * 4 * 2 * 32 * 64 * 64, False)


def test_profiler_traces_the_requested_steps(tmp_path):
    config = load_config('transformer_cpu', 'smoke')
    config.train.profile_start_step, config.train.profile_steps = 3, 2
    train.run(config, tmp_path)
    [trace] = (tmp_path / 'profile').rglob('*.xplane.pb')
    profile = jax.profiler.ProfileData.from_file(str(trace))
    traced = sorted(dict(event.stats)['step_num'] for plane in profile.planes for line in plane.lines for event in line.events
                    if event.name == 'train')
    assert traced == [3, 4]
