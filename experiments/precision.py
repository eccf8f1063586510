"""bf16 vs fp32 compute on the digits ViT (configs/vit_digits.py, 20 epochs), two seeds each:
does bfloat16 (fp32 parameters) cost accuracy? On CPU it is slower; on TPU/GPU it is the fast path.

python experiments/precision.py --workdir=/tmp/bigjax/studies/precision
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigjax import study  # noqa: E402

STUDY = study.Study(
    name='precision', config='configs/vit_digits.py', metric='accuracy',
    space={'model.transformer.dtype': ['float32', 'bfloat16'], 'seed': [0, 1]},
    fixed={'train.num_epochs': 20.0, 'train.eval_every': 0})

if __name__ == '__main__':
    study.main(STUDY)
