import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from bigjax import optim, parallel, steps
from bigjax.config import default_config
from bigjax.errors import UserError
from bigjax.models.cnn import SimpleCNN


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


def test_same_losses_on_one_device_and_on_an_eight_device_mesh():
    model = SimpleCNN(features=(4, 8), hidden=16, padding='SAME', batch_norm=True, dropout=0.3)
    tx = optim.build_optimizer(default_config().optim, 10)
    rng = np.random.default_rng(0)
    batches = [{'image': rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
                'label': rng.integers(0, 10, 16).astype(np.int32)} for _ in range(4)]
    prepare = lambda batch, rng, train: batch['image']
    step = functools.partial(steps.train_step, model=model, tx=tx, prepare=prepare)

    def losses(mesh):
        replicated = parallel.replicated(mesh)
        state = jax.jit(functools.partial(steps.init_state, model=model, tx=tx,
                                          sample_input=jnp.zeros((1, 8, 8, 1))),
                        out_shardings=replicated)(jax.random.PRNGKey(0))
        step_fn = jax.jit(step, out_shardings=replicated)
        out = []
        for batch in batches:
            state, sums = step_fn(state, parallel.global_batch(batch, mesh))
            out.append(float(sums['loss_sum'] / sums['count']))
        return out

    one = losses(parallel.make_mesh(mesh_config(), devices=jax.devices()[:1]))
    eight = losses(parallel.make_mesh(mesh_config(data=2, fsdp=4)))
    np.testing.assert_allclose(one, eight, rtol=1e-5)
    assert one[-1] < one[0]
