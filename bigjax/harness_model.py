"""A bigjax LM as an lm-evaluation-harness model (registered with it as 'bigjax').

Requests are tokenized as lm-eval's own `hf` backend tokenizes them (TemplateLM: the context and
the continuation encoded together, then split, the text starting with the family's BOS where its
tokenizer adds one; an empty context conditions on the prefix token, tokenizers.prompt_start), so
both give the same log-likelihoods for the same weights. Scoring runs as one jitted call per
batch on the run's mesh, rows sharded over the batch axes, padded to a fixed number of rows and to
one of a few widths (powers of two up to the model's max_len), so a task compiles a handful of
programs, not one per request. Generation is
chat_eval.answer's: greedy or sampled with the KV cache, left-padded batches, stopping early at
end of text or at a stop string that is one token; lm-eval's stop strings then cut the text.

Every process runs the same requests (lm-eval sees one process); the arrays are global.
"""

import collections
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.models.utils import postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from bigjax import chat_eval, parallel
from bigjax.data import LM_KINDS, tokenizers
from bigjax.errors import UserError

MIN_WIDTH = 32
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's hf backend's default


def widths(max_len: int) -> list[int]:
    """The row widths requests are padded to: powers of two from MIN_WIDTH, then max_len."""
    out, width = [], MIN_WIDTH
    while width < max_len:
        out.append(width)
        width *= 2
    return out + [max_len]


def _scores(model, rules, mesh, params, tokens_BT, targets_BT, scored_BT):
    """(sum of log p(target) over the scored positions, every scored target the argmax) per row."""
    with parallel.layout(mesh, rules):
        logits_BTV = model.apply({'params': params}, tokens_BT, train=False).astype(jnp.float32)
    target_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    logp_BT = target_BT - jax.nn.logsumexp(logits_BTV, axis=-1)
    greedy_BT = jnp.argmax(logits_BTV, axis=-1) == targets_BT
    return (jnp.sum(jnp.where(scored_BT, logp_BT, 0.0), axis=-1),
            jnp.all(greedy_BT | ~scored_BT, axis=-1))


@register_model('bigjax')
class BigjaxLM(TemplateLM):
    """lm-eval's LM over a bigjax plan and parameters. From Python, after `import
    bigjax.harness_model` (which registers it): lm_eval.simple_evaluate(model='bigjax',
    model_args='config=configs/x.py:arg,workdir=RUN', tasks=[...]), the run's latest checkpoint."""

    def __init__(self, config: str = '', workdir: str = '', *, plan=None, params=None,
                 batch_size=None, add_bos_token: bool | str | None = None, seed: int = 0, **_):
        super().__init__()
        if plan is None:
            if not (config and workdir):
                raise UserError('the bigjax lm-eval model needs model_args config=FILE[:arg],'
                                'workdir=RUN (the run whose latest checkpoint is scored)')
            from bigjax import config as config_lib
            from bigjax import plan as plan_lib
            plan, state, _ = plan_lib.load_state(config_lib.from_file(config), workdir)
            params = state.params
        if plan.dataset.kind not in LM_KINDS or plan.dataset.tokenizer is None:
            raise UserError(f'lm-evaluation-harness scores language models trained on text; '
                            f'data.name={plan.config.data.name!r} with '
                            f'model.name={plan.config.model.name!r} is not one')
        self.plan, self.params, self.model = plan, params, plan.model
        self.bigjax_tokenizer = plan.dataset.tokenizer
        self.max_length = self.model.cfg.max_len
        shards = parallel.batch_shards(plan.mesh)
        rows = int(batch_size) if str(batch_size or '').isdigit() and int(batch_size) > 0 else (
            plan.config.train.eval_batch_size or plan.config.train.batch_size)
        self.batch_size = -(-rows // shards) * shards
        self.rng = jax.random.PRNGKey(seed)
        self.batch_sharding = parallel.batch_sharding(plan.mesh)
        self._score = jax.jit(
            functools.partial(_scores, self.model, plan.rules, plan.mesh),
            in_shardings=(plan.state_shardings.params,) + (self.batch_sharding,) * 3,
            out_shardings=(self.batch_sharding,) * 2)
        self._template = None
        self._prefix_id = tokenizers.prompt_start(self.bigjax_tokenizer)
        self._start_id = self._text_start(add_bos_token)

    @property
    def eot_token_id(self) -> int:
        return int(self.bigjax_tokenizer.eos_id)

    @property
    def prefix_token_id(self) -> int:
        return self._prefix_id

    def _text_start(self, add_bos_token) -> int | None:
        """The id tok_encode puts before a text, as the hf backend's tokenizer: the family's BOS
        (model arg add_bos_token unset), the prefix token (add_bos_token=True) or none (False)."""
        if add_bos_token is None:
            return self.bigjax_tokenizer.bos_id
        return self.prefix_token_id if str(add_bos_token).lower() in ('true', '1') else None

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_) -> list[int]:
        """Special tokens written in the text are those tokens, as in transformers' tokenizers
        (a chat template's markers); the text starts with _text_start's id unless
        add_special_tokens is False or the text already starts with it."""
        ids = [int(i) for i in self.bigjax_tokenizer.encode_chats([string])[0][0]]
        start = None if add_special_tokens is False else self._start_id
        if start is not None and ids[:1] != [start]:
            ids.insert(0, start)
        return ids

    def tok_decode(self, ids) -> str:
        return self.bigjax_tokenizer.decode(np.asarray(ids, np.int32))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_):
        """[(log p(continuation | context), greedy)] of [(strings, context ids, continuation
        ids)], the longest rows first so padding stays small."""
        rows = []
        for _, context, continuation in requests:
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            rows.append((whole, min(len(continuation), len(whole) - 1)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out = [None] * len(rows)
        batches = range(0, len(order), self.batch_size)
        for start in tqdm(batches, desc='bigjax loglikelihood', disable=disable_tqdm):
            chosen = order[start:start + self.batch_size]
            width = next(w for w in widths(self.max_length)
                         if w >= max(len(rows[i][0]) - 1 for i in chosen))
            tokens, targets, scored = (np.full((self.batch_size, width), self.bigjax_tokenizer.pad_id,
                                               np.int32), np.zeros((self.batch_size, width), np.int32),
                                       np.zeros((self.batch_size, width), bool))
            for row, i in enumerate(chosen):
                whole, count = rows[i]
                length = len(whole) - 1
                tokens[row, :length], targets[row, :length] = whole[:-1], whole[1:]
                scored[row, length - count:length] = True
            logp, greedy = (np.asarray(multihost_utils.process_allgather(x, tiled=True))
                            for x in self._score(self.params, *map(self._global,
                                                                    (tokens, targets, scored))))
            for row, i in enumerate(chosen):
                out[i] = (float(logp[row]), bool(greedy[row]))
        for (strings, _, _), answer in zip(requests, out):
            if strings is not None:
                self.cache_hook.add_partial('loglikelihood', strings, answer)
        return out

    def _global(self, rows: np.ndarray) -> jax.Array:
        """Rows every process holds in full, as one array sharded over the batch axes."""
        return jax.make_array_from_callback(rows.shape, self.batch_sharding,
                                            lambda index: rows[index])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood over disjoint windows of max_len tokens (lm-eval's
        rolling windows, as the hf backend)."""
        windows, owners = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[i] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial('loglikelihood_rolling', req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each context continued (greedy unless do_sample) up to its first stop string, at
        most max_gen_toks tokens, its context keeping its last max_len - max_gen_toks tokens."""
        groups = collections.defaultdict(list)
        for i, req in enumerate(requests):
            groups[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
        out = [None] * len(requests)
        eos = self.tok_decode([self.eot_token_id])
        for indices in tqdm(groups.values(), desc='bigjax generate_until', disable=disable_tqdm):
            kwargs = normalize_gen_kwargs(dict(requests[indices[0]].args[1]),
                                          DEFAULT_MAX_GEN_TOKS)
            until = handle_stop_sequences(kwargs.pop('until', None), eos=eos)
            max_gen_toks = int(kwargs.pop('max_gen_toks'))
            if max_gen_toks >= self.max_length:
                raise UserError(f'a task asks for {max_gen_toks} generated tokens, and the model '
                                f'sees {self.max_length} (model.transformer.max_len): lower the '
                                "task's max_gen_toks")
            stop_ids = {self.eot_token_id}
            for text in until:
                ids = self.tok_encode(text, add_special_tokens=False)
                if len(ids) == 1 and self.tok_decode(ids) == text:
                    stop_ids.add(ids[0])
            prompts = [self.tok_encode(requests[i].args[0]) or [self.prefix_token_id]
                       for i in indices]
            temperature = float(kwargs.get('temperature', 0.0)) if kwargs.get('do_sample') else 0.0
            self.rng, draw = jax.random.split(self.rng)
            texts = chat_eval.answer(self.model, self.params, self.bigjax_tokenizer, prompts,
                                     answer_tokens=max_gen_toks, stop_ids=tuple(sorted(stop_ids)),
                                     temperature=temperature, top_k=int(kwargs.get('top_k') or 0),
                                     rng=draw)
            for i, text in zip(indices, texts):
                out[i] = text = postprocess_generated_text(text, until, None)
                self.cache_hook.add_partial('generate_until', requests[i].args, text)
        return out

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True
                            ) -> str:
        """The conversation in the run's chat template (its chat data's, else data.chat.template
        resolved for its tokenizer), as text whose special tokens tok_encode keeps."""
        return self.template().render(chat_history, add_generation_prompt=add_generation_prompt)

    def template(self):
        if self._template is None:
            from bigjax.data import chat_template
            chat = self.plan.dataset.chat
            self._template = chat.template if chat is not None else chat_template.resolve(
                self.plan.config.data.chat.template, self.bigjax_tokenizer)
        return self._template

    @property
    def tokenizer_name(self) -> str:
        return self.bigjax_tokenizer.name

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.template().source if chat_template else None
