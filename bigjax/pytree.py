"""Names for the leaves of parameter and state trees: one spelling everywhere (patterns,
optimizer masks, sharding errors, checkpoints, the report)."""

import jax


def path_name(path, sep: str = '/') -> str:
    """'encoder/block0/attention/qkv/kernel' for a jax key path (dict keys, attribute names and
    sequence indices alike); Orbax names a checkpoint's arrays with sep='.'."""
    return sep.join(str(next((getattr(key, attr) for attr in ('key', 'name', 'idx')
                              if hasattr(key, attr)), key)) for key in path)


def flat(tree) -> dict[str, object]:
    """{'a/b/c': leaf} for a nested dict of arrays."""
    return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflat(names: dict[str, object]) -> dict:
    """The nested dict that `flat` came from."""
    tree = {}
    for name, leaf in names.items():
        node = tree
        *parents, last = name.split('/')
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return tree
