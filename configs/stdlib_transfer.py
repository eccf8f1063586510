"""Transfer on the offline text corpus: pretrain the small LM on the Python standard library
(configs/transformer_cpu.py), then tell test code from library code by a file's first 255 BPE
tokens, from 16 labelled files per class, with an encoder classifier of the same shape that starts
from the LM's weights (fine-tune) or from scratch. The classifier is bidirectional where the LM was
causal; the token embedding, positions and blocks carry over, the class token and head start fresh.

python launch.py --config=configs/stdlib_transfer.py:pretrain --workdir=/tmp/bigjax/lm
python launch.py --config=configs/stdlib_transfer.py:finetune --workdir=/tmp/bigjax/ft \
    --config.init_from.path=/tmp/bigjax/lm
python launch.py --config=configs/stdlib_transfer.py:scratch --workdir=/tmp/bigjax/scratch
experiments/transfer.py --task=stdlib runs all three and prints the comparison. Append ",smoke" to
the stage for a few steps of tiny models.
"""

from bigjax.config import parse_stage
from configs import transformer_cpu


def lm_to_classifier(config, smoke: bool, *, labels_per_class: int, eval_split: str,
                     steps: int, learning_rate: float):
    """The LM `config` turned into the classifier that fine-tunes it: same data, tokenizer and
    backbone; a file's first max_len - 1 tokens and the class token fill the LM's positions."""
    t = config.data.text
    t.task = 'classification'
    t.seq_len = config.model.transformer.max_len - 1
    config.model.name = 'transformer_classifier'
    config.model.transformer.dropout = 0.1
    config.data.train_per_class = 4 if smoke else labels_per_class
    config.data.eval_split = eval_split
    config.optim.learning_rate = learning_rate
    config.optim.warmup_steps = 2 if smoke else steps // 10
    config.optim.end_lr_ratio = 0.0
    config.train.batch_size = 8 if smoke else 32
    config.train.eval_batch_size = 16 if smoke else 32
    config.train.num_steps = 6 if smoke else steps
    config.train.log_every = 2 if smoke else 20
    config.train.eval_every = config.train.checkpoint_every = config.train.num_steps
    return config


def get_config(arg: str | None = None):
    stage, smoke = parse_stage(arg)
    config = transformer_cpu.get_config('smoke' if smoke else None)
    if stage == 'pretrain':
        return config
    config.data.text.label_feature = 'is_test'
    return lm_to_classifier(config, smoke, labels_per_class=16, steps=100, learning_rate=3e-4,
                            eval_split='validation[:16]' if smoke else 'validation')
