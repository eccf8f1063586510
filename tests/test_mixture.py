"""data.mixture: several LM datasets drawn with weights, as a function of (seed, step)."""

import json

import jax
import numpy as np
import pytest

from bigjax import config as config_lib
from bigjax import data, train, writers
from bigjax.data import mixture, tokenizers
from bigjax.errors import UserError
from conftest import load_config
from test_train import TIMING_KEYS, final_params

SOURCES = {'a.txt': 'abcd efgh ijkl\n', 'x.txt': 'wxyz 0123 4567\n'}  # disjoint characters


def without_timing(rows):
    timing = (*TIMING_KEYS, 'tokens_per_sec', 'mfu')
    return [{k: v for k, v in row.items() if k not in timing} for row in rows]


def write_sources(tmp_path) -> dict:
    paths = {}
    for name, line in SOURCES.items():
        paths[name] = tmp_path / name
        paths[name].write_text(line * 300)
    (tmp_path / 'x2.txt').write_text(SOURCES['x.txt'] * 100)  # x.txt's second document
    paths['chat'] = tmp_path / 'chat.jsonl'
    paths['chat'].write_text(''.join(json.dumps({'messages': [
        {'role': 'user', 'content': f'{i} + 1?'},
        {'role': 'assistant', 'content': str(i + 1)}]}) + '\n' for i in range(120)))
    return paths


def mixture_config(tmp_path, weights=(0.6, 0.3, 0.1), document_mask=False):
    paths = write_sources(tmp_path)
    config = load_config('char_lm', 'smoke')
    config.data.name = 'mixture'
    config.data.data_dir = str(tmp_path / 'data')
    config.data.text.tokenizer = 'byte'  # one vocabulary for every source
    config.data.text.seq_len = config.model.transformer.max_len = 64
    config.data.chat.update(answer_tokens=8, eval_generations=4)
    config.data.mixture = (
        (weights[0], {'name': 'text_files', 'paths': str(paths['a.txt'])}),
        (weights[1], {'name': 'text_files', 'paths': f"{paths['x.txt']},{tmp_path / 'x2.txt'}",
                      'text': {'document_mask': document_mask}}),
        (weights[2], {'name': 'chat', 'paths': str(paths['chat'])}))
    config_lib.check(config)
    return config


def source_of_each_row(tokens_NL) -> np.ndarray:
    """0 for a.txt's windows, 1 for x.txt's, 2 for conversations (by the characters they hold)."""
    ids = lambda text: set(tokenizers.load('byte').encode_batch([text])[0].tolist())
    a_ids, chat_ids = ids('abcdefghijkl'), ids('+?')
    return np.array([2 if chat_ids & set(row) else 0 if a_ids & set(row) else 1
                     for row in np.asarray(tokens_NL).tolist()])


def test_batches_draw_each_source_in_its_weight_and_log_what_they_drew(tmp_path):
    config = mixture_config(tmp_path)
    dataset = data.open_dataset(config.data)
    assert dataset.token_arrays == ('tokens', 'segments', 'weights')
    iterator = data.train_iterator(dataset, 32, seed=0)
    tokens = dataset.train.arrays['tokens']
    drawn = np.concatenate([source_of_each_row(tokens[iterator.order.rows(step)])
                            for step in range(300)])
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    np.testing.assert_allclose(shares, [0.6, 0.3, 0.1], atol=0.01)  # 9,600 rows
    logged = iterator.drawn(0, 300)
    assert list(logged) == ['mix/text_files0', 'mix/text_files1', 'mix/chat']
    np.testing.assert_allclose(list(logged.values()), shares, atol=1e-12)
    # The order is a function of (seed, step): a fresh iterator jumps straight to any step, and
    # another seed draws other rows.
    again = data.train_iterator(dataset, 32, seed=0).order
    for step in (299, 0, 150):
        np.testing.assert_array_equal(again.rows(step), iterator.order.rows(step))
    assert not np.array_equal(data.train_iterator(dataset, 32, seed=1).order.rows(0),
                              iterator.order.rows(0))


def test_a_source_smaller_than_the_batch_cycles_through_shuffled_epochs(tmp_path):
    order = mixture.MixtureOrder((3, 50), (0.5, 0.5), ('small', 'large'), 16, seed=0)
    rows = np.concatenate([order.rows(step) for step in range(40)])
    small = np.sort(rows[rows < 3])
    counts = np.bincount(small, minlength=3)
    assert counts.max() - counts.min() <= 1  # every epoch of the small source is a permutation
    assert set(rows[rows >= 3].tolist()) == set(range(3, 53))


def test_plain_text_joins_conversations_with_every_token_learnt_and_its_documents_apart(
        tmp_path):
    dataset = data.open_dataset(mixture_config(tmp_path, document_mask=True).data)
    arrays = dataset.train.arrays
    source = source_of_each_row(arrays['tokens'])
    plain, masked = source == 0, source == 1
    assert (arrays['weights'][plain | masked] == 1).all()
    assert (arrays['segments'][plain] == 1).all()  # document_mask off: one segment a window
    eos = dataset.tokenizer.eos_id
    tokens_NL, segments_NL = arrays['tokens'][masked], arrays['segments'][masked]
    row, at = np.argwhere(tokens_NL[:, 1:-1] == eos)[0] + (0, 1)  # the end of x.txt
    segments = segments_NL[row]  # an end-of-document id closes its document
    assert segments[at] == segments[at - 1] and segments[at + 1] == segments[at] + 1
    conversations = arrays['weights'][source == 2]
    assert 0 < conversations.mean() < 0.5  # only the answers are learnt


def test_training_on_a_mixture_resumes_bitwise_and_logs_the_mix(tmp_path):
    config = mixture_config(tmp_path)
    config.train.update(num_steps=12, log_every=4, eval_every=6, checkpoint_every=6)
    expected = train.run(config, tmp_path / 'straight')
    assert train.run(config, tmp_path / 'resumed', stop_at_step=5) is None  # mid log-window
    assert train.run(config, tmp_path / 'resumed') == expected
    straight = without_timing(writers.read_metrics(tmp_path / 'straight'))
    assert without_timing(writers.read_metrics(tmp_path / 'resumed')) == straight
    jax.tree.map(np.testing.assert_array_equal, final_params(tmp_path / 'resumed', 12),
                 final_params(tmp_path / 'straight', 12))
    final = [row for row in straight if row['split'] == 'eval'][-1]
    for name in ('text_files0', 'text_files1', 'chat'):  # each source scored on its own too
        assert final[f'{name}/loss'] > 0 and f'{name}/perplexity' in final
    assert final['text_files0/loss'] != final['chat/loss']
    losses = [final[f'{name}/loss'] for name in ('text_files0', 'text_files1', 'chat')]
    assert min(losses) < final['loss'] < max(losses)  # the whole split's: their weighted mean
    train_rows = [row for row in straight if row['split'] == 'train']
    assert [row['step'] for row in train_rows] == [4, 8, 12]
    for row in train_rows:
        shares = [row['mix/text_files0'], row['mix/text_files1'], row['mix/chat']]
        assert sum(shares) == pytest.approx(1.0) and all(0 <= s <= 1 for s in shares)


def test_a_mixture_is_described_for_compiling_without_its_data(tmp_path):
    config = mixture_config(tmp_path)
    described = data.describe(config.data)
    assert (described.kind, described.seq_len, described.token_arrays) == (
        'text_lm', 64, ('tokens', 'segments', 'weights'))
    assert described.vocab_size == data.open_dataset(config.data).vocab_size


@pytest.mark.parametrize('change, message', [
    (lambda c: setattr(c.data, 'mixture', ()), r'needs data.mixture=\(\(weight'),
    (lambda c: setattr(c.data, 'mixture', ((1.0, {'paths': 'a.txt'}),)), r"with a 'name'"),
    (lambda c: setattr(c.data, 'mixture', ((0.0, {'name': 'text_files'}),)), r'weights must'),
    (lambda c: setattr(c.data, 'mixture', ((1.0, {'name': 'text_files', 'pahts': 'a'}),)),
     r'data.mixture\[0\]: data.pahts is not a config key'),
    (lambda c: setattr(c.data, 'mixture', ((1.0, {'name': 'text_files', 'paths': 3}),)),
     r'data.mixture\[0\]: data.paths=3 has type int, expected str'),
    (lambda c: setattr(c.data, 'mixture', c.data.mixture[:1] + (
        (1.0, {'name': 'text_files', 'paths': c.data.mixture[1][1]['paths'],
               'text': {'seq_len': 16}}),)), r"'text_files1' has seq_len 16 and tokenizer"),
    (lambda c: setattr(c.data, 'mixture', ((1.0, {'name': 'sklearn_digits'}),)),
     r"'sklearn_digits' is image data; a mixture joins language-model text"),
])
def test_bad_mixtures_are_one_line_errors(tmp_path, change, message):
    config = mixture_config(tmp_path)
    change(config)
    with pytest.raises(UserError, match=message) as error:
        data.open_dataset(config.data)
    assert '\n' not in str(error.value)
