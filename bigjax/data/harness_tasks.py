"""Offline lm-evaluation-harness tasks from data this machine has: which exception an `except`
clause of python_exceptions catches, asked as in configs/chat_exceptions.py (the code before the
name, with the question above it), in lm-eval's own custom-task format (a YAML beside a JSONL).

  bigjax_exceptions_mc:  multiple choice over the 7 names (acc, acc_norm): a base LM scores
                         `except NAME` after the code; with a chat template the name is the answer.
  bigjax_exceptions_gen: the name generated greedily (until a newline, 8 tokens at most), its first
                         word scored by exact match.

Both are tagged bigjax_exceptions. The files are written once per split, under CACHE.
"""

import hashlib
import json

from etils import epath

from bigjax.data import datasets, exceptions_chat, sources
from bigjax.data.python_exceptions import EXCEPTIONS

PREFIX = 'bigjax_'
TAG = 'bigjax_exceptions'
NAMES = ('bigjax_exceptions_mc', 'bigjax_exceptions_gen')
CACHE = '~/.cache/bigjax/harness_tasks'


def questions(data_config, split: str = 'test', limit: int = 0) -> tuple[list[dict], dict]:
    """({'question', 'choices', 'label', 'answer'} of each clause of python_exceptions' split (the
    first `limit`, 0 = all), the split's cache key)."""
    source_config = data_config.copy_and_resolve_references()
    source_config.name = 'python_exceptions'
    builder = sources.open_builder(source_config)
    tfds_split = sources.open_split(builder, split, source_config)
    out = []
    for docs, labels in datasets.documents(builder, tfds_split, 'text', 'label', 0,
                                           len(tfds_split.source)):
        out += [{'question': exceptions_chat.question(code), 'choices': list(EXCEPTIONS),
                 'label': int(label), 'answer': EXCEPTIONS[label]}
                for code, label in zip(docs, labels)]
    return (out[:limit] if limit else out), tfds_split.cache_key


def write(folder, rows: list[dict], names: tuple[str, str] = NAMES, tag: str = TAG) -> epath.Path:
    """The two tasks over `rows` as YAML files and questions.jsonl in `folder` (returned)."""
    folder = epath.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / 'questions.jsonl'
    data.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    common = {'tag': [tag], 'dataset_path': 'json',
              'dataset_kwargs': {'data_files': {'test': str(data)}}, 'test_split': 'test',
              'doc_to_text': '{{question}}', 'metadata': {'version': 1.0}}
    multiple_choice = {'task': names[0], **common, 'output_type': 'multiple_choice',
                       'doc_to_choice': '{{choices}}', 'doc_to_target': '{{label}}',
                       'metric_list': [{'metric': m, 'aggregation': 'mean',
                                        'higher_is_better': True} for m in ('acc', 'acc_norm')]}
    generated = {'task': names[1], **common, 'output_type': 'generate_until',
                 'doc_to_target': '{{answer}}',
                 'generation_kwargs': {'until': ['\n'], 'max_gen_toks': 8, 'do_sample': False},
                 'filter_list': [{'name': 'first_word', 'filter': [
                     {'function': 'regex', 'regex_pattern': r'([A-Za-z_]\w*)'},
                     {'function': 'take_first'}]}],
                 'metric_list': [{'metric': 'exact_match', 'aggregation': 'mean',
                                  'higher_is_better': True}]}
    for task in (multiple_choice, generated):  # JSON is YAML
        (folder / f'{task["task"]}.yaml').write_text(json.dumps(task, indent=2) + '\n')
    return folder


def folder_for(data_config, split: str = 'test') -> epath.Path:
    """The folder of the offline tasks for lm-eval's include_path, written on first use on this
    machine's disk (lm-eval reads the JSONL with `datasets`, which wants a local file)."""
    rows, split_key = questions(data_config, split)
    identity = json.dumps({'split': split_key, 'question': exceptions_chat.QUESTION,
                           'code_chars': exceptions_chat.CODE_CHARS, 'version': 1},
                          sort_keys=True, default=str)
    key = hashlib.sha256(identity.encode()).hexdigest()[:12]
    folder = epath.Path(CACHE).expanduser() / f'exceptions_{split}_{key}'
    if not all((folder / f'{name}.yaml').exists() for name in NAMES):
        write(folder, rows)
    return folder
