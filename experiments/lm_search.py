"""Bayesian search (optuna TPE) over the small LM's learning rate, warmup and width
(configs/transformer_cpu.py, shortened to 150 steps of 128 tokens), minimising validation bits
per byte: 10 trials, ~8 min on 2 cores; --search=random for the same space at random.

python experiments/lm_search.py --workdir=/tmp/bigjax/studies/lm_search [--trials=20]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigjax import study  # noqa: E402

STUDY = study.Study(
    name='lm_search', config='configs/transformer_cpu.py', metric='bits_per_byte', goal='min',
    search='bayes', trials=10,
    space={'optim.learning_rate': study.Uniform(1e-4, 1e-2, log=True),
           'optim.warmup_steps': study.IntRange(0, 60),
           ('model.transformer.width', 'model.transformer.mlp_dim'): [(64, 256), (128, 512),
                                                                     (192, 768)]},
    fixed={'train.num_steps': 150, 'data.text.seq_len': 128, 'model.transformer.max_len': 128,
           'train.eval_every': 150, 'train.checkpoint_every': 150, 'train.log_every': 50})

if __name__ == '__main__':
    study.main(STUDY)
