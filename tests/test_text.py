import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bigjax import data
from bigjax.config import default_config
from bigjax.data import datasets, encode, python_exceptions, python_stdlib, text, tokenizers
from bigjax.data.tokenizers import EOS_ID, PAD_ID
from bigjax.errors import UserError
from conftest import REPO

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


def test_cleaner_counts_what_it_drops_and_keeps_labels_aligned_across_chunks():
    docs = ['a', '  \n', 'b ', 'a', 'c', 'b']
    cleaner = text.Cleaner()
    first, first_labels = cleaner(docs[:3], np.arange(3))
    second, second_labels = cleaner(docs[3:], np.arange(3, 6))
    assert first + second == ['a', 'b', 'c'] and [*first_labels, *second_labels] == [0, 2, 4]
    assert (cleaner.report.kept, cleaner.report.dropped_empty,
            cleaner.report.dropped_duplicate) == (3, 1, 2)
    kept, _ = text.Cleaner(drop_duplicates=False)(docs)
    assert len(kept) == 5
    with pytest.raises(UserError, match='data.text.whitespace'):
        text.Cleaner(whitespace='squash')


def test_digest_set_finds_repeats_within_and_across_chunks():
    digests = np.random.default_rng(0).integers(0, 500, 4000).astype(np.uint64)
    seen, expected = set(), []
    for d in digests.tolist():
        expected.append(d not in seen)
        seen.add(d)
    digest_set = text.DigestSet()
    got = np.concatenate([digest_set.add(chunk) for chunk in np.array_split(digests, 37)])
    np.testing.assert_array_equal(got, expected)


def test_packer_joins_documents_and_cuts_overlapping_windows_across_chunks():
    docs = [np.array([5, 6, 7]), np.array([8, 9])]  # stream: 5 6 7 EOS 8 9 EOS
    packer = text.Packer(seq_len=3, dtype=np.int32)
    windows = np.concatenate([packer(docs[:1]), packer([]), packer(docs[1:])])
    np.testing.assert_array_equal(windows, [[5, 6, 7, EOS_ID], [EOS_ID, 8, 9, EOS_ID]])
    assert len(text.Packer(seq_len=9, dtype=np.int32)(docs)) == 0


def generated_corpus(num_docs: int = 3000) -> list[str]:
    """Short documents with repeats (some equal only after cleaning), blank ones, and text that
    unicode normalisation and whitespace cleaning change."""
    rng = np.random.default_rng(0)
    words = ['alpha', 'beta', 'Cafe\u0301', 'naïve', 'x', 'gamma,', 'δέλτα', '🙂', '\t\n', 'ok.']
    docs = []
    for i in range(num_docs):
        if i % 97 == 5:
            docs.append(' \n\t ')
        elif i % 41 == 7:
            docs.append(docs[rng.integers(len(docs))] + '  ')
        else:
            docs.append(' '.join(rng.choice(words, rng.integers(1, 30))))
    return docs


def reference_clean(docs, labels, **cleaning):
    """The cleaning rule written out plainly: drop empty documents and repeats of a cleaned text."""
    seen, kept, kept_labels = set(), [], []
    for doc, label in zip(docs, labels):
        cleaned = text.clean_text(doc, **cleaning)
        if cleaned.strip() and cleaned not in seen:
            seen.add(cleaned)
            kept.append(cleaned)
            kept_labels.append(label)
    return kept, np.asarray(kept_labels)


def reference_pack(docs, tokenizer, seq_len):
    """All documents encoded at once, joined with end-of-document ids, cut into windows."""
    stream = np.concatenate([np.append(ids, EOS_ID) for ids in tokenizer.encode_batch(docs)])
    starts = np.arange((len(stream) - 1) // seq_len) * seq_len
    return stream[starts[:, None] + np.arange(seq_len + 1)]


def test_streamed_tokens_equal_the_corpus_encoded_at_once(tmp_path, monkeypatch):
    """Read in blocks of 50, cleaned, encoded in ~20 chunks, packed and padded: the same tokens
    as cleaning, encoding and packing the whole corpus at once."""
    monkeypatch.setattr(encode, 'CHUNK_CHARS', 5000)
    docs, labels = generated_corpus(), np.arange(3000) % 3
    cleaning = dict(unicode_form='NFC', whitespace='collapse')
    kept, kept_labels = reference_clean(docs, labels, **cleaning)
    tokenizer = tokenizers.BpeTokenizer(tokenizers.train_bpe(kept, vocab_size=300))
    assert sum(map(len, kept)) > 15 * encode.CHUNK_CHARS

    def blocks(cleaner):
        return (cleaner(docs[i:i + 50], labels[i:i + 50]) for i in range(0, len(docs), 50))

    cleaner = text.Cleaner(**cleaning)
    num_windows, num_tokens = encode.write_lm(blocks(cleaner), tokenizer, tmp_path, 16,
                                              np.uint16)
    expected = reference_pack(kept, tokenizer, 16)
    tokens = np.load(tmp_path / 'tokens.npy')
    assert tokens.dtype == np.uint16 and num_windows == len(expected)
    np.testing.assert_array_equal(tokens, expected)
    assert num_tokens == sum(len(ids) + 1 for ids in tokenizer.encode_batch(kept))
    empty = sum(not text.clean_text(doc, **cleaning).strip() for doc in docs)
    assert (cleaner.report.kept, cleaner.report.dropped_empty,
            cleaner.report.dropped_duplicate) == (len(kept), empty, len(docs) - len(kept) - empty)
    assert cleaner.report.dropped_duplicate > 50
    assert not list(tmp_path.glob('*.rows'))

    encode.write_classification(blocks(text.Cleaner(**cleaning)), tokenizer, tmp_path, 8,
                                np.uint16, 'last')
    np.testing.assert_array_equal(np.load(tmp_path / 'tokens.npy'),
                                  text.pad(tokenizer.encode_batch(kept), 8, np.uint16, 'last'))
    np.testing.assert_array_equal(np.load(tmp_path / 'label.npy'), kept_labels)


def test_tokenizer_sample_takes_evenly_spread_blocks_in_corpus_order():
    blocks = [[f'{i:03d}' * 10] for i in range(100)]  # 30 characters each, 3,000 in all
    whole = [doc for block in blocks for doc in block]
    for limit in (0, 3000, 10 ** 8):
        assert tokenizers.sample(blocks.__getitem__, 100, limit) == whole
    part = [int(doc[:3]) for doc in tokenizers.sample(blocks.__getitem__, 100, 300)]
    assert part == [0, 8, 16, 32, 40, 48, 64, 72, 80, 96]  # 10 blocks, in order
    assert sorted(tokenizers.spread_order(100)) == list(range(100))


def stdlib_documents(split: str) -> list[str]:
    """The split's documents read record by record and cleaned as python_stdlib's LM data is."""
    docs = [e['text'].decode() for e in tfds.builder('python_stdlib').as_data_source(split)]
    return reference_clean(docs, docs, unicode_form='NFC', whitespace='lines')[0]


def learnt_from_all(kind: str, docs: list[str], vocab_size: int = 0) -> tokenizers.Tokenizer:
    return tokenizers.load(kind, tokenizers.train(kind, docs, vocab_size))


def tokenizer_reports() -> list[dict]:
    """What every python_stdlib tokenizer in the cache was learnt from."""
    root = pathlib.Path(tfds.builder('python_stdlib').data_dir_root, 'bigjax_cache')
    reports = [json.loads(p.read_text()) for p in root.glob('python_stdlib/**/report.json')]
    return [r['tokenizer_sample'] for r in reports if 'tokenizer_sample' in r]


def test_stdlib_read_in_ranges_equals_the_whole_split_at_once(monkeypatch):
    """The real files, read 7 records at a time (across two files for eval), the tokenizer's
    sample in blocks of 4 (covering the split: the same BPE as learnt from all of it), tokens in
    several chunks."""
    monkeypatch.setattr(datasets, 'READ_RECORDS', 7)
    monkeypatch.setattr(datasets, 'SAMPLE_RECORDS', 4)
    monkeypatch.setattr(encode, 'CHUNK_CHARS', 200_000)
    config = text_config(tokenizer='bpe', vocab_size=333, seq_len=48)
    config.train_split, config.eval_split = 'train[10:130]', 'validation[70:]+test[:20]'
    dataset = data.open_dataset(config)
    tokenizer = learnt_from_all('bpe', stdlib_documents(config.train_split), 333)
    assert dataset.tokenizer.name == tokenizer.name
    for split, arrays in ((config.train_split, dataset.train), (config.eval_split, dataset.eval)):
        np.testing.assert_array_equal(arrays.arrays['tokens'],
                                      reference_pack(stdlib_documents(split), tokenizer, 48))


def test_tokenizer_sample_is_in_the_cache_key_and_bounds_the_text(monkeypatch):
    monkeypatch.setattr(datasets, 'SAMPLE_RECORDS', 4)
    config = text_config(tokenizer='char', seq_len=32)
    config.train_split = 'train[:60]'
    whole = data.open_dataset(config).tokenizer
    config.text.tokenizer_sample = 10 ** 9  # also covers the split: a new entry, the same chars
    assert data.open_dataset(config).tokenizer.name == whole.name
    config.text.tokenizer_sample = 100_000
    sampled = data.open_dataset(config).tokenizer
    samples = sorted(r['characters'] for r in tokenizer_reports() if r['of_documents'] == 60)
    assert len(samples) == 3 and samples[1] == samples[2]  # two entries learnt from all of it
    assert 100_000 <= samples[0] < samples[1]
    assert set(sampled.chars) < set(whole.chars)


def test_a_killed_preparation_is_redone_not_trusted(tmp_path):
    """A run killed while writing tokens leaves a temporary folder and no entry; the next run
    removes that folder and prepares the split again."""
    config = text_config(tokenizer='char', seq_len=40)
    config.train_split, config.eval_split = 'train[:50]', 'validation[:5]'
    config.data_dir = str(tmp_path)
    killed = subprocess.run([sys.executable, '-c', KILLED_WHILE_WRITING, config.to_json()],
                            cwd=REPO)
    assert killed.returncode == -9
    cache_dir = tmp_path / 'bigjax_cache'
    [leftover] = [p for p in cache_dir.glob('python_stdlib/*/*/*') if '.tmp-' in p.name]
    assert list(leftover.glob('*.rows')) and not (leftover / 'key.json').exists()
    dataset = data.open_dataset(config)
    assert not [p for p in cache_dir.glob('python_stdlib/*/*/*') if '.tmp-' in p.name]
    docs = stdlib_documents('train[:50]')
    np.testing.assert_array_equal(dataset.train.arrays['tokens'],
                                  reference_pack(docs, learnt_from_all('char', docs), 40))


# Opens the dataset of the config (JSON in argv[1]) and kills itself at its second token write.
KILLED_WHILE_WRITING = """
import json, os, signal, sys, ml_collections
from bigjax import data
from bigjax.data import cache, encode
encode.CHUNK_CHARS = 20_000
append, calls = cache.ArrayWriter.append, []
def append_then_die(self, rows):
    append(self, rows)
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
cache.ArrayWriter.append = append_then_die
data.open_dataset(ml_collections.ConfigDict(json.loads(sys.argv[1])))
"""


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


def test_ascii_pieces_are_the_bpe_pre_tokenizers_pieces():
    """PieceMemo splits ASCII text exactly as Hugging Face's byte-level pre-tokenizer does."""
    bpe = tokenizers.BpeTokenizer(tokenizers.train_bpe([SAMPLE], vocab_size=300))
    to_char = {c: chr(b) for b, c in tokenizers._byte_level_chars().items()}
    rng = np.random.default_rng(0)
    units = list("ab Z9'\t\n\r.,_-") + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S"]
    for _ in range(3000):
        text_ = ''.join(rng.choice([chr(i) for i in range(128)] + units * 8, rng.integers(0, 16)))
        theirs = [''.join(map(to_char.get, p))
                  for p, _ in bpe._tokenizer.pre_tokenizer.pre_tokenize_str(text_)]
        assert tokenizers.ASCII_PIECES.findall(text_) == theirs, repr(text_)


def test_memoised_bpe_equals_hugging_face_on_any_text(monkeypatch):
    """The memoised path gives Hugging Face's ids for ASCII, mixed and non-ASCII documents, with
    special-token names and empty documents among them, across batches and a cleared memo;
    '<eos>' written in a document is text, never the end-of-document id."""
    corpus = [SAMPLE * 3, "It's 2 o'clock -- isn't it?  Yes.\n\tdone_1 x\x1c y", 'Caf\u00e9 na\u00efve \u00bd']
    json_text = tokenizers.train_bpe(corpus * 10, vocab_size=400)
    plain = tokenizers.BpeTokenizer(json_text, memoise=False)
    memoised = tokenizers.BpeTokenizer(json_text, memoise=True)
    assert memoised._memo is not None and plain.name == memoised.name
    rng = np.random.default_rng(1)
    words = ' '.join(corpus).replace('\n', ' \n ').split(' ') + ['<eos>', '<pad>', '', '  ']
    docs = [' '.join(rng.choice(words, rng.integers(0, 30))) for _ in range(400)]
    monkeypatch.setattr(tokenizers.PieceMemo, 'MAX_PIECES', 50)
    for batch in (docs[:150], docs[150:], docs[150:], []):
        for mine, theirs in zip(memoised.encode_batch(batch), plain.encode_batch(batch),
                                strict=True):
            np.testing.assert_array_equal(mine, theirs)
            assert mine.dtype == np.int32 and EOS_ID not in mine and PAD_ID not in mine
    distinct = {p for d in docs if d.isascii() for p in tokenizers.ASCII_PIECES.findall(d)}
    assert len(memoised._memo._index) < len(distinct)  # it was cleared on the way


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
