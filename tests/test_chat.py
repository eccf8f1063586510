"""Chat data (bigjax/data/chat.py, chat_template.py, packing.py): records in the common formats,
templates rendered and tokenized exactly as transformers' apply_chat_template does (three
published families), loss weights on the answers only, bad records named, and packing."""

import json

import numpy as np
import pytest

from bigjax import config as config_lib
from bigjax.data import chat, chat_template, packing, tokenizers
from bigjax.errors import UserError
from chat_templates import END_OF_TURN, FAMILIES

transformers = pytest.importorskip('transformers')

CORPUS = ['Hello, how are you? I am fine, thank you.', 'def spam(eggs):\n    return eggs * 2\n',
          'The capital of France is Paris. Ünïcödé text, tabs\tand  spaces.'] * 30

CONVERSATIONS = [
    [{'role': 'user', 'content': 'What is 2 + 2?'}, {'role': 'assistant', 'content': '4'}],
    [{'role': 'system', 'content': 'You answer briefly.'},
     {'role': 'user', 'content': 'Name a city in France.'},
     {'role': 'assistant', 'content': 'Paris.'},
     {'role': 'user', 'content': '  And one in Ünïcödé land?\n'},
     {'role': 'assistant', 'content': 'Ümläut City,\n  with\ttabs.'}],
]


def family_folder(tmp_path, family: str):
    """A tokenizer of `family`'s kind (byte-level BPE, or SentencePiece-like for Gemma) with its
    special tokens, its BOS before every text where it names one (as Llama 3's, Gemma's and
    Mistral's tokenizers put it) and published chat template, saved by transformers."""
    from tokenizers import (Tokenizer, decoders, models, normalizers, pre_tokenizers,
                            processors, trainers)
    template, specials, named, sentencepiece = FAMILIES[family]
    if sentencepiece:
        tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token=None))
        tokenizer.normalizer = normalizers.Replace(' ', '▁')
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement='▁',
                                                           prepend_scheme='never')
        tokenizer.decoder = decoders.Sequence([decoders.Replace('▁', ' '), decoders.ByteFallback(),
                                               decoders.Fuse()])
        alphabet = [f'<0x{b:02X}>' for b in range(256)]
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = []
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials + alphabet, show_progress=False,
        initial_alphabet=[] if sentencepiece else pre_tokenizers.ByteLevel.alphabet()))
    if 'bos_token' in named:
        bos = named['bos_token']
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f'{bos} $A', special_tokens=[(bos, tokenizer.token_to_id(bos))])
    folder = tmp_path / family
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer,
                                                        chat_template=template, **named)
    hf_tokenizer.save_pretrained(folder)
    return folder, transformers.AutoTokenizer.from_pretrained(folder)


def cases(family: str):
    """(conversation, add_generation_prompt) pairs the family's template accepts."""
    for messages in CONVERSATIONS:
        if family == 'gemma2':  # Gemma refuses a system message
            messages = [m for m in messages if m['role'] != 'system']
        yield messages, False
        yield messages[:-1], True


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_templates_render_and_tokenize_exactly_as_transformers(family, tmp_path):
    folder, theirs = family_folder(tmp_path, family)
    ours = tokenizers.PretrainedTokenizer(str(folder))
    assert [i for i in [ours.bos_id] if i is not None] == theirs('')['input_ids']  # its BOS
    template = chat_template.resolve('', ours)
    assert template.source == FAMILIES[family][0]  # read from chat_template.jinja
    for messages, generation_prompt in cases(family):
        text = template.render(messages, add_generation_prompt=generation_prompt)
        assert text == theirs.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=generation_prompt)
        expected = theirs.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                              return_dict=False)
        np.testing.assert_array_equal(ours.encode_chats([text])[0][0], expected)
        assert list(expected).count(ours.bos_id) <= 1  # a template's own BOS is not doubled
        if generation_prompt:
            np.testing.assert_array_equal(chat_template.prompt_ids(template, ours, messages),
                                          expected)


@pytest.mark.parametrize('family', ['qwen2.5', 'llama3.1', 'gemma2'])
def test_only_the_answers_and_their_end_of_turn_are_learnt(family, tmp_path):
    """Golden mask: the learnt tokens are, turn by turn, exactly each answer's text (as the
    template writes it) followed by the template's end of turn; the first answer token is learnt
    and the token before it (the end of the generation prompt) is not."""
    folder, theirs = family_folder(tmp_path, family)
    ours = tokenizers.PretrainedTokenizer(str(folder))
    template = chat_template.resolve('', ours)
    messages = [m for m in CONVERSATIONS[1] if family != 'gemma2' or m['role'] != 'system']
    ids, weights = chat_template.encode(template, ours, messages, 'assistant')
    runs = np.split(np.arange(len(ids)), np.flatnonzero(np.diff(weights)) + 1)
    learnt = [theirs.decode(ids[run]) for run in runs if weights[run[0]]]
    trailing = {'qwen2.5': '<|im_end|>\n', 'llama3.1': '<|eot_id|>',
                'gemma2': '<end_of_turn>\n'}[family]
    answers = [m['content'] for m in messages if m['role'] == 'assistant']
    if family != 'qwen2.5':  # Llama 3.1 and Gemma trim the contents
        answers = [a.strip() for a in answers]
    assert learnt == [a + trailing for a in answers]
    prompt = chat_template.prompt_ids(template, ours, messages[:-1])
    assert weights[len(prompt)] == 1 and weights[len(prompt) - 1] == 0
    np.testing.assert_array_equal(ids[:len(prompt)], prompt)
    _, last = chat_template.encode(template, ours, messages, 'last')
    assert last.sum() < weights.sum() and (last <= weights).all() and last[-1] == weights[-1]
    assert chat_template.encode(template, ours, messages, 'all')[1].all()
    end_of_turn = ours.encode_chats([END_OF_TURN[family]])[0][0]
    assert chat_template.stop_ids(template, ours) == tuple(sorted({ours.eos_id,
                                                                   int(end_of_turn[0])}))


def test_generation_marks_give_transformers_assistant_masks(tmp_path):
    folder, theirs = family_folder(tmp_path, 'chatml_generation')
    ours = tokenizers.PretrainedTokenizer(str(folder))
    template = chat_template.resolve('', ours)
    assert template.marks_generation
    for messages in CONVERSATIONS:
        ids, weights = chat_template.encode(template, ours, messages, 'assistant')
        expected = theirs.apply_chat_template(messages, return_assistant_tokens_mask=True)
        np.testing.assert_array_equal(ids, expected['input_ids'])
        np.testing.assert_array_equal(weights, expected['assistant_masks'])


def test_bigjax_tokenizers_have_a_default_template_with_special_tokens():
    """Byte-level: '<eos>' starts the conversation and ends each turn (id 1, the end of
    document); the answer and its end are learnt; a '<eos>' the template writes is the token."""
    tokenizer = tokenizers.ByteTokenizer()
    template = chat_template.resolve('', tokenizer)
    messages = CONVERSATIONS[0]
    text = template.render(messages)
    assert text == '<eos><|user|>\nWhat is 2 + 2?<eos><|assistant|>\n4<eos>'
    ids, weights = chat_template.encode(template, tokenizer, messages, 'assistant')
    assert ids[0] == tokenizers.EOS_ID and ids[-1] == tokenizers.EOS_ID
    assert (ids == tokenizers.EOS_ID).sum() == 3 and len(ids) == len(text) - 3 * 4
    assert tokenizer.decode(ids[weights == 1]) == '4' and weights[-2:].tolist() == [1, 1]
    assert chat_template.stop_ids(template, tokenizer) == (tokenizers.EOS_ID,)
    plain = chat_template.resolve('plain', tokenizer)
    assert plain.render(messages) == '<eos>What is 2 + 2?4<eos>'


@pytest.mark.parametrize('record, expected', [
    ({'messages': [{'role': 'user', 'content': 'Q'}, {'role': 'assistant', 'content': 'A'}]},
     [('user', 'Q'), ('assistant', 'A')]),
    ({'conversations': [{'from': 'human', 'value': 'Q'}, {'from': 'gpt', 'value': 'A'}]},
     [('user', 'Q'), ('assistant', 'A')]),
    ({'prompt': 'Q', 'completion': 'A'}, [('user', 'Q'), ('assistant', 'A')]),
    ({'prompt': [{'role': 'system', 'content': 'S'}, {'role': 'user', 'content': 'Q'}],
      'completion': [{'role': 'assistant', 'content': 'A'}]},
     [('system', 'S'), ('user', 'Q'), ('assistant', 'A')]),
    ({'instruction': 'Add them.', 'input': '2, 3', 'output': '5'},
     [('user', 'Add them.\n\n2, 3'), ('assistant', '5')]),
    ({'instruction': 'Say hi.', 'input': '', 'output': 'Hi'},
     [('user', 'Say hi.'), ('assistant', 'Hi')]),
    ({'instruction': 'Say hi.', 'output': 'Hi'}, [('user', 'Say hi.'), ('assistant', 'Hi')]),
])
def test_each_format_becomes_a_conversation(record, expected):
    messages = chat.conversation(record, 'auto')
    assert [(m['role'], m['content']) for m in messages] == expected


def chat_config(tmp_path, paths: str, seq_len: int = 63, **chat_options):
    config = config_lib.default_config()
    config.data.name = 'chat'
    config.data.paths = paths
    config.data.data_dir = str(tmp_path / 'data')
    config.data.text.seq_len = seq_len
    config.data.chat.update(chat_options)
    return config


def write_jsonl(path, records):
    path.write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in records))
    return str(path)


def qa(i: int) -> dict:
    return {'messages': [{'role': 'user', 'content': f'{i} + 1?'},
                         {'role': 'assistant', 'content': str(i + 1)}]}


@pytest.mark.parametrize('bad, message', [
    ('{"messages": [', r'train.jsonl:3: not JSON'),
    ({'messages': [{'role': 'user', 'content': 'Q'}, {'role': 'assistant', 'content': 7}]},
     r'train.jsonl:3: messages\[1\].content must be a string, not int'),
    ({'messages': [{'role': 'user', 'content': 'Q'}]},
     r'train.jsonl:3: no assistant message to learn'),
    ({'question': 'Q', 'answer': 'A'},
     r"train.jsonl:3: no chat fields .* \['answer', 'question'\]"),
    ({'instruction': 'Q'}, r'train.jsonl:3: no chat fields'),
    ({'instruction': 'Q', 'output': None}, r'train.jsonl:3: output must be a string, not missing'),
])
def test_a_bad_record_is_one_line_naming_file_line_and_field_or_skipped_and_counted(
        tmp_path, bad, message):
    path = write_jsonl(tmp_path / 'train.jsonl', [qa(1), qa(2), bad] + [qa(i) for i in range(40)])
    config = chat_config(tmp_path, path, eval_paths=write_jsonl(tmp_path / 'eval.jsonl',
                                                                 [qa(5), qa(6)]))
    with pytest.raises(UserError, match=message + r'.*bad_records=skip') as error:
        chat.open_chat(config.data)
    assert '\n' not in str(error.value)
    config.data.chat.bad_records = 'skip'
    dataset = chat.open_chat(config.data)
    train = dataset.chat.stats['train']
    assert (train['records'], train['bad_skipped'], train['examples']) == (43, 1, 42)
    assert train['first_bad'].startswith(f'{path}:3: ')


def test_truncated_conversations_are_cut_and_those_left_without_an_answer_dropped(tmp_path):
    """seq_len 47: a conversation whose answer starts past the window has nothing left to learn
    and is dropped; one that only runs past it is cut; both are counted."""
    long_question = {'messages': [{'role': 'user', 'content': 'x' * 40},
                                  {'role': 'assistant', 'content': 'y'}]}
    long_answer = {'messages': [{'role': 'user', 'content': 'Q'},
                                {'role': 'assistant', 'content': 'z' * 40}]}
    path = write_jsonl(tmp_path / 'train.jsonl', [long_question, long_answer, qa(1)])
    config = chat_config(tmp_path, path, seq_len=47, eval_paths=path)
    dataset = chat.open_chat(config.data)
    stats = dataset.chat.stats['train']
    assert (stats['truncated'], stats['nothing_to_learn'], stats['examples']) == (2, 1, 2)
    arrays = dataset.train.arrays
    assert arrays['tokens'].shape[1] == 48 and set(arrays) == set(packing.ARRAYS)
    tokens, weights = np.asarray(arrays['tokens']), np.asarray(arrays['weights'])
    decoded = [tokenizers.ByteTokenizer().decode(t[w == 1]) for t, w in zip(tokens, weights)]
    # 26 tokens of prompt leave 22 of the 40 z's (and no end of turn); 33 + 48 > 48: 2 windows
    assert sorted(decoded) == ['2', 'z' * 22]


def test_json_parquet_and_saved_datasets_give_the_same_windows(tmp_path):
    import datasets as hf_datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    records = [{'prompt': f'{i} + 1?', 'completion': str(i + 1)} for i in range(60)]
    jsonl = write_jsonl(tmp_path / 'a.jsonl', records)
    (tmp_path / 'a.json').write_text(json.dumps(records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / 'a.parquet')
    hf_datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / 'saved'))
    windows = []
    for source in (jsonl, tmp_path / 'a.json', tmp_path / 'a.parquet', tmp_path / 'saved'):
        dataset = chat.open_chat(chat_config(tmp_path, str(source)).data)
        windows.append({split: {k: np.asarray(v) for k, v in arrays.items()}
                        for split, arrays in (('train', dataset.train.arrays),
                                              ('eval', dataset.eval.arrays))})
    for other in windows[1:]:
        for split in ('train', 'eval'):
            for name in packing.ARRAYS:
                np.testing.assert_array_equal(other[split][name], windows[0][split][name])
    held_out = windows[0]['eval']['segments'].max(1).sum()
    assert 0 < held_out < 20  # about data.val_fraction of the 60 records, by their digest


def test_packed_windows_keep_conversations_whole_and_apart(monkeypatch):
    """First-fit packing: every example lands whole in one window, in a segment of its own with
    its weights; padding is segment 0 with weight 0; it fills more than packing one window at a
    time does; pack=False gives each example a window."""
    import tempfile

    from etils import epath
    rng = np.random.default_rng(0)
    examples = [(rng.integers(2, 100, n).astype(np.int32), (rng.random(n) < 0.5).astype(np.uint8))
                for n in rng.integers(3, 30, 200)]
    fills, first_fit = {}, packing.OPEN_WINDOWS
    for pack, open_windows in ((True, 1), (True, first_fit), (False, 0)):
        monkeypatch.setattr(packing, 'OPEN_WINDOWS', open_windows)
        with tempfile.TemporaryDirectory() as folder:
            packer = packing.Packer(33, np.uint16, 0, epath.Path(folder), pack=pack)
            for ids, weights in examples:
                packer.add(ids, weights)
            stats = packer.close()
            arrays = {name: np.load(f'{folder}/{name}.npy') for name in packing.ARRAYS}
        found = []
        for tokens, segments, weights in zip(*(arrays[n] for n in packing.ARRAYS)):
            assert (np.diff(segments[segments > 0]) >= 0).all()
            assert (weights[segments == 0] == 0).all() and (tokens[segments == 0] == 0).all()
            for segment in np.unique(segments[segments > 0]):
                where = segments == segment
                found.append((tokens[where].tolist(), weights[where].tolist()))
        assert sorted(found) == sorted((i.tolist(), w.tolist()) for i, w in examples)
        assert stats['examples'] == 200 and stats['windows'] == len(arrays['tokens'])
        fills[open_windows] = stats['fill']
        if not pack:
            assert stats['windows'] == 200
    assert fills[0] < 0.6 < fills[1] < fills[first_fit] - 0.1  # 0.51, 0.73, 0.88


def test_the_offline_chat_study_tunes_the_pretrained_lm_and_scores_its_answers(tmp_path):
    """experiments/transfer.py --task=chat --smoke --before: the LM pretrained on the stdlib is
    instruction-tuned on python_exceptions_chat (16 clauses per exception: 112 conversations),
    from scratch too, and the pretrained LM is scored before any labelled step; each run answers
    the held-out clauses and reports answer_exact_match beside the answer-only loss."""
    import importlib.util

    from bigjax import plan as plan_lib
    from conftest import REPO, load_config
    spec = importlib.util.spec_from_file_location('transfer', REPO / 'experiments' / 'transfer.py')
    transfer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(transfer)
    results = transfer.run('chat', str(tmp_path), [0], smoke=True, before=True)
    assert set(results) == {'before', 0} and set(results[0]) == {'finetune', 'scratch'}
    for result in (results['before'], *results[0].values()):
        assert 0 <= result['answer_exact_match'] <= 1 and np.isfinite(result['loss'])
    assert results[0]['finetune']['loss'] != results[0]['scratch']['loss']
    config = load_config('chat_exceptions', 'finetune,smoke')
    config.init_from.path = str(tmp_path / 'pretrain')
    run = plan_lib.plan(config, tmp_path / 'unused')
    assert 'token_embedding/embedding' in run.load_plan.loaded and not run.load_plan.fresh
    chat_data = run.dataset.chat
    assert chat_data.stats['train']['examples'] == 112 and len(chat_data.references) == 16
    assert set(chat_data.references) <= set(
        __import__('bigjax.data.python_exceptions', fromlist=['EXCEPTIONS']).EXCEPTIONS)
    assert 'answer_exact_match' in transfer.table(results, transfer.TASKS['chat'][1])
