"""A model, a dataset and a task of a researcher's own, defined outside bigjax and registered
with its public API: tests/test_research_api.py trains them through launch.py (--import),
studies and a research loop. Regression of a noisy linear function of 16 features."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from bigjax import data, models, tasks

FEATURES = 16


class ResidualMLP(nn.Module):
    """Dense layers with pre-norm residual blocks; one output per example."""

    width: int = 32
    depth: int = 2

    @nn.compact
    def __call__(self, x_BF, *, train: bool):
        del train
        x_BW = nn.Dense(self.width)(x_BF)
        for _ in range(self.depth):
            x_BW = x_BW + nn.Dense(self.width)(nn.gelu(nn.LayerNorm()(x_BW)))
        return nn.Dense(1)(x_BW)[:, 0]


def open_linear(data_config) -> data.Dataset:
    """y = x . w + noise, x standard normal; sizes from data.synthetic (train/eval examples)."""
    rng = np.random.default_rng(data_config.synthetic.train_examples)
    weights_F = rng.normal(size=FEATURES).astype(np.float32)

    def split(num_examples, seed):
        def read():
            x_NF = np.random.default_rng(seed).normal(size=(num_examples, FEATURES))
            noise = 0.1 * np.random.default_rng(seed + 1).normal(size=num_examples)
            return {'x': x_NF.astype(np.float32),
                    'y': (x_NF @ weights_F + noise).astype(np.float32)}
        return data.Split(num_examples, read)

    syn = data_config.synthetic
    return data.Dataset('noisy_linear', 'regression', split(syn.train_examples, 0),
                        split(syn.eval_examples, 1))


def squared_error_sums(prediction_B, batch):
    """Summed squared error over the rows whose mask is set (all in training)."""
    weights_B = batch.get('mask', jnp.ones_like(batch['y'])).astype(jnp.float32)
    return {'loss_sum': jnp.sum(weights_B * (prediction_B - batch['y']) ** 2),
            'count': jnp.sum(weights_B)}


def regression_task(dataset, config) -> tasks.Task:
    del dataset, config
    return tasks.Task('regression', lambda batch, rng, train: batch['x'], squared_error_sums,
                      squared_error_sums)


models.register('residual_mlp', lambda model_config, dataset: ResidualMLP(
    **model_config.residual_mlp), inputs='regression', options={'width': 32, 'depth': 2})
data.register('noisy_linear', open_linear)
tasks.register('regression', regression_task,
               sample_input=lambda dataset: jnp.zeros((1, FEATURES), jnp.float32))
