"""Offline chat data (data.name='python_exceptions_chat'): the `except` clauses of
python_exceptions as questions and answers, the exception task of configs/exceptions_transfer.py
as instruction tuning.

The user asks which exception the `except` at the end of some code catches (the code before the
name: its last CODE_CHARS characters, from a whole line); the assistant answers with the name,
so a generated answer is right when it is exactly that name (data.chat.scorer='exact_match').
data.train_split and data.eval_split are python_exceptions' splits (train, validation, test:
files an LM pretrained on python_stdlib's train split never saw); data.train_per_class keeps the
first N training clauses of each exception, as the classifier studies do.

data.name='python_exceptions_preference' asks the same questions as preference pairs: the right
name chosen, a wrong one rejected (another exception, picked by the digest of the code, so the
pairs are the same on every machine).
"""

import hashlib

import numpy as np

from bigjax.data import chat, datasets, pairs, sources, text_files
from bigjax.data.python_exceptions import EXCEPTIONS
from bigjax.errors import UserError

QUESTION = 'Which exception does the `except` at the end of this code catch?\n\n'
CODE_CHARS = 500


def question(code: str) -> str:
    """The question about the clause whose code (up to `except`) is `code`."""
    if len(code) > CODE_CHARS:
        code = code[-CODE_CHARS:]
        code = code[code.index('\n') + 1:] if '\n' in code[:-1] else code
    return QUESTION + code


def records(builder, tfds_split, per_class: int = 0):
    """(location, messages record) of each clause of the split; with per_class, the first that
    many of each exception."""
    taken = np.zeros(len(EXCEPTIONS), int)
    number = 0
    for docs, labels in datasets.documents(builder, tfds_split, 'text', 'label', 0,
                                           len(tfds_split.source)):
        for code, label in zip(docs, labels):
            number += 1
            if per_class and taken[label] >= per_class:
                continue
            taken[label] += 1
            yield f'{tfds_split.name} {tfds_split.split} #{number}', {'messages': [
                {'role': 'user', 'content': question(code)},
                {'role': 'assistant', 'content': EXCEPTIONS[label]}]}


def wrong_answer(code: str, label: int) -> str:
    """An exception other than the right one, the same for the same code everywhere."""
    others = [name for i, name in enumerate(EXCEPTIONS) if i != label]
    return others[int(hashlib.sha256(code.encode()).hexdigest()[:8], 16) % len(others)]


def preference_records(builder, tfds_split, per_class: int = 0):
    """(location, preference record) of each clause `records` yields: the question as the
    prompt, its exception chosen and `wrong_answer` rejected."""
    for location, record in records(builder, tfds_split, per_class):
        question_message, answer = record['messages']
        label = EXCEPTIONS.index(answer['content'])
        yield location, {'prompt': question_message['content'], 'chosen': answer['content'],
                         'rejected': wrong_answer(question_message['content'], label)}


def open_exceptions_chat(data_config):
    return _open(data_config, 'python_exceptions_chat', records, chat.conversations)


def open_exceptions_preference(data_config):
    return _open(data_config, 'python_exceptions_preference', preference_records,
                 pairs.preference_pairs)


def _open(data_config, name: str, make_records, pipeline):
    if data_config.classes:
        raise UserError(f'data.classes: {name} asks about every exception; '
                        'data.train_per_class keeps N clauses of each')
    if data_config.train_per_class < 0:
        raise UserError(f'data.train_per_class={data_config.train_per_class} must be >= 0')
    chat.check(data_config)
    source_config = data_config.copy_and_resolve_references()
    source_config.name = 'python_exceptions'
    builder = sources.open_builder(source_config)
    train = sources.open_split(builder, data_config.train_split, source_config)
    evaluation = sources.open_split(builder, data_config.eval_split, source_config)
    identity = {'train': train.cache_key, 'eval': evaluation.cache_key,
                'per_class': data_config.train_per_class, 'question': QUESTION,
                'code_chars': CODE_CHARS}
    return pipeline(name, data_config,
                    lambda: make_records(builder, train, data_config.train_per_class),
                    lambda: make_records(builder, evaluation), identity,
                    text_files.cache_dir(data_config, name))
