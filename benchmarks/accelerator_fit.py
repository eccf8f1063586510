"""Every shipped accelerator config compiled for the hardware its docstring names (bigjax/aot.py,
as launch.py --mode=compile does), as docs/compile.md's table: memory per chip, headroom, and the
compute-bound roofline (benchmarks/pod_estimates.py prints the estimate with communication).
TPU rows need requirements-tpu.txt (libtpu), GPU rows requirements-gpu.txt (the CUDA plugin);
rows whose compiler is missing are skipped.

python benchmarks/accelerator_fit.py [--platform=tpu|gpu] [--smoke]
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bigjax import aot, config as config_lib, hardware  # noqa: E402
from bigjax.errors import UserError  # noqa: E402

ROWS = [  # (config, hardware)
    ('configs/transformer_tpu.py', 'v5e-1'), ('configs/transformer_tpu.py', 'v5e-8'),
    ('configs/transformer_tpu.py', 'v4-8'),
    ('configs/transformer_tpu.py:300m', 'v5e-8'), ('configs/transformer_tpu.py:300m', 'v4-8'),
    ('configs/transformer_tpu.py:1b', 'v5e-8'), ('configs/transformer_tpu.py:1b', 'v4-8'),
    ('configs/transformer_gpu.py', 'a100-8'), ('configs/transformer_gpu.py', 'h100-8'),
    ('configs/transformer_gpu.py:300m', 'a100-8'), ('configs/transformer_gpu.py:300m', 'h100-8'),
    ('configs/transformer_gpu.py:1b', 'a100-8'), ('configs/transformer_gpu.py:1b', 'h100-8'),
]
SMOKE_ROWS = [('configs/transformer_tpu.py:smoke', 'v5e-4'),  # tensor 2: the smallest v5e slice
              ('configs/transformer_gpu.py:smoke', 'h100-1')]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--platform', choices=['tpu', 'gpu'], default='tpu')
    parser.add_argument('--smoke', action='store_true',
                        help='the :smoke LM alone, on a v5e-4 (or one H100), in seconds')
    args = parser.parse_args()
    rows = SMOKE_ROWS if args.smoke else ROWS
    wanted = [(c, h) for c, h in rows if hardware.is_gpu(h) == (args.platform == 'gpu')]
    aot.prepare_environment(wanted[0][1])
    print('| config | hardware | global batch (tokens) | GiB per chip (of) | headroom | '
          'est. tokens/s (roofline) | est. MFU at best | compile s (train / eval) |')
    print('|---|---|---|---|---|---|---|---|')
    for reference, name in wanted:
        try:
            r = aot.compile_config(config_lib.from_file(reference), name)
        except UserError as e:
            print(f'| `{reference}` | {name} | {e} |', flush=True)
            continue
        e, c = r['estimate']['compute_bound'], r['compile_seconds']
        print(f"| `{reference}` | {name} | {r['global_batch']} ({r['global_batch_tokens']:,}) | "
              f"{r['gib_per_chip']['total']:.2f} ({r['memory_gib_per_chip']}) | "
              f"{r['headroom']:.0%} | {r['global_batch_tokens'] / e['step_seconds']:,.0f} | "
              f"{e['mfu']:.2f} | "
              f"{c['train']:.0f} / {c['eval']:.0f} |", flush=True)


if __name__ == '__main__':
    main()
