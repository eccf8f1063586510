"""Ahead-of-time compilation for TPU slices on this CPU machine (bigjax/aot.py): XLA's TPU
compiler from libtpu decides whether the shipped accelerator configs fit their hardware."""

import dataclasses
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from jax.experimental import mesh_utils

from bigjax import aot, comms, hardware, parallel
from bigjax.config import default_config
from bigjax.errors import UserError
from conftest import REPO, load_config

pytestmark = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                reason='compiling for TPUs needs libtpu (requirements-tpu.txt)')

# Every shipped TPU size on hardware its docstring names: where it is tightest (docs/compile.md's
# fit table: 14 % headroom each) and 1b on a megacore slice; the Llama 3 shapes on the pods they
# name (40-90 s each here). The roomy rows (48-89 %) are benchmarks/accelerator_fit.py's, which
# prints the whole table. (size, topology, slices)
REAL_SIZES = [('100m', 'v5e-1', 1), ('300m', 'v5e-8', 1), ('300m', 'v4-8', 1), ('1b', 'v4-8', 1),
              ('8b', 'v5p-64', 1), ('8b', 'v5e-256', 2), ('70b', 'v5p-256', 1),
              ('70b', 'v5e-256', 1)]


@pytest.mark.parametrize('topology', ['v5e-8', 'v4-8'])
def test_the_smoke_lm_compiles_for_tpu_slices_and_fits(topology):
    result = aot.compile_config(load_config('transformer_tpu', 'smoke'), topology)
    assert (result['chips'], result['chip']) == {'v5e-8': (8, 'TPU v5e'),
                                                 'v4-8': (4, 'TPU v4')}[topology]
    assert 0 < result['gib_per_chip']['total'] < result['memory_gib_per_chip']
    assert result['headroom'] > 0.9
    flops = result['flops_per_chip_per_step']
    # Remat recomputes each block's forward pass: more executed than model FLOPs.
    assert flops['model'] < flops['matmuls_executed'] < 2 * flops['model']
    # The estimate reads the compiled program's collectives: FSDP gathers parameters over
    # 'fsdp' inside the slice, and communication only adds to the compute-bound time.
    estimate = result['estimate']
    assert {'op': 'all-gather', 'axes': ['fsdp'], 'network': 'ICI'}.items() <= max(
        (c for c in estimate['collectives'] if c['op'] == 'all-gather'),
        key=lambda c: c['bytes']).items()
    assert estimate['step_seconds'] > estimate['compute_bound']['step_seconds']
    assert estimate['mfu'] < estimate['compute_bound']['mfu']


def test_instruction_tuning_compiles_for_a_tpu_from_its_config_alone():
    """Chat data described without reading it: windows of tokens, segment ids and weights; the
    fine-tuning step with document masks compiles for one v5e chip."""
    config = load_config('chat_exceptions', 'finetune,smoke')
    config.data.text.seq_len = 255  # splash attention's lengths: multiples of 128
    config.model.transformer.update(max_len=256, attention='fused')
    from bigjax import data
    assert data.batch_shapes(data.describe(config.data), 16) == {
        'tokens': ((16, 256), np.dtype(np.uint16)), 'segments': ((16, 256), np.dtype(np.uint16)),
        'weights': ((16, 256), np.dtype(np.uint8))}
    result = aot.compile_config(config, 'v5e-1')
    assert 0 < result['gib_per_chip']['total'] < result['memory_gib_per_chip']


def test_lora_dpo_compiles_for_a_tpu_from_its_config_alone():
    """Preference pairs described without reading them: (2, length) tokens and weights per pair;
    the DPO step (policy and reference, the adapters off, in one program) compiles for a v5e
    chip."""
    config = load_config('dpo_exceptions', 'lora,smoke')
    config.data.text.seq_len = 255
    config.model.transformer.update(max_len=256, attention='fused')
    from bigjax import data
    assert data.batch_shapes(data.describe(config.data), 16) == {
        'tokens': ((16, 2, 256), np.dtype(np.uint16)), 'weights': ((16, 2, 256),
                                                                   np.dtype(np.uint8))}
    result = aot.compile_config(config, 'v5e-1')
    assert 0 < result['gib_per_chip']['total'] < result['memory_gib_per_chip']


def test_launch_compile_prints_the_figures_and_writes_compile_json(tmp_path):
    out = subprocess.run(
        [sys.executable, 'launch.py', '--config=configs/transformer_tpu.py:smoke',
         f'--workdir={tmp_path}', '--mode=compile', '--topology=v5e-4'],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'v5e-4: 4 x TPU v5e' in out.stdout and 'headroom' in out.stdout
    result = json.loads((tmp_path / 'compile.json').read_text())
    assert result['mesh'] == {'data': 1, 'fsdp': 2, 'tensor': 2}
    assert not (tmp_path / 'checkpoints').exists()


def test_a_config_that_does_not_fit_is_one_line_naming_the_levers():
    config = load_config('transformer_tpu', 'smoke')
    config.train.batch_size = config.train.eval_batch_size = 2 ** 20
    config.train.logits_chunk = 0
    with pytest.raises(UserError, match=r'does not fit: it needs [\d.]+ GiB per chip, a TPU v5e '
                       r'has 15.75 GiB \(activations .*logits_chunk'):
        aot.compile_config(config, 'v5e-8')


def test_a_program_the_compiler_accepts_but_the_chip_cannot_hold_is_refused(monkeypatch):
    """XLA:GPU compiles a program larger than the GPU; aot's own check against the chip's memory
    is what refuses it there. A v5e said to hold 1 MiB stands in for that chip here."""
    real_devices = hardware.devices

    def tiny_chips(name, num_slices=1):
        devices, chip = real_devices(name, num_slices)
        return devices, dataclasses.replace(chip, memory_gib=2 ** -10)

    monkeypatch.setattr(hardware, 'devices', tiny_chips)
    with pytest.raises(UserError, match=r'v5e-4 does not fit: it needs [\d.]+ GiB per chip, a TPU '
                       r'v5e has 0.0009765625 GiB \(.* dominate'):
        aot.compile_config(load_config('transformer_tpu', 'smoke'), 'v5e-4')


@pytest.mark.parametrize('name', ['v5e-3', 'v7-8', 'v4-4', 'tpu', 'h100-12'])
def test_unknown_topologies_are_clear_errors(name):
    with pytest.raises(UserError, match='--topology'):
        hardware.devices(name)


@pytest.mark.slow
@pytest.mark.parametrize('size,topology,slices', REAL_SIZES)
def test_every_tpu_config_fits_its_hardware_with_ten_percent_headroom(size, topology, slices):
    result = aot.compile_config(load_config('transformer_tpu', size), topology,
                                num_slices=slices)
    assert result['headroom'] >= 0.10, result['gib_per_chip']


def test_tpu_meshes_follow_the_physical_topology_and_span_slices_with_data():
    devices, _ = hardware.devices('v5e-8')
    config = default_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 4, 2
    mesh = parallel.make_mesh(config.mesh, devices)
    physical = mesh_utils.create_device_mesh((1, 4, 2), devices)
    assert (mesh.devices == physical).all() and not (
        mesh.devices == np.asarray(devices).reshape(1, 4, 2)).all()
    two_slices, _ = hardware.devices('v5e-8', num_slices=2)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, -1, 1
    mesh = parallel.make_mesh(config.mesh, two_slices)
    assert [{d.slice_index for d in row.flat} for row in mesh.devices] == [{0}, {1}]
    config.mesh.data = 1
    with pytest.raises(UserError, match='2 TPU slices need mesh.data to be a multiple of 2'):
        parallel.make_mesh(config.mesh, two_slices)


def test_a_gemma_3_with_local_and_global_layers_compiles_for_a_tpu_chip(tmp_path):
    """Gemma 3's published config.json, made small: five local layers (splash's local mask,
    window 128 of 256 tokens) to one global (its own rotary base), scanned as one block with a
    flag per layer, query/key norms, soft-capped logits; LoRA compiles and fits one v5e chip."""
    published = json.loads((REPO / 'tests/hf_configs/gemma-3-1b-it/config.json').read_text())
    (tmp_path / 'config.json').write_text(json.dumps({
        **published, 'hidden_size': 256, 'intermediate_size': 512, 'num_hidden_layers': 6,
        'head_dim': 128, 'vocab_size': 1024, 'sliding_window': 128,
        'final_logit_softcapping': 30.0}))
    config = load_config('hf_finetune', f'{tmp_path},smoke')
    config.data.text.seq_len = 255  # inputs of 256 tokens: splash's multiples of 128
    config.model.transformer.update(scan_layers=True, attention='fused')
    result = aot.compile_config(config, 'v5e-1')
    assert 0 < result['gib_per_chip']['total'] < result['memory_gib_per_chip']


def test_an_all_reduce_between_slices_is_timed_on_the_data_center_network():
    """XLA:TPU hands a multi-slice all-reduce to its data-center network runtime as a host
    send (as in the compiled 8b on two v5e-256); the estimate reads it as an all-reduce over the
    mesh axis that spans the slices, at the chip's DCN bandwidth."""
    devices, chip = hardware.devices('v5e-8', num_slices=2)
    config = default_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, -1, 1
    mesh = parallel.make_mesh(config.mesh, devices)
    hlo = """HloModule m, is_scheduled=true

ENTRY %main (g: bf16[1024]) -> token[] {
  %g = bf16[1024]{0} parameter(0)
  %tok = token[] after-all()
  %send.1 = (bf16[1024]{0}, u32[], token[]) send(%g, %tok), channel_id=8, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_megascale_reduce_operation="SUM",_xla_megascale_transfer_type="ALL_REDUCE"}
  ROOT %send-done.1 = token[] send-done(%send.1), channel_id=8, is_host_transfer=true
}
"""
    [found] = comms.collectives(hlo, mesh)
    assert (found.op, found.bytes, found.group_size, found.axes, found.crosses_slices,
            found.overlapped) == ('all-reduce', 2048, 2, ('data',), True, False)
    result = comms.estimate(hlo, mesh, chip, flops_per_chip=0.0, model_flops_per_chip=0.0)
    assert result['dominant'] == 'DCN'
    assert np.isclose(result['seconds']['dcn_exposed'], 2048 / chip.dcn_bytes_per_s)
