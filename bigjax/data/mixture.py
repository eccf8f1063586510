"""Several LM datasets trained on as one, each drawn with a weight: data.name='mixture',
data.mixture=((weight, {data keys}), ...).

Each source is the run's data config with its own keys set (name, paths, train_split, ...), so
tfds text, text_files and chat files mix; they must share the tokenizer and seq_len. Which rows
batch `step` holds is a function of (seed, step) alone (MixtureOrder): a resumed run draws the
batches an uninterrupted one would, and the share drawn from each source is logged as mix/NAME.
The eval split is every source's eval split, one after the other, each also scored on its own
(Dataset.eval_parts: metrics NAME/loss, ...).
"""

import dataclasses
import functools
import logging
import threading

import ml_collections
import numpy as np

from bigjax.data import packing, text, tokenizers
from bigjax.data.datasets import open_dataset
from bigjax.data.describe import describe
from bigjax.data.core import Dataset, Split
from bigjax.errors import UserError

log = logging.getLogger('bigjax')
BLOCK_STEPS = 1024  # batches whose sources are drawn at once (and summed to find positions)


@dataclasses.dataclass(frozen=True)
class Source:
    label: str  # the name the log and the errors use: data.name, numbered if repeated
    weight: float
    config: ml_collections.ConfigDict  # the run's data config with this source's keys set


def sources(data_config) -> list[Source]:
    """data.mixture's sources, checked: positive weights, known keys, no nested mixture."""
    entries = data_config.mixture
    if not entries:
        raise UserError("data.name='mixture' needs data.mixture=((weight, {'name': ..., "
                        "'paths': ...}), ...): at least one source")
    names = [entry[1].get('name', '') if _is_entry(entry) else '' for entry in entries]
    out = []
    for i, entry in enumerate(entries):
        if not _is_entry(entry) or not entry[1].get('name'):
            raise UserError(f'data.mixture[{i}]={entry!r} must be (weight, {{data keys}}) with a '
                            "'name', e.g. (0.3, {'name': 'text_files', 'paths': 'a.txt'})")
        weight, keys = float(entry[0]), entry[1]
        if not weight > 0:
            raise UserError(f'data.mixture[{i}] has weight {entry[0]}: weights must be > 0')
        if keys['name'] == 'mixture' or 'mixture' in keys:
            raise UserError(f'data.mixture[{i}] is itself a mixture: list its sources instead')
        config = ml_collections.ConfigDict(data_config.to_dict())
        config.mixture = ()
        for key, value in keys.items():
            _set(config, key, value, f'data.mixture[{i}]')
        label = keys['name'] if names.count(keys['name']) == 1 else f"{keys['name']}{i}"
        out.append(Source(label, weight, config))
    return out


def open_mixture(data_config) -> Dataset:
    """The sources opened and joined: one Dataset whose train order is MixtureOrder."""
    parts = sources(data_config)
    dataset = _joined(parts, [open_dataset(part.config) for part in parts])
    total = sum(part.weight for part in parts)
    log.info('data.mixture: %s', ', '.join(
        f'{part.label} {part.weight / total:.3g} of the rows ({size} train windows)'
        for part, size in zip(parts, dataset.train_order.args[0])))
    return dataset


def describe_mixture(data_config) -> Dataset:
    """The sources described without reading an example (ahead-of-time compilation)."""
    parts = sources(data_config)
    return _joined(parts, [describe(part.config) for part in parts])


def _joined(parts: list[Source], datasets: list[Dataset]) -> Dataset:
    first = datasets[0]
    for part, dataset in zip(parts, datasets):
        if dataset.kind != 'text_lm':
            raise UserError(f'data.mixture: {part.label!r} is {dataset.kind} data; a mixture '
                            'joins language-model text (tfds text, text_files, chat)')
        if (dataset.seq_len, dataset.vocab_size) != (first.seq_len, first.vocab_size) or (
                _tokenizer_name(dataset) != _tokenizer_name(first)):
            raise UserError(
                f'data.mixture: {part.label!r} has seq_len {dataset.seq_len} and tokenizer '
                f'{_tokenizer_name(dataset)}, {parts[0].label!r} {first.seq_len} and '
                f'{_tokenizer_name(first)}: give every source the same data.text.seq_len and '
                "tokenizer ('byte', 'hf:FOLDER', or a learnt one with data.text.tokenizer_data)")
    arrays = packing.ARRAYS if any(d.token_arrays != ('tokens',) for d in datasets) else (
        'tokens',)
    document_mask = [bool(part.config.text.document_mask) for part in parts]
    eos = first.tokenizer.eos_id if first.tokenizer is not None else tokenizers.EOS_ID

    def split(name: str) -> Split:
        splits = [getattr(d, name) for d in datasets]
        read = lambda: _concatenated([s.arrays for s in splits], arrays, document_mask, eos)
        return Split(sum(len(s) for s in splits), read)

    train_sizes = tuple(len(d.train) for d in datasets)
    order = functools.partial(MixtureOrder, train_sizes, tuple(p.weight for p in parts),
                              tuple(p.label for p in parts))
    chat = next((d.chat for d in datasets if d.chat is not None), None)
    eval_parts = tuple((part.label, Split(len(d.eval), lambda d=d, mask=mask: _concatenated(
        [d.eval.arrays], arrays, [mask], eos))) for part, d, mask in zip(parts, datasets,
                                                                       document_mask))
    return dataclasses.replace(first, name='mixture', train=split('train'), eval=split('eval'),
                               token_arrays=arrays, chat=chat, train_order=order,
                               eval_parts=eval_parts)


def _tokenizer_name(dataset: Dataset) -> str:
    return dataset.tokenizer.name if dataset.tokenizer is not None else 'none'


def _concatenated(parts: list[dict], names: tuple, document_mask: list[bool], eos_id
                  ) -> dict[str, np.ndarray]:
    """The sources' windows one after the other. Plain text joins packed conversations with
    weight 1 on every token and, under data.text.document_mask, a segment per document (an
    end-of-document id closes its document); else one segment a window."""
    full = [part if set(names) <= set(part) else _as_packed(part['tokens'], mask, eos_id)
            for part, mask in zip(parts, document_mask)]
    return {name: np.concatenate([np.asarray(part[name]) for part in full]).astype(
        np.result_type(*[part[name].dtype for part in full])) for name in names}


def _as_packed(tokens_NL: np.ndarray, document_mask: bool, eos_id) -> dict[str, np.ndarray]:
    tokens_NL = np.asarray(tokens_NL)
    if document_mask:
        is_eos_NL = tokens_NL == eos_id
        segments_NL = 1 + np.cumsum(is_eos_NL, axis=1) - is_eos_NL
    else:
        segments_NL = np.ones(tokens_NL.shape, np.int64)
    length = tokens_NL.shape[1]
    return {'tokens': tokens_NL,
            'segments': segments_NL.astype(text.token_dtype(length + 1)),
            'weights': np.ones(tokens_NL.shape, np.uint8)}


class MixtureOrder:
    """Rows of the joined training windows for batch `step`, a function of (seed, step): the
    batch's count from each source is a multinomial draw with the weights (seeded by the seed
    and the step's block of BLOCK_STEPS), and each source gives its next rows from shuffled
    epochs of its own (seeded by seed, source, epoch), wherever the earlier batches left it."""

    def __init__(self, sizes: tuple, weights: tuple, labels: tuple, global_batch_size: int,
                 seed: int):
        self.sizes, self.labels = np.asarray(sizes, np.int64), labels
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.probabilities = np.asarray(weights, np.float64) / sum(weights)
        self.global_batch_size, self.seed = global_batch_size, seed
        self._block_starts = [np.zeros(len(sizes), np.int64)]  # rows drawn before each block
        self._permutations = {}  # (source, epoch) -> permutation, the latest few
        self._recent_counts = {}  # block -> _counts(block), the latest few
        self._lock = threading.Lock()  # rows() runs in the prefetch thread, drawn() in the loop

    def rows(self, step: int) -> np.ndarray:
        block, index = divmod(step, BLOCK_STEPS)
        with self._lock:
            counts_SC = self._counts(block)
            starts_C = self._block_start(block) + counts_SC[:index].sum(0)
            rows = np.concatenate([self._source_rows(c, starts_C[c], counts_SC[index, c])
                                   for c in range(len(self.sizes))])
        shuffle = np.random.default_rng([self.seed, 2, step]).permutation(len(rows))
        return rows[shuffle]

    def drawn(self, first_step: int, stop_step: int) -> dict:
        """The share of the rows of batches [first_step, stop_step) each source gave: mix/NAME."""
        with self._lock:
            totals_C = self._drawn_before(stop_step) - self._drawn_before(first_step)
        shares_C = totals_C / max(totals_C.sum(), 1)
        return {f'mix/{label}': float(share) for label, share in zip(self.labels, shares_C)}

    def _drawn_before(self, step: int) -> np.ndarray:
        block, index = divmod(step, BLOCK_STEPS)
        return self._block_start(block) + self._counts(block)[:index].sum(0)

    def _counts(self, block: int) -> np.ndarray:
        """(BLOCK_STEPS, sources): how many rows each batch of the block takes from each."""
        if block not in self._recent_counts:
            if len(self._recent_counts) >= 4:
                self._recent_counts.pop(next(iter(self._recent_counts)))
            rng = np.random.default_rng([self.seed, 1, block])
            self._recent_counts[block] = rng.multinomial(self.global_batch_size,
                                                         self.probabilities, size=BLOCK_STEPS)
        return self._recent_counts[block]

    def _block_start(self, block: int) -> np.ndarray:
        while len(self._block_starts) <= block:
            done = len(self._block_starts) - 1
            self._block_starts.append(self._block_starts[-1] + self._counts(done).sum(0))
        return self._block_starts[block]

    def _source_rows(self, source: int, start: int, count: int) -> np.ndarray:
        """Rows [start, start + count) of the source's endless shuffled epochs, as joined rows."""
        positions = start + np.arange(count)
        epochs, within = np.divmod(positions, self.sizes[source])
        out = np.empty(count, np.int64)
        for epoch in np.unique(epochs):
            at = epochs == epoch
            out[at] = self._permutation(source, int(epoch))[within[at]]
        return out + self.offsets[source]

    def _permutation(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._permutations:
            if len(self._permutations) >= 2 * len(self.sizes):
                self._permutations.pop(next(iter(self._permutations)))
            rng = np.random.default_rng([self.seed, 0, source, epoch])
            self._permutations[key] = rng.permutation(self.sizes[source])
        return self._permutations[key]


def _is_entry(entry) -> bool:
    return isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(
        entry[0], (int, float)) and isinstance(entry[1], dict)


def _set(config: ml_collections.ConfigDict, key: str, value, where: str) -> None:
    """config[key] = value for a dotted key ('text.feature') or a nested dict of keys."""
    if isinstance(value, dict):
        for inner, inner_value in value.items():
            _set(config, f'{key}.{inner}', inner_value, where)
        return
    *sections, last = key.split('.')
    node = config
    for section in sections:
        if section not in node or not isinstance(node[section], ml_collections.ConfigDict):
            raise UserError(f'{where}: data.{key} is not a config key')
        node = node[section]
    if last not in node or isinstance(node[last], ml_collections.ConfigDict):
        raise UserError(f'{where}: data.{key} is not a config key')
    try:
        node[last] = tuple(value) if isinstance(value, list) else value
    except TypeError:
        raise UserError(f'{where}: data.{key}={value!r} has type {type(value).__name__}, expected '
                        f'{type(node[last]).__name__} like {node[last]!r}') from None
