"""Learning rate x schedule on the digits CNN (configs/cnn_digits.py, 10 epochs): which peak rate,
and does the schedule matter? 15 trials, ~4 min on 2 cores.

python experiments/lr_schedule.py --workdir=/tmp/bigjax/studies/lr_schedule [--workers=2]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigjax import study  # noqa: E402

STUDY = study.Study(
    name='lr_schedule', config='configs/cnn_digits.py', metric='accuracy',
    space={'optim.learning_rate': [3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
           'optim.schedule': ['constant', 'step', 'cosine']},
    fixed={'train.num_epochs': 10.0, 'optim.step_every': 80, 'optim.step_factor': 0.1})

if __name__ == '__main__':
    study.main(STUDY)
