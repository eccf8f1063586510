"""flax.linen models, built from the `model` section of a config."""

import flax.linen as nn

from bigjax.errors import UserError
from bigjax.models.cnn import SimpleCNN

MODELS = {'cnn': SimpleCNN}
INPUTS = {'cnn': ('image',)}  # the data kinds (bigjax.data.KINDS) each model can take


def build_model(model_config, data_kind: str, num_classes: int) -> nn.Module:
    """The configured model for data of `data_kind`; options are checked before any tracing."""
    name = model_config.name
    if name not in MODELS:
        raise UserError(f'model.name={name!r} is not one of {sorted(MODELS)}')
    if data_kind not in INPUTS[name]:
        raise UserError(f'model.name={name!r} takes {" or ".join(INPUTS[name])} data, and the '
                        f'dataset is {data_kind}: choose a model for it or another data.name')
    model = MODELS[name](num_classes=num_classes, **model_config[name])
    model.check()
    return model
