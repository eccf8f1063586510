"""A model of one's own, outside bigjax: a small residual CNN, registered as model.name
'residual_cnn' with its options in config.model.residual_cnn. experiments/custom_model.py imports
this module (here and in every trial) and compares it with the stock CNN."""

import flax.linen as nn

from bigjax import models


class ResidualCNN(nn.Module):
    """A 3x3 conv stem, then `blocks` residual blocks (two 3x3 convs each, pre-activation) at
    full resolution, global average pooling and a linear classifier."""

    num_classes: int
    width: int = 32
    blocks: int = 2

    @nn.compact
    def __call__(self, images_BHWC, *, train: bool):
        del train
        x_BHWC = nn.Conv(self.width, (3, 3), name='stem')(images_BHWC)
        for i in range(self.blocks):
            y_BHWC = nn.Conv(self.width, (3, 3), name=f'block{i}_a')(nn.relu(x_BHWC))
            x_BHWC = x_BHWC + nn.Conv(self.width, (3, 3), name=f'block{i}_b')(nn.relu(y_BHWC))
        return nn.Dense(self.num_classes, name='head')(nn.relu(x_BHWC).mean(axis=(1, 2)))


models.register('residual_cnn', lambda model_config, dataset: ResidualCNN(
    dataset.num_classes, **model_config.residual_cnn), inputs='image',
    options={'width': 32, 'blocks': 2})
