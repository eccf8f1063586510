"""Training throughput of a small decoder LM: bigjax vs a PyTorch eager reference, side by side.

The same model on both sides: width 256, 4 pre-LayerNorm blocks of 4-head causal attention and a
1024-wide GELU MLP (no biases in the projections), learned positions, tied 258-token byte
embedding, sequences of 256, batch 16, AdamW with global-norm clipping. bigjax runs its real
`train.run` (configs/transformer_cpu.py with these sizes, byte tokens of the offline stdlib
corpus) and reports the steady-state tokens/s and MFU it logs, MFU being against the float32
matmul peak measured in the same process. PyTorch runs the usual eager loop with
`scaled_dot_product_attention` on random tokens of the same shape. Separate processes, in
alternating rounds.

python benchmarks/lm_vs_pytorch.py [--rounds=3] [--steps=40] [--smoke]
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import print_table, run_rounds, train_rows  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = '--smoke' in sys.argv  # the model's size, read here and in the workers (given --smoke)
WIDTH, DEPTH, HEADS, MLP, LENGTH, BATCH, VOCAB = ((32, 2, 4, 64, 32, 4, 258) if SMOKE else
                                                  (256, 4, 4, 1024, 256, 16, 258))


def bigjax_worker(steps: int, attention: str) -> dict:
    sys.path.insert(0, REPO)
    sys.path.insert(0, os.path.join(REPO, 'configs'))
    import transformer_cpu

    config = transformer_cpu.get_config()
    config.data.text.tokenizer = 'byte'
    config.data.text.seq_len = LENGTH
    t = config.model.transformer
    t.width, t.depth, t.num_heads, t.mlp_dim, t.max_len = WIDTH, DEPTH, HEADS, MLP, LENGTH
    t.attention = attention
    config.train.batch_size = BATCH
    config.optim.warmup_steps = 0
    config.train.log_every = 10
    config.train.eval_batch_size = BATCH
    config.data.eval_split = 'validation[:1]' if SMOKE else 'validation[:32]'
    rows = train_rows(config, steps)[1:]
    return {'rate': statistics.median(r['tokens_per_sec'] for r in rows),
            'mfu': statistics.median(r['mfu'] for r in rows)}


def pytorch_worker(steps: int) -> dict:
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention_norm, self.mlp_norm = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
            self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
            self.out = nn.Linear(WIDTH, WIDTH, bias=False)
            self.up = nn.Linear(WIDTH, MLP, bias=False)
            self.down = nn.Linear(MLP, WIDTH, bias=False)

        def forward(self, x):
            batch, length, _ = x.shape
            q, k, v = self.qkv(self.attention_norm(x)).split(WIDTH, dim=-1)
            heads = lambda t: t.view(batch, length, HEADS, -1).transpose(1, 2)
            y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
            x = x + self.out(y.transpose(1, 2).reshape(batch, length, WIDTH))
            return x + self.down(F.gelu(self.up(self.mlp_norm(x)), approximate='tanh'))

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(VOCAB, WIDTH)
            self.positions = nn.Parameter(torch.randn(LENGTH, WIDTH) * 0.02)
            self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
            self.final_norm = nn.LayerNorm(WIDTH)

        def forward(self, tokens):
            x = self.embedding(tokens) + self.positions[:tokens.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.final_norm(x) @ self.embedding.weight.T

    torch.manual_seed(0)
    model = LM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99),
                                  weight_decay=0.1)
    tokens = torch.randint(2, VOCAB, (steps + 5, BATCH, LENGTH + 1))

    def run(indices):
        for i in indices:
            optimizer.zero_grad(set_to_none=True)
            logits = model(tokens[i, :, :-1])
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[i, :, 1:].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        return loss.item()

    run(range(steps, steps + 5))  # warm-up
    start = time.perf_counter()
    run(range(steps))
    return {'rate': steps * BATCH * LENGTH / (time.perf_counter() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--steps', type=int, default=40)
    parser.add_argument('--smoke', action='store_true',
                        help='a width-32 model, 1 round of 11 steps, PyTorch and fused bigjax only')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == 'torch':
        return print(json.dumps(pytorch_worker(args.steps)))
    if args.worker:
        return print(json.dumps(bigjax_worker(args.steps, args.worker)))
    rounds, num_steps = (1, 11) if args.smoke else (args.rounds, args.steps)
    script, steps = os.path.abspath(__file__), f'--steps={num_steps}'
    contenders = {
        'pytorch (eager, SDPA)': ([script, '--worker=torch', steps], {}),
        "bigjax (attention='fused')": ([script, '--worker=fused', steps], {'XLA_FLAGS': ''}),
        'bigjax (einops attention)': ([script, '--worker=einops', steps], {'XLA_FLAGS': ''}),
        'bigjax (jax.nn.dot_product_attention)': ([script, '--worker=dot_product', steps],
                                                  {'XLA_FLAGS': ''}),
        'bigjax (einops, BIGJAX_NO_XLA_DEFAULTS=1)': ([script, '--worker=einops', steps],
                                                {'XLA_FLAGS': '', 'BIGJAX_NO_XLA_DEFAULTS': '1'}),
    }
    if args.smoke:
        contenders = {name: ([*argv, '--smoke'], env) for name, (argv, env)
                      in list(contenders.items())[:2]}
    results = run_rounds(contenders, rounds)
    print(f'\nmedian of {rounds} rounds; D{WIDTH} L{DEPTH} H{HEADS} T{LENGTH} B{BATCH} '
          f'V{VOCAB}, {os.cpu_count()} CPUs')
    print_table(results, 'pytorch (eager, SDPA)', 'tokens/s', extra=('mfu',))


if __name__ == '__main__':
    main()
