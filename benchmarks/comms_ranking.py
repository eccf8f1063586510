"""Does the step-time estimate of --mode=compile (bigjax/comms.py) rank meshes as measured step
times do? Where it can be checked without a TPU: this machine's CPU as 8 devices.

One small transformer LM's real train step (train.train_program) is compiled for each mesh
(data, fsdp and tensor parallel, and mixes); the estimate is made from each compiled program
exactly as aot.compile_config makes it for a TPU, with this CPU's own figures in place of a
chip's (measured first, per device with all 8 busy: matmul FLOP/s, memory bandwidth, and the
bandwidth of an all-gather over the 8 devices by the ring model); then each step is run and
timed. Prints the measured order beside the estimate's and beside its terms added up (`serial`:
a CPU overlaps nothing, so that is the order the program's reading should give here).

python benchmarks/comms_ranking.py [--steps=3] [--smoke]
"""

import argparse
import os
import statistics
import sys
import time

DEVICES = 8
os.environ['JAX_PLATFORMS'] = 'cpu'
FLAG = f'--xla_force_host_platform_device_count={DEVICES}'
if FLAG not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {FLAG}".strip()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bigjax import comms, hardware, metrics, parallel, perf, tasks, train
from bigjax import config as config_lib
from bigjax import data as data_lib
from bigjax import plan as plan_lib

MESHES = [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 4, 1), (1, 4, 2), (2, 1, 4)]  # data, fsdp, tensor


def timed(fn, *args, repeats: int = 5) -> float:
    """Median seconds of fn(*args) after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_chip(size: int) -> hardware.Chip:
    """This CPU as one of 8 devices, measured with all 8 working at once."""
    mesh = Mesh(np.asarray(jax.devices()), ('d',))
    rows = NamedSharding(mesh, P('d'))
    a = jax.device_put(jnp.ones((DEVICES, size, size), jnp.float32), rows)
    flops = 2 * size ** 3 / timed(jax.jit(lambda x: jnp.einsum('bij,bjk->bik', x, x)), a)
    v = jax.device_put(jnp.ones((DEVICES, 32 * size * size), jnp.float32), rows)
    memory = 2 * v.nbytes / DEVICES / timed(jax.jit(lambda x: x * 2 + 1), v)
    gather = jax.jit(jax.shard_map(lambda x: jax.lax.all_gather(x, 'd', tiled=True), mesh=mesh,
                                   in_specs=P('d'), out_specs=P(), check_vma=False))
    ring = (DEVICES - 1) / DEVICES * v.nbytes / timed(gather, v)
    return hardware.Chip('CPU device', 0.0, flops, memory, ring, ring)


def lm_config(sizes, batch: int, smoke: bool):
    config = config_lib.from_file('configs/transformer_tpu.py:smoke')
    t = config.model.transformer
    width, depth, heads, mlp, length, vocab = sizes
    t.update(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, max_len=length,
             attention='dot_product', dtype='float32', remat='none')
    config.data.text.update(seq_len=length - 1, vocab_size=vocab, document_mask=False)
    config.train.update(batch_size=batch, eval_batch_size=batch, logits_chunk=0)
    return config


def measure(config, mesh_sizes, chip: hardware.Chip, steps: int) -> dict:
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_sizes
    run = plan_lib.plan(config, devices=jax.devices(), read_data=False, init_from=False)
    fn = train.train_program(run, run.task())
    state_shapes, window_shapes = plan_lib.abstract_checkpoint(run)
    sharding = parallel.batch_sharding(run.mesh)
    rng = np.random.default_rng(0)
    batch = {}
    for name, (shape, dtype) in data_lib.batch_shapes(run.dataset, config.train.batch_size).items():
        values = (rng.integers(1, config.data.text.vocab_size, shape) if name == 'tokens'
                  else np.ones(shape))
        batch[name] = jax.device_put(values.astype(dtype), sharding)
    batch_shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
                    for k, v in batch.items()}
    compiled = fn.lower(state_shapes, window_shapes, batch_shapes, None).compile()
    counted, _ = perf.matmul_flops(jax.make_jaxpr(fn)(state_shapes, window_shapes, batch_shapes,
                                                      None))
    model = run.flops_per_example * config.train.batch_size / DEVICES
    estimate = comms.estimate(compiled.as_text(), run.mesh, chip, counted / DEVICES, model)
    state = jax.jit(lambda key: nn.unbox(run.init(key)), out_shardings=run.state_shardings)(
        jax.random.PRNGKey(0))
    window = jax.device_put(metrics.empty_window(tasks.train_sum_names(run.dataset.kind)),
                            parallel.replicated(run.mesh))
    times = []
    for k in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        state, window, done = compiled(state, window, batch, None)
        jax.block_until_ready(done)
        if k >= 2:
            times.append(time.perf_counter() - start)
    return {'measured': statistics.median(times), **estimate}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--smoke', action='store_true', help='a tiny LM on 2 meshes, 1 step')
    args = parser.parse_args()
    if args.smoke:
        sizes, batch, meshes, steps, calibration = (32, 2, 8, 64, 16, 300), 8, MESHES[:2], 1, 64
    else:
        sizes, batch, meshes, steps, calibration = ((256, 4, 8, 1024, 128, 4096), 32, MESHES,
                                                    args.steps, 256)
    chip = cpu_chip(calibration)
    print(f'this CPU as {DEVICES} devices, each with all busy: {chip.peak_flops / 1e9:.1f} '
          f'GFLOP/s, memory {chip.memory_bytes_per_s / 1e9:.2f} GB/s, all-gather '
          f'{chip.ici_bytes_per_s / 1e9:.2f} GB/s')
    width, depth, heads, mlp, length, vocab = sizes
    print(f'LM: width {width}, depth {depth}, {heads} heads, mlp {mlp}, {length} tokens, vocab '
          f'{vocab}, batch {batch}, float32; median of {steps} steps')
    rows = []
    for mesh in meshes:
        r = measure(lm_config(sizes, batch, args.smoke), mesh, chip, steps)
        rows.append((mesh, r))
    for _, r in rows:  # a CPU overlaps nothing: its cores run compute, copies and collectives
        r['serial_seconds'] = sum(r['seconds'].values())  # in turn
    measured = sorted(rows, key=lambda row: row[1]['measured'])
    estimated = sorted(rows, key=lambda row: row[1]['step_seconds'])
    serial = sorted(rows, key=lambda row: row[1]['serial_seconds'])
    print(f"{'mesh (data, fsdp, tensor)':<26}{'measured s':>11}{'rank':>5}{'estimated s':>12}"
          f"{'rank':>5}{'serial s':>10}{'rank':>5}  dominant  comms exposed s")
    for mesh, r in rows:
        s = r['seconds']
        print(f"{mesh!s:<26}{r['measured']:>11.3f}{measured.index((mesh, r)) + 1:>5}"
              f"{r['step_seconds']:>12.3f}{estimated.index((mesh, r)) + 1:>5}"
              f"{r['serial_seconds']:>10.3f}{serial.index((mesh, r)) + 1:>5}  "
              f"{r['dominant']:<9} {s['ici_exposed'] + s['dcn_exposed']:.3f}")
    print(f"order measured:  {' < '.join(str(m) for m, _ in measured)}")
    for name, order in (('estimated', estimated), ('serial', serial)):
        rho = spearman([measured.index(row) for row in rows], [order.index(row) for row in rows])
        print(f"order {name + ':':<11}{' < '.join(str(m) for m, _ in order)} (Spearman "
              f'{rho:.2f})')


def spearman(ranks_a: list[int], ranks_b: list[int]) -> float:
    n = len(ranks_a)
    if n < 2:
        return 1.0
    return 1 - 6 * sum((a - b) ** 2 for a, b in zip(ranks_a, ranks_b)) / (n * (n ** 2 - 1))


if __name__ == '__main__':
    main()
