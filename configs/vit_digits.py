"""A small Vision Transformer on scikit-learn's digits, offline: 8x8 images as 16 patches of 2x2.

python launch.py --config=configs/vit_digits.py --workdir=/tmp/bigjax/vit_digits
"""

from bigjax.config import default_config, shrink_to_smoke


def get_config(arg: str | None = None):
    config = default_config()
    config.data.name = 'sklearn_digits'
    config.data.augment.rotation_degrees = 10.0
    config.data.augment.scale_min, config.data.augment.scale_max = 0.9, 1.1
    config.model.name = 'vit'
    t = config.model.transformer
    t.width, t.depth, t.num_heads, t.mlp_dim = 64, 4, 4, 128
    t.patch_size, t.max_len, t.dropout = 2, 17, 0.1
    config.optim.name = 'adamw'
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.05
    config.optim.schedule = 'cosine'
    config.optim.warmup_steps = 100
    config.train.batch_size = 64
    config.train.num_epochs = 60.0
    config.train.log_every = 200
    config.train.eval_every = 220
    if arg == 'smoke':
        t.width, t.depth, t.num_heads, t.mlp_dim = 16, 1, 2, 32
        config.optim.warmup_steps = 2
        shrink_to_smoke(config, num_steps=8)
    elif arg:
        raise ValueError(f'unknown config arg {arg!r}; use "smoke" or nothing')
    return config
