"""Compile a config's train and eval steps for hardware you name, on any machine, and say
whether they fit: launch.py --mode=compile --topology=v5e-8 (or h100-8).

XLA's TPU compiler (libtpu, requirements-tpu.txt) and GPU compiler (the CUDA plugin,
requirements-gpu.txt) run without the hardware: the mesh is built on the devices of a topology
description (bigjax/hardware.py) and the real steps are lowered on abstract arrays with their
shardings, then compiled. XLA's memory analysis gives the memory each chip needs; the TPU
compiler itself refuses a program that does not fit. The speed printed next to it is an
estimate from the compiled program (bigjax/comms.py): compute at the chip's peak, memory traffic
at HBM bandwidth and the program's collectives at the interconnect's, overlapped as XLA
scheduled them.
"""

import json
import math
import os
import re
import time

import jax
import numpy as np

from bigjax import comms, hardware, models, parallel, perf, platform, tasks, train
from bigjax import data as data_lib
from bigjax import plan as plan_lib
from bigjax import workdir as workdir_lib
from bigjax.errors import UserError

GIB = 2 ** 30


def prepare_environment(topology_name: str) -> None:
    """JAX itself on the CPU (compiling executes nothing; a local accelerator is not needed
    and, with libtpu installed on a machine without a TPU, not probed). For GPUs, matrix
    products go to cuBLAS: XLA's Triton GEMMs need autotuning on the GPU to pick their tiles.
    Call before JAX starts a backend."""
    platform.malloc_arenas_per_thread()
    os.environ['JAX_PLATFORMS'] = 'cpu'  # for processes this one starts
    jax.config.update('jax_platforms', 'cpu')  # JAX read the variable when it was imported
    if hardware.is_gpu(topology_name):
        os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                                   + ' --xla_gpu_enable_triton_gemm=false').strip()


def compile_config(config, topology_name: str, workdir=None, num_slices: int = 1) -> dict:
    """Compiles `config`'s train and eval steps for the named accelerators (hardware.devices);
    returns the per-chip figures (the same as <workdir>/compile.json) or raises UserError when
    they do not fit."""
    devices, chip = hardware.devices(topology_name, num_slices)
    config = config.copy_and_resolve_references()
    config.compilation_cache_dir = ''  # Compiled afresh: its times and XLA's verdict are the point.
    run = plan_lib.plan(config, workdir, devices=devices, read_data=False, init_from=False)
    task = _task(run)
    state, window = plan_lib.abstract_checkpoint(run)
    train_batch = _batch(run, config.train.batch_size, eval_batch=False)
    eval_batch = _batch(run, plan_lib.eval_batch_size(config), eval_batch=True)
    train_fn = train.train_program(run, task)
    eval_fn, eval_step = train.eval_program(run, task)
    replicated = parallel.replicated(run.mesh)
    sums = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                        jax.eval_shape(eval_step, state, eval_batch))
    where = f'{config.model.name} for {topology_name}' + (
        f' x {num_slices} slices' if num_slices > 1 else '')
    train_report = _compile(train_fn, (state, window, train_batch, None), state, chip, where,
                            config)
    eval_report = _compile(eval_fn, (sums, state, eval_batch), state, chip, where, config)
    per_chip = len(devices)
    tokens = tasks.tokens_per_example(run.dataset) * config.train.batch_size
    model_flops = run.flops_per_example * config.train.batch_size / per_chip
    counted, kernels = perf.matmul_flops(jax.make_jaxpr(train_fn)(state, window, train_batch,
                                                                   None))
    executed = (counted + (_attention_flops(run) * config.train.batch_size if kernels else 0)
                ) / per_chip
    roofline = executed / chip.peak_flops
    estimated = comms.estimate(train_report['hlo'], run.mesh, chip, executed, model_flops)
    step_time = estimated['step_seconds']
    result = {
        'topology': topology_name, 'num_slices': num_slices, 'chips': per_chip,
        'chip': chip.kind, 'memory_gib_per_chip': chip.memory_gib,
        'mesh': dict(run.mesh.shape),
        'global_batch': config.train.batch_size, 'global_batch_tokens': tokens,
        'parameters': int(sum(np.prod(a.shape)
                              for a in jax.tree.leaves(run.abstract_state.params))),
        'gib_per_chip': {
            'parameters': _shard_bytes(state.params) / GIB,
            'optimizer_state': _shard_bytes(state.opt_state) / GIB,
            'batch': _shard_bytes(train_batch) / GIB,
            **train_report['gib'],
        },
        'headroom': 1 - train_report['gib']['total'] / chip.memory_gib,
        'eval_gib_per_chip': eval_report['gib'],
        'compile_seconds': {'train': train_report['seconds'], 'eval': eval_report['seconds']},
        'flops_per_chip_per_step': {
            'model': model_flops, 'matmuls_executed': executed,
            'xla_cost_analysis': train_report['xla_flops']},
        'hbm_bytes_per_chip_per_step': {
            'estimated': estimated['hbm_bytes'],
            'xla_cost_analysis': train_report['xla_bytes']},
        'estimate': {
            'what': 'estimate from the compiled step: max(compute at peak, HBM traffic, '
                    'overlapped collectives) + collectives not overlapped (bigjax/comms.py); '
                    'kernel efficiency is not in it',
            'step_seconds': step_time,
            'tokens_per_second': tokens / step_time if tokens else None,
            'examples_per_second': config.train.batch_size / step_time,
            'mfu': estimated['mfu'],
            'dominant': estimated['dominant'],
            'seconds': estimated['seconds'],
            'collectives': estimated['collectives'],
            'compute_bound': {'step_seconds': roofline,
                              'mfu': model_flops / executed if executed else None},
        },
    }
    if workdir is not None:
        path = workdir_lib.resolve(workdir)
        path.mkdir(parents=True, exist_ok=True)
        workdir_lib.write_atomically(path / 'compile.json', json.dumps(result, indent=2))
    return result


def describe(result: dict) -> str:
    """The figures of compile_config as lines for the terminal."""
    g, e, f = result['gib_per_chip'], result['estimate'], result['flops_per_chip_per_step']
    mesh = ' x '.join(f'{k} {v}' for k, v in result['mesh'].items())
    lines = [
        f"{result['topology']}: {result['chips']} x {result['chip']} "
        f"({result['memory_gib_per_chip']} GiB each), mesh {mesh}; "
        f"{result['parameters']:,} parameters, global batch "
        f"{result['global_batch']}" + (f" ({result['global_batch_tokens']:,} tokens)"
                                       if result['global_batch_tokens'] else ''),
        f"train step, GiB per chip: parameters {g['parameters']:.2f}, optimizer state "
        f"{g['optimizer_state']:.2f}, batch {g['batch']:.3f}, temporaries {g['temporaries']:.2f}"
        f", code {g['code']:.2f}: total {g['total']:.2f} of {result['memory_gib_per_chip']} "
        f"({result['headroom']:.0%} headroom)",
        f"eval step: {result['eval_gib_per_chip']['total']:.2f} GiB per chip; compiled in "
        f"{result['compile_seconds']['train']:.0f} s (train) and "
        f"{result['compile_seconds']['eval']:.0f} s (eval)",
        f"FLOPs per chip per step: model {f['model']:.3g}, matmuls executed "
        f"{f['matmuls_executed']:.3g}" + (
            f" (XLA's cost analysis: {f['xla_cost_analysis']:.3g}, a scanned layer counted once)"
            if f['xla_cost_analysis'] is not None else ''),
        f"estimated step time {e['step_seconds']:.3f} s"
        + (f", {e['tokens_per_second']:,.0f} tokens/s" if e['tokens_per_second'] else
           f", {e['examples_per_second']:,.0f} examples/s")
        + (f", estimated MFU {e['mfu']:.2f}" if e['mfu'] else '')
        + f"; dominant: {e['dominant']} (" + ', '.join(
            f'{k} {v:.3f} s' for k, v in e['seconds'].items() if v) + ')',
    ]
    return '\n'.join(lines)


def _attention_flops(run: plan_lib.Plan) -> float:
    """Training FLOPs per example of attention in a fused kernel, which the matmul count cannot
    see: the model formula's (masked blocks skipped, no recomputation)."""
    if not isinstance(run.model, models.TRANSFORMERS):
        return 0.0
    length = run.model.sequence_length(tasks.sample_input(run.dataset).shape)
    return tasks.sequences_per_example(run.dataset.kind) * length * (
        perf.attention_flops_per_token(run.model.cfg, length, run.model.causal))


def _task(run: plan_lib.Plan) -> tasks.Task:
    """The run's task without reading data: images are normalised with mean 0 and std 1 (the
    statistics are constants of the program, so its memory and FLOPs are the same)."""
    if run.dataset.kind != 'image':
        return run.task()
    channels = run.dataset.image_shape[-1]
    stats = (np.zeros(channels, np.float32), np.ones(channels, np.float32))
    return tasks.images(stats, run.config.data.augment, run.dataset.num_classes)


def _batch(run: plan_lib.Plan, batch_size: int, *, eval_batch: bool) -> dict:
    sharding = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec(('data', 'fsdp')))
    return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
            for name, (shape, dtype) in data_lib.batch_shapes(
                run.dataset, batch_size, eval_batch=eval_batch).items()}


def _shard_bytes(tree) -> float:
    """Bytes of `tree`'s abstract arrays that one device holds."""
    return float(sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
                     for a in jax.tree.leaves(tree)))


def _compile(fn, args, state, chip: hardware.Chip, where: str, config) -> dict:
    start = time.perf_counter()
    try:
        compiled = fn.lower(*args).compile()
    except Exception as e:  # XLA refuses a program that does not fit with RESOURCE_EXHAUSTED
        if 'RESOURCE_EXHAUSTED' in str(e) or 'Ran out of memory' in str(e):
            raise UserError(_does_not_fit(str(e), state, chip, where, config)) from None
        raise
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}  # None where a backend has none (GPU, deviceless)
    cost = cost[0] if isinstance(cost, list) else cost
    gib = {'arguments': memory.argument_size_in_bytes / GIB,
           'temporaries': memory.temp_size_in_bytes / GIB,
           'outputs_not_aliased': (memory.output_size_in_bytes
                                   - memory.alias_size_in_bytes) / GIB,
           'code': memory.generated_code_size_in_bytes / GIB}
    gib['total'] = sum(gib.values())
    if gib['total'] > chip.memory_gib:
        raise UserError(_advice(where, gib['total'], gib['temporaries'], chip, config))
    return {'gib': gib, 'seconds': seconds, 'xla_flops': cost.get('flops'),
            'xla_bytes': cost.get('bytes accessed'), 'hlo': compiled.as_text()}


def _does_not_fit(message: str, state, chip: hardware.Chip, where: str, config) -> str:
    needed = re.search(r'\(([\d.]+)([KMGT])\) exceeds available', message) or re.search(
        r'Used ([\d.]+)([KMGT])', message)
    scale = {'K': 2 ** -20, 'M': 2 ** -10, 'G': 1.0, 'T': 2 ** 10}
    temporaries = float(needed[1]) * scale[needed[2]] if needed else float('nan')
    stored = (_shard_bytes(state.params) + _shard_bytes(state.opt_state)) / GIB
    return _advice(where, stored + temporaries, temporaries, chip, config)


def _advice(where: str, total: float, temporaries: float, chip: hardware.Chip,
            config) -> str:
    """One line: what does not fit, what dominates, and the levers that would help."""
    t = config.model.transformer
    levers = []
    if temporaries >= total / 2:
        if models.uses_transformer_options(config.model):
            if t.remat == 'none':
                levers.append("--config.model.transformer.remat=block")
            if t.attention != 'fused':
                levers.append("--config.model.transformer.attention=fused")
        if config.model.name == 'transformer_lm' and not config.train.logits_chunk:
            length = config.data.text.seq_len
            chunk = next(c for c in (128, 64, 32, 16, 8, 4, 2, 1) if length % c == 0)
            levers.append(f'--config.train.logits_chunk={chunk}')
        levers.append(f'--config.train.microbatches={config.train.microbatches * 2}')
        what = 'activations and other temporaries dominate'
    else:
        levers.append('more chips (the parameters and optimizer state are split over mesh.fsdp)')
        what = 'parameters and optimizer state dominate'
    return (f'{where} does not fit: it needs {total:.1f} GiB per chip, a {chip.kind} has '
            f'{chip.memory_gib} GiB ({what}, temporaries {temporaries:.1f} GiB); try '
            f'{", ".join(levers)}')
