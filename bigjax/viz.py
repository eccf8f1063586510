"""Pictures of a run as PNG files (matplotlib, headless): numpy in, one file out per function.

Every function takes plain arrays or metrics rows and the path to write, and returns the path.
"""

import math

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 90


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _show_image(ax, image_HWC):
    image = np.asarray(image_HWC, np.float32)
    low, high = float(image.min()), float(image.max())
    image = (image - low) / max(high - low, 1e-6)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap='gray', vmin=0, vmax=1)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(images_NHWC, titles: list[str], path, columns: int = 8):
    """Images in a grid, each with its title (label, or 'true -> predicted')."""
    count = len(images_NHWC)
    columns = min(columns, max(count, 1))
    rows = max(math.ceil(count / columns), 1)
    fig, axes = plt.subplots(rows, columns, figsize=(1.4 * columns, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    for ax, image, title in zip(axes.flat, images_NHWC, titles):
        ax.axis('on')
        _show_image(ax, image)
        ax.set_title(title, fontsize=8)
    return _save(fig, path)


def augmentation_rows(rows: dict[str, np.ndarray], path):
    """One row per transform (the first row being the originals), the same images in columns."""
    names = list(rows)
    columns = len(next(iter(rows.values())))
    fig, axes = plt.subplots(len(names), columns, figsize=(1.3 * columns + 1.2, 1.3 * len(names)),
                             squeeze=False)
    for r, name in enumerate(names):
        for c in range(columns):
            _show_image(axes[r, c], rows[name][c])
        axes[r, 0].set_ylabel(name, fontsize=8, rotation=0, ha='right', va='center')
    return _save(fig, path)


def histogram(values, path, *, title: str, xlabel: str, bins: int = 50):
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(np.asarray(values), bins=bins, color='tab:blue')
    ax.set(title=title, xlabel=xlabel, ylabel='count')
    return _save(fig, path)


def token_coverage(counts_V, path, *, bytes_per_token: float):
    """Share of the tokens covered by the k most frequent vocabulary entries, against k."""
    counts = np.sort(np.asarray(counts_V, np.float64))[::-1]
    covered = np.cumsum(counts) / max(counts.sum(), 1)
    used = int((counts > 0).sum())
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(np.arange(1, len(counts) + 1), covered, color='tab:green')
    ax.set_xscale('log')
    ax.set(title=f'tokenizer coverage: {used} of {len(counts)} ids used, '
                 f'{bytes_per_token:.2f} bytes/token',
           xlabel='most frequent k token ids', ylabel='share of tokens', ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _series(rows, split, key):
    points = [(r['step'], r[key]) for r in rows if r.get('split') == split and key in r]
    return ([p[0] for p in points], [p[1] for p in points]) if points else None


def curves(rows: list[dict], keys: list[str], path, *, title: str, splits=('train', 'eval'),
           log_y: bool = False):
    """Values against steps, one line per (split, key) found in the metrics rows."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for split in splits:
        for key in keys:
            series = _series(rows, split, key)
            if series:
                ax.plot(*series, marker='.' if split == 'eval' else None,
                        label=f'{split} {key}' if len(splits) > 1 or len(keys) > 1 else key)
    if log_y:
        ax.set_yscale('log')
    ax.set(title=title, xlabel='step')
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def confusion_matrix(confusion_CC, class_names: list[str], path):
    """Counts, rows = true class, columns = predicted; numbers shown for up to 20 classes."""
    confusion = np.asarray(confusion_CC)
    size = min(0.45 * len(class_names) + 2.5, 14)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap='Blues')
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, class_names, fontsize=7)
    ax.set(xlabel='predicted', ylabel='true', title='confusion matrix')
    if len(class_names) <= 20:
        threshold = confusion.max() / 2
        for (i, j), value in np.ndenumerate(confusion):
            ax.text(j, i, int(value), ha='center', va='center', fontsize=7,
                    color='white' if value > threshold else 'black')
    return _save(fig, path)


def roc_curves(curves_by_class: dict, path):
    """ROC curve per class (one vs rest; the positive class for binary), AUC in the legend."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, curve in curves_by_class.items():
        ax.plot(curve['fpr'], curve['tpr'], label=f'{name}: AUC {curve["auc"]:.4f}')
    ax.plot([0, 1], [0, 1], color='gray', linestyle=':')
    ax.set(xlabel='false positive rate', ylabel='true positive rate', title='ROC', xlim=(0, 1),
           ylim=(0, 1.01))
    ax.legend(fontsize=7, loc='lower right')
    return _save(fig, path)


def attention_maps(weights_LHTS, path, *, title: str, layer_names: list[str]):
    """Attention weights of one input: a row per layer, a column per head (query x key)."""
    layers, heads = weights_LHTS.shape[:2]
    fig, axes = plt.subplots(layers, heads, figsize=(2.2 * heads, 2.2 * layers + 0.4),
                             squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer, head]
            ax.imshow(weights_LHTS[layer, head], cmap='viridis', vmin=0, aspect='auto')
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f'head {head}', fontsize=8)
        axes[layer, 0].set_ylabel(f'{layer_names[layer]}\nquery', fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel('key', fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def metric_vs_parameter(values: list, metrics: list[float], path, *, parameter: str, metric: str):
    """One point per trial: the metric against one hyperparameter (log axis for positive
    numbers spanning 10x or more; categories side by side)."""
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        ax.scatter(values, metrics, s=24)
        if min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale('log')
    else:
        labels = sorted({str(v) for v in values})
        ax.scatter([labels.index(str(v)) for v in values], metrics, s=24)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel(parameter)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def overlaid_curves(curves: dict[str, tuple], path, *, title: str, ylabel: str):
    """Several runs' (steps, values) on one axis, one line each, labelled."""
    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    if len(curves) > 10:
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for label, (steps, values) in curves.items():
        ax.plot(steps, values, marker='.', markersize=3, linewidth=1, label=label)
    ax.set_xlabel('step')
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if len(curves) <= 24:
        ax.legend(fontsize=6, loc='center left', bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def importance_bars(importances: dict[str, float], path, *, metric: str):
    """Horizontal bars: each hyperparameter's share of the metric's variance."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(4.8, 0.5 * len(names) + 1.2))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel(f'importance for {metric} (fANOVA)')
    ax.set_xlim(0, 1)
    return _save(fig, path)
