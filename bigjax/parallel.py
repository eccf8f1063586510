"""The device mesh from config, shardings, and global-batch assembly from per-process data.

One code path for every device count: a single device is a mesh of size 1. The batch is split
over the ('data', 'fsdp') axes; parameters are replicated for now.
"""

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bigjax.errors import UserError

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')


def make_mesh(mesh_config, devices=None) -> Mesh:
    """A mesh over all devices with the configured axis sizes (one of them may be -1: the rest)."""
    devices = jax.devices() if devices is None else devices
    sizes = [mesh_config[axis] for axis in AXES]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise UserError(f'mesh sizes {dict(zip(AXES, sizes))} must be positive, with at most one -1')
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise UserError(f'mesh {dict(zip(AXES, sizes))} does not divide the '
                            f'{len(devices)} devices')
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise UserError(f'mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, '
                        f'there are {len(devices)}')
    return Mesh(np.asarray(devices).reshape(sizes), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch dimension is split."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def check_batch_size(name: str, batch_size: int, mesh: Mesh) -> None:
    """Raises UserError unless `batch_size` splits evenly over processes and batch shards."""
    shards = batch_shards(mesh)
    if batch_size <= 0 or batch_size % shards or batch_size % jax.process_count():
        raise UserError(
            f'{name}={batch_size} must be a positive multiple of the {shards} batch shards '
            f"(mesh data x fsdp) and of the {jax.process_count()} processes: try "
            f'{max(shards, batch_size // shards * shards)}')


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {name: jax.make_array_from_process_local_data(sharding, array)
            for name, array in local_batch.items()}
