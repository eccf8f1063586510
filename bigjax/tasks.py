"""What training means for each kind of data: the model's input and the metric sums.

A task is registered for a dataset kind (`register`): a function (dataset, config) -> Task, and
optionally the model input one example makes, for initialising parameters. bigjax's own kinds
are registered here the same way: image / text_classification: class logits against 'label';
text_lm: next-token logits against the tokens shifted by one, where windows of packed documents
may carry 'segments' (each token's document: attention stays inside it, and no target crosses
into the next) and 'weights' (which tokens are learnt: a chat's answers); text_preference: pairs
of answers under a preference objective (bigjax/preference.py). Evaluation batches
carry 'mask' (False on padding rows). Metric sums hold at least 'loss_sum' (what training
minimises, summed over examples or tokens) and 'count' (what it is divided by);
bigjax/metrics.summarize turns 'correct', 'confusion' and the rest into accuracy, F1 and so on
where present.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from bigjax import data as data_lib
from bigjax import finetune, metrics, preference
from bigjax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Task:
    kind: str
    inputs: Callable[[dict, jax.Array, bool], jax.Array]  # (batch, rng, train) -> model input
    sums: Callable[[jax.Array, dict], dict]  # (model output, batch) -> training metric sums
    eval_sums: Callable[[jax.Array, dict], dict]  # (model output, batch) -> evaluation sums
    model_kwargs: dict = dataclasses.field(default_factory=dict)  # for the model's call
    batch_kwargs: Callable[[dict], dict] | None = None  # batch -> more keyword inputs (segments)
    reference: Callable | None = None  # (params, model_state) -> the parameters of a frozen
    # reference model: the sums then get (outputs, reference outputs) (preference objectives)

    def call_kwargs(self, batch: dict) -> dict:
        """Keyword arguments of the model's call on `batch`."""
        return {**self.model_kwargs, **(self.batch_kwargs(batch) if self.batch_kwargs else {})}


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    make: Callable  # (dataset, config) -> Task
    sample_input: Callable  # dataset -> one example's model input
    train_sums: tuple  # the scalar sums the training loop's metric window keeps
    sequences: float  # model passes an example costs, in training passes of one sequence


TASKS = Registry('the dataset kind', 'bigjax.tasks.register')


def register(kind: str, make: Callable, *, sample_input: Callable | None = None,
             train_sums: tuple = metrics.TRAIN_SUMS, sequences: float = 1.0,
             replace: bool = False) -> None:
    """Datasets of `kind` train with `make(dataset, config)`. sample_input(dataset): one
    example's model input, batch of 1 (default: int32 tokens of dataset.seq_len, or float32
    images of dataset.image_shape). train_sums: the task's scalar sums that training logs (at
    least loss_sum and count). sequences: an example's training cost in sequences of
    sample_input (for MFU)."""
    TASKS.register(kind, TaskEntry(make, sample_input or _default_sample_input, tuple(train_sums),
                                   sequences), replace=replace)


def make_task(dataset: data_lib.Dataset, config) -> Task:
    """The task for `dataset` under `config` (for images this reads the training split: its
    normalisation statistics)."""
    return TASKS.get(dataset.kind).make(dataset, config)


def sample_input(dataset: data_lib.Dataset) -> jax.Array:
    """One example's model input (zeros), for initialising parameters."""
    return TASKS.get(dataset.kind).sample_input(dataset)


def train_sum_names(kind: str) -> tuple:
    """The sums the training loop's metric window (and its checkpoints) keep for `kind`."""
    return TASKS.get(kind).train_sums


def sequences_per_example(kind: str) -> float:
    return TASKS.get(kind).sequences


def tokens_per_example(dataset: data_lib.Dataset) -> int:
    """Tokens an LM trains on per example, for tokens/s; 0 for other kinds."""
    return {'text_lm': 1, preference.KIND: 2}.get(dataset.kind, 0) * dataset.seq_len


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


def lm(token_lengths=(None, None), logits_chunk: int = 0, document_eos: int | None = None
       ) -> Task:
    """Next-token prediction on windows of 'tokens'. token_lengths: the (bytes, characters)
    each id stands for, for bits per byte/character. logits_chunk > 0: the model returns its
    final states, output layer and logits' soft cap (features=True) and the loss makes the
    logits that many positions at a time (metrics.chunked). document_eos: the end-of-document
    id that separates the documents of a window, which then do not attend to each other
    (document_segments); batches with their own 'segments' use those."""
    eval_sums = functools.partial(metrics.lm_eval_sums, token_bytes_V=token_lengths[0],
                                  token_chars_V=token_lengths[1])
    batch_kwargs = functools.partial(_lm_segments, document_eos=document_eos)
    if not logits_chunk:
        on_logits = lambda sums_fn: lambda logits_BTV, batch: sums_fn(logits_BTV,
                                                                       *_lm_targets(batch))
        return Task('text_lm', _lm_inputs, on_logits(metrics.classification_sums),
                    on_logits(eval_sums), batch_kwargs=batch_kwargs)
    on_features = lambda sums_fn: lambda outputs, batch: metrics.chunked(
        sums_fn, *outputs, *_lm_targets(batch), logits_chunk)
    return Task('text_lm', _lm_inputs, on_features(metrics.classification_sums),
                on_features(eval_sums), model_kwargs={'features': True},
                batch_kwargs=batch_kwargs)


def preference_pairs(objective: str, beta: float, label_smoothing: float = 0.0,
                     logits_chunk: int = 0, lora: bool = False) -> Task:
    """Chosen and rejected answers ('tokens', 'weights': (B, 2, L + 1)) scored against a
    reference model (bigjax/preference.py): the base without its LoRA adapters, or a frozen copy
    of the starting weights."""
    sums = functools.partial(preference.sums, objective=objective, beta=beta,
                             label_smoothing=label_smoothing, chunk=logits_chunk)
    return Task(preference.KIND, preference.inputs, sums, sums,
                model_kwargs={'features': True} if logits_chunk else {},
                reference=preference.without_adapters if lora else preference.frozen_copy)


def document_segments(tokens_BT: jax.Array, eos_id: int) -> jax.Array:
    """Segment ids of the documents in windows of a stream joined by `eos_id`: an end-of-document
    id starts the next document's segment. As an input it begins that document; as a target it
    is predicted from the end of the one before, inside that one's segment, so every target
    stays learnt and no document sees another."""
    is_eos_BT = (tokens_BT == eos_id).astype(jnp.int32)
    return 1 + jnp.cumsum(is_eos_BT, axis=1) - is_eos_BT[:, :1]


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


def _lm_segments(batch, document_eos: int | None) -> dict:
    """The model's segment ids: the batch's own, or the documents between end-of-document ids."""
    if 'segments' in batch:
        return {'segments_BT': batch['segments'][:, :-1].astype(jnp.int32)}
    if document_eos is not None:
        return {'segments_BT': document_segments(_lm_inputs(batch, None, False), document_eos)}
    return {}


def _lm_targets(batch):
    """Next tokens and their weights: input t predicts token t + 1, which counts where the
    batch's 'weights' mark token t + 1 as learnt, t and t + 1 are in one segment (no target
    across a document boundary, none in padding) and the row is real (eval 'mask')."""
    weights_BT = None
    if 'mask' in batch:
        weights_BT = jnp.broadcast_to(batch['mask'][:, None], batch['tokens'][:, 1:].shape)
    if 'weights' in batch:
        weights_BT = _times(weights_BT, batch['weights'][:, 1:])
    if 'segments' in batch:
        segments_BT = batch['segments']
        weights_BT = _times(weights_BT, segments_BT[:, 1:] == segments_BT[:, :-1])
    return batch['tokens'][:, 1:].astype(jnp.int32), weights_BT


def _times(weights_BT, factor_BT):
    factor_BT = factor_BT.astype(jnp.float32)
    return factor_BT if weights_BT is None else weights_BT.astype(jnp.float32) * factor_BT


def _make_images(dataset, config) -> Task:
    stats = data_lib.normalization_stats(dataset.train.arrays['image'], dataset.pixel_max,
                                         config.data.normalize)
    return images(stats, config.data.augment, dataset.num_classes)


def _make_lm(dataset, config) -> Task:
    lengths = (None, None) if dataset.tokenizer is None else dataset.tokenizer.token_lengths()
    eos = data_lib.tokenizers.EOS_ID if dataset.tokenizer is None else dataset.tokenizer.eos_id
    return lm(lengths, config.train.logits_chunk,
              eos if config.data.text.document_mask else None)


def _make_preference(dataset, config) -> Task:
    p = config.train.preference
    return preference_pairs(preference.objective(config, dataset.kind), p.beta,
                            p.label_smoothing, config.train.logits_chunk,
                            finetune.uses_lora(config))


register('image', _make_images)
register('text_classification', lambda dataset, config: text_classification(dataset.num_classes))
register('text_lm', _make_lm)
register(preference.KIND, _make_preference, train_sums=preference.SUMS,
         sequences=2 * 4 / 3)  # two answers, each a training pass and a reference forward (1/3)
