"""Throughput and MFU of configs/transformer_gpu.py on the GPUs of this machine.

Runs the real `train.run` of the GPU config (bf16 compute, cuDNN attention through
jax.nn.dot_product_attention) on synthetic tokens, so no dataset download is needed, and prints
the median steady-state tokens/s and MFU it logs (MFU against the chip's dense bf16 peak from
bigjax/perf.py). Goal: >= 55 % MFU on an H100/H200 for the 100m and 300m sizes.

python benchmarks/gpu_lm_throughput.py [--sizes=100m,300m] [--steps=60] [--batch=0 (config's)]
python benchmarks/gpu_lm_throughput.py --smoke   # the :smoke size on whatever backend is here
"""

import argparse
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from compare import train_rows  # noqa: E402
from configs import transformer_gpu  # noqa: E402


def measure(size: str, steps: int, batch: int) -> dict:
    config = transformer_gpu.get_config(size)
    config.data.name = 'synthetic'
    config.data.synthetic.kind = 'text_lm'
    config.data.synthetic.vocab_size = config.data.text.vocab_size
    config.data.synthetic.train_examples = 4096
    config.data.synthetic.eval_examples = config.train.eval_batch_size
    if batch:
        config.train.batch_size = batch
    config.optim.warmup_steps = 1
    config.train.log_every = 10
    rows = train_rows(config, steps)[1:]
    return {'tokens_per_sec': statistics.median(r['tokens_per_sec'] for r in rows),
            'mfu': statistics.median(r['mfu'] for r in rows),
            'batch': config.train.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='100m,300m')
    parser.add_argument('--steps', type=int, default=60)
    parser.add_argument('--batch', type=int, default=0)
    parser.add_argument('--smoke', action='store_true',
                        help='the :smoke config for 11 steps, on whatever backend is here')
    args = parser.parse_args()
    sizes, steps = (['smoke'], 11) if args.smoke else (args.sizes.split(','), args.steps)
    import jax
    print(f'{jax.device_count()} x {jax.devices()[0].device_kind}')
    print(f'{"size":>6s} {"batch":>6s} {"tokens/s":>12s} {"MFU":>6s}')
    for size in sizes:
        result = measure(size, steps, args.batch)
        print(f'{size:>6s} {result["batch"]:6d} {result["tokens_per_sec"]:12.0f} '
              f'{result["mfu"]:6.3f}', flush=True)


if __name__ == '__main__':
    main()
