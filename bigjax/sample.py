"""Autoregressive sampling from a TransformerLM with its key/value cache.

The prompt fills the cache in one call; each new token then costs one single-token call; past
max_len positions, a sliding window refills it (generate_any_length). With
temperature 0 the most likely token is taken; otherwise tokens are drawn from
softmax(logits / temperature), restricted to the `top_k` most likely when top_k > 0.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bigjax import plan as plan_lib
from bigjax.data import LM_KINDS, tokenizers
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


@functools.partial(jax.jit, static_argnames=('model', 'num_tokens', 'temperature', 'top_k',
                                             'stop_ids'))
def generate(model: TransformerLM, params, prompt_BT: jax.Array, rng: jax.Array, *,
             num_tokens: int, temperature: float = 1.0, top_k: int = 0, lengths_B=None,
             stop_ids: tuple = ()) -> jax.Array:
    """The prompt followed by `num_tokens` sampled tokens: (B, T + num_tokens) int32.

    lengths_B: prompts of different lengths in one batch, left-padded: row b's prompt is its last
    lengths_B[b] tokens (the padding is a segment of its own that no prompt token sees, and
    positions count from the first real token). stop_ids: a row that draws one of them stops
    there (the rest of the row repeats it), and generation ends once every row has stopped.
    """
    batch, length = prompt_BT.shape
    if lengths_B is None:
        lengths_B = jnp.full((batch,), length, jnp.int32)
        segments_BT = None
    else:
        segments_BT = (jnp.arange(length)[None] >= length - lengths_B[:, None]).astype(jnp.int32)
    positions_BT = jnp.maximum(jnp.arange(length)[None] - (length - lengths_B)[:, None], 0)
    cache = model.init(jax.random.PRNGKey(0), prompt_BT[:, :1], train=False, decode=True,
                       positions_BT=positions_BT[:, :1])['cache']
    cache = jax.tree.map(jnp.zeros_like, cache)
    logits_BTV, updated = model.apply({'params': params, 'cache': cache}, prompt_BT, train=False,
                                      decode=True, positions_BT=positions_BT,
                                      segments_BT=segments_BT, mutable=['cache'])
    stops = jnp.asarray(stop_ids or (-1,), jnp.int32)

    def running(carry):
        index, done_B = carry[0], carry[4]
        return (index < num_tokens) & ~jnp.all(done_B)

    def step(carry):
        index, cache, logits_BV, rng, done_B, last_B, out_BN = carry
        rng, draw_rng = jax.random.split(rng)
        token_B = jnp.where(done_B, last_B, next_token(logits_BV, draw_rng, temperature, top_k))
        done_B = done_B | jnp.isin(token_B, stops)
        logits_B1V, updated = model.apply(
            {'params': params, 'cache': cache}, token_B[:, None], train=False, decode=True,
            positions_BT=(lengths_B + index)[:, None],
            segments_BT=None if segments_BT is None else jnp.ones((batch, 1), jnp.int32),
            mutable=['cache'])
        return (index + 1, updated['cache'], logits_B1V[:, 0], rng, done_B, token_B,
                out_BN.at[:, index].set(token_B))

    start = (jnp.zeros((), jnp.int32), updated['cache'], logits_BTV[:, -1], rng,
             jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.int32),
             jnp.zeros((batch, num_tokens), jnp.int32))
    index, _, _, _, _, last_B, out_BN = jax.lax.while_loop(running, step, start)
    out_BN = jnp.where(jnp.arange(num_tokens)[None] < index, out_BN, last_B[:, None])
    return jnp.concatenate([prompt_BT.astype(jnp.int32), out_BN], axis=1)


def generate_any_length(model: TransformerLM, params, prompt_BT: jax.Array, rng: jax.Array, *,
                        num_tokens: int, temperature: float = 1.0, top_k: int = 0) -> np.ndarray:
    """`generate` past the model's max_len positions, as a sliding window: once the cache is
    full, sampling goes on from the last max_len // 2 tokens (renumbered from position 0). The
    prompt keeps its last max_len - 1 tokens. (B, T + num_tokens) int32, on the host."""
    if prompt_BT.shape[1] < 1:
        raise UserError('the prompt must not be empty')
    max_len, out = model.cfg.max_len, np.asarray(prompt_BT, np.int32)
    context_BT, end = out[:, -(max_len - 1):], out.shape[1] + num_tokens
    while out.shape[1] < end:
        # Every window is filled and comes from the host (a last one's extra tokens are
        # dropped): one input shape and placement, so one compile (~1 s each on a CPU).
        rng, draw_rng = jax.random.split(rng)
        new_BN = generate(model, params, context_BT, draw_rng,
                          num_tokens=min(num_tokens, max_len - context_BT.shape[1]),
                          temperature=temperature, top_k=top_k)[:, context_BT.shape[1]:]
        out = np.concatenate([out, jax.device_get(new_BN)], axis=1)[:, :end]
        context_BT = out[:, -(max_len // 2):]
    return out


def from_workdir(config, workdir, prompt: str, *, num_tokens: int, temperature: float,
                 top_k: int, seed: int = 0, conversation: str = '') -> str:
    """A continuation of `prompt` by the LM trained in `workdir` (its latest checkpoint); or, given
    a conversation (JSON messages, or a .json file of them), the model's next answer to it in
    the run's chat template, up to its end of turn."""
    plan, state, step = plan_lib.load_state(config, workdir)
    if plan.dataset.kind not in LM_KINDS or plan.dataset.tokenizer is None:
        raise UserError(f'--mode=sample needs a language model trained on text; '
                        f'data.name={config.data.name!r} with model.name={config.model.name!r} '
                        'is not one')
    tokenizer = plan.dataset.tokenizer
    rng = jax.random.PRNGKey(seed)
    if conversation:
        from bigjax import chat_eval
        from bigjax.data import chat, chat_template
        messages = chat.messages_from_json(conversation)
        template = (plan.dataset.chat.template if plan.dataset.chat is not None
                    else chat_template.resolve(config.data.chat.template, tokenizer))
        with chat_template.named('--conversation'):
            prompt_ids = chat_template.prompt_ids(template, tokenizer, messages)
        return chat_eval.answer(plan.model, state.params, tokenizer, [prompt_ids],
                                answer_tokens=num_tokens,
                                stop_ids=chat_template.stop_ids(template, tokenizer),
                                temperature=temperature, top_k=top_k, rng=rng)[0]
    ids = [tokenizers.prompt_start(tokenizer), *tokenizer.encode_batch([prompt])[0]]
    out = generate_any_length(plan.model, state.params, np.asarray([ids], np.int32), rng,
                              num_tokens=num_tokens, temperature=temperature, top_k=top_k)
    return plan.dataset.tokenizer.decode(out[0, len(ids):])
