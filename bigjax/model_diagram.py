"""A flax model drawn as boxes in data-flow order, each with its output shape and parameters.

`layers` runs the model abstractly (jax.eval_shape: no FLOPs, no device memory) with
flax.linen.intercept_methods recording every module's __call__ as it starts: its path, class,
inputs and outputs (as flax.linen.tabulate reports them), and the parameters under its path.
`draw` writes them as an SVG (matplotlib, no network): the model's input, its modules in the
order data reaches them (children framed inside their parent), its output. Layers stacked by
nn.scan (scan_layers) appear once, marked with their number.
"""

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from bigjax import finetune, pytree

WIDTH = 7.0  # inches, the whole picture
ROW = 0.5  # inches, a box's header: two lines of text
GAP = 0.2  # inches between boxes one after another (the arrow)
INDENT = 0.25  # inches a child's box sits inside its parent's
INPUT_Y = 0.65  # inches, the centre of the input's label
TERMINAL = 0.24  # inches, the height of the input's and output's labels
FONT = 9  # points
COLOURS = ('#dbe8fb', '#fdf0d5', '#e3f4e1', '#f3e1f4')  # by depth


@dataclasses.dataclass(frozen=True)
class Layer:
    """One module's first call."""

    path: tuple[str, ...]  # names from the root's child down; () is the model itself
    type: str  # the module's class
    inputs: tuple  # ((shape, dtype), ...) of the call's array arguments
    outputs: tuple  # ((shape, dtype), ...) of its array results
    params: int  # parameters under its path (children included)
    trainable: int  # of those, the ones `frozen` does not name
    repeats: int  # layers stacked by nn.scan (or nn.vmap) into this one (1: none)


def layers(model: nn.Module, variables, *args, max_depth: int = 2,
           frozen: Callable[[str], bool] = lambda name: False, **kwargs) -> list[Layer]:
    """The modules `model.apply(variables, *args, **kwargs)` calls, up to `max_depth` names
    below the root, in the order their calls start (the root first). `args` may be arrays or
    jax.ShapeDtypeStructs; `frozen` takes 'encoder/block0/mlp/up/kernel' names."""
    variables = nn.unbox(variables)
    params = pytree.flat(variables.get('params', {}))
    calls = {}

    def record(call, call_args, call_kwargs, context):
        path = context.module.path
        if context.method_name != '__call__' or len(path) > max_depth or path in calls:
            return call(*call_args, **call_kwargs)
        calls[path] = None  # holds its place: children finish first
        outputs = call(*call_args, **call_kwargs)
        inner = sum(int(np.prod(leaf.shape)) for leaf in
                    jax.tree.leaves(context.module.variables.get('params', {})))
        calls[path] = (type(context.module).__name__, _arrays(call_args), _arrays(outputs), inner)
        return outputs

    with nn.intercept_methods(record):
        jax.eval_shape(functools.partial(model.apply, **kwargs), variables, *args)
    result = []
    for path, (type_name, inputs, outputs, inner) in calls.items():
        trainable, total = finetune.parameter_counts(pytree.unflat(
            {name: leaf for name, leaf in params.items()
             if tuple(name.split('/')[:len(path)]) == path}), frozen)
        result.append(Layer(path, type_name, inputs, outputs, total, trainable,
                            total // inner if 0 < inner < total else 1))
    return result


def _arrays(tree) -> tuple:
    """((shape, dtype name), ...) of the arrays in `tree` (None and Python values left out)."""
    return tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in jax.tree.leaves(tree)
                 if hasattr(leaf, 'shape'))


def _describe(arrays: tuple) -> str:
    """'(8, 28, 28, 32) float32' for one array, '; ' between several, '-' for none."""
    return '; '.join(f'({", ".join(map(str, shape))}{"," if len(shape) == 1 else ""}) {dtype}'
                     for shape, dtype in arrays) or '-'


def draw(model_layers: list[Layer], path) -> None:
    """Writes the picture of `layers`' result as SVG to `path` (a file name or binary file),
    with its text kept as text: searchable, and drawn in the viewer's fonts."""
    with matplotlib.rc_context({'svg.fonttype': 'none'}):
        figure(model_layers).savefig(path, format='svg', metadata={'Date': None})


def figure(model_layers: list[Layer]) -> Figure:
    """The picture: a title, the input, the root's children chained by arrows (their own
    children framed inside them), the output."""
    root, *modules = model_layers
    children = _children(modules)
    boxes, arrows = [], []
    top = INPUT_Y + TERMINAL / 2 + GAP
    bottom = _chain(children[()], children, INDENT, top, WIDTH - 2 * INDENT, boxes, arrows)
    output_y = bottom + GAP + TERMINAL / 2
    arrows += [(INPUT_Y + TERMINAL / 2, top), (bottom, bottom + GAP)]
    height = output_y + TERMINAL
    fig = Figure(figsize=(WIDTH, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, WIDTH), ylim=(height, 0))
    ax.axis('off')
    ax.text(INDENT, 0.25, f'{root.type}: {_count(root)}', fontsize=FONT + 2, weight='bold',
            va='center')
    _terminal(ax, INPUT_Y, f'input {_describe(root.inputs)}')
    _terminal(ax, output_y, f'output {_describe(root.outputs)}')
    for layer, x, y, width, box_height in sorted(boxes, key=lambda box: len(box[0].path)):
        _box(ax, layer, x, y, width, box_height)
    for start, end in arrows:
        ax.add_patch(FancyArrowPatch((WIDTH / 2, start), (WIDTH / 2, end), arrowstyle='-|>',
                                     mutation_scale=10, color='#555555', shrinkA=0, shrinkB=0))
    return fig


def _children(modules: list[Layer]) -> dict[tuple, list[Layer]]:
    """{path: its recorded children in call order}; a module whose parent was never called
    (only its other methods were) goes under its nearest recorded ancestor."""
    recorded = {layer.path for layer in modules} | {()}
    children = {path: [] for path in recorded}
    for layer in modules:
        parent = layer.path[:-1]
        while parent not in recorded:
            parent = parent[:-1]
        children[parent].append(layer)
    return children


def _chain(siblings: list[Layer], children: dict, x: float, y: float, width: float,
           boxes: list, arrows: list) -> float:
    """Lays out `siblings` from y down, an arrow from each to the next; returns the bottom."""
    bottom = y
    for i, layer in enumerate(siblings):
        if i:
            arrows.append((bottom, bottom + GAP))
            bottom += GAP
        bottom = _place(layer, children, x, bottom, width, boxes, arrows)
    return bottom


def _place(layer: Layer, children: dict, x: float, y: float, width: float, boxes: list,
           arrows: list) -> float:
    """Lays out `layer`'s box at (x, y), its children framed inside; returns its bottom."""
    inside = children[layer.path]
    bottom = y + ROW
    if inside:
        bottom = _chain(inside, children, x + INDENT, bottom, width - 2 * INDENT, boxes,
                        arrows) + INDENT / 2
    boxes.append((layer, x, y, width, bottom - y))
    return bottom


def _count(layer: Layer) -> str:
    """'1,234 params', with the trainable share where some are frozen (LoRA, config.frozen)."""
    text = f'{layer.params:,} params'
    return text if layer.trainable == layer.params else f'{text} ({layer.trainable:,} trainable)'


def _box(ax, layer: Layer, x: float, y: float, width: float, height: float) -> None:
    """One module: 'name — Type' and its parameters on the first line, its output below."""
    ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle='round,pad=0,rounding_size=0.06',
                                facecolor=COLOURS[(len(layer.path) - 1) % len(COLOURS)],
                                edgecolor='#777777', linewidth=0.8))
    stacked = f' ×{layer.repeats} stacked' if layer.repeats > 1 else ''
    ax.text(x + 0.1, y + 0.17, f'{layer.path[-1]} — {layer.type}{stacked}', fontsize=FONT,
            weight='bold', va='center')
    ax.text(x + width - 0.1, y + 0.17, _count(layer), fontsize=FONT, ha='right', va='center')
    ax.text(x + 0.1, y + 0.37, f'out {_describe(layer.outputs)}', fontsize=FONT - 1,
            family='monospace', color='#333333', va='center')


def _terminal(ax, y: float, text: str) -> None:
    """The model's input or output: a rounded label centred on the arrows."""
    ax.text(WIDTH / 2, y, text, fontsize=FONT, family='monospace', ha='center', va='center',
            bbox=dict(boxstyle='round,pad=0.35', facecolor='white', edgecolor='#555555'))
