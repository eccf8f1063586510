"""Fine-tuning: init_from (partial loads, skips, resizes, another mesh), freezing, learning-rate
groups, LoRA, and the errors for bad checkpoints and patterns."""

import dataclasses
import importlib.util

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from bigjax import export, finetune, optim, pytree, train
from bigjax import plan as plan_lib
from bigjax.config import default_config
from bigjax.errors import UserError
from bigjax.models.transformer import TransformerConfig, TransformerLM
from conftest import REPO, load_config


def params_in(folder) -> dict[str, np.ndarray]:
    """The parameters of the checkpoint folder (<folder>/state), by name."""
    state = ocp.PyTreeCheckpointer().restore(folder / 'state')
    return {k: np.asarray(v) for k, v in pytree.flat(state['params']).items()}


def saved_params(workdir, step) -> dict[str, np.ndarray]:
    return params_in(workdir / 'checkpoints' / str(step))


@pytest.fixture(scope='module')
def pretrained_cnn(tmp_path_factory):
    """configs/digits_transfer.py:pretrain,smoke trained for its 20 steps: a CNN on digits 0-4."""
    workdir = tmp_path_factory.mktemp('pretrain')
    train.run(load_config('digits_transfer', 'pretrain,smoke'), workdir)
    return workdir


def finetune_config(pretrained, **overrides):
    config = load_config('digits_transfer', 'finetune,smoke')
    config.init_from.path = str(pretrained)
    config.update(overrides)
    return config


def test_partial_load_then_frozen_parameters_stay_bitwise_while_the_rest_train(
        pretrained_cnn, tmp_path, capsys):
    config = finetune_config(pretrained_cnn, frozen=('conv.*', 'bn.*'))
    plan = plan_lib.plan(config, tmp_path)
    assert plan.load_plan.skipped == ['head/bias', 'head/kernel']
    assert sorted(plan.load_plan.loaded) == sorted(
        [n for n in saved_params(pretrained_cnn, 20) if not n.startswith('head/')] +
        [f'batch_stats:{n}' for n in ('bn1/mean', 'bn1/var', 'bn2/mean', 'bn2/var')])
    train.run(config, tmp_path)
    assert 'skipped (init_from.skip): head/bias, head/kernel' in capsys.readouterr().err
    before, after = saved_params(pretrained_cnn, 20), saved_params(tmp_path, 8)
    for name in after:
        if name.startswith(('conv', 'bn')):
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        elif name.startswith('fc1'):
            assert not np.array_equal(after[name], before[name]), name
    # No optimizer state for frozen parameters: Adam keeps two moments per trainable one.
    state = ocp.PyTreeCheckpointer().restore(tmp_path / 'checkpoints' / '8' / 'state')
    moments = sum(np.size(x) for x in jax.tree.leaves(state['opt_state']) if np.ndim(x) > 0)
    trainable, total = finetune.parameter_counts(state['params'], plan.frozen)
    assert moments == 2 * trainable and trainable < total


def test_learning_rate_groups_scale_the_updates_of_the_parameters_they_match():
    config = default_config().optim
    config.update(name='sgd', learning_rate=0.1, lr_multipliers=(('backbone/.*', 0.5),))
    params = {'backbone': {'w': jnp.ones(3)}, 'head': {'w': jnp.ones(3)}}
    tx = optim.build_optimizer(config, 10)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates['backbone']['w'], -0.05)
    np.testing.assert_allclose(updates['head']['w'], -0.1)


def test_restore_onto_another_mesh_loads_the_same_values(tmp_path):
    """An LM trained on data=8, loaded into a run on fsdp=4 x tensor=2 with everything frozen:
    its parameters come back bitwise. (fsdp=2 x tensor=4 cannot split its 258-token vocabulary:
    a clear error.)"""
    config = load_config('transformer_cpu', 'smoke')
    train.run(config, tmp_path / 'source')
    target = load_config('transformer_cpu', 'smoke')
    target.mesh.update(data=1, fsdp=2, tensor=4)
    with pytest.raises(UserError, match=r'token_embedding/embedding \(258, 32\) cannot be split 4'):
        train.run(target, tmp_path / 'target')
    target.mesh.update(data=1, fsdp=4, tensor=2)
    target.init_from.path = str(tmp_path / 'source')
    target.frozen = ('.*',)
    target.train.num_steps, target.optim.warmup_steps = 2, 0
    train.run(target, tmp_path / 'target')
    source, loaded = saved_params(tmp_path / 'source', 8), saved_params(tmp_path / 'target', 2)
    assert source.keys() == loaded.keys()
    for name in source:
        np.testing.assert_array_equal(loaded[name], source[name], err_msg=name)


def test_position_embeddings_resize_only_when_asked(tmp_path):
    source = load_config('transformer_cpu', 'smoke')
    train.run(source, tmp_path / 'source')
    longer = load_config('transformer_cpu', 'smoke')
    longer.model.transformer.max_len = 64
    longer.init_from.path = str(tmp_path / 'source')
    with pytest.raises(UserError, match=r'encoder/position_embedding is \(32, 32\) in .* and '
                                        r'\(64, 32\) in this model'):
        plan_lib.plan(longer, tmp_path / 'target')
    longer.init_from.resize = ('encoder/position_embedding',)
    plan = plan_lib.plan(longer, tmp_path / 'target')
    assert plan.load_plan.resized == [('encoder/position_embedding', (32, 32), (64, 32))]
    arrays = finetune.load(plan.load_plan, plan.state_shardings)
    assert arrays['encoder/position_embedding'].shape == (64, 32)
    assert not (tmp_path / 'target').exists()


def small_lm(**overrides):
    cfg = TransformerConfig(width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                            max_len=16, mlp='swiglu', **overrides)
    return cfg, TransformerLM(cfg, vocab_size=50)


def test_lora_starts_as_the_base_model_and_merges_into_it():
    cfg, base = small_lm()
    lora_cfg, lora = small_lm(lora_rank=4, lora_targets=('qkv', 'out', 'up', 'gate', 'down'))
    tokens = jnp.arange(24).reshape(2, 12) % 50
    base_params = nn.unbox(base.init(jax.random.PRNGKey(0), tokens, train=False)['params'])
    adapters = {n: v for n, v in pytree.flat(nn.unbox(lora.init(
        jax.random.PRNGKey(1), tokens, train=False)['params'])).items() if '_lora_' in n}
    assert len(adapters) == 2 * 5 * 2  # a and b, five targets, two blocks
    params = pytree.unflat({**pytree.flat(base_params), **adapters})
    base_out = base.apply({'params': base_params}, tokens, train=False)
    np.testing.assert_array_equal(lora.apply({'params': params}, tokens, train=False), base_out)
    trained = pytree.unflat({n: v + 0.05 * jax.random.normal(jax.random.PRNGKey(2), v.shape)
                               if n.endswith('_lora_b') else v
                               for n, v in pytree.flat(params).items()})
    unmerged = lora.apply({'params': trained}, tokens, train=False)
    merged = base.apply({'params': finetune.merge_lora(trained, lora_cfg)}, tokens, train=False)
    assert float(jnp.abs(unmerged - base_out).max()) > 1e-2  # the adapters do something
    np.testing.assert_allclose(merged, unmerged, atol=2e-5)


def test_lora_fine_tuning_trains_only_the_adapters(tmp_path):
    config = load_config('transformer_cpu', 'smoke')
    train.run(config, tmp_path / 'source')
    config.model.transformer.lora_rank = 2
    config.init_from.path = str(tmp_path / 'source')
    plan = plan_lib.plan(config, tmp_path / 'lora')
    trainable, total = finetune.parameter_counts(plan.abstract_state.params, plan.frozen)
    adapters = sum(np.prod(v.shape) for n, v in pytree.flat(plan.abstract_state.params).items()
                   if '_lora_' in n)
    assert trainable == adapters and total > 10 * trainable  # the LM has no head: tied embedding
    train.run(config, tmp_path / 'lora')
    source, tuned = saved_params(tmp_path / 'source', 8), saved_params(tmp_path / 'lora', 8)
    for name, value in tuned.items():
        if '_lora_b' in name:
            assert np.abs(value).max() > 0, name
        elif '_lora_a' not in name:
            np.testing.assert_array_equal(value, source[name], err_msg=name)

    # Export: adapters merged into the kernels, a plain model computes what the LoRA model did,
    # and the folder is a checkpoint init_from loads in full. An export never overwrites.
    print(export.export(config, tmp_path / 'lora', tmp_path / 'export'))
    plan, state, _ = plan_lib.load_state(config, tmp_path / 'lora')
    exported = params_in(tmp_path / 'export')
    assert sorted(exported) == sorted(source)
    plain = dataclasses.replace(plan.model, cfg=dataclasses.replace(plan.model.cfg, lora_rank=0))
    tokens = jnp.arange(64).reshape(2, 32) % 200
    np.testing.assert_allclose(
        plain.apply({'params': pytree.unflat(exported)}, tokens, train=False),
        plan.model.apply({'params': state.params}, tokens, train=False), atol=2e-5)
    merged_config = load_config('transformer_cpu', 'smoke')
    merged_config.init_from.path = str(tmp_path / 'export')
    assert sorted(plan_lib.plan(merged_config, tmp_path / 'next').load_plan.loaded) == sorted(source)
    with pytest.raises(UserError, match='is not empty'):
        export.export(config, tmp_path / 'lora', tmp_path / 'export')


@pytest.mark.parametrize('overrides, message', [
    (dict(init_from=dict(path='/nonexistent/run')), 'no checkpoint there'),
    (dict(init_from=dict(skip=())), r'parameter head/bias is \(5,\) in .* and \(3,\) in'),
    (dict(frozen=('encoder/.*',)), "frozen pattern 'encoder/.*' matches no parameter"),
    (dict(init_from=dict(skip=('nohead',))), "init_from.skip pattern 'nohead' matches no"),
    (dict(optim=dict(lr_multipliers=(('conv9/.*', 0.1),))), 'lr_multipliers pattern'),
    (dict(init_from=dict(step=3)), r'init_from.step=3: .* has steps \[10, 20\]'),
    (dict(init_from=dict(label_words=('5', '6', '7'))), "pool='last'"),
    (dict(init_from=dict(path='', label_words=('5', '6', '7'))), 'set init_from.path'),
    (dict(lora_trained=('head/.*',)), r'lora_trained=.* and LoRA is off'),
])
def test_bad_init_from_and_patterns_are_clear_errors_before_anything_is_written(
        pretrained_cnn, tmp_path, overrides, message):
    config = finetune_config(pretrained_cnn)
    config.data.classes = (5, 6, 7)  # a 3-class head where the checkpoint has 5
    config.train.batch_size = config.train.eval_batch_size = 24
    for section, values in overrides.items():
        if isinstance(values, dict):
            config[section].update(values)
        else:
            config[section] = values
    with pytest.raises(UserError, match=message):
        train.run(config, tmp_path / 'run')
    assert not (tmp_path / 'run').exists()


def test_a_lora_config_that_reaches_no_projection_is_an_error():
    with pytest.raises(UserError, match='lora_targets'):
        dataclasses.replace(small_lm()[0], lora_rank=2, lora_targets=('qkv', 'nope')).check()


def transfer_study():
    spec = importlib.util.spec_from_file_location('transfer', REPO / 'experiments' / 'transfer.py')
    transfer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(transfer)
    return transfer


@pytest.mark.parametrize('task, fresh', [('stdlib', ['class_token', 'head/bias', 'head/kernel']),
                                         ('exceptions', ['head/bias', 'head/kernel'])])
def test_text_demos_fine_tune_the_pretrained_lm_into_a_classifier(task, fresh, tmp_path):
    """experiments/transfer.py --task=stdlib|exceptions --smoke: the LM's embedding, positions
    and blocks load into the (encoder or decoder) classifier; only the head (and class token)
    start fresh; both arms evaluate."""
    results = transfer_study().run(task, str(tmp_path), [0], smoke=True)
    lm = saved_params(tmp_path / 'pretrain', 8)
    config = load_config(f'{task}_transfer', 'finetune,smoke')
    config.init_from.path = str(tmp_path / 'pretrain')
    classifier = plan_lib.plan(config, tmp_path / 'unused')
    plan = classifier.load_plan
    assert sorted(plan.loaded) == sorted(lm)
    assert sorted(plan.fresh) == fresh
    if task == 'exceptions':  # the head starts as the LM's guess of the word after `except`
        tokens = classifier.dataset.eval.arrays['tokens'][:8].astype(np.int32)
        loaded = finetune.load(classifier.load_plan, classifier.state_shardings)
        state = finetune.with_loaded(nn.unbox(classifier.init(jax.random.PRNGKey(0))), loaded)
        logits = classifier.model.apply({'params': state.params}, tokens, train=False)
        lm_logits = TransformerLM(classifier.model.cfg, classifier.dataset.vocab_size).apply(
            {'params': pytree.unflat(lm)}, tokens, train=False)
        last = (tokens != 0).sum(1) - 1
        np.testing.assert_allclose(
            logits, lm_logits[np.arange(8), last][:, list(plan.head_tokens)],
            rtol=1e-5, atol=1e-5)
        config.init_from.skip = ('head/.*',)
        with pytest.raises(UserError, match='init_from.skip starts it fresh'):
            plan_lib.plan(config, tmp_path / 'unused')
        config.init_from.skip = ()
        config.init_from.label_words = ('OSError', 'Oops') + config.init_from.label_words[2:]
        with pytest.raises(UserError, match='first token no other class shares'):
            plan_lib.plan(config, tmp_path / 'unused')
    assert set(results[0]) == {'finetune', 'scratch'}
    assert results[0]['finetune']['loss'] != results[0]['scratch']['loss']
    assert 0 <= results[0]['finetune']['accuracy'] <= 1


@pytest.mark.parametrize('task, loaded, described', [
    ('mnist', 'conv1/kernel', 'loaded 6; skipped (init_from.skip): head/bias, head/kernel'),
    ('imdb', 'encoder/block0/attention/qkv/kernel', 'loaded 20; new: class_token, head/bias, '
                                                    'head/kernel')])
def test_tfds_transfer_studies_run_under_mock_data(task, loaded, described, tmp_path, capsys):
    """The mnist and imdb_reviews studies (internet needed for real): pretrain, fine-tune and
    scratch run end to end on tfds mock data, the fine-tune loading the pretrained weights."""
    with tfds.testing.mock_data(num_examples=300):
        results = transfer_study().run(task, str(tmp_path), [0], smoke=True)
    assert set(results[0]) == {'finetune', 'scratch'}
    assert all(np.isfinite(r['loss']) for r in results[0].values())
    steps = {stage: load_config(f'{task}_transfer', f'{stage},smoke').train.num_steps
             for stage in ('pretrain', 'finetune', 'scratch')}
    assert (f'Initialised from {tmp_path}/pretrain/checkpoints/{steps["pretrain"]}: {described}'
            in capsys.readouterr().err)
    # Without the load the fine-tune would be the scratch run itself: same seed, data and steps.
    finetuned, scratch = (saved_params(tmp_path / f'{stage}_seed0', steps[stage])[loaded]
                          for stage in ('finetune', 'scratch'))
    assert np.abs(finetuned - scratch).max() > 1e-3


def test_a_token_embedding_from_another_tokenizer_is_an_error(tmp_path):
    """A BPE trained on other data or settings gives the same ids other meanings: loading its
    embedding is an error naming the difference; the byte tokenizer is the same everywhere."""
    theirs = default_config()
    theirs.data.update(name='python_stdlib', train_split='train[:50%]')
    theirs.data.text.tokenizer = 'bpe'
    (tmp_path / 'config.json').write_text(theirs.to_json())
    plan = finetune.LoadPlan(tmp_path, ['token_embedding/embedding'], [], [], [], [])
    ours = default_config().data
    ours.update(name='python_stdlib')
    ours.text.tokenizer = 'bpe'
    with pytest.raises(UserError, match=r"data.train_split='train' here, 'train\[:50%\]' there"):
        finetune.check_tokenizer(plan, ours)
    ours.train_split = 'train[:50%]'
    finetune.check_tokenizer(plan, ours)
    ours.name = 'python_exceptions'  # another dataset: its BPE would be learnt from other text
    with pytest.raises(UserError, match=r"tokenizer_data='python_exceptions' here, "
                                        r"'python_stdlib' there"):
        finetune.check_tokenizer(plan, ours)
    ours.text.tokenizer_data = 'python_stdlib'  # ... unless it uses the LM's corpus
    finetune.check_tokenizer(plan, ours)
    finetune.check_tokenizer(dataclasses.replace(plan, loaded=['encoder/x']), default_config().data)
    theirs.data.text.tokenizer = ours.text.tokenizer = 'byte'
    (tmp_path / 'config.json').write_text(theirs.to_json())
    ours.name = 'imdb_reviews'
    finetune.check_tokenizer(plan, ours)
    # A Hugging Face model's own tokenizer: instruction tuning, exported, then DPO on pairs.
    theirs.data.update(name='chat', train_split='train')
    theirs.data.text.tokenizer = ours.text.tokenizer = 'hf:/models/tiny'
    (tmp_path / 'config.json').write_text(theirs.to_json())
    ours.name = 'preference'
    finetune.check_tokenizer(plan, ours)
    ours.text.tokenizer = 'hf:/models/other'
    with pytest.raises(UserError, match=r"tokenizer='hf:/models/other' here, 'hf:/models/tiny'"):
        finetune.check_tokenizer(plan, ours)
