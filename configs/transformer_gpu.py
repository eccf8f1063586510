"""LM pretraining on tfds `lm1b` on one NVIDIA GPU box (A100/H100/H200 80 GB+; all its GPUs).

bf16 compute, cuDNN flash attention (attention='fused' is jax.nn.dot_product_attention on GPU),
data parallel over the GPUs, no recomputation: each size fits an 8-GPU A100 80 GB box with
room to spare (docs/compile.md: `--mode=compile --topology=a100-8`). Sizes by arg as in
transformer_tpu.py: '100m' (default), '300m', '1b'.
python launch.py --config=configs/transformer_gpu.py --workdir=/data/runs/lm1b_100m
"""

from configs import transformer_tpu


def get_config(arg: str | None = None):
    config = transformer_tpu.get_config(arg)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    # jax's cuDNN attention takes no segment ids: document masks would run XLA's attention with a
    # dense mask instead (--config.data.text.document_mask=True to keep sentences apart anyway).
    config.data.text.document_mask = False
    config.model.transformer.remat = 'none'
    config.train.logits_chunk = 0
    if arg != 'smoke':
        config.train.batch_size = 128
        config.train.eval_batch_size = 128
    return config
