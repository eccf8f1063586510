import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import export, sample, train
from bigjax import plan as plan_lib
from bigjax.data import tokenizers
from bigjax.errors import UserError
from conftest import REPO, load_config


@pytest.fixture(scope='module')
def trained_lm(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('lm')
    train.run(load_config('transformer_cpu', 'smoke'), workdir)
    return workdir


def test_sampling_from_a_trained_workdir(trained_lm):
    config = load_config('transformer_cpu', 'smoke')
    text = sample.from_workdir(config, trained_lm, 'def ', num_tokens=20, temperature=0.0,
                               top_k=0)
    assert isinstance(text, str) and text
    assert text == sample.from_workdir(config, trained_lm, 'def ', num_tokens=20,
                                       temperature=0.0, top_k=0)


def test_sample_mode_of_launch(trained_lm):
    out = subprocess.run([sys.executable, 'launch.py', '--config=configs/transformer_cpu.py:smoke',
                          f'--workdir={trained_lm}', '--mode=sample', '--prompt=import ',
                          '--num_tokens=10', '--temperature=0'],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    greedy = sample.from_workdir(load_config('transformer_cpu', 'smoke'), trained_lm, 'import ',
                                 num_tokens=10, temperature=0.0, top_k=0)
    assert out.stdout == greedy + '\n' and greedy  # the continuation, and nothing else


def test_export_mode_of_launch(trained_lm, tmp_path):
    """--mode=export writes a checkpoint folder (here of an LM without adapters)."""
    command = [sys.executable, 'launch.py', '--config=configs/transformer_cpu.py:smoke',
               f'--workdir={trained_lm}', '--mode=export']
    out = subprocess.run(command + [f'--export_dir={tmp_path}/lm'], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f'to {tmp_path}/lm: ' in out.stdout and (tmp_path / 'lm' / 'state').is_dir()
    with pytest.raises(UserError, match='needs --export_dir'):
        export.export(load_config('transformer_cpu', 'smoke'), trained_lm, '')


def test_sampling_errors_are_clear(trained_lm, tmp_path):
    config = load_config('transformer_cpu', 'smoke')
    with pytest.raises(UserError, match='holds no checkpoint: train there first'):
        sample.from_workdir(config, tmp_path, 'x', num_tokens=5, temperature=1.0, top_k=0)
    with pytest.raises(UserError, match='must not be empty'):
        sample.generate_any_length(None, None, jnp.zeros((1, 0), jnp.int32), None, num_tokens=4)


def test_export_to_hugging_face_gives_transformers_the_same_logits(trained_lm, tmp_path):
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    config = load_config('transformer_cpu', 'smoke')
    summary = export.export(config, trained_lm, tmp_path / 'hf', 'hf')
    assert 'a Hugging Face gpt2 model, without a tokenizer' in summary
    plan, state, _ = plan_lib.load_state(config, trained_lm)
    tokens_BT = np.arange(64).reshape(2, 32) * 7 % plan.dataset.vocab_size
    expected = np.asarray(plan.model.apply({'params': state.params}, tokens_BT, train=False))
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'hf').eval()
    with torch.no_grad():
        logits = model(torch.tensor(tokens_BT)).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4 * np.abs(expected).max())
    with pytest.raises(UserError, match='writes causal LMs'):
        export.export(load_config('cnn_digits', 'smoke'), trained_lm, tmp_path / 'x', 'hf')


def test_a_bigjax_bpe_is_the_hugging_face_tokenizer_that_export_writes(tmp_path):
    transformers = pytest.importorskip('transformers')
    texts = ['def spam(eggs):\n    return eggs * 2\n', 'import os, sys  # 42 ways']
    bpe = tokenizers.BpeTokenizer(tokenizers.train_bpe(texts * 20, 300))
    (tmp_path / 'tokenizer.json').write_text(bpe.json)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / 'tokenizer.json'))
    for text in texts + ['ünïcode, and a word never seen: zyzzyva']:
        assert theirs(text)['input_ids'] == bpe.encode_batch([text])[0].tolist()
