"""A study's results: one row per ended trial, results.csv, results.md (best trial in bold) and
plots (the metric against each hyperparameter, every trial's learning curves, fANOVA importance).
"""

import csv
import json

from etils import epath

from bigjax import workdir as workdir_lib


def collect(study, workdir: epath.Path) -> list[dict]:
    """One row per trial folder that has ended: id, status, overrides, metrics, seconds, error."""
    rows = []
    trials_dir = workdir / 'trials'
    for folder in sorted(trials_dir.iterdir()) if trials_dir.exists() else []:
        if not (folder / 'result.json').exists():
            continue
        result = json.loads((folder / 'result.json').read_text())
        overrides = json.loads((folder / 'trial.json').read_text())['overrides']
        rows.append({'trial': folder.name, 'status': result['status'], 'overrides': overrides,
                     'metrics': result['metrics'], 'seconds': result['seconds'],
                     'error': result['error']})
    return rows


def from_optuna(trials) -> list[dict]:
    """The same rows from a shared study's optuna trials (bigjax.study_shared.run_shared): one per trial
    index that ended with a result, in index order."""
    rows = {}
    for t in sorted(trials, key=lambda t: t.number):
        if 'result' in t.user_attrs:
            index = t.user_attrs['index']
            rows.setdefault(index, {'trial': f'{index:04d}', **t.user_attrs['result'],
                                    'overrides': t.user_attrs['overrides']})
    return [rows[index] for index in sorted(rows)]


def best(study, rows: list[dict]) -> dict | None:
    done = [r for r in rows if r['status'] == 'done']
    if not done:
        return None
    sign = 1 if study.goal == 'max' else -1
    return max(done, key=lambda r: sign * r['metrics'][study.metric])


def write(study, workdir: epath.Path, rows: list[dict]) -> None:
    """results.csv, results.md and the plots."""
    keys = _keys(rows)
    metrics = list(dict.fromkeys([study.metric, *(m for r in rows for m in r['metrics'])]))
    header = ['trial', 'status', *keys, *metrics, 'seconds', 'error']
    lines = [header] + [[r['trial'], r['status'], *(r['overrides'].get(k, '') for k in keys),
                         *(r['metrics'].get(m, '') for m in metrics), r['seconds'], r['error']]
                        for r in rows]
    with open(workdir / 'results.csv', 'w', newline='') as f:
        csv.writer(f).writerows(lines)
    workdir_lib.write_atomically(workdir / 'results.md', markdown(study, rows))
    plots(study, rows, workdir)


def plots(study, rows: list[dict], workdir: epath.Path) -> list[epath.Path]:
    """<workdir>/plots/: the metric against each hyperparameter, every trial's learning curves
    (train loss; eval metric), and parameter importance where it can be estimated."""
    from bigjax import viz, writers
    out = workdir / 'plots'
    out.mkdir(exist_ok=True)
    done = [r for r in rows if r['status'] == 'done']
    written = []
    for key in _keys(done):
        values = [r['overrides'][key] for r in done if key in r['overrides']]
        if len({json.dumps(v) for v in values}) > 1:
            written.append(viz.metric_vs_parameter(
                values, [r['metrics'][study.metric] for r in done if key in r['overrides']],
                out / f'{study.metric}_vs_{key}.png', parameter=key, metric=study.metric))
    for split, metric in (('train', 'loss'), ('eval', study.metric)):
        curves = {}
        for r in rows:
            series = [(m['step'], m[metric]) for m in writers.read_metrics(
                workdir / 'trials' / r['trial'] / 'run') if m['split'] == split and metric in m]
            if series:
                short = ' '.join(f'{k.split(".")[-1]}={_format(v)}'
                                 for k, v in r['overrides'].items())
                curves[f'{r["trial"]} {short}'[:70]] = tuple(zip(*series))
        if curves:
            written.append(viz.overlaid_curves(curves, out / f'curves_{split}_{metric}.png',
                                               title=f'{split} {metric}, every trial',
                                               ylabel=metric))
    ranked = {','.join(k.split('.')[-1] for k in name.split(',')): v
              for name, v in importances(study, rows).items()}
    if ranked:
        written.append(viz.importance_bars(ranked, out / 'importance.png', metric=study.metric))
    return written


def markdown(study, rows: list[dict]) -> str:
    """A Markdown table, one row per trial (overrides, the study's metric, time, status), the
    best in bold."""
    keys = _keys(rows)
    winner = best(study, rows)
    out = ['| trial | ' + ' | '.join(k.split('.')[-1] for k in keys)
           + f' | {study.metric} | time | status |', '|---' * (len(keys) + 4) + '|']
    for r in rows:
        cells = [r['trial'], *(_format(r['overrides'].get(k, '')) for k in keys),
                 _format(r['metrics'].get(study.metric, '')), f'{r["seconds"]:.0f} s',
                 r['status'] if r['status'] == 'done' else f'failed: {r["error"][:60]}']
        if r is winner:
            cells = [f'**{c}**' for c in cells]
        out.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(out) + '\n'


def _keys(rows: list[dict]) -> list[str]:
    """Every overridden key of the rows, in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r['overrides']))


def _format(value) -> str:
    if isinstance(value, float):
        return f'{value:.4g}'
    if isinstance(value, (list, tuple)):
        return '(' + ', '.join(_format(v) for v in value) + ')'
    return str(value)


def importances(study, rows: list[dict]) -> dict[str, float]:
    """optuna's fANOVA importance of each searched key (a zip of keys counts as one) for the
    metric, from the finished trials of any search; {} with fewer than 4 finished trials, nothing
    that varies, or one metric value for all (nothing to attribute)."""
    import optuna
    done = [r for r in rows if r['status'] == 'done']
    factors = {(','.join(k) if isinstance(k, tuple) else k): (k if isinstance(k, tuple) else (k,))
               for k in study.space}
    value = lambda r, keys: (r['overrides'].get(keys[0]) if len(keys) == 1
                             else json.dumps([r['overrides'].get(k) for k in keys]))
    varying = {name: keys for name, keys in factors.items()
               if len({json.dumps(value(r, keys)) for r in done}) > 1}
    if len(done) < 4 or not varying or len({r['metrics'][study.metric] for r in done}) < 2:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    memory = optuna.create_study(direction='maximize' if study.goal == 'max' else 'minimize')
    distributions = {}
    for name, keys in varying.items():
        values = [value(r, keys) for r in done]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            log = min(values) > 0 and max(values) / min(values) >= 10
            distributions[name] = optuna.distributions.FloatDistribution(
                float(min(values)), float(max(values)), log=log)
        else:
            distributions[name] = optuna.distributions.CategoricalDistribution(
                sorted({json.dumps(v) for v in values}))
    for r in done:
        params = {name: (json.dumps(value(r, keys)) if isinstance(
            distributions[name], optuna.distributions.CategoricalDistribution)
            else float(value(r, keys))) for name, keys in varying.items()}
        memory.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, value=r['metrics'][study.metric]))
    ranked = optuna.importance.get_param_importances(
        memory, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    return {name: float(v) for name, v in ranked.items()}
