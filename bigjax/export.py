"""A run's latest parameters as a checkpoint folder any config can start from (init_from.path),
LoRA adapters merged into their kernels: launch.py --mode=export."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp

from bigjax import finetune, pytree
from bigjax import plan as plan_lib
from bigjax import workdir as workdir_lib
from bigjax.errors import UserError


def export(config, workdir, export_dir) -> str:
    """Writes the model variables of `workdir`'s latest checkpoint to <export_dir>/state, LoRA
    adapters merged into their kernels, and <export_dir>/config.json for the merged model
    (lora_rank 0). The folder then serves as init_from.path. Returns a one-line summary."""
    if not str(export_dir).strip():
        raise UserError('--mode=export needs --export_dir=FOLDER (a new or empty folder)')
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
    out.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / 'state', {'params': params,
                                      'model_state': jax.device_get(state.model_state)})
    checkpointer.wait_until_finished()
    workdir_lib.write_config(out, json.loads(merged_config.to_json_best_effort()))
    count = sum(int(np.prod(v.shape)) for v in pytree.flat(params).values())
    return (f'Exported step {step} of {plan.workdir} to {out}: {count:,} parameters'
            + (' (LoRA adapters merged)' if lora else ''))
