"""Offline LM pretraining on 2 CPU cores: a small decoder on the Python standard library's sources.

The corpus ships with Python (data.name='python_stdlib'); a 4096-token byte-level BPE is trained
on its training split once and cached. Minutes on a laptop:
python launch.py --config=configs/transformer_cpu.py --workdir=/tmp/bigjax/lm_cpu
"""

from bigjax.config import default_config, shrink_to_smoke


def get_config(arg: str | None = None):
    config = default_config()
    config.data.name = 'python_stdlib'
    config.data.eval_split = 'validation'
    config.data.text.tokenizer = 'bpe'
    config.data.text.vocab_size = 4096
    config.data.text.seq_len = 256
    config.model.name = 'transformer_lm'
    t = config.model.transformer
    t.width, t.depth, t.num_heads, t.mlp_dim, t.max_len = 256, 4, 4, 1024, 256
    t.attention = 'fused'  # the C++ kernel on CPUs with AVX-512, else einops (attention.py)
    config.optim.name = 'adamw'
    config.optim.learning_rate = 1e-3
    config.optim.b2 = 0.99
    config.optim.weight_decay = 0.1
    config.optim.grad_clip_norm = 1.0
    config.optim.schedule = 'cosine'
    config.optim.warmup_steps = 50
    config.optim.end_lr_ratio = 0.1
    config.train.batch_size = 16
    config.train.num_steps = 600
    config.train.log_every = 50
    config.train.eval_every = 200
    config.train.eval_batch_size = 64
    config.train.checkpoint_every = 200
    if arg == 'smoke':
        config.data.text.tokenizer = 'byte'
        config.data.eval_split = 'validation[:1]'
        config.data.text.seq_len = 32
        t.width, t.depth, t.num_heads, t.mlp_dim, t.max_len = 32, 2, 4, 64, 32
        config.optim.warmup_steps = 2
        shrink_to_smoke(config, num_steps=8)
    elif arg:
        raise ValueError(f'unknown config arg {arg!r}; use "smoke" or nothing')
    return config
