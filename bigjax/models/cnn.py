"""The article's SimpleCNN, corrected: the flattened size comes from the input, not a constant.

conv(32) -> conv(64) -> dense(128) -> dense(num_classes). The article hard-coded the flatten
size as 64*6*6, which is wrong for 28x28 inputs (two valid 3x3 convs leave 24x24); here
`nn.Dense` infers it, so any image size works.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from bigjax.errors import UserError

ACTIVATIONS = {'relu': nn.relu, 'gelu': nn.gelu, 'sigmoid': nn.sigmoid, 'tanh': nn.tanh}
POOLINGS = {'none': None, 'max': nn.max_pool, 'avg': nn.avg_pool}
PADDINGS = ('VALID', 'SAME')


class SimpleCNN(nn.Module):
    """Convs (each: conv -> [batch norm] -> activation -> [2x2 pool]) then an MLP head.

    `dropout` applies to the hidden dense layer's output, before the classifier.
    """

    num_classes: int = 10
    features: Sequence[int] = (32, 64)
    kernel_size: int = 3
    padding: str = 'VALID'  # PADDINGS
    pooling: str = 'none'  # POOLINGS: after each conv, 2x2
    hidden: int = 128  # the hidden dense layer's width
    dropout: float = 0.0
    batch_norm: bool = False
    activation: str = 'relu'  # ACTIVATIONS

    def check(self) -> None:
        """Raises UserError for option values this module does not know."""
        for field, value, known in (('activation', self.activation, ACTIVATIONS),
                                    ('pooling', self.pooling, POOLINGS),
                                    ('padding', self.padding, PADDINGS)):
            if value not in known:
                raise UserError(f'model.cnn.{field}={value!r} is not one of {list(known)}')
        if not (self.kernel_size >= 1 and self.hidden >= 1 and self.features
                and min(self.features) >= 1):
            raise UserError('model.cnn.kernel_size, hidden and every entry of features must be '
                            '>= 1, with at least one conv layer')
        if not 0 <= self.dropout < 1:
            raise UserError(f'model.cnn.dropout={self.dropout} must be in [0, 1)')

    @nn.compact
    def __call__(self, x_BHWC: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        self.check()
        activation = ACTIVATIONS[self.activation]
        pool = POOLINGS[self.pooling]
        x = x_BHWC
        for i, features in enumerate(self.features):
            if self.padding == 'VALID' and min(x.shape[1:3]) < self.kernel_size:
                raise UserError(
                    f'conv{i + 1} gets a {x.shape[1]}x{x.shape[2]} input, smaller than its '
                    f'{self.kernel_size}x{self.kernel_size} kernel: use model.cnn.padding="SAME", '
                    'fewer poolings or fewer conv layers')
            x = nn.Conv(features, (self.kernel_size, self.kernel_size), padding=self.padding,
                        name=f'conv{i + 1}')(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, name=f'bn{i + 1}')(x)
            x = activation(x)
            if pool is not None:
                if min(x.shape[1:3]) < 2:
                    raise UserError(f'conv{i + 1} output is {x.shape[1]}x{x.shape[2]}, too small '
                                    'to pool 2x2: use model.cnn.padding="SAME" or no pooling')
                x = pool(x, (2, 2), strides=(2, 2))
        x_BF = x.reshape(x.shape[0], -1)
        x_BF = activation(nn.Dense(self.hidden, name='fc1')(x_BF))
        x_BF = nn.Dropout(self.dropout, deterministic=not train)(x_BF)
        return nn.Dense(self.num_classes, name='head')(x_BF)
