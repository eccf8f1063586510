"""Regularisation ablation on the digits CNN (configs/cnn_digits.py, 10 epochs): dropout, L2, L1
and augmentation (crop, rotation, scale), each on or off: 16 trials, ~4 min on 2 cores.

python experiments/regularization.py --workdir=/tmp/bigjax/studies/regularization [--workers=2]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigjax import study  # noqa: E402

AUGMENT = ('data.augment.crop_padding', 'data.augment.rotation_degrees',
           'data.augment.scale_min', 'data.augment.scale_max')

STUDY = study.Study(
    name='regularization', config='configs/cnn_digits.py', metric='accuracy',
    space={'model.cnn.dropout': [0.0, 0.5], 'optim.weight_decay': [0.0, 1e-3],
           'optim.l1': [0.0, 1e-4], AUGMENT: [(0, 0.0, 1.0, 1.0), (1, 10.0, 0.9, 1.1)]},
    fixed={'train.num_epochs': 10.0})

if __name__ == '__main__':
    study.main(STUDY)
