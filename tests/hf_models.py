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
