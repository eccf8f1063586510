"""configs/char_lm.py on a text file, timed as a user runs it: tokens/s, validation loss (nats
per character) at each eval, the final one, and the wall time of `python launch.py` (start-up,
data preparation, compilation, evals and the report included; the file's prepared tokens are
deleted first so they are paid for too). With --nanogpt, nanoGPT's README CPU command for the
same shape runs beside it in alternating rounds, also command to result (its prepare.py and
train.py, on a copy of its files, so the checkout is not written to).

python benchmarks/char_lm.py --text=../shared/data/tinyshakespeare.txt [--nanogpt=DIR --rounds=2]
python benchmarks/char_lm.py --smoke   # configs/char_lm.py:smoke on README.md
"""

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bigjax import writers  # noqa: E402

NANOGPT_FILES = ('train.py', 'model.py', 'configurator.py', 'config/train_shakespeare_char.py',
                 'data/shakespeare_char/prepare.py')
NANOGPT_CPU_COMMAND = (  # nanoGPT's README, "I only have a macbook"
    'train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 '
    '--log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 '
    '--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0').split()


def bigjax_run(text: str, smoke: bool) -> dict:
    config = 'configs/char_lm.py' + (':smoke' if smoke else '')
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        subprocess.run([sys.executable, 'launch.py', f'--config={config}',
                        f'--workdir={workdir}/run', f'--config.data.paths={text}',
                        f'--config.data.data_dir={workdir}/data'],
                       cwd=REPO, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        rows = writers.read_metrics(f'{workdir}/run')
    train_rows = [r for r in rows if r['split'] == 'train'][1:]  # the first includes compiling
    evals = [(r['step'], r['loss']) for r in rows if r['split'] == 'eval']
    return {'seconds': seconds, 'evals': evals,
            'tokens_per_sec': statistics.median(r['tokens_per_sec'] for r in train_rows)}


def nanogpt_run(text: str, checkout: str) -> dict:
    with tempfile.TemporaryDirectory() as copy:
        for name in NANOGPT_FILES:
            os.makedirs(os.path.dirname(os.path.join(copy, name)), exist_ok=True)
            shutil.copy(os.path.join(checkout, name), os.path.join(copy, name))
        shutil.copy(text, os.path.join(copy, 'data/shakespeare_char/input.txt'))
        start = time.perf_counter()
        subprocess.run([sys.executable, 'data/shakespeare_char/prepare.py'], cwd=copy,
                       check=True, capture_output=True)
        out = subprocess.run([sys.executable, *NANOGPT_CPU_COMMAND], cwd=copy, check=True,
                             capture_output=True, text=True).stdout
        seconds = time.perf_counter() - start
    evals = [(int(step), float(loss)) for step, loss in
             re.findall(r'step (\d+): train loss [\d.]+, val loss ([\d.]+)', out)]
    step_ms = [float(ms) for ms in re.findall(r'iter \d+: loss [\d.]+, time ([\d.]+)ms', out)]
    return {'seconds': seconds, 'evals': evals,
            'tokens_per_sec': 12 * 64 / (statistics.median(step_ms[1:]) / 1000)}


def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            return re.search(r'model name\s*: (.*)', f.read()).group(1)
    except (OSError, AttributeError):
        return platform.processor() or 'unknown CPU'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--text', help='a UTF-8 text file (~1 MB); required unless --smoke')
    parser.add_argument('--smoke', action='store_true',
                        help="configs/char_lm.py:smoke (8 steps), by default on README.md")
    parser.add_argument('--nanogpt', help="a checkout of github.com/karpathy/nanoGPT (needs torch)")
    parser.add_argument('--rounds', type=int, default=1)
    args = parser.parse_args()
    if not (args.text or args.smoke):
        parser.error('the following arguments are required: --text')
    if args.nanogpt and not all(os.path.exists(os.path.join(args.nanogpt, name))
                                for name in NANOGPT_FILES):
        parser.error(f'--nanogpt={args.nanogpt} is not a nanoGPT checkout (no {NANOGPT_FILES})')
    text = os.path.abspath(args.text or os.path.join(REPO, 'README.md'))
    print(f'{os.path.getsize(text):,} bytes of text; {os.cpu_count()} CPUs, {cpu_model()}')
    results = {'bigjax': [], 'nanoGPT': []}
    for round_index in range(args.rounds):
        results['bigjax'].append(bigjax_run(text, args.smoke))
        if args.nanogpt:
            results['nanoGPT'].append(nanogpt_run(text, args.nanogpt))
        for name, runs in results.items():
            if runs:
                r = runs[-1]
                print(f'round {round_index + 1}: {name}: wall {r["seconds"]:.1f} s, '
                      f'{r["tokens_per_sec"]:,.0f} tokens/s in training, validation loss ' +
                      ', '.join(f'{loss:.3f}@{step}' for step, loss in r['evals']), flush=True)
    print(f'\nmedian of {args.rounds} round(s): contender, wall time command to result, '
          'final validation loss, tokens/s')
    for name, runs in results.items():
        if runs:
            median = lambda key: statistics.median(key(r) for r in runs)
            print(f'{name:8s} {median(lambda r: r["seconds"]):7.1f} s '
                  f'{median(lambda r: r["evals"][-1][1]):7.3f} '
                  f'{median(lambda r: r["tokens_per_sec"]):9,.0f}')


if __name__ == '__main__':
    main()
