import numpy as np
import pytest
import tensorflow_datasets as tfds

from bigjax import data
from bigjax.config import default_config
from bigjax.data import python_exceptions, python_stdlib, text, tokenizers
from bigjax.data.tokenizers import EOS_ID, PAD_ID
from bigjax.errors import UserError

SAMPLE = 'def f(x):\n\treturn x  # naïve ✓ 🙂\n'


def text_config(**overrides):
    config = default_config().data
    config.name = 'python_stdlib'
    config.eval_split = 'validation'
    config.text.update(overrides)
    return config


def test_cleaning_modes():
    raw = 'Cafe\u0301 \r\nline  \t\r\n\n\n'
    assert text.clean_text(raw, unicode_form='NFC', whitespace='keep') == 'Café \nline  \t\n\n\n'
    assert text.clean_text(raw, unicode_form='NFC', whitespace='lines') == 'Café\nline'
    assert text.clean_text(raw, unicode_form='', whitespace='collapse') == 'Cafe\u0301 line'


def test_clean_documents_counts_what_it_drops_and_keeps_labels_aligned():
    docs = ['a', '  \n', 'b ', 'a', 'c', 'b']
    kept, labels, report = text.clean_documents(docs, np.arange(6))
    assert kept == ['a', 'b', 'c'] and list(labels) == [0, 2, 4]
    assert (report.kept, report.dropped_empty, report.dropped_duplicate) == (3, 1, 2)
    kept, _, report = text.clean_documents(docs, drop_duplicates=False)
    assert len(kept) == 5 and report.dropped_duplicate == 0
    with pytest.raises(UserError, match='data.text.whitespace'):
        text.clean_documents(docs, whitespace='squash')


def test_pack_joins_documents_and_cuts_overlapping_windows():
    docs = [np.array([5, 6, 7]), np.array([8, 9])]  # stream: 5 6 7 EOS 8 9 EOS
    windows = text.pack(docs, seq_len=3, dtype=np.int32)
    np.testing.assert_array_equal(windows, [[5, 6, 7, EOS_ID], [EOS_ID, 8, 9, EOS_ID]])
    with pytest.raises(UserError, match='too few for one sequence of data.text.seq_len=9'):
        text.pack(docs, seq_len=9, dtype=np.int32)


def test_pad_truncates_and_pads():
    padded = text.pad([np.array([5, 6, 7, 8]), np.array([9])], seq_len=3, dtype=np.uint16)
    np.testing.assert_array_equal(padded, [[5, 6, 7], [9, PAD_ID, PAD_ID]])
    assert padded.dtype == np.uint16
    tails = text.pad([np.array([5, 6, 7, 8]), np.array([9])], seq_len=3, dtype=np.uint16,
                     keep='last')
    np.testing.assert_array_equal(tails, [[6, 7, 8], [9, PAD_ID, PAD_ID]])


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = tokenizers.ByteTokenizer()
    [ids] = tokenizer.encode_batch([SAMPLE])
    assert ids.min() >= 2 and ids.max() < tokenizer.vocab_size == 258
    assert tokenizer.decode(np.append(ids, [EOS_ID, PAD_ID])) == SAMPLE


def test_bpe_tokenizer_trains_compresses_and_round_trips():
    corpus = [SAMPLE * 3, 'import os\nimport sys\n' * 20, 'for i in range(10):\n    print(i)\n']
    tokenizer = tokenizers.BpeTokenizer(tokenizers.train_bpe(corpus * 10, vocab_size=300))
    assert tokenizer.vocab_size <= 300 and tokenizer.name.startswith('bpe')
    [ids] = tokenizer.encode_batch([corpus[1]])
    assert len(ids) < len(corpus[1].encode()) / 2
    assert tokenizer.decode(ids) == corpus[1]
    assert tokenizer.decode(tokenizer.encode_batch([SAMPLE])[0]) == SAMPLE
    assert PAD_ID not in ids and EOS_ID not in ids


@pytest.mark.parametrize('overrides, message', [
    ({'tokenizer': 'wordpiece'}, 'data.text.tokenizer'),
    ({'tokenizer': 'bpe', 'vocab_size': 100}, 'data.text.vocab_size'),
    ({'seq_len': 0}, 'data.text.seq_len'),
    ({'task': 'classification'}, "no feature 'label'"),
    ({'task': 'classify'}, 'data.text.task'),
    ({'seq_len': 10_000_000}, 'too few for one sequence'),
    ({'keep': 'middle'}, 'data.text.keep'),
])
def test_bad_text_config_is_a_clear_error(overrides, message):
    with pytest.raises(UserError, match=message):
        data.open_dataset(text_config(**overrides))


def test_stdlib_split_is_fixed_by_path():
    assert [python_stdlib.split_of(p) for p in ('json/decoder.py', 'os.py', 'test/test_os.py',
                                                'asyncio/tasks.py')] == [
        'train', 'train', 'train', 'validation']
    docs, _ = python_stdlib.documents()
    assert len(docs) > 1000 and all(d['path'].endswith('.py') for d in docs)
    by_path = {d['path']: d for d in docs}
    assert by_path['json/decoder.py']['package'] == 'json' and not by_path['os.py']['is_test']
    assert by_path['test/test_os.py']['is_test']


def test_stdlib_corpus_as_lm_data_is_cached_and_decodes_to_source():
    config = text_config(seq_len=128)
    dataset = data.open_dataset(config)
    assert dataset.kind == 'text_lm' and dataset.seq_len == 128
    tokens = dataset.train.arrays['tokens']
    assert tokens.shape[1] == 129 and tokens.dtype == np.uint16 and len(tokens) > 10_000
    np.testing.assert_array_equal(tokens[:-1, -1], tokens[1:, 0])  # windows overlap by one
    decoded = dataset.tokenizer.decode(np.concatenate([t[:-1] for t in tokens[:40]]))
    cleaned = [text.clean_text(d['text'], unicode_form='NFC', whitespace='lines')
               for d in python_stdlib.documents()[0]]
    assert any(decoded.startswith(c[:200]) for c in cleaned if len(c) >= 200)
    info = tfds.builder('python_stdlib').info
    assert len(info.metadata['sha256']) == 64 and info.metadata['documents'] > 1000
    again = data.open_dataset(config)  # from the cache: the same arrays, memory-mapped
    assert isinstance(again.train.arrays['tokens'], np.memmap)
    np.testing.assert_array_equal(again.eval.arrays['tokens'], dataset.eval.arrays['tokens'])


def test_exception_examples_end_at_the_except_and_are_labelled_with_its_exception():
    source = ('import os\n' + 'x = 1\n' * 400 + 'try:\n    os.remove(p)\n'
              'except OSError as e:\n    pass\ntry:\n    import zlib\nexcept ImportError:\n'
              '    zlib = None\nexcept (KeyError, TypeError):\n    pass\n'
              'except MyError:\n    pass\n')
    examples = python_exceptions.examples({'text': source, 'path': 'a/b.py'})
    assert [e['label'] for e in examples] == [python_exceptions.EXCEPTIONS.index(name)
                                              for name in ('OSError', 'ImportError')]
    first, second = examples
    assert first['text'].endswith('try:\n    os.remove(p)\nexcept')
    assert len(first['text']) <= python_exceptions.CONTEXT_CHARS
    assert first['text'].startswith('x = 1\n')  # whole lines
    cut_at_line_start = 'y\n' * 1000 + ' except KeyError:\n'  # the 2,000-character cut
    [example] = python_exceptions.examples({'text': cut_at_line_start, 'path': 'c.py'})
    assert example['text'] == 'y\n' * 996 + ' except'  # falls on a line start: keeps that line
    assert second['text'].endswith('import zlib\nexcept') and second['path'] == 'a/b.py'
    assert source[second['offset']:].startswith('ImportError:')


def test_a_classifier_can_use_the_pretraining_corpus_tokenizer():
    """python_exceptions tokenized by the characters of python_stdlib's training split (the
    LM's), its examples' last tokens kept: every example ends with the word `except`."""
    config = text_config(tokenizer='char', seq_len=64, keep='last',
                         tokenizer_data='python_stdlib')
    config.update(name='python_exceptions', eval_split='validation')
    dataset = data.open_dataset(config)
    lm_tokenizer = data.open_dataset(text_config(tokenizer='char', seq_len=64)).tokenizer
    assert dataset.tokenizer.name == lm_tokenizer.name
    assert dataset.class_names == python_exceptions.EXCEPTIONS
    tokens = dataset.eval.arrays['tokens']
    last = (tokens != PAD_ID).sum(1) - 1
    assert len(tokens) > 100 and (last == 63).mean() > 0.9
    assert all(dataset.tokenizer.decode(row[:i + 1]).endswith('except')
               for row, i in zip(tokens, last))


@pytest.mark.parametrize('name, split, kind, classes', [
    ('imdb_reviews', 'test', 'text_classification', 2),
    ('tiny_shakespeare', 'validation', 'text_lm', 0),
    ('lm1b', 'test', 'text_lm', 0),
])
def test_tfds_text_datasets_under_mock_data(name, split, kind, classes):
    config = default_config().data
    config.name, config.eval_split = name, split
    config.text.seq_len = 16
    with tfds.testing.mock_data(num_examples=12):
        dataset = data.open_dataset(config)
    assert (dataset.kind, dataset.num_classes) == (kind, classes)
    width = 16 if kind == 'text_classification' else 17
    assert dataset.train.arrays['tokens'].shape[1] == width
    if kind == 'text_classification':
        assert set(dataset.eval.arrays) == {'tokens', 'label'}
        assert len(dataset.eval.arrays['label']) == len(dataset.eval.arrays['tokens'])


@pytest.mark.parametrize('name, shape', [('fashion_mnist', (28, 28, 1)), ('cifar10', (32, 32, 3))])
def test_tfds_image_datasets_under_mock_data(name, shape):
    config = default_config().data
    config.name = name
    with tfds.testing.mock_data(num_examples=12):
        dataset = data.open_dataset(config)
        assert dataset.kind == 'image' and dataset.image_shape == shape
        assert dataset.train.arrays['image'].shape == (12, *shape)


def test_corrupted_prepared_dataset_is_a_clear_error(tmp_path):
    config = default_config().data
    config.data_dir = str(tmp_path)
    data.open_dataset(config)  # Prepares sklearn_digits into tmp_path (arrays not read yet).
    [records] = tmp_path.glob('sklearn_digits/1.0.0/*train.array_record*')
    records.write_bytes(records.read_bytes()[:records.stat().st_size // 2])
    with pytest.raises(UserError, match='cannot be read .* delete that folder and rerun'):
        data.open_dataset(config).train.arrays


def test_corrupted_cache_entry_is_a_clear_error(tmp_path):
    config = default_config().data
    config.data_dir = str(tmp_path)
    assert len(data.open_dataset(config).eval.arrays['label']) == 360  # Writes the cache.
    [labels] = tmp_path.glob('bigjax_cache/**/label.npy')
    labels.write_bytes(b'not numpy')
    with pytest.raises(UserError, match='cache entry .* is unreadable .* delete that folder'):
        data.open_dataset(config).eval.arrays


def test_image_model_or_augmentation_on_text_data_is_a_clear_error(tmp_path):
    from bigjax import train
    config = default_config()
    config.data.name, config.data.eval_split = 'python_stdlib', 'validation'
    config.train.batch_size = 8
    with pytest.raises(UserError, match="model.name='cnn' takes image data, and the dataset is "
                                        'text_lm'):
        train.run(config, tmp_path / 'run')
    config.data.augment.rotation_degrees = 10.0
    with pytest.raises(UserError, match='data.augment transforms images'):
        train.run(config, tmp_path / 'run')
    assert not (tmp_path / 'run').exists()
