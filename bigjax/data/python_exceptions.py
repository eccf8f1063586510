"""Offline tfds classification task: which exception does an `except` clause of the Python
standard library catch?

Each example is the code before the exception's name (the preceding lines, up to 2,000
characters, ending with the word `except`), labelled with the name, for clauses that catch one
of the seven exceptions the stdlib catches most. It is CuBERT's exception-classification task
(Kanade et al., 2020) read left to right, so a decoder LM can continue into it. Files are split
as in python_stdlib (by the sha256 of the path): an LM pretrained on python_stdlib's train split
never saw a validation or test example's file.
"""

import re
import sys

import numpy as np
import tensorflow_datasets as tfds

from bigjax.data import python_stdlib

EXCEPTIONS = ('OSError', 'ImportError', 'ValueError', 'Exception', 'AttributeError', 'KeyError',
              'TypeError')
CONTEXT_CHARS = 2000
EXCEPT_CLAUSE = re.compile(r'^[ \t]*except[ \t]+([A-Za-z_][\w.]*)[ \t]*(?::|as\b)', re.MULTILINE)


def examples(doc: dict) -> list[dict]:
    """One example per `except <one of EXCEPTIONS>` clause of a python_stdlib document."""
    out = []
    source = doc['text']
    for match in EXCEPT_CLAUSE.finditer(source):
        name = match.group(1)
        if name not in EXCEPTIONS:
            continue
        begin = max(match.start(1) - CONTEXT_CHARS, 0)
        if begin > 0:  # start at the first whole line
            begin = source.index('\n', begin - 1) + 1
        out.append({'text': source[begin:match.start(1)].rstrip(' \t'),
                    'label': EXCEPTIONS.index(name), 'path': doc['path'],
                    'offset': match.start(1)})
    return out


class PythonExceptions(tfds.core.GeneratorBasedBuilder):
    """The code before an `except` clause's exception, labelled with the exception."""

    # Bump the version when EXCEPTIONS, CONTEXT_CHARS or the pattern change.
    VERSION = tfds.core.Version('1.0.1')
    RELEASE_NOTES = {'1.0.0': f'{len(EXCEPTIONS)} exceptions, {CONTEXT_CHARS} characters before.',
                     '1.0.1': 'The context starts at its first whole line (no line dropped).'}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(
        name=f'py{sys.version_info.major}{sys.version_info.minor}',
        description=f'Python {sys.version_info.major}.{sys.version_info.minor} stdlib sources')]

    def _info(self) -> tfds.core.DatasetInfo:
        docs, _ = python_stdlib.documents()
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                'text': tfds.features.Text(),
                'label': tfds.features.ClassLabel(names=EXCEPTIONS),
                'path': tfds.features.Text(),
                'offset': np.int64,
            }),
            metadata=tfds.core.MetadataDict(
                sha256=python_stdlib.fingerprint(docs), python_version=sys.version.split()[0]),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything ships with Python.
        docs, _ = python_stdlib.documents()
        return {name: self._generate_examples(
                    [d for d in docs if python_stdlib.split_of(d['path']) == name])
                for name, _ in python_stdlib.SPLITS}

    def _generate_examples(self, docs):
        for doc in docs:
            for example in examples(doc):
                yield f"{example['path']}:{example['offset']}", example
