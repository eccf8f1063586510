"""flax.linen models by name: `register` adds one, `build_model` makes the configured one.

A model is registered with a build function, (model config section, dataset) -> nn.Module, the
dataset kinds it takes (bigjax.tasks), and optionally its options: {key: default}, which become
the config section model.<section> (default: the model's name). bigjax's own models are
registered here the same way, so `model.name` works alike for theirs and yours.
"""

import dataclasses
from typing import Callable

import flax.linen as nn

from bigjax.errors import UserError
from bigjax.models import attention
from bigjax.models.cnn import SimpleCNN
from bigjax.models.transformer import TransformerClassifier, TransformerLM, ViT
from bigjax.models.transformer_config import TransformerConfig
from bigjax.registry import Registry

TRANSFORMERS = (TransformerLM, TransformerClassifier, ViT)  # what has a FLOPs formula


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    build: Callable  # (model config section, dataset) -> nn.Module
    inputs: tuple[str, ...]  # the dataset kinds it takes
    section: str  # model.<section> holds its options ('' = it has none)


MODELS = Registry('model.name', 'bigjax.models.register')
_OPTIONS: dict[str, dict] = {}  # section -> {key: default}


def register(name: str, build: Callable, *, inputs, options: dict | None = None,
             section: str = '', replace: bool = False) -> None:
    """Makes `model.name=name` build `build(config.model, dataset)` for datasets of the kinds in
    `inputs`. `options` ({key: default}) become config.model.<section or name>: register before
    making the config (default_config reads them). Models sharing a section pass the same one."""
    section = section or (name if options else '')
    if isinstance(inputs, str):
        inputs = (inputs,)
    MODELS.register(name, ModelEntry(build, tuple(inputs), section), replace=replace)
    if options is not None:
        _OPTIONS[section] = dict(options)


def option_sections() -> dict[str, dict]:
    """{section: {key: default}} of every registered model: config.model's sections."""
    return {section: dict(defaults) for section, defaults in _OPTIONS.items()}


def defaults_of(dataclass_type, exclude: tuple = ()) -> dict:
    """{field: default} of a dataclass (or flax module) type: options stated once, in the
    module."""
    return {f.name: f.default for f in dataclasses.fields(dataclass_type)
            if f.name not in exclude and f.default is not dataclasses.MISSING
            and f.name not in ('parent', 'name')}


def build_model(model_config, dataset) -> nn.Module:
    """The configured model for `dataset` (a bigjax.data.Dataset); its options are checked
    before any tracing."""
    name = model_config.name
    entry = MODELS.get(name)
    if dataset.kind not in entry.inputs:
        raise UserError(f'model.name={name!r} takes {" or ".join(entry.inputs)} data, and the '
                        f'dataset is {dataset.kind}: choose a model for it or another data.name')
    return entry.build(model_config, dataset)


def uses_transformer_options(model_config) -> bool:
    return MODELS.get(model_config.name).section == 'transformer'


def prepare(model_config, platform: str) -> None:
    """What the configured model needs from this machine before tracing for `platform` (on
    CPUs the fused attention kernel runs fast on, built on first use), done first so its errors
    come before any data."""
    if (uses_transformer_options(model_config) and model_config.transformer.attention == 'fused'
            and platform == 'cpu' and attention.causal_attention.fast_here()):
        attention.prepare_fused()


def _cnn(model_config, dataset) -> SimpleCNN:
    model = SimpleCNN(num_classes=dataset.num_classes, **model_config.cnn)
    model.check()
    return model


def _transformer_config(model_config) -> TransformerConfig:
    cfg = TransformerConfig(**model_config.transformer)
    cfg.check()
    return cfg


register('cnn', _cnn, inputs='image', options=defaults_of(SimpleCNN, exclude=('num_classes',)))
_transformer = defaults_of(TransformerConfig)
register('vit', lambda m, d: ViT(_transformer_config(m), d.num_classes), inputs='image',
         options=_transformer, section='transformer')
register('transformer_lm', lambda m, d: TransformerLM(_transformer_config(m), d.vocab_size),
         inputs=('text_lm', 'text_preference'), options=_transformer, section='transformer')
register('transformer_classifier', lambda m, d: TransformerClassifier(
    _transformer_config(m), d.vocab_size, d.num_classes), inputs='text_classification',
         options=_transformer, section='transformer')
