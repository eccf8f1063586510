"""Preference tuning (train.objective='dpo' | 'ipo') on pairs of answers to one prompt.

A batch holds pairs: 'tokens' and 'weights' of shape (B, 2, L + 1), row 0 the chosen answer and
row 1 the rejected one, the weights marking the answer's tokens. Both rows of every pair go
through the model as one (2B, L) batch, and so through the reference model: the same weights
with the LoRA adapters switched off, or (full fine-tuning) a frozen copy of the starting weights
kept in the train state (finetune.REFERENCE). With the answers' log-probabilities p under the
policy and r under the reference, z = (p_chosen - p_rejected) - (r_chosen - r_rejected) and

  dpo   -(1 - e) log sigmoid(beta z) - e log sigmoid(-beta z)  (e: preference.label_smoothing)
  ipo   (z - 1 / (2 beta))^2, with per-token means for p and r

as TRL's DPOTrainer computes them. An answer's reward is beta (p - r); reward accuracy counts the
pairs whose chosen answer has the higher reward (a tie, as before the first step, is not one),
logp_accuracy those the policy itself gives the chosen answer the higher p.
"""

import jax
import jax.numpy as jnp
import optax

from bigjax import finetune, metrics, pytree
from bigjax.errors import UserError

KIND = 'text_preference'  # the dataset kind of answer pairs
OBJECTIVES = ('dpo', 'ipo')
SUMS = ('loss_sum', 'correct', 'count', 'chosen_reward_sum', 'rejected_reward_sum',
        'margin_sum', 'chosen_logp_sum', 'rejected_logp_sum', 'logp_accuracy_sum')  # summed
# over pairs


def check(config) -> None:
    """UserError for preference settings that are wrong whatever the data (config.check)."""
    name, p = config.train.objective, config.train.preference
    if name not in ('auto', *OBJECTIVES):
        raise UserError(f"train.objective={name!r} is not one of {['auto', *OBJECTIVES]}")
    if p.beta <= 0 or not 0 <= p.label_smoothing < 0.5:
        raise UserError(f'train.preference.beta={p.beta} must be > 0 and label_smoothing='
                        f'{p.label_smoothing} in [0, 0.5)')
    if p.label_smoothing and name == 'ipo':
        raise UserError('train.preference.label_smoothing is for the dpo objective; ipo has none')


def objective(config, kind: str) -> str:
    """The preference objective of a run on data of `kind` ('' for other data); a UserError for
    an objective the data cannot train with (plan: after the data is opened, before compiling)."""
    name = config.train.objective
    if kind != KIND:
        if name != 'auto':
            raise UserError(f'train.objective={name!r} trains on pairs of chosen and rejected '
                            f'answers, and data.name={config.data.name!r} is {kind} data: use '
                            "preference data (data.name='preference') or train.objective='auto'")
        return ''
    name = 'dpo' if name == 'auto' else name
    if finetune.uses_lora(config) and config.lora_trained:
        raise UserError(f'lora_trained={config.lora_trained}: {name} with LoRA takes the model '
                        'with its adapters off as the reference, and trained base parameters '
                        'would move it: leave lora_trained empty, or fine-tune fully (lora_rank=0)')
    if config.model.transformer.dropout:
        raise UserError(f'model.transformer.dropout={config.model.transformer.dropout}: {name} '
                        'compares the policy with the reference, which dropout would make '
                        'differ before any step (as TRL, train preferences without it): set 0')
    return name


def needs_copy(config, kind: str) -> bool:
    """Whether the run keeps a frozen copy of its starting weights as the reference: preference
    objectives without LoRA (with LoRA the reference is the base, adapters off)."""
    return bool(objective(config, kind)) and not finetune.uses_lora(config)


def check_load(config, kind: str, load_plan) -> None:
    """A LoRA run's reference is its base with the adapters off: starting from trained adapters
    would make it the model before they were trained (UserError: merge them first)."""
    adapters = [name for name in load_plan.loaded if finetune.ADAPTER.fullmatch(name)]
    if adapters and objective(config, kind) and finetune.uses_lora(config):
        raise UserError(f'init_from.path={config.init_from.path} holds trained LoRA adapters '
                        f'({adapters[0]}, ...), and the reference of {objective(config, kind)} '
                        'with LoRA is the model with its adapters off, the one before they were '
                        'trained: export that run (--mode=export merges them) and start from '
                        'the export')


def without_adapters(params, model_state):
    """The reference of a LoRA run: its parameters with every adapter's B set to zero, so each
    adapter adds exactly 0 and the model computes the base model's outputs."""
    del model_state
    return jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.zeros_like(p) if pytree.path_name(path).endswith('_lora_b') else p,
        params)


def frozen_copy(params, model_state):
    """The reference of a full fine-tune: the starting weights kept in the train state."""
    del params
    return model_state[finetune.REFERENCE]


def inputs(batch, rng, train):
    """(B, 2, L + 1) pairs -> (2B, L) model inputs: chosen and rejected rows interleaved."""
    del rng, train
    tokens = batch['tokens'][:, :, :-1]
    return tokens.reshape(-1, tokens.shape[-1]).astype(jnp.int32)


def targets(batch):
    """Next tokens and their weights (2B, L): the answers' tokens (padding rows of evaluation
    batches are left out per pair, in `sums`)."""
    tokens, weights = batch['tokens'][:, :, 1:], batch['weights'][:, :, 1:].astype(jnp.float32)
    return (tokens.reshape(-1, tokens.shape[-1]).astype(jnp.int32),
            weights.reshape(-1, weights.shape[-1]))


def _row_sums(logits_NTV, targets_NT, weights_NT):
    logp_NT = -optax.softmax_cross_entropy_with_integer_labels(logits_NTV.astype(jnp.float32),
                                                               targets_NT)
    return {'logp': jnp.sum(logp_NT * weights_NT, -1), 'tokens': jnp.sum(weights_NT, -1)}


def answer_logps(outputs, targets_NT, weights_NT, chunk: int):
    """(summed log-probability of each row's weighted targets, their count), each (N,), from
    the model's logits or (chunk > 0) its features (metrics.chunked)."""
    if chunk:
        sums = metrics.chunked(_row_sums, *outputs, targets_NT, weights_NT, chunk)
    else:
        sums = _row_sums(outputs, targets_NT, weights_NT)
    return sums['logp'], sums['tokens']


def pair_losses(policy_B2, reference_B2, tokens_B2, *, objective: str, beta: float,
                label_smoothing: float = 0.0):
    """(loss, chosen reward, rejected reward, policy log-probs used), each (B,) but the last
    (B, 2), from the answers' summed log-probabilities under the policy and the reference."""
    if objective == 'ipo':
        per_token = jnp.maximum(tokens_B2, 1.0)
        policy_B2, reference_B2 = policy_B2 / per_token, reference_B2 / per_token
    z_B = (policy_B2[:, 0] - policy_B2[:, 1]) - (reference_B2[:, 0] - reference_B2[:, 1])
    if objective == 'ipo':
        loss_B = (z_B - 1 / (2 * beta)) ** 2
    else:
        loss_B = (-(1 - label_smoothing) * jax.nn.log_sigmoid(beta * z_B)
                  - label_smoothing * jax.nn.log_sigmoid(-beta * z_B))
    rewards_B2 = beta * (policy_B2 - reference_B2)
    return loss_B, rewards_B2[:, 0], rewards_B2[:, 1], policy_B2


def sums(outputs, batch, *, objective: str, beta: float, label_smoothing: float, chunk: int):
    """Metric sums over the real pairs of `batch` from (policy outputs, reference outputs)."""
    policy_outputs, reference_outputs = outputs
    targets_NT, weights_NT = targets(batch)
    policy_N, tokens_N = answer_logps(policy_outputs, targets_NT, weights_NT, chunk)
    reference_N, _ = answer_logps(reference_outputs, targets_NT, weights_NT, chunk)
    pairs = lambda x_N: x_N.reshape(-1, 2)
    loss_B, chosen_B, rejected_B, logps_B2 = pair_losses(
        pairs(policy_N), pairs(reference_N), pairs(tokens_N), objective=objective, beta=beta,
        label_smoothing=label_smoothing)
    real_B = (batch['mask'].astype(jnp.float32) if 'mask' in batch
              else jnp.ones(loss_B.shape, jnp.float32))
    total = lambda x_B: jnp.sum(x_B * real_B)
    return {'loss_sum': total(loss_B), 'correct': total((chosen_B > rejected_B).astype(
                jnp.float32)), 'count': jnp.sum(real_B),
            'chosen_reward_sum': total(chosen_B), 'rejected_reward_sum': total(rejected_B),
            'margin_sum': total(chosen_B - rejected_B), 'chosen_logp_sum': total(logps_B2[:, 0]),
            'rejected_logp_sum': total(logps_B2[:, 1]),
            'logp_accuracy_sum': total((logps_B2[:, 0] > logps_B2[:, 1]).astype(jnp.float32))}
