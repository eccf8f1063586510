"""Batch-size scaling on the digits CNN (configs/cnn_digits.py, 30 epochs each): batch 16 to 256
with the learning rate scaled linearly from 3e-3 at 64, so larger batches take fewer, larger steps.

python experiments/batch_size.py --workdir=/tmp/bigjax/studies/batch_size
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigjax import study  # noqa: E402

STUDY = study.Study(
    name='batch_size', config='configs/cnn_digits.py', metric='accuracy',
    space={('train.batch_size', 'optim.learning_rate'): [
        (16, 7.5e-4), (32, 1.5e-3), (64, 3e-3), (128, 6e-3), (256, 1.2e-2)]})

if __name__ == '__main__':
    study.main(STUDY)
