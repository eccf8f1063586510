"""flax.linen models, built from the `model` section of a config."""

import flax.linen as nn

from bigjax.errors import UserError
from bigjax.models import attention
from bigjax.models.cnn import SimpleCNN
from bigjax.models.transformer import TransformerClassifier, TransformerConfig, TransformerLM, ViT

TRANSFORMERS = (TransformerLM, TransformerClassifier, ViT)
INPUTS = {  # the data kinds (bigjax.data.KINDS) each model takes
    'cnn': ('image',),
    'vit': ('image',),
    'transformer_lm': ('text_lm',),
    'transformer_classifier': ('text_classification',),
}


def build_model(model_config, data_kind: str, *, num_classes: int = 0,
                vocab_size: int = 0) -> nn.Module:
    """The configured model for data of `data_kind`; options are checked before any tracing."""
    name = model_config.name
    if name not in INPUTS:
        raise UserError(f'model.name={name!r} is not one of {sorted(INPUTS)}')
    if data_kind not in INPUTS[name]:
        raise UserError(f'model.name={name!r} takes {" or ".join(INPUTS[name])} data, and the '
                        f'dataset is {data_kind}: choose a model for it or another data.name')
    if name == 'cnn':
        model = SimpleCNN(num_classes=num_classes, **model_config.cnn)
        model.check()
        return model
    cfg = TransformerConfig(**model_config.transformer)
    cfg.check()
    if name == 'transformer_lm':
        return TransformerLM(cfg, vocab_size)
    if name == 'transformer_classifier':
        return TransformerClassifier(cfg, vocab_size, num_classes)
    return ViT(cfg, num_classes)


def prepare(model_config, platform: str) -> None:
    """What the configured model needs from this machine before tracing for `platform` (on
    CPU the fused attention kernel, built on first use), done first so its errors come before
    any data."""
    if (model_config.name != 'cnn' and model_config.transformer.attention == 'fused'
            and platform == 'cpu'):
        attention.prepare_fused()
