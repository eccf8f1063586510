"""From a `data` config to train/eval arrays, for images and for text.

Images: {'image': uint8 (N, H, W, C), 'label': int32 (N,)}.
Text LM: {'tokens': (N, seq_len + 1)} packed windows. Text classification: {'tokens': (N, seq_len)}
padded with PAD_ID, and 'label'. Decoded images and tokenized text are cached beside the data
(cache.py), so only the first run pays for decoding, cleaning and tokenizing. Splits are read a
range of records at a time and text is tokenized a chunk at a time (encode.py): memory does not
grow with the corpus.
"""

import dataclasses
import json
import logging
import tempfile
from typing import Iterator

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from bigjax.data import cache, encode, sources, text, tokenizers
from bigjax.data.core import DATASETS, Dataset, Split
from bigjax.errors import UserError

log = logging.getLogger('bigjax')
READ_RECORDS = 1024  # records read from a split at a time
SAMPLE_RECORDS = 256  # documents in a block of a tokenizer's sample (tokenizers.sample)


def open_dataset(data_config) -> Dataset:
    """The configured dataset (restricted to data.classes / data.train_per_class if set);
    image splits are decoded lazily unless restricted, text splits are ready."""
    dataset = _open(data_config)
    if (data_config.classes or data_config.train_per_class) and dataset.chat is None:
        return select(dataset, tuple(data_config.classes), data_config.train_per_class)
    return dataset  # chat data selects its own (python_exceptions_chat: train_per_class)


def select(dataset: Dataset, classes: tuple, train_per_class: int) -> Dataset:
    """Only the examples of `classes` (all if empty), relabelled 0, 1, ... in that order, and
    at most the first `train_per_class` training examples of each (all if 0)."""
    if dataset.kind == 'text_lm':
        raise UserError('data.classes and data.train_per_class select classification examples; '
                        f'{dataset.name!r} is language-model text')
    classes = classes or tuple(range(dataset.num_classes))
    if len(set(classes)) != len(classes) or not all(0 <= c < dataset.num_classes
                                                    for c in classes) or train_per_class < 0:
        raise UserError(f'data.classes={classes} must be distinct class ids in [0, '
                        f'{dataset.num_classes}) and data.train_per_class >= 0')
    new_label = np.full(dataset.num_classes, -1, np.int32)
    new_label[list(classes)] = np.arange(len(classes))

    def subset(split: Split, per_class: int, split_name: str) -> Split:
        arrays = split.arrays
        labels = new_label[arrays['label']]
        rows = np.flatnonzero(labels >= 0)
        if per_class:
            rows = np.sort(np.concatenate([rows[labels[rows] == c][:per_class]
                                           for c in range(len(classes))]))
            counts = np.bincount(labels[rows], minlength=len(classes))
            short = {int(classes[c]): int(n) for c, n in enumerate(counts) if 0 < n < per_class}
            if short:
                log.warning('data.train_per_class=%d: the %s split has fewer examples of '
                            'classes %s (class: count); they keep all they have',
                            per_class, split_name, short)
        missing = sorted(set(range(len(classes))) - set(labels[rows].tolist()))
        if missing:
            raise UserError(f'data.classes: the {split_name} split has no examples of class '
                            f'{classes[missing[0]]}')
        picked = {k: v[rows] for k, v in arrays.items()}
        picked['label'] = labels[rows]
        return Split(len(rows), lambda: picked)

    return dataclasses.replace(
        dataset, train=subset(dataset.train, train_per_class, 'train'),
        eval=subset(dataset.eval, 0, 'eval'), num_classes=len(classes),
        class_names=tuple(dataset.class_names[c] for c in classes))


def _open(data_config) -> Dataset:
    name = data_config.name
    if name in DATASETS:
        return DATASETS.get(name).open(data_config)
    return open_tfds(data_config)


def open_tfds(data_config) -> Dataset:
    """The tfds dataset data.name (prepared first if it has to be): images and labels, or
    text for a language model or a classifier."""
    builder = sources.open_builder(data_config)
    features = builder.info.features
    if 'image' in features:
        return _images(builder, data_config)
    if data_config.text.feature in features:
        return _text(builder, data_config)
    raise UserError(f'dataset {data_config.name!r} has no "image" feature and no text feature '
                    f'{data_config.text.feature!r} (data.text.feature); its features are '
                    f'{list(features)}')


def synthetic(data_config) -> Dataset:
    """Random examples with the configured shapes, for benchmarks (nothing to learn): images and
    labels, or (synthetic.kind='text_lm') token windows of data.text.seq_len + 1."""
    syn = data_config.synthetic
    if syn.kind not in ('image', 'text_lm') or min(syn.train_examples, syn.eval_examples) < 1:
        raise UserError('data.synthetic.kind must be "image" or "text_lm", with train_examples '
                        'and eval_examples >= 1')
    if syn.kind == 'text_lm':
        seq_len, vocab = data_config.text.seq_len, syn.vocab_size
        if seq_len < 1 or vocab < 3:
            raise UserError('synthetic tokens need data.text.seq_len >= 1 and '
                            'data.synthetic.vocab_size >= 3')
        make = lambda rng, n: {'tokens': rng.integers(2, vocab, (n, seq_len + 1)).astype(
            np.int32)}
        extra = dict(seq_len=seq_len, vocab_size=vocab)
    else:
        shape = tuple(syn.image_shape)
        if len(shape) != 3 or min(shape) < 1 or syn.num_classes < 2:
            raise UserError('data.synthetic needs image_shape (height, width, channels) >= 1 '
                            'and num_classes >= 2')
        make = lambda rng, n: {
            'image': rng.integers(0, 256, (n, *shape), dtype=np.uint8),
            'label': rng.integers(0, syn.num_classes, n).astype(np.int32)}
        extra = dict(num_classes=syn.num_classes, image_shape=shape, pixel_max=255.0,
                     class_names=tuple(str(c) for c in range(syn.num_classes)))

    def split(num_examples, seed):
        return Split(num_examples, lambda: make(np.random.default_rng(seed), num_examples))

    return Dataset('synthetic', syn.kind, split(syn.train_examples, 0),
                   split(syn.eval_examples, 1), **extra)


def _images(builder, data_config) -> Dataset:
    features = builder.info.features
    name = data_config.name
    if 'label' not in features:
        raise UserError(f'dataset {name!r} has images but no "label" feature to classify')
    shape = tuple(features['image'].shape)
    if None in shape:
        raise UserError(f'dataset {name!r} has images of varying size {shape}; '
                        'only fixed-size images are supported')

    def split(split_name):
        tfds_split = sources.open_split(builder, split_name, data_config)

        def build(_folder):
            images, labels = [], []
            for start in range(0, len(tfds_split.source), READ_RECORDS):
                examples = sources.read_examples(tfds_split, builder, start, min(
                    start + READ_RECORDS, len(tfds_split.source)))
                images.append(np.stack([e['image'] for e in examples]).astype(np.uint8))
                labels.append(np.asarray([e['label'] for e in examples], np.int32))
            return {'image': np.concatenate(images), 'label': np.concatenate(labels)}, {}
        return Split(len(tfds_split.source), lambda: _cached(tfds_split, {'kind': 'image'},
                                                            build)[0])

    metadata = builder.info.metadata or {}
    return Dataset(name, 'image', split(data_config.train_split), split(data_config.eval_split),
                   num_classes=features['label'].num_classes,
                   class_names=tuple(features['label'].names), image_shape=shape,
                   pixel_max=float(metadata.get('pixel_max', 255)))


def _text(builder, data_config) -> Dataset:
    t = data_config.text
    tokenizers.check(t)
    if t.seq_len < 1:
        raise UserError(f'data.text.seq_len={t.seq_len} must be >= 1')
    features = builder.info.features
    task = t.task if t.task != 'auto' else (
        'classification' if t.label_feature in features else 'lm')
    if task not in ('lm', 'classification'):
        raise UserError(f'data.text.task={t.task!r} is not one of auto, lm, classification')
    if t.keep not in ('first', 'last'):
        raise UserError(f"data.text.keep={t.keep!r} is not 'first' or 'last' (which tokens of a "
                        'longer document a classification example keeps)')
    _check_text_feature(features, t.feature, data_config.name)
    names = class_names(features, t.label_feature) if task == 'classification' else ()
    label_feature = t.label_feature if task == 'classification' else None
    train = sources.open_split(builder, data_config.train_split, data_config)
    eval_ = sources.open_split(builder, data_config.eval_split, data_config)
    cleaning = {'unicode_form': t.unicode_form, 'whitespace': t.whitespace,
                'drop_duplicates': t.drop_duplicates}
    text.Cleaner(**cleaning)  # A bad setting is an error before anything is read.
    tokenizer = _tokenizer(*_tokenizer_source(builder, train, data_config), t, cleaning)
    tokenizers.check_padding(tokenizer, task)
    dtype = text.token_dtype(tokenizer.vocab_size)

    def split(tfds_split):
        key = {'kind': f'text_{task}', 'seq_len': t.seq_len, 'tokenizer': tokenizer.name,
               'feature': t.feature, 'label_feature': t.label_feature, **cleaning,
               **({'keep': t.keep} if task == 'classification' else {})}

        def build(folder):
            cleaner = text.Cleaner(**cleaning)
            blocks = (cleaner(docs, labels) for docs, labels in documents(
                builder, tfds_split, t.feature, label_feature, 0, len(tfds_split.source)))
            if task == 'lm':
                num_windows, num_tokens = encode.write_lm(blocks, tokenizer, folder, t.seq_len,
                                                          dtype)
                if not num_windows:
                    raise UserError(f'the split has {num_tokens} tokens, too few for one '
                                    f'sequence of data.text.seq_len={t.seq_len}: lower seq_len')
            else:
                encode.write_classification(blocks, tokenizer, folder, t.seq_len, dtype, t.keep)
            return {}, vars(cleaner.report)

        arrays, report = _cached(tfds_split, key, build)
        per_window = (f' ({report["kept"] / max(len(arrays["tokens"]), 1):.2f} documents a window'
                      f'{", kept apart" if t.document_mask else ""})' if task == 'lm' else '')
        log.info('%s %s: %s; %d sequences of %d tokens%s', tfds_split.name, tfds_split.split,
                 text.CleaningReport(**report), len(arrays['tokens']), t.seq_len, per_window)
        return Split(len(arrays['tokens']), lambda: arrays)

    return Dataset(data_config.name, f'text_{task}', split(train), split(eval_),
                   num_classes=len(names), class_names=names, seq_len=t.seq_len,
                   vocab_size=tokenizer.vocab_size,
                   tokenizer=tokenizer)


def _check_text_feature(features, feature: str, name: str) -> None:
    import tensorflow_datasets as tfds
    if not isinstance(features[feature], tfds.features.Text):
        raise UserError(f'feature {feature!r} of dataset {name!r} is a '
                        f'{type(features[feature]).__name__}, not Text: set data.text.feature '
                        f'to a text feature')


def class_names(features, label_feature: str) -> tuple[str, ...]:
    if label_feature not in features:
        raise UserError(f'data.text.task is classification but the dataset has no feature '
                        f'{label_feature!r} (data.text.label_feature)')
    feature = features[label_feature]
    if hasattr(feature, 'names'):
        return tuple(feature.names)
    if np.dtype(feature.np_dtype) == np.bool_:
        return ('false', 'true')
    raise UserError(f'feature {label_feature!r} is neither a ClassLabel nor a bool: it cannot '
                    'be a classification label')


def documents(builder, tfds_split, feature: str, label_feature: str | None, start: int,
               stop: int) -> Iterator[tuple[list[str], np.ndarray | None]]:
    """(documents, labels or None) of records [start, stop), READ_RECORDS at a time."""
    names = (feature,) if label_feature is None else (feature, label_feature)
    for begin in range(start, stop, READ_RECORDS):
        columns = sources.read_scalars(tfds_split, builder, names, begin,
                                       min(begin + READ_RECORDS, stop))
        docs = [t.decode('utf-8') for t in columns[feature]]
        labels = (np.asarray(columns[label_feature], np.int32)
                  if label_feature is not None else None)
        yield docs, labels


def _tokenizer_source(builder, train_split, data_config):
    """(builder, split) a char or BPE tokenizer is learnt from: this dataset's training split, or
    data.text.tokenizer_data's split of the same name (the pretraining corpus, when fine-tuning
    on another dataset)."""
    if not data_config.text.tokenizer_data or data_config.text.tokenizer not in tokenizers.LEARNT:
        return builder, train_split
    other = data_config.copy_and_resolve_references()
    other.name = data_config.text.tokenizer_data
    other_builder = sources.open_builder(other)
    return other_builder, sources.open_split(other_builder, data_config.train_split, other)


def learnt_tokenizer(data_config) -> tokenizers.Tokenizer:
    """The char or BPE tokenizer data.text.tokenizer_data's training split teaches (cached), the
    same a text dataset with that tokenizer_data learns: for data that brings no corpus of its
    own to learn from (chat)."""
    t = data_config.text
    other = data_config.copy_and_resolve_references()
    other.name = t.tokenizer_data
    builder = sources.open_builder(other)
    cleaning = {'unicode_form': t.unicode_form, 'whitespace': t.whitespace,
                'drop_duplicates': t.drop_duplicates}
    return _tokenizer(builder, sources.open_split(builder, data_config.train_split, other), t,
                      cleaning)


def _tokenizer(builder, train_split, text_config, cleaning: dict) -> tokenizers.Tokenizer:
    """The byte tokenizer or a model's own, or characters / BPE learnt from the cleaned training
    split, or from a sample of it of about data.text.tokenizer_sample characters: evenly spread
    blocks of SAMPLE_RECORDS documents (tokenizers.sample). Cached beside the split."""
    kind = text_config.tokenizer
    if kind not in tokenizers.LEARNT:
        return tokenizers.load(kind)
    num_records = len(train_split.source)

    def read_block(block: int) -> list[str]:
        start = block * SAMPLE_RECORDS
        return [doc for docs, _ in documents(builder, train_split, text_config.feature, None,
                                              start, min(start + SAMPLE_RECORDS, num_records))
                for doc in docs]

    def build(_folder):
        docs = tokenizers.sample(read_block, -(-num_records // SAMPLE_RECORDS),
                                 text_config.tokenizer_sample)
        docs, _ = text.Cleaner(**cleaning)(docs)
        log.info('Learning a %s tokenizer from %d documents (%d characters) of %s %s', kind,
                 len(docs), sum(map(len, docs)), train_split.name, train_split.split)
        return {}, {'tokenizer': tokenizers.train(kind, docs, text_config.vocab_size),
                    'tokenizer_sample': {'documents': len(docs),
                                         'characters': sum(map(len, docs)),
                                         'of_documents': num_records}}

    key = {'kind': kind, 'feature': text_config.feature, **cleaning,
           'tokenizer_sample': text_config.tokenizer_sample,
           **({'vocab_size': text_config.vocab_size} if kind == 'bpe' else {})}
    _, report = _cached(train_split, key, build)
    return tokenizers.load(kind, report['tokenizer'])


def _cached(tfds_split, key: dict, build):
    """cache.cached beside the dataset. With several processes, process 0 builds the entry while
    the others wait, then all load it (each builds its own identical copy if their disks are not
    shared). Data that is not on disk (mocks) is built in a temporary folder and held in
    memory."""
    key = {**tfds_split.cache_key, **key}
    if tfds_split.cache_dir is None:
        with tempfile.TemporaryDirectory() as folder:
            arrays, report = cache.cached(epath.Path(folder), key, build)
            return {name: np.array(array) for name, array in arrays.items()}, report
    if jax.process_count() > 1:
        if jax.process_index() == 0:
            cache.cached(tfds_split.cache_dir, key, build)
        multihost_utils.sync_global_devices(f'bigjax: cached {json.dumps(key, sort_keys=True)}')
    return cache.cached(tfds_split.cache_dir, key, build)
