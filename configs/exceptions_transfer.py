"""Transfer to a code-reading task: pretrain the small LM on the Python standard library
(configs/transformer_cpu.py), then tell which exception an `except` clause catches from the 128
BPE tokens before its name (data.name='python_exceptions': 7 exceptions, 16 labelled clauses
each), with a decoder classifier of the LM's shape — causal attention, the last token's state
into a head — fine-tuned from the LM (lr 3e-5) or trained from scratch (lr 3e-4). Fine-tuning
starts the head as the LM's output layer at each exception's name (init_from.label_words), so it
begins from the LM's own guess of the word after `except`. Evaluated on the clauses of the
validation and test files, which the LM never saw.

python launch.py --config=configs/exceptions_transfer.py:pretrain --workdir=/tmp/bigjax/lm
python launch.py --config=configs/exceptions_transfer.py:finetune --workdir=/tmp/bigjax/ft \
    --config.init_from.path=/tmp/bigjax/lm
python launch.py --config=configs/exceptions_transfer.py:scratch --workdir=/tmp/bigjax/scratch
experiments/transfer.py --task=exceptions runs all three and prints the comparison. Append
",smoke" to the stage for a few steps of tiny models.
"""

from bigjax.config import parse_stage
from bigjax.data.python_exceptions import EXCEPTIONS
from configs import stdlib_transfer, transformer_cpu


def get_config(arg: str | None = None):
    stage, smoke = parse_stage(arg)
    config = transformer_cpu.get_config('smoke' if smoke else None)
    if stage == 'pretrain':
        return config
    config.data.name = 'python_exceptions'
    config.data.text.tokenizer_data = 'python_stdlib'  # the LM's BPE
    config.data.text.label_feature = 'label'
    config.data.text.keep = 'last'
    config.model.transformer.pool = 'last'
    config = stdlib_transfer.lm_to_classifier(  # each arm at its best rate of 3e-5 .. 1e-3
        config, smoke, labels_per_class=16, steps=150,
        learning_rate=3e-5 if stage == 'finetune' else 3e-4,
        eval_split='validation' if smoke else 'test')
    config.data.text.seq_len = 16 if smoke else 128
    if stage == 'finetune':  # the name follows `except ` (byte tokens: the space would be
        # every name's first token)
        config.init_from.label_words = EXCEPTIONS if smoke else tuple(f' {e}' for e in EXCEPTIONS)
    return config
