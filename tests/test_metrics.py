"""Evaluation metrics against scikit-learn on the same predictions, streamed = one-shot, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from sklearn import metrics as sk

from bigjax import metrics, parallel
from bigjax.data import tokenizers
from bigjax.errors import UserError


def predictions(num_classes, count=600, seed=0):
    """Logits that are informative but imperfect, and labels covering every class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % num_classes
    logits = rng.normal(size=(count, num_classes)).astype(np.float32)
    logits[np.arange(count), labels] += rng.uniform(0, 2.5, count)
    return logits, labels.astype(np.int32)


def eval_sums(logits, labels, weights=None):
    return jax.device_get(jax.jit(metrics.classifier_eval_sums)(logits, labels, weights))


@pytest.mark.parametrize('num_classes', [2, 7])
def test_classifier_metrics_match_scikit_learn(num_classes):
    logits, labels = predictions(num_classes)
    sums = eval_sums(logits, labels)
    values = metrics.summarize(sums, 'image')
    predicted = logits.argmax(-1)
    assert values['accuracy'] == pytest.approx(sk.accuracy_score(labels, predicted))
    precision, recall, f1, _ = sk.precision_recall_fscore_support(labels, predicted,
                                                                  average='macro')
    assert values['precision_macro'] == pytest.approx(precision, abs=1e-12)
    assert values['recall_macro'] == pytest.approx(recall, abs=1e-12)
    assert values['f1_macro'] == pytest.approx(f1, abs=1e-12)
    names = [f'c{i}' for i in range(num_classes)]
    details = metrics.details(sums, names)
    assert details['confusion'] == sk.confusion_matrix(labels, predicted).tolist()
    per_class = sk.precision_recall_fscore_support(labels, predicted)
    for i, name in enumerate(('precision', 'recall', 'f1', 'support')):
        np.testing.assert_allclose(details['per_class'][name], per_class[i], atol=1e-12)
    probs = np.asarray(jax.nn.softmax(logits.astype(np.float64), -1))
    if num_classes == 2:
        exact = sk.roc_auc_score(labels, probs[:, 1])
        ours, bound = values['auc'], details['roc']['c1']['auc_max_binning_error']
    else:
        exact = sk.roc_auc_score(labels, probs, multi_class='ovr', average='macro')
        assert values['top5_accuracy'] == pytest.approx(
            sk.top_k_accuracy_score(labels, logits, k=5))
        ours = values['auc_macro']
        bound = np.mean([c['auc_max_binning_error'] for c in details['roc'].values()])
    assert abs(ours - exact) <= bound + 1e-9
    assert bound < 2e-3  # 1024 log-odds bins: ties are rare at this spread of scores


def test_roc_points_match_scikit_learn_curve_at_bin_edges():
    """Thresholds at the bin edges are a subset of the exact curve's: every point we report
    lies on scikit-learn's ROC curve."""
    logits, labels = predictions(2, count=400, seed=1)
    details = metrics.details(eval_sums(logits, labels), ['no', 'yes'])
    fpr, tpr = (np.asarray(details['roc']['yes'][k]) for k in ('fpr', 'tpr'))
    exact_fpr, exact_tpr, _ = sk.roc_curve(labels, logits[:, 1] - logits[:, 0],
                                          drop_intermediate=False)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    for x, y in zip(fpr, tpr):  # the exact curve passes through (x, y) at some threshold
        assert np.any(np.isclose(exact_fpr, x) & np.isclose(exact_tpr, y)), (x, y)


def test_streamed_sums_equal_one_shot_and_padding_is_ignored():
    logits, labels = predictions(7, count=90, seed=2)
    one_shot = eval_sums(logits, labels)
    streamed = None
    for part in np.array_split(np.arange(90), 4):  # uneven batches, padded to 32 rows
        pad = 32 - len(part)
        padded_logits = np.concatenate([logits[part], np.zeros((pad, 7), np.float32)])
        padded_labels = np.concatenate([labels[part], np.zeros(pad, np.int32)])
        mask = np.arange(32) < len(part)
        sums = eval_sums(padded_logits, padded_labels, mask)
        streamed = sums if streamed is None else jax.tree.map(np.add, streamed, sums)
    for name in ('confusion', 'score_hist', 'count', 'correct', 'top5_correct'):
        np.testing.assert_array_equal(streamed[name], one_shot[name], err_msg=name)
    assert streamed['loss_sum'] == pytest.approx(one_shot['loss_sum'], rel=1e-5)


def test_sums_on_a_sharded_batch_equal_one_device():
    mesh = parallel.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
    logits, labels = predictions(7, count=64, seed=3)
    batch = NamedSharding(mesh, PartitionSpec(('data', 'fsdp')))
    sharded = jax.device_get(jax.jit(metrics.classifier_eval_sums)(
        jax.device_put(logits, batch), jax.device_put(labels, batch)))
    one = eval_sums(logits, labels)
    for name in ('confusion', 'score_hist', 'correct', 'count'):
        np.testing.assert_array_equal(sharded[name], one[name])


@pytest.mark.parametrize('tokenizer', ['byte', 'bpe'])
def test_bits_per_byte_and_char_count_the_text_not_the_tokens(tokenizer):
    text = 'déjà vu: 日本語 and plain ASCII\n' * 20
    tok = (tokenizers.ByteTokenizer() if tokenizer == 'byte'
           else tokenizers.BpeTokenizer(tokenizers.train_bpe([text], 300)))
    ids = tok.encode_batch([text])[0][None, :]
    token_bytes, token_chars = tok.token_lengths()
    logits = jnp.zeros((1, ids.shape[1], tok.vocab_size))  # uniform: log(V) nats per token
    sums = jax.device_get(metrics.lm_eval_sums(logits, jnp.asarray(ids), None,
                                               jnp.asarray(token_bytes), jnp.asarray(token_chars)))
    assert sums['bytes'] == len(text.encode('utf-8')) and sums['chars'] == len(text)
    values = metrics.summarize(sums, 'text_lm')
    bits = ids.shape[1] * math.log2(tok.vocab_size)
    assert values['bits_per_byte'] == pytest.approx(bits / len(text.encode('utf-8')), rel=1e-5)
    assert values['bits_per_char'] == pytest.approx(bits / len(text), rel=1e-5)
    assert values['perplexity'] == pytest.approx(tok.vocab_size, rel=1e-4)


def test_class_count_mismatch_is_a_clear_error():
    with pytest.raises(UserError, match='the model predicts 7 classes and the dataset has 10'):
        metrics.check_num_classes((32, 7), 10)
    logits, labels = predictions(3, count=30)
    with pytest.raises(UserError, match='hold 3 classes and 2 class names'):
        metrics.details(eval_sums(logits, labels), ['a', 'b'])
