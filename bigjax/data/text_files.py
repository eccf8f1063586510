"""Your own text files as an LM dataset: data.name='text_files', data.paths='a.txt,b/*.txt'.

The files (globs expanded and sorted, in the order given) are documents; the first
1 - data.val_fraction of their characters train and the rest evaluate (a file may be cut in two),
as common small-LM setups split one text file. Tokens (byte, char or bpe, learnt from the training
part, or from evenly spread files of it when it has more than data.text.tokenizer_sample
characters) are packed into windows like any text dataset and cached under the data_dir, keyed by
the files' paths, sizes and modification times: a second run starts at once, an edited file is
prepared again.
"""

import glob
import os

from etils import epath

from bigjax.data import cache, encode, sources, text, tokenizers
from bigjax.data.core import Dataset, Split
from bigjax.errors import UserError


def expand(paths: str, what: str = 'file') -> list[str]:
    """Absolute paths of the comma-separated files or globs, each glob sorted; UserError if a
    part matches nothing."""
    if not paths.strip():
        raise UserError(f'data.paths is empty: name your {what}s, e.g. '
                        '--config.data.paths=input.txt,more/*.txt')
    out = []
    for part in (p.strip() for p in paths.split(',') if p.strip()):
        matches = sorted(glob.glob(os.path.expanduser(part)))
        matches = [m for m in matches if os.path.isfile(m)] if what == 'file' else matches
        if not matches:
            raise UserError(f'data.paths: nothing matches {part!r} (from {os.getcwd()})')
        out.extend(os.path.abspath(m) for m in matches)
    return out


def signature(files: list[str]) -> list:
    """What identifies the files' contents for the cache: path, size, modification time."""
    return [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files]


def cache_dir(data_config, kind: str) -> epath.Path:
    root = data_config.data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
    return sources.cache_root(os.path.expanduser(root)) / kind


def read_utf8(path: str) -> str:
    data = open(path, 'rb').read()
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise UserError(f'{path} is not UTF-8 text (byte {e.start} is {data[e.start]:#04x}): '
                        'convert it (e.g. iconv -t UTF-8) or leave it out of data.paths') from None


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """(train, eval) documents: the first int(n * (1 - val_fraction)) of the n characters, and
    the rest."""
    cut = int(sum(map(len, docs)) * (1 - val_fraction))
    train, evaluate, seen = [], [], 0
    for doc in docs:
        if seen + len(doc) <= cut:
            train.append(doc)
        elif seen >= cut:
            evaluate.append(doc)
        else:
            train.append(doc[:cut - seen])
            evaluate.append(doc[cut - seen:])
        seen += len(doc)
    return [d for d in train if d], [d for d in evaluate if d]


def open_text_files(data_config):
    """The Dataset (kind text_lm) of data.paths."""
    t = data_config.text
    tokenizers.check(t)
    if not 0 < data_config.val_fraction < 1:
        raise UserError(f'data.val_fraction={data_config.val_fraction} must be in (0, 1)')
    if t.task not in ('auto', 'lm'):
        raise UserError(f'data.text.task={t.task!r}: text_files is a language-modelling dataset '
                        '(task "lm")')
    files = expand(data_config.paths)
    cleaning = {'unicode_form': t.unicode_form, 'whitespace': t.whitespace}
    learnt = t.tokenizer in tokenizers.LEARNT
    fixed = None if learnt else tokenizers.load(t.tokenizer)  # byte, or a model's own: read once
    key = {'files': signature(files), 'val_fraction': data_config.val_fraction,
           'tokenizer': t.tokenizer if learnt else fixed.name, 'seq_len': t.seq_len, **cleaning,
           **({'vocab_size': t.vocab_size} if t.tokenizer == 'bpe' else {}),
           **({'tokenizer_sample': t.tokenizer_sample} if learnt else {})}

    def build(folder):
        docs = [text.clean_text(read_utf8(f), **cleaning) for f in files]
        train_docs, eval_docs = split_documents(docs, data_config.val_fraction)
        if not train_docs or not eval_docs:
            raise UserError(f'data.paths has {sum(map(len, docs))} characters: too few to split '
                            f'by data.val_fraction={data_config.val_fraction}')
        trained, report = '', {'characters': [sum(map(len, train_docs)),
                                              sum(map(len, eval_docs))]}
        if learnt:
            sample = tokenizers.sample(lambda i: [train_docs[i]], len(train_docs),
                                       t.tokenizer_sample)
            trained = tokenizers.train(t.tokenizer, sample, t.vocab_size)
            report['tokenizer_sample'] = {'documents': len(sample),
                                          'characters': sum(map(len, sample))}
        tokenizer = fixed or tokenizers.load(t.tokenizer, trained)
        dtype = text.token_dtype(tokenizer.vocab_size)
        for name, split_docs in (('eval', eval_docs), ('train', train_docs)):
            num_windows, num_tokens = encode.write_lm([(split_docs, None)], tokenizer, folder,
                                                      t.seq_len, dtype, name=f'{name}_tokens')
            if not num_windows:
                raise UserError(f'data.text.seq_len={t.seq_len} is longer than the {name} split '
                                f'of data.paths ({num_tokens} tokens with end-of-document marks)'
                                ': lower seq_len' + (' or raise data.val_fraction'
                                                     if name == 'eval' else ''))
        return {}, {'tokenizer': trained, **report}

    arrays, report = cache.cached(cache_dir(data_config, 'text_files'), key, build)
    tokenizer = fixed or tokenizers.load(t.tokenizer, report['tokenizer'])
    splits = {name: Split(len(arrays[f'{name}_tokens']),
                          lambda name=name: {'tokens': arrays[f'{name}_tokens']})
              for name in ('train', 'eval')}
    return Dataset('text_files', 'text_lm', splits['train'], splits['eval'], seq_len=t.seq_len,
                   vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)
