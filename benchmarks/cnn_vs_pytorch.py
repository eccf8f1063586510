"""Training throughput of the article's CNN: bigjax vs the article's PyTorch loop, side by side.

Both train SimpleCNN (conv32 -> conv64 -> dense128 -> dense10, valid 3x3 convs, ReLU; PyTorch's
flatten size fixed to 64*24*24) with Adam 1e-3 on batch 64 of synthetic 28x28x1 images. bigjax
runs its real `train.run` on `data.name='synthetic'` and reports the steady-state
examples_per_sec it writes to metrics.jsonl (compilation, eval and checkpoints excluded); PyTorch
runs the article's loop on tensors already in memory. Each contender runs in its own process
(XLA flags are read once per process), in alternating rounds, and the ratios come from one run.

python benchmarks/cnn_vs_pytorch.py [--rounds=3] [--steps=300] [--smoke]
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
XNN_GREEDY = '--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY'
CONTENDERS = {  # name: (worker, extra environment)
    'pytorch (article loop)': ('torch', {}),
    'bigjax (its XLA defaults: YNN fusions off)': ('jax', {'XLA_FLAGS': ''}),
    "bigjax (BIGJAX_NO_XLA_DEFAULTS=1: XLA's and glibc's own defaults)": (
        'jax', {'XLA_FLAGS': '', 'BIGJAX_NO_XLA_DEFAULTS': '1'}),
    'bigjax (+ XNN greedy graph fusion)': ('jax', {'XLA_FLAGS': XNN_GREEDY}),
}
BATCH = 64


def bigjax_images_per_sec(steps: int) -> float:
    sys.path.insert(0, REPO)
    from bigjax.config import default_config

    config = default_config()
    config.data.name = 'synthetic'
    config.data.synthetic.train_examples = BATCH * 64
    config.data.synthetic.eval_examples = BATCH
    config.train.batch_size = BATCH
    config.train.log_every = 50
    return statistics.median(row['examples_per_sec'] for row in train_rows(config, steps))


def pytorch_images_per_sec(steps: int) -> float:
    import torch
    from torch import nn

    class SimpleCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.fc1 = nn.Linear(64 * 24 * 24, 128)  # The article's 64*6*6 is the shape bug.
            self.fc2 = nn.Linear(128, 10)
            self.relu = nn.ReLU()

        def forward(self, x):
            x = self.relu(self.conv1(x))
            x = self.relu(self.conv2(x))
            x = x.view(x.size(0), -1)
            return self.fc2(self.relu(self.fc1(x)))

    torch.manual_seed(0)
    images = torch.rand(BATCH * 64, 1, 28, 28)
    labels = torch.randint(0, 10, (BATCH * 64,))
    model = SimpleCNN()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def run(num_steps):
        for i in range(num_steps):
            j = (i % 64) * BATCH
            optimizer.zero_grad()
            loss = criterion(model(images[j:j + BATCH]), labels[j:j + BATCH])
            loss.backward()
            optimizer.step()
        return loss.item()

    run(10)  # warm-up
    start = time.perf_counter()
    run(steps)
    return steps * BATCH / (time.perf_counter() - start)


def worker(kind: str, steps: int) -> None:
    rate = bigjax_images_per_sec(steps) if kind == 'jax' else pytorch_images_per_sec(steps)
    print(json.dumps({'rate': rate}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--smoke', action='store_true',
                        help="1 round of 2 steps, PyTorch and bigjax's defaults only")
    parser.add_argument('--worker', choices=['jax', 'torch'], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps)

    rounds, steps, contenders = ((1, 2, dict(list(CONTENDERS.items())[:2])) if args.smoke else
                                 (args.rounds, args.steps, CONTENDERS))
    script = os.path.abspath(__file__)
    results = run_rounds({name: ([script, f'--worker={kind}', f'--steps={steps}'], env)
                          for name, (kind, env) in contenders.items()}, rounds)
    print(f'\nmedian of {rounds} rounds, batch {BATCH}, {steps} steps, '
          f'{os.cpu_count()} CPUs')
    print_table(results, 'pytorch (article loop)', 'img/s')


if __name__ == '__main__':
    main()
