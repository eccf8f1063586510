"""Time to first step with jax's persistent compilation cache cold, then warm.

Runs `launch.py --config=CONFIG` three times, each in a fresh process on a fresh workdir, for a
few steps: with an empty cache folder (cold: the train and eval steps are compiled and stored),
again on that folder (warm: they are loaded), and with the cache off (compilation_cache_dir='').
The data cache is built before the first timed run, so all three read the same prepared data.
--smoke runs the config's :smoke size, cold and warm only (no data run: cold prepares the data).
Prints, per run, the first step as train.py logs it (compilation included), the time from the
process's start to the end of that step (imports, data, init, compilation), the process's wall
time (the final eval included), and the warm/cold ratios.

python benchmarks/compile_cache.py [--config=configs/transformer_cpu.py] [--smoke]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_STEP = re.compile(r'First step \(compilation included\) took ([0-9.]+)s')


def run(config: str, workdir: str, cache_dir: str, steps: int) -> tuple[float, float, float]:
    """(first step as logged, seconds from the process's start to the end of its first step,
    process seconds) of one short training run."""
    command = [sys.executable, 'launch.py', f'--config={config}', f'--workdir={workdir}',
               f'--config.train.num_steps={steps}', '--config.optim.warmup_steps=0',
               '--config.report.enabled=False', f'--config.compilation_cache_dir={cache_dir}']
    began = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines, first, to_first = [], None, None
    for line in process.stderr:
        lines.append(line)
        if first is None and (found := FIRST_STEP.search(line)):
            first, to_first = float(found[1]), time.monotonic() - began
    if process.wait() or first is None:
        sys.exit(f'{" ".join(command)} failed:\n{"".join(lines)[-3000:]}')
    return first, to_first, time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default='configs/transformer_cpu.py')
    parser.add_argument('--steps', type=int, default=2)
    parser.add_argument('--smoke', action='store_true',
                        help="the config's :smoke size, the cold and warm runs only")
    args = parser.parse_args()
    config = args.config + (':smoke' if args.smoke and ':' not in args.config else '')
    root = tempfile.mkdtemp(prefix='bigjax_compile_cache_')
    try:
        cache = os.path.join(root, 'cache')
        if not args.smoke:  # Builds the data cache, untimed.
            run(config, os.path.join(root, 'data_warmup'), '', 1)
        rows = []
        runs = [('cold', cache), ('warm', cache)] + ([] if args.smoke else [('off', '')])
        for name, cache_dir in runs:
            rows.append((name, *run(config, os.path.join(root, name), cache_dir, args.steps)))
        print(f'{config}, {args.steps} steps, each a fresh process and workdir')
        print(f'{"cache":6} {"first step s":>12} {"start to first step s":>22} {"process s":>10}')
        for name, first, to_first, wall in rows:
            print(f'{name:6} {first:12.1f} {to_first:22.1f} {wall:10.1f}')
        (_, cold_first, cold_to, _), (_, warm_first, warm_to, _) = rows[:2]
        print(f'warm / cold: first step {warm_first / cold_first:.2f}x, '
              f'start to first step {warm_to / cold_to:.2f}x')
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
