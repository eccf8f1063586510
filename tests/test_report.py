"""The run report: every section and picture for each model kind, on demand, in real Chromium."""

import html
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import pytest

from bigjax import report, train
from bigjax import plan as plan_lib
from bigjax.errors import UserError
from conftest import REPO, load_config
from test_model_diagram import box_titles, svg_texts

# One smoke run per model kind, and the pictures its report must have.
KINDS = {
    'cnn_digits': ('examples', 'augmentations', 'confusion_matrix', 'roc', 'most_confused'),
    'vit_digits': ('examples', 'confusion_matrix', 'roc', 'attention_0', 'attention_1'),
    'transformer_cpu': ('token_lengths', 'token_coverage', 'mfu', 'attention_0'),
    'encoder_stdlib': ('token_lengths', 'token_coverage', 'confusion_matrix', 'attention_0'),
}
ALWAYS = ('loss', 'eval_metrics', 'learning_rate', 'throughput')
# The top-level modules in the order data reaches them.
DATA_FLOW = {
    'cnn_digits': ('conv1', 'bn1', 'conv2', 'bn2', 'fc1', 'Dropout_0', 'head'),
    'vit_digits': ('patch_embedding', 'encoder', 'head'),
    'transformer_cpu': ('token_embedding', 'encoder'),  # the head is the embedding, tied
    'encoder_stdlib': ('token_embedding', 'encoder', 'head'),
}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """workdir of a finished smoke run with its report, per config in KINDS."""
    workdirs = {}
    for name in KINDS:
        config = load_config(name, 'smoke', report=True)
        if name == 'cnn_digits':
            config.data.augment.update(crop_padding=2, rotation_degrees=15.0, scale_min=0.9,
                                       scale_max=1.1)
        workdirs[name] = tmp_path_factory.mktemp(name)
        train.run(config, workdirs[name])
    return workdirs


def mermaid_nodes(text: str) -> dict[str, list[str]]:
    """Checks `text` is a Mermaid flowchart of the form report.mermaid_tree writes (a header,
    node lines `id["label"]`, edge lines `id --> id` to nodes already defined, every node but
    the root with one parent); returns each node's label -> its children's labels."""
    lines = text.splitlines()
    assert lines[0] == 'flowchart TD'
    labels, children, parents = {}, {}, {}
    for line in lines[1:]:
        node = re.fullmatch(r'    (n\d+)\["([^"]+)"\]', line)
        edge = re.fullmatch(r'    (n\d+) --> (n\d+)', line)
        assert node or edge, f'not a node or an edge: {line!r}'
        if node:
            assert node[1] not in labels
            labels[node[1]] = node[2].split('<br/>')[0]
            children[node[1]] = []
        else:
            assert edge[1] in labels and edge[2] in labels and edge[2] not in parents, line
            parents[edge[2]] = edge[1]
            children[edge[1]].append(edge[2])
    assert len(parents) == len(labels) - 1
    return {labels[n]: [labels[c] for c in cs] for n, cs in children.items()}


def page_mermaid(page: str) -> str:
    return html.unescape(re.search(r'<pre class="mermaid">(.*?)</pre>', page, re.S)[1])


@pytest.mark.parametrize('name', list(KINDS))
def test_report_has_every_section_and_picture(runs, name):
    workdir = runs[name]
    page = (workdir / 'report.html').read_text()
    for section in report.SECTIONS:
        assert f'<section id="{section.lower()}">' in page
    for figure in ALWAYS + KINDS[name]:
        png = workdir / 'report' / f'{figure}.png'
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 2000, figure
        assert f'alt="{figure}"' in page, figure
    assert 'finished: step' in page
    config = json.loads((workdir / 'config.json').read_text())
    plan, state, _ = plan_lib.load_state(load_config(name, 'smoke'), workdir)
    params = state.params
    tree = mermaid_nodes(page_mermaid(page))
    root = next(iter(tree))
    modules = [name for name, value in params.items() if hasattr(value, 'items')]
    assert sorted(tree[root]) == sorted(modules), 'the diagram names every top-level module'
    check_model_drawing(workdir, plan, params, name)
    assert config['model']['name'] in page
    if name == 'transformer_cpu':
        assert page.count('<span class="prompt">') == 3  # sampled continuations


def check_model_drawing(workdir, plan, params, name: str) -> None:
    """report/model.svg (also in the page) draws the top-level modules in data-flow order, the
    model's output shape on an eval batch and its parameter count."""
    svg = workdir / 'report' / 'model.svg'
    texts = [text for text, _ in svg_texts(svg)]
    titles = box_titles(svg)
    left = min(x for _, x in titles)
    assert tuple(n for n, x in titles if x == left) == DATA_FLOW[name]
    total = sum(leaf.size for leaf in jax.tree.leaves(params))
    assert texts[0] == f'{type(plan.model).__name__}: {total:,} params'
    dataset, batch = plan.dataset, plan_lib.eval_batch_size(plan.config)
    logits = ((batch, dataset.seq_len, dataset.vocab_size) if dataset.kind == 'text_lm'
              else (batch, dataset.num_classes))
    assert texts[-1] == f'output ({", ".join(map(str, logits))}) float32'
    assert 'alt="model"' in (workdir / 'report.html').read_text()


def test_report_on_demand_from_the_workdir_alone_matches(runs, capsys):
    workdir = runs['vit_digits']
    before = (workdir / 'report.html').read_text()
    (workdir / 'report.html').unlink()
    report.main(['report', str(workdir)])
    assert capsys.readouterr().out.strip() == str(workdir / 'report.html')
    after = (workdir / 'report.html').read_text()
    assert page_mermaid(after) == page_mermaid(before)
    assert after.count('<img ') == before.count('<img ')


def test_launch_mode_report_on_a_running_workdir_says_in_progress(tmp_path):
    train.run(load_config('cnn_digits', 'smoke'), tmp_path, stop_at_step=10)
    result = subprocess.run(
        [sys.executable, 'launch.py', '--config=configs/cnn_digits.py:smoke',
         f'--workdir={tmp_path}', '--mode=report'],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / 'report.html')
    assert 'in progress: checkpoint at step 10 of 20' in (tmp_path / 'report.html').read_text()


@pytest.mark.parametrize('contents', ['empty', 'foreign', 'untrained'])
def test_report_on_a_workdir_without_a_run_is_a_one_line_error(tmp_path, capsys, contents):
    if contents == 'foreign':
        (tmp_path / 'notes.txt').write_text('not a run')
    if contents == 'untrained':
        (tmp_path / 'config.json').write_text(
            load_config('cnn_digits', 'smoke').to_json_best_effort())
    with pytest.raises(SystemExit) as exit_info:
        report.main(['report', str(tmp_path)])
    assert exit_info.value.code == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith('error: ') and '\n' not in message
    assert ('holds no checkpoint' if contents == 'untrained' else 'holds no bigjax run') in message
    with pytest.raises(UserError):
        report.from_workdir(None, tmp_path / 'missing')


def test_report_on_a_workdir_whose_config_json_is_cut_short_is_a_one_line_error(tmp_path, capsys):
    text = load_config('cnn_digits', 'smoke').to_json_best_effort()
    (tmp_path / 'config.json').write_text(text[:len(text) // 2])
    with pytest.raises(SystemExit):
        report.main(['report', str(tmp_path)])
    message = capsys.readouterr().err.strip()
    assert message.startswith(f'error: {tmp_path / "config.json"} is not valid JSON (')
    assert re.search(r' at line \d+, column \d+\): ', message), message
    assert message.endswith("pass the run's config file instead: python launch.py --config=CONFIG "
                            f'--workdir={tmp_path} --mode=report') and '\n' not in message


def chromium_dom(url: str, tmp_path) -> str:
    browser = shutil.which('chromium') or shutil.which('chromium-browser')
    if browser is None:
        pytest.skip('Chromium is not installed (Debian: apt-get install chromium)')
    result = subprocess.run(
        [browser, '--headless', '--no-sandbox', '--disable-gpu', '--allow-file-access-from-files',
         f'--user-data-dir={tmp_path / "chromium"}', '--virtual-time-budget=10000', '--dump-dom',
         url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize('name', ['cnn_digits', 'transformer_cpu'])
def test_report_renders_in_headless_chromium(runs, name, tmp_path):
    """The page loads without script errors and every image decodes (the page records both on
    its <body>)."""
    dom = chromium_dom((runs[name] / 'report.html').as_uri(), tmp_path)
    body = re.search(r'<body[^>]*>', dom)[0]
    assert 'data-errors' not in body, body
    loaded, total = map(int, re.search(r'data-images="(\d+)/(\d+)"', body).groups())
    assert total >= len(ALWAYS) + 2 and loaded == total


def test_mermaid_diagram_parses_with_mermaid_itself(runs, tmp_path):
    """With BIGJAX_MERMAID_JS naming mermaid.min.js (npm install mermaid), the real parser
    accepts the diagram as a flowchart."""
    script = os.environ.get('BIGJAX_MERMAID_JS')
    if not script:
        pytest.skip('set BIGJAX_MERMAID_JS to mermaid.min.js to check with the real parser')
    text = page_mermaid((runs['transformer_cpu'] / 'report.html').read_text())
    page = tmp_path / 'mermaid.html'
    page.write_text(
        f'<!DOCTYPE html><html><body><script src="file://{script}"></script><script>'
        f'mermaid.parse({json.dumps(text)}).then(r => {{ document.body.dataset.type = '
        f'r.diagramType; }}).catch(e => {{ document.body.dataset.error = String(e); }});'
        '</script></body></html>')
    body = re.search(r'<body[^>]*>', chromium_dom(page.as_uri(), tmp_path))[0]
    assert 'data-type="flowchart' in body, body
