"""Each memory lever of the TPU LM, measured by compiling it for a TPU slice on this machine
(bigjax/aot.py, XLA's TPU compiler from libtpu): HBM per chip, compile time and the roofline
step time, one lever at a time from the plain model to the shipped config.

python benchmarks/tpu_levers.py [--size=100m] [--topology=v5e-8] [--smoke]
(needs requirements-tpu.txt)
"""

import argparse
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ['JAX_PLATFORMS'] = 'cpu'

from bigjax import aot  # noqa: E402
from bigjax.errors import UserError  # noqa: E402
from configs import transformer_tpu  # noqa: E402

PLAIN = {'model.transformer.attention': 'dot_product', 'model.transformer.remat': 'none',
         'model.transformer.scan_layers': False, 'train.logits_chunk': 0,
         'train.microbatches': 1}
LEVERS = [  # (row, overrides on top of PLAIN)
    ('plain: XLA attention, no remat, layers unrolled, whole logits', {}),
    ('attention=fused (Pallas splash attention)', {'model.transformer.attention': 'fused'}),
    ('remat=block', {'model.transformer.remat': 'block'}),
    ('remat=dots (keep the projections\' outputs)', {'model.transformer.remat': 'dots'}),
    ('scan_layers (one compiled block)', {'model.transformer.scan_layers': True}),
    ('logits_chunk=128', {'train.logits_chunk': 128}),
    ('microbatches=2', {'train.microbatches': 2}),
    ('fused + block + scan', {'model.transformer.attention': 'fused',
                              'model.transformer.remat': 'block',
                              'model.transformer.scan_layers': True}),
    ('fused + block + scan + logits_chunk=128', {'model.transformer.attention': 'fused',
                                                 'model.transformer.remat': 'block',
                                                 'model.transformer.scan_layers': True,
                                                 'train.logits_chunk': 128}),
    ('fused + dots + scan + logits_chunk=128', {'model.transformer.attention': 'fused',
                                                'model.transformer.remat': 'dots',
                                                'model.transformer.scan_layers': True,
                                                'train.logits_chunk': 128}),
]


def configured(size: str, overrides: dict):
    config = transformer_tpu.get_config(size)
    for key, value in {**PLAIN, **overrides}.items():
        *path, last = key.split('.')
        node = config
        for part in path:
            node = node[part]
        node[last] = value
    return config


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--size', default='100m')
    parser.add_argument('--topology', default='v5e-8')
    parser.add_argument('--smoke', action='store_true',
                        help='the plain lever alone, at the :smoke size on a v5e-4, in seconds')
    args = parser.parse_args()
    size, topology, levers = (('smoke', 'v5e-4', LEVERS[:1]) if args.smoke else
                              (args.size, args.topology, LEVERS))
    print(f'transformer_tpu.py:{size} on {topology}\n')
    print('| lever | GiB per chip (temporaries) | fits | compile (train) | step (roofline) | '
          'MFU at best |')
    print('|---|---|---|---|---|---|')
    for row, overrides in levers:
        try:
            r = aot.compile_config(configured(size, overrides), topology)
        except UserError as e:
            needs = re.search(r'needs ([\d.]+) GiB.*temporaries ([\d.]+) GiB', str(e))
            print(f'| {row} | {needs[1]} ({needs[2]}) | no | | | |' if needs else
                  f'| {row} | {e} | no | | | |', flush=True)
            continue
        g, e = r['gib_per_chip'], r['estimate']
        print(f"| {row} | {g['total']:.2f} ({g['temporaries']:.2f}) | "
              f"{'yes' if r['headroom'] >= 0.1 else 'under 10 % headroom'} | "
              f"{r['compile_seconds']['train']:.0f} s | {e['step_seconds'] * 1e3:.0f} ms | "
              f"{e['mfu']:.2f} |", flush=True)


if __name__ == '__main__':
    main()
