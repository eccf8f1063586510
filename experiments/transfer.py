"""Does pretraining help? A model pretrained once, then fine-tuned on a small labelled task, against
the same model trained from scratch on it, per seed.

  --task=digits: digits 5-9 from 10 labels per class, the CNN pretrained on digits 0-4
                 (configs/digits_transfer.py; ~30 s a seed on 2 cores).
  --task=stdlib: test code or library code from a file's first 255 tokens, 16 labelled files per
                 class, the classifier starting from the small LM pretrained on the stdlib
                 (configs/stdlib_transfer.py; ~13 min of pretraining, then ~6 min a seed).
  --task=exceptions: which exception an `except` clause catches, from the 128 tokens before it,
                 16 labelled clauses per exception, a decoder classifier starting from the same
                 LM (configs/exceptions_transfer.py; the same pretraining, then ~2 min a run).
  --task=mnist, --task=imdb: the same studies on tfds mnist and imdb_reviews, for machines with
                 internet (configs/mnist_transfer.py, configs/imdb_transfer.py).

python experiments/transfer.py --task=digits --workdir=/tmp/bigjax/transfer [--seeds=0,1,2]
Each run has its own sub-workdir, so rerunning resumes or skips finished runs; --smoke runs a few
steps of tiny models.
"""

import argparse
import importlib
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bigjax import train  # noqa: E402

TASKS = {'digits': 'configs.digits_transfer', 'stdlib': 'configs.stdlib_transfer',
         'exceptions': 'configs.exceptions_transfer',
         'mnist': 'configs.mnist_transfer', 'imdb': 'configs.imdb_transfer'}
METRICS = ('accuracy', 'f1_macro', 'auc')  # auc: macro over classes (auc_macro) when > 2
COMPARED = ('finetune', 'scratch')


def run(task: str, workdir: str, seeds: list[int], smoke: bool) -> dict:
    """{seed: {'finetune': eval metrics, 'scratch': eval metrics}}; the pretraining runs once
    (seed 0), each seed then fine-tunes and trains from scratch."""
    module = importlib.import_module(TASKS[task])
    suffix = ',smoke' if smoke else ''

    def config(stage: str, seed: int):
        c = module.get_config(stage + suffix)
        c.seed = seed
        c.report.enabled = False
        return c

    pretrained = os.path.join(workdir, 'pretrain')
    train.run(config('pretrain', 0), pretrained)
    results = {}
    for seed in seeds:
        configs = {stage: config(stage, seed) for stage in COMPARED}
        configs['finetune'].init_from.path = pretrained
        results[seed] = {stage: train.run(c, os.path.join(workdir, f'{stage}_seed{seed}'))
                         for stage, c in configs.items()}
    return results


def table(results: dict) -> str:
    """A Markdown table of every seed's metrics, then each stage's mean and spread."""
    lines = ['| seed | ' + ' | '.join(f'{stage} {m}' for stage in COMPARED for m in METRICS) + ' |',
             '|---' * (1 + len(COMPARED) * len(METRICS)) + '|']
    for seed, result in results.items():
        lines.append(f'| {seed} | ' + ' | '.join(
            f'{result[stage].get(m, result[stage].get(m + "_macro", float("nan"))):.4f}'
            for stage in COMPARED for m in METRICS) + ' |')
    for stage in COMPARED:
        accuracies = [r[stage]['accuracy'] for r in results.values()]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        lines.append(f'{stage}: accuracy {statistics.mean(accuracies):.4f} +- {spread:.4f} '
                     f'over seeds {list(results)}')
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--task', choices=sorted(TASKS), required=True)
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--seeds', default='0,1,2')
    parser.add_argument('--smoke', action='store_true', help='a few steps of tiny models')
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(',')]
    print('\n' + table(run(args.task, args.workdir, seeds, args.smoke)))


if __name__ == '__main__':
    main()
