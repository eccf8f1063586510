"""Preference pairs as LM training data: data.name='preference', data.paths=SOURCES.

Sources are read as chat data's are (chat.py: JSONL, JSON, parquet, saved or named `datasets`;
data.chat.eval_paths or a held-out data.val_fraction). A record holds two answers to one prompt,
as TRL's preference datasets do:

  explicit prompt   {"prompt": "..." or messages, "chosen": "..." or messages,
                     "rejected": "..." or messages}
  implicit prompt   {"chosen": messages, "rejected": messages}: the messages both begin with
                    are the prompt

Both conversations are rendered by the chat template and tokenized; the last assistant message
is the answer (its tokens weighted 1). A pair is one example: 'tokens' and 'weights' of shape
(2, data.text.seq_len + 1), chosen first, padded apart (the objective is bigjax/preference.py).
A conversation longer than the window is cut to it; a pair left with an answer that has no
token is dropped and counted. Bad records follow data.chat.bad_records.
"""

import dataclasses
import logging
from typing import Callable, Iterator

import numpy as np

from bigjax.data import cache, chat, chat_template, text, text_files
from bigjax.data.core import Dataset, Split
from bigjax.errors import UserError

log = logging.getLogger('bigjax')
KIND = 'text_preference'
ARRAYS = ('tokens', 'weights')  # per example: (2, length), chosen then rejected
ENCODE_CHUNK = 256  # pairs rendered, then encoded together


def answers(record) -> tuple[list, list, list]:
    """(prompt, chosen, rejected) messages of one record; chat.RecordError names the field that
    is missing or wrong."""
    if not isinstance(record, dict):
        raise chat.RecordError(f'the record is a {type(record).__name__}, not an object')
    if 'chosen' not in record or 'rejected' not in record:
        raise chat.RecordError(f'a preference record needs "chosen" and "rejected" (and '
                               f'"prompt", or message lists that begin with it); its fields are '
                               f'{sorted(record)[:8]}')
    if record.get('prompt') is not None:
        return (chat.as_turns(record['prompt'], 'prompt', 'user'),
                chat.as_turns(record['chosen'], 'chosen', 'assistant'),
                chat.as_turns(record['rejected'], 'rejected', 'assistant'))
    if not isinstance(record['chosen'], list) or not isinstance(record['rejected'], list):
        raise chat.RecordError('without "prompt", "chosen" and "rejected" must be message lists '
                               'that begin with the same prompt messages')
    chosen = chat.message_list(record['chosen'], 'chosen')
    rejected = chat.message_list(record['rejected'], 'rejected')
    shared = 0
    while (shared < min(len(chosen), len(rejected)) - 1
           and chosen[shared] == rejected[shared]):
        shared += 1
    if shared == 0:
        raise chat.RecordError('without "prompt", "chosen" and "rejected" must begin with the '
                               'same prompt messages; their first messages differ')
    return chosen[:shared], chosen[shared:], rejected[shared:]


@dataclasses.dataclass
class Counts:
    """What became of a split's records (the report; none is dropped unseen)."""

    records: int = 0
    bad_skipped: int = 0
    first_bad: str = ''
    truncated: int = 0  # answers cut to the window
    nothing_to_learn: int = 0  # pairs dropped: an answer with no token left
    pairs: int = 0
    learnt_tokens: int = 0


def tokenize_pairs(records: Iterator, template, tokenizer, bad_records: str, counts: Counts
                   ) -> Iterator[tuple[list, tuple, tuple]]:
    """(prompt + chosen messages, (chosen ids, weights), (rejected ids, weights)) of each good
    record in order; bad ones raise a UserError naming them, or are skipped and counted."""
    def rendered(location, record):
        counts.records += 1
        try:
            if isinstance(record, chat.BadJson):
                raise chat.RecordError(record.message)
            prompt, chosen, rejected = answers(record)
            start = len(template.render(prompt, add_generation_prompt=True))
            rendered_answers = []
            for field, answer in (('chosen', chosen), ('rejected', rejected)):
                text, spans = template.learnt_spans(prompt + answer, 'last')
                if spans[0][0] < start:
                    raise chat.RecordError(f'{field} has no assistant answer after the prompt')
                rendered_answers.append((text, spans))
            return (prompt + chosen, *rendered_answers)
        except (chat.RecordError, chat_template.ChatError) as e:
            chat.skip_bad(location, e, bad_records, counts)
            return None

    def encoded(chunk):
        texts = [spans[0] for _, *answers_ in chunk for spans in answers_]
        encodings = tokenizer.encode_chats(texts)
        for i, (messages, chosen, rejected) in enumerate(chunk):
            yield messages, *((ids, chat_template.learnt(offsets, spans[1]))
                              for (ids, offsets), spans in zip(encodings[2 * i:2 * i + 2],
                                                               (chosen, rejected)))

    chunk = []
    for location, record in records:
        done = rendered(location, record)
        if done is not None:
            chunk.append(done)
        if len(chunk) == ENCODE_CHUNK:
            yield from encoded(chunk)
            chunk = []
    yield from encoded(chunk)


def open_preference(data_config) -> Dataset:
    """data.name='preference': the pairs of data.paths (and data.chat.eval_paths)."""
    chat.check(data_config)
    return preference_pairs('preference', data_config, *chat.file_records(data_config),
                            text_files.cache_dir(data_config, 'preference'))


def preference_pairs(name: str, data_config, train_records: Callable[[], Iterator],
                     eval_records: Callable[[], Iterator], identity: dict, directory) -> Dataset:
    """The Dataset (kind text_preference) of the records the two functions yield: the pipeline
    every preference source goes through."""
    c, t = data_config.chat, data_config.text
    tokenizer = chat.chat_tokenizer(data_config)
    template = chat_template.resolve(c.template, tokenizer)
    length = t.seq_len + 1
    key = {**identity, 'template': chat.digest(template.source),
           'special_tokens': dict(template.special_tokens), 'tokenizer': tokenizer.name,
           'seq_len': t.seq_len, 'bad_records': c.bad_records,
           'eval_generations': c.eval_generations, 'answer_tokens': c.answer_tokens}
    dtype = text.token_dtype(tokenizer.vocab_size)

    def build(folder):
        reports = {}
        for split, records in (('train', train_records), ('eval', eval_records)):
            counts = Counts()
            writers = {'tokens': cache.ArrayWriter(folder / f'{split}_tokens.npy', (2, length),
                                                   dtype),
                       'weights': cache.ArrayWriter(folder / f'{split}_weights.npy', (2, length),
                                                    np.uint8)}
            generation = []
            for messages, *answers_ in tokenize_pairs(records(), template, tokenizer,
                                                      c.bad_records, counts):
                if split == 'eval' and len(generation) < c.eval_generations:
                    generation.append(chat.generation_example(messages, template, tokenizer))
                if any(len(ids) > length for ids, _ in answers_):
                    counts.truncated += 1
                tokens = np.full((1, 2, length), tokenizer.pad_id, np.int64)
                weights = np.zeros((1, 2, length), np.uint8)
                for row, (ids, answer_weights) in enumerate(answers_):
                    tokens[0, row, :len(ids[:length])] = ids[:length]
                    weights[0, row, :len(ids[:length])] = answer_weights[:length]
                if not weights[0, :, 1:].any(axis=1).all():  # the first token is never a target
                    counts.nothing_to_learn += 1
                    continue
                counts.pairs += 1
                counts.learnt_tokens += int(weights[0, :, 1:].sum())
                writers['tokens'].append(tokens)
                writers['weights'].append(weights)
            for writer in writers.values():
                writer.close()
            if not counts.pairs:
                raise UserError(f'the {split} split of {name} has no pair left to learn from '
                                f'({describe(counts)})')
            reports[split] = dataclasses.asdict(counts)
            if split == 'eval':
                reports['generation'] = [g for g in generation if g is not None]
        return {}, reports

    arrays, report = cache.cached(directory, key, build)
    for split in ('train', 'eval'):
        log.info('%s %s: %s', name, split, describe(Counts(**report[split])))
    pairs_chat = chat.chat_of(template, tokenizer, c, report)
    splits = {split: Split(report[split]['pairs'], lambda split=split: {
        array: arrays[f'{split}_{array}'] for array in ARRAYS}) for split in ('train', 'eval')}
    return Dataset(name, KIND, splits['train'], splits['eval'], seq_len=t.seq_len,
                   vocab_size=tokenizer.vocab_size, tokenizer=tokenizer, token_arrays=ARRAYS,
                   chat=pairs_chat)


def describe(counts: Counts) -> str:
    parts = [f'{counts.records} records']
    if counts.bad_skipped:
        parts.append(f'{counts.bad_skipped} bad ones skipped (first: {counts.first_bad})')
    if counts.truncated:
        parts.append(f'{counts.truncated} pairs with an answer cut to data.text.seq_len + 1')
    if counts.nothing_to_learn:
        parts.append(f'{counts.nothing_to_learn} pairs dropped with an answer left empty')
    parts.append(f'{counts.pairs} pairs, {counts.learnt_tokens} answer tokens')
    return '; '.join(parts)
