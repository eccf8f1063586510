import jax
import jax.numpy as jnp
import pytest

from bigjax import data
from bigjax.config import default_config
from bigjax.errors import UserError
from bigjax.models import build_model
from bigjax.models.cnn import SimpleCNN


def init_and_apply(model, shape, train=False):
    """Shapes of the variables and logits (traced, not computed)."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init({'params': jax.random.PRNGKey(0)}, x,
                                                    train=False), x)
    mutable = ['batch_stats'] if 'batch_stats' in variables else False
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=train, mutable=mutable,
                                                  rngs={'dropout': jax.random.PRNGKey(1)}),
                         variables, x)
    return variables, out[0] if mutable else out


def test_article_cnn_on_mnist_shapes_has_no_flatten_bug():
    variables, logits = init_and_apply(SimpleCNN(num_classes=10), (2, 28, 28, 1))
    assert logits.shape == (2, 10)
    # Two valid 3x3 convs leave 24x24x64, not the article's hard-coded 6x6x64.
    assert variables['params']['fc1']['kernel'].shape == (24 * 24 * 64, 128)


@pytest.mark.parametrize('options, shape, fc1_inputs', [
    ({'padding': 'SAME'}, (3, 8, 8, 1), 8 * 8 * 64),
    ({'padding': 'SAME', 'pooling': 'max'}, (3, 8, 8, 1), 2 * 2 * 64),
    ({'pooling': 'avg'}, (3, 28, 28, 1), 5 * 5 * 64),
    ({'batch_norm': True, 'dropout': 0.5, 'activation': 'gelu'}, (3, 32, 32, 3), 28 * 28 * 64),
    ({'activation': 'sigmoid', 'features': (16,)}, (3, 8, 8, 1), 6 * 6 * 16),
])
def test_cnn_options_shapes(options, shape, fc1_inputs):
    for train in (False, True):
        variables, logits = init_and_apply(SimpleCNN(num_classes=7, **options), shape, train)
        assert logits.shape == (3, 7)
    assert variables['params']['fc1']['kernel'].shape[0] == fc1_inputs
    assert ('batch_stats' in variables) == options.get('batch_norm', False)


def test_dropout_only_in_training():
    model = SimpleCNN(dropout=0.5, padding='SAME')
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
    variables = model.init({'params': jax.random.PRNGKey(0)}, x, train=False)
    eval_a = model.apply(variables, x, train=False)
    eval_b = model.apply(variables, x, train=False)
    train_a = model.apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
    assert jnp.array_equal(eval_a, eval_b)
    assert not jnp.allclose(eval_a, train_a)


def image_data(num_classes: int) -> data.Dataset:
    unread = data.Split(0, dict)
    return data.Dataset('test', 'image', unread, unread, num_classes=num_classes,
                        image_shape=(8, 8, 1))


def test_build_model_from_config():
    config = default_config()
    model = build_model(config.model, image_data(num_classes=4))
    assert isinstance(model, SimpleCNN) and model.num_classes == 4
    assert model.features == (32, 64)


@pytest.mark.parametrize('options, message', [
    ({'activation': 'swish'}, 'model.cnn.activation'),
    ({'pooling': 'min'}, 'model.cnn.pooling'),
    ({'padding': 'same'}, 'model.cnn.padding'),
])
def test_unknown_options_are_clear_errors(options, message):
    config = default_config()
    config.model.cnn.update(options)
    with pytest.raises(UserError, match=message):
        build_model(config.model, image_data(num_classes=10))


def test_input_too_small_is_a_clear_error():
    with pytest.raises(UserError, match='smaller than its 3x3 kernel'):
        init_and_apply(SimpleCNN(features=(8, 8, 8, 8)), (1, 8, 8, 1))
    with pytest.raises(UserError, match='too small to pool'):
        init_and_apply(SimpleCNN(pooling='max'), (1, 8, 8, 1))
