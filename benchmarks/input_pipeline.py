"""Input pipeline speed next to how fast training consumes it, for the CNN and the small LM.

The pipeline alone is what the training loop uses: the deterministic batch iterator, prefetch and
global-batch assembly on the mesh (row numbers only, when the training arrays are held on the
devices: data.on_device_max_mb), then the gather and the task's on-device input transform
(normalisation and augmentation for images) jitted, keyed by a fresh RNG per batch, and waited
for. Training is the real `train.run` of the same config, its steady-state examples/s from
metrics.jsonl. Goal: the pipeline at least 10x faster than training.

python benchmarks/input_pipeline.py [--batches=200] [--smoke]
"""

import argparse
import functools
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402

from bigjax import data, parallel, tasks  # noqa: E402
from compare import train_rows  # noqa: E402
from configs import cnn_digits, transformer_cpu  # noqa: E402


def configs(smoke: bool):
    """name: (config, training steps to time; the CNN runs ~300 steps/s, the LM ~1); with
    `smoke`, their :smoke sizes for 4 steps."""
    arg = 'smoke' if smoke else None
    cnn = cnn_digits.get_config(arg)
    cnn.data.augment.update(crop_padding=1, rotation_degrees=10.0, scale_min=0.9, scale_max=1.1)
    return {'cnn_digits (augmented)': (cnn, 4 if smoke else 1000),
            'transformer_cpu': (transformer_cpu.get_config(arg), 4 if smoke else 40)}


def pipeline_examples_per_sec(config, batches: int) -> float:
    mesh = parallel.make_mesh(config.mesh)
    dataset = data.open_dataset(config.data)
    task = tasks.make_task(dataset, config)
    on_device = parallel.replicate_small(dataset.train.arrays, mesh, config.data.on_device_max_mb)
    iterator = data.ArrayTrainIterator(dataset.train.arrays, config.train.batch_size, config.seed,
                                       indices_only=on_device is not None)
    stream = data.prefetch(iterator, config.data.prefetch,
                           functools.partial(parallel.global_batch, mesh=mesh))

    def inputs(batch, rng):  # as the train step starts: gather (data on device), then transform
        if on_device is not None:
            batch = {k: jax.numpy.take(v, batch['index'], axis=0) for k, v in on_device.items()}
        return task.inputs(batch, rng, True)

    inputs = jax.jit(inputs)
    jax.block_until_ready(inputs(next(stream)[0], jax.random.PRNGKey(0)))  # compile
    start = time.perf_counter()
    outputs = [inputs(next(stream)[0], jax.random.PRNGKey(i)) for i in range(batches)]
    jax.block_until_ready(outputs)
    stream.close()
    return batches * config.train.batch_size / (time.perf_counter() - start)


def training_examples_per_sec(config, steps: int) -> float:
    config.optim.warmup_steps = 0
    config.train.log_every = max(steps // 4, 1)
    config.data.eval_split = config.data.eval_split.split('[')[0] + '[:1]'
    return statistics.median(r['examples_per_sec'] for r in train_rows(config, steps)[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batches', type=int, default=200)
    parser.add_argument('--smoke', action='store_true',
                        help='the :smoke configs, 2 batches and 4 training steps each')
    args = parser.parse_args()
    batches = 2 if args.smoke else args.batches
    print(f'{"config":26s} {"pipeline ex/s":>14s} {"training ex/s":>14s} {"ratio":>8s}')
    for name, (config, steps) in configs(args.smoke).items():
        pipeline = pipeline_examples_per_sec(config, batches)
        training = training_examples_per_sec(config, steps)
        print(f'{name:26s} {pipeline:14.0f} {training:14.1f} {pipeline / training:7.1f}x',
              flush=True)


if __name__ == '__main__':
    main()
