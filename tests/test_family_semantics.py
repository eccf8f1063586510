"""Fine-tuning semantics of the model families people fine-tune (Llama 3.x, Qwen3, Gemma,
Mistral): LoRA leaves an untied output layer and the embedding frozen, as peft does; documents,
prompts and lm-eval requests start as the family's tokenizer starts a text (its BOS, where it
adds one); vocabularies above 65,536 ids survive preparation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import config as config_lib
from bigjax import finetune, parallel, pytree, sample, train
from bigjax import plan as plan_lib
from bigjax.data import ArrayTrainIterator, tokenizers
from bigjax.errors import UserError

transformers = pytest.importorskip('transformers')
from hf_models import llama, saved, tokenizer_folder  # noqa: E402  (they import torch)

BOS, EOS = '<|begin_of_text|>', '<|end_of_text|>'
DOCUMENTS = ['def spam(eggs):\n    return [egg * 2 for egg in eggs]',
             'class Ham:\n    """A ham."""\n    size = 3',
             'for i in range(10):\n    print(i, spam(i))'] * 8


def llama3_tokenizer(folder, tokenizer) -> None:
    """`tokenizer` (a tokenizers.Tokenizer with BOS and EOS tokens) saved by transformers with
    Llama 3's post-processor: its BOS before every text."""
    from tokenizers import processors
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f'{BOS} $A', pair=f'{BOS} $A {BOS} $B:1',
                                      special_tokens=[(BOS, tokenizer.token_to_id(BOS))])])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS,
                                         eos_token=EOS).save_pretrained(folder)


def llama3_bpe(folder, texts) -> int:
    """A byte-level BPE with Llama 3's BOS and end of text, saved in `folder`; its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS, BOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    llama3_tokenizer(folder, tokenizer)
    return tokenizer.get_vocab_size()


def lora_config(folder, data_dir, **overrides):
    """configs/hf_finetune.py:FOLDER,smoke for 2 steps on DOCUMENTS as text files (one document
    each)."""
    data_dir.mkdir(exist_ok=True)
    for i, document in enumerate(DOCUMENTS):
        (data_dir / f'{i:02d}.py').write_text(document)
    config = config_lib.from_file(f'configs/hf_finetune.py:{folder},smoke')
    config.data.name, config.data.paths = 'text_files', str(data_dir / '*.py')
    config.data.data_dir = str(data_dir / 'cache')
    config.train.update(num_steps=2, eval_every=2, checkpoint_every=2)
    config.optim.warmup_steps = 0
    config.report.enabled = False
    config.update(overrides)
    return config


@pytest.fixture(scope='module')
def llama3_run(tmp_path_factory):
    """A tiny untied Llama with a Llama 3 tokenizer, LoRA-tuned by configs/hf_finetune.py:
    (folder, the transformers model, config, workdir, the run's plan and final state)."""
    root = tmp_path_factory.mktemp('llama3')
    folder = root / 'hf'
    model = saved(llama(vocab_size=llama3_bpe(folder, DOCUMENTS)), folder)
    config = lora_config(folder, root / 'data')
    train.run(config, root / 'run')
    plan, state, _ = plan_lib.load_state(config, root / 'run')
    return folder, model, config, root / 'run', plan, state


def moments(opt_state) -> int:
    """Numbers the optimizer keeps (Adam: two per trained parameter, and scalar counts)."""
    return sum(np.size(x) for x in pytree.flat(opt_state).values() if np.ndim(x) > 0)


def adapter_size(params) -> int:
    return sum(np.size(v) for n, v in pytree.flat(params).items() if finetune.ADAPTER.fullmatch(n))


def test_lora_leaves_an_untied_output_layer_and_the_embedding_frozen_without_optimizer_state(
        llama3_run):
    """The adapters trained; lm_head and embed_tokens are still transformers' own, bit for bit,
    and Adam keeps moments for the adapters only (an 8B model's 128k-row head would double)."""
    _, model, _, _, plan, state = llama3_run
    assert np.abs(np.asarray(state.params['encoder']['block0']['attention'][
        'qkv_lora_b'])).max() > 0
    np.testing.assert_array_equal(np.asarray(state.params['head']['kernel']),
                                  model.lm_head.weight.detach().numpy().T)
    np.testing.assert_array_equal(np.asarray(state.params['token_embedding']['embedding']),
                                  model.model.embed_tokens.weight.detach().numpy())
    trainable, _ = finetune.parameter_counts(state.params, plan.frozen)
    assert trainable == adapter_size(state.params) and moments(state.opt_state) == 2 * trainable


def test_lora_trained_trains_the_output_layer_as_peft_modules_to_save(llama3_run, tmp_path):
    """lora_trained=('head/kernel',): the run's optimizer moves the output layer too (and keeps
    its moments); the embedding still gets no update."""
    folder, _, _, _, _, state = llama3_run
    config = lora_config(folder, tmp_path / 'data', lora_trained=('head/kernel',))
    plan = plan_lib.plan(config, tmp_path / 'run')
    opt_state = jax.jit(plan.tx.init)(state.params)
    updates = pytree.flat(jax.jit(plan.tx.update)(jax.tree.map(jnp.ones_like, state.params),
                                                  opt_state, state.params)[0])
    assert np.abs(np.asarray(updates['head/kernel'])).min() > 0
    assert not np.asarray(updates['token_embedding/embedding']).any()
    trainable, _ = finetune.parameter_counts(state.params, plan.frozen)
    assert trainable == adapter_size(state.params) + np.size(state.params['head']['kernel'])
    assert moments(opt_state) == 2 * trainable
    config.lora_trained = ('lm_head',)  # peft's name: bigjax names it head/kernel
    with pytest.raises(UserError, match="lora_trained pattern 'lm_head' matches no parameter"):
        plan_lib.plan(config, tmp_path / 'run')


def test_documents_prompts_and_lm_eval_start_with_the_familys_bos(llama3_run, monkeypatch):
    """transformers' tokenizer(text) is what bigjax feeds the model for a prompt (--mode=sample,
    lm-eval's requests), and each training document is it followed by the end of text."""
    folder, _, config, workdir, plan, state = llama3_run
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    bos, eos = theirs.convert_tokens_to_ids([BOS, EOS])
    windows = np.asarray(plan.dataset.train.arrays['tokens'])
    stream = np.concatenate([windows[0], windows[1:, 1:].reshape(-1)])
    documents = [i for d in DOCUMENTS[:3] for i in theirs(d)['input_ids'] + [eos]]
    assert documents[0] == bos
    np.testing.assert_array_equal(stream[:len(documents)], documents)

    fed = []
    monkeypatch.setattr(sample, 'generate_any_length',
                        lambda model, params, prompt_BT, *args, **kwargs: fed.append(
                            np.asarray(prompt_BT)) or prompt_BT)
    sample.from_workdir(config, workdir, DOCUMENTS[1], num_tokens=4, temperature=0.0, top_k=0)
    np.testing.assert_array_equal(fed[0][0], theirs(DOCUMENTS[1])['input_ids'])

    harness_model = pytest.importorskip('bigjax.harness_model')
    lm = harness_model.BigjaxLM(plan=plan, params=state.params)
    assert lm.prefix_token_id == bos
    for text in (DOCUMENTS[0], BOS + DOCUMENTS[0]):  # a text that starts with it gets no second
        assert lm.tok_encode(text) == theirs(DOCUMENTS[0])['input_ids']
    assert lm.tok_encode(DOCUMENTS[0], add_special_tokens=False) == theirs(
        DOCUMENTS[0], add_special_tokens=False)['input_ids']


def test_families_without_bos_start_documents_and_prompts_after_the_end_of_text(tmp_path):
    """GPT-2's and Qwen's tokenizers put nothing before a text: a document is its ids and the end
    of text, and a prompt starts after an end of text, as documents follow one."""
    tokenizer_folder(tmp_path, DOCUMENTS)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = tokenizers.PretrainedTokenizer(str(tmp_path))
    assert ours.bos_id is None and tokenizers.prompt_start(ours) == ours.eos_id
    [document] = tokenizers.encode_documents(ours, DOCUMENTS[:1])
    assert document.tolist() == theirs(DOCUMENTS[0])['input_ids']
    for own in (tokenizers.ByteTokenizer(), tokenizers.CharTokenizer('abc')):
        assert own.bos_id is None and tokenizers.prompt_start(own) == tokenizers.EOS_ID


def large_vocabulary_folder(folder, words: list[str]) -> None:
    """A Llama 3-like tokenizer of 70,002 ids: one per word, then BOS (id 70,000) and EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel({**vocab, '[UNK]': len(vocab)}, unk_token='[UNK]'))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens([BOS, EOS])
    llama3_tokenizer(folder, tokenizer)


@pytest.mark.parametrize('kind', ['bpe', 'hf'])
def test_ids_above_65535_survive_preparation_into_the_models_batch(kind, tmp_path):
    """A vocabulary of more than 65,536 ids (Llama 3: 128,256): bigjax's own BPE learnt with
    data.text.vocab_size=66,000, or a model's own; every id, BOS included, reaches the model's
    input as the tokenizer wrote it."""
    if kind == 'bpe':  # 8,000 random words: merges enough for 66,000 ids
        rng = np.random.default_rng(0)
        words = [''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz'), 20)) for _ in range(8000)]
    else:
        words = [f'w{i}' for i in range(69_999)]
        large_vocabulary_folder(tmp_path / 'hf', words)
        words = words[-3000:]  # ids above 65,535
    documents = [' '.join(words[i:i + 100]) for i in range(0, len(words), 100)]
    (tmp_path / 'corpus.txt').write_text('\n'.join(documents))
    config = config_lib.default_config()
    config.data.update(name='text_files', paths=str(tmp_path / 'corpus.txt'),
                       data_dir=str(tmp_path / 'cache'))
    config.data.text.update(tokenizer='bpe' if kind == 'bpe' else f'hf:{tmp_path / "hf"}',
                            vocab_size=66_000, seq_len=16, whitespace='keep')
    config.model.name = 'transformer_lm'
    config.model.transformer.update(width=8, depth=1, num_heads=2, mlp_dim=16, max_len=16)
    config.train.batch_size = 8
    plan = plan_lib.plan(config, tmp_path / 'run')
    tokenizer = plan.dataset.tokenizer
    assert tokenizer.vocab_size > 65_536 and plan.model.vocab_size == tokenizer.vocab_size
    windows = np.asarray(plan.dataset.train.arrays['tokens'])
    text = '\n'.join(documents)  # the file: one document
    expected = (tokenizer.encode_batch([text])[0] if kind == 'bpe' else
                transformers.AutoTokenizer.from_pretrained(tmp_path / 'hf')(text)['input_ids'])
    np.testing.assert_array_equal(windows[0], expected[:17])  # with BOS 70,000 for 'hf'
    assert windows.max() > 65_535
    batch = next(ArrayTrainIterator({'tokens': windows}, 8, seed=0))
    inputs = plan.task().inputs(parallel.global_batch(batch, plan.mesh), None, True)
    np.testing.assert_array_equal(np.asarray(inputs), batch['tokens'][:, :-1])
    assert np.asarray(inputs).max() > 65_535
