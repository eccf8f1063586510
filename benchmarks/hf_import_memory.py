"""Host memory of importing a Hugging Face checkpoint as a fine-tuning run does: a sharded
bfloat16 safetensors checkpoint of Llama-3.2-1B's shape (tests/hf_configs/Llama-3.2-1B/config.json,
random values, ~2.5 GB) is written shard by shard with bigjax.hf.write_safetensors, then loaded
in a fresh process by finetune.plan_load and finetune.load (each parameter read from its memory
map when asked, converted to float32 and placed on the device one at a time), layers unrolled and
under scan_layers. Printed: the checkpoint, the float32 parameters that end on the device, the
largest one, and the process's RSS before and after the import and its peak (VmHWM): the peak
minus the RSS after is the transient host memory above the device arrays (on CPU the device
arrays are host memory too), which should be about one parameter.

python benchmarks/hf_import_memory.py [--dir=DIR] [--shard_mb=500] [--smoke]
"""

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'tests', 'hf_configs', 'Llama-3.2-1B', 'config.json')
SMOKE = {'hidden_size': 64, 'intermediate_size': 128, 'num_hidden_layers': 2,  # the same form
         'num_attention_heads': 4, 'num_key_value_heads': 2, 'head_dim': 16, 'vocab_size': 1000}
GB = 1e9


def memory() -> dict[str, int]:
    """This process's VmRSS and VmHWM (its peak RSS) in bytes."""
    with open('/proc/self/status') as f:
        fields = dict(line.split(':', 1) for line in f)
    return {key: int(fields[key].split()[0]) * 1024 for key in ('VmRSS', 'VmHWM')}


def llama_tensors(c: dict) -> list[tuple[str, tuple]]:
    """(name, shape) of a Llama checkpoint's tensors, in save_pretrained's order."""
    width, heads, kv = c['hidden_size'], c['num_attention_heads'], c['num_key_value_heads']
    k = c.get('head_dim') or width // heads
    tensors = [('model.embed_tokens.weight', (c['vocab_size'], width))]
    for i in range(c['num_hidden_layers']):
        p = f'model.layers.{i}.'
        tensors += [(p + 'input_layernorm.weight', (width,)),
                    (p + 'mlp.down_proj.weight', (width, c['intermediate_size'])),
                    (p + 'mlp.gate_proj.weight', (c['intermediate_size'], width)),
                    (p + 'mlp.up_proj.weight', (c['intermediate_size'], width)),
                    (p + 'post_attention_layernorm.weight', (width,)),
                    (p + 'self_attn.k_proj.weight', (kv * k, width)),
                    (p + 'self_attn.o_proj.weight', (width, heads * k)),
                    (p + 'self_attn.q_proj.weight', (heads * k, width)),
                    (p + 'self_attn.v_proj.weight', (kv * k, width))]
    tensors.append(('model.norm.weight', (width,)))
    if not c.get('tie_word_embeddings'):
        tensors.append(('lm_head.weight', (c['vocab_size'], width)))
    return tensors


def random_bf16(rng, shape: tuple):
    """Normal(0, 0.02) values in bfloat16, drawn 16M at a time (no float32 copy of it all)."""
    import ml_dtypes
    import numpy as np
    out = np.empty(int(np.prod(shape)), ml_dtypes.bfloat16)
    for start in range(0, out.size, 1 << 24):
        chunk = rng.standard_normal(min(1 << 24, out.size - start), dtype=np.float32)
        chunk *= 0.02
        out[start:start + chunk.size] = chunk
    return out.reshape(shape)


def write_checkpoint(folder: str, config: dict, shard_bytes: int) -> dict:
    """config.json, model-0000i-of-0000n.safetensors and model.safetensors.index.json: one
    shard in memory at a time."""
    import numpy as np
    sys.path.insert(0, REPO)
    from bigjax import hf
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2, sort_keys=True)
    shards, current, size = [], [], 0
    for name, shape in llama_tensors(config):
        nbytes = 2 * int(np.prod(shape))
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    rng, weight_map, total = np.random.default_rng(0), {}, 0
    for i, shard in enumerate(shards):
        file = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
        tensors = {name: random_bf16(rng, shape) for name, shape in shard}
        hf.write_safetensors(os.path.join(folder, file), tensors)
        total += sum(t.nbytes for t in tensors.values())
        weight_map.update({name: file for name in tensors})
        del tensors
    with open(os.path.join(folder, hf.INDEX_FILE), 'w') as f:
        json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f, indent=2)
    return {'shards': len(shards), 'bytes': total,
            'parameters': sum(int(np.prod(s)) for _, s in llama_tensors(config))}


def import_checkpoint(folder: str, scan_layers: bool) -> None:
    """The measured part, in its own process: what train.run does with init_from.path=FOLDER
    before its first step (finetune.plan_load, then finetune.load onto the mesh)."""
    sys.path.insert(0, REPO)
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from bigjax import config as config_lib
    from bigjax import finetune, hf
    init_from = config_lib.default_config().init_from
    init_from.path = folder
    shapes = hf.param_shapes(hf.read_config(folder), scan_layers=scan_layers)
    plan = finetune.plan_load(init_from, {'params': shapes, 'model_state': None})
    mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
    shardings = {'params': jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), shapes),
                 'model_state': None}
    float32 = [int(np.prod(s.shape)) * 4 for s in jax.tree.leaves(shapes)]
    try:  # The peak from here on (Linux >= 4.0: writing 5 to clear_refs resets VmHWM).
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass
    before = memory()
    start = time.perf_counter()
    arrays = finetune.load(plan, shardings)
    jax.block_until_ready(arrays)
    seconds = time.perf_counter() - start
    gc.collect()  # On CPU a host array lives until its copy is done and Python drops it.
    after = memory()
    print(json.dumps({
        'seconds': seconds, 'loaded': len(arrays), 'platform': jax.devices()[0].platform,
        'device_bytes': sum(a.nbytes for a in arrays.values()), 'params_bytes': sum(float32),
        'largest_bytes': max(float32), 'rss_before': before['VmRSS'],
        'rss_after': after['VmRSS'], 'peak': after['VmHWM']}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dir', help='write (and keep) the checkpoint here, not in a temporary '
                        'folder; one already there is imported as it is')
    parser.add_argument('--shard_mb', type=float, default=500, help='largest shard, MB')
    parser.add_argument('--smoke', action='store_true', help='a tiny model of the same form')
    parser.add_argument('--import_checkpoint', nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.import_checkpoint:
        import_checkpoint(args.import_checkpoint[0], args.import_checkpoint[1] == 'scan')
        return
    sys.path.insert(0, REPO)
    from bigjax import hf
    with open(CONFIG) as f:
        config = json.load(f)
    shard_bytes = args.shard_mb * 1e6
    if args.smoke:
        config.update(SMOKE)
        shard_bytes = 100e3
    root = args.dir or tempfile.mkdtemp(prefix='hf_import_memory_')
    folder = os.path.join(root, 'llama-3.2-1b-shape' + ('-smoke' if args.smoke else ''))
    try:
        if os.path.exists(os.path.join(folder, hf.INDEX_FILE)):
            with open(os.path.join(folder, hf.INDEX_FILE)) as f:
                index = json.load(f)
            total = index['metadata']['total_size']
            written = {'shards': len(set(index['weight_map'].values())), 'seconds': 0.0,
                       'bytes': total, 'peak': 0, 'parameters': total // 2}  # bfloat16
        else:
            start = time.perf_counter()
            written = write_checkpoint(folder, config, int(shard_bytes))
            written['seconds'] = time.perf_counter() - start
            written['peak'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        rows = []
        for mode in ('unrolled', 'scan'):
            out = subprocess.run([sys.executable, __file__, '--import_checkpoint', folder, mode],
                                 check=False, capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            rows.append((mode, json.loads(out.stdout.splitlines()[-1])))
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    print(f'\ncheckpoint: {written["bytes"] / GB:.2f} GB bfloat16 in {written["shards"]} shards '
          f'+ {hf.INDEX_FILE}, {written["parameters"]:,} parameters, '
          + ('a tiny model of the form of' if args.smoke else 'the shape of')
          + f' {os.path.basename(CONFIG)[:-5]}')
    print(f'config.json: {os.path.relpath(CONFIG, REPO)} as published'
          + (' (sizes made tiny)' if args.smoke else ''))
    if written['seconds']:
        print(f'written in {written["seconds"]:.1f} s, peak RSS of the writer '
              f'{written["peak"] / GB:.2f} GB')
    platform = rows[0][1]['platform']
    print(f'imported on {platform} ({os.cpu_count()} CPUs); GB = 1e9 bytes; float32 as bigjax '
          'holds the parameters')
    print(f'\n{"import":<10s} {"seconds":>7s} {"params":>7s} {"on device":>9s} {"largest":>7s} '
          f'{"RSS before":>10s} {"RSS after":>9s} {"peak RSS":>8s} {"transient":>9s} '
          f'{"/ largest":>9s}')
    for mode, r in rows:
        transient = r['peak'] - r['rss_after']
        print(f'{mode:<10s} {r["seconds"]:7.1f} {r["params_bytes"] / GB:7.3f} '
              f'{r["device_bytes"] / GB:9.3f} {r["largest_bytes"] / GB:7.3f} '
              f'{r["rss_before"] / GB:10.3f} {r["rss_after"] / GB:9.3f} {r["peak"] / GB:8.3f} '
              f'{transient / GB:9.3f} {transient / r["largest_bytes"]:8.2f}x')
    print('transient = peak RSS - RSS after: host memory above the device arrays at the peak; '
          '/ largest: in parameters')


if __name__ == '__main__':
    main()
