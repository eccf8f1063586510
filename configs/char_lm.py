"""A character-level decoder LM for any text file, in the well-known small CPU setting: 4 layers,
4 heads, width 128, context 64, batch 12, 2000 steps, AdamW (beta2 0.99) with 100 warmup steps
and cosine decay to a tenth, no dropout; the first 90 % of the characters train, the last 10 %
evaluate (loss in nats per character over all of them every 500 steps); the report samples 300
characters. The peak rate is 2e-3, not nanoGPT's 1e-3: on Tiny Shakespeare validation loss
1.737 against 1.807 after the same 2000 steps (benchmarks/README.md).

python launch.py --config=configs/char_lm.py --workdir=/tmp/bigjax/char \
    --config.data.paths=input.txt[,more/*.txt]
python launch.py --config=configs/char_lm.py --workdir=/tmp/bigjax/char --mode=sample \
    --config.data.paths=input.txt --prompt='ROMEO:' --num_tokens=500
"""

import os

from bigjax.config import default_config, shrink_to_smoke


def get_config(arg: str | None = None):
    config = default_config()
    config.data.name = 'text_files'
    config.data.val_fraction = 0.1
    t = config.data.text
    t.tokenizer, t.seq_len, t.whitespace, t.unicode_form = 'char', 64, 'keep', ''
    config.model.name = 'transformer_lm'
    m = config.model.transformer
    m.width, m.depth, m.num_heads, m.mlp_dim, m.max_len, m.dropout = 128, 4, 4, 512, 64, 0.0
    m.attention = 'fused'  # the C++ kernel on CPUs with AVX-512, else einops (attention.py)
    config.optim.name = 'adamw'
    config.optim.learning_rate = 2e-3
    config.optim.b2 = 0.99
    config.optim.weight_decay = 0.1
    config.optim.grad_clip_norm = 1.0
    config.optim.schedule = 'cosine'
    config.optim.warmup_steps = 100
    config.optim.end_lr_ratio = 0.1
    config.train.batch_size = 12
    config.train.num_steps = 2000
    config.train.log_every = 250
    config.train.eval_every = 500
    config.train.checkpoint_every = 1000
    config.train.eval_batch_size = 96
    config.report.sample_tokens = 300
    if arg == 'smoke':  # this repository's README as the text
        config.data.paths = os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), 'README.md')
        t.seq_len = m.max_len = 32
        m.width, m.depth, m.num_heads, m.mlp_dim = 32, 2, 4, 64
        config.optim.warmup_steps = 2
        shrink_to_smoke(config, num_steps=8)
    elif arg:
        raise ValueError(f'unknown config arg {arg!r}; use "smoke" or nothing')
    return config
