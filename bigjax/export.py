"""A run's latest parameters, LoRA adapters merged into their kernels (launch.py --mode=export):
as a checkpoint folder any config can start from (init_from.path), or, for a transformer_lm, as a
Hugging Face model folder that transformers' AutoModelForCausalLM.from_pretrained loads."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp

from bigjax import finetune, hf, hf_families, pytree
from bigjax import plan as plan_lib
from bigjax import workdir as workdir_lib
from bigjax.data import tokenizers
from bigjax.errors import UserError

FORMATS = ('bigjax', 'hf')


def export(config, workdir, export_dir, export_format: str = 'bigjax') -> str:
    """Writes the model variables of `workdir`'s latest checkpoint to <export_dir>/state, LoRA
    adapters merged into their kernels, and <export_dir>/config.json for the merged model
    (lora_rank 0): the folder then serves as init_from.path. With export_format 'hf': a Hugging
    Face folder instead (hf_model). Returns a one-line summary."""
    if not str(export_dir).strip():
        raise UserError('--mode=export needs --export_dir=FOLDER (a new or empty folder)')
    if export_format not in FORMATS:
        raise UserError(f'--export_format={export_format!r} is not one of {list(FORMATS)}')
    if export_format == 'hf':
        if config.model.name != 'transformer_lm':
            raise UserError(f'--export_format=hf writes causal LMs: model.name is '
                            f'{config.model.name!r}, not transformer_lm')
        # Refuses before anything is read.
        hf_families.hf_config(config.model.transformer.to_dict(), 0)
    out = workdir_lib.resolve(export_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f'--export_dir={export_dir} is not empty: name a new folder (nothing '
                        'there is overwritten)')
    plan, state, step = plan_lib.load_state(config, workdir)
    params = jax.device_get(state.params)
    merged_config = config.copy_and_resolve_references()
    lora = finetune.uses_lora(config)
    if lora:
        params = finetune.merge_lora(params, plan.model.cfg)
        merged_config.model.transformer.lora_rank = 0
    merged_config.init_from.path = ''
    merged = ' (LoRA adapters merged)' if lora else ''
    if export_format == 'hf':
        written = hf_model(plan, params, merged_config.model.transformer.to_dict(), out)
        return f'Exported step {step} of {plan.workdir} to {out}: {written}{merged}'
    out.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    model_state = {c: t for c, t in state.model_state.items() if c != finetune.REFERENCE}
    checkpointer.save(out / 'state', {'params': params,
                                      'model_state': jax.device_get(model_state)})
    checkpointer.wait_until_finished()
    workdir_lib.write_config(out, json.loads(merged_config.to_json_best_effort()))
    count = sum(int(np.prod(v.shape)) for v in pytree.flat(params).values())
    return f'Exported step {step} of {plan.workdir} to {out}: {count:,} parameters{merged}'


def hf_model(plan, params, options: dict, out) -> str:
    """Writes config.json, model.safetensors (float32) and, for a BPE or a model's own tokenizer,
    tokenizer.json and tokenizer_config.json to `out`; returns what it wrote, in words."""
    vocab_size, tokenizer = plan.dataset.vocab_size, plan.dataset.tokenizer
    config = {**hf_families.hf_config(options, vocab_size), 'torch_dtype': 'float32',
              'bos_token_id': tokenizers.prompt_start(tokenizer), 'eos_token_id': tokenizer.eos_id,
              'pad_token_id': tokenizer.pad_id}  # documents start as the tokenizer starts them
    tensors = hf.from_params(params, config)  # before anything is written: it may refuse
    out.mkdir(parents=True, exist_ok=True)
    (out / hf.CONFIG_FILE).write_text(json.dumps(config, indent=2) + '\n')
    hf.write_safetensors(out / hf.WEIGHTS_FILE, tensors)
    if tokenizer.json is not None:
        from tokenizers import Tokenizer
        token = Tokenizer.from_str(tokenizer.json).id_to_token
        (out / 'tokenizer.json').write_text(tokenizer.json)
        settings = {'tokenizer_class': 'PreTrainedTokenizerFast',
                    'bos_token': token(tokenizers.prompt_start(tokenizer)),
                    'eos_token': token(tokenizer.eos_id),
                    'pad_token': token(tokenizer.pad_id), **tokenizer.special_tokens}
        template = (plan.dataset.chat.template.source if plan.dataset.chat is not None
                    else tokenizer.chat_template)
        if template:  # rendered with the special tokens above, as in training
            settings['chat_template'] = template
        (out / 'tokenizer_config.json').write_text(json.dumps(settings, indent=2) + '\n')
    what = 'with its tokenizer' if tokenizer.json is not None else (
        f'without a tokenizer: transformers has none like bigjax\'s {tokenizer.name!r}')
    return f'a Hugging Face {config["model_type"]} model, {what}'
