"""Does pretraining help? Digits 5-9 from 10 labels per class: fine-tuned from a CNN pretrained on
digits 0-4, against the same CNN trained from scratch (configs/digits_transfer.py), per seed.

python experiments/transfer_digits.py --workdir=/tmp/bigjax/transfer [--seeds=0,1,2] [--smoke]
Each run has its own sub-workdir, so rerunning resumes or skips finished runs.
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bigjax import train  # noqa: E402
from configs import digits_transfer  # noqa: E402

METRICS = ('accuracy', 'f1_macro', 'auc_macro')


def run_seed(workdir: str, seed: int, smoke: bool) -> dict[str, dict]:
    """{'finetune': eval metrics, 'scratch': eval metrics} for one seed."""
    suffix = ',smoke' if smoke else ''
    configs = {stage: digits_transfer.get_config(stage + suffix) for stage in digits_transfer.STAGES}
    for config in configs.values():
        config.seed = seed
        config.report.enabled = False
    pretrained = os.path.join(workdir, f'pretrain_seed{seed}')
    train.run(configs['pretrain'], pretrained)
    configs['finetune'].init_from.path = pretrained
    return {stage: train.run(configs[stage], os.path.join(workdir, f'{stage}_seed{seed}'))
            for stage in ('finetune', 'scratch')}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--seeds', default='0,1,2')
    parser.add_argument('--smoke', action='store_true', help='a few steps on a tiny CNN')
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(',')]
    results = {seed: run_seed(args.workdir, seed, args.smoke) for seed in seeds}
    print('\n| seed | ' + ' | '.join(f'{stage} {m}' for stage in ('finetune', 'scratch')
                                      for m in METRICS) + ' |')
    print('|---' * (1 + 2 * len(METRICS)) + '|')
    for seed, result in results.items():
        print(f'| {seed} | ' + ' | '.join(f'{result[stage][m]:.4f}' for stage in
                                         ('finetune', 'scratch') for m in METRICS) + ' |')
    for stage in ('finetune', 'scratch'):
        accuracies = [r[stage]['accuracy'] for r in results.values()]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        print(f'{stage}: accuracy {statistics.mean(accuracies):.4f} +- {spread:.4f} '
              f'over seeds {seeds}')


if __name__ == '__main__':
    main()
