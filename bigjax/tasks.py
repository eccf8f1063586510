"""What training means for each kind of data: the model's input and the metric sums.

A task is registered for a dataset kind (`register`): a function (dataset, config) -> Task, and
optionally the model input one example makes, for initialising parameters. bigjax's own kinds
are registered here the same way: image / text_classification: class logits against 'label';
text_lm: next-token logits against the tokens shifted by one. Evaluation batches carry 'mask'
(False on padding rows). Metric sums hold at least 'loss_sum' (what training minimises, summed
over examples or tokens) and 'count' (what it is divided by); bigjax/metrics.summarize turns
'correct', 'confusion' and the rest into accuracy, F1 and so on where present.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from bigjax import data as data_lib
from bigjax import metrics
from bigjax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Task:
    kind: str
    inputs: Callable[[dict, jax.Array, bool], jax.Array]  # (batch, rng, train) -> model input
    sums: Callable[[jax.Array, dict], dict]  # (model output, batch) -> training metric sums
    eval_sums: Callable[[jax.Array, dict], dict]  # (model output, batch) -> evaluation sums
    model_kwargs: dict = dataclasses.field(default_factory=dict)  # for the model's call


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    make: Callable  # (dataset, config) -> Task
    sample_input: Callable  # dataset -> one example's model input


TASKS = Registry('the dataset kind', 'bigjax.tasks.register')


def register(kind: str, make: Callable, *, sample_input: Callable | None = None,
             replace: bool = False) -> None:
    """Datasets of `kind` train with `make(dataset, config)`. sample_input(dataset): one
    example's model input, batch of 1 (default: int32 tokens of dataset.seq_len, or float32
    images of dataset.image_shape)."""
    TASKS.register(kind, TaskEntry(make, sample_input or _default_sample_input), replace=replace)


def make_task(dataset: data_lib.Dataset, config) -> Task:
    """The task for `dataset` under `config` (for images this reads the training split: its
    normalisation statistics)."""
    return TASKS.get(dataset.kind).make(dataset, config)


def sample_input(dataset: data_lib.Dataset) -> jax.Array:
    """One example's model input (zeros), for initialising parameters."""
    return TASKS.get(dataset.kind).sample_input(dataset)


def tokens_per_example(dataset: data_lib.Dataset) -> int:
    """Tokens an LM trains on per example, for tokens/s; 0 for other kinds."""
    return dataset.seq_len if dataset.kind == 'text_lm' else 0


def _default_sample_input(dataset: data_lib.Dataset) -> jax.Array:
    if dataset.image_shape:
        return jnp.zeros((1, *dataset.image_shape), jnp.float32)
    return jnp.zeros((1, dataset.seq_len), jnp.int32)


def images(stats, augment_config, num_classes: int) -> Task:
    """Image classification: normalised (and, in training, augmented) images -> 'label'."""
    inputs = functools.partial(data_lib.image_inputs, stats=stats, augment_config=augment_config)
    return Task('image', inputs, _classification_sums,
                functools.partial(_classifier_eval_sums, num_classes=num_classes))


def text_classification(num_classes: int) -> Task:
    """Token sequences ('tokens', PAD_ID padding) -> 'label'."""
    return Task('text_classification', _tokens, _classification_sums,
                functools.partial(_classifier_eval_sums, num_classes=num_classes))


def lm(token_lengths=(None, None), logits_chunk: int = 0) -> Task:
    """Next-token prediction on windows of 'tokens'. token_lengths: the (bytes, characters)
    each id stands for, for bits per byte/character. logits_chunk > 0: the model returns its
    final states and output layer (features=True) and the loss makes the logits that many
    positions at a time (metrics.chunked)."""
    eval_sums = functools.partial(metrics.lm_eval_sums, token_bytes_V=token_lengths[0],
                                  token_chars_V=token_lengths[1])
    if not logits_chunk:
        on_logits = lambda sums_fn: lambda logits_BTV, batch: sums_fn(logits_BTV,
                                                                       *_lm_targets(batch))
        return Task('text_lm', _lm_inputs, on_logits(metrics.classification_sums),
                    on_logits(eval_sums))
    on_features = lambda sums_fn: lambda outputs, batch: metrics.chunked(
        sums_fn, *outputs, *_lm_targets(batch), logits_chunk)
    return Task('text_lm', _lm_inputs, on_features(metrics.classification_sums),
                on_features(eval_sums), model_kwargs={'features': True})


def _tokens(batch, rng, train):
    del rng, train
    return batch['tokens'].astype(jnp.int32)


def _classification_sums(logits_BC, batch):
    return metrics.classification_sums(logits_BC, batch['label'], batch.get('mask'))


def _classifier_eval_sums(logits_BC, batch, num_classes: int):
    metrics.check_num_classes(logits_BC.shape, num_classes)
    return metrics.classifier_eval_sums(logits_BC, batch['label'], batch.get('mask'))


def _lm_inputs(batch, rng, train):
    del rng, train
    return batch['tokens'][:, :-1].astype(jnp.int32)


def _lm_targets(batch):
    mask = batch.get('mask')
    return batch['tokens'][:, 1:].astype(jnp.int32), None if mask is None else mask[:, None]


def _make_images(dataset, config) -> Task:
    stats = data_lib.normalization_stats(dataset.train.arrays['image'], dataset.pixel_max,
                                         config.data.normalize)
    return images(stats, config.data.augment, dataset.num_classes)


def _make_lm(dataset, config) -> Task:
    lengths = (None, None) if dataset.tokenizer is None else dataset.tokenizer.token_lengths()
    return lm(lengths, config.train.logits_chunk)


register('image', _make_images)
register('text_classification', lambda dataset, config: text_classification(dataset.num_classes))
register('text_lm', _make_lm)
