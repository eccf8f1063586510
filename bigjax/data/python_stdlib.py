"""Offline tfds text corpus: the Python standard library's own source files.

One document per `.py` file under `sysconfig.get_paths()['stdlib']` (site-packages excluded;
files that are not valid UTF-8, a handful of deliberate test cases, are skipped and counted).
The split is fixed by path: a file goes to `train` when int(sha256(path)[:8], 16) % 100 < 90,
to `validation` when < 95, otherwise to `test`. Each document carries its path, its top-level
package and whether it is test code, for classification tasks. The content depends on the Python
version, which names the builder config (e.g. `python_stdlib/py311`); the dataset info records
the exact version and a sha256 of all paths and texts.
"""

import functools
import hashlib
import pathlib
import sys
import sysconfig

import numpy as np
import tensorflow_datasets as tfds

SPLITS = (('train', 90), ('validation', 95), ('test', 100))
EXCLUDED_DIRS = {'site-packages', 'dist-packages', '__pycache__'}


def split_of(path: str) -> str:
    bucket = int(hashlib.sha256(path.encode('utf-8')).hexdigest()[:8], 16) % 100
    return next(name for name, limit in SPLITS if bucket < limit)


@functools.lru_cache(maxsize=1)
def documents() -> tuple[list[dict], int]:
    """(documents sorted by path, number of files skipped as not UTF-8)."""
    root = pathlib.Path(sysconfig.get_paths()['stdlib'])
    docs, skipped = [], 0
    for file in sorted(root.rglob('*.py')):
        relative = file.relative_to(root)
        if EXCLUDED_DIRS & set(relative.parts):
            continue
        try:
            text = file.read_bytes().decode('utf-8')
        except UnicodeDecodeError:
            skipped += 1
            continue
        parts = relative.parts
        docs.append({
            'text': text,
            'path': relative.as_posix(),
            'package': parts[0] if len(parts) > 1 else relative.stem,
            'is_test': 'test' in parts or 'tests' in parts or relative.name.startswith('test_'),
        })
    return docs, skipped


def fingerprint(docs: list[dict]) -> str:
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc['path'].encode('utf-8') + b'\0' + doc['text'].encode('utf-8') + b'\0')
    return digest.hexdigest()


class PythonStdlib(tfds.core.GeneratorBasedBuilder):
    """The running Python's standard library sources as a text dataset."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Split by sha256 of the path: 90/5/5.'}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(
        name=f'py{sys.version_info.major}{sys.version_info.minor}',
        description=f'Python {sys.version_info.major}.{sys.version_info.minor} stdlib sources')]

    def _info(self) -> tfds.core.DatasetInfo:
        docs, skipped = documents()
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                'text': tfds.features.Text(),
                'path': tfds.features.Text(),
                'package': tfds.features.Text(),
                'is_test': np.bool_,
            }),
            metadata=tfds.core.MetadataDict(
                sha256=fingerprint(docs), python_version=sys.version.split()[0],
                documents=len(docs), skipped_not_utf8=skipped),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything ships with Python.
        docs, _ = documents()
        return {name: self._generate_examples([d for d in docs if split_of(d['path']) == name])
                for name, _ in SPLITS}

    def _generate_examples(self, docs):
        for doc in docs:
            yield doc['path'], doc
