"""Bring your own data: text files (splits, char vocabulary, cache) and image folders."""

import os

import numpy as np
import pytest
from PIL import Image

from bigjax import data, sample, train
from bigjax.config import default_config
from bigjax.data import text_files, tokenizers
from bigjax.errors import UserError
from conftest import load_config


def text_config(tmp_path, paths, **text):
    config = default_config().data
    config.update(name='text_files', paths=paths, data_dir=str(tmp_path / 'data'))
    config.text.update(tokenizer='char', seq_len=4, whitespace='keep', unicode_form='')
    config.text.update(text)
    return config


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding='utf-8')
    return str(path)


def test_split_boundaries_are_exact_across_files(tmp_path):
    assert text_files.split_documents(['abcdefghij', 'klmnopqrst'], 0.25) == (
        ['abcdefghij', 'klmno'], ['pqrst'])  # cut at int(20 * 0.75) = 15 characters
    assert text_files.split_documents(['abcdefghij', 'klmnopqrst'], 0.5) == (
        ['abcdefghij'], ['klmnopqrst'])
    text = ''.join(chr(ord('a') + i % 26) for i in range(1001))
    write(tmp_path / 'one.txt', text)
    dataset = data.open_dataset(text_config(tmp_path, str(tmp_path / 'one.txt')))
    decode = dataset.tokenizer.decode
    train_tokens, eval_tokens = (s.arrays['tokens'] for s in (dataset.train, dataset.eval))
    # Windows of 5 overlapping by one: the stream is every window's first 4 tokens, plus the tail.
    stream = lambda w: np.concatenate([w[:, :4].ravel(), w[-1, 4:]])
    assert decode(stream(train_tokens)) == text[:900][:len(stream(train_tokens))]
    assert decode(stream(eval_tokens)) == text[900:][:len(stream(eval_tokens))]


def test_character_vocabulary_round_trips_and_is_saved_with_the_data(tmp_path):
    tokenizer = tokenizers.CharTokenizer.from_texts(['hello, world\n', 'héllo'])
    assert tokenizer.vocab_size == 3 + len(set('hello, world\nhéllo'))
    ids = tokenizer.encode_batch(['world, hé\n'])[0]
    assert tokenizer.decode(ids) == 'world, hé\n'
    assert tokenizer.encode_batch(['z'])[0].tolist() == [tokenizers.UNKNOWN_ID]
    assert tokenizer.decode([tokenizers.UNKNOWN_ID]) == '\ufffd'
    write(tmp_path / 'a.txt', 'the quick brown fox jumps over the lazy dog\n' * 20)
    config = text_config(tmp_path, str(tmp_path / 'a.txt'))
    first = data.open_dataset(config).tokenizer
    again = data.open_dataset(config).tokenizer
    assert first.name == again.name and first.chars == ''.join(sorted(set('the quick brown fox '
                                                                          'jumps over the lazy '
                                                                          'dog\n')))


def test_prepared_text_is_cached_and_an_edited_file_is_prepared_again(tmp_path, monkeypatch):
    path = write(tmp_path / 'a.txt', 'abcd' * 100)
    config = text_config(tmp_path, path)
    data.open_dataset(config)
    entries = lambda: sorted(p.name for p in (tmp_path / 'data' / 'bigjax_cache' / 'text_files')
                             .iterdir())
    assert len(entries()) == 1
    monkeypatch.setattr(text_files, 'read_utf8', lambda p: pytest.fail('read again'))
    data.open_dataset(config)  # from the cache: nothing is read
    monkeypatch.undo()
    write(tmp_path / 'a.txt', 'wxyz' * 100)
    os.utime(path, ns=(1, 10**18))  # a new modification time, whatever the clock's resolution
    edited = data.open_dataset(config)
    assert len(entries()) == 2 and set(edited.tokenizer.chars) == set('wxyz')


def test_bad_text_files_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match=r"nothing matches '.*nope\*\.txt'"):
        data.open_dataset(text_config(tmp_path, str(tmp_path / 'nope*.txt')))
    with pytest.raises(UserError, match='data.paths is empty'):
        data.open_dataset(text_config(tmp_path, ''))
    bad = tmp_path / 'latin1.txt'
    bad.write_bytes('caf'.encode() + 'é'.encode('latin-1') + b' au lait')
    with pytest.raises(UserError, match=r'latin1.txt is not UTF-8 text \(byte 3 is 0xe9\)'):
        data.open_dataset(text_config(tmp_path, str(bad)))
    short = write(tmp_path / 'short.txt', 'x' * 200)
    with pytest.raises(UserError, match=r'seq_len=64 is longer than the eval split .*\(21 tokens'):
        data.open_dataset(text_config(tmp_path, short, seq_len=64))


def test_char_lm_smoke_trains_on_a_text_file_and_samples_past_its_context(tmp_path):
    path = write(tmp_path / 'poem.txt', 'Shall I compare thee to a summer\'s day?\n' * 60)
    config = load_config('char_lm', 'smoke')
    config.data.paths, config.data.data_dir = path, str(tmp_path / 'data')
    result = train.run(config, tmp_path / 'run')
    assert np.isfinite(result['loss']) and 'bits_per_char' in result
    text = sample.from_workdir(config, tmp_path / 'run', 'Shall', num_tokens=50, temperature=0.0,
                               top_k=0)  # 50 characters past a 32-character context
    assert len(text) == 50 and set(text) <= set(open(path).read()) | {'\ufffd'}


def images(root, classes, per_class, size=(12, 10), learnable=False):
    """Random PNGs in a folder per class; `learnable` gives each class its own band of
    brightness, so a model can tell them apart."""
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        low, high = ((256 * k // len(classes), 256 * (k + 1) // len(classes)) if learnable
                     else (0, 256))
        for i in range(per_class):
            pixels = rng.integers(low, high, (*size[::-1], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f'{c}_{i}.png')


def folder_config(tmp_path, root, **overrides):
    config = default_config().data
    config.update(name='image_folder', paths=str(root), data_dir=str(tmp_path / 'data'),
                  image_shape=(8, 8, 1), val_fraction=0.25, **overrides)
    return config


def test_image_folder_by_fraction_and_by_train_test_folders(tmp_path):
    images(tmp_path / 'pets', ['cat', 'dog', 'emu'], per_class=12)
    dataset = data.open_dataset(folder_config(tmp_path, tmp_path / 'pets'))
    assert dataset.kind == 'image' and dataset.class_names == ('cat', 'dog', 'emu')
    assert len(dataset.train) + len(dataset.eval) == 36 and 0 < len(dataset.eval) < 18
    arrays = dataset.train.arrays
    assert arrays['image'].shape == (len(dataset.train), 8, 8, 1)
    assert arrays['image'].dtype == np.uint8 and set(arrays['label']) == {0, 1, 2}
    again = data.open_dataset(folder_config(tmp_path, tmp_path / 'pets'))
    np.testing.assert_array_equal(again.eval.arrays['image'], dataset.eval.arrays['image'])
    images(tmp_path / 'split' / 'train', ['a', 'b'], per_class=5)
    images(tmp_path / 'split' / 'test', ['a', 'b'], per_class=2)
    split = data.open_dataset(folder_config(tmp_path, tmp_path / 'split'))
    assert (len(split.train), len(split.eval), split.class_names) == (10, 4, ('a', 'b'))


def test_a_cnn_learns_an_image_folder(tmp_path):
    images(tmp_path / 'pets', ['cat', 'dog'], per_class=20, learnable=True)
    config = load_config('cnn_digits', 'smoke')
    config.data = folder_config(tmp_path, tmp_path / 'pets')
    config.train.batch_size = config.train.eval_batch_size = 8
    result = train.run(config, tmp_path / 'run')
    assert result['accuracy'] == 1 and result['loss'] < 0.5 * np.log(2)  # chance: ln 2


def test_bad_image_folders_are_clear_errors(tmp_path):
    images(tmp_path / 'one', ['cat'], per_class=3)
    with pytest.raises(UserError, match=r"two classes at least; it has \['cat'\]"):
        data.open_dataset(folder_config(tmp_path, tmp_path / 'one'))
    images(tmp_path / 'two', ['cat', 'dog'], per_class=8)
    (tmp_path / 'two' / 'dog' / 'broken.png').write_bytes(b'not a png')
    with pytest.raises(UserError, match=r'cannot read the image .*broken.png'):
        dataset = data.open_dataset(folder_config(tmp_path, tmp_path / 'two'))
        dataset.train.arrays, dataset.eval.arrays
