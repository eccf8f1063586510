"""Array transforms applied inside the jitted step, so the host only moves uint8 pixels."""

import jax
import jax.numpy as jnp
import numpy as np

from bigjax.data import augment
from bigjax.errors import UserError

NORMALIZATIONS = ('standard', 'unit')


def normalization_stats(train_images: np.ndarray, pixel_max: float, mode: str) -> dict:
    """Per-channel (mean, scale) such that (pixel - mean) / scale is the model's input.

    'standard': mean and standard deviation of the training split's pixels (per channel).
    'unit': pixels mapped to [0, 1] by the dataset's largest pixel value.
    """
    check_normalization(mode)
    channels = train_images.shape[-1]
    if mode == 'unit':
        return {'mean': np.zeros(channels, np.float32),
                'scale': np.full(channels, pixel_max, np.float32)}
    pixels = train_images.reshape(-1, channels).astype(np.float64)
    return {'mean': pixels.mean(0).astype(np.float32),
            'scale': np.maximum(pixels.std(0), 1e-6).astype(np.float32)}


def check_normalization(mode: str) -> None:
    if mode not in NORMALIZATIONS:
        raise UserError(f'data.normalize={mode!r} is not one of {NORMALIZATIONS}')


def normalize(images_BHWC: jnp.ndarray, stats: dict) -> jnp.ndarray:
    """(pixels - mean) / scale per channel, in float32."""
    return (images_BHWC.astype(jnp.float32) - stats['mean']) / stats['scale']


def image_inputs(batch: dict, rng: jax.Array, train: bool, *, stats: dict,
                 augment_config) -> jax.Array:
    """The model's input from a batch of uint8 images: augmented when training, normalised."""
    images = augment.augment(batch['image'], rng, augment_config) if train else batch['image']
    return normalize(images, stats)
