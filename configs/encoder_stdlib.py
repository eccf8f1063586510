"""An encoder classifier, offline: is a Python standard library file test code or library code?

Labels come from the corpus itself (`is_test`); the model sees a file's first 256 byte tokens.
python launch.py --config=configs/encoder_stdlib.py --workdir=/tmp/bigjax/encoder_stdlib
"""

from bigjax.config import default_config, shrink_to_smoke


def get_config(arg: str | None = None):
    config = default_config()
    config.data.name = 'python_stdlib'
    config.data.eval_split = 'validation'
    config.data.text.task = 'classification'
    config.data.text.label_feature = 'is_test'
    config.data.text.seq_len = 256
    config.model.name = 'transformer_classifier'
    t = config.model.transformer
    t.width, t.depth, t.num_heads, t.mlp_dim, t.max_len = 128, 2, 4, 256, 257
    t.dropout = 0.1
    config.optim.name = 'adamw'
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.05
    config.optim.schedule = 'cosine'
    config.optim.warmup_steps = 50
    config.train.batch_size = 32
    config.train.num_epochs = 10.0
    config.train.log_every = 50
    config.train.eval_batch_size = 80
    if arg == 'smoke':
        config.data.text.seq_len = 32
        config.data.eval_split = 'validation[:1]'
        t.width, t.depth, t.num_heads, t.mlp_dim, t.max_len = 16, 1, 2, 32, 33
        config.optim.warmup_steps = 2
        shrink_to_smoke(config, num_steps=6)
    elif arg:
        raise ValueError(f'unknown config arg {arg!r}; use "smoke" or nothing')
    return config
