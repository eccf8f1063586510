"""Every benchmarks/ script runs at its --smoke size and prints its result lines (issue 21), so
none rots unseen. The numbers at that size mean nothing and are never asserted."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

N = r'[\d.,]+'  # any number as the scripts print it
SMOKES = {  # 'script [flags]' (run with --smoke): regular expressions for lines of its stdout
    'accelerator_fit.py': [rf'^\| `configs/transformer_tpu.py:smoke` \| v5e-4 \| 16 \(512\) \| '
                           rf'{N} \(15.75\) \| {N}% \| {N} \| {N} \| {N} / {N} \|$'],
    'attention_cpu.py': [r'^B1 T128 H1 K64 causal float32',
                         *(rf'^{name}\s+{N}\s+{N}\s+{N}x$' for name in (
                             'bigjax fused kernel', 'fused kernel, 1 document a row',
                             'fused kernel, 4 documents a row', 'einops reference',
                             r'jax\.nn\.dot_product_attention', 'pytorch SDPA')),
                         *(rf'^document masks, {n} a row: fwd\+bwd {N}x the kernel without '
                           rf'them \([+-]{N} %\)$' for n in (1, 4))],
    'chat_pipeline.py': [r'^\s*conversations\s+MB of JSONL\s+seconds\s+per minute',
                         *(rf'^\s+{n}\s+{N}\s+{N}\s+{N}\s+{N}\s+{N}\s+{N}%$'
                           for n in (200, 400))],
    'harness_cpu.py': [rf'^14 questions x 7 choices; model 32 wide, 2 deep, max_len 32',
                       r'^scorer\s+seconds\s+questions/s\s+vs hf\s+accuracy$',
                       *(rf'^{name}\s+{N}\s+{N}\s+{N}x\s+{N}$'
                         for name in ('bigjax einops', 'bigjax fused', r'hf \(torch\)'))],
    'char_lm.py': [rf'^{N} bytes of text; \d+ CPUs, .+$',
                   rf'^round 1: bigjax: wall {N} s, {N} tokens/s in training, validation loss '
                   rf'{N}@4, {N}@8$',
                   rf'^bigjax\s+{N} s\s+{N}\s+{N}$'],
    'cnn_vs_pytorch.py': [r'^contender\s+img/s\s+vs pytorch$',
                          rf'^pytorch \(article loop\)\s+{N}\s+1\.00x$',
                          rf'^bigjax \(its XLA defaults: YNN fusions off\)\s+{N}\s+{N}x$'],
    'comms_ranking.py': [rf'^\(8, 1, 1\)(\s+{N}\s+\d){{3}}\s+(compute|HBM|ICI)\s+{N}$',
                         r'^order serial: .* \(Spearman -?[\d.]+\)$'],
    'compare.py': [r'^stub reference\s+100\s+1\.00x\s+-$',
                   r'^stub twice as fast\s+200\s+2\.00x\s+0\.500$'],
    'compile_cache.py': [*(rf'^{name}\s+{N}\s+{N}\s+{N}$' for name in ('cold', 'warm')),
                         rf'^warm / cold: first step {N}x, start to first step {N}x$'],
    'digits_default.py': [r'^seed\s+test accuracy\s+wall time$', rf'^\s+0\s+{N}%\s+{N}s$'],
    'gpu_lm_throughput.py': [r'^\s+size\s+batch\s+tokens/s\s+MFU$',
                             rf'^\s+smoke\s+16\s+{N}\s+{N}$'],
    'hf_import_memory.py': [rf'^checkpoint: {N} GB bfloat16 in \d+ shards \+ '
                            r'model\.safetensors\.index\.json, ',
                            r'^import\s+seconds\s+params\s+on device\s+largest\s+RSS before',
                            *(rf'^{mode}\s+{N}\s+{N}\s+{N}\s+{N}\s+{N}\s+{N}\s+{N}\s+{N}\s+'
                              rf'{N}x$' for mode in ('unrolled', 'scan'))],
    'install_platforms.py': [rf'^{name}\s+resolves\s+{N} s\s+1 packages \({package} 2\.21\.0\)$'
                             for name, package in (('Linux x86-64', 'tensorflow-cpu'),
                                                   ('Linux aarch64', 'tensorflow'),
                                                   ('macOS arm64', 'tensorflow'))],
    'input_pipeline.py': [rf'^cnn_digits \(augmented\)\s+{N}\s+{N}\s+{N}x$',
                          rf'^transformer_cpu\s+{N}\s+{N}\s+{N}x$'],
    'lm_vs_pytorch.py': [rf'^pytorch \(eager, SDPA\)\s+{N}\s+1\.00x\s+-$',
                         rf"^bigjax \(attention='fused'\)\s+{N}\s+{N}x\s+{N}$"],
    'pod_estimates.py': [rf'^\| smoke \| v5e-4 \| 16 \(512\) \| {N} \(15.75\) \| {N}% \| '
                         rf'{N} \| {N} \| {N} \| (compute|HBM|ICI|DCN) \| {N} / {N} \|$'],
    'pseudo_lm1b.py': [rf'^\s+1k\s+1,000\s+{N}\s+{N}\s+{N}%$'],
    'text_pipeline.py': [rf'^new\s+1k\s+1,100\s+{N}', r'^\S+ tokens a sentence\. lm1b .* '
                         r'extrapolated from 1k: \S+ minutes'],
    'startup.py': [rf'^import bigjax: {N} s$', *(rf'^{phase}\s+{N}\s+{N}$' for phase in (
        r'start-up, data, model', r'first step \(compiling it\)', 'steps and evaluations',
        'report', 'total'))],
    'text_pipeline.py --reads': [rf'^example by example .*\s+{N} records/s\s+1\.0x$',
                                 rf'^array_record .* \(raw bytes\)\s+{N} records/s\s+{N}x$'],
    'tpu_levers.py': [rf'^\| plain: XLA attention, no remat, layers unrolled, whole logits \| '
                      rf'{N} \({N}\) \| yes \| {N} s \| {N} ms \| {N} \|$'],
}
NEEDS_LIBTPU = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                  reason='compiling for TPUs needs libtpu (requirements-tpu.txt)')
TPU_SCRIPTS = ('accelerator_fit.py', 'pod_estimates.py', 'tpu_levers.py')


@pytest.mark.parametrize('smoke', [pytest.param(s, marks=NEEDS_LIBTPU) if s in TPU_SCRIPTS else s
                                   for s in SMOKES])
def test_benchmark_smoke_runs_and_prints_its_results(smoke, tmp_path):
    script, *flags = smoke.split()
    # As a user runs it: one CPU device (not conftest's eight); temporary files in tmp_path.
    xla_flags = os.environ.get('XLA_FLAGS', '').replace(
        '--xla_force_host_platform_device_count=8', '').strip()
    env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags, TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, f'benchmarks/{script}', '--smoke', *flags], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for line in SMOKES[smoke]:
        assert re.search(line, out.stdout, re.MULTILINE), f'no line {line!r} in:\n{out.stdout}'


def test_every_benchmark_script_has_a_smoke_test():
    scripts = {path.name for path in (REPO / 'benchmarks').glob('*.py')}
    assert scripts == {smoke.split()[0] for smoke in SMOKES}
