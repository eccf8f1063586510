"""What a run costs besides its steps, as a user pays it: a config run twice through launch.py,
cold (fresh data_dir and compilation cache) and warm (the same ones again, a fresh workdir), split
into phases by the run's own log lines (one-second resolution): start-up and data preparation up
to the parameter count, the first step (compiling it), the steps, the evaluations, the report;
and `import bigjax` alone.

python benchmarks/startup.py [--config=configs/cnn_digits.py] [--set=train.num_steps=100 ...]
python benchmarks/startup.py --smoke   # configs/cnn_digits.py:smoke
"""

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = (  # (name, the log line that ends it)
    ('start-up, data, model', r'Parameters: '),
    ('first step (compiling it)', r'First step \(compilation included\)'),
    ('steps and evaluations', r'Final eval at step'),
    ('report', r'Wrote .*report\.html'),
)


def timed_run(argv: list[str]) -> dict[str, float]:
    """Seconds per phase of one launch.py run (and 'exit': the end of the report to the end)."""
    start = datetime.datetime.now()
    result = subprocess.run([sys.executable, 'launch.py', *argv], cwd=REPO, check=True,
                            capture_output=True, text=True)
    end = datetime.datetime.now()
    stamps = {}
    for line in result.stderr.splitlines():
        match = re.match(r'(\d\d:\d\d:\d\d) (.*)', line)
        for name, pattern in PHASES:
            if match and name not in stamps and re.match(pattern, match.group(2)):
                clock = datetime.datetime.strptime(match.group(1), '%H:%M:%S').time()
                stamps[name] = datetime.datetime.combine(start.date(), clock)
    times, previous = {}, start.replace(microsecond=0)
    for name, _ in PHASES:
        if name in stamps:
            times[name] = (stamps[name] - previous).total_seconds()
            previous = stamps[name]
    times['exit'] = (end - previous).total_seconds()
    times['total'] = (end - start).total_seconds()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default='configs/cnn_digits.py')
    parser.add_argument('--set', action='append', default=[],
                        help='a config override KEY=VALUE, as --config.KEY=VALUE')
    parser.add_argument('--smoke', action='store_true')
    args = parser.parse_args()
    config = args.config + (':smoke' if args.smoke else '')
    start = time.perf_counter()
    subprocess.run([sys.executable, '-c', 'import bigjax'], cwd=REPO, check=True)
    print(f'import bigjax: {time.perf_counter() - start:.1f} s')
    with tempfile.TemporaryDirectory() as scratch:
        common = [f'--config={config}', f'--config.data.data_dir={scratch}/data',
                  f'--config.compilation_cache_dir={scratch}/jax_cache',
                  *(f'--config.{item}' for item in args.set)]
        runs = {kind: timed_run([*common, f'--workdir={scratch}/{kind}'])
                for kind in ('cold', 'warm')}
    print(f'\n{config} {" ".join(args.set)}: seconds per phase (launch.py, one-second log stamps)')
    print(f'{"phase":28s} {"cold":>7s} {"warm":>7s}')
    for name in [name for name, _ in PHASES] + ['exit', 'total']:
        print(f'{name:28s} ' + ' '.join(f'{runs[kind].get(name, float("nan")):7.1f}'
                                        for kind in ('cold', 'warm')))


if __name__ == '__main__':
    main()
