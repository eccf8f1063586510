"""The pretrain -> fine-tune study on tfds imdb_reviews (needs internet once): a byte-level LM
pretrained on the 50,000 unlabelled reviews, then a sentiment classifier from 100 labelled reviews
per class (a review's first 511 bytes), fine-tuned from the LM or trained from scratch, scored on
the 25,000 test reviews. Sized for one accelerator; set model.transformer.dtype='bfloat16' there.

python experiments/transfer.py --task=imdb --workdir=/tmp/bigjax/imdb_transfer
Stages and ",smoke" as in configs/stdlib_transfer.py.
"""

from bigjax.config import default_config, parse_stage, shrink_to_smoke
from configs import stdlib_transfer


def get_config(arg: str | None = None):
    stage, smoke = parse_stage(arg)
    config = default_config()
    config.data.name = 'imdb_reviews'
    config.data.train_split = 'unsupervised'
    config.data.eval_split = 'test[:2000]'
    t = config.data.text
    t.task, t.tokenizer, t.whitespace, t.seq_len = 'lm', 'byte', 'collapse', 512
    config.model.name = 'transformer_lm'
    m = config.model.transformer
    m.width, m.depth, m.num_heads, m.mlp_dim, m.max_len = 384, 6, 6, 1536, 512
    config.optim.name = 'adamw'
    config.optim.learning_rate = 6e-4
    config.optim.b2 = 0.95
    config.optim.weight_decay = 0.1
    config.optim.grad_clip_norm = 1.0
    config.optim.schedule = 'cosine'
    config.optim.warmup_steps = 200
    config.optim.end_lr_ratio = 0.1
    config.train.batch_size = 64
    config.train.num_steps = 5000
    config.train.log_every = 100
    config.train.eval_every = config.train.checkpoint_every = 1000
    config.train.eval_batch_size = 64
    if smoke:
        t.seq_len = 32
        m.width, m.depth, m.num_heads, m.mlp_dim, m.max_len = 32, 2, 4, 64, 32
        config.optim.warmup_steps = 2
        shrink_to_smoke(config, num_steps=8)
    if stage == 'pretrain':
        return config
    config.data.train_split = 'train'
    return stdlib_transfer.lm_to_classifier(config, smoke, labels_per_class=100, steps=300,
                                            learning_rate=1e-4, eval_split='test')
