"""Metrics as sums accumulated on device (sharding-friendly), turned into values on the host.

Training accumulates loss, correct predictions and count. Evaluation adds sufficient statistics:
for classifiers the confusion matrix, top-k hits and, per class, histograms of the one-vs-rest
log-odds of positives and negatives (ROC curves and AUC from the histogram: memory does not grow
with the eval set); for LMs the bytes and characters the target tokens stand for (bits per byte
and per character compare across tokenizers). Sums of batches equal the sums of their union.

AUC from the histogram counts a positive and a negative in the same bin as half a correct pair;
the largest possible error is half the fraction of (positive, negative) pairs that share a bin,
which `details` reports as `auc_max_binning_error` per class.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigjax.errors import UserError
from bigjax.models.attention import soft_cap

TOP_K = 5  # top-k accuracy is reported for classifiers with more than TOP_K classes
AUC_BINS = 1024
LOG_ODDS_LIMIT = 12.0  # bins cover log-odds in [-12, 12]; beyond, they fall into the end bins


def _weights(labels_N, weights_N):
    if weights_N is None:
        return jnp.ones(labels_N.shape, jnp.float32)
    return jnp.broadcast_to(weights_N, labels_N.shape).astype(jnp.float32)


def classification_sums(logits_NC: jax.Array, labels_N: jax.Array,
                        weights_N: jax.Array | None = None) -> dict[str, jax.Array]:
    """Summed cross-entropy, correct predictions and count over weighted predictions.

    Any leading shape N works: (B,) for classifiers, (B, T) for next-token prediction. A zero
    weight (padding) leaves a prediction out.
    """
    weights_N = _weights(labels_N, weights_N)
    loss_N = optax.softmax_cross_entropy_with_integer_labels(logits_NC.astype(jnp.float32),
                                                             labels_N)
    correct_N = (jnp.argmax(logits_NC, -1) == labels_N).astype(jnp.float32)
    return {'loss_sum': jnp.sum(loss_N * weights_N),
            'correct': jnp.sum(correct_N * weights_N),
            'count': jnp.sum(weights_N)}


def classifier_eval_sums(logits_BC: jax.Array, labels_B: jax.Array,
                         weights_B: jax.Array | None = None) -> dict[str, jax.Array]:
    """classification_sums plus confusion matrix (true x predicted), top-k hits and the
    per-class log-odds histograms of negatives [0] and positives [1]: (2, C, AUC_BINS)."""
    sums = classification_sums(logits_BC, labels_B, weights_B)
    weights_B = _weights(labels_B, weights_B)
    num_classes = logits_BC.shape[-1]
    logits_BC = logits_BC.astype(jnp.float32)
    predicted_B = jnp.argmax(logits_BC, -1)
    sums['confusion'] = jnp.zeros((num_classes, num_classes), jnp.float32).at[
        labels_B, predicted_B].add(weights_B)
    if num_classes > TOP_K:
        top_BK = jax.lax.top_k(logits_BC, TOP_K)[1]
        hit_B = jnp.any(top_BK == labels_B[:, None], -1).astype(jnp.float32)
        sums[f'top{TOP_K}_correct'] = jnp.sum(hit_B * weights_B)
    log_p_BC = jax.nn.log_softmax(logits_BC, -1)
    log_odds_BC = log_p_BC - jnp.log1p(-jnp.exp(log_p_BC))  # +inf where p rounds to 1: clipped
    fraction_BC = (jnp.clip(log_odds_BC, -LOG_ODDS_LIMIT, LOG_ODDS_LIMIT) + LOG_ODDS_LIMIT) / (
        2 * LOG_ODDS_LIMIT)
    bin_BC = jnp.clip(jnp.floor(fraction_BC * AUC_BINS), 0, AUC_BINS - 1).astype(jnp.int32)
    positive_BC = (labels_B[:, None] == jnp.arange(num_classes)).astype(jnp.int32)
    class_BC = jnp.broadcast_to(jnp.arange(num_classes), bin_BC.shape)
    sums['score_hist'] = jnp.zeros((2, num_classes, AUC_BINS), jnp.float32).at[
        positive_BC, class_BC, bin_BC].add(jnp.broadcast_to(weights_B[:, None], bin_BC.shape))
    return sums


def lm_eval_sums(logits_BTV: jax.Array, targets_BT: jax.Array, weights_BT: jax.Array | None,
                 token_bytes_V: jax.Array | None,
                 token_chars_V: jax.Array | None) -> dict[str, jax.Array]:
    """classification_sums over next tokens, plus the UTF-8 bytes and characters the targets
    stand for (when the tokenizer is known)."""
    sums = classification_sums(logits_BTV, targets_BT, weights_BT)
    weights_BT = _weights(targets_BT, weights_BT)
    if token_bytes_V is not None:
        sums['bytes'] = jnp.sum(jnp.take(token_bytes_V, targets_BT).astype(jnp.float32) *
                                weights_BT)
        sums['chars'] = jnp.sum(jnp.take(token_chars_V, targets_BT).astype(jnp.float32) *
                                weights_BT)
    return sums


def chunked(sums_fn, hidden_BTD: jax.Array, unembed_DV: jax.Array, softcap: float,
            targets_BT: jax.Array, weights_BT: jax.Array | None, chunk: int, **kwargs
            ) -> dict[str, jax.Array]:
    """sums_fn(logits, targets, weights, **kwargs) over every position, with the logits
    (soft_cap(hidden @ unembed, softcap), float32) made `chunk` positions at a time and
    recomputed in the backward pass: at most (B, chunk, V) logits live instead of (B, T, V).
    Sums add over chunks."""
    batch, length, width = hidden_BTD.shape
    weights_BT = _weights(targets_BT, weights_BT)
    to_chunks = lambda x: jnp.swapaxes(x.reshape(batch, length // chunk, chunk, *x.shape[2:]),
                                       0, 1)

    @jax.checkpoint
    def add_chunk(sums, chunk_xs):
        hidden_BCD, targets_BC, weights_BC = chunk_xs
        logits_BCV = soft_cap(jnp.einsum('bcd,dv->bcv', hidden_BCD, unembed_DV,
                                         preferred_element_type=jnp.float32), softcap)
        return add(sums, sums_fn(logits_BCV, targets_BC, weights_BC, **kwargs)), None

    zeros = jax.tree.map(
        jnp.zeros_like, jax.eval_shape(lambda: sums_fn(
            jnp.zeros((batch, chunk, unembed_DV.shape[1]), jnp.float32), targets_BT[:, :chunk],
            weights_BT[:, :chunk], **kwargs)))
    sums, _ = jax.lax.scan(add_chunk, zeros, tuple(map(to_chunks, (hidden_BTD, targets_BT,
                                                                   weights_BT))))
    return sums


def check_num_classes(logits_shape, num_classes: int) -> None:
    """At trace time: the model's class count must be the dataset's."""
    if logits_shape[-1] != num_classes:
        raise UserError(f'the model predicts {logits_shape[-1]} classes and the dataset has '
                        f'{num_classes}: set the model head to {num_classes} classes')


TRAIN_SUMS = ('loss_sum', 'correct', 'count')  # what the training loop's metric window keeps


def zero_sums(names: tuple = TRAIN_SUMS) -> dict[str, jax.Array]:
    """The training sums of no examples: where accumulation starts."""
    return {name: jnp.zeros((), jnp.float32) for name in names}


def train_sums(sums: dict, names: tuple = TRAIN_SUMS) -> dict[str, jax.Array]:
    """A task's training sums as the metric window (and checkpoints) hold them: `names` (the
    task's, tasks.train_sum_names), 'correct' NaN for a task that counts none (no accuracy; a
    regression); other names are left out."""
    return {name: sums.get(name, jnp.full((), jnp.nan, jnp.float32)) if name == 'correct'
            else sums[name] for name in names}


def empty_window(names: tuple = TRAIN_SUMS) -> dict:
    """The training loop's open metric window (saved in checkpoints): sums since the last log
    step, and the first step whose loss was not finite (-1: none)."""
    return {'sums': zero_sums(names), 'nonfinite_step': jnp.full((), -1, jnp.int32)}


def add(a: dict, b: dict) -> dict:
    return jax.tree.map(jnp.add, a, b)


def summarize(sums: dict, kind: str = 'image') -> dict[str, float]:
    """Host values from (fetched) sums: mean loss, accuracy where 'correct' is counted (named
    reward_accuracy for preference pairs), the mean of any other '<name>_sum' (a task's own
    metrics), and whatever else the sums allow:
    perplexity and bits per byte/character for LMs; top-k accuracy, macro precision, recall and
    F1, and ROC-AUC (binary, or macro one-vs-rest) for classifiers."""
    sums = jax.device_get(sums)
    count = float(np.maximum(sums['count'], 1))
    values = {name[:-len('_sum')]: float(value) / count for name, value in sums.items()
              if name.endswith('_sum') and np.ndim(value) == 0}
    if np.isfinite(sums.get('correct', np.nan)):
        values['reward_accuracy' if kind == 'text_preference' else 'accuracy'] = float(
            sums['correct']) / count
    if kind == 'text_lm':
        values['perplexity'] = float(np.exp(min(values['loss'], 80.0)))
        for unit in ('bytes', 'chars'):
            if unit in sums and sums[unit] > 0:
                values[f'bits_per_{unit[:-1]}'] = float(sums['loss_sum']) / math.log(2) / float(
                    sums[unit])
    if f'top{TOP_K}_correct' in sums:
        values[f'top{TOP_K}_accuracy'] = float(sums[f'top{TOP_K}_correct']) / count
    if 'confusion' in sums:
        per_class = _per_class(np.asarray(sums['confusion'], np.float64))
        present = per_class['support'] + per_class['predicted'] > 0
        for name in ('precision', 'recall', 'f1'):
            values[f'{name}_macro'] = float(np.mean(per_class[name][present]))
        aucs = [roc(sums['score_hist'], c)[2] for c in _auc_classes(sums)]
        aucs = [a for a in aucs if a is not None]
        if aucs:
            values['auc' if len(sums['confusion']) == 2 else 'auc_macro'] = float(np.mean(aucs))
    return values


def _per_class(confusion_CC: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 per class (0 where undefined, as scikit-learn reports them)."""
    true_positives = np.diag(confusion_CC)
    support, predicted = confusion_CC.sum(1), confusion_CC.sum(0)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives),
                          where=predicted > 0)
    recall = np.divide(true_positives, support, out=np.zeros_like(true_positives),
                       where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return {'precision': precision, 'recall': recall, 'f1': f1, 'support': support,
            'predicted': predicted}


def _auc_classes(sums) -> list[int]:
    """Binary: the positive class 1. More classes: each class, one against the rest."""
    return [1] if len(sums['confusion']) == 2 else list(range(len(sums['confusion'])))


def roc(score_hist: np.ndarray, class_index: int):
    """(false positive rates, true positive rates, AUC, max binning error) of one class from
    the log-odds histograms, thresholds from high to low; AUC is None if the class has no
    positives or no negatives."""
    negatives, positives = (np.asarray(score_hist[i, class_index], np.float64)[::-1]
                            for i in (0, 1))
    num_neg, num_pos = negatives.sum(), positives.sum()
    if num_neg == 0 or num_pos == 0:
        return np.zeros(1), np.zeros(1), None, None
    tpr = np.concatenate([[0.0], np.cumsum(positives) / num_pos])
    fpr = np.concatenate([[0.0], np.cumsum(negatives) / num_neg])
    auc = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))
    error = float(0.5 * np.sum(positives * negatives) / (num_pos * num_neg))
    return fpr, tpr, auc, error


def details(sums: dict, class_names: list[str]) -> dict:
    """The confusion matrix, per-class precision/recall/F1/support and ROC curves (points where
    the curve moves) with AUC and its binning error bound, as JSON-ready lists."""
    sums = jax.device_get(sums)
    confusion = np.asarray(sums['confusion'], np.float64)
    if len(class_names) != len(confusion):
        raise UserError(f'the eval sums hold {len(confusion)} classes and {len(class_names)} '
                        'class names were given: pass one name per class the model predicts')
    per_class = _per_class(confusion)
    curves = {}
    for c in _auc_classes(sums):
        fpr, tpr, auc, error = roc(sums['score_hist'], c)
        if auc is None:
            continue
        moves = np.concatenate([[True], (np.diff(fpr) != 0) | (np.diff(tpr) != 0)])
        curves[class_names[c]] = {'fpr': fpr[moves].tolist(), 'tpr': tpr[moves].tolist(),
                                  'auc': auc, 'auc_max_binning_error': error}
    return {'class_names': list(class_names), 'confusion': confusion.astype(int).tolist(),
            'per_class': {name: per_class[name].tolist()
                          for name in ('precision', 'recall', 'f1', 'support')},
            'roc': curves}
