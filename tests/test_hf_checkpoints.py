"""Hugging Face checkpoints as the Hub carries them (bigjax/hf.py's Tensors and name mapping):
bfloat16 weights in several shards listed by model.safetensors.index.json, and GPT-2's tensor
names with and without GPT2LMHeadModel's 'transformer.' prefix. Tiny random transformers models
built and saved here (no download)."""

import numpy as np
import pytest

from bigjax import hf, hf_families, pytree
from bigjax.models.transformer import TransformerConfig, TransformerLM

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
from hf_models import llama, saved  # noqa: E402  (they import torch)

TOKENS = np.array([[5, 17, 3, 99, 42, 0, 8, 64, 23, 11, 7, 2],
                   [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])


def bigjax_logits(params, hf_config: dict, **model_options) -> np.ndarray:
    options = dict(hf_families.transformer_options(hf_config), **model_options)
    vocab_size = options.pop('vocab_size')
    model = TransformerLM(TransformerConfig(**options), vocab_size)
    return np.asarray(model.apply({'params': params}, TOKENS, train=False))


def torch_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.float().numpy()


def assert_close(actual, expected):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual / scale, expected / scale, atol=1e-4, rtol=0)


def test_a_sharded_bfloat16_llama_loads_tensor_by_tensor_and_gives_its_logits(tmp_path):
    model = saved(llama(), tmp_path / 'float32')
    folder = tmp_path / 'bf16'
    model.to(torch.bfloat16).save_pretrained(folder, max_shard_size='20KB')
    shards = sorted(p.name for p in folder.glob('*.safetensors'))
    assert (folder / hf.INDEX_FILE).exists() and len(shards) > 2, shards
    # What bigjax must hold: the bfloat16 weights, exactly, as float32.
    expected = {name: value.float().numpy() for name, value in model.state_dict().items()}

    hf_config = hf.read_config(folder)
    tensors = hf.Tensors(folder)
    assert set(tensors.entries) == set(expected)
    assert {tensors.entries[name][1] for name in expected} == {'BF16'}
    params = hf.to_params(tensors, hf_config)
    mapped_back = hf.from_params(params, hf_config)
    assert set(mapped_back) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(mapped_back[name], value, err_msg=name)

    # The bfloat16 weights computed in float32 (rotary frequencies too, unlike model.float()).
    upcast = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    logits = torch_logits(upcast.eval())
    assert_close(bigjax_logits(params, hf_config), logits)
    stacked = hf.to_params(hf.Tensors(folder), hf_config, scan_layers=True)
    for name, value in pytree.flat(stacked).items():
        layers = [pytree.flat(params)[name.replace('blocks/', f'block{i}/')]
                  for i in range(value.shape[0])] if '/blocks/' in name else None
        np.testing.assert_array_equal(value, np.stack(layers) if layers else
                                      pytree.flat(params)[name], err_msg=name)


def test_gpt2_loads_the_same_with_or_without_the_transformer_prefix(tmp_path):
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=32,
                                     vocab_size=100, bos_token_id=0, eos_token_id=0)
    lm = saved(config, tmp_path / 'lm_head')  # GPT2LMHeadModel: 'transformer.wte.weight', ...
    lm.transformer.save_pretrained(tmp_path / 'base')  # GPT2Model: 'wte.weight', ...
    with_prefix, without = hf.Tensors(tmp_path / 'lm_head'), hf.Tensors(tmp_path / 'base')
    assert 'transformer.wte.weight' in with_prefix and 'wte.weight' not in with_prefix
    assert 'wte.weight' in without and 'transformer.wte.weight' not in without

    hf_config = hf.read_config(tmp_path / 'lm_head')
    params = pytree.flat(hf.to_params(with_prefix, hf_config))
    bare = pytree.flat(hf.to_params(without, hf.read_config(tmp_path / 'base')))
    assert params.keys() == bare.keys()
    for name, value in params.items():
        np.testing.assert_array_equal(bare[name], value, err_msg=name)
    assert_close(bigjax_logits(pytree.unflat(bare), hf_config), torch_logits(lm))
