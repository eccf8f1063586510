"""Accelerators by the names users rent them under (v5e-8, v4-8, h100-8), as devices XLA can
compile for on a machine that has none of them: TPU slices through libtpu's topology
descriptions, NVIDIA GPUs through the CUDA plugin and a target description of the GPU.
"""

import dataclasses
import os
import re

from jax.experimental import topologies

from bigjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator: the memory a program may use (TPU: HBM as XLA counts it usable,
    measured here by compiling a program too large for it; GPU: the share JAX's allocator
    takes by default, XLA_PYTHON_CLIENT_MEM_FRACTION=0.75), dense bf16 peak FLOP/s, memory
    bandwidth, and the bytes/s one chip sends into a collective inside its slice (ICI; NVLink)
    and across slices (DCN; the hosts' network): published figures, used by bigjax/comms.py."""

    kind: str
    memory_gib: float
    peak_flops: float
    memory_bytes_per_s: float
    ici_bytes_per_s: float
    dcn_bytes_per_s: float


# ICI: half the per-chip bidirectional figure (what a chip sends while it receives as much), as
# if a collective's ring used every link of the chip: optimistic for groups along one physical
# axis. Cloud TPU's system-architecture pages (docs.cloud.google.com/tpu/docs/v5e, v5p, v6e):
# bidirectional ICI per chip v5e 400 GB/s, v5p 1200 GB/s, v6e 800 GB/s. v4's page gives none;
# 300 GB/s (6 links of 50 GB/s, as the TPU v4 paper is commonly quoted) is assumed, not checked.
# DCN per chip: v5p 50 Gb/s (its page); v5e two 100 Gb/s NICs per host of 8 chips = 25 Gb/s
# (its page; also 6.4 Tb/s per 256-chip pod); the v6e and v4 pages give none: 25 Gb/s assumed.
TPUS = {  # generation -> (chip, TensorCores per chip: v4 and v5p are named by cores)
    'v5e': (Chip('TPU v5e', 15.75, 197e12, 819e9, 200e9, 25e9 / 8), 1),
    'v6e': (Chip('TPU v6e', 31.25, 918e12, 1640e9, 400e9, 25e9 / 8), 1),
    'v4': (Chip('TPU v4', 30.75, 275e12, 1228e9, 150e9, 25e9 / 8), 2),
    'v5p': (Chip('TPU v5p', 95.74, 459e12, 2765e9, 600e9, 50e9 / 8), 2),
}
SHAPES_2D = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16',
             256: '16x16'}  # v5e / v6e chips -> topology
SHAPES_3D = {4: '2x2x1', 8: '2x2x2', 16: '2x2x4', 32: '2x4x4', 64: '4x4x4', 128: '4x4x8',
             256: '4x8x8', 512: '8x8x8'}  # v4 / v5p chips -> topology


@dataclasses.dataclass(frozen=True)
class Gpu:
    """What XLA's GPU compiler needs to know of a GPU it does not see (GpuTargetConfigProto)."""

    name: str
    compute_capability: tuple[int, int]
    multiprocessors: int
    fp32_cores_per_multiprocessor: int
    clock_ghz: float
    memory_bytes: int  # as the driver reports it
    memory_bytes_per_s: float
    l2_bytes: int
    shared_memory_per_multiprocessor: int
    shared_memory_per_block_optin: int
    peak_bf16_flops: float
    nvlink_bytes_per_s: float  # bidirectional per GPU (NVIDIA's data sheets)
    network_bytes_per_s: float  # between hosts, per GPU: a 200 (A100) or 400 Gb/s NIC each


GPUS = {
    'a100': Gpu('NVIDIA A100-SXM4-80GB', (8, 0), 108, 64, 1.41, 85_100_068_864, 2039e9,
                40 * 2 ** 20, 164 * 2 ** 10, 163 * 2 ** 10, 312e12,
                600e9, 200e9 / 8),
    'h100': Gpu('NVIDIA H100 80GB HBM3', (9, 0), 132, 128, 1.98, 84_942_979_072, 3352e9,
                50 * 2 ** 20, 228 * 2 ** 10, 227 * 2 ** 10, 989e12,
                900e9, 400e9 / 8),
    'h200': Gpu('NVIDIA H200', (9, 0), 132, 128, 1.98, 151_397_597_184, 4800e9,
                50 * 2 ** 20, 228 * 2 ** 10, 227 * 2 ** 10, 989e12,
                900e9, 400e9 / 8),
}
GPU_MEMORY_FRACTION = 0.75  # JAX's default preallocation (XLA_PYTHON_CLIENT_MEM_FRACTION)
GPUS_PER_HOST = 8
GPU_NAMES = r'(a100|h100|h200)-(\d+)'


def is_gpu(name: str) -> bool:
    return re.fullmatch(GPU_NAMES, name.strip().lower()) is not None


def devices(name: str, num_slices: int = 1) -> tuple[list, Chip]:
    """(devices, chip) of a TPU slice named as Cloud TPU names it — v5e-8 (chips), v6e-4, v4-8
    and v5p-8 (TensorCores: 4 chips), v5litepod-16 — with num_slices of them joined by the
    data-center network; or of N NVIDIA GPUs, 8 per host: a100-8, h100-16, h200-1."""
    key = name.strip().lower()
    if num_slices < 1:
        raise UserError(f'--num_slices={num_slices} must be >= 1')
    gpu = re.fullmatch(GPU_NAMES, key)
    if gpu:
        if num_slices != 1:
            raise UserError('--num_slices is for TPU slices; name GPUs by count (h100-16)')
        return _gpus(GPUS[gpu[1]], int(gpu[2]), name)
    tpu = re.fullmatch(r'(v5e|v5litepod|v6e|v4|v5p)-(\d+)', key)
    if not tpu:
        raise UserError(f'--topology={name!r} is not an accelerator bigjax knows: use names '
                        'like v5e-1, v5e-8, v6e-8, v4-8, v5p-8 (TPU slices) or a100-8, h100-8, '
                        'h200-8 (NVIDIA GPUs)')
    return _tpus('v5e' if tpu[1] == 'v5litepod' else tpu[1], int(tpu[2]), num_slices, name)


def _tpus(generation: str, count: int, num_slices: int, name: str) -> tuple[list, Chip]:
    chip, cores = TPUS[generation]
    shapes = SHAPES_3D if cores == 2 else SHAPES_2D
    chips = count // cores
    if count % cores or chips not in shapes:
        sizes = ', '.join(str(n * cores) for n in shapes)
        raise UserError(f'--topology={name!r}: {generation} slices come in sizes {sizes}')
    host = (1, 1, 1) if chips == 1 else (2, 4, 1) if (chips == 8 and cores == 1) else (2, 2, 1)
    # Read when libtpu loads: no wait on a TPU VM's metadata server, no lock against other
    # processes that compile (nothing here runs on a TPU).
    os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    try:
        description = topologies.get_topology_desc(
            platform='tpu', topology_name=f'{generation}:{shapes[chips]}',
            chip_config_name='megacore' if cores == 2 else 'default',
            chips_per_host_bounds=host, num_slices=num_slices)
    except Exception as e:  # no libtpu, or one that cannot describe this chip
        raise UserError(f'cannot describe {name} ({type(e).__name__}: {str(e)[:120]}): '
                        'compiling for TPUs needs libtpu, `pip install -r requirements-tpu.txt`'
                        ) from None
    return list(description.devices), chip


def _gpus(gpu: Gpu, count: int, name: str) -> tuple[list, Chip]:
    if count < 1 or (count > GPUS_PER_HOST and count % GPUS_PER_HOST):
        raise UserError(f'--topology={name!r}: use 1 to {GPUS_PER_HOST} GPUs, or a multiple of '
                        f'{GPUS_PER_HOST} (hosts of {GPUS_PER_HOST})')
    hosts, per_host = max(count // GPUS_PER_HOST, 1), min(count, GPUS_PER_HOST)
    try:
        description = topologies.get_topology_desc(
            platform='cuda', target_config=_target_config(gpu), topology=f'1x{hosts}x{per_host}')
    except Exception as e:  # no CUDA plugin, or JAX started on a GPU backend
        raise UserError(f'cannot describe {name} ({type(e).__name__}: {str(e)[:120]}): '
                        'compiling for NVIDIA GPUs needs jax\'s CUDA plugin, `pip install -r '
                        'requirements-gpu.txt`') from None
    chip = Chip(gpu.name, round(gpu.memory_bytes * GPU_MEMORY_FRACTION / 2 ** 30, 2),
                gpu.peak_bf16_flops, gpu.memory_bytes_per_s, gpu.nvlink_bytes_per_s / 2,
                gpu.network_bytes_per_s)
    return list(description.devices), chip


def _target_config(gpu: Gpu) -> str:
    """The GpuTargetConfigProto text XLA's GPU compiler takes in place of a device query."""
    major, minor = gpu.compute_capability
    return f'''gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {gpu.shared_memory_per_multiprocessor}
  threads_per_core_limit: 2048
  core_count: {gpu.multiprocessors}
  fpus_per_core: {gpu.fp32_cores_per_multiprocessor}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(gpu.memory_bytes_per_s)}
  l2_cache_size: {gpu.l2_bytes}
  clock_rate_ghz: {gpu.clock_ghz}
  device_memory_size: {gpu.memory_bytes}
  shared_memory_per_block_optin: {gpu.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 13 minor: 0 }}
device_description_str: "{gpu.name}"
'''
