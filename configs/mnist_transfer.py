"""configs/digits_transfer.py's study on tfds mnist (needs internet once): the article's CNN
pretrained on digits 0-4, then 5-9 from 10 labels per class, fine-tuned or from scratch.

python experiments/transfer.py --task=mnist --workdir=/tmp/bigjax/mnist_transfer
Stages and ",smoke" as in configs/digits_transfer.py.
"""

from bigjax.config import parse_stage
from configs import cnn_mnist, digits_transfer


def get_config(arg: str | None = None):
    stage, smoke = parse_stage(arg)
    return digits_transfer.split_digits(cnn_mnist.get_config('smoke' if smoke else None), stage,
                                        smoke, steps=500)
