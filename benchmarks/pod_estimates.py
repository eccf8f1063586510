"""configs/transformer_tpu.py's sizes, 100m to 70b, compiled for v5e and v5p slices on this
machine (bigjax/aot.py, as launch.py --mode=compile does): memory per chip, headroom, and the
step-time estimate with communication (bigjax/comms.py) — estimated step time, tokens/s, MFU
and the term that dominates. Estimates, not measurements. Needs requirements-tpu.txt (libtpu).

python benchmarks/pod_estimates.py [--sizes=100m,8b] [--smoke]
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bigjax import aot
from bigjax import config as config_lib
from bigjax.errors import UserError

ROWS = [  # (size, topology, slices)
    ('100m', 'v5e-8', 1), ('100m', 'v5p-8', 1),
    ('300m', 'v5e-8', 1), ('300m', 'v5p-8', 1),
    ('1b', 'v5e-8', 1), ('1b', 'v5p-8', 1),
    ('8b', 'v5p-64', 1), ('8b', 'v5e-256', 2),
    ('70b', 'v5p-256', 1), ('70b', 'v5e-256', 1),
]
SMOKE_ROWS = [('smoke', 'v5e-4', 1)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--sizes', default='', help='comma-separated sizes (default: all)')
    parser.add_argument('--smoke', action='store_true', help='the :smoke LM on a v5e-4')
    args = parser.parse_args()
    rows = SMOKE_ROWS if args.smoke else [
        r for r in ROWS if not args.sizes or r[0] in args.sizes.split(',')]
    aot.prepare_environment(rows[0][1])
    print('| size | topology | global batch (tokens) | GiB per chip (of) | headroom | est. step s '
          '| est. tokens/s | est. MFU | dominant | compile s (train / eval) |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for size, topology, slices in rows:
        name = topology + (f' x {slices}' if slices > 1 else '')
        try:
            r = aot.compile_config(config_lib.from_file(f'configs/transformer_tpu.py:{size}'),
                                   topology, num_slices=slices)
        except UserError as e:
            print(f'| {size} | {name} | {e} |', flush=True)
            continue
        e, c = r['estimate'], r['compile_seconds']
        print(f"| {size} | {name} | {r['global_batch']} ({r['global_batch_tokens']:,}) | "
              f"{r['gib_per_chip']['total']:.2f} ({r['memory_gib_per_chip']}) | "
              f"{r['headroom']:.0%} | {e['step_seconds']:.3f} | {e['tokens_per_second']:,.0f} | "
              f"{e['mfu']:.2f} | {e['dominant']} | {c['train']:.0f} / {c['eval']:.0f} |",
              flush=True)


if __name__ == '__main__':
    main()
