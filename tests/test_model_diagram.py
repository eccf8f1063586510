"""bigjax.model_diagram: modules in call order with the shapes and counts flax.linen.tabulate
reports, and their SVG picture."""

import functools
import re
import xml.etree.ElementTree as ElementTree

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import finetune, model_diagram, models, pytree
from bigjax.models.transformer_config import TransformerConfig
from conftest import load_config

SVG = '{http://www.w3.org/2000/svg}'


def cnn():
    return models.SimpleCNN(num_classes=10, features=(8, 16), batch_norm=True, pooling='max',
                            hidden=32), jnp.zeros((4, 12, 12, 1))


def scanned_lora_lm():
    cfg = TransformerConfig(width=32, depth=3, num_heads=4, mlp_dim=64, max_len=16,
                            scan_layers=True, remat='block', lora_rank=2)
    return models.TransformerLM(cfg, vocab_size=50), jnp.zeros((2, 12), jnp.int32)


def abstract_variables(model, x):
    """The model's variables as shapes and dtypes: what `layers` needs, without the seconds an
    eager init takes."""
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)


def tabulate_rows(model, x, depth: int) -> list[tuple]:
    """(path, module class, outputs as 'float32[4,10]' strings, parameter count) per row of
    model.tabulate(depth=depth), in its order; the count is the module's own variables' plus
    those of its children not shown."""
    text = model.tabulate(jax.random.PRNGKey(0), x, train=False, depth=depth,
                          console_kwargs={'force_terminal': False, 'width': 400})
    lines = text.splitlines()
    header = [c.strip() for c in next(l for l in lines if l.startswith('┃')).split('┃')[1:-1]]
    outputs, params = header.index('outputs'), header.index('params')
    rows, block = [], []
    for line in lines[next(i for i, l in enumerate(lines) if l.startswith('┡')) + 1:]:
        if line.startswith(('├', '└')):
            cells = [[c.strip() for c in l.split('│')[1:-1]] for l in block]
            if cells[0][1]:  # not the Total row
                counts = [re.match(r'([\d,]+) \(', c[params]) for c in cells]
                rows.append((tuple(cells[0][0].split('/')) if cells[0][0] else (), cells[0][1],
                             tuple(c[outputs].lstrip('- ') for c in cells
                                   if c[outputs] not in ('', '- None')),
                             next((int(m[1].replace(',', '')) for m in counts if m), 0)))
            block = []
        else:
            block.append(line)
    return rows


@pytest.mark.parametrize('make, depth', [(cnn, 1), (scanned_lora_lm, 2), (scanned_lora_lm, 3)])
def test_layers_are_tabulates_rows_with_the_same_shapes_and_counts(make, depth):
    model, x = make()
    variables = abstract_variables(model, x)
    layers = model_diagram.layers(model, variables, x, train=False, max_depth=depth)
    rows = tabulate_rows(model, x, depth)
    assert [(l.path, l.type) for l in layers] == [row[:2] for row in rows]
    for layer, (path, _, outputs, count) in zip(layers, rows):
        assert tuple(f'{dtype}[{",".join(map(str, shape))}]'
                     for shape, dtype in layer.outputs) == outputs, path
        if not any(other.path[:-1] == path for other in layers):  # its children not shown
            assert layer.params == count, path
    total = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables['params']))
    assert layers[0].path == () and layers[0].params == total


def test_scanned_blocks_show_once_with_the_layer_count_and_lora_share(tmp_path):
    model, x = scanned_lora_lm()
    params = nn.unbox(abstract_variables(model, x)['params'])
    config = load_config('transformer_cpu', 'smoke')
    config.model.transformer.lora_rank = 2
    frozen = finetune.frozen_predicate(config)
    layers = model_diagram.layers(model, {'params': params}, x, train=False, frozen=frozen)
    blocks = {l.path: l for l in layers}[('encoder', 'blocks')]
    stacked = pytree.flat(params['encoder']['blocks'])
    assert blocks.repeats == 3 and blocks.outputs == (((2, 12, 32), 'float32'),)
    assert blocks.params == sum(v.size for v in stacked.values())
    assert blocks.trainable == sum(v.size for n, v in stacked.items() if '_lora_' in n) > 0
    trainable, total = finetune.parameter_counts(params, frozen)
    path = tmp_path / 'model.svg'
    model_diagram.draw(layers, path)
    texts = svg_texts(path)
    assert f'TransformerLM: {total:,} params ({trainable:,} trainable)' in [t for t, _ in texts]
    assert 'blocks — Block ×3 stacked' in [t for t, _ in texts]
    assert 'output (2, 12, 50) float32' in [t for t, _ in texts]


def svg_texts(path) -> list[tuple[str, float]]:
    """(text, x) of every <text> element of the SVG file at `path`, from the top down."""
    root = ElementTree.parse(path).getroot()
    texts = [(''.join(e.itertext()), float(e.get('x')), float(e.get('y')))
             for e in root.iter(f'{SVG}text')]
    return [(text, x) for text, x, _ in sorted(texts, key=lambda t: t[2])]


def box_titles(path) -> list[tuple[str, float]]:
    """(module name, x) of each box ('name — Type') in the SVG file at `path`, top down."""
    return [(text.split(' — ')[0], x) for text, x in svg_texts(path) if ' — ' in text]


def test_children_are_drawn_inside_their_parent_in_call_order(tmp_path):
    model, x = scanned_lora_lm()
    variables = abstract_variables(model, x)
    path = tmp_path / 'model.svg'
    model_diagram.draw(model_diagram.layers(model, variables, x, train=False), path)
    titles = box_titles(path)
    assert [name for name, _ in titles] == ['token_embedding', 'encoder', 'Dropout_0', 'blocks',
                                            'final_norm']
    indent = {name: x for name, x in titles}
    assert indent['token_embedding'] == indent['encoder'] < indent['blocks']
