"""What fine-tuning on conversations did to the answers: held-out prompts (the conversation before
its last answer) answered greedily with the KV cache, a batch at a time, each answer cut at the
first stop id (end of turn or of text), and scored against the reference answer.

Prompts are left-padded to one length (the longest, rounded up to 64, so one compilation serves
every evaluation) and keep their last tokens when they do not fit the model with the answer.
Scorers: 'exact_match' (equal after stripping whitespace), 'contains' (the reference appears in
the answer), or 'module:function' of your own, (generated, reference) -> a score in [0, 1].
The metric is named answer_<scorer>.
"""

import importlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from bigjax import sample
from bigjax.errors import UserError

SCORERS = {
    'exact_match': lambda generated, reference: float(generated.strip() == reference.strip()),
    'contains': lambda generated, reference: float(reference.strip() in generated),
}
BATCH = 16  # prompts answered at a time
ROUND = 64  # prompt lengths are rounded up to this


def scorer(name: str) -> Callable[[str, str], float]:
    """The scorer data.chat.scorer names."""
    if name in SCORERS:
        return SCORERS[name]
    module, _, function = name.partition(':')
    if not (module and function):
        raise UserError(f"data.chat.scorer={name!r} is not one of {sorted(SCORERS)} or "
                        "'module:function'")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as e:
        raise UserError(f'data.chat.scorer={name!r}: {e}') from None


def metric_name(name: str) -> str:
    return f'answer_{name.rpartition(":")[2]}'


def answer(model, params, tokenizer, prompts, *, answer_tokens: int, stop_ids: tuple,
           temperature: float = 0.0, top_k: int = 0, rng=None) -> list[str]:
    """The model's answer to each prompt (token ids), decoded up to its first stop id."""
    max_prompt = model.cfg.max_len - answer_tokens
    if max_prompt < 1:
        raise UserError(f'data.chat.answer_tokens={answer_tokens} leaves no room for a prompt in '
                        f'model.transformer.max_len={model.cfg.max_len}')
    prompts = [np.asarray(p, np.int32)[-max_prompt:] for p in prompts]
    width = min(-(-max(len(p) for p in prompts) // ROUND) * ROUND, max_prompt)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    out, rows_per_call = [], min(BATCH, len(prompts))
    for start in range(0, len(prompts), rows_per_call):
        batch = prompts[start:start + rows_per_call]
        rows = np.full((rows_per_call, width), tokenizer.pad_id, np.int32)
        lengths = np.ones(rows_per_call, np.int32)  # unused rows: one padding token of prompt
        for i, ids in enumerate(batch):
            ids = ids[-width:]
            rows[i, width - len(ids):], lengths[i] = ids, len(ids)
        rng, draw_rng = jax.random.split(rng)
        tokens = np.asarray(multihost_utils.process_allgather(sample.generate(
            model, params, jnp.asarray(rows), draw_rng, num_tokens=answer_tokens,
            temperature=temperature, top_k=top_k, lengths_B=jnp.asarray(lengths),
            stop_ids=tuple(stop_ids)), tiled=True))[:, width:]  # every process: the whole
        for row in tokens[:len(batch)]:
            stop = next((i for i, t in enumerate(row) if int(t) in stop_ids), len(row))
            out.append(tokenizer.decode(row[:stop]))
    return out


def evaluate(plan, state) -> tuple[dict, dict]:
    """({answer_<scorer>: mean score}, {'generations': [question, reference, generated, score]})
    of the held-out prompts of the run's chat data."""
    chat = plan.dataset.chat
    score = scorer(chat.scorer)
    generated = answer(plan.model, state.params, plan.dataset.tokenizer, chat.prompts,
                       answer_tokens=chat.answer_tokens, stop_ids=chat.stop_ids)
    scores = [float(score(g, r)) for g, r in zip(generated, chat.references)]
    rows = [{'question': q, 'reference': r, 'generated': g, 'score': s}
            for q, r, g, s in zip(chat.questions, chat.references, generated, scores)]
    return {metric_name(chat.scorer): float(np.mean(scores))}, {'generations': rows}
