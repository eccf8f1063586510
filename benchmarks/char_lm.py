"""configs/char_lm.py on a text file, timed as a user runs it: tokens/s, validation loss (nats
per character) at each eval, the final one, and the wall time of `python launch.py` (start-up,
data preparation, compilation, evals and the report included; the file's prepared tokens are
deleted first so they are paid for too).

python benchmarks/char_lm.py --text=../shared/data/tinyshakespeare.txt
python benchmarks/char_lm.py --smoke   # configs/char_lm.py:smoke on README.md
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bigjax import writers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--text', help='a UTF-8 text file (~1 MB); required unless --smoke')
    parser.add_argument('--smoke', action='store_true',
                        help="configs/char_lm.py:smoke (8 steps), by default on README.md")
    args = parser.parse_args()
    if not (args.text or args.smoke):
        parser.error('the following arguments are required: --text')
    text = os.path.abspath(args.text or os.path.join(REPO, 'README.md'))
    config = 'configs/char_lm.py' + (':smoke' if args.smoke else '')
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        subprocess.run([sys.executable, 'launch.py', f'--config={config}',
                        f'--workdir={workdir}/run', f'--config.data.paths={text}',
                        f'--config.data.data_dir={workdir}/data'],
                       cwd=REPO, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        rows = writers.read_metrics(f'{workdir}/run')
    train_rows = [r for r in rows if r['split'] == 'train'][1:]  # the first includes compiling
    evals = [r for r in rows if r['split'] == 'eval']
    rate = statistics.median(r['tokens_per_sec'] for r in train_rows)
    print(f'{os.path.getsize(text):,} bytes of text; median {rate:,.0f} tokens/s')
    for r in evals:
        print(f'step {r["step"]:5d}: validation loss {r["loss"]:.4f} nats/char')
    print(f'final validation loss {evals[-1]["loss"]:.4f}; wall time {seconds:.0f} s')


if __name__ == '__main__':
    main()
