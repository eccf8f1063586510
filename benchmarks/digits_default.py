"""The offline default, timed as a user runs it: README's first command, once per seed.

Each run is a fresh `python launch.py --config=configs/cnn_digits.py` in a new workdir, so the
wall time includes interpreter start, imports, data loading and compilation. Prints the final
test accuracy and wall time per seed. Target: >= 98.5 % in under 2 minutes on 2 CPU cores.

python benchmarks/digits_default.py [--seeds=0,1,2] [--smoke]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bigjax import writers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', default='0,1,2')
    parser.add_argument('--smoke', action='store_true', help='configs/cnn_digits.py:smoke, seed 0')
    args = parser.parse_args()
    config, seeds = (('configs/cnn_digits.py:smoke', ['0']) if args.smoke else
                     ('configs/cnn_digits.py', args.seeds.split(',')))
    print(f'{"seed":>4s} {"test accuracy":>14s} {"wall time":>10s}')
    for seed in seeds:
        with tempfile.TemporaryDirectory() as workdir:
            start = time.perf_counter()
            subprocess.run([sys.executable, 'launch.py', f'--config={config}',
                            f'--workdir={workdir}', f'--config.seed={seed}'],
                           cwd=REPO, check=True, capture_output=True)
            seconds = time.perf_counter() - start
            final = [r for r in writers.read_metrics(workdir) if r['split'] == 'eval'][-1]
        print(f'{seed:>4s} {100 * final["accuracy"]:13.2f}% {seconds:9.1f}s', flush=True)


if __name__ == '__main__':
    main()
