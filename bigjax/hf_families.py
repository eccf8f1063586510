"""The Hugging Face causal-LM families bigjax computes exactly, both ways: a config.json as
TransformerLM options (`transformer_options`) and options as a config.json (`hf_config`).

GPT-2; the Llama family (Llama 1-3.x with rope scaling, Mistral with its sliding window,
Qwen2, Qwen3 with its head width and query/key norms); Gemma 2 and 3 (GeGLU, embedding scale,
norms on both sides of each branch, soft caps, local/global layers). Configs are read in both
forms transformers has written: the old top-level `rope_theta` / `rope_scaling` (what Hub
checkpoints carry) and transformers 5's `rope_parameters` (per layer type for Gemma 3).
Anything else is a one-line error naming it.
"""

import dataclasses

from bigjax.errors import UserError
from bigjax.models.transformer_config import TransformerConfig

LLAMA_FAMILY = ('llama', 'mistral', 'qwen2', 'qwen3')
GEMMA_FAMILY = ('gemma2', 'gemma3_text')
FAMILIES = ('gpt2', *LLAMA_FAMILY, *GEMMA_FAMILY)
GPT2_ACTIVATIONS = ('gelu_new', 'gelu_pytorch_tanh')  # bigjax's 'gelu' is the tanh form
GPT2_BIAS = ('qkv', 'out', 'up', 'down')
ROPE_TYPES = {'default': 'none', 'linear': 'linear', 'llama3': 'llama3', 'yarn': 'yarn'}
LOCAL, GLOBAL = 'sliding_attention', 'full_attention'  # transformers' layer_types


def transformer_options(hf_config: dict) -> dict:
    """model.transformer options of the bigjax TransformerLM that computes what `hf_config`'s
    model does, plus 'vocab_size'; UserError for what bigjax cannot compute."""
    family = hf_config.get('model_type')
    if family not in FAMILIES:
        raise UserError(f'Hugging Face model_type {family!r} is not supported: bigjax imports '
                        f'{list(FAMILIES)} causal LMs')
    if family == 'gpt2':
        return _gpt2_options(hf_config)
    return _rotary_options(hf_config, family)


def _gpt2_options(c: dict) -> dict:
    if c.get('activation_function', 'gelu_new') not in GPT2_ACTIVATIONS:
        raise UserError(f"GPT-2 activation_function={c['activation_function']!r}: bigjax's MLP "
                        f'computes {GPT2_ACTIVATIONS[0]!r} only')
    for key, wanted in (('scale_attn_weights', True), ('scale_attn_by_inverse_layer_idx', False),
                        ('add_cross_attention', False), ('tie_word_embeddings', True)):
        if c.get(key, wanted) != wanted:
            raise UserError(f'GPT-2 {key}={c[key]!r} is not supported (bigjax computes '
                            f'{key}={wanted})')
    width = c['n_embd']
    return dict(width=width, depth=c['n_layer'], num_heads=c['n_head'], num_kv_heads=0,
                mlp_dim=c.get('n_inner') or 4 * width, mlp='gelu', norm='layernorm',
                norm_eps=float(c.get('layer_norm_epsilon', 1e-5)), positions='learned',
                max_len=c['n_positions'], tied_embeddings=True, bias=GPT2_BIAS,
                vocab_size=c['vocab_size'])


def _rotary_options(c: dict, family: str) -> dict:
    """Llama, Mistral, Qwen2/3 and Gemma 2/3: rotary positions, RMSNorm, gated MLP."""
    gemma = family in GEMMA_FAMILY
    activation = c.get('hidden_activation') or c.get('hidden_act') or 'silu'
    wanted = 'gelu_pytorch_tanh' if gemma else 'silu'
    if activation != wanted:
        raise UserError(f"{family} hidden_act={activation!r}: bigjax's "
                        f"{'GeGLU' if gemma else 'SwiGLU'} uses {wanted!r}")
    if c.get('use_bidirectional_attention'):
        raise UserError(f'{family} use_bidirectional_attention=True: bigjax LMs attend causally')
    width, heads = c['hidden_size'], c['num_attention_heads']
    head_width = c.get('head_dim') or width // heads
    if family == 'qwen2':
        bias = ('qkv',)  # Qwen2's queries, keys and values have biases; nothing else
    else:
        bias = (('qkv', 'out') if c.get('attention_bias') else ()) + (
            ('up', 'gate', 'down') if c.get('mlp_bias') else ())
    options = dict(
        width=width, depth=c['num_hidden_layers'], num_heads=heads,
        num_kv_heads=c.get('num_key_value_heads') or heads,
        head_width=0 if head_width * heads == width else head_width,
        mlp_dim=c['intermediate_size'], mlp='geglu' if gemma else 'swiglu', norm='rmsnorm',
        norm_eps=float(c.get('rms_norm_eps', 1e-6)), positions='rope',
        max_len=c['max_position_embeddings'],
        tied_embeddings=bool(c.get('tie_word_embeddings', gemma)), bias=bias,
        qk_norm=family in ('qwen3', 'gemma3_text'), vocab_size=c['vocab_size'],
        **_layer_kinds(c, family), **_rope_options(c, family, GLOBAL))
    if options['global_every']:
        local = _rope_options(c, family, LOCAL)
        if local['rope_scaling'] != 'none':
            raise UserError(f"{family} local layers' rope_type={local['rope_scaling']!r}: "
                            "bigjax's local layers rotate unscaled")
        options['rope_local_theta'] = local['rope_theta']
    if gemma:
        options.update(post_norms=True, embed_scale=True,
                       attention_scale=float(c.get('query_pre_attn_scalar') or head_width) ** -0.5,
                       attention_softcap=float(c.get('attn_logit_softcapping') or 0.0),
                       logit_softcap=float(c.get('final_logit_softcapping') or 0.0))
    return options


def _rope_options(c: dict, family: str, layer_type: str) -> dict:
    """The rotary options of one layer type, from `rope_parameters` (transformers 5; per layer
    type for Gemma 3) or the old top-level `rope_theta` / `rope_scaling` (and Gemma 3's
    `rope_local_base_freq` for its local layers)."""
    parameters = c.get('rope_parameters') or {}
    if layer_type in parameters:
        parameters = parameters[layer_type]
    elif set(parameters) & {LOCAL, GLOBAL}:
        parameters = {}
    old = c.get('rope_scaling') or {}
    theta = c.get('rope_theta', 10_000.0)
    if layer_type == LOCAL and 'rope_local_base_freq' in c:
        old, theta = {}, c['rope_local_base_freq']
    p = {**old, **parameters}
    rope_type = p.get('rope_type') or p.get('type') or 'default'
    if rope_type not in ROPE_TYPES:
        raise UserError(f'{family} rope_type={rope_type!r} is not supported: bigjax computes '
                        f'rotary scaling of types {list(ROPE_TYPES)}')
    if p.get('partial_rotary_factor', 1.0) != 1.0 or p.get('mscale') or p.get('mscale_all_dim'):
        raise UserError(f'{family} rope partial_rotary_factor / mscale are not supported: '
                        'bigjax rotates whole heads with yarn\'s own attention factor')
    original = p.get('original_max_position_embeddings') or c.get(
        'original_max_position_embeddings') or 0
    factor = p.get('factor') or (c['max_position_embeddings'] / original if original else 1.0)
    return dict(rope_theta=float(p.get('rope_theta', theta)), rope_scaling=ROPE_TYPES[rope_type],
                rope_factor=float(factor), rope_original_max_len=int(original),
                rope_low_freq_factor=float(p.get('low_freq_factor', 1.0)),
                rope_high_freq_factor=float(p.get('high_freq_factor', 4.0)),
                rope_beta_fast=float(p.get('beta_fast') or 32.0),
                rope_beta_slow=float(p.get('beta_slow') or 1.0),
                rope_attention_factor=float(p.get('attention_factor') or 0.0),
                rope_truncate=bool(p.get('truncate', True)))


def _layer_kinds(c: dict, family: str) -> dict:
    """window and global_every from `layer_types`, or from the family's old keys (Mistral:
    every layer local; Gemma 2: every other; Gemma 3: sliding_window_pattern)."""
    window, depth = c.get('sliding_window') or 0, c['num_hidden_layers']
    types = c.get('layer_types')
    if types is None:
        if family in ('qwen2', 'qwen3'):
            if c.get('use_sliding_window'):
                raise UserError(f"{family} use_sliding_window=True: bigjax's windows are on "
                                'every layer or every layer but each n-th, not from '
                                'max_window_layers on')
            window = 0
        every = {'gemma2': 2, 'gemma3_text': c.get('sliding_window_pattern', 6)}.get(family, 0)
        types = [GLOBAL if not window or every and (i + 1) % every == 0 else LOCAL
                 for i in range(depth)]
    if LOCAL not in types or not window:
        return dict(window=0, global_every=0)
    for every in [0, *range(1, depth + 1)]:
        if types == [GLOBAL if every and (i + 1) % every == 0 else LOCAL for i in range(depth)]:
            return dict(window=int(window), global_every=every)
    raise UserError(f'{family} layer_types={types}: bigjax computes every layer local, or every '
                    'n-th layer global and the others local')


def hf_config(options: dict, vocab_size: int) -> dict:
    """The config.json of the Hugging Face model that computes what a bigjax TransformerLM with
    model.transformer `options` does: GPT-2 (learned positions, LayerNorm, GELU, tied), Gemma 2
    or 3 (GeGLU, norms after each branch, embedding scale), or the Llama family (rotary, RMSNorm,
    SwiGLU: Qwen3 with query/key norms, Mistral with a window on every layer, Qwen2 with query,
    key and value biases only, else Llama); UserError for other combinations."""
    o = {**dataclasses.asdict(TransformerConfig()), **options}
    heads, kv_heads = o['num_heads'], o['num_kv_heads'] or o['num_heads']
    if (o['positions'], o['norm'], o['mlp']) == ('learned', 'layernorm', 'gelu'):
        if not o['tied_embeddings'] or kv_heads != heads or not set(o['bias']) <= set(GPT2_BIAS):
            raise UserError('export to Hugging Face: a GPT-2 needs tied embeddings, '
                            'num_kv_heads=0 and no gate bias')
        _refuse_extras(o, 'gpt2', ())
        return dict(model_type='gpt2', architectures=['GPT2LMHeadModel'], vocab_size=vocab_size,
                    n_embd=o['width'], n_layer=o['depth'], n_head=heads, n_inner=o['mlp_dim'],
                    n_positions=o['max_len'], activation_function='gelu_new',
                    layer_norm_epsilon=o['norm_eps'], tie_word_embeddings=True,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if (o['positions'], o['norm']) != ('rope', 'rmsnorm') or o['mlp'] == 'gelu':
        raise UserError('export to Hugging Face: the model must be GPT-2-like (learned '
                        "positions, layernorm, gelu) or Llama/Gemma-like (rope, rmsnorm, swiglu "
                        f"or geglu); it has positions={o['positions']!r}, norm={o['norm']!r}, "
                        f"mlp={o['mlp']!r}")
    family, extra = _rotary_family(o)
    head_width = o['head_width'] or o['width'] // heads
    kinds = TransformerConfig(window=o['window'], global_every=o['global_every'])
    layer_types = [LOCAL if kinds.local(i) else GLOBAL for i in range(o['depth'])]
    config = dict(model_type=family, vocab_size=vocab_size, hidden_size=o['width'],
                  num_hidden_layers=o['depth'], num_attention_heads=heads,
                  num_key_value_heads=kv_heads, head_dim=head_width,
                  intermediate_size=o['mlp_dim'], max_position_embeddings=o['max_len'],
                  rms_norm_eps=o['norm_eps'], tie_word_embeddings=o['tied_embeddings'],
                  rope_parameters=_rope_parameters(o, GLOBAL), **extra)
    if family in GEMMA_FAMILY:
        config.update(
            hidden_activation='gelu_pytorch_tanh', layer_types=layer_types,
            sliding_window=o['window'] or None,
            query_pre_attn_scalar=_whole((o['attention_scale'] or head_width ** -0.5) ** -2),
            attn_logit_softcapping=o['attention_softcap'] or None,
            final_logit_softcapping=o['logit_softcap'] or None)
        if family == 'gemma3_text':
            config['rope_parameters'] = {GLOBAL: config['rope_parameters'],
                                         LOCAL: _rope_parameters(o, LOCAL)}
    else:
        config.update(hidden_act='silu')
        if o['window']:
            config.update(sliding_window=o['window'])
    return config


def _whole(x: float):
    """x as an int where it is one (configs that transformers validates want ints)."""
    return round(x) if abs(x - round(x)) < 1e-6 else x


def _rotary_family(o: dict) -> tuple[str, dict]:
    """The family (and its own config keys) whose modules compute options `o`."""
    bias = set(o['bias'])
    attention, mlp = bias & {'qkv', 'out'}, bias & {'up', 'gate', 'down'}
    if o['mlp'] == 'geglu':
        family = 'gemma3_text' if o['qk_norm'] else 'gemma2'
        if bias or not (o['tied_embeddings'] and o['post_norms'] and o['embed_scale']):
            raise UserError(f'export to Hugging Face: a GeGLU model exports as {family}, which '
                            'has tied embeddings, post_norms, embed_scale and no biases')
        _refuse_extras(o, family, ('post_norms', 'embed_scale', 'attention_scale',
                                   'attention_softcap', 'logit_softcap', 'qk_norm', 'window',
                                   'global_every', 'rope_local_theta'))
        return family, dict(architectures=['Gemma3ForCausalLM' if o['qk_norm'] else
                                           'Gemma2ForCausalLM'], attention_bias=False)
    if o['qk_norm']:
        family = 'qwen3'
        if attention not in (set(), {'qkv', 'out'}) or mlp:
            raise UserError(f"export to Hugging Face: bias={o['bias']} has no Qwen3 form "
                            "(none, or ('qkv', 'out'))")
        extra = dict(attention_bias=bool(attention), use_sliding_window=False,
                     architectures=['Qwen3ForCausalLM'])
        allowed = ('qk_norm',)
    elif o['window']:
        family, extra = 'mistral', dict(architectures=['MistralForCausalLM'])
        allowed = ('window',)
        if bias or o['global_every']:
            raise UserError('export to Hugging Face: a windowed SwiGLU model exports as Mistral, '
                            'whose layers are all local and have no biases')
    elif bias == {'qkv'}:
        family, extra = 'qwen2', dict(use_sliding_window=False, architectures=['Qwen2ForCausalLM'])
        allowed = ()
    elif attention in (set(), {'qkv', 'out'}) and mlp in (set(), {'up', 'gate', 'down'}):
        family = 'llama'
        extra = dict(attention_bias=bool(attention), mlp_bias=bool(mlp),
                     architectures=['LlamaForCausalLM'])
        allowed = ()
    else:
        raise UserError(f"export to Hugging Face: bias={o['bias']} has no Llama-family form "
                        "(none, ('qkv',), ('qkv', 'out'), or the MLP's three too)")
    _refuse_extras(o, family, allowed)
    return family, extra


# Options that only some families have a form for (_refuse_extras).
SOME_FAMILIES_ONLY = ('post_norms', 'embed_scale', 'attention_scale', 'attention_softcap',
                      'logit_softcap', 'qk_norm', 'window', 'global_every', 'rope_local_theta',
                      'head_width')


def _refuse_extras(o: dict, family: str, allowed: tuple) -> None:
    """UserError for an option set that `family` has no form for."""
    allowed = set(allowed) | ({'head_width'} if family != 'gpt2' else set())
    extras = [k for k in SOME_FAMILIES_ONLY if o[k] and k not in allowed]
    if family == 'gpt2' and o['rope_scaling'] != 'none':
        extras.append('rope_scaling')
    if extras:
        raise UserError(f'export to Hugging Face: a {family} model has no form for '
                        f'{", ".join(f"{k}={o[k]!r}" for k in extras)}')


def _rope_parameters(o: dict, layer_type: str) -> dict:
    """transformers 5's rope_parameters of the global or the local layers."""
    if layer_type == LOCAL:
        return dict(rope_type='default', rope_theta=o['rope_local_theta'] or o['rope_theta'])
    rope = dict(rope_type={v: k for k, v in ROPE_TYPES.items()}[o['rope_scaling']],
                rope_theta=o['rope_theta'])
    if o['rope_scaling'] != 'none':
        rope['factor'] = o['rope_factor']
    if o['rope_scaling'] in ('llama3', 'yarn'):
        rope['original_max_position_embeddings'] = o['rope_original_max_len']
    if o['rope_scaling'] == 'llama3':
        rope.update(low_freq_factor=o['rope_low_freq_factor'],
                    high_freq_factor=o['rope_high_freq_factor'])
    if o['rope_scaling'] == 'yarn':
        rope.update(beta_fast=o['rope_beta_fast'], beta_slow=o['rope_beta_slow'],
                    truncate=o['rope_truncate'])
        if o['rope_attention_factor']:
            rope['attention_factor'] = o['rope_attention_factor']
    return rope
