"""The collectives of a compiled program (bigjax/comms.py): what the step-time estimate of
--mode=compile times at the interconnect's bandwidth."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bigjax import comms, hardware


def _compiled_text(fn, mesh, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, P('data', 'fsdp')))
    return jax.jit(fn).lower(x).compile().as_text()


def test_collectives_over_named_mesh_axes_are_parsed_with_their_bytes_axes_and_counts():
    """On the 8 CPU devices as a 2 x 4 mesh, a float32 block of 4 x 32 per device (512 bytes):
    a psum over fsdp, a gather over data, a reduce-scatter over fsdp, and a psum over both axes
    in a loop of 3 — each found once, with exact bytes, group size, axes and executions."""
    mesh = Mesh(np.asarray(jax.devices()).reshape(2, 4), ('data', 'fsdp'))

    def body(a):
        def step(_, carry):
            return jax.lax.psum(carry, ('data', 'fsdp')) * 0.5
        return (jax.lax.psum(a, 'fsdp'), jax.lax.all_gather(a, 'data', tiled=True),
                jax.lax.psum_scatter(a * 2, 'fsdp', scatter_dimension=1, tiled=True),
                jax.lax.fori_loop(0, 3, step, a * 3))

    fn = jax.shard_map(body, mesh=mesh, in_specs=P('data', 'fsdp'), check_vma=False,
                       out_specs=(P('data'), P(None, 'fsdp'), P('data', 'fsdp'), P()))
    found = comms.collectives(_compiled_text(fn, mesh, (8, 128)), mesh)
    assert sorted((c.op, c.bytes, c.group_size, c.axes, c.count, c.crosses_slices)
                  for c in found) == [
        ('all-gather', 1024, 2, ('data',), 1, False),
        ('all-reduce', 512, 4, ('fsdp',), 1, False),
        ('all-reduce', 512, 8, ('data', 'fsdp'), 3, False),
        ('reduce-scatter', 512, 4, ('fsdp',), 1, False)]


SCHEDULED = '''HloModule m, is_scheduled=true

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%fused (p: f32[256]) -> f32[256] {
  %p = f32[256]{0} parameter(0)
  ROOT %n = f32[256]{0} negate(f32[256]{0} %p)
}

ENTRY %main (x: f32[256]) -> (f32[1024], f32[1024]) {
  %x = f32[256]{0} parameter(0)
  %ag-start = (f32[256]{0}, f32[1024]{0}) all-gather-start(f32[256]{0} %x), channel_id=1, replica_groups=[2,4]<=[4,2]T(1,0), dimensions={0}, use_global_device_ids=true
  %f = f32[256]{0} fusion(f32[256]{0} %x), kind=kLoop, calls=%fused
  %ag-done = f32[1024]{0} all-gather-done((f32[256]{0}, f32[1024]{0}) %ag-start)
  %ar-start = f32[1024]{0} all-reduce-start(%ag-done), channel_id=2, replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([4,2]T(1,0)) {'axis_0'}, use_global_device_ids=true, to_apply=%add
  %ar-done = f32[1024]{0} all-reduce-done(%ar-start)
  ROOT %t = (f32[1024]{0}, f32[1024]{0}) tuple(f32[1024]{0} %ag-done, f32[1024]{0} %ar-done)
}
'''


def test_an_async_collective_counts_as_overlapped_only_with_compute_scheduled_inside_it():
    """XLA's schedule decides: a fusion between start and done hides the gather behind it;
    a start followed at once by its done does not, and adds its whole time to the step (ring
    all-reduce: twice the bytes of a gather). On a 4 x 2 mesh ('fsdp', 'tensor'), the iota
    groups [2,4]<=[4,2]T(1,0) (devices 0,2,4,6 and 1,3,5,7) are the 'fsdp' axis, and XLA:TPU's
    mesh form grouping along 'axis_0' of devices laid out as [4,2]T(1,0) is 'tensor'."""
    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ('fsdp', 'tensor'))
    first, second = comms.collectives(SCHEDULED, mesh)
    assert (first.op, first.overlapped, first.bytes, first.group_size, first.axes) == (
        'all-gather', True, 4096, 4, ('fsdp',))
    assert (second.op, second.overlapped, second.bytes, second.group_size, second.axes) == (
        'all-reduce', False, 4096, 2, ('tensor',))
    assert comms.hbm_bytes(SCHEDULED) == 2 * 1024  # the fusion's input and output
    chip = hardware.Chip('test', 1.0, peak_flops=1e3, memory_bytes_per_s=1e3,
                         ici_bytes_per_s=1e3, dcn_bytes_per_s=1.0)
    result = comms.estimate(SCHEDULED, mesh, chip, flops_per_chip=1e3, model_flops_per_chip=5e2)
    hidden, exposed = 3 / 4 * 4096 / 1e3, 2 * 1 / 2 * 4096 / 1e3
    assert np.isclose(result['step_seconds'], max(1.0, 2.048, hidden) + exposed)
    assert result['dominant'] == 'ICI' and np.isclose(result['mfu'], 0.5 / result['step_seconds'])
