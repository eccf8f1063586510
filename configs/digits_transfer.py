"""Transfer on the offline digits: pretrain the CNN on digits 0-4, then learn 5-9 from 10 labels
per class, fine-tuned from the pretrained weights or from scratch.

python launch.py --config=configs/digits_transfer.py:pretrain --workdir=/tmp/bigjax/pre
python launch.py --config=configs/digits_transfer.py:finetune --workdir=/tmp/bigjax/ft \
    --config.init_from.path=/tmp/bigjax/pre
python launch.py --config=configs/digits_transfer.py:scratch --workdir=/tmp/bigjax/scratch
experiments/transfer.py --task=digits runs all three and prints the comparison. Append ",smoke"
to the stage (e.g. finetune,smoke) for a few steps on a tiny CNN. configs/mnist_transfer.py is the
same study on tfds mnist.
"""

from bigjax.config import parse_stage
from configs import cnn_digits

def split_digits(config, stage: str, smoke: bool, *, steps: int):
    """`config` (a 10-class CNN config) on classes 0-4 for pretraining; otherwise on 5-9 from 10
    labels per class for `steps` steps, the fine-tune with a new head."""
    if stage == 'pretrain':
        config.data.classes = (0, 1, 2, 3, 4)
        return config
    config.data.classes = (5, 6, 7, 8, 9)
    config.data.train_per_class = 10  # 50 labelled images
    config.train.batch_size = 40
    config.train.eval_batch_size = 40
    config.train.num_steps = 8 if smoke else steps
    config.train.log_every = 2 if smoke else 50
    config.train.eval_every = config.train.checkpoint_every = config.train.num_steps
    if stage == 'finetune':  # the same run as scratch but for the start
        config.init_from.skip = ('head/.*',)  # a new head for the new classes
    return config


def get_config(arg: str | None = None):
    stage, smoke = parse_stage(arg)
    return split_digits(cnn_digits.get_config('smoke' if smoke else None), stage, smoke,
                        steps=300)
