import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from jax.sharding import NamedSharding, PartitionSpec
from jax.sharding import PartitionSpec as P

from bigjax import optim, parallel, steps, tasks
from bigjax.config import default_config
from bigjax.errors import UserError
from bigjax.models.transformer import TransformerConfig, TransformerLM


def mesh_config(**sizes):
    config = default_config().mesh
    config.update(sizes)
    return config


@pytest.mark.parametrize('sizes, shape', [
    ({}, (8, 1, 1)),
    ({'data': 2, 'fsdp': -1}, (2, 4, 1)),
    ({'data': -1, 'tensor': 2}, (4, 1, 2)),
])
def test_mesh_shapes(sizes, shape):
    mesh = parallel.make_mesh(mesh_config(**sizes))
    assert tuple(mesh.shape.values()) == shape and mesh.axis_names == parallel.AXES


@pytest.mark.parametrize('sizes, message', [
    ({'data': 3}, 'needs 3 devices'),
    ({'data': -1, 'fsdp': 3}, 'does not divide'),
    ({'data': -1, 'fsdp': -1}, 'at most one -1'),
])
def test_bad_mesh_is_a_clear_error(sizes, message):
    with pytest.raises(UserError, match=message):
        parallel.make_mesh(mesh_config(**sizes))


def test_batch_size_check():
    mesh = parallel.make_mesh(mesh_config(data=2, fsdp=2, tensor=2))
    parallel.check_batch_size('train.batch_size', 12, mesh)
    with pytest.raises(UserError, match='multiple of the 4 batch shards'):
        parallel.check_batch_size('train.batch_size', 10, mesh)


def test_global_batch_is_sharded_over_the_batch_axes():
    mesh = parallel.make_mesh(mesh_config())
    batch = parallel.global_batch({'image': np.zeros((16, 4, 4, 1), np.uint8)}, mesh)
    assert batch['image'].shape == (16, 4, 4, 1)
    assert batch['image'].sharding.is_equivalent_to(
        NamedSharding(mesh, PartitionSpec(('data', 'fsdp'))), 4)
    assert {s.data.shape for s in batch['image'].addressable_shards} == {(2, 4, 4, 1)}


def lm_setup(mesh, microbatches=1, logits_chunk=0, **cfg_overrides):
    """A small LM's state born on `mesh` and its jitted train step."""
    cfg = TransformerConfig(**{**dict(width=32, depth=2, num_heads=4, num_kv_heads=2,
                                      mlp_dim=64, max_len=16), **cfg_overrides})
    model = TransformerLM(cfg, vocab_size=64)
    tx = optim.build_optimizer(default_config().optim, 10)
    rules = parallel.sharding_rules(default_config())
    task = tasks.lm(logits_chunk=logits_chunk)
    init = functools.partial(steps.init_state, model=model, tx=tx,
                             sample_input=jnp.zeros((1, 16), jnp.int32), rules=rules, mesh=mesh)
    shardings = parallel.state_shardings(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh, rules)
    state = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(
        jax.random.PRNGKey(0))
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, task=task,
                                     rules=rules, mesh=mesh, microbatches=microbatches),
                   out_shardings=(shardings, parallel.replicated(mesh)))
    return state, step


def lm_batches(count=4, batch=16):
    rng = np.random.default_rng(0)
    return [{'tokens': rng.integers(2, 64, (batch, 17)).astype(np.int32)} for _ in range(count)]


def losses(mesh, **setup_kwargs):
    state, step = lm_setup(mesh, **setup_kwargs)
    out = []
    for batch in lm_batches():
        state, sums = step(state, parallel.global_batch(batch, mesh))
        out.append(float(sums['loss_sum'] / sums['count']))
    return out, state


MESHES = {'data=8': {'data': 8}, 'fsdp=4 x tensor=2': {'data': 1, 'fsdp': 4, 'tensor': 2},
          'data=2 x fsdp=2 x tensor=2': {'data': 2, 'fsdp': 2, 'tensor': 2}}


def test_same_losses_on_one_device_and_on_every_mesh():
    one, _ = losses(parallel.make_mesh(mesh_config(), devices=jax.devices()[:1]))
    assert one[-1] < one[0]
    for name, sizes in MESHES.items():
        np.testing.assert_allclose(losses(parallel.make_mesh(mesh_config(**sizes)))[0], one,
                                   rtol=1e-5, err_msg=name)


def test_parameters_are_sharded_as_the_rules_say():
    state, _ = lm_setup(parallel.make_mesh(mesh_config(data=1, fsdp=4, tensor=2)))
    block = state.params['encoder']['block0']
    assert block['attention']['qkv']['kernel'].sharding.spec == P('fsdp', 'tensor', None, None)
    assert block['attention']['out']['kernel'].sharding.spec == P('tensor', None, 'fsdp')
    assert block['mlp']['up']['kernel'].sharding.spec == P('fsdp', 'tensor')
    assert block['mlp']['down']['kernel'].sharding.spec == P('tensor', 'fsdp')
    assert state.params['token_embedding']['embedding'].sharding.spec == P('tensor', 'fsdp')
    up_shape = block['mlp']['up']['kernel'].shape  # Adam's moments follow their parameter.
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.shape == up_shape]
    assert len(moments) == 2 * 2 and all(m.sharding.spec == P('fsdp', 'tensor') for m in moments)
    shard = block['mlp']['up']['kernel'].addressable_shards[0].data
    assert shard.shape == (32 // 4, 64 // 2)


def test_gradient_accumulation_equals_one_big_batch():
    mesh = parallel.make_mesh(mesh_config())
    whole, whole_state = losses(mesh)
    accumulated, accumulated_state = losses(mesh, microbatches=2)
    np.testing.assert_allclose(accumulated, whole, rtol=1e-5)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
                 accumulated_state.params, whole_state.params)


def test_logits_made_in_chunks_give_the_same_losses_and_updates():
    mesh = parallel.make_mesh(mesh_config(data=2, fsdp=2, tensor=2))
    whole, whole_state = losses(mesh)
    chunked, chunked_state = losses(mesh, logits_chunk=4)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
                 chunked_state.params, whole_state.params)


def test_activations_are_split_over_the_mesh_as_the_rules_say():
    """Under the mesh each device computes the logits of its own rows only (batch 16 over 8
    devices: 2 rows of 16 positions and 64 ids), never the whole batch's."""
    mesh = parallel.make_mesh(mesh_config(data=8))
    state, step = lm_setup(mesh)
    batch = parallel.global_batch(lm_batches(1)[0], mesh)
    program = step.lower(state, batch).compile().as_text()
    assert 'f32[2,16,64]' in program and 'f32[16,16,64]' not in program


def test_microbatches_that_do_not_split_over_the_mesh_are_a_clear_error():
    mesh = parallel.make_mesh(mesh_config())
    with pytest.raises(UserError, match=r'8 batch shards \(mesh data x fsdp\) x 4 microbatches'):
        parallel.check_batch_size('train.batch_size', 16, mesh, microbatches=4)


def test_every_host_of_a_tpu_slice_joins_jax_distributed_without_flags(monkeypatch):
    """The worker list comes from TPU_WORKER_HOSTNAMES (GKE) or the metadata server (TPU VMs);
    one host stays a single process; off a TPU VM nothing is started."""
    from jax._src.clusters import cloud_tpu_cluster
    calls = []
    monkeypatch.setattr(jax.distributed, 'initialize', lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(cloud_tpu_cluster, 'running_in_cloud_tpu_vm', True)
    for name in ('TPU_SKIP_MDS_QUERY', 'TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES',
                 'MEGASCALE_NUM_SLICES'):
        monkeypatch.delenv(name, raising=False)
    metadata = {'agent-worker-number': '1', 'worker-network-endpoints': 'w0,w1,w2,w3',
                'tpu-env': ''}
    monkeypatch.setattr(cloud_tpu_cluster, 'get_metadata', lambda key: (metadata[key], 200))

    def joined() -> bool:
        calls.clear()
        parallel.initialize_distributed()
        assert calls in ([], [((), {})])
        return bool(calls)

    assert parallel.tpu_slice_hosts() == 4 and joined()
    metadata['worker-network-endpoints'] = 'w0'
    assert not joined()
    monkeypatch.setenv('MEGASCALE_NUM_SLICES', '2')  # two single-host slices
    assert parallel.tpu_slice_hosts() == 2 and joined()
    monkeypatch.delenv('MEGASCALE_NUM_SLICES')
    monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'h0,h1')  # GKE, no metadata server needed
    monkeypatch.setattr(cloud_tpu_cluster, 'get_metadata', lambda key: ('', 404))
    assert joined()
    monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'h0')
    assert not joined()
    monkeypatch.setattr(cloud_tpu_cluster, 'running_in_cloud_tpu_vm', False)
    monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'h0,h1')
    assert not joined()
