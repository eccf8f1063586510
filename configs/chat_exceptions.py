"""Instruction tuning, offline: the small LM of configs/transformer_cpu.py, pretrained on the
Python standard library, learns to answer which exception an `except` clause catches
(data.name='python_exceptions_chat': the code before the name as the question, the name as the
answer, 16 conversations per exception), in bigjax's default chat template, the loss on the
answers only. Each evaluation answers every test clause greedily and scores exact matches
(answer_exact_match), beside the loss on the answers. The same questions as
configs/exceptions_transfer.py's classifier, from the same files the LM never saw.

python launch.py --config=configs/chat_exceptions.py:pretrain --workdir=/tmp/bigjax/lm
python launch.py --config=configs/chat_exceptions.py:finetune --workdir=/tmp/bigjax/chat \
    --config.init_from.path=/tmp/bigjax/lm
python launch.py --config=configs/chat_exceptions.py:finetune --workdir=/tmp/bigjax/chat \
    --mode=sample --conversation='[{"role": "user", "content": "Which exception ..."}]'
experiments/transfer.py --task=chat runs pretraining, fine-tuning and training from scratch and
prints the comparison. Append ",smoke" to the stage for a few steps of tiny models.
"""

from bigjax.config import parse_stage
from configs import transformer_cpu


def get_config(arg: str | None = None):
    stage, smoke = parse_stage(arg)
    config = transformer_cpu.get_config('smoke' if smoke else None)
    if stage == 'pretrain':
        return config
    config.data.name = 'python_exceptions_chat'
    config.data.eval_split = 'validation' if smoke else 'test'
    if not smoke:
        config.data.text.tokenizer_data = 'python_stdlib'  # the LM's BPE
    config.data.train_per_class = 16
    config.data.chat.eval_generations = 16 if smoke else 164  # every test clause
    config.data.chat.answer_tokens = 8
    config.optim.learning_rate = 3e-4  # each arm's best on validation (experiments/README.md)
    config.optim.warmup_steps = 2 if smoke else 10
    config.optim.weight_decay = 0.0
    config.train.num_steps = 150
    config.train.log_every = 10
    config.train.eval_every = 50
    config.train.checkpoint_every = 50
    if smoke:  # bytes: the ~560 characters of a question need a longer window than the LM's
        config.data.text.seq_len = 767
        config.model.transformer.max_len = 768
        config.init_from.resize = ('encoder/position_embedding',)
        config.train.num_steps = 6
        config.train.log_every = config.train.eval_every = config.train.checkpoint_every = 3
    return config
