"""Starting from a pretrained checkpoint: load the parameters that match, freeze by pattern, LoRA.

Parameters are named by their '/'-joined path ('encoder/block0/attention/qkv/kernel'); patterns
are Python regular expressions that must match a whole name. Variables other than parameters
(batch-norm statistics) are loaded by the same rules, named '<collection>:<path>' in messages.
"""

import dataclasses
import functools
import json
import logging
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bigjax import hf, models, pytree
from bigjax import workdir as workdir_lib
from bigjax.errors import UserError

log = logging.getLogger('bigjax')
ADAPTER = re.compile(r'.*_lora_[ab]')  # LoRA adapter parameters (models/transformer.py)
REFERENCE = 'reference'  # the train state's collection holding a frozen copy of the starting
# parameters (the reference model of preference objectives without LoRA): never loaded by name


def matching(patterns, names, what: str) -> set[str]:
    """The names some pattern matches; a pattern that matches none is a UserError."""
    matched = set()
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise UserError(f'{what} pattern {pattern!r} is not a regular expression: {e}') from None
        hits = {name for name in names if regex.fullmatch(name)}
        if not hits:
            examples = ', '.join(sorted(names)[:4])
            raise UserError(f'{what} pattern {pattern!r} matches no parameter (names look like '
                            f'{examples}, ...)')
        matched |= hits
    return matched


def uses_lora(config) -> bool:
    """Whether the configured model has LoRA adapters."""
    return config.model.name != 'cnn' and config.model.transformer.lora_rank > 0


def _predicts_tokens(config) -> bool:
    """Whether the configured model is a language model: its head is the pretrained output layer,
    not a new classifier."""
    return 'text_lm' in models.MODELS.get(config.model.name).inputs


def frozen_predicate(config) -> Callable[[str], bool]:
    """Whether a parameter is not trained: `config.frozen` matches it; with LoRA on, also every
    parameter that is not an adapter, a classifier's new head or class token, or matched by
    `lora_trained` (as peft: an LM's output layer and token embedding stay frozen)."""
    patterns = [re.compile(p) for p in config.frozen]
    trained = [re.compile(p) for p in config.lora_trained]
    lora, classifier = uses_lora(config), not _predicts_tokens(config)

    def frozen(name: str) -> bool:
        if any(p.fullmatch(name) for p in patterns):
            return True
        return lora and not (ADAPTER.fullmatch(name) or any(p.fullmatch(name) for p in trained)
                             or (classifier and (name.startswith('head/')
                                                 or name == 'class_token')))
    return frozen


def check_patterns(config, params) -> None:
    """Raises UserError for a frozen, lora_trained or optim.lr_multipliers pattern that matches no
    parameter, or a multiplier that is not positive."""
    names = pytree.flat(params)
    matching(config.frozen, names, 'frozen')
    matching(config.lora_trained, names, 'lora_trained')
    for entry in config.optim.lr_multipliers:
        if len(entry) != 2 or not isinstance(entry[1], (int, float)) or entry[1] <= 0:
            raise UserError(f'optim.lr_multipliers entry {entry!r} must be (pattern, factor > 0)')
        matching([entry[0]], names, 'optim.lr_multipliers')


@dataclasses.dataclass
class LoadPlan:
    """What init_from will do, decided from the checkpoint's metadata before loading."""

    directory: epath.Path  # <workdir>/checkpoints/<step>
    loaded: list[str]
    resized: list[tuple[str, tuple, tuple]]
    fresh: list[str]  # not in the checkpoint, or skipped: initialised as a new run would
    skipped: list[str]
    unused: list[str]  # in the checkpoint, not in this model
    head_tokens: tuple = ()  # init_from.label_words: the head starts as these output rows

    def describe(self) -> str:
        """One line: where from, and what was loaded, resized, skipped, new and unused."""
        parts = [f'loaded {len(self.loaded)}']
        if self.resized:
            parts.append('resized ' + ', '.join(f'{n} {a} -> {b}' for n, a, b in self.resized))
        if self.head_tokens:
            parts.append(f'head from the output layer at tokens {list(self.head_tokens)}')
        for label, names in (('skipped (init_from.skip)', self.skipped),
                             ('new', [n for n in self.fresh if n not in self.skipped
                                      and not (self.head_tokens and n.startswith('head/'))]),
                             ('unused from the checkpoint', self.unused)):
            if names:
                parts.append(f'{label}: ' + ', '.join(names))
        return f'Initialised from {self.directory}: ' + '; '.join(parts)


def checkpoint_directory(init_config) -> epath.Path:
    """The checkpoint init_from names: <workdir>/checkpoints/<step> (latest if step is -1),
    or a checkpoint folder itself."""
    spec = init_config.path
    path = workdir_lib.resolve(hf.folder(spec) if spec.startswith('hf:') else spec)
    if hf.is_hf_folder(path):
        return path
    steps_dir = path / 'checkpoints'
    if steps_dir.is_dir():
        steps = sorted(int(p.name) for p in steps_dir.iterdir()
                       if p.name.isdigit() and (p / 'state').is_dir())
        if not steps:
            raise UserError(f'init_from.path={init_config.path}: {steps_dir} holds no finished '
                            'checkpoint')
        step = steps[-1] if init_config.step < 0 else init_config.step
        if step not in steps:
            raise UserError(f'init_from.step={init_config.step}: {steps_dir} has steps {steps}')
        return steps_dir / str(step)
    if (path / 'state').is_dir():
        return path
    raise UserError(f'init_from.path={init_config.path}: no checkpoint there (expected a '
                    'workdir with checkpoints/<step>/, a checkpoint folder with state/, or a '
                    'Hugging Face model folder with config.json)')


def _variables(state_tree) -> dict:
    """params and the other model collections of a saved or abstract train state."""
    get = (lambda key: state_tree[key]) if isinstance(state_tree, dict) else (
        lambda key: getattr(state_tree, key))
    return {'params': get('params'), **{c: t for c, t in (get('model_state') or {}).items()
                                        if c != REFERENCE}}


def _names(variables: dict) -> dict[str, object]:
    """Flat names of a variables dict: parameters bare, other collections prefixed."""
    out = {}
    for collection, tree in variables.items():
        for name, leaf in pytree.flat(tree).items():
            out[name if collection == 'params' else f'{collection}:{name}'] = leaf
    return out


def plan_load(init_config, abstract_state) -> LoadPlan:
    """Matches the checkpoint's arrays to this model's by name and shape; raises UserError for
    a shape mismatch not allowed by init_from.resize, or patterns that match nothing."""
    directory = checkpoint_directory(init_config)
    wanted = {n: tuple(a.shape) for n, a in _names(_variables(abstract_state)).items()}
    if hf.is_hf_folder(directory):
        saved = {n: tuple(a.shape) for n, a in pytree.flat(hf.param_shapes(
            hf.read_config(directory), scan_layers=hf.scanned(wanted))).items()}
    else:
        metadata = ocp.PyTreeCheckpointer().metadata(directory / 'state').item_metadata
        saved = {n: tuple(a.shape) for n, a in _names(_variables(metadata.tree)).items()}
    bare = lambda n: n.split(':', 1)[-1]
    skip = matching(init_config.skip, {bare(n) for n in wanted}, 'init_from.skip')
    resize = matching(init_config.resize, {bare(n) for n in wanted}, 'init_from.resize')
    plan = LoadPlan(directory, [], [], [], [], sorted(set(saved) - set(wanted)))
    for name, shape in wanted.items():
        if bare(name) in skip:
            plan.skipped.append(name)
            plan.fresh.append(name)
        elif name not in saved:
            plan.fresh.append(name)
        elif saved[name] == shape:
            plan.loaded.append(name)
        elif bare(name) in resize and len(saved[name]) == len(shape):
            plan.resized.append((name, saved[name], shape))
        else:
            raise UserError(f'init_from: parameter {name} is {saved[name]} in {directory} and '
                            f'{shape} in this model: skip it (init_from.skip) or, for position '
                            'embeddings, resize it (init_from.resize)')
    return plan


TOKENIZER_KEYS = ('train_split', 'text.feature', 'text.tokenizer', 'text.vocab_size',
                  'text.unicode_form', 'text.whitespace', 'text.drop_duplicates')


def saved_config(directory: epath.Path) -> dict | None:
    """The config (as a dict) of the run that wrote the checkpoint in `directory`, if known (a
    Hugging Face folder's config.json is not a bigjax config)."""
    if hf.is_hf_folder(directory):
        return None
    for path in (directory / 'config' / 'metadata', directory / 'config.json'):
        if path.exists():
            return json.loads(path.read_text())
    return None


def check_tokenizer(plan: LoadPlan, data_config) -> None:
    """A loaded token embedding means something only under the tokenizer it was trained with:
    raises UserError when the checkpoint's run tokenized text otherwise (a BPE is trained on its
    run's data and settings; the byte tokenizer and a Hugging Face model's own are the same
    whatever the data)."""
    if not any(name.startswith('token_embedding/') for name in plan.loaded):
        return
    saved = saved_config(plan.directory)
    if saved is None:
        return  # a checkpoint written elsewhere: nothing to compare with
    saved = saved['data']

    def identity(data: dict) -> dict:
        if data['text']['tokenizer'] == 'byte' or data['text']['tokenizer'].startswith('hf:'):
            return {'text.tokenizer': data['text']['tokenizer']}
        # The dataset whose training split taught the tokenizer.
        values = {'text.tokenizer_data': data['text'].get('tokenizer_data') or data['name']}
        for key in TOKENIZER_KEYS:
            value = data
            for part in key.split('.'):
                value = value[part]
            values[key] = value
        return values

    ours, theirs = identity(data_config.to_dict()), identity(saved)
    differing = [f'data.{k}={ours.get(k)!r} here, {theirs.get(k)!r} there'
                 for k in sorted(ours.keys() | theirs.keys()) if ours.get(k) != theirs.get(k)]
    if differing:
        raise UserError(f'init_from: the token embedding in {plan.directory} comes from another '
                        f'tokenizer ({"; ".join(differing)}): use the data settings of that run, '
                        "or init_from.skip=('token_embedding/.*',)")


def with_label_words(plan: LoadPlan, init_config, dataset) -> LoadPlan:
    """`plan` with the head of a decoder classifier (config.check asks for one) starting as the
    pretrained LM's output layer at the first token of each class's init_from.label_words text
    (fine-tuning then begins from the LM's own next-token guess); unchanged without label words."""
    words = tuple(init_config.label_words)
    if not words:
        return plan
    if any(name.startswith('head/') for name in plan.skipped):
        raise UserError('init_from.label_words sets the head and init_from.skip starts it fresh: '
                        'use one of them')
    if len(words) != dataset.num_classes:
        raise UserError(f'init_from.label_words has {len(words)} texts for the '
                        f'{dataset.num_classes} classes {list(dataset.class_names)}: give one '
                        'per class, in that order')
    saved = (saved_config(plan.directory) or {}).get('model', {})
    if saved.get('name') != 'transformer_lm' or not saved['transformer']['tied_embeddings'] \
            or 'token_embedding/embedding' not in plan.loaded:
        raise UserError(f'init_from.label_words needs a transformer_lm with tied embeddings (its '
                        f'output layer) written by bigjax; {plan.directory} holds none')
    ids = [dataset.tokenizer.encode_batch([w])[0] for w in words]
    firsts = tuple(int(i[0]) if len(i) else -1 for i in ids)
    if -1 in firsts or len(set(firsts)) < len(firsts):
        raise UserError(f'init_from.label_words={words}: each class needs a non-empty text whose '
                        'first token no other class shares')
    return dataclasses.replace(plan, head_tokens=firsts)


def load(plan: LoadPlan, shardings) -> dict[str, jax.Array]:
    """{name: array} of the loaded and resized arrays, each placed on the mesh as `shardings`
    (the state's) says as soon as it is read, so a Hugging Face model passes through the host one
    parameter at a time (resized ones linearly interpolated to their new shape; a label-word head
    taken from the output layer)."""
    targets = _names(_variables(shardings))
    if hf.is_hf_folder(plan.directory):
        loaders = hf.param_loaders(hf.Tensors(plan.directory), hf.read_config(plan.directory),
                                   scan_layers=hf.scanned(plan.loaded))
    else:
        metadata = ocp.PyTreeCheckpointer().metadata(plan.directory / 'state').item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        restored = _names(_variables(ocp.PyTreeCheckpointer().restore(
            plan.directory / 'state', restore_args=restore_args)))
        loaders = {name: (lambda array=array: array) for name, array in restored.items()}
    if plan.head_tokens:  # the head is read from the embedding too: read that once
        loaders['token_embedding/embedding'] = functools.cache(
            loaders['token_embedding/embedding'])
    arrays = {name: _placed(np.asarray(loaders[name]()), targets[name]) for name in plan.loaded}
    for name, _, shape in plan.resized:
        saved = np.asarray(loaders[name]())
        arrays[name] = _placed(np.asarray(jax.image.resize(saved.astype(np.float32), shape,
                                                           'linear')).astype(saved.dtype),
                               targets[name])
    if plan.head_tokens:
        embedding_VD = np.asarray(loaders['token_embedding/embedding']())
        arrays['head/kernel'] = _placed(embedding_VD[list(plan.head_tokens)].T,
                                        targets['head/kernel'])
        arrays['head/bias'] = _placed(np.zeros(len(plan.head_tokens), embedding_VD.dtype),
                                      targets['head/bias'])
    return arrays


def _placed(array: np.ndarray, sharding) -> jax.Array:
    """`array` on the devices `sharding` names, each process giving only its own shards."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def with_loaded(state, arrays: dict[str, object]):
    """`state` with the named arrays in place of its own, cast to their dtypes (the rest
    untouched); its frozen reference copy, where it has one, is the parameters so made."""
    def replace(collection: str, tree):
        def leaf(path, old):
            name = pytree.path_name(path)
            key = name if collection == 'params' else f'{collection}:{name}'
            return jnp.asarray(arrays[key]).astype(old.dtype) if key in arrays else old
        return jax.tree_util.tree_map_with_path(leaf, tree)
    params = replace('params', state.params)
    model_state = {c: params if c == REFERENCE else replace(c, t)
                   for c, t in state.model_state.items()}
    return state.replace(params=params, model_state=model_state)


def parameter_counts(params, frozen: Callable[[str], bool]) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    sizes = {name: int(np.prod(leaf.shape)) for name, leaf in pytree.flat(params).items()}
    return sum(v for n, v in sizes.items() if not frozen(n)), sum(sizes.values())


def merge_lora(params, cfg) -> dict:
    """Parameters with each adapter folded into its kernel (kernel + alpha / rank * a @ b) and
    the adapters dropped: the same function for a model built with lora_rank=0."""
    names = pytree.flat(params)
    scale = cfg.lora_alpha / cfg.lora_rank
    merged = {n: v for n, v in names.items() if not ADAPTER.fullmatch(n)}
    for name in names:
        if name.endswith('_lora_a'):
            a, b = names[name], names[name[:-1] + 'b']
            kernel_name = name[:-len('_lora_a')] + '/kernel'
            kernel = merged[kernel_name]
            layers = a.ndim + b.ndim - 2 - kernel.ndim  # 1 under scan_layers: one per layer
            lead = int(np.prod(kernel.shape[:layers]))
            delta = (a.reshape(lead, -1, cfg.lora_rank) @ b.reshape(lead, cfg.lora_rank, -1)
                     ) * scale
            merged[kernel_name] = (kernel + delta.reshape(kernel.shape)).astype(kernel.dtype)
    return pytree.unflat(merged)
