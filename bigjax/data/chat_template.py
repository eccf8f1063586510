"""Chat templates: conversations rendered to text exactly as a model's own Jinja template renders
them under transformers' apply_chat_template (jinja2's sandbox with the same settings, filters
and globals), then tokenized with a weight per token: which tokens the model should learn.

The template is the tokenizer's own (a Hugging Face folder's chat_template.jinja, or
chat_template in its tokenizer_config.json), DEFAULT for bigjax's own tokenizers (each turn as
'<|role|>' and a newline, its content, then the end-of-document token), PLAIN (the contents
joined, each answer ended by the end-of-document token: completion fine-tuning without a chat
format), or your own (a .jinja file, or the Jinja text itself).

What is learnt: the spans a template marks with {% generation %} ... {% endgeneration %} (as
transformers' return_assistant_tokens_mask reads them) or, for templates without them, each
assistant turn: from the end of the conversation before it rendered with the generation prompt,
to the end of the conversation rendered through it, so the template's end-of-turn token is
learnt too. A token is learnt where its characters overlap such a span (transformers' rule).
"""

import contextlib
import contextvars
import dataclasses
import datetime
import functools
import json
import os
import re

import numpy as np

from bigjax.errors import UserError

DEFAULT = ("{{ bos_token }}{% for message in messages %}"
           "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token }}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
PLAIN = ("{{ bos_token }}{% for message in messages %}{{ message['content'] }}"
         "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}")
NAMED = {'default': DEFAULT, 'plain': PLAIN}
TRAIN_ON = ('assistant', 'last', 'all')  # every assistant turn, the last one, every token
REASONING_FIELDS = ('reasoning_content', 'thinking', 'reasoning')  # transformers' aliases


@functools.lru_cache
def _environment():
    """A sandboxed jinja2 environment configured as transformers configures its own."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationSpans(jinja2.ext.Extension):
        """{% generation %} ... {% endgeneration %}: renders its body and, while tracking,
        records the body's (start, end) characters in the output."""
        tags = {'generation'}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(['name:endgeneration'], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method('_track'), [], [], body
                                          ).set_lineno(lineno)

        def _track(self, caller):
            text = caller()
            tracking = _TRACKING.get()
            if tracking is not None:
                blocks, spans = tracking
                start = sum(map(len, blocks))
                spans.append((start, start + len(text)))
            return text

    class Namespace(jinja2.utils.Namespace):
        """namespace() without underscore attributes (the sandbox's rule in transformers)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith('_'):
                raise jinja2.exceptions.SecurityError(
                    f'chat templates cannot set underscore attributes ({name!r})')

    class Dict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[GenerationSpans, jinja2.ext.loopcontrols])
    environment.filters['tojson'] = tojson
    environment.globals.update(
        raise_exception=raise_exception, dict=Dict(), namespace=Namespace,
        strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
    return environment


_TRACKING = contextvars.ContextVar('bigjax_generation_spans', default=None)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template with the special-token strings it is rendered with
    (bos_token, eos_token, ...: transformers' special_tokens_map)."""

    source: str
    special_tokens: tuple  # ((name, text), ...)
    name: str = ''  # where it came from, for messages

    @functools.cached_property
    def _compiled(self):
        import jinja2
        try:
            return _environment().from_string(self.source)
        except jinja2.TemplateError as e:
            raise UserError(f'the chat template {self.name} does not parse: {e}') from None

    @property
    def marks_generation(self) -> bool:
        """Whether the template marks what to learn with {% generation %}."""
        return re.search(r'\{%-?\s*generation\s*-?%\}', self.source) is not None

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return ''.join(self._blocks(messages, add_generation_prompt, None))

    def _blocks(self, messages, add_generation_prompt, spans):
        import jinja2
        variables = dict(self.special_tokens)
        blocks = []
        token = _TRACKING.set((blocks, spans)) if spans is not None else None
        try:
            for block in self._compiled.generate(
                    messages=_with_reasoning_aliases(messages), tools=None, documents=None,
                    add_generation_prompt=add_generation_prompt, **variables):
                blocks.append(block)
        except jinja2.TemplateError as e:
            raise ChatError(f'the chat template {self.name} refuses it: {e}') from None
        finally:
            if token is not None:
                _TRACKING.reset(token)
        return blocks

    def learnt_spans(self, messages: list[dict], train_on: str) -> tuple[str, list]:
        """(the rendered conversation, [(start, end) characters to learn, ...])."""
        if train_on not in TRAIN_ON:
            raise UserError(f'data.chat.train_on={train_on!r} is not one of {list(TRAIN_ON)}')
        if self.marks_generation:
            spans = []
            text = ''.join(self._blocks(messages, False, spans))
        else:
            text = self.render(messages)
            spans = [self._turn_span(messages, i, text) for i, m in enumerate(messages)
                     if m.get('role') == 'assistant']
        if train_on == 'all':
            return text, [(0, len(text))]
        spans = [s for s in spans if s[1] > s[0]]
        if not spans:
            raise ChatError('no assistant turn to learn (the template marks none)'
                            if self.marks_generation else 'no assistant message to learn')
        return text, spans[-1:] if train_on == 'last' else spans

    def _turn_span(self, messages: list[dict], index: int, text: str) -> tuple[int, int]:
        before = self.render(messages[:index], add_generation_prompt=True)
        through = text if index == len(messages) - 1 else self.render(messages[:index + 1])
        if not (text.startswith(through) and through.startswith(before)):
            raise ChatError(
                f'the chat template {self.name} renders the conversation up to assistant message '
                f'{index} differently inside the whole conversation, so its answer cannot be '
                'located: mark answers with {% generation %} in the template, or set '
                "data.chat.train_on='all'")
        return len(before), len(through)


class ChatError(ValueError):
    """A conversation a template cannot render or learn from (named with its record later)."""


def _with_reasoning_aliases(messages: list[dict]) -> list[dict]:
    """transformers' aliasing: a message's reasoning under any of its names is given under
    'reasoning_content' and 'thinking' too."""
    out = []
    for message in messages:
        reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None),
                         None)
        if reasoning is not None:
            message = {'thinking': reasoning, **message, 'reasoning_content': reasoning}
        out.append(message)
    return out


def resolve(spec: str, tokenizer) -> ChatTemplate:
    """The template data.chat.template names: '' the tokenizer's own (DEFAULT where it has
    none), 'default', 'plain', a file, or Jinja text."""
    own = getattr(tokenizer, 'chat_template', None)
    if not spec:
        source, name = (own, f'of {tokenizer.name}') if own else (DEFAULT, "'default'")
    elif spec in NAMED:
        source, name = NAMED[spec], repr(spec)
    elif os.path.isfile(os.path.expanduser(spec)):
        with open(os.path.expanduser(spec), encoding='utf-8') as f:
            source, name = f.read(), os.path.basename(spec)
    elif '{{' in spec or '{%' in spec:
        source, name = spec, '(data.chat.template)'
    else:
        raise UserError(f"data.chat.template={spec!r} is not '', 'default', 'plain', a file, or "
                        'Jinja text')
    return ChatTemplate(source, tuple(sorted(tokenizer.special_tokens.items())), name)


def encode(template: ChatTemplate, tokenizer, messages: list[dict], train_on: str
           ) -> tuple[np.ndarray, np.ndarray]:
    """(token ids int32, weights uint8: 1 where the token is learnt) of a conversation, tokenized
    as apply_chat_template(tokenize=True) tokenizes it."""
    text, spans = template.learnt_spans(messages, train_on)
    [(ids, offsets)] = tokenizer.encode_chats([text])
    return ids, learnt(offsets, spans)


def learnt(offsets_N2: np.ndarray, spans: list) -> np.ndarray:
    """Weights of tokens with these (start, end) characters: 1 for each that overlaps one of the
    spans to learn (uint8)."""
    hit = np.zeros(len(offsets_N2), bool)
    for start, end in spans:
        hit |= (offsets_N2[:, 1] > start) & (offsets_N2[:, 0] < end)
    return hit.astype(np.uint8)


def prompt_ids(template: ChatTemplate, tokenizer, messages: list[dict]) -> np.ndarray:
    """The conversation so far with the generation prompt: what a model answers after."""
    return tokenizer.encode_chats([template.render(messages, add_generation_prompt=True)])[0][0]


def stop_ids(template: ChatTemplate, tokenizer) -> tuple[int, ...]:
    """Ids that end an answer: the end-of-document id, and the token the template writes right
    after an answer's content (its end-of-turn: <|im_end|>, <|eot_id|>, <end_of_turn>, ...)."""
    content = 'bigjax'
    probe = [{'role': 'user', 'content': 'hello'}, {'role': 'assistant', 'content': content}]
    stops = {int(tokenizer.eos_id)}
    try:
        text, spans = template.learnt_spans(probe, 'last')
    except ChatError:
        return tuple(sorted(stops))
    start, end = spans[0]
    after = text.rfind(content, start, end) + len(content)
    [(ids, offsets)] = tokenizer.encode_chats([text])
    following = np.flatnonzero((offsets[:, 0] >= after) & (offsets[:, 0] < end))
    if after >= len(content) and len(following):
        stops.add(int(ids[following[0]]))
    return tuple(sorted(stops))


@contextlib.contextmanager
def named(location: str):
    """Turns a ChatError inside into a UserError naming `location` (a record)."""
    try:
        yield
    except ChatError as e:
        raise UserError(f'{location}: {e}') from None
