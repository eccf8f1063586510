"""Fine-tune a Hugging Face causal LM with LoRA: configs/hf_finetune.py:FOLDER|hf:ORG/NAME[,smoke].

FOLDER holds what transformers' save_pretrained writes (config.json, model.safetensors or its
shards, tokenizer.json): a GPT-2, Llama (1-3.x, rope scaling included), Mistral (sliding
window), Qwen2, Qwen3, Gemma 2 or Gemma 3. The model is built from its config.json
(bigjax/hf_families.py), its weights are loaded (init_from.path), the text is tokenized with
its own tokenizer (data.text.tokenizer='hf:FOLDER'), and rank-8 adapters on the attention train.
The data default to the Python standard library's sources (offline); point data.name or
data.paths at your own: --config.data.name=chat --config.data.paths=conversations.jsonl
instruction-tunes it in its own chat template, the loss on the answers (bigjax/data/chat.py).
--mode=export --export_format=hf writes the result back for transformers (with the template).
hf:ORG/NAME is read from the Hugging Face cache, or downloaded into it where there is internet.
python launch.py --config=configs/hf_finetune.py:hf:HuggingFaceTB/SmolLM2-135M --workdir=/tmp/ft
"""

from bigjax import hf, hf_families
from bigjax.config import default_config, shrink_to_smoke

ROPE_MAX_LEN = 4096  # rotary models: the longest sequence (and sampling's cache), at most


def get_config(arg: str | None = None):
    spec, _, size = (arg or '').partition(',')
    if not spec or spec == 'smoke' or size not in ('', 'smoke'):
        raise ValueError('configs/hf_finetune.py needs the model: configs/hf_finetune.py:FOLDER '
                         '(or :hf:ORG/NAME, from the Hugging Face cache or Hub), then ,smoke')
    folder = hf.folder(spec)
    config = default_config()
    options = hf_families.transformer_options(hf.read_config(folder))
    vocab_size = options.pop('vocab_size')
    if options['positions'] == 'rope':
        options['max_len'] = min(options['max_len'], ROPE_MAX_LEN)
    config.model.name = 'transformer_lm'
    config.model.transformer.update(options, lora_rank=8, lora_targets=('qkv', 'out'))
    config.init_from.path = folder
    config.data.name = 'python_stdlib'
    config.data.eval_split = 'validation'
    config.data.text.tokenizer = f'hf:{folder}'
    config.data.text.seq_len = min(512, options['max_len'])
    config.optim.name = 'adamw'
    config.optim.learning_rate = 1e-3
    config.optim.grad_clip_norm = 1.0
    config.optim.schedule = 'cosine'
    config.optim.warmup_steps = 20
    config.train.batch_size = 16
    # The logits of 16 x 512 tokens over 128k-262k ids (Llama 3, Gemma) would take 4-9 GB:
    # made 128 positions at a time instead (the same loss).
    config.train.logits_chunk = 128 if vocab_size > 65_536 else 0
    config.mesh.data, config.mesh.fsdp = 1, -1  # weights and optimizer split over every chip
    config.train.num_steps = 300
    config.train.log_every = 25
    config.train.eval_every = 100
    config.train.checkpoint_every = 100
    if size == 'smoke':
        config.data.eval_split = 'validation[:1]'
        config.data.text.seq_len = 16
        config.train.logits_chunk = 0
        config.optim.warmup_steps = 2
        shrink_to_smoke(config, num_steps=6)
    return config
