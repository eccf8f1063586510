"""Hugging Face GPT-2 and Llama-family checkpoints in and out (bigjax/hf.py), checked against
transformers' own forward pass on tiny random models built and saved here (no download)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from bigjax import hf, hf_families, pytree
from bigjax.data import tokenizers
from bigjax.errors import UserError
from bigjax.models.transformer import TransformerConfig, TransformerLM

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
from hf_models import family, llama, old_form, saved, tokenizer_folder  # noqa: E402

TOKENS = np.array([[5, 17, 3, 99, 42, 0, 8, 64, 23, 11, 7, 2],
                   [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])


def gpt2():
    return transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=32, vocab_size=100)


def qwen2():
    return transformers.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                    max_position_embeddings=64, tie_word_embeddings=True)


def torch_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.numpy()


def bigjax_logits(params, options: dict, **model_options) -> np.ndarray:
    options = dict(options, **model_options)
    vocab_size = options.pop('vocab_size')
    model = TransformerLM(TransformerConfig(**options), vocab_size)
    return np.asarray(model.apply({'params': params}, TOKENS, train=False))


def assert_close(actual, expected):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual / scale, expected / scale, atol=1e-4, rtol=0)


@pytest.mark.parametrize('family', ['gpt2', 'llama', 'llama_biases', 'qwen2'])
def test_imported_models_give_transformers_logits_and_export_back(family, tmp_path):
    config = {'gpt2': gpt2, 'llama': llama, 'qwen2': qwen2,
              'llama_biases': lambda: llama(attention_bias=True, mlp_bias=True)}[family]()
    model = saved(config, tmp_path / 'hf')
    expected = torch_logits(model)
    hf_config = hf.read_config(tmp_path / 'hf')
    options = hf_families.transformer_options(hf_config)
    params = hf.to_params(hf.Tensors(tmp_path / 'hf'), hf_config)
    assert_close(bigjax_logits(params, options), expected)
    scanned = hf.to_params(hf.Tensors(tmp_path / 'hf'), hf_config, scan_layers=True)
    assert_close(bigjax_logits(scanned, options, scan_layers=True), expected)

    out = tmp_path / 'exported'
    out.mkdir()
    exported_config = hf_families.hf_config({k: v for k, v in options.items() if k != 'vocab_size'},
                                   options['vocab_size'])
    (out / 'config.json').write_text(json.dumps(exported_config))
    hf.write_safetensors(out / 'model.safetensors', hf.from_params(scanned, exported_config))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert_close(torch_logits(reloaded), expected)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_a_bigjax_model_without_biases_exports_as_gpt2_with_zero_biases(scan_layers, tmp_path):
    """export.hf_model on a GPT-2-like model with no biases (the default bias=()), its blocks
    one by one or scanned (stacked on a layer axis): transformers loads it with bigjax's logits."""
    from types import SimpleNamespace

    from bigjax import export
    cfg = TransformerConfig(width=32, depth=2, num_heads=4, mlp_dim=64, max_len=16,
                            scan_layers=scan_layers)
    model = TransformerLM(cfg, tokenizers.ByteTokenizer.vocab_size)
    params = nn.unbox(model.init(jax.random.key(0), TOKENS, train=False)['params'])
    assert cfg.bias == () and hf.scanned(pytree.flat(params)) == scan_layers
    plan = SimpleNamespace(dataset=SimpleNamespace(  # what hf_model reads of a run's plan
        vocab_size=tokenizers.ByteTokenizer.vocab_size, tokenizer=tokenizers.ByteTokenizer(),
        chat=None))
    options = {field: getattr(cfg, field) for field in cfg.__dataclass_fields__}
    summary = export.hf_model(plan, params, options, tmp_path)
    assert summary.startswith('a Hugging Face gpt2 model')
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert_close(torch_logits(reloaded), np.asarray(model.apply({'params': params}, TOKENS,
                                                                train=False)))


FAMILIES = ['llama3', 'llama_linear', 'qwen3_yarn', 'qwen3', 'mistral', 'gemma2', 'gemma3']


@pytest.mark.parametrize('name', FAMILIES)
def test_todays_families_give_transformers_logits_and_generations_and_export_back(name,
                                                                                  tmp_path):
    """Each family with its quirks binding on 12-token rows (rope scaling past its original
    context, windows of 5, soft caps, query/key norms, head widths of their own): logits plain
    and scanned, greedy generation through the key/value cache token for token, and the export
    loaded back by transformers; the CPU kernel (attention='fused') too. The config's old
    top-level form maps to the same options."""
    from bigjax import sample
    model = saved(family(name), tmp_path / 'hf')
    expected = torch_logits(model)
    hf_config = hf.read_config(tmp_path / 'hf')
    options = hf_families.transformer_options(hf_config)
    assert hf_families.transformer_options(old_form(hf_config)) == options
    params = hf.to_params(hf.Tensors(tmp_path / 'hf'), hf_config)
    assert_close(bigjax_logits(params, options), expected)
    assert_close(bigjax_logits(params, options, attention='fused'), expected)  # C++ kernel
    scanned = hf.to_params(hf.Tensors(tmp_path / 'hf'), hf_config, scan_layers=True)
    assert_close(bigjax_logits(scanned, options, scan_layers=True), expected)

    vocab_size = options['vocab_size']
    lm = TransformerLM(TransformerConfig(**{k: v for k, v in options.items()
                                            if k != 'vocab_size'}, scan_layers=True), vocab_size)
    ours = sample.generate(lm, scanned, jnp.asarray(TOKENS[:, :4]), jax.random.key(0),
                           num_tokens=8, temperature=0.0, top_k=0)
    with torch.no_grad():
        theirs = model.generate(torch.tensor(TOKENS[:, :4]), max_new_tokens=8, do_sample=False,
                                min_new_tokens=8, pad_token_id=0)
    np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())

    out = tmp_path / 'exported'
    out.mkdir()
    exported_config = hf_families.hf_config(
        {k: v for k, v in options.items() if k != 'vocab_size'}, vocab_size)
    assert exported_config['model_type'] == hf_config['model_type']
    (out / 'config.json').write_text(json.dumps(exported_config))
    hf.write_safetensors(out / 'model.safetensors', hf.from_params(scanned, exported_config))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert_close(torch_logits(reloaded), expected)


def test_a_mistral_without_a_sliding_window_attends_to_every_token_as_transformers_does(
        tmp_path):
    """sliding_window unset (null): every layer global, transformers' logits, and the export
    (a Llama, which has no window) loads back with them."""
    config = family('mistral')
    config.sliding_window = None
    model = saved(config, tmp_path / 'hf')
    expected = torch_logits(model)
    hf_config = hf.read_config(tmp_path / 'hf')
    assert hf_config['model_type'] == 'mistral' and hf_config['sliding_window'] is None
    options = hf_families.transformer_options(hf_config)
    assert (options['window'], options['global_every']) == (0, 0)
    params = hf.to_params(hf.Tensors(tmp_path / 'hf'), hf_config, scan_layers=True)
    assert_close(bigjax_logits(params, options, scan_layers=True), expected)

    out = tmp_path / 'exported'
    out.mkdir()
    vocab_size = options.pop('vocab_size')
    exported_config = hf_families.hf_config(options, vocab_size)
    assert exported_config['model_type'] == 'llama'
    (out / 'config.json').write_text(json.dumps(exported_config))
    hf.write_safetensors(out / 'model.safetensors', hf.from_params(params, exported_config))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert_close(torch_logits(reloaded), expected)


def test_published_configs_in_the_old_form_keep_their_rotary_base_and_scaling():
    """Hub config.json files carry rope_theta / rope_scaling at the top (tests/hf_configs): read
    as such, not as rotary base 10,000 unscaled."""
    def options(name):
        path = epath.Path(__file__).parent / 'hf_configs' / name / 'config.json'
        return hf_families.transformer_options(json.loads(path.read_text()))
    smol = options('SmolLM2-135M')
    assert (smol['rope_theta'], smol['rope_scaling']) == (100_000.0, 'none')
    llama3 = options('Llama-3.2-1B')
    assert (llama3['rope_theta'], llama3['rope_scaling'], llama3['rope_factor'],
            llama3['rope_original_max_len'], llama3['rope_low_freq_factor'],
            llama3['rope_high_freq_factor']) == (500_000.0, 'llama3', 32.0, 8192, 1.0, 4.0)
    gemma = options('gemma-3-1b-it')
    assert (gemma['rope_theta'], gemma['rope_local_theta'], gemma['global_every'],
            gemma['window']) == (1_000_000.0, 10_000.0, 6, 512)


@pytest.mark.parametrize('config, message', [
    (lambda: transformers.BertConfig(), "model_type 'bert' is not supported"),
    (lambda: llama(rope_parameters={'rope_type': 'dynamic', 'factor': 2.0, 'rope_theta': 1e4}),
     "rope_type='dynamic'"),
    (lambda: llama(hidden_act='gelu'), "hidden_act='gelu'"),
    (lambda: transformers.GPT2Config(activation_function='relu'), "activation_function='relu'"),
    (lambda: transformers.Qwen2Config(use_sliding_window=True, sliding_window=16,
                                      max_window_layers=2, num_hidden_layers=4),
     'layer_types='),
    (lambda: transformers.Gemma3TextConfig(use_bidirectional_attention=True),
     'use_bidirectional_attention=True'),
])
def test_what_bigjax_cannot_compute_is_a_one_line_error(config, message):
    with pytest.raises(UserError, match=message.replace('(', r'\(')) as error:
        hf_families.transformer_options(config().to_dict())
    assert '\n' not in str(error.value)


def test_fine_tune_a_hugging_face_gemma_3_with_its_own_tokenizer(tmp_path):
    """configs/hf_finetune.py:FOLDER,smoke on a tiny Gemma 3 (local and global layers, query/key
    norms, GeGLU): the weights load, the text is tokenized by the model's tokenizer (documents
    joined by its end of text), LoRA trains the adapters only, sampling decodes with it, and the
    export loads back into transformers."""
    from bigjax import config as config_lib
    from bigjax import export, sample, train
    from bigjax import plan as plan_lib
    corpus = ['def spam(eggs):\n    return [egg * 2 for egg in eggs]\n',
              'class Ham:\n    """A ham."""\n    size = 3\n'] * 40
    folder = tmp_path / 'hf'
    vocab_size = tokenizer_folder(folder, corpus)
    model = saved(family('gemma3', vocab_size=vocab_size), folder)
    config = config_lib.from_file(f'configs/hf_finetune.py:{folder},smoke')
    workdir = tmp_path / 'run'
    train.run(config, workdir)
    page = (workdir / 'report.html').read_text()
    assert 'Training documents' in page and 'token_coverage' in page  # with its tokenizer

    plan, state, _ = plan_lib.load_state(config, workdir)
    tokens = np.asarray(plan.dataset.train.arrays['tokens'])
    assert plan.dataset.tokenizer.eos_id == 0 and (tokens == 0).any() and tokens.max() > 250
    up = model.model.layers[1].mlp.up_proj.weight.detach().numpy().T
    np.testing.assert_array_equal(np.asarray(state.params['encoder']['block1']['mlp']['up'][
        'kernel']), up)  # loaded, and frozen under LoRA
    assert np.abs(np.asarray(state.params['encoder']['block1']['attention'][
        'qkv_lora_b'])).max() > 0  # the adapters trained
    text = sample.from_workdir(config, workdir, 'def ', num_tokens=8, temperature=0.0, top_k=0)
    summary = export.export(config, workdir, tmp_path / 'out', 'hf')
    assert 'gemma3_text model, with its tokenizer (LoRA adapters merged)' in summary
    exported_tokenizer = tokenizers.PretrainedTokenizer(str(tmp_path / 'out'))
    assert exported_tokenizer.eos_id == 0  # its own, again
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'out').eval()
    merged = plan.model.apply({'params': state.params}, TOKENS % vocab_size, train=False)
    with torch.no_grad():
        logits = reloaded(torch.tensor(TOKENS % vocab_size)).logits.numpy()
        # The sample is the fine-tuned model's greedy continuation, decoded by its tokenizer.
        prompt = [0, *exported_tokenizer.encode_batch(['def '])[0]]  # after an end of text
        greedy = reloaded.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(prompt):].numpy()
    assert_close(logits, np.asarray(merged))
    assert text == exported_tokenizer.decode(greedy)


def test_a_models_own_tokenizer_round_trips_counts_bytes_and_names_its_ids(tmp_path):
    vocab_size = tokenizer_folder(tmp_path, ['def spam(eggs):\n    return eggs\n'] * 20)
    tokenizer = tokenizers.PretrainedTokenizer(str(tmp_path))
    assert (tokenizer.eos_id, tokenizer.pad_id, tokenizer.vocab_size) == (0, 0, vocab_size)
    text = 'def ünïcode(x):\n    return x  # <|endoftext|> written in a document is text'
    ids = tokenizer.encode_batch([text])[0]
    assert 0 not in ids and tokenizer.decode(ids) == text
    assert tokenizer.token_lengths()[0][ids].sum() == len(text.encode())
    with pytest.raises(UserError, match='no tokenizer.json there'):
        tokenizers.PretrainedTokenizer(str(tmp_path / 'nothing'))
    with pytest.raises(UserError, match="tokenizer='hf:' is not one of"):
        tokenizers.check(type('Text', (), {'tokenizer': 'hf:', 'vocab_size': 0,
                                           'tokenizer_sample': 0})())


def test_org_name_resolves_through_the_hugging_face_cache(tmp_path, monkeypatch):
    """hf:ORG/NAME in the config's argument, init_from.path and data.text.tokenizer: the cached
    snapshot; one that is not cached (and cannot be downloaded) is a one-line error."""
    import huggingface_hub
    from bigjax import config as config_lib
    from bigjax import finetune
    model = tmp_path / 'hub' / 'models--org--tiny'
    snapshot = model / 'snapshots' / 'abc123'
    tokenizer_folder(snapshot, ['def spam(eggs):\n    return eggs\n'] * 20)
    (snapshot / 'config.json').write_text(json.dumps(gpt2().to_dict()))
    (model / 'refs').mkdir()
    (model / 'refs' / 'main').write_text('abc123')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    assert hf.folder('hf:org/tiny') == str(snapshot) == hf.folder('org/tiny')
    config = config_lib.from_file('configs/hf_finetune.py:hf:org/tiny,smoke')
    assert config.init_from.path == str(snapshot) and config.model.transformer.width == 64
    config.init_from.path = 'hf:org/tiny'
    assert finetune.checkpoint_directory(config.init_from) == epath.Path(snapshot)
    assert tokenizers.PretrainedTokenizer('org/tiny').eos_id == 0
    with pytest.raises(UserError, match=r'hf:org/missing: no such folder.*`hf download '
                                        'org/missing`') as error:
        hf.folder('hf:org/missing')
    assert '\n' not in str(error.value)


def test_a_hugging_face_model_loads_onto_an_fsdp_by_tensor_mesh_as_on_one_device(tmp_path):
    """Each parameter goes straight to its shards on an 8-device (fsdp 4 x tensor 2) mesh, with
    the values of the single-device import."""
    from bigjax import config as config_lib
    from bigjax import finetune
    from bigjax import plan as plan_lib
    folder = tmp_path / 'hf'
    vocab_size = tokenizer_folder(folder, ['def spam(eggs):\n    return eggs\n'] * 20)
    saved(llama(vocab_size=vocab_size + -vocab_size % 8), folder)  # spare rows, as models have
    config = config_lib.from_file(f'configs/hf_finetune.py:{folder},smoke')
    config.mesh.update(data=1, fsdp=4, tensor=2)
    run = plan_lib.plan(config, read_data=False)
    arrays = finetune.load(run.load_plan, run.state_shardings)
    single = pytree.flat(hf.to_params(hf.Tensors(folder), hf.read_config(folder)))
    targets = pytree.flat(run.state_shardings.params)
    assert set(arrays) == set(single) and len(jax.devices()) == 8
    split = 0
    for name, array in arrays.items():
        assert array.sharding == targets[name], name
        np.testing.assert_array_equal(np.asarray(array), single[name])
        split += array.addressable_shards[0].data.size < array.size
    assert split > len(arrays) // 2  # most parameters are really split over the devices


def test_instruction_tune_a_hugging_face_model_and_answer_as_transformers_does(tmp_path):
    """configs/hf_finetune.py with data.name='chat': the model's own (ChatML) template renders the
    conversations, LoRA learns the answers, and the export keeps the template, so transformers'
    apply_chat_template + generate answers a conversation with the greedy answer bigjax's
    --mode=sample --conversation gives."""
    from bigjax import config as config_lib
    from bigjax import export, sample, train
    from bigjax.data import chat_template
    from chat_templates import QWEN2_5
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    questions = [(f'What is {a} plus {b}?', str(a + b)) for a in range(8) for b in range(8)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([q + ' ' + a for q, a in questions] * 5, trainers.BpeTrainer(
        vocab_size=400, special_tokens=['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
        show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path / 'hf'
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, chat_template=QWEN2_5, eos_token='<|im_end|>',
        pad_token='<|endoftext|>').save_pretrained(folder)
    saved(llama(vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=128), folder)
    chat_file = tmp_path / 'chat.jsonl'
    chat_file.write_text(''.join(json.dumps({'messages': [
        {'role': 'user', 'content': q}, {'role': 'assistant', 'content': a}]}) + '\n'
                                 for q, a in questions))
    config = config_lib.from_file(f'configs/hf_finetune.py:{folder},smoke')
    config.data.name, config.data.paths = 'chat', str(chat_file)
    config.data.text.seq_len = 127
    config.data.val_fraction = 0.2
    config.data.chat.eval_generations = 4
    config.data.chat.answer_tokens = 6
    workdir = tmp_path / 'run'
    final = train.run(config, workdir)
    assert 0 <= final['answer_exact_match'] <= 1 and final['loss'] > 0
    page = (workdir / 'report.html').read_text()
    assert 'held-out prompts answered greedily' in page and 'What is' in page

    summary = export.export(config, workdir, tmp_path / 'out', 'hf')
    assert 'llama model, with its tokenizer' in summary
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / 'out')
    assert theirs.chat_template == QWEN2_5
    conversation = [{'role': 'user', 'content': 'What is 3 plus 4?'}]
    ours = sample.from_workdir(config, workdir, '', num_tokens=6, temperature=0.0, top_k=0,
                               conversation=json.dumps(conversation))
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'out').eval()
    inputs = theirs.apply_chat_template(conversation, add_generation_prompt=True,
                                        return_tensors='pt')
    stops = chat_template.stop_ids(chat_template.resolve('', tokenizers.PretrainedTokenizer(
        str(folder))), tokenizers.PretrainedTokenizer(str(folder)))
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False,
                                   eos_token_id=list(stops), pad_token_id=stops[0])
    answer = theirs.decode(generated[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True)
    assert ours == answer
