"""flax.linen models, built from the `model` section of a config."""

import flax.linen as nn

from bigjax.errors import UserError
from bigjax.models.cnn import SimpleCNN

MODELS = {'cnn': SimpleCNN}


def build_model(model_config, num_classes: int) -> nn.Module:
    """The configured model with `num_classes` outputs; options are checked before any tracing."""
    if model_config.name not in MODELS:
        raise UserError(f'model.name={model_config.name!r} is not one of {sorted(MODELS)}')
    model = MODELS[model_config.name](num_classes=num_classes, **model_config[model_config.name])
    model.check()
    return model
