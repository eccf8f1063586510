"""Image augmentation on device, inside the jitted step: one random affine warp per image.

Random crop (a shift of up to `crop_padding` pixels, the effect of zero-padding and cropping
back), rotation, scaling and horizontal flip compose into one 2x3 affine map per example, applied
with a single bilinear resampling; pixels that come from outside the image are 0. Everything is
vectorised over the batch and keyed by the step's RNG, so a resumed run augments identically.
"""

import jax
import jax.numpy as jnp

from bigjax.errors import UserError


def is_enabled(augment_config) -> bool:
    c = augment_config
    return bool(c.crop_padding or c.rotation_degrees or c.horizontal_flip
                or c.scale_min != 1.0 or c.scale_max != 1.0)


def check(augment_config) -> None:
    c = augment_config
    if c.crop_padding < 0 or c.rotation_degrees < 0 or not 0 < c.scale_min <= c.scale_max:
        raise UserError('data.augment needs crop_padding >= 0, rotation_degrees >= 0 and '
                        f'0 < scale_min <= scale_max (got {c.scale_min}, {c.scale_max})')


def random_affine(rng: jax.Array, batch_size: int, augment_config) -> jax.Array:
    """Per-example (B, 2, 3) maps from output pixel (row, col) to input pixel, about the centre."""
    c = augment_config
    angle_rng, scale_rng, shift_rng, flip_rng = jax.random.split(rng, 4)
    angle_B = jnp.deg2rad(jax.random.uniform(angle_rng, (batch_size,), minval=-c.rotation_degrees,
                                             maxval=c.rotation_degrees))
    zoom_B = jax.random.uniform(scale_rng, (batch_size,), minval=c.scale_min, maxval=c.scale_max)
    shift_B2 = jax.random.randint(shift_rng, (batch_size, 2), -c.crop_padding,
                                  c.crop_padding + 1).astype(jnp.float32)
    flip_B = jnp.ones(batch_size)
    if c.horizontal_flip:
        flip_B = jnp.where(jax.random.bernoulli(flip_rng, 0.5, (batch_size,)), -1.0, 1.0)
    cos_B, sin_B = jnp.cos(angle_B) / zoom_B, jnp.sin(angle_B) / zoom_B
    # Input coordinates = R(-angle) / zoom @ output coordinates (flipped columns) + shift.
    return jnp.stack([jnp.stack([cos_B, -sin_B * flip_B, shift_B2[:, 0]], -1),
                      jnp.stack([sin_B, cos_B * flip_B, shift_B2[:, 1]], -1)], 1)


def warp(images_BHWC: jax.Array, affine_B23: jax.Array) -> jax.Array:
    """Bilinear resampling of each image through its affine map; outside pixels are 0."""
    _, height, width, _ = images_BHWC.shape
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2])
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing='ij')
    out_HW2 = jnp.stack([rows, cols], -1).astype(jnp.float32) - centre

    def one(image_HWC, affine_23):
        src_HW2 = out_HW2 @ affine_23[:, :2].T + affine_23[:, 2] + centre
        sample = lambda channel_HW: jax.scipy.ndimage.map_coordinates(
            channel_HW, [src_HW2[..., 0], src_HW2[..., 1]], order=1, mode='constant', cval=0.0)
        return jax.vmap(sample, in_axes=-1, out_axes=-1)(image_HWC)

    return jax.vmap(one)(images_BHWC.astype(jnp.float32), affine_B23)


def augment(images_BHWC: jax.Array, rng: jax.Array, augment_config) -> jax.Array:
    """Augmented float32 images, or the images unchanged (as float32) if augmentation is off."""
    if not is_enabled(augment_config):
        return images_BHWC.astype(jnp.float32)
    return warp(images_BHWC, random_affine(rng, images_BHWC.shape[0], augment_config))
