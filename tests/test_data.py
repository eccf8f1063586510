import re
import threading
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bigjax import data, writers
from bigjax.config import default_config
from bigjax.data import datasets, digits, sources
from bigjax.errors import UserError


def data_config(**overrides):
    config = default_config().data
    config.update(overrides)
    return config


def test_digits_builder_has_the_documented_fixed_split():
    dataset = data.open_dataset(data_config(name='sklearn_digits'))
    assert (len(dataset.train), len(dataset.eval)) == (1437, 360)
    assert dataset.num_classes == 10 and dataset.image_shape == (8, 8, 1)
    assert dataset.pixel_max == 16
    images, labels = digits.load_raw()
    test = dataset.eval.arrays
    # The test split is exactly the examples with index % 5 == 0, whatever the record order.
    source = tfds.builder('sklearn_digits').as_data_source('test')
    index = np.array([example['index'] for example in source])
    np.testing.assert_array_equal(np.sort(index), np.arange(0, 1797, 5))
    np.testing.assert_array_equal(test['image'], images[index])
    np.testing.assert_array_equal(test['label'], labels[index])
    assert test['image'].dtype == np.uint8 and test['image'].max() == 16


def test_digits_content_is_pinned():
    images, labels = digits.load_raw()
    assert digits.fingerprint(images, labels) == (
        '65e5b4619795efb40c1082f4c350c049e4ad552200d369b6ae99e21eef5e72c5')
    info = tfds.builder('sklearn_digits').info
    assert info.metadata['sha256'] == digits.fingerprint(images, labels)


def test_synthetic_dataset_follows_config_shapes():
    config = data_config(name='synthetic')
    config.synthetic.update(image_shape=(6, 5, 3), num_classes=4, train_examples=40,
                            eval_examples=8)
    dataset = data.open_dataset(config)
    assert dataset.train.arrays['image'].shape == (40, 6, 5, 3)
    assert dataset.eval.arrays['label'].max() < 4
    np.testing.assert_array_equal(dataset.train.arrays['image'],
                                  data.open_dataset(config).train.arrays['image'])


def arrays(n=10):
    return {'image': np.arange(n)[:, None], 'label': np.arange(n)}


def test_train_iterator_epochs_are_permutations_without_repeats():
    it = data.ArrayTrainIterator(arrays(10), global_batch_size=3, seed=0)
    assert it.order.steps_per_epoch == 3
    epoch0 = np.concatenate([next(it)['label'] for _ in range(3)])
    epoch1 = np.concatenate([next(it)['label'] for _ in range(3)])
    assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9
    assert not np.array_equal(epoch0, epoch1)


def test_train_iterator_resumes_exactly():
    full = data.ArrayTrainIterator(arrays(), 4, seed=3)
    expected = [next(full)['label'] for _ in range(7)]
    first = data.ArrayTrainIterator(arrays(), 4, seed=3)
    seen = [next(first)['label'] for _ in range(4)]
    resumed = data.ArrayTrainIterator(arrays(), 4, seed=3)
    resumed.restore(first.state())
    seen += [next(resumed)['label'] for _ in range(3)]
    np.testing.assert_array_equal(np.stack(seen), np.stack(expected))


@pytest.mark.parametrize('depth', [0, 1, 3])
def test_prefetch_keeps_order_and_pairs_each_batch_with_the_state_after_it(depth):
    expected = data.ArrayTrainIterator(arrays(), 4, seed=3)
    batches = data.prefetch(data.ArrayTrainIterator(arrays(), 4, seed=3), depth,
                            to_device=lambda batch: batch['label'] * 10)
    for i in range(6):
        labels, state = next(batches)
        np.testing.assert_array_equal(labels, next(expected)['label'] * 10)
        assert state == {'next_step': i + 1}
    batches.close()


def test_processes_split_each_global_batch():
    whole = data.ArrayTrainIterator(arrays(12), 6, seed=1)
    parts = [data.ArrayTrainIterator(arrays(12), 6, seed=1, process_index=p, process_count=3)
             for p in range(3)]
    for _ in range(4):
        np.testing.assert_array_equal(next(whole)['label'],
                                      np.concatenate([next(p)['label'] for p in parts]))


def test_eval_batches_cover_every_example_once_with_padding_masked():
    batches = list(data.eval_batches(arrays(10), 4))
    assert [b['label'].shape for b in batches] == [(4,)] * 3
    labels = np.concatenate([b['label'][b['mask']] for b in batches])
    np.testing.assert_array_equal(labels, np.arange(10))
    per_process = [list(data.eval_batches(arrays(10), 4, p, 2)) for p in range(2)]
    joined = np.concatenate([np.concatenate([a['label'][a['mask']], b['label'][b['mask']]])
                             for a, b in zip(*per_process)])
    np.testing.assert_array_equal(joined, np.arange(10))


def test_batch_larger_than_dataset_is_a_clear_error():
    with pytest.raises(UserError, match='larger than the 10 training examples'):
        data.ArrayTrainIterator(arrays(10), 16, seed=0)


def test_normalization():
    images = np.random.default_rng(0).integers(0, 17, (50, 8, 8, 1)).astype(np.uint8)
    stats = data.normalization_stats(images, 16, 'standard')
    x = np.asarray(data.normalize(images, stats))
    assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-5
    unit = np.asarray(data.normalize(images, data.normalization_stats(images, 16, 'unit')))
    assert unit.min() >= 0 and unit.max() == 1
    with pytest.raises(UserError, match='data.normalize'):
        data.normalization_stats(images, 16, 'minmax')


def test_mnist_under_mock_data():
    with tfds.testing.mock_data(num_examples=24):
        dataset = data.open_dataset(data_config(name='mnist'))
        assert dataset.image_shape == (28, 28, 1) and dataset.num_classes == 10
        assert dataset.train.arrays['image'].shape == (24, 28, 28, 1)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(UserError, match="unknown dataset 'mnistt'"):
        data.open_dataset(data_config(name='mnistt'))


def test_unknown_split_is_a_clear_error_and_splits_combine():
    with pytest.raises(UserError, match="no split 'validation'"):
        data.open_dataset(data_config(name='sklearn_digits', eval_split='validation'))
    with pytest.raises(UserError, match=r"no split 'valid\[:5\]'"):
        data.open_dataset(data_config(name='sklearn_digits', eval_split='test+valid[:5]'))
    both = data.open_dataset(data_config(name='sklearn_digits', eval_split='test+train[:10]'))
    assert len(both.eval) == 360 + 10


def test_dataset_needing_download_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, '_online', lambda: False)
    with pytest.raises(UserError, match='cannot be downloaded.*configs/cnn_digits.py') as error:
        data.open_dataset(data_config(name='mnist', data_dir=str(tmp_path)))
    [command] = re.findall(r'`python -c "(.*?)"`', str(error.value))  # what to run elsewhere
    compile(command, 'the command the error gives', 'exec')
    assert "tfds.builder('mnist', data_dir='DIR')" in command and 'array_record' in command
    with pytest.raises(UserError, match='data.download is False'):
        data.open_dataset(data_config(name='mnist', data_dir=str(tmp_path), download=False))


def test_synthetic_tokens_for_lm_benchmarks():
    config = data_config(name='synthetic')
    config.synthetic.update(kind='text_lm', vocab_size=11, train_examples=20, eval_examples=4)
    config.text.seq_len = 6
    dataset = data.open_dataset(config)
    assert (dataset.kind, dataset.vocab_size, dataset.seq_len) == ('text_lm', 11, 6)
    tokens = dataset.train.arrays['tokens']
    assert tokens.shape == (20, 7) and tokens.min() >= 2 and tokens.max() < 11


def synthetic_images(**overrides):
    config = data_config(name='synthetic', **overrides)
    config.synthetic.update(image_shape=(2, 2, 1), num_classes=5, train_examples=200,
                            eval_examples=60)
    return config


def first_per_class(labels, classes, per_class: int) -> list[int]:
    """Indices of the first `per_class` examples (all if 0) of each of `classes`, in order."""
    taken, rows = dict.fromkeys(classes, 0), []
    for i, label in enumerate(labels):
        if label in taken and (not per_class or taken[label] < per_class):
            taken[label] += 1
            rows.append(i)
    return rows


def test_data_classes_keeps_the_first_n_train_examples_of_each_relabelled_in_that_order():
    full = data.open_dataset(synthetic_images())
    chosen = data.open_dataset(synthetic_images(classes=(3, 1), train_per_class=4))
    assert chosen.num_classes == 2 and chosen.class_names == ('3', '1')
    new_label = {3: 0, 1: 1}
    for split, whole, per_class in ((chosen.train, full.train, 4), (chosen.eval, full.eval, 0)):
        rows = first_per_class(whole.arrays['label'], (3, 1), per_class)
        assert len(split) == len(rows)
        np.testing.assert_array_equal(split.arrays['image'], whole.arrays['image'][rows])
        np.testing.assert_array_equal(split.arrays['label'],
                                      [new_label[label] for label in whole.arrays['label'][rows]])
    assert len(chosen.train) == 8 and len(chosen.eval) > 8  # eval: every example of 3 and 1


def test_a_class_with_fewer_than_train_per_class_examples_is_a_warning(capsys):
    writers.show_log()  # bigjax's log on stderr, as train.run sets it up
    full = data.open_dataset(synthetic_images())
    counts = np.bincount(full.train.arrays['label'])
    few = data.open_dataset(synthetic_images(train_per_class=int(counts.max())))
    assert len(few.train) == len(full.train)
    short = {c: int(n) for c, n in enumerate(counts) if n < counts.max()}
    assert short and f'fewer examples of classes {short}' in capsys.readouterr().err


def test_train_per_class_alone_keeps_every_class_and_the_whole_eval_split():
    full = data.open_dataset(synthetic_images())
    few = data.open_dataset(synthetic_images(train_per_class=3))
    rows = first_per_class(full.train.arrays['label'], range(5), 3)
    assert len(few.train) == 15 and few.num_classes == 5
    for name in ('image', 'label'):
        np.testing.assert_array_equal(few.train.arrays[name], full.train.arrays[name][rows])
        np.testing.assert_array_equal(few.eval.arrays[name], full.eval.arrays[name])


@pytest.mark.parametrize('overrides, message', [
    (dict(classes=(1, 5)), r'data.classes=\(1, 5\) must be distinct class ids in \[0, 5\)'),
    (dict(classes=(2, 2)), 'must be distinct class ids'),
    (dict(train_per_class=-1), 'train_per_class >= 0'),
], ids=['class_out_of_range', 'repeated_class', 'negative_train_per_class'])
def test_impossible_selections_are_clear_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        data.open_dataset(synthetic_images(**overrides))


def test_selecting_a_class_a_split_lacks_or_from_lm_text_is_a_clear_error():
    def split(labels):
        return data.Split(len(labels), lambda: {'image': np.zeros((len(labels), 1)),
                                                'label': np.array(labels)})

    dataset = data.Dataset('tiny', 'image', split([0, 1, 2, 2]), split([0, 1]), num_classes=3,
                           class_names=('a', 'b', 'c'))
    with pytest.raises(UserError, match='the eval split has no examples of class 2'):
        datasets.select(dataset, (2, 0), 1)
    config = data_config(name='synthetic', train_per_class=2)
    config.synthetic.update(kind='text_lm', vocab_size=11, train_examples=20, eval_examples=4)
    with pytest.raises(UserError, match="'synthetic' is language-model text"):
        data.open_dataset(config)


class FakeBuilder:
    """What _prepare_once sees of a tfds builder; the prepared data is a file in `root`, shared
    by every builder of it (the runs of a study on one machine)."""

    def __init__(self, root, prepare):
        self.data_dir_root = root
        self.info = types.SimpleNamespace(name='sklearn_digits')
        self.prepare = prepare

    def is_prepared(self):
        return (self.data_dir_root / 'prepared').exists()

    def download_and_prepare(self, file_format):
        assert file_format == 'array_record'
        self.prepare()
        (self.data_dir_root / 'prepared').touch()


def test_runs_started_together_prepare_a_dataset_once(tmp_path):
    events, started, release = [], threading.Event(), threading.Event()

    def prepare():
        events.append('prepare')
        started.set()
        release.wait(timeout=10)

    def run():
        sources._prepare_once(FakeBuilder(tmp_path, prepare), data_config())
        events.append('returned')

    first, second = threading.Thread(target=run), threading.Thread(target=run)
    first.start()
    assert started.wait(timeout=10)
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive()  # it waits for the first run's preparation
    release.set()
    first.join(timeout=10)
    second.join(timeout=10)
    assert events == ['prepare', 'returned', 'returned']


def test_a_failed_preparation_lets_the_next_run_prepare(tmp_path):
    def fail():
        raise OSError('connection reset')

    with pytest.raises(OSError, match='connection reset'):
        sources._prepare_once(FakeBuilder(tmp_path, fail), data_config())
    prepared = []
    # In a thread: a lock left held would block it for ever.
    thread = threading.Thread(target=sources._prepare_once, daemon=True, args=(
        FakeBuilder(tmp_path, lambda: prepared.append(True)), data_config()))
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive() and prepared == [True]
