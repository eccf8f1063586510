"""LM pretraining on tfds `lm1b` on a Cloud TPU slice (every host runs the same command).

Sizes by arg: '100m' (default; fits one v5e chip, Colab's TPU, and a v5e-8 or v4-8), '300m' and
'1b' (a v5e-8 or a v4-8): bf16 compute with float32 parameters, FSDP over all chips, splash
attention with the sentences of a window kept apart (segment ids, as flax's lm1b example), the
layers scanned, block recomputation ('dots' for 300m) and the logits made 128 positions at a
time. '8b' and '70b' are Llama 3's shapes (grouped-query attention, untied embeddings, a vocabulary
of 128,256): 8b for a v5p-64 or two v5e-256 slices (--num_slices=2; mesh.data spans them), 70b
for a v5p-256 or a v5e-256. `--mode=compile --topology=v5e-8` checks a size fits before you rent
it and estimates its step time.
python launch.py --config=configs/transformer_tpu.py:300m --workdir=gs://BUCKET/lm1b_300m
"""

from bigjax.config import default_config, shrink_to_smoke

SIZES = {  # width, depth, heads, mlp width
    '100m': (768, 12, 12, 3072),
    '300m': (1024, 24, 16, 4096),
    '1b': (2048, 18, 16, 8192),
}
LLAMA_3 = {  # width, depth, heads, KV heads, mlp width (Meta's Llama 3 8B and 70B)
    '8b': (4096, 32, 32, 8, 14336),
    '70b': (8192, 80, 64, 8, 28672),
}


def get_config(arg: str | None = None):
    size = arg or '100m'
    config = default_config()
    config.data.name = 'lm1b'
    config.data.eval_split = 'test'
    config.data.text.tokenizer = 'bpe'
    config.data.text.vocab_size = 32768
    config.data.text.seq_len = 512
    config.data.text.whitespace = 'collapse'
    config.data.text.document_mask = True  # sentences packed in a window do not see each other
    config.data.prefetch = 4
    config.model.name = 'transformer_lm'
    t = config.model.transformer
    if size != 'smoke' and size not in SIZES and size not in LLAMA_3:
        raise ValueError(f'unknown config arg {arg!r}; use one of '
                         f'{sorted(SIZES) + sorted(LLAMA_3)} or "smoke"')
    t.width, t.depth, t.num_heads, t.mlp_dim = SIZES.get(size, SIZES['100m'])
    t.max_len = 512
    t.positions = 'rope'
    t.mlp = 'swiglu'
    t.norm = 'rmsnorm'
    t.attention = 'fused'  # Pallas splash attention on TPU
    t.dtype = 'bfloat16'
    t.param_dtype = 'float32'
    t.remat = 'dots' if size == '300m' else 'block'  # the least recomputation that fits
    t.scan_layers = True
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, -1, 1
    config.optim.name = 'adamw'
    config.optim.learning_rate = 3e-4 if size == '1b' else 6e-4
    config.optim.b2 = 0.95
    config.optim.weight_decay = 0.1
    config.optim.grad_clip_norm = 1.0
    config.optim.schedule = 'cosine'
    config.optim.warmup_steps = 2000
    config.optim.end_lr_ratio = 0.1
    config.train.batch_size = 256
    config.train.num_steps = 100_000
    config.train.log_every = 100
    config.train.eval_every = 5000
    config.train.eval_batch_size = 256
    config.train.checkpoint_every = 2000
    config.train.logits_chunk = 128
    if size in LLAMA_3:
        t.width, t.depth, t.num_heads, t.num_kv_heads, t.mlp_dim = LLAMA_3[size]
        t.tied_embeddings = False
        t.rope_theta = 500_000.0
        t.norm_eps = 1e-5
        config.data.text.vocab_size = 128_256
        config.optim.learning_rate = 3e-4 if size == '8b' else 1.5e-4
        # 8b: two data-parallel halves (one per slice on two slices), FSDP inside each;
        # 70b: tensor parallel in 4 as well, which shrinks the gathered layer and its traffic.
        config.mesh.data, config.mesh.tensor = (2, 1) if size == '8b' else (1, 4)
        # 8b: 2048 sequences (4 a chip on two v5e-256): at 1 a chip its FSDP gathers take
        # 5x its compute (the estimate of --mode=compile); 70b: 256.
        config.train.batch_size = config.train.eval_batch_size = 2048 if size == '8b' else 256
    if size == 'smoke':
        config.data.text.vocab_size = 300
        config.data.text.seq_len = 32
        t.width, t.depth, t.num_heads, t.mlp_dim, t.max_len = 32, 2, 4, 64, 32
        t.dtype = 'float32'
        config.mesh.fsdp, config.mesh.tensor = -1, 2
        config.optim.warmup_steps = 2
        config.train.logits_chunk = 8
        shrink_to_smoke(config, num_steps=6)
    return config
