"""Causal attention alone on CPU: bigjax's fused kernel vs the einops reference vs
jax.nn.dot_product_attention vs PyTorch's scaled_dot_product_attention, forward and
forward+backward, at the benchmark LM's shape (batch 16, 256 tokens, 4 heads of 64), in one
process, interleaved rounds, best of each. The fused kernel also runs with document masks
(segment ids): one document a row (masks that hide nothing: their pure cost) and four packed
documents a row (blocks across documents skipped), each against the kernel without ids.

Inputs are the packed projection (B, T, heads, 3, K) the model hands to attention, so the JAX
contenders pay for the slices and layouts they need, as they do in the model.

python benchmarks/attention_cpu.py [--rounds=5] [--smoke]
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import bigjax  # noqa: E402,F401  (sets bigjax's XLA defaults before jax starts)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from bigjax.models import attention  # noqa: E402

BATCH, LENGTH, HEADS, WIDTH = 16, 256, 4, 64


def document_segments(batch: int, length: int, documents: int) -> np.ndarray:
    """Segment ids of `documents` packed documents of uneven lengths in each row."""
    cuts = (np.array([0.27, 0.51, 0.78])[:documents - 1] * length).astype(int)
    return np.broadcast_to(1 + np.searchsorted(cuts, np.arange(length), side='right'),
                           (batch, length)).astype(np.int32)


def jax_contenders(batch: int, length: int):
    def make(attend, packed_hint, segments=None):
        def forward(qkv):
            q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
            extra = {'qkv_BTGCK': qkv} if packed_hint else {}
            if segments is not None:
                ids = jax.numpy.asarray(segments)
                extra.update(query_segments_BT=ids, key_segments_BS=ids)
            return attend(q, k, v, causal=True, **extra)

        def forward_backward(qkv):
            out, vjp = jax.vjp(forward, qkv)
            return vjp(out)
        return jax.jit(forward), jax.jit(forward_backward)

    return {'bigjax fused kernel': make(attention.fused_attention, True),
            'fused kernel, 1 document a row': make(
                attention.fused_attention, True, document_segments(batch, length, 1)),
            'fused kernel, 4 documents a row': make(
                attention.fused_attention, True, document_segments(batch, length, 4)),
            'einops reference': make(attention.einops_attention, False),
            'jax.nn.dot_product_attention': make(attention.library_attention, False)}


def torch_contender(qkv_np):
    import torch
    import torch.nn.functional as F
    packed = torch.from_numpy(qkv_np.copy())
    q, k, v = (packed[:, :, :, i].transpose(1, 2).contiguous().requires_grad_() for i in range(3))

    def forward():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def forward_backward():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(out.detach())
    return forward, forward_backward


def best_ms(fn, block, repeats=10) -> float:
    block(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    block(result)
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--smoke', action='store_true',
                        help='1 round at batch 1, 128 tokens (two key blocks), 1 head')
    args = parser.parse_args()
    rounds, (batch, length, heads, width) = ((1, (1, 128, 1, WIDTH)) if args.smoke else
                                             (args.rounds, (BATCH, LENGTH, HEADS, WIDTH)))
    qkv_np = np.random.default_rng(0).standard_normal(
        (batch, length, heads, 3, width)).astype(np.float32)
    qkv = jax.numpy.asarray(qkv_np)
    timers = {name: (lambda f=f: f(qkv), lambda f=g: f(qkv))
              for name, (f, g) in jax_contenders(batch, length).items()}
    timers['pytorch SDPA'] = torch_contender(qkv_np)
    blocks = {name: (lambda r: None) if name.startswith('pytorch') else jax.block_until_ready
              for name in timers}
    best = {name: [float('inf'), float('inf')] for name in timers}
    for _ in range(rounds):
        for name, fns in timers.items():
            for i, fn in enumerate(fns):
                best[name][i] = min(best[name][i], best_ms(fn, blocks[name]))
    reference = best['pytorch SDPA'][1]
    print(f'\nB{batch} T{length} H{heads} K{width} causal float32, {os.cpu_count()} CPUs, '
          f'best of {rounds} rounds')
    print(f'{"contender":32s} {"forward ms":>11s} {"fwd+bwd ms":>11s} {"fwd+bwd vs pytorch":>19s}')
    for name, (forward, both) in best.items():
        print(f'{name:32s} {forward:11.2f} {both:11.2f} {reference / both:18.2f}x')
    plain = best['bigjax fused kernel'][1]
    for documents in (1, 4):
        masked = best[f'fused kernel, {documents} document{"s" if documents > 1 else ""} a row'][1]
        print(f'document masks, {documents} a row: fwd+bwd {masked / plain:.3f}x the kernel '
              f'without them ({100 * (masked / plain - 1):+.1f} %)')


if __name__ == '__main__':
    main()
