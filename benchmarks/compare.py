"""Runs contenders in separate processes, in alternating rounds, and prints their rates side by
side with ratios to a reference. Each contender is a worker command that prints one JSON line
{"rate": ..., ...extra fields} as its last line of output.

python benchmarks/compare.py --smoke   # run_rounds and print_table on two stub workers
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def train_rows(config, steps: int) -> list[dict]:
    """The train lines of metrics.jsonl from bigjax's real train.run of `config` for `steps`
    steps in a temporary workdir (eval and checkpoint only at the end, no report)."""
    from bigjax import train, writers
    config.train.num_steps = steps
    config.train.eval_every = config.train.checkpoint_every = steps
    config.report.enabled = False
    with tempfile.TemporaryDirectory() as workdir:
        train.run(config, workdir)
        return [row for row in writers.read_metrics(workdir) if row['split'] == 'train']


def run_rounds(contenders: dict[str, tuple[list[str], dict]], rounds: int) -> dict[str, list]:
    """{name: [result dict per round]} for contenders {name: (argv, extra env)}."""
    results = {name: [] for name in contenders}
    for round_index in range(rounds):
        for name, (argv, env) in contenders.items():
            out = subprocess.run([sys.executable, *argv], env=dict(os.environ, **env),
                                 check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f'round {round_index + 1}: {name}: {results[name][-1]}', flush=True)
    return results


def print_table(results: dict[str, list], reference: str, unit: str,
                extra: tuple[str, ...] = ()) -> None:
    """Median rate per contender, its ratio to `reference`, and medians of extra fields."""
    median = lambda name, key: statistics.median(r[key] for r in results[name])
    ref = median(reference, 'rate')
    header = f'{"contender":44s} {unit:>10s} {"vs " + reference.split()[0]:>12s}'
    print('\n' + header + ''.join(f' {key:>8s}' for key in extra))
    for name in results:
        rate = median(name, 'rate')
        row = f'{name:44s} {rate:10.0f} {rate / ref:11.2f}x'
        for key in extra:
            row += (f' {median(name, key):8.3f}' if all(key in r for r in results[name])
                    else f' {"-":>8s}')
        print(row)


STUB = 'import os; print("a line before the result"); print(os.environ["RESULT"])'  # a worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--smoke', action='store_true',
                        help='2 rounds of two stub workers whose results are known')
    args = parser.parse_args()
    if not args.smoke:
        parser.error('compare.py is the other benchmarks\' library; --smoke checks it on stubs')
    results = run_rounds({'stub reference': (['-c', STUB], {'RESULT': '{"rate": 100}'}),
                          'stub twice as fast': (['-c', STUB],
                                                 {'RESULT': '{"rate": 200, "mfu": 0.5}'})}, 2)
    print_table(results, 'stub reference', 'items/s', extra=('mfu',))


if __name__ == '__main__':
    main()
