"""ViT on tfds `cifar10` (needs internet once): 32x32 images as 64 patches of 4x4, with crop,
flip and scale augmentation.

python launch.py --config=configs/vit_cifar10.py --workdir=/tmp/bigjax/vit_cifar10
"""

from bigjax.config import default_config, shrink_to_smoke


def get_config(arg: str | None = None):
    config = default_config()
    config.data.name = 'cifar10'
    config.data.augment.crop_padding = 4
    config.data.augment.horizontal_flip = True
    config.data.augment.scale_min, config.data.augment.scale_max = 0.9, 1.1
    config.model.name = 'vit'
    t = config.model.transformer
    t.width, t.depth, t.num_heads, t.mlp_dim = 256, 6, 8, 512
    t.patch_size, t.max_len, t.dropout = 4, 65, 0.1
    config.optim.name = 'adamw'
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.05
    config.optim.grad_clip_norm = 1.0
    config.optim.schedule = 'cosine'
    config.optim.warmup_steps = 1000
    config.train.batch_size = 256
    config.train.num_epochs = 100.0
    config.train.eval_batch_size = 1000
    config.train.log_every = 100
    if arg == 'smoke':
        t.width, t.depth, t.num_heads, t.mlp_dim = 16, 1, 2, 32
        config.optim.warmup_steps = 2
        shrink_to_smoke(config, num_steps=6)
    elif arg:
        raise ValueError(f'unknown config arg {arg!r}; use "smoke" or nothing')
    return config
