"""Preference tuning (bigjax/preference.py, data/pairs.py): the DPO and IPO losses and gradients
against their formulas, the LoRA reference as the base model exactly, the limits, preference
records and their one-line errors, and a run that learns and resumes exactly."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax import config as config_lib
from bigjax import finetune, preference, pytree, steps, tasks, train, writers
from bigjax.errors import UserError
from bigjax.models import TransformerConfig, TransformerLM

VOCAB, LENGTH, PAIRS = 40, 12, 3


def tiny_lm(lora_rank: int = 0) -> TransformerLM:
    return TransformerLM(TransformerConfig(width=16, depth=2, num_heads=2, mlp_dim=32,
                                           max_len=LENGTH, attention='einops',
                                           lora_rank=lora_rank), VOCAB)


def random_pairs(seed: int = 0, identical: bool = False) -> dict:
    """PAIRS pairs of random token rows, each answer a random run of weighted tokens."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (PAIRS, 2, LENGTH + 1))
    weights = np.zeros((PAIRS, 2, LENGTH + 1), np.uint8)
    for i in range(PAIRS):
        for j in range(2):
            start = rng.integers(2, LENGTH - 2)
            weights[i, j, start:start + rng.integers(2, LENGTH + 1 - start)] = 1
    if identical:
        tokens[:, 1], weights[:, 1] = tokens[:, 0], weights[:, 0]
    return {'tokens': jnp.asarray(tokens, jnp.int32), 'weights': jnp.asarray(weights)}


def init(model, seed: int):
    return nn.unbox(model.init(jax.random.PRNGKey(seed), jnp.zeros((1, LENGTH), jnp.int32),
                               train=False)['params'])


def numpy_logps(model, params, batch) -> np.ndarray:
    """(PAIRS, 2) summed log-probabilities of the weighted next tokens, in float64 NumPy from
    the model's logits."""
    tokens = np.asarray(batch['tokens']).reshape(-1, LENGTH + 1)
    weights = np.asarray(batch['weights'], np.float64).reshape(-1, LENGTH + 1)[:, 1:]
    logits = np.asarray(model.apply({'params': params}, jnp.asarray(tokens[:, :-1]), train=False),
                        np.float64)
    logits -= logits.max(-1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_p, tokens[:, 1:, None], -1)[..., 0]
    return (picked * weights).sum(-1).reshape(PAIRS, 2)


def dpo_step(model, policy, reference, batch, objective, beta, label_smoothing=0.0):
    """(metric sums, gradient) of one train_step under SGD with rate 1 (params - new params)."""
    task = tasks.preference_pairs(objective, beta, label_smoothing)
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=policy,
                             model_state={finetune.REFERENCE: reference},
                             opt_state=optax.sgd(1.0).init(policy), rng=jax.random.PRNGKey(0))
    new_state, sums = steps.train_step(state, batch, model=model, tx=optax.sgd(1.0), task=task,
                                       train_sums=preference.SUMS)
    return sums, jax.tree.map(jnp.subtract, policy, new_state.params)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize('objective, label_smoothing', [('dpo', 0.0), ('dpo', 0.2), ('ipo', 0.0)])
def test_the_loss_and_its_gradient_equal_the_formulas(objective, label_smoothing):
    """TRL's formulas on log-probabilities computed apart (NumPy, float64), and the gradient
    as dL/dz times the gradients of each answer's log-probability (jax.jacrev of a plain sum)."""
    model, beta = tiny_lm(), 0.5
    policy, reference = init(model, 0), init(model, 1)
    batch = random_pairs()
    sums, grads = dpo_step(model, policy, reference, batch, objective, beta, label_smoothing)

    p, r = numpy_logps(model, policy, batch), numpy_logps(model, reference, batch)
    counts = np.asarray(batch['weights'], np.float64)[..., 1:].sum(-1)
    if objective == 'ipo':
        p, r = p / counts, r / counts
    z = (p[:, 0] - p[:, 1]) - (r[:, 0] - r[:, 1])
    if objective == 'ipo':
        loss, dloss_dz = (z - 1 / (2 * beta)) ** 2, 2 * (z - 1 / (2 * beta))
    else:
        loss = (-(1 - label_smoothing) * log_sigmoid(beta * z)
                - label_smoothing * log_sigmoid(-beta * z))
        sigmoid = lambda x: 1 / (1 + np.exp(-x))
        dloss_dz = -beta * ((1 - label_smoothing) * sigmoid(-beta * z)
                            - label_smoothing * sigmoid(beta * z))
    rewards = beta * (p - r)
    assert float(sums['count']) == PAIRS
    np.testing.assert_allclose(float(sums['loss_sum']) / PAIRS, loss.mean(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(float(sums['margin_sum']) / PAIRS,
                               (rewards[:, 0] - rewards[:, 1]).mean(), rtol=0, atol=1e-6)
    assert float(sums['correct']) == (rewards[:, 0] > rewards[:, 1]).sum()

    def row_logps(params):
        tokens = batch['tokens'].reshape(-1, LENGTH + 1)
        log_p = jax.nn.log_softmax(model.apply({'params': params}, tokens[:, :-1], train=False))
        picked = jnp.take_along_axis(log_p, tokens[:, 1:, None], -1)[..., 0]
        return (picked * batch['weights'].reshape(-1, LENGTH + 1)[:, 1:]).sum(-1)

    jacobian = jax.jacrev(row_logps)(policy)  # leaves (2 * PAIRS, *shape)
    dz_dp = np.stack([np.ones(PAIRS), -np.ones(PAIRS)], 1)
    if objective == 'ipo':
        dz_dp = dz_dp / counts
    coefficient = (dloss_dz[:, None] * dz_dp).reshape(-1) / PAIRS
    expected = jax.tree.map(lambda j: np.tensordot(coefficient, np.asarray(j, np.float64), 1),
                            jacobian)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=1e-6)


def test_padding_pairs_of_an_eval_batch_count_for_nothing():
    model = tiny_lm()
    policy = init(model, 0)
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=policy,
                             model_state={finetune.REFERENCE: init(model, 1)}, opt_state=(),
                             rng=jax.random.PRNGKey(0))
    task = tasks.preference_pairs('dpo', 0.5)
    batch = random_pairs()
    padded = steps.eval_step(state, {**batch, 'mask': jnp.asarray([True, True, False])},
                             model=model, task=task)
    real = steps.eval_step(state, {k: v[:2] for k, v in batch.items()}, model=model, task=task)
    assert float(padded['count']) == 2
    for name in real:
        np.testing.assert_allclose(float(padded[name]), float(real[name]), rtol=1e-6, atol=1e-7)


def test_with_lora_the_reference_is_the_base_model_exactly():
    model, base_model = tiny_lm(lora_rank=4), tiny_lm()
    params = init(model, 0)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.asarray(rng.normal(size=p.shape), p.dtype)
        if str(path[-1].key).endswith('_lora_b') else p, params)  # adapters that change things
    base_params = {n: v for n, v in pytree.flat(params).items()
                   if not finetune.ADAPTER.fullmatch(n)}
    inputs = random_pairs()['tokens'][:, 0, :-1]
    base = base_model.apply({'params': pytree.unflat(base_params)}, inputs, train=False)
    reference = model.apply({'params': preference.without_adapters(params, {})}, inputs,
                            train=False)
    policy = model.apply({'params': params}, inputs, train=False)
    np.testing.assert_array_equal(np.asarray(reference), np.asarray(base))
    assert not np.allclose(np.asarray(policy), np.asarray(base))


def test_limits_beta_to_zero_and_identical_answers():
    model = tiny_lm()
    policy, reference = init(model, 0), init(model, 1)
    sums, grads = dpo_step(model, policy, reference, random_pairs(), 'dpo', beta=1e-7)
    assert abs(float(sums['loss_sum']) / PAIRS - math.log(2)) < 1e-6
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-6
    same = random_pairs(identical=True)
    for objective, expected in (('dpo', math.log(2)), ('ipo', (1 / (2 * 0.5)) ** 2)):
        sums, grads = dpo_step(model, policy, reference, same, objective, beta=0.5)
        assert float(sums['loss_sum']) / PAIRS == pytest.approx(expected, abs=1e-7)
        assert float(sums['margin_sum']) == 0 and float(sums['correct']) == 0
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-7


def preference_config(tmp_path, records, seq_len: int = 95, **chat):
    path = tmp_path / 'pairs.jsonl'
    path.write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n'
                            for r in records))
    config = config_lib.default_config()
    config.data.name = 'preference'
    config.data.paths = str(path)
    config.data.data_dir = str(tmp_path / 'data')
    config.data.text.seq_len = seq_len
    config.data.val_fraction = 0.25
    config.data.chat.update(chat)
    return config


def arithmetic(count: int = 64) -> list[dict]:
    return [{'prompt': f'{i} + 1 =', 'chosen': str(i + 1), 'rejected': 'I do not know.'}
            for i in range(count)]


def test_records_become_pairs_of_the_same_prompt_with_only_the_answers_weighted(tmp_path):
    from bigjax import data
    records = [{'prompt': 'Q1?', 'chosen': 'good', 'rejected': 'bad'},
               {'prompt': [{'role': 'system', 'content': 'Be brief.'},
                           {'role': 'user', 'content': 'Q2?'}],
                'chosen': [{'role': 'assistant', 'content': 'yes'}], 'rejected': 'no'},
               {'chosen': [{'role': 'user', 'content': 'Q3?'},
                           {'role': 'assistant', 'content': 'right'}],
                'rejected': [{'role': 'user', 'content': 'Q3?'},
                             {'role': 'assistant', 'content': 'wrong'}]}]
    config = preference_config(tmp_path, records)
    config.data.chat.eval_paths = config.data.paths
    dataset = data.open_dataset(config.data)
    assert dataset.kind == 'text_preference' and len(dataset.train) == 3
    tokenizer, arrays = dataset.tokenizer, dataset.train.arrays
    assert arrays['tokens'].shape == (3, 2, 96)
    for i, (chosen, rejected) in enumerate((('good', 'bad'), ('yes', 'no'),
                                           ('right', 'wrong'))):
        answers = [tokenizer.decode(arrays['tokens'][i, j][arrays['weights'][i, j] == 1])
                   for j in (0, 1)]
        assert answers[0].startswith(chosen) and answers[1].startswith(rejected)
        assert answers[0][len(chosen):] == answers[1][len(rejected):]  # the end of turn
        first = np.argmax(arrays['weights'][i, 0])
        assert first == np.argmax(arrays['weights'][i, 1])  # the same prompt before both
        np.testing.assert_array_equal(arrays['tokens'][i, 0, :first],
                                      arrays['tokens'][i, 1, :first])
    assert dataset.chat.references == ('good', 'yes', 'right')


@pytest.mark.parametrize('bad, message', [
    ({'prompt': 'Q', 'chosen': 'A'}, r'pairs.jsonl:2: a preference record needs "chosen" and '
                                      r'"rejected"'),
    ({'prompt': 'Q', 'chosen': 'A', 'rejected': 3}, r'pairs.jsonl:2: rejected must be a string, '
                                                     'not int'),
    ({'chosen': [{'role': 'user', 'content': 'Q'}, {'role': 'assistant', 'content': 'A'}],
      'rejected': [{'role': 'user', 'content': 'R'}, {'role': 'assistant', 'content': 'B'}]},
     r'pairs.jsonl:2: without "prompt", "chosen" and "rejected" must begin with the same'),
    ('{"prompt": "Q",', r'pairs.jsonl:2: not JSON'),
    ({'prompt': [{'role': 'user', 'content': 'Q'}, {'role': 'assistant', 'content': 'A'},
                 {'role': 'user', 'content': 'And?'}],
      'chosen': [{'role': 'user', 'content': 'Well?'}], 'rejected': 'B'},
     'pairs.jsonl:2: chosen has no assistant answer after the prompt'),
])
def test_a_bad_record_is_one_line_naming_file_line_and_field_or_skipped(tmp_path, bad, message):
    from bigjax import data
    records = arithmetic(8)
    records.insert(1, bad)
    with pytest.raises(UserError, match=message):
        data.open_dataset(preference_config(tmp_path, records).data)
    dataset = data.open_dataset(preference_config(tmp_path, records, bad_records='skip').data)
    assert dataset.chat.stats['train']['bad_skipped'] + dataset.chat.stats['eval'][
        'bad_skipped'] == 1


def test_objectives_are_checked_before_compiling(tmp_path):
    from bigjax import plan as plan_lib
    config = preference_config(tmp_path, arithmetic())
    config.train.preference.beta = 0.0
    with pytest.raises(UserError, match='train.preference.beta=0.0 must be > 0'):
        config_lib.check(config)  # before the data is read
    config = config_lib.default_config()
    config.train.objective = 'dpo'
    with pytest.raises(UserError, match="train.objective='dpo' trains on pairs"):
        plan_lib.plan(config)
    config = preference_config(tmp_path, arithmetic())
    config.model.name = 'transformer_lm'
    config.model.transformer.update(lora_rank=4)
    config.lora_trained = ('head/kernel',)
    with pytest.raises(UserError, match='trained base parameters would move it'):
        plan_lib.plan(config)
    config.lora_trained, config.model.transformer.dropout = (), 0.1
    with pytest.raises(UserError, match='dropout=0.1: dpo compares'):
        plan_lib.plan(config)


def run_config(tmp_path, lora_rank: int = 0):
    config = preference_config(tmp_path, arithmetic(), eval_generations=4, answer_tokens=4)
    config.model.name = 'transformer_lm'
    t = config.model.transformer
    t.width, t.depth, t.num_heads, t.mlp_dim, t.max_len = 32, 2, 2, 64, 96
    t.attention, t.lora_rank = 'einops', lora_rank
    config.optim.learning_rate = 3e-3
    config.train.preference.beta = 0.5
    config.train.update(batch_size=8, num_steps=16, log_every=4, eval_every=8,
                        checkpoint_every=8)
    config.report.enabled = False
    return config


def test_dpo_learns_the_preferred_answers_and_resumes_exactly(tmp_path):
    """Full fine-tuning (the reference: a frozen copy in the train state): the loss falls from
    log 2, the reference copy stays the starting weights, and a run stopped at step 8 and rerun
    ends bitwise equal to one that was not."""
    import orbax.checkpoint as ocp
    config = run_config(tmp_path)
    whole = train.run(config, tmp_path / 'whole')
    assert train.run(config, tmp_path / 'staged', stop_at_step=8) is None
    assert train.run(config, tmp_path / 'staged') == whole
    rows = [r for r in writers.read_metrics(tmp_path / 'whole') if r['split'] == 'train']
    assert rows[0]['loss'] < math.log(2) + 1e-3 and rows[-1]['loss'] < rows[0]['loss'] - 0.05
    assert rows[-1]['reward_accuracy'] > 0.5 and 'margin' in rows[-1]
    states = [ocp.PyTreeCheckpointer().restore(tmp_path / w / 'checkpoints' / s / 'state')
              for w, s in (('whole', '16'), ('staged', '16'), ('whole', '8'))]
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(states[0]['model_state'][finetune.REFERENCE]),
                    jax.tree.leaves(states[2]['model_state'][finetune.REFERENCE])):
        np.testing.assert_array_equal(a, b)  # the reference never moves
    config.init_from.path = str(tmp_path / 'whole')  # a run that starts from another's weights
    config.train.update(num_steps=1, checkpoint_every=1, eval_every=1)
    train.run(config, tmp_path / 'tuned')
    tuned = ocp.PyTreeCheckpointer().restore(tmp_path / 'tuned' / 'checkpoints' / '1' / 'state')
    for a, b in zip(jax.tree.leaves(tuned['model_state'][finetune.REFERENCE]),
                    jax.tree.leaves(states[0]['params'])):
        np.testing.assert_array_equal(a, b)  # its reference: the weights it started from


def test_lora_dpo_starts_at_log_2_and_learns(tmp_path):
    """With LoRA the reference is the base model (adapters off): at the first step the policy
    is the reference, so every reward is 0 and the loss is exactly log 2."""
    config = run_config(tmp_path, lora_rank=4)
    config.optim.learning_rate = 1e-2
    config.train.log_every = 1
    train.run(config, tmp_path / 'lora')
    rows = [r for r in writers.read_metrics(tmp_path / 'lora') if r['split'] == 'train']
    assert rows[0]['loss'] == pytest.approx(math.log(2), abs=1e-6) and rows[0]['margin'] == 0
    assert rows[-1]['loss'] < rows[0]['loss']
    from bigjax import plan as plan_lib
    config.init_from.path = str(tmp_path / 'lora')  # trained adapters: the reference is lost
    with pytest.raises(UserError, match='holds trained LoRA adapters .* export that run'):
        plan_lib.plan(config, tmp_path / 'next')
