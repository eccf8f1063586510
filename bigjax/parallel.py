"""Devices: multi-host start-up, the mesh from config, shardings, global-batch assembly.

One code path for every device count: a single device is a mesh of size 1. The batch is split
over the ('data', 'fsdp') axes; parameters follow `config.sharding_rules`, which map the logical
axis names models give them ('embed', 'heads', 'mlp', 'vocab', ...) onto mesh axes.
"""

import collections
import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bigjax import pytree
from bigjax.errors import UserError

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')


def make_mesh(mesh_config, devices=None) -> Mesh:
    """A mesh over all devices with the configured axis sizes (one of them may be -1: the rest).

    On TPUs the mesh follows the physical topology (mesh_utils), so neighbouring mesh
    positions are neighbours on the chip interconnect; across several slices the 'data' axis
    spans the slices (data-center network) and the rest stays inside each slice."""
    devices = jax.devices() if devices is None else list(devices)
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
    return Mesh(_device_array(devices, sizes), AXES)


def _device_array(devices: list, sizes: list[int]) -> np.ndarray:
    if devices[0].platform != 'tpu':
        return np.asarray(devices).reshape(sizes)
    slices = len({getattr(d, 'slice_index', 0) or 0 for d in devices})
    if slices > 1:
        if sizes[0] % slices:
            raise UserError(f'{slices} TPU slices need mesh.data to be a multiple of {slices} '
                            f'(data parallel across slices); it is {sizes[0]}')
        return mesh_utils.create_hybrid_device_mesh(
            [sizes[0] // slices, *sizes[1:]], [slices, 1, 1], devices)
    try:
        return mesh_utils.create_device_mesh(sizes, devices)
    except (AssertionError, ValueError, NotImplementedError):  # axes that cut physical ones
        return mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)


def sharding_rules(config) -> tuple:
    """config.sharding_rules as flax expects them: ((logical, mesh axes or None), ...)."""
    rules = []
    for rule in config.sharding_rules:
        if len(rule) != 2:
            raise UserError(f'sharding rule {rule!r} must be (logical axis, mesh axes)')
        logical, axes = rule
        axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
        for axis in (axes if isinstance(axes, tuple) else (axes,)):
            if axis is not None and axis not in AXES:
                raise UserError(f'sharding rule {rule!r} names mesh axis {axis!r}, not one of '
                                f'{AXES}')
        rules.append((logical, axes))
    return tuple(rules)


@contextlib.contextmanager
def layout(mesh: Mesh | None, rules: tuple):
    """Traces models with their logical activation constraints applied on `mesh` as `rules`
    say (flax drops every constraint when no mesh is in context). mesh=None, or a call outside
    jit / eval_shape (where constraints mean nothing): rules only."""
    tracing = isinstance(jax.numpy.zeros((), bool), jax.core.Tracer)
    with nn.logical_axis_rules(rules):
        if mesh is None or not tracing:
            yield
        else:
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                yield


def state_shardings(abstract_state, mesh: Mesh, rules: tuple):
    """Shardings for a state traced with logical-axis boxes (see steps.init_state): boxed arrays
    are laid out as the rules say, everything else is replicated. Same tree as nn.unbox(state)."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_state), mesh, rules)


def check_divisible(abstract_params, shardings) -> None:
    """Raises UserError for a parameter whose sharded dimensions the mesh cannot split evenly."""
    for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                                      jax.tree.leaves(shardings)):
        for size, axes in zip(leaf.shape, sharding.spec):
            names = axes if isinstance(axes, tuple) else (axes,)
            ways = math.prod(sharding.mesh.shape[a] for a in names if a is not None)
            if size % ways:
                name = pytree.path_name(path)
                raise UserError(
                    f'parameter {name} {tuple(leaf.shape)} cannot be split {ways} ways over mesh '
                    f'axes {axes} (dimension {size}): change config.mesh or the model size, or '
                    'map that logical axis to None in config.sharding_rules')


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch dimension is split."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def check_batch_size(name: str, batch_size: int, mesh: Mesh, microbatches: int = 1) -> None:
    """Raises UserError unless `batch_size` splits evenly over processes, batch shards and
    microbatches (each microbatch must still split over the batch shards)."""
    shards = batch_shards(mesh) * microbatches
    if batch_size <= 0 or batch_size % shards or batch_size % jax.process_count():
        micro = f' x {microbatches} microbatches' if microbatches > 1 else ''
        raise UserError(
            f'{name}={batch_size} must be a positive multiple of the {batch_shards(mesh)} batch '
            f'shards (mesh data x fsdp){micro} and of the {jax.process_count()} processes: try '
            f'{max(shards, batch_size // shards * shards)}')


def replicate_small(arrays: dict[str, np.ndarray], mesh: Mesh, max_mb: float) -> dict | None:
    """The arrays copied to every device of the mesh if together they take at most `max_mb`
    megabytes (every process passes the same arrays); None if they are larger."""
    if sum(a.nbytes for a in arrays.values()) > max_mb * 2 ** 20:
        return None
    return {name: jax.make_array_from_callback(a.shape, replicated(mesh),
                                               lambda index, a=a: a[index])
            for name, a in arrays.items()}


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {name: jax.make_array_from_process_local_data(sharding, array)
            for name, array in local_batch.items()}


class DispatchLimit:
    """Keeps at most `limit` steps in flight: adding a step's output waits for the one `limit`
    steps back. The host still runs ahead of the devices, but XLA:CPU cannot deadlock: with many
    queued multi-device programs that hold collectives it can (seen with jax 0.10.2, even on 2
    host devices), and two in flight costs nothing on any backend."""

    def __init__(self, limit: int = 2):
        self.limit, self.outputs = limit, collections.deque()

    def add(self, output) -> None:
        self.outputs.append(output)
        if len(self.outputs) > self.limit:
            jax.block_until_ready(self.outputs.popleft())


def initialize_distributed(coordinator_address: str = '', num_processes: int = 0,
                           process_id: int = -1) -> None:
    """Joins a multi-process run before any device is touched.

    With `num_processes` > 1 the coordinator, count and id are given (GPU clusters, or several
    processes on one CPU machine). On a Cloud TPU slice of several hosts every process joins with
    no flags: jax.distributed.initialize() finds the hosts itself. Otherwise (one process, one
    TPU host) nothing is done.
    """
    if num_processes > 1:
        if not coordinator_address or not 0 <= process_id < num_processes:
            raise UserError('a multi-process run needs --coordinator_address=HOST:PORT and '
                            f'--process_id in [0, {num_processes})')
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU devices only
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif tpu_slice_hosts() > 1:
        jax.distributed.initialize()


def tpu_slice_hosts() -> int:
    """Hosts of the Cloud TPU slice this runs on (all slices of a multislice run; 1 off a TPU VM),
    found as jax.distributed.initialize() finds them: the worker list in TPU_WORKER_HOSTNAMES
    (GKE) or the VM's metadata server."""
    from jax._src.clusters import cloud_tpu_cluster  # jax's own detection, so both agree
    for cluster in (cloud_tpu_cluster.GkeTpuCluster, cloud_tpu_cluster.GceTpuCluster):
        if cluster.is_env_present():
            return cluster.get_process_count()
    return 1
