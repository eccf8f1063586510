"""One page per run: <workdir>/report.html, its figures also beside it in <workdir>/report/.

The page is self-contained (figures embedded as PNG and SVG data) and has these sections:
summary and timing, final metrics, training curves, evaluation (confusion matrix, ROC curves,
per-class table, most confidently wrong examples), data (examples and augmentations; for text:
documents, token lengths, tokenizer coverage), model (the modules drawn in data-flow order with
their output shapes and parameter counts, report/model.svg from bigjax/model_diagram.py; the
parameter table; the module tree as Mermaid source; attention maps), samples (LMs) and the
config. Built at the end of a run and on demand (`launch.py --mode=report`,
`python -m bigjax.report WORKDIR`) for a finished or running run.
Every process runs the model (its parameters may be sharded across them); process 0 writes.
"""

import base64
import functools
import html
import json
import statistics
import sys

import jax
import numpy as np
from etils import epath

from bigjax import config as config_lib
from bigjax import data as data_lib
from bigjax import (eval_harness, finetune, metrics, model_diagram, models, parallel, pytree,
                    sample, tasks, viz, writers)
from bigjax import plan as plan_lib
from bigjax import workdir as workdir_lib
from bigjax.data import augment
from bigjax.errors import UserError

REPORT_FILE = 'report.html'
FIGURES_DIR = 'report'
SECTIONS = ('Summary', 'Metrics', 'Training', 'Evaluation', 'Data', 'Model', 'Samples',
            'Config')
GRID_EXAMPLES = 24
MOST_CONFUSED = 16
ATTENTION_INPUTS = 2
CLASSIFICATION_KINDS = ('image', 'text_classification')  # with confusion matrices


def from_workdir(config, workdir) -> epath.Path:
    """Writes the report of the run in `workdir` (its latest checkpoint); `config` None means
    the run's own config.json. Returns the page's path."""
    path = workdir_lib.resolve(workdir)
    if not (path / 'config.json').exists():
        raise UserError(f'{path} holds no bigjax run (no config.json): pass the --workdir a run '
                        'was trained in')
    if config is None:
        config = config_lib.from_json(workdir_lib.read_json(
            path / 'config.json', 'pass the run\'s config file instead: python launch.py '
            f'--config=CONFIG --workdir={path} --mode=report'))
    plan, state, step = plan_lib.load_state(config, path)
    return build(plan, state, step)


def build(plan, state, step: int) -> epath.Path:
    """Writes <workdir>/report.html for `state` (at `step`) of the run `plan` describes."""
    is_main = jax.process_index() == 0
    figures = _Figures(plan.workdir / FIGURES_DIR, enabled=is_main)
    rows = writers.read_metrics(plan.workdir)
    forward = _Forward(plan, plan.task())
    sections = {
        'Summary': _summary(plan, rows, step),
        'Metrics': _metrics_table(rows),
        'Training': _training(rows, figures),
        'Evaluation': _evaluation(plan, forward, state, figures),
        'Data': _data(plan, figures),
        'Model': _model(plan, forward, state, figures),
        'Samples': _samples(plan, state),
        'Config': f'<pre>{html.escape(json.dumps(json.loads(plan.config.to_json_best_effort()), indent=2))}</pre>',
    }
    path = plan.workdir / REPORT_FILE
    if is_main:
        workdir_lib.write_atomically(path, _page(plan, sections))
    return path


class _Figures:
    """Writes pictures (PNG, or SVG) into the figures folder and returns <figure> tags with the
    image embedded."""

    def __init__(self, folder: epath.Path, enabled: bool):
        self.folder, self.enabled = folder, enabled
        if enabled:
            folder.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, caption: str, plot, *args, suffix: str = 'png', **kwargs) -> str:
        if not self.enabled:
            return ''
        path = self.folder / f'{name}.{suffix}'
        with path.open('wb') as f:
            plot(*args, f, **kwargs)
        encoded = base64.b64encode(path.read_bytes()).decode('ascii')
        mime = {'png': 'image/png', 'svg': 'image/svg+xml'}[suffix]
        return (f'<figure><img src="data:{mime};base64,{encoded}" alt="{html.escape(name)}">'
                f'<figcaption>{html.escape(caption)}</figcaption></figure>')


def _table(header: list[str], rows: list[list], numeric_from: int = 1) -> str:
    def cell(value, tag, index):
        text = f'{value:.5g}' if isinstance(value, float) else str(value)
        align = ' class="num"' if index >= numeric_from and tag == 'td' else ''
        return f'<{tag}{align}>{html.escape(text)}</{tag}>'
    head = ''.join(cell(h, 'th', i) for i, h in enumerate(header))
    body = ''.join('<tr>' + ''.join(cell(v, 'td', i) for i, v in enumerate(row)) + '</tr>'
                   for row in rows)
    return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _summary(plan, rows: list[dict], step: int) -> str:
    total = plan.schedule.total_steps
    trainable, num_params = finetune.parameter_counts(plan.abstract_state.params, plan.frozen)
    facts = [
        ['workdir', str(plan.workdir)],
        ['status', f'finished: step {step} of {total}' if step >= total
         else f'in progress: checkpoint at step {step} of {total}'],
        ['data', f'{plan.dataset.name} ({plan.dataset.kind}): {len(plan.dataset.train)} train, '
                 f'{len(plan.dataset.eval)} eval examples'],
        ['model', f'{plan.config.model.name}: {num_params:,} parameters, {trainable:,} '
                  'trainable'],
        ['mesh', ', '.join(f'{k}={v}' for k, v in plan.mesh.shape.items())
         + f' over {plan.mesh.devices.size} {jax.devices()[0].platform} device(s), '
           f'{jax.process_count()} process(es)'],
    ]
    if plan.load_plan:
        facts.append(['initialised from', plan.load_plan.describe()])
    times = [r['time'] for r in rows if 'time' in r]
    if len(times) > 1:
        facts.append(['wall time (first to last metrics line)',
                      _duration(max(times) - min(times))])
    train_rows = [r for r in rows if r.get('split') == 'train' and 'steps_per_sec' in r]
    if train_rows:
        steps, previous = 0.0, 0
        for r in train_rows:
            steps += (r['step'] - previous) / max(r['steps_per_sec'], 1e-9)
            previous = r['step']
        facts.append(['time in training steps (eval, checkpoints, compilation excluded)',
                      _duration(steps)])
        for key in ('steps_per_sec', 'examples_per_sec', 'tokens_per_sec', 'mfu'):
            values = [r[key] for r in train_rows[1:] or train_rows if key in r]
            if values:
                facts.append([f'{key} (median of the log windows)', statistics.median(values)])
    return _table(['', ''], facts, numeric_from=1)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f'{int(minutes)}m {secs:.1f}s' if minutes else f'{secs:.1f}s'


def _metrics_table(rows: list[dict]) -> str:
    latest = {}
    for row in rows:
        latest[row.get('split')] = row
    if not latest:
        return '<p>No metrics yet.</p>'
    parts = []
    for split in ('eval', 'train'):
        if split in latest:
            row = latest[split]
            values = [[k, v] for k, v in row.items() if k not in ('step', 'split', 'time')]
            parts.append(f'<h3>{split} at step {row["step"]}</h3>' + _table(['metric', 'value'],
                                                                           values))
    return ''.join(parts)


def _training(rows: list[dict], figures: _Figures) -> str:
    if not rows:
        return '<p>No metrics yet.</p>'
    out = [figures.add('loss', 'Loss, train (log windows) and eval.', viz.curves, rows,
                       ['loss'], title='loss')]
    eval_keys = [k for k in ('accuracy', 'top5_accuracy', 'f1_macro', 'auc', 'auc_macro',
                             'bits_per_byte', 'reward_accuracy', 'answer_exact_match')
                 if any(k in r for r in rows)]
    if any('margin' in r for r in rows):
        out.append(figures.add('rewards', 'Preference rewards: beta times the log-probability '
                               'ratio of policy to reference, chosen and rejected answers, and '
                               'their margin.', viz.curves, rows,
                               ['chosen_reward', 'rejected_reward', 'margin'], title='rewards'))
    out.append(figures.add('eval_metrics', 'Evaluation metrics against steps.', viz.curves, rows,
                           eval_keys, title='eval metrics', splits=('eval',)))
    out.append(figures.add('learning_rate', 'Learning rate of the schedule.', viz.curves, rows,
                           ['learning_rate'], title='learning rate', splits=('train',)))
    speed = [k for k in ('tokens_per_sec', 'examples_per_sec') if any(k in r for r in rows)][:1]
    if speed:
        out.append(figures.add('throughput', 'Training throughput per log window.', viz.curves,
                               rows, speed, title=speed[0], splits=('train',)))
    if any('mfu' in r for r in rows):
        out.append(figures.add('mfu', 'Model FLOPs utilisation per log window.', viz.curves,
                               rows, ['mfu'], title='MFU', splits=('train',)))
    return ''.join(out)


class _Forward:
    """The model on a global batch: outputs (and the attention weights of the first inputs),
    replicated on every process. Compiled once per kind of call."""

    def __init__(self, plan, task):
        self.plan, self.task, self.compiled = plan, task, {}

    def __call__(self, state, batch, *, attention: bool):
        if attention not in self.compiled:
            replicated = parallel.replicated(self.plan.mesh)
            self.compiled[attention] = jax.jit(
                functools.partial(self._apply, attention=attention),
                in_shardings=(self.plan.state_shardings, parallel.batch_sharding(self.plan.mesh)),
                out_shardings=(replicated, replicated))
        return jax.device_get(self.compiled[attention](
            state, parallel.global_batch(batch, self.plan.mesh)))

    def _apply(self, state, batch, *, attention: bool):
        inputs = self.task.inputs(batch, state.rng, False)
        kwargs = {k: v for k, v in self.task.call_kwargs(batch).items() if k != 'features'}
        variables = {'params': state.params, **state.model_state}
        with parallel.layout(self.plan.mesh, self.plan.rules):
            if not attention:
                return self.plan.model.apply(variables, inputs, train=False, **kwargs), {}
            outputs, extra = self.plan.model.apply(variables, inputs, train=False,
                                                   mutable=['intermediates'], **kwargs)
        return outputs, _layer_weights(extra['intermediates'])


def _layer_weights(intermediates) -> dict:
    """{'block<i>': attention weights (B, H, T, S) of the first ATTENTION_INPUTS inputs}, in
    layer order, from blocks apart (block<i>) or scanned (blocks: the layer axis first)."""
    layers = {}
    for path, weights in jax.tree_util.tree_leaves_with_path(intermediates):
        names = [_key(k) for k in path]
        if 'blocks' in names:
            layers.update({f'block{i}': w[:ATTENTION_INPUTS] for i, w in enumerate(weights)})
        else:
            layers[next(n for n in names if n.startswith('block'))] = weights[:ATTENTION_INPUTS]
    return dict(sorted(layers.items(), key=lambda item: int(item[0][len('block'):])))


def _first_eval_rows(plan, count: int) -> dict:
    arrays = plan.dataset.eval.arrays
    count = min(count, len(plan.dataset.eval))
    rows = {k: v[:count] for k, v in arrays.items()}
    rows['index'] = np.arange(count)
    return rows


def _eval_batches(plan, arrays):
    batch_size = plan.config.train.eval_batch_size or plan.config.train.batch_size
    return data_lib.eval_batches(arrays, batch_size, jax.process_index(), jax.process_count())


def _evaluation(plan, forward, state, figures: _Figures) -> str:
    if plan.dataset.chat is not None:
        return _answers(plan) + _harness(plan)
    if plan.dataset.kind == 'text_lm':
        return ('<p>Language model: loss, perplexity, bits per byte/character and next-token '
                'accuracy are in the metrics table and curves.</p>') + _harness(plan)
    if plan.dataset.kind not in CLASSIFICATION_KINDS:
        return (f'<p>{html.escape(plan.dataset.kind)}: the task\'s metrics are in the metrics '
                'table and curves.</p>')
    found = writers.read_latest_details(plan.workdir)
    if found is None:
        return '<p>No evaluation yet.</p>'
    step, details = found
    names = details['class_names']
    out = [f'<p>Latest evaluation: step {step}.</p>',
           figures.add('confusion_matrix', f'Confusion matrix at step {step}.',
                       viz.confusion_matrix, details['confusion'], names)]
    if details['roc']:
        errors = [c['auc_max_binning_error'] for c in details['roc'].values()]
        out.append(figures.add('roc', f'ROC curves at step {step} (AUC from {metrics.AUC_BINS} '
                                      f'log-odds bins; largest possible binning error '
                                      f'{max(errors):.2g}).', viz.roc_curves, details['roc']))
    per_class = details['per_class']
    out.append(_table(['class', 'precision', 'recall', 'f1', 'support'],
                      [[name, per_class['precision'][i], per_class['recall'][i],
                        per_class['f1'][i], int(per_class['support'][i])]
                       for i, name in enumerate(names)]))
    out.append(_most_confused(plan, forward, state, figures))
    return ''.join(out)


def _harness(plan) -> str:
    """The newest lm-evaluation-harness score of each task run on this workdir."""
    latest = eval_harness.read_latest(plan.workdir)
    if not latest:
        return ('<p>No lm-evaluation-harness tasks scored yet (launch.py --mode=evaluate '
                '--tasks=..., or train.eval_tasks).</p>')
    rows = [[task, r['step'], r['num_fewshot'], r['limit'] or 'all', 'yes' if r['chat'] else 'no',
             metric, value, r['stderr'].get(metric, '')]
            for task, r in sorted(latest.items()) for metric, value in r['values'].items()]
    return ('<h3>lm-evaluation-harness</h3><p>The newest score of each task (its files: '
            f'{eval_harness.DIR}/).</p>' + _table(
                ['task', 'step', 'n-shot', 'examples', 'chat template', 'metric', 'value',
                 'stderr'], rows, numeric_from=6))


def _answers(plan) -> str:
    """Chat data: the held-out prompts, their reference answers and the model's, as scored at
    the latest evaluation."""
    chat = plan.dataset.chat
    intro = ('<p>Chat data: loss, perplexity and accuracy count the answer tokens only (the '
             'tokens data.chat.train_on learns).</p>')
    found = writers.read_latest_details(plan.workdir)
    if not chat.prompts or found is None or 'generations' not in found[1]:
        return intro + '<p>No answers generated yet (data.chat.eval_generations).</p>'
    step, details = found
    rows = details['generations']
    mean = sum(r['score'] for r in rows) / max(len(rows), 1)
    return intro + (f'<p>Step {step}: {len(rows)} held-out prompts answered greedily (at most '
                    f'{chat.answer_tokens} tokens, up to the end of turn); {chat.scorer} '
                    f'{mean:.4f}.</p>') + _table(
        ['question', 'reference', 'generated', 'score'],
        [[_snippet(r['question'], 300), r['reference'], r['generated'], r['score']]
         for r in rows], numeric_from=3)


def _most_confused(plan, forward, state, figures: _Figures) -> str:
    """The eval examples (of the first report.examples) predicted wrong with most confidence."""
    arrays = _first_eval_rows(plan, plan.config.report.examples)
    # A global eval batch holds examples start, start + 1, ...; padding rows come last.
    logits = np.concatenate([forward(state, batch, attention=False)[0]
                             for batch in _eval_batches(plan, arrays)])[:len(arrays['index'])]
    probs = np.asarray(jax.nn.softmax(logits.astype(np.float32), -1))
    predicted, confidence, labels = probs.argmax(-1), probs.max(-1), arrays['label']
    wrong = np.flatnonzero(predicted != labels)
    header = (f'<h3>Most confidently wrong ({len(wrong)} wrong of the first {len(labels)} eval '
              'examples)</h3>')
    if not len(wrong):
        return header + '<p>None wrong.</p>'
    wrong = wrong[np.argsort(-confidence[wrong], kind='stable')][:MOST_CONFUSED]
    names = plan.dataset.class_names
    titles = [f'{names[labels[i]]} -> {names[predicted[i]]} ({confidence[i]:.2f})' for i in wrong]
    if plan.dataset.kind == 'image':
        return header + figures.add('most_confused', 'true -> predicted (probability)',
                                    viz.image_grid, arrays['image'][wrong], titles)
    tokenizer = plan.dataset.tokenizer
    return header + _table(['true -> predicted (probability)', 'text'],
                           [[t, _snippet(tokenizer.decode(arrays['tokens'][i]))]
                            for t, i in zip(titles, wrong)], numeric_from=2)


def _snippet(text: str, length: int = 400) -> str:
    return text if len(text) <= length else text[:length] + ' …'


def _data(plan, figures: _Figures) -> str:
    dataset = plan.dataset
    if dataset.kind == 'image':
        return _image_data(plan, figures)
    if dataset.kind == 'text_preference':
        return _preference_data(plan, figures)
    if dataset.chat is not None:
        return _chat_data(plan, figures)
    if dataset.kind not in ('text_lm', 'text_classification'):  # a kind of the user's own
        return _table(['training array', 'shape', 'dtype'],
                      [[name, str(array.shape), str(array.dtype)]
                       for name, array in dataset.train.arrays.items()], numeric_from=3)
    tokens = dataset.train.arrays['tokens']
    tokenizer = dataset.tokenizer
    out = []
    if tokenizer is None:
        return '<p>Synthetic tokens: nothing to show.</p>'
    if dataset.kind == 'text_lm':
        stream = tokens[:, 1:].reshape(-1)  # windows overlap by one token
        ends = np.flatnonzero(stream == tokenizer.eos_id)
        lengths = np.diff(ends)
        documents = [tokenizer.decode(stream[a + 1:b]) for a, b in zip(ends[:3], ends[1:4])]
        out.append('<h3>Training documents (the first three whole ones)</h3>' + ''.join(
            f'<pre class="doc">{html.escape(_snippet(d, 1500))}</pre>' for d in documents))
        caption = 'Tokens per document (between end-of-document ids) in the training split.'
    else:
        lengths = (tokens != tokenizer.pad_id).sum(1)
        names, labels = dataset.class_names, dataset.train.arrays['label']
        out.append('<h3>Training examples</h3>' + _table(
            ['label', 'text'], [[names[labels[i]], _snippet(tokenizer.decode(tokens[i]))]
                                for i in range(min(6, len(tokens)))], numeric_from=2))
        caption = (f'Tokens per example, cut at data.text.seq_len={dataset.seq_len} '
                   '(the peak at the right end: examples that were truncated).')
    if len(lengths):
        out.append(figures.add('token_lengths', caption, viz.histogram, lengths,
                               title='token lengths', xlabel='tokens'))
    sample = tokens.reshape(-1)[:4_000_000]
    real = sample[(sample != tokenizer.pad_id) & (sample != tokenizer.eos_id)]
    token_bytes, _ = tokenizer.token_lengths()
    counts = np.bincount(real, minlength=tokenizer.vocab_size)
    out.append(figures.add('token_coverage', f'{tokenizer.name}: share of the training tokens '
                                             'covered by the most frequent token ids.',
                           viz.token_coverage, counts,
                           bytes_per_token=float(token_bytes[real].mean()) if len(real) else 0.0))
    return ''.join(out)


def _chat_data(plan, figures: _Figures) -> str:
    """What became of the records (bad, truncated, dropped), how full the packed windows are, the
    first conversations with their learnt tokens marked, and conversation lengths."""
    stats, tokenizer = plan.dataset.chat.stats, plan.dataset.tokenizer
    keys = [('records', 'records'), ('bad_skipped', 'bad, skipped'),
            ('truncated', 'truncated'), ('nothing_to_learn', 'dropped: nothing to learn'),
            ('examples', 'conversations'), ('windows', 'windows'), ('per_window', 'per window'),
            ('fill', 'tokens filled'), ('learnt_tokens', 'tokens learnt')]
    table = _table(['split'] + [label for _, label in keys], [
        [split] + [stats[split]['examples'] / max(stats[split]['windows'], 1) if k == 'per_window'
                   else stats[split][k] for k, _ in keys] for split in ('train', 'eval')])
    arrays = plan.dataset.train.arrays
    tokens, segments, weights = (np.asarray(arrays[n][:8]) for n in ('tokens', 'segments',
                                                                    'weights'))
    shown = []
    for row in range(len(tokens)):
        for segment in np.unique(segments[row][segments[row] > 0]):
            where = np.flatnonzero(segments[row] == segment)
            shown.append(''.join(
                f'<span class="learnt">{html.escape(part)}</span>' if learnt else
                html.escape(part) for part, learnt in _runs(tokenizer, tokens[row][where],
                                                            weights[row][where])))
            if len(shown) == 3:
                break
        if len(shown) == 3:
            break
    lengths = np.concatenate([np.bincount(s[s > 0])[1:] for s in np.asarray(
        arrays['segments'][:4096])])
    return ('<h3>Conversations</h3>' + table +
            '<h3>Training conversations (the first three; learnt tokens marked)</h3>' +
            ''.join(f'<pre class="doc">{c}</pre>' for c in shown) +
            figures.add('token_lengths', 'Tokens per training conversation (after truncation to '
                        f'data.text.seq_len + 1 = {plan.dataset.seq_len + 1}).', viz.histogram,
                        lengths[lengths > 0], title='conversation lengths', xlabel='tokens'))


def _preference_data(plan, figures: _Figures) -> str:
    """What became of the records, the first pairs with their answers marked, and answer
    lengths."""
    from bigjax.data import pairs
    stats, tokenizer = plan.dataset.chat.stats, plan.dataset.tokenizer
    keys = [k for k in pairs.Counts.__dataclass_fields__ if k != 'first_bad']
    table = _table(['split'] + keys, [[split] + [stats[split][k] for k in keys]
                                      for split in ('train', 'eval')])
    arrays = plan.dataset.train.arrays
    tokens, weights = np.asarray(arrays['tokens'][:3]), np.asarray(arrays['weights'][:3])
    shown = []
    for pair_tokens, pair_weights in zip(tokens, weights):
        cells = []
        for label, ids, answer in zip(('chosen', 'rejected'), pair_tokens, pair_weights):
            end = np.flatnonzero(answer)[-1] + 1  # the answer ends the conversation
            cells.append(f'<b>{label}</b>\n' + ''.join(
                f'<span class="learnt">{html.escape(part)}</span>' if learnt else
                html.escape(part) for part, learnt in _runs(tokenizer, ids[:end], answer[:end])))
        shown.append(f'<pre class="doc">{cells[0]}</pre><pre class="doc">{cells[1]}</pre>')
    lengths = np.asarray(arrays['weights'][:4096]).sum(-1)
    return ('<h3>Preference pairs</h3>' + table +
            '<h3>Training pairs (the first three; the answers compared marked)</h3>' +
            ''.join(shown) +
            figures.add('answer_lengths', 'Tokens per answer, chosen and rejected, in the '
                        'training pairs.', viz.histogram, lengths.reshape(-1),
                        title='answer lengths', xlabel='tokens'))


def _runs(tokenizer, ids, weights):
    """(decoded text, learnt) of each run of tokens with the same weight, special tokens shown
    by their ids' texts where the tokenizer skips them when decoding."""
    cuts = np.flatnonzero(np.diff(weights)) + 1
    for run_ids, run_weights in zip(np.split(ids, cuts), np.split(weights, cuts)):
        yield _visible(tokenizer, run_ids), bool(run_weights[0])


def _visible(tokenizer, ids) -> str:
    """The text of `ids` with the special tokens a decode leaves out shown as ⟨token⟩."""
    parts, start = [], 0
    for i, token in enumerate(ids):
        if tokenizer.decode([token]) == '' and tokenizer.decode(ids[i:i + 4]) == \
                tokenizer.decode(ids[i + 1:i + 4]):
            parts.append(tokenizer.decode(ids[start:i]) + f'⟨{_token_name(tokenizer, token)}⟩')
            start = i + 1
    return ''.join(parts) + tokenizer.decode(ids[start:])


def _token_name(tokenizer, token) -> str:
    names = {tokenizer.eos_id: 'eos', tokenizer.pad_id: 'pad'}
    if tokenizer.json is not None:
        from bigjax.data import tokenizers
        return tokenizers.hf_tokenizer(tokenizer.json).id_to_token(int(token)) or str(token)
    return names.get(int(token), str(int(token)))


def _image_data(plan, figures: _Figures) -> str:
    arrays = plan.dataset.train.arrays
    count = min(GRID_EXAMPLES, len(arrays['label']))
    images, names = arrays['image'][:count], plan.dataset.class_names
    out = [figures.add('examples', 'The first training examples with their labels.',
                       viz.image_grid, images, [names[l] for l in arrays['label'][:count]])]
    augment_config = plan.config.data.augment
    if not augment.is_enabled(augment_config):
        return out[0] + '<p>No augmentation configured (data.augment).</p>'
    shown = images[:8]
    rows = {'original': shown}
    rng = jax.random.PRNGKey(plan.config.seed)
    variants = {**_single_augmentations(augment_config), 'all (as trained)': augment_config}
    for name, variant in variants.items():
        warp = jax.jit(functools.partial(augment.augment, augment_config=variant))
        rows[name] = np.asarray(warp(shown, rng))
    out.append(figures.add('augmentations', 'The same training images through each configured '
                                            'augmentation alone, then all of them together.',
                           viz.augmentation_rows, rows))
    return ''.join(out)


def _single_augmentations(augment_config) -> dict:
    """One config per enabled transform, with every other transform off."""
    off = dict(crop_padding=0, rotation_degrees=0.0, scale_min=1.0, scale_max=1.0,
               horizontal_flip=False)
    c = augment_config
    wanted = {
        f'crop (shift <= {c.crop_padding}px)': dict(crop_padding=c.crop_padding),
        f'rotation (+-{c.rotation_degrees} deg)': dict(rotation_degrees=c.rotation_degrees),
        f'scale ({c.scale_min}-{c.scale_max})': dict(scale_min=c.scale_min,
                                                     scale_max=c.scale_max),
        'horizontal flip': dict(horizontal_flip=c.horizontal_flip),
    }
    singles = {}
    for name, values in wanted.items():
        single = augment_config.copy_and_resolve_references()
        single.update({**off, **values})
        if augment.is_enabled(single):
            singles[name] = single
    return singles


def _model(plan, forward, state, figures: _Figures) -> str:
    params = state.params
    specs = jax.tree.map(lambda s: s.spec, plan.state_shardings.params)
    rows, total = [], 0
    for (path, leaf), spec in zip(jax.tree_util.tree_leaves_with_path(params),
                                  jax.tree.leaves(specs, is_leaf=lambda x: isinstance(
                                      x, jax.sharding.PartitionSpec))):
        count = int(np.prod(leaf.shape))
        total += count
        rows.append([pytree.path_name(path), str(tuple(leaf.shape)), f'{count:,}',
                     str(leaf.dtype), str(tuple(spec))])
    rows.append(['total', '', f'{total:,}', '', ''])
    out = ['<h3>Modules in data-flow order</h3>',
           figures.add('model', 'Each module (two levels deep) where data reaches it, with its '
                                'output on one eval batch and its parameters (children '
                                'included).', _draw_model, plan, suffix='svg'),
           '<h3>Parameters</h3>', _table(['parameter', 'shape', 'count', 'dtype', 'sharding'],
                                         rows, numeric_from=2),
           '<details><summary>The module tree as Mermaid source</summary><p>Paste into any '
           'Mermaid renderer (GitHub Markdown, mermaid.live) to draw it.</p>',
           f'<pre class="mermaid">{html.escape(mermaid_tree(params, type(plan.model).__name__))}'
           '</pre></details>']
    if isinstance(plan.model, models.TRANSFORMERS):
        out.append(_attention(plan, forward, state, figures))
    return ''.join(out)


def _draw_model(plan, path) -> None:
    """Writes the model's modules in data-flow order as SVG (bigjax/model_diagram.py), traced
    abstractly (no device work) on inputs shaped like one global eval batch."""
    example = tasks.sample_input(plan.dataset)
    inputs = jax.ShapeDtypeStruct((plan_lib.eval_batch_size(plan.config), *example.shape[1:]),
                                  example.dtype)
    variables = {'params': plan.abstract_state.params, **plan.abstract_state.model_state}
    model_diagram.draw(model_diagram.layers(plan.model, variables, inputs, train=False,
                                            frozen=plan.frozen), path)


def _key(entry) -> str:
    return str(getattr(entry, 'key', getattr(entry, 'idx', entry)))


def mermaid_tree(params, root: str) -> str:
    """A Mermaid flowchart of the module tree of `params` (nested dicts): one node per module,
    labelled with its name and parameter count, edges from parent to child."""
    lines = ['flowchart TD']
    counter = iter(range(1_000_000))

    def count(tree) -> int:
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))

    def node(name: str, tree) -> str:
        node_id = f'n{next(counter)}'
        label = f'{name}<br/>{count(tree):,} params'.replace('"', '#quot;')
        lines.append(f'    {node_id}["{label}"]')
        for child, subtree in tree.items():
            if isinstance(subtree, dict):
                lines.append(f'    {node_id} --> {node(child, subtree)}')
        return node_id

    node(root, dict(params))
    return '\n'.join(lines)


def _attention(plan, forward, state, figures: _Figures) -> str:
    """Attention weights of every layer's heads for the first eval inputs."""
    arrays = _first_eval_rows(plan, 1)
    batch = next(iter(_eval_batches(plan, arrays)))
    _, weights = forward(state, batch, attention=True)
    if not weights:
        return ''
    layer_names = list(weights)
    stacked_LBHTS = np.stack([np.asarray(w) for w in weights.values()])
    limit = 64  # the first tokens only, so single positions stay visible
    out = ['<h3>Attention maps</h3>']
    for i in range(min(ATTENTION_INPUTS, stacked_LBHTS.shape[1])):
        maps = stacked_LBHTS[:, i, :8, :limit, :limit]
        out.append(figures.add(f'attention_{i}', f'Eval input {i}: weights of each head '
                                                  f'(rows: layers; first {limit} positions).',
                               viz.attention_maps, maps, title=f'eval input {i}',
                               layer_names=layer_names))
    return ''.join(out)


def _samples(plan, state) -> str:
    dataset = plan.dataset
    if dataset.kind not in data_lib.LM_KINDS or dataset.tokenizer is None:
        return '<p>Not a language model.</p>'
    new_tokens = plan.config.report.sample_tokens
    prompt_length = min(32, plan.model.cfg.max_len // 2)
    if new_tokens < 1:
        return '<p>report.sample_tokens is 0.</p>'
    tokens = dataset.eval.arrays['tokens']
    picks = np.linspace(0, len(tokens) - 1, num=min(3, len(tokens))).astype(int)
    prompts = np.asarray(tokens[picks, ..., :prompt_length], np.int32)
    if dataset.kind == 'text_preference':
        prompts = prompts[:, 0]  # the chosen answers' conversations
    out = sample.generate_any_length(plan.model, state.params, prompts,
                                     jax.random.PRNGKey(plan.config.seed),
                                     num_tokens=new_tokens, temperature=0.8, top_k=0)
    decode = dataset.tokenizer.decode
    rows = [[decode(p), decode(o[prompt_length:])] for p, o in zip(prompts, out)]
    return (f'<p>{new_tokens} tokens sampled at temperature 0.8 after prompts from the eval '
            'split.</p>' + ''.join(
                f'<pre class="doc"><span class="prompt">{html.escape(p)}</span>'
                f'{html.escape(c)}</pre>' for p, c in rows))


STYLE = '''
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; max-width: 560px; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
pre.doc { white-space: pre-wrap; }
span.prompt { color: #888; }
span.learnt { background: #dfd; }
'''

# Records on <body> how many images decoded and any script error, for headless checks.
SELF_CHECK = '''
window.addEventListener('error', e => {
  document.body.dataset.errors = (document.body.dataset.errors || '') + e.message + ';';
});
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const ok = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.images = ok + '/' + images.length;
});
'''


def _page(plan, sections: dict) -> str:
    title = f'bigjax run: {plan.config.model.name} on {plan.dataset.name}'
    nav = ' '.join(f'<a href="#{s.lower()}">{s}</a>' for s in SECTIONS)
    body = ''.join(f'<section id="{name.lower()}"><h2>{name}</h2>{sections[name]}</section>'
                   for name in SECTIONS)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>{html.escape(title)}</title><style>{STYLE}</style>'
            f'<script>{SELF_CHECK}</script></head>'
            f'<body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{body}</body></html>\n')


def main(argv: list[str]) -> None:
    """python -m bigjax.report WORKDIR: (re)writes WORKDIR/report.html from its config.json."""
    if len(argv) != 2:
        print('usage: python -m bigjax.report WORKDIR', file=sys.stderr)
        sys.exit(2)
    writers.show_log()
    try:
        print(from_workdir(None, argv[1]))
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main(sys.argv)
