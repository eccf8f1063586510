"""Hugging Face causal-LM checkpoints in and out: the families of bigjax/hf_families.py (GPT-2,
Llama 1-3.x, Mistral, Qwen2/3, Gemma 2/3) as bigjax TransformerLM parameters, and back.

A Hugging Face folder is what `save_pretrained` writes: config.json and model.safetensors (or
shards listed in model.safetensors.index.json). Tensors are read one at a time and mapped by
name. Tensor names and shapes follow transformers' own modules: GPT-2's Conv1D weights are
(in, out); the others' Linear weights are (out, in), their queries and keys in transformers'
rotate-half channel order, which bigjax's rotary positions use too; Gemma's RMSNorm weights
are stored as the scale minus 1.
"""

import dataclasses
import json
import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from etils import epath

from bigjax import pytree
from bigjax import workdir as workdir_lib
from bigjax.hf_families import GEMMA_FAMILY, transformer_options
from bigjax.errors import UserError

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = 'config.json', 'model.safetensors', \
    'model.safetensors.index.json'


HUB_FILES = ('config.json', '*.safetensors', INDEX_FILE, 'tokenizer.json', 'tokenizer_config.json',
             'chat_template.jinja')


def folder(spec: str) -> str:
    """The local folder of a Hugging Face model: `spec` itself (a folder; 'hf:' in front is
    optional), or, for 'ORG/NAME' that is no folder here, its snapshot in the Hugging Face cache
    (HF_HUB_CACHE, ~/.cache/huggingface/hub), downloaded first where the machine is online."""
    path = os.path.expanduser(spec[3:] if spec.startswith('hf:') else spec)
    if os.path.isdir(path) or path.count('/') != 1 or path.startswith(('/', '.')):
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(f'{spec}: no such folder, and fetching {path} from the Hugging Face Hub '
                        'needs huggingface_hub (pip install huggingface_hub)') from None
    try:
        return snapshot_download(path, allow_patterns=list(HUB_FILES), local_files_only=True)
    except Exception:  # Not in the cache: download it, where the machine is online.
        pass
    try:
        return snapshot_download(path, allow_patterns=list(HUB_FILES))
    except Exception as e:
        raise UserError(f'{spec}: no such folder, nor a model {path} in the Hugging Face cache, '
                        f'and downloading it failed ({type(e).__name__}): run `hf download {path}` '
                        'where there is internet, or pass the folder') from None


def is_hf_folder(path) -> bool:
    """Whether `path` holds a Hugging Face model (a config.json naming a model_type)."""
    config = epath.Path(path) / CONFIG_FILE
    return config.exists() and 'model_type' in read_config(path)


def read_config(folder) -> dict:
    return workdir_lib.read_json(epath.Path(folder) / CONFIG_FILE,
                                 "a model's config.json is cut short or damaged: fetch the model "
                                 "again (hf download, or transformers' "
                                 'save_pretrained)')


SAFETENSORS_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
                      'BF16': ml_dtypes.bfloat16, 'I64': np.int64, 'I32': np.int32,
                      'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_}


class Tensors:
    """The tensors of a Hugging Face folder by name, memory-mapped from its .safetensors files
    (one, or the shards model.safetensors.index.json lists): each is read when asked for."""

    def __init__(self, folder):
        folder = epath.Path(folder)
        index = folder / INDEX_FILE
        if index.exists():
            files = sorted(set(json.loads(index.read_text())['weight_map'].values()))
        elif (folder / WEIGHTS_FILE).exists():
            files = [WEIGHTS_FILE]
        else:
            raise UserError(f'{folder} has no {WEIGHTS_FILE} or {INDEX_FILE}: save the model '
                            'with save_pretrained(..., safe_serialization=True)')
        self.entries = {}  # name -> (file, dtype, shape, start, stop)
        for name in files:
            path = folder / name
            with path.open('rb') as f:
                size = int.from_bytes(f.read(8), 'little')
                header = json.loads(f.read(size))
            for tensor, entry in header.items():
                if tensor != '__metadata__':
                    start, stop = entry['data_offsets']
                    self.entries[tensor] = (path, entry['dtype'], tuple(entry['shape']),
                                            8 + size + start, 8 + size + stop)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> np.ndarray:
        """The tensor, as float32 (its stored dtype for integers)."""
        if name not in self.entries:
            raise UserError(f'the Hugging Face checkpoint has no tensor {name!r}')
        path, dtype, shape, start, stop = self.entries[name]
        count = int(np.prod(shape))
        array = np.memmap(path, SAFETENSORS_DTYPES[dtype], 'r', start, (count,)) if count else \
            np.zeros(0, SAFETENSORS_DTYPES[dtype])
        floating = dtype in ('F64', 'F32', 'F16', 'BF16')
        return np.asarray(array.reshape(shape), np.float32 if floating else None)


def write_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
    """One .safetensors file (header, then each tensor's bytes; safetensors' format)."""
    names = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items()}
    header, offset = {'__metadata__': {'format': 'pt'}}, 0
    for name, array in tensors.items():
        header[name] = {'dtype': names[array.dtype], 'shape': list(array.shape),
                        'data_offsets': [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(',', ':')).encode()
    text += b' ' * (-len(text) % 8)  # the data starts 8-byte aligned
    with epath.Path(path).open('wb') as f:
        f.write(len(text).to_bytes(8, 'little') + text)
        for array in tensors.values():
            f.write(np.ascontiguousarray(array).tobytes())



@dataclasses.dataclass(frozen=True)
class _Pair:
    """One bigjax parameter and the Hugging Face tensors it is made of, both ways."""

    name: str  # bigjax's, in a block without 'encoder/block<i>/'
    tensors: tuple  # Hugging Face names
    load: Callable  # (*tensors) -> the parameter
    save: Callable  # the parameter -> tuple of tensors


def _same(name, tensor, transpose=False):
    flip = (lambda a: a.T) if transpose else (lambda a: a)
    return _Pair(name, (tensor,), flip, lambda a: (flip(a),))


def _gpt2_pairs(o: dict) -> tuple[list, Callable]:
    """GPT-2: Conv1D weights (in, out); c_attn holds queries, keys and values side by side."""
    heads, k = o['num_heads'], o['width'] // o['num_heads']
    top = [_same('token_embedding/embedding', 'wte.weight'),
           _same('encoder/position_embedding', 'wpe.weight'),
           _same('encoder/final_norm/scale', 'ln_f.weight'),
           _same('encoder/final_norm/bias', 'ln_f.bias')]

    def block(p):
        return [
            _same('attention_norm/scale', p + 'ln_1.weight'),
            _same('attention_norm/bias', p + 'ln_1.bias'),
            _Pair('attention/qkv/kernel', (p + 'attn.c_attn.weight',),  # (D, 3D) -> (D, H, 3, K)
                  lambda w: w.reshape(w.shape[0], 3, heads, k).transpose(0, 2, 1, 3),
                  lambda w: (w.transpose(0, 2, 1, 3).reshape(w.shape[0], -1),)),
            _Pair('attention/qkv/bias', (p + 'attn.c_attn.bias',),
                  lambda b: b.reshape(3, heads, k).transpose(1, 0, 2),
                  lambda b: (b.transpose(1, 0, 2).reshape(-1),)),
            _Pair('attention/out/kernel', (p + 'attn.c_proj.weight',),
                  lambda w: w.reshape(heads, k, -1), lambda w: (w.reshape(heads * k, -1),)),
            _same('attention/out/bias', p + 'attn.c_proj.bias'),
            _same('mlp_norm/scale', p + 'ln_2.weight'),
            _same('mlp_norm/bias', p + 'ln_2.bias'),
            _same('mlp/up/kernel', p + 'mlp.c_fc.weight'),
            _same('mlp/up/bias', p + 'mlp.c_fc.bias'),
            _same('mlp/down/kernel', p + 'mlp.c_proj.weight'),
            _same('mlp/down/bias', p + 'mlp.c_proj.bias')]
    return top, lambda i: block(f'h.{i}.')


def _rotary_pairs(o: dict, family: str) -> tuple[list, Callable]:
    """Llama, Mistral, Qwen and Gemma: Linear weights (out, in); query head h belongs to
    key/value head h // R. Gemma's RMSNorm weights are the scale minus 1; its layer norms sit on
    both sides of each branch (input, post_attention, pre_ and post_feedforward)."""
    groups = o['num_kv_heads'] or o['num_heads']
    repeats = o['num_heads'] // groups
    k = o.get('head_width') or o['width'] // o['num_heads']
    gemma = family in GEMMA_FAMILY

    def norm(name, tensor):
        if not gemma:
            return _same(name, tensor)
        return _Pair(name, (tensor,), lambda w: w + 1, lambda scale: (scale - 1,))

    top = [_same('token_embedding/embedding', 'model.embed_tokens.weight'),
           norm('encoder/final_norm/scale', 'model.norm.weight')]
    if not o['tied_embeddings']:
        top.append(_same('head/kernel', 'lm_head.weight', transpose=True))

    def qkv(*qkv):  # (out, in) each -> (in, G, R + 2, K); biases (out,) -> (G, R + 2, K)
        q, key, v = (a.T.reshape(*a.shape[1:], groups, -1, k) for a in qkv)
        return np.concatenate([q, key, v], axis=-2)

    def split(w):
        q, key, v = np.split(w, [repeats, repeats + 1], axis=-2)
        return tuple(a.reshape(*a.shape[:-3], -1).T for a in (q, key, v))

    def block(p):
        a, m = p + 'self_attn.', p + 'mlp.'
        pairs = [norm('attention_norm/scale', p + 'input_layernorm.weight'),
                 _Pair('attention/qkv/kernel', (a + 'q_proj.weight', a + 'k_proj.weight',
                                                a + 'v_proj.weight'), qkv, split),
                 _Pair('attention/out/kernel', (a + 'o_proj.weight',),
                       lambda w: w.T.reshape(o['num_heads'], k, -1),
                       lambda w: (w.reshape(o['num_heads'] * k, -1).T,))]
        if gemma:
            pairs += [norm('attention_post_norm/scale', p + 'post_attention_layernorm.weight'),
                      norm('mlp_norm/scale', p + 'pre_feedforward_layernorm.weight'),
                      norm('mlp_post_norm/scale', p + 'post_feedforward_layernorm.weight')]
        else:
            pairs.append(norm('mlp_norm/scale', p + 'post_attention_layernorm.weight'))
        if o.get('qk_norm'):
            pairs += [norm('attention/query_norm/scale', a + 'q_norm.weight'),
                      norm('attention/key_norm/scale', a + 'k_norm.weight')]
        pairs += [_same(f'mlp/{name}/kernel', f'{m}{name}_proj.weight', transpose=True)
                  for name in ('up', 'gate', 'down')]
        if 'qkv' in o['bias']:
            pairs.append(_Pair('attention/qkv/bias', (a + 'q_proj.bias', a + 'k_proj.bias',
                                                      a + 'v_proj.bias'), qkv, split))
        if 'out' in o['bias']:
            pairs.append(_same('attention/out/bias', a + 'o_proj.bias'))
        pairs += [_same(f'mlp/{name}/bias', f'{m}{name}_proj.bias')
                  for name in ('up', 'gate', 'down') if name in o['bias']]
        return pairs
    return top, lambda i: block(f'model.layers.{i}.')


def param_shapes(hf_config: dict, *, scan_layers: bool = False) -> dict:
    """The shapes (jax.ShapeDtypeStructs) of to_params' result, without reading any tensor."""
    from bigjax.models.transformer import TransformerConfig, TransformerLM
    options = transformer_options(hf_config)
    vocab_size = options.pop('vocab_size')
    model = TransformerLM(TransformerConfig(**options, scan_layers=scan_layers), vocab_size)
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return nn.unbox(jax.eval_shape(lambda t: model.init(jax.random.key(0), t, train=False),
                                   tokens)['params'])


def _pairs(hf_config: dict) -> tuple[dict, list, Callable]:
    options = transformer_options(hf_config)
    family = hf_config['model_type']
    top, block = _gpt2_pairs(options) if family == 'gpt2' else _rotary_pairs(options, family)
    return options, top, block


def param_loaders(tensors, hf_config: dict, *, scan_layers: bool = False) -> dict:
    """{bigjax parameter name: a function that reads it} from the tensors (`Tensors`, or a dict
    by name) of the Hugging Face model `hf_config` describes: each parameter is read when asked
    for (float32 numpy), so a model can be placed one parameter at a time."""
    options, top, block = _pairs(hf_config)
    prefix = 'transformer.' if hf_config['model_type'] == 'gpt2' and \
        'transformer.wte.weight' in tensors else ''  # GPT2LMHeadModel's names, or GPT2Model's

    def loader(pair):
        return lambda: pair.load(*(tensors[prefix + name] for name in pair.tensors))
    loaders = {pair.name: loader(pair) for pair in top}
    blocks = [block(i) for i in range(options['depth'])]
    for j, pair in enumerate(blocks[0]):
        if scan_layers:
            layers = [loader(b[j]) for b in blocks]
            loaders[f'encoder/blocks/{pair.name}'] = lambda layers=layers: np.stack(
                [load() for load in layers])
        else:
            loaders.update({f'encoder/block{i}/{pair.name}': loader(b[j])
                            for i, b in enumerate(blocks)})
    return loaders


def to_params(tensors, hf_config: dict, *, scan_layers: bool = False) -> dict:
    """bigjax TransformerLM parameters (nested dicts of float32 numpy arrays): param_loaders,
    every one read."""
    return pytree.unflat({name: load() for name, load in param_loaders(
        tensors, hf_config, scan_layers=scan_layers).items()})


def scanned(names) -> bool:
    """Whether the blocks of the model these parameter names belong to are stacked (scan_layers)."""
    return any(name.startswith('encoder/blocks/') for name in names)


def from_params(params, hf_config: dict) -> dict[str, np.ndarray]:
    """The Hugging Face tensors (float32, by name) of bigjax TransformerLM `params`; a GPT-2
    bias bigjax does not have is written as zeros."""
    options, top, block = _pairs(hf_config)
    names = {name: np.asarray(value, np.float32) for name, value in pytree.flat(params).items()}
    stacked = scanned(names)
    tensors = {}

    def save(pair, value):
        tensors.update(zip(pair.tensors, pair.save(value)))

    for pair in top:
        save(pair, names[pair.name])
    for i in range(options['depth']):
        for pair in block(i):
            name = f'encoder/blocks/{pair.name}' if stacked else f'encoder/block{i}/{pair.name}'
            value = names[name][i] if stacked and name in names else names.get(name)
            save(pair, _zero_bias(names, name, i if stacked else None)
                 if value is None else value)
    return tensors


def _zero_bias(names: dict, bias_name: str, layer) -> np.ndarray:
    """Zeros shaped as the bias of the kernel beside `bias_name` (its output axes)."""
    kernel = names[bias_name.rsplit('/', 1)[0] + '/kernel']
    kernel = kernel if layer is None else kernel[layer]
    inputs = 2 if bias_name.endswith('out/bias') else 1
    return np.zeros(kernel.shape[inputs:], np.float32)
