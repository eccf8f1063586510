"""Does pretraining help? A model pretrained once, then fine-tuned on a small labelled task, against
the same model trained from scratch on it, per seed.

  --task=digits: digits 5-9 from 10 labels per class, the CNN pretrained on digits 0-4
                 (configs/digits_transfer.py; ~35 s for three seeds on 2 cores).
  --task=stdlib: test code or library code from a file's first 255 tokens, 16 labelled files per
                 class, the classifier starting from the small LM pretrained on the stdlib
                 (configs/stdlib_transfer.py; ~13 min of pretraining, then ~6 min a seed).
  --task=exceptions: which exception an `except` clause catches, from the 128 tokens before it,
                 16 labelled clauses per exception, a decoder classifier starting from the same
                 LM (configs/exceptions_transfer.py; the same pretraining, then ~2 min a run).
  --task=chat:   the same question as instruction tuning: the LM answers which exception a
                 clause catches in a chat template, from 16 conversations per exception, scored
                 by exact match of its greedy answers on the test clauses
                 (configs/chat_exceptions.py; the same pretraining, then ~3 min a run).
  --task=mnist, --task=imdb: the same studies on tfds mnist and imdb_reviews, for machines with
                 internet (configs/mnist_transfer.py, configs/imdb_transfer.py).

python experiments/transfer.py --task=digits --workdir=/tmp/bigjax/transfer [--seeds=0,1,2]
Each run has its own sub-workdir, so rerunning resumes or skips finished runs; --smoke runs a few
steps of tiny models. --before also scores the pretrained model before any labelled step (the
fine-tuning config for one step at a learning rate of 1e-12). --set KEY=VALUE (repeatable)
overrides a config key in every run, e.g. --set model.transformer.attention=einops.
"""

import argparse
import ast
import importlib
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bigjax import train  # noqa: E402

CLASSIFIER_METRICS = ('accuracy', 'f1_macro', 'auc')  # auc: macro (auc_macro) over > 2 classes
TASKS = {  # task: (its configs, the eval metrics compared; the first is summarised)
    'digits': ('configs.digits_transfer', CLASSIFIER_METRICS),
    'stdlib': ('configs.stdlib_transfer', CLASSIFIER_METRICS),
    'exceptions': ('configs.exceptions_transfer', CLASSIFIER_METRICS),
    'chat': ('configs.chat_exceptions', ('answer_exact_match', 'loss')),
    'mnist': ('configs.mnist_transfer', CLASSIFIER_METRICS),
    'imdb': ('configs.imdb_transfer', CLASSIFIER_METRICS)}
COMPARED = ('finetune', 'scratch')


def run(task: str, workdir: str, seeds: list[int], smoke: bool, before: bool = False,
        overrides: dict | None = None) -> dict:
    """{seed: {'finetune': eval metrics, 'scratch': eval metrics}}; the pretraining runs once
    (seed 0), each seed then fine-tunes and trains from scratch. With `before`, also
    {'before': the fine-tuning config's metrics after one step at a learning rate of 1e-12}.
    overrides: {'section.key': value} set in every run's config."""
    module = importlib.import_module(TASKS[task][0])
    suffix = ',smoke' if smoke else ''

    def config(stage: str, seed: int):
        c = module.get_config(stage + suffix)
        c.seed = seed
        c.report.enabled = False
        for key, value in (overrides or {}).items():
            section, _, name = key.rpartition('.')
            target = c
            for part in filter(None, section.split('.')):
                target = target[part]
            target[name] = value
        return c

    pretrained = os.path.join(workdir, 'pretrain')
    train.run(config('pretrain', 0), pretrained)
    results = {}
    if before:
        c = config('finetune', 0)
        c.init_from.path = pretrained
        c.train.num_steps, c.optim.learning_rate, c.optim.warmup_steps = 1, 1e-12, 0
        results['before'] = train.run(c, os.path.join(workdir, 'before'))
    for seed in seeds:
        configs = {stage: config(stage, seed) for stage in COMPARED}
        configs['finetune'].init_from.path = pretrained
        results[seed] = {stage: train.run(c, os.path.join(workdir, f'{stage}_seed{seed}'))
                         for stage, c in configs.items()}
    return results


def table(results: dict, metrics: tuple = CLASSIFIER_METRICS) -> str:
    """A Markdown table of every seed's metrics, then each stage's mean and spread of the first
    metric (and the pretrained model's before any labelled step, when measured)."""
    value = lambda result, m: result.get(m, result.get(m + '_macro', float('nan')))
    seeds = {seed: result for seed, result in results.items() if seed != 'before'}
    lines = ['| seed | ' + ' | '.join(f'{stage} {m}' for stage in COMPARED for m in metrics) + ' |',
             '|---' * (1 + len(COMPARED) * len(metrics)) + '|']
    for seed, result in seeds.items():
        lines.append(f'| {seed} | ' + ' | '.join(
            f'{value(result[stage], m):.4f}' for stage in COMPARED for m in metrics) + ' |')
    first = metrics[0]
    for stage in COMPARED:
        values = [value(r[stage], first) for r in seeds.values()]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f'{stage}: {first} {statistics.mean(values):.4f} +- {spread:.4f} '
                     f'over seeds {list(seeds)}')
    if 'before' in results:
        lines.append('before any labelled step: ' + ', '.join(
            f'{m} {value(results["before"], m):.4f}' for m in metrics))
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--task', choices=sorted(TASKS), required=True)
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--seeds', default='0,1,2')
    parser.add_argument('--smoke', action='store_true', help='a few steps of tiny models')
    parser.add_argument('--before', action='store_true',
                        help='also score the pretrained model before any labelled step')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='a config override for every run (a Python literal or a string)')
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(',')]
    overrides = {}
    for item in args.set:
        key, _, text = item.partition('=')
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text
    results = run(args.task, args.workdir, seeds, args.smoke, args.before, overrides)
    print('\n' + table(results, TASKS[args.task][1]))


if __name__ == '__main__':
    main()
