"""Autoregressive sampling from a TransformerLM with its key/value cache.

The prompt fills the cache in one call; each new token then costs one single-token call; past
max_len positions, a sliding window refills it (generate_any_length). With
temperature 0 the most likely token is taken; otherwise tokens are drawn from
softmax(logits / temperature), restricted to the `top_k` most likely when top_k > 0.
"""

import functools

import jax
import jax.numpy as jnp

from bigjax import plan as plan_lib
from bigjax.errors import UserError
from bigjax.models.transformer import TransformerLM


def next_token(logits_BV: jax.Array, rng: jax.Array, temperature: float, top_k: int) -> jax.Array:
    """One token per row from next-token logits."""
    if temperature == 0:
        return jnp.argmax(logits_BV, -1).astype(jnp.int32)
    logits_BV = logits_BV / temperature
    if top_k > 0:
        kth_BV = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_BV, -jnp.inf, logits_BV)
    return jax.random.categorical(rng, logits_BV).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'num_tokens', 'temperature', 'top_k'))
def generate(model: TransformerLM, params, prompt_BT: jax.Array, rng: jax.Array, *,
             num_tokens: int, temperature: float = 1.0, top_k: int = 0) -> jax.Array:
    """The prompt followed by `num_tokens` sampled tokens: (B, T + num_tokens) int32."""
    batch, length = prompt_BT.shape
    positions = lambda start, count: jnp.broadcast_to(start + jnp.arange(count), (batch, count))
    cache = model.init(jax.random.PRNGKey(0), prompt_BT[:, :1], train=False, decode=True,
                       positions_BT=positions(0, 1))['cache']
    cache = jax.tree.map(jnp.zeros_like, cache)
    logits_BTV, updated = model.apply({'params': params, 'cache': cache}, prompt_BT, train=False,
                                      decode=True, positions_BT=positions(0, length),
                                      mutable=['cache'])

    def step(carry, index):
        cache, logits_BV, rng = carry
        rng, draw_rng = jax.random.split(rng)
        token_B = next_token(logits_BV, draw_rng, temperature, top_k)
        logits_B1V, updated = model.apply({'params': params, 'cache': cache}, token_B[:, None],
                                          train=False, decode=True,
                                          positions_BT=positions(length + index, 1),
                                          mutable=['cache'])
        return (updated['cache'], logits_B1V[:, 0], rng), token_B

    _, tokens_NB = jax.lax.scan(step, (updated['cache'], logits_BTV[:, -1], rng),
                                jnp.arange(num_tokens))
    return jnp.concatenate([prompt_BT, tokens_NB.T], axis=1)


def generate_any_length(model: TransformerLM, params, prompt_BT: jax.Array, rng: jax.Array, *,
                        num_tokens: int, temperature: float = 1.0, top_k: int = 0) -> jax.Array:
    """`generate` past the model's max_len positions, as a sliding window: once the cache is
    full, sampling goes on from the last max_len // 2 tokens (renumbered from position 0). The
    prompt keeps its last max_len - 1 tokens. (B, T + num_tokens) int32."""
    if prompt_BT.shape[1] < 1:
        raise UserError('the prompt must not be empty')
    max_len, out = model.cfg.max_len, prompt_BT
    context_BT = prompt_BT[:, -(max_len - 1):]
    while out.shape[1] < prompt_BT.shape[1] + num_tokens:
        count = min(prompt_BT.shape[1] + num_tokens - out.shape[1], max_len - context_BT.shape[1])
        rng, draw_rng = jax.random.split(rng)
        new_BN = generate(model, params, context_BT, draw_rng, num_tokens=count,
                          temperature=temperature, top_k=top_k)[:, context_BT.shape[1]:]
        out = jnp.concatenate([out, new_BN], axis=1)
        context_BT = out[:, -(max_len // 2):]
    return out


def from_workdir(config, workdir, prompt: str, *, num_tokens: int, temperature: float,
                 top_k: int, seed: int = 0) -> str:
    """A continuation of `prompt` by the LM trained in `workdir` (its latest checkpoint)."""
    plan, state, step = plan_lib.load_state(config, workdir)
    if plan.dataset.kind != 'text_lm' or plan.dataset.tokenizer is None:
        raise UserError(f'--mode=sample needs a language model trained on text; '
                        f'data.name={config.data.name!r} with model.name={config.model.name!r} '
                        'is not one')
    tokenizer = plan.dataset.tokenizer
    ids = [tokenizer.eos_id, *tokenizer.encode_batch([prompt])[0]]  # as a document starts
    out = generate_any_length(plan.model, state.params, jnp.asarray([ids], jnp.int32),
                              jax.random.PRNGKey(seed), num_tokens=num_tokens,
                              temperature=temperature, top_k=top_k)
    return plan.dataset.tokenizer.decode(jax.device_get(out[0, len(ids):]))
