import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax.config import default_config
from bigjax.data import augment
from bigjax.errors import UserError


def augment_config(**overrides):
    config = default_config().data.augment
    config.update(overrides)
    return config


def images(shape=(4, 9, 7, 2)):
    return np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)


def affine(matrix, batch=4):
    return jnp.tile(jnp.asarray(matrix, jnp.float32), (batch, 1, 1))


def test_identity_shift_and_flip_maps_are_exact():
    x = images()
    np.testing.assert_array_equal(augment.warp(x, affine([[1, 0, 0], [0, 1, 0]])), x)
    shifted = np.zeros(x.shape, np.float32)
    shifted[:, :-2, 1:] = x[:, 2:, :-1]  # output (r, c) reads input (r + 2, c - 1)
    np.testing.assert_array_equal(augment.warp(x, affine([[1, 0, 2], [0, 1, -1]])), shifted)
    np.testing.assert_array_equal(augment.warp(x, affine([[1, 0, 0], [0, -1, 0]])), x[:, :, ::-1])


def test_rotation_by_90_degrees_turns_the_image():
    x = images((1, 5, 5, 1))
    angle = np.deg2rad(90.0)
    rotated = augment.warp(x, affine([[np.cos(angle), -np.sin(angle), 0],
                                      [np.sin(angle), np.cos(angle), 0]], batch=1))
    np.testing.assert_allclose(rotated[0, ..., 0], np.rot90(x[0, ..., 0], k=-1), atol=1e-4)


def test_random_crop_is_an_integer_shift_with_zero_fill():
    x = images((64, 6, 6, 1)) + 1  # No zero pixels, so zero fill is visible.
    out = np.asarray(augment.augment(x, jax.random.PRNGKey(0), augment_config(crop_padding=2)))
    assert set(np.unique(out)) <= set(np.unique(x)) | {0}
    assert (out == 0).any() and (out == x).all(axis=(1, 2, 3)).any()


def test_augmentation_is_keyed_by_the_rng_and_varies_per_example():
    config = augment_config(crop_padding=1, rotation_degrees=20.0, scale_min=0.8, scale_max=1.2,
                            horizontal_flip=True)
    x = np.repeat(images((1, 8, 8, 1)), 16, axis=0)
    a = augment.augment(x, jax.random.PRNGKey(1), config)
    np.testing.assert_array_equal(a, augment.augment(x, jax.random.PRNGKey(1), config))
    assert not np.array_equal(a, augment.augment(x, jax.random.PRNGKey(2), config))
    assert len({np.asarray(a[i]).tobytes() for i in range(16)}) > 8


def test_off_by_default_and_returns_float_pixels():
    config = default_config().data.augment
    assert not augment.is_enabled(config)
    out = augment.augment(images(), jax.random.PRNGKey(0), config)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, images())


@pytest.mark.parametrize('overrides', [{'crop_padding': -1}, {'scale_min': 0.0},
                                       {'scale_min': 1.2, 'scale_max': 1.1},
                                       {'rotation_degrees': -5.0}])
def test_bad_augmentation_is_a_clear_error(overrides):
    with pytest.raises(UserError, match='data.augment'):
        augment.check(augment_config(**overrides))
