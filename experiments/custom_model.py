"""A model of your own against bigjax's: experiments/residual_cnn.py (defined and registered
outside bigjax) vs the stock CNN on the offline digits (configs/cnn_digits.py, 10 epochs), three
seeds each. The worked example for plugging in a module: copy residual_cnn.py, change the
module, keep the register call, and list your module in `imports`. 6 trials, ~1 min on 2 cores.

python experiments/custom_model.py --workdir=/tmp/bigjax/studies/custom_model
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigjax import study  # noqa: E402

STUDY = study.Study(
    name='custom_model', config='configs/cnn_digits.py', metric='accuracy',
    space={'model.name': ['cnn', 'residual_cnn'], 'seed': [0, 1, 2]},
    fixed={'train.num_epochs': 10.0}, imports=('experiments.residual_cnn',))

if __name__ == '__main__':
    study.main(STUDY)
