"""notebooks/colab.ipynb, executed top to bottom on CPU (nbclient, a python3 ipykernel) at smoke
sizes, as a user runs it: install skipped, runs kept in a temporary folder. The kernel inherits
this process's environment (conftest: CPU only, 8 host devices, a private tfds data_dir), as the
launch.py subprocesses of tests/test_launch.py do, and the notebook's own `python launch.py`
children inherit it from the kernel."""

import importlib.util
import json

import nbformat
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOK = REPO / 'notebooks' / 'colab.ipynb'
CELL_TIMEOUT_S = 300


def tagged(nb, tag):
    cells = [cell for cell in nb.cells if tag in cell.metadata.get('tags', [])]
    assert len(cells) == 1, f'{len(cells)} cells tagged {tag!r}'
    return cells[0]


def text_of(cell) -> str:
    """What a code cell printed (stdout and stderr streams)."""
    return ''.join(output.get('text', '') for output in cell.outputs
                   if output.output_type == 'stream')


def html_of(cell) -> list[str]:
    return [output.data['text/html'] for output in cell.outputs
            if output.output_type in ('display_data', 'execute_result')
            and 'text/html' in output.data]


def test_notebook_is_stored_valid_and_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == 'python3'
    for cell in nb.cells:
        if cell.cell_type == 'code':
            assert not cell.outputs and cell.execution_count is None, cell.source[:80]
    parameters = tagged(nb, 'parameters').source
    for name in ('REPO_URL', 'INSTALL', 'SMOKE', 'WORKDIR_ROOT', 'MOUNT_DRIVE'):
        assert f'\n{name} = ' in '\n' + parameters, name


def read_metrics(workdir, split):
    lines = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    return [line for line in lines if line['split'] == split]


def test_notebook_runs_top_to_bottom_on_cpu_at_smoke_sizes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    root = tmp_path / 'runs'
    parameters = {'INSTALL': False, 'SMOKE': True, 'WORKDIR_ROOT': str(root),
                  'MOUNT_DRIVE': False,
                  # Where tensorboard is installed, its cell would start a server that outlives
                  # the kernel; where it is not, the cell's install hint is what runs.
                  'TENSORBOARD': importlib.util.find_spec('tensorboard') is None}
    index = nb.cells.index(tagged(nb, 'parameters'))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
        '\n'.join(f'{name} = {value!r}' for name, value in parameters.items()),
        metadata={'tags': ['injected-parameters']}))
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name='python3',
                   resources={'metadata': {'path': str(REPO)}}).execute()

    assert 'runtime: cpu' in text_of(tagged(nb, 'runtime'))
    assert f'bigjax checkout: {REPO}' in text_of(tagged(nb, 'repository'))
    assert 'INSTALL=False' in text_of(tagged(nb, 'install'))
    assert 'CpuDevice' in text_of(tagged(nb, 'devices'))
    assert 'No TPU attached' in text_of(tagged(nb, 'compile'))
    if parameters['TENSORBOARD']:
        assert 'pip install tensorboard' in text_of(tagged(nb, 'tensorboard'))

    digits = root / 'digits_smoke'
    page = (digits / 'report.html').read_text()
    for section in ('Summary', 'Metrics', 'Training', 'Evaluation', 'Model', 'Config'):
        assert f'<h2>{section}</h2>' in page, section
    assert 'Final eval at step 20' in text_of(tagged(nb, 'train-digits'))
    resumed = text_of(tagged(nb, 'resume-digits'))
    assert 'already finished at step 20' in resumed and 'Final eval' not in resumed
    shown = html_of(tagged(nb, 'report'))
    assert shown and '<iframe srcdoc=' in shown[0] and 'Summary' in shown[0]
    report = tagged(nb, 'report')  # the model drawn from report/model.svg
    assert any('image/svg+xml' in output.get('data', {}) for output in report.outputs)

    lm = root / 'transformer_cpu_smoke'
    train = read_metrics(lm, 'train')
    assert train[-1]['step'] == 8 and train[-1]['loss'] < train[0]['loss']
    assert 'train loss' in text_of(tagged(nb, 'train-lm'))
    assert html_of(tagged(nb, 'report-lm'))
    sample = text_of(tagged(nb, 'sample')).split('--- sample ---\n', 1)[1]
    assert sample.startswith('def ') and len(sample.strip()) > len('def ')

    finetuned = root / 'exceptions_finetune_smoke'
    config = json.loads((finetuned / 'config.json').read_text())
    assert config['init_from']['path'] == str(lm)
    assert 'Initialised from' in text_of(tagged(nb, 'finetune'))
    final = read_metrics(finetuned, 'eval')[-1]
    assert final['step'] == 6 and 0 <= final['accuracy'] <= 1
    assert 'fine-tuned, final eval:' in text_of(tagged(nb, 'finetune'))
    assert html_of(tagged(nb, 'finetune-result'))

