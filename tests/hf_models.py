"""Tiny random transformers models and tokenizers, saved as save_pretrained saves them (no
download): the fixtures of tests/test_hf.py and tests/test_eval_harness.py."""

import torch
import transformers


def llama(**overrides):
    return transformers.LlamaConfig(**{
        'hidden_size': 64, 'intermediate_size': 96, 'num_hidden_layers': 2,
        'num_attention_heads': 4, 'num_key_value_heads': 2, 'vocab_size': 100,
        'max_position_embeddings': 64, 'rms_norm_eps': 1e-5, 'tie_word_embeddings': False,
        'rope_parameters': {'rope_type': 'default', 'rope_theta': 500_000.0}, **overrides})


def family(name: str, vocab_size: int = 100):
    """A tiny config of each family bigjax imports, with its quirks switched on and binding on
    tests/test_hf.py's 12-token rows: rope scaling past original_max_position_embeddings, a
    window shorter than the row, soft caps below the scores' and logits' size."""
    tiny = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=64)
    return {
        'llama3': lambda: llama(vocab_size=vocab_size, rope_parameters={
            'rope_type': 'llama3', 'rope_theta': 500_000.0, 'factor': 8.0,
            'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
            'original_max_position_embeddings': 8}),
        'llama_linear': lambda: llama(vocab_size=vocab_size, rope_parameters={
            'rope_type': 'linear', 'factor': 4.0, 'rope_theta': 10_000.0}),
        'qwen3_yarn': lambda: transformers.Qwen3Config(
            **tiny, head_dim=32, tie_word_embeddings=True, rope_parameters={
                'rope_type': 'yarn', 'rope_theta': 10_000.0, 'factor': 4.0,
                'original_max_position_embeddings': 8}),
        'qwen3': lambda: transformers.Qwen3Config(**tiny, head_dim=32, attention_bias=True),
        'mistral': lambda: transformers.MistralConfig(**tiny, sliding_window=5,
                                                      tie_word_embeddings=False),
        'gemma2': lambda: transformers.Gemma2Config(
            **tiny, head_dim=32, query_pre_attn_scalar=24, sliding_window=5,
            attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
        'gemma3': lambda: transformers.Gemma3TextConfig(
            **{**tiny, 'num_hidden_layers': 3}, head_dim=32, query_pre_attn_scalar=24,
            sliding_window=5, layer_types=['sliding_attention', 'sliding_attention',
                                           'full_attention'],
            rope_parameters={'sliding_attention': {'rope_type': 'default', 'rope_theta': 10_000.0},
                             'full_attention': {'rope_type': 'linear', 'factor': 8.0,
                                                'rope_theta': 1_000_000.0}}),
    }[name]()


def old_form(config: dict) -> dict:
    """A transformers 5 config.json as Hub checkpoints carry it: rope_theta and rope_scaling at
    the top, no rope_parameters; Gemma 2 and 3 without layer_types (Gemma 3's local layers in
    sliding_window_pattern and rope_local_base_freq)."""
    config = dict(config)
    rope = config.pop('rope_parameters')
    if config['model_type'] == 'gemma3_text':
        local, rope = rope['sliding_attention'], rope['full_attention']
        config['rope_local_base_freq'] = local['rope_theta']
        config['sliding_window_pattern'] = config['layer_types'].index('full_attention') + 1
    if config['model_type'].startswith('gemma'):
        del config['layer_types']
    config['rope_theta'] = rope.pop('rope_theta')
    config['rope_scaling'] = None if rope['rope_type'] == 'default' else rope
    return config


def saved(config, folder):
    """A transformers model of `config` with every weight random (biases and norms too),
    saved as save_pretrained does."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    return model


def tokenizer_folder(folder, texts):
    """A byte-level BPE saved as transformers saves one, its end of text '<|endoftext|>' at
    id 0 (unlike bigjax's own, which put '<eos>' at 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=['<|endoftext|>'], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer,
                                         eos_token='<|endoftext|>').save_pretrained(folder)
    return tokenizer.get_vocab_size()
