"""Conversations and instructions as LM training data: data.name='chat', data.paths=SOURCES.

A source is a JSONL file, a JSON file (a list of records) or a parquet file (globs work), a
Hugging Face `datasets` dataset saved with save_to_disk (its folder), or one loaded by name
(`datasets:ORG/NAME`, where the machine is online). Records come in the common formats
(data.chat.format; 'auto' reads the first record's fields):

  messages            {"messages": [{"role": "user", "content": "..."}, ...]}
  sharegpt            {"conversations": [{"from": "human" | "gpt" | "system", "value": "..."}]}
  prompt_completion   {"prompt": "..." or messages, "completion": "..." or messages}
  alpaca              {"instruction": "...", "input": "..." (optional), "output": "..."}

Each record becomes a conversation, is rendered by the chat template and tokenized with a weight
per token (chat_template.py: the assistant turns by default), and conversations are packed into
windows of data.text.seq_len + 1 tokens that keep them apart (packing.py). A bad record is a
one-line error naming its file, line and field, or (data.chat.bad_records='skip') skipped and
counted; nothing is dropped silently. The eval split is data.chat.eval_paths, or else the
records of data.paths whose digest falls in the last data.val_fraction. Windows are cached
under the data_dir, keyed by the sources and every setting that shapes them.
"""

import dataclasses
import glob
import hashlib
import json
import logging
import os
from concurrent import futures
from typing import Callable, Iterator

import numpy as np

from bigjax.data import cache, chat_template, datasets, packing, text, text_files, tokenizers
from bigjax.data.core import Dataset, Split
from bigjax.errors import UserError

log = logging.getLogger('bigjax')
FORMATS = ('auto', 'messages', 'sharegpt', 'prompt_completion', 'alpaca')
BAD_RECORDS = ('error', 'skip')
FILE_KINDS = {'.jsonl': 'jsonl', '.json': 'json', '.parquet': 'parquet'}
HUB_PREFIX = 'datasets:'
SHAREGPT_ROLES = {'human': 'user', 'user': 'user', 'gpt': 'assistant', 'assistant': 'assistant',
                  'model': 'assistant', 'system': 'system', 'tool': 'tool'}
PARQUET_ROWS = 1024  # rows read from a parquet file at a time
RENDER_CHUNK = 512  # conversations rendered, then encoded together

Record = tuple[str, object]  # (where it is: 'file.jsonl:12', the record)


class RecordError(ValueError):
    """A record that does not hold a conversation: the field and what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Chat:
    """What a chat dataset adds to its Dataset: the template (for sampling and export), the ids
    that end an answer, and held-out prompts with their reference answers (chat_eval.py)."""

    template: chat_template.ChatTemplate
    stop_ids: tuple
    prompts: tuple = ()  # token ids (the conversation before its last answer, with the prompt)
    references: tuple = ()  # the last answers' texts
    questions: tuple = ()  # the last user messages' texts, to show beside the answers
    scorer: str = 'exact_match'
    answer_tokens: int = 64
    stats: dict = dataclasses.field(default_factory=dict)  # per split: Counts and packing


def conversation(record, fmt: str) -> list[dict]:
    """The messages of one record in format `fmt` ('auto': by its fields); RecordError names the
    field that is missing or wrong."""
    if not isinstance(record, dict):
        raise RecordError(f'the record is a {type(record).__name__}, not an object')
    if fmt == 'auto':
        fmt = detect_format(record)
    if fmt == 'messages':
        return message_list(record.get('messages'), 'messages')
    if fmt == 'sharegpt':
        turns = record.get('conversations')
        if not isinstance(turns, list) or not turns:
            raise RecordError('"conversations" must be a non-empty list of {from, value}')
        out = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or turn.get('from') not in SHAREGPT_ROLES:
                raise RecordError(f'conversations[{i}].from must be one of '
                                  f'{sorted(SHAREGPT_ROLES)}')
            out.append({'role': SHAREGPT_ROLES[turn['from']],
                        'content': _text(turn.get('value'), f'conversations[{i}].value')})
        return out
    if fmt == 'prompt_completion':
        prompt, completion = record.get('prompt'), record.get('completion')
        return (as_turns(prompt, 'prompt', 'user')
                + as_turns(completion, 'completion', 'assistant'))
    if fmt == 'alpaca':
        instruction = _text(record.get('instruction'), 'instruction')
        extra = record.get('input') or ''
        extra = _text(extra, 'input')
        return [{'role': 'user', 'content': f'{instruction}\n\n{extra}' if extra else instruction},
                {'role': 'assistant', 'content': _text(record.get('output'), 'output')}]
    raise UserError(f'data.chat.format={fmt!r} is not one of {list(FORMATS)}')


def detect_format(record: dict) -> str:
    if 'messages' in record:
        return 'messages'
    if 'conversations' in record:
        return 'sharegpt'
    if 'prompt' in record and 'completion' in record:
        return 'prompt_completion'
    if 'instruction' in record and 'output' in record:
        return 'alpaca'
    raise RecordError(f'no chat fields (messages; conversations; prompt + completion; instruction '
                      f'+ output) among its fields {sorted(record)[:8]}')


def _text(value, field: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f'{field} must be a string, not '
                          f'{"missing" if value is None else type(value).__name__}')
    return value


def as_turns(value, field: str, role: str) -> list[dict]:
    """A prompt or completion: a string (one turn of `role`) or a list of messages."""
    if isinstance(value, list):
        return message_list(value, field)
    return [{'role': role, 'content': _text(value, field)}]


def message_list(value, field: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RecordError(f'{field} must be a non-empty list of {{role, content}} messages')
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RecordError(f'{field}[{i}] must be an object with role and content')
        message = {k: v for k, v in message.items() if v is not None}  # as transformers does
        if not isinstance(message.get('role'), str):
            raise RecordError(f'{field}[{i}].role must be a string')
        if 'content' in message and not isinstance(message['content'], str):
            raise RecordError(f'{field}[{i}].content must be a string, not '
                              f'{type(message["content"]).__name__}')
        if 'content' not in message and 'tool_calls' not in message:
            raise RecordError(f'{field}[{i}].content is missing')
        out.append(message)
    return out


def messages_from_json(value: str) -> list[dict]:
    """A conversation given on the command line: JSON messages, or a .json file holding them."""
    where = '--conversation'
    if os.path.isfile(os.path.expanduser(value)):
        where = value
        with open(os.path.expanduser(value), encoding='utf-8') as f:
            value = f.read()
    try:
        return message_list(json.loads(value), where)
    except json.JSONDecodeError as e:
        raise UserError(f'{where} is not JSON ({e.msg}): give a list of {{"role", "content"}} '
                        'messages') from None
    except RecordError as e:
        raise UserError(str(e)) from None


def read(source: str, split: str) -> Iterator[Record]:
    """The records of one source (a file, a saved `datasets` folder, or datasets:NAME, whose
    `split` is read), each with where it is."""
    if source.startswith(HUB_PREFIX):
        name = source[len(HUB_PREFIX):]
        yield from _dataset_rows(_load_hub(name, split), f'{source}[{split}]')
        return
    if os.path.isdir(source):
        yield from _dataset_rows(_load_saved(source, split), source)
        return
    kind = FILE_KINDS.get(os.path.splitext(source)[1].lower())
    if kind == 'jsonl':
        with open(source, encoding='utf-8') as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield f'{source}:{number}', _json(line)
    elif kind == 'json':
        with open(source, encoding='utf-8') as f:
            records = _json(f.read())
        if isinstance(records, BadJson):
            raise UserError(f'{source}: {records.message}: a .json chat file holds a JSON list of '
                            'records')
        if not isinstance(records, list):
            raise UserError(f'{source}: a .json chat file holds a list of records (use .jsonl '
                            'for one record a line)')
        for i, record in enumerate(records):
            yield f'{source}[{i}]', record
    elif kind == 'parquet':
        import pyarrow.parquet as pq
        row = 0
        for batch in pq.ParquetFile(source).iter_batches(batch_size=PARQUET_ROWS):
            for record in batch.to_pylist():
                yield f'{source} row {row}', record
                row += 1
    else:
        raise UserError(f'data.paths: {source} is not a .jsonl, .json or .parquet file, a saved '
                        f'`datasets` folder, or {HUB_PREFIX}NAME')


class BadJson:
    """A line that is not JSON, kept as a record so the bad-record policy decides."""

    def __init__(self, message: str):
        self.message = message


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return BadJson(f'not JSON ({e.msg} at column {e.colno})')


def _datasets_module(what: str):
    try:
        import datasets as hf_datasets
    except ImportError:
        raise UserError(f'{what} needs the `datasets` package: pip install datasets') from None
    return hf_datasets


def _load_saved(folder: str, split: str):
    hf_datasets = _datasets_module(f'the saved dataset {folder}')
    try:
        loaded = hf_datasets.load_from_disk(folder)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f'data.paths: {folder} is a folder but not a dataset saved by '
                        f'`datasets` save_to_disk ({e})') from None
    return _pick_split(loaded, split, folder)


def _load_hub(name: str, split: str):
    hf_datasets = _datasets_module(f'{HUB_PREFIX}{name}')
    try:
        return hf_datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, unknown split: datasets raises many types
        raise UserError(f'{HUB_PREFIX}{name} split {split!r} could not be loaded '
                        f'({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ""}'
                        '): datasets by name need the Hugging Face Hub (or its cache); save one '
                        'with save_to_disk and name its folder instead') from None


def _pick_split(loaded, split: str, where: str):
    if hasattr(loaded, 'keys'):  # a DatasetDict
        if split not in loaded:
            raise UserError(f'{where} has the splits {sorted(loaded)}, not {split!r} '
                            '(data.train_split / data.eval_split)')
        return loaded[split]
    return loaded


def _dataset_rows(dataset, where: str) -> Iterator[Record]:
    for i, record in enumerate(dataset):
        yield f'{where} row {i}', record


def expand(paths: str) -> list[str]:
    """The sources of a comma-separated data.paths: files (globs sorted), dataset folders and
    datasets:NAME entries, in the order given."""
    if not paths.strip():
        raise UserError('data.paths is empty: name your chat files, e.g. '
                        '--config.data.paths=train.jsonl (or a saved datasets folder, or '
                        f'{HUB_PREFIX}ORG/NAME)')
    out = []
    for part in (p.strip() for p in paths.split(',') if p.strip()):
        if part.startswith(HUB_PREFIX):
            out.append(part)
            continue
        matches = sorted(glob.glob(os.path.expanduser(part)))
        if not matches:
            raise UserError(f'data.paths: nothing matches {part!r} (from {os.getcwd()})')
        out.extend(os.path.abspath(m) for m in matches)
    return out


def signature(sources: list[str]) -> list:
    """What identifies the sources' contents for the cache: files by path, size and modification
    time (a folder by all its files); datasets:NAME by its name (the Hub's copy is immutable per
    revision, and datasets caches it)."""
    out = []
    for source in sources:
        if source.startswith(HUB_PREFIX):
            out.append(source)
        elif os.path.isdir(source):
            out.append(text_files.signature(sorted(
                p for p in glob.glob(os.path.join(source, '**', '*'), recursive=True)
                if os.path.isfile(p))))
        else:
            out.append(text_files.signature([source]))
    return out


def held_out(record, val_fraction: float) -> bool:
    """Whether a record is in the eval split when eval is held out of data.paths: by the sha256
    of its canonical JSON, so identical records always fall on the same side."""
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 10_000 < val_fraction * 10_000


@dataclasses.dataclass
class Counts:
    """What became of a split's records (the report; none is dropped unseen)."""

    records: int = 0
    bad_skipped: int = 0
    first_bad: str = ''
    nothing_to_learn: int = 0  # dropped: no learnt token left after truncation
    truncated: int = 0  # longer than a window: cut to it


def tokenize_records(records: Iterator[Record], fmt: str, template, tokenizer, train_on: str,
                     bad_records: str, counts: Counts) -> Iterator[tuple[str, list, np.ndarray,
                                                                         np.ndarray]]:
    """(location, messages, ids, weights) of each good record, in order; bad ones raise a
    UserError naming them, or are skipped and counted. Records are rendered a chunk at a time
    and each chunk's texts encoded together (encode_batch, on every core outside the GIL) while
    the next chunk is rendered."""
    def rendered(chunk):
        out = []
        for location, record in chunk:
            counts.records += 1
            try:
                if isinstance(record, BadJson):
                    raise RecordError(record.message)
                messages = conversation(record, fmt)
                out.append((location, messages, *template.learnt_spans(messages, train_on)))
            except (RecordError, chat_template.ChatError) as e:
                skip_bad(location, e, bad_records, counts)
        return out

    def chunks():
        chunk = []
        for record in records:
            chunk.append(record)
            if len(chunk) == RENDER_CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def results(done, encodings):
        for (location, messages, _, spans), (ids, offsets) in zip(done, encodings.result()):
            yield location, messages, ids, chat_template.learnt(offsets, spans)

    with futures.ThreadPoolExecutor(1) as encoder:
        pending = None
        for chunk in chunks():
            done = rendered(chunk)
            encodings = encoder.submit(tokenizer.encode_chats, [text for _, _, text, _ in done])
            if pending:
                yield from results(*pending)
            pending = done, encodings
        if pending:
            yield from results(*pending)


def skip_bad(location: str, error: Exception, bad_records: str, counts) -> None:
    """data.chat.bad_records for one bad record: a UserError naming it, or counted (with the
    first one quoted) and skipped."""
    if bad_records == 'error':
        raise UserError(f'{location}: {error} (data.chat.bad_records=skip skips such '
                        'records)') from None
    counts.bad_skipped += 1
    counts.first_bad = counts.first_bad or f'{location}: {error}'


def chat_of(template, tokenizer, chat_config, report: dict) -> Chat:
    """The Chat of a built split report: the template, its stop ids, the held-out prompts with
    their references, and the per-split statistics."""
    generation = report['generation']
    return Chat(template, chat_template.stop_ids(template, tokenizer),
                prompts=tuple(np.asarray(g['prompt'], np.int32) for g in generation),
                references=tuple(g['reference'] for g in generation),
                questions=tuple(g['question'] for g in generation), scorer=chat_config.scorer,
                answer_tokens=chat_config.answer_tokens,
                stats={s: report[s] for s in ('train', 'eval')})


def check(data_config) -> None:
    c = data_config.chat
    for key, value, known in (('format', c.format, FORMATS),
                              ('bad_records', c.bad_records, BAD_RECORDS),
                              ('train_on', c.train_on, chat_template.TRAIN_ON)):
        if value not in known:
            raise UserError(f'data.chat.{key}={value!r} is not one of {list(known)}')
    if not 0 < data_config.val_fraction < 1:
        raise UserError(f'data.val_fraction={data_config.val_fraction} must be in (0, 1)')
    if data_config.text.seq_len < 2 or c.eval_generations < 0 or c.answer_tokens < 1:
        raise UserError('chat data needs data.text.seq_len >= 2, data.chat.eval_generations >= 0 '
                        'and data.chat.answer_tokens >= 1')
    from bigjax import chat_eval
    chat_eval.scorer(c.scorer)  # an unknown scorer fails before anything is read


def open_chat(data_config) -> Dataset:
    """data.name='chat': the conversations of data.paths (and data.chat.eval_paths)."""
    check(data_config)
    return conversations('chat', data_config, *file_records(data_config),
                         text_files.cache_dir(data_config, 'chat'))


def file_records(data_config) -> tuple[Callable, Callable, dict]:
    """(train records, eval records, what identifies them for the cache) of data.paths and
    data.chat.eval_paths: the eval split is those, or the records of data.paths whose digest
    falls in data.val_fraction."""
    if data_config.classes or data_config.train_per_class:
        raise UserError('data.classes and data.train_per_class select classification examples; '
                        f'{data_config.name} files have no classes')
    train_sources = expand(data_config.paths)
    eval_sources = expand(data_config.chat.eval_paths) if data_config.chat.eval_paths else []
    fraction = data_config.val_fraction

    def train_records() -> Iterator[Record]:
        for source in train_sources:
            for location, record in read(source, data_config.train_split):
                if eval_sources or not held_out(plain(record), fraction):
                    yield location, record

    def eval_records() -> Iterator[Record]:
        if eval_sources:
            for source in eval_sources:
                yield from read(source, data_config.eval_split)
            return
        for source in train_sources:
            for location, record in read(source, data_config.train_split):
                if held_out(plain(record), fraction):
                    yield location, record

    identity = {'sources': signature(train_sources), 'eval_sources': signature(eval_sources),
                'train_split': data_config.train_split, 'eval_split': data_config.eval_split,
                'val_fraction': fraction if not eval_sources else None}
    return train_records, eval_records, identity


def plain(record):
    return record.message if isinstance(record, BadJson) else record


def conversations(name: str, data_config, train_records: Callable[[], Iterator[Record]],
                  eval_records: Callable[[], Iterator[Record]], identity: dict,
                  directory) -> Dataset:
    """The Dataset (kind text_lm, packed windows with 'segments' and 'weights') of the records
    the two functions yield: the pipeline every chat source goes through."""
    c, t = data_config.chat, data_config.text
    tokenizer = chat_tokenizer(data_config)
    template = chat_template.resolve(c.template, tokenizer)
    length = t.seq_len + 1
    key = {**identity, 'format': c.format, 'template': digest(template.source),
           'special_tokens': dict(template.special_tokens), 'tokenizer': tokenizer.name,
           'seq_len': t.seq_len, 'train_on': c.train_on, 'pack': c.pack,
           'bad_records': c.bad_records, 'eval_generations': c.eval_generations,
           'answer_tokens': c.answer_tokens}

    def build(folder):
        reports = {}
        for split, records in (('train', train_records), ('eval', eval_records)):
            counts = Counts()
            packer = packing.Packer(length, text.token_dtype(tokenizer.vocab_size),
                                    tokenizer.pad_id, folder, prefix=f'{split}_', pack=c.pack)
            generation = []
            for location, messages, ids, weights in tokenize_records(
                    records(), c.format, template, tokenizer, c.train_on, c.bad_records, counts):
                if split == 'eval' and len(generation) < c.eval_generations:
                    generation.append(generation_example(messages, template, tokenizer))
                if len(ids) > length:
                    counts.truncated += 1
                    ids, weights = ids[:length], weights[:length]
                if not weights[1:].any():  # the first token is never a target
                    counts.nothing_to_learn += 1
                    continue
                packer.add(ids, weights)
            stats = packer.close()
            if not stats['windows']:
                raise UserError(f'the {split} split of {name} has no conversation left to learn '
                                f'from ({_describe(counts)})')
            reports[split] = {**dataclasses.asdict(counts), **stats}
            if split == 'eval':
                reports['generation'] = [g for g in generation if g is not None]
        return {}, reports

    arrays, report = cache.cached(directory, key, build)
    for split in ('train', 'eval'):
        log.info('%s %s: %s', name, split, _describe(Counts(**{
            k: v for k, v in report[split].items() if k in Counts.__dataclass_fields__}),
            report[split]))
    chat = chat_of(template, tokenizer, c, report)
    splits = {split: Split(len(arrays[f'{split}_tokens']), lambda split=split: {
        name: arrays[f'{split}_{name}'] for name in packing.ARRAYS}) for split in ('train', 'eval')}
    return Dataset(name, 'text_lm', splits['train'], splits['eval'], seq_len=t.seq_len,
                   vocab_size=tokenizer.vocab_size, tokenizer=tokenizer,
                   token_arrays=packing.ARRAYS, chat=chat)


def generation_example(messages: list[dict], template, tokenizer) -> dict | None:
    """A held-out prompt: the conversation before its last message, when that is an answer."""
    if messages[-1].get('role') != 'assistant' or 'content' not in messages[-1]:
        return None
    try:
        prompt = chat_template.prompt_ids(template, tokenizer, messages[:-1])
    except chat_template.ChatError:
        return None
    question = next((m.get('content', '') for m in reversed(messages[:-1])
                     if m.get('role') == 'user'), '')
    return {'prompt': prompt.tolist(), 'reference': messages[-1]['content'],
            'question': question}


def _describe(counts: Counts, stats: dict | None = None) -> str:
    parts = [f'{counts.records} records']
    if counts.bad_skipped:
        parts.append(f'{counts.bad_skipped} bad ones skipped (first: {counts.first_bad})')
    if counts.truncated:
        parts.append(f'{counts.truncated} truncated to data.text.seq_len + 1')
    if counts.nothing_to_learn:
        parts.append(f'{counts.nothing_to_learn} dropped with nothing left to learn')
    if stats:
        parts.append(f'{stats["examples"]} conversations in {stats["windows"]} windows '
                     f'({stats["examples"] / max(stats["windows"], 1):.2f} a window, '
                     f'{100 * stats["fill"]:.1f} % of tokens filled, '
                     f'{stats["learnt_tokens"]} tokens learnt)')
    return '; '.join(parts)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def chat_tokenizer(data_config) -> tokenizers.Tokenizer:
    """The tokenizer chat data is encoded with: a model's own (hf:FOLDER), bytes, or a BPE learnt
    from data.text.tokenizer_data (the pretraining corpus of the model being tuned)."""
    t = data_config.text
    tokenizers.check(t)
    if t.tokenizer == 'char':
        raise UserError("chat data needs a tokenizer that writes any text: data.text.tokenizer="
                        "'byte', 'bpe' (with data.text.tokenizer_data) or 'hf:FOLDER'")
    if t.tokenizer == 'bpe':
        if not t.tokenizer_data:
            raise UserError("chat data with data.text.tokenizer='bpe' uses the BPE learnt from "
                            'data.text.tokenizer_data (the pretraining corpus, e.g. '
                            "'python_stdlib'): set it, or use 'byte' or 'hf:FOLDER'")
        return datasets.learnt_tokenizer(data_config)
    return tokenizers.load(t.tokenizer)

