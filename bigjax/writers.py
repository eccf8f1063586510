"""Where a run's numbers go: metrics.jsonl, TensorBoard events, Weights & Biases, the console.

Only process 0 writes; on other processes every method does nothing.
"""

import contextlib
import io
import json
import logging
import os
import sys
import time

import tqdm
from etils import epath

from bigjax import workdir as workdir_lib
from bigjax.errors import UserError

METRICS_FILE = 'metrics.jsonl'
EVAL_DIR = 'eval'  # <workdir>/eval/step_<N>.json: confusion matrix, per-class metrics, ROC
OBJECT_STORE_FLUSH_SECONDS = 60.0  # gs://…: metrics.jsonl is rewritten whole, so not every line
WRITERS = ('tensorboard', 'wandb')  # config.writers: where scalars go beside metrics.jsonl
WANDB_MODES = ('online', 'offline', 'disabled')
WANDB_ID_FILE = 'wandb_id'  # <workdir>/wandb_id: the W&B run id, resumed by every restart

log = logging.getLogger('bigjax')


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message comes (pytest and notebooks swap it)."""

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def show_log() -> None:
    """Sends bigjax's INFO messages to stderr unless the caller set up handlers for them."""
    if not log.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def read_metrics(workdir) -> list[dict]:
    """The complete lines of <workdir>/metrics.jsonl (a line cut short by a kill is skipped)."""
    path = epath.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def details_path(workdir, step: int) -> epath.Path:
    return epath.Path(workdir) / EVAL_DIR / f'step_{step}.json'


def read_latest_details(workdir) -> tuple[int, dict] | None:
    """(step, details) of the latest eval that wrote details (classifiers: confusion matrix and
    ROC; chat data: the answers to held-out prompts), if any."""
    folder = epath.Path(workdir) / EVAL_DIR
    found = sorted((int(p.stem.split('_')[1]), p) for p in folder.glob('step_*.json')
                   if p.stem.split('_')[1].isdigit()) if folder.exists() else []
    return (found[-1][0], json.loads(found[-1][1].read_text())) if found else None


def format_values(values: dict) -> str:
    return ' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                    for k, v in values.items())


def check(config) -> None:
    """Raises UserError for config.writers/config.wandb values that cannot work, and for 'wandb'
    without its package (before anything is compiled or written)."""
    unknown = [name for name in config.writers if name not in WRITERS]
    if unknown or len(set(config.writers)) != len(config.writers):
        raise UserError(f'config.writers={tuple(config.writers)!r} must name each of {WRITERS} '
                        'at most once (metrics.jsonl is always written)')
    if config.wandb.mode not in WANDB_MODES:
        raise UserError(f'wandb.mode={config.wandb.mode!r} must be one of {WANDB_MODES}')
    if not all(isinstance(tag, str) and tag for tag in config.wandb.tags):
        raise UserError(f'wandb.tags={tuple(config.wandb.tags)!r} must be non-empty strings')
    if 'wandb' in config.writers:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("config.writers includes 'wandb' but the wandb package is not "
                            'installed: pip install wandb (or drop it from config.writers)'
                            ) from None


class MetricWriter:
    """Appends `{"step", "split", ..., "time"}` lines to metrics.jsonl (time: Unix seconds) and
    scalars to TensorBoard and/or a W&B run (config.writers); eval details go to
    eval/step_<N>.json."""

    def __init__(self, workdir, *, enabled: bool, start_step: int, config=None):
        """On resume (start_step > 0) what was written after the restored step is dropped.
        `config` (the run's) names the writers and holds the W&B settings; None = TensorBoard."""
        self.enabled = enabled
        self.workdir = epath.Path(workdir)
        self.path = self.workdir / METRICS_FILE
        self.tensorboard = self.wandb = None
        if not enabled:
            return
        kept = [row for row in read_metrics(workdir) if row.get('step', 0) <= start_step]
        self.object_store = workdir_lib.is_object_store(self.workdir)
        self.rows, self.flushed_at = kept, time.monotonic()
        self._rewrite()
        if (self.workdir / EVAL_DIR).exists():
            for path in (self.workdir / EVAL_DIR).glob('step_*.json'):
                if int(path.stem.split('_')[1]) > start_step:
                    path.unlink()
        names = ('tensorboard',) if config is None else config.writers
        if 'tensorboard' in names:
            tensorboardx = _tensorboardx()
            if self.object_store:
                _register_object_store_events(self.workdir)
            # TensorBoard hides events at steps >= purge_step that earlier runs left behind.
            self.tensorboard = tensorboardx.SummaryWriter(
                str(epath.Path(workdir) / 'tensorboard'), purge_step=start_step + 1)
        if 'wandb' in names:
            self.wandb = WandbRun(self.workdir, config)

    def write(self, step: int, split: str, values: dict) -> None:
        """Appends a line (on an object store: rewrites the file, at most every
        OBJECT_STORE_FLUSH_SECONDS and at each flush())."""
        if not self.enabled:
            return
        row = {'step': int(step), 'split': split, **values, 'time': round(time.time(), 3)}
        try:
            if self.object_store:
                self.rows.append(row)
            else:
                with self.path.open('a') as f:
                    f.write(json.dumps(row) + '\n')
            if self.tensorboard is not None:
                for name, value in values.items():
                    self.tensorboard.add_scalar(f'{split}/{name}', value, int(step))
        except OSError as e:
            raise workdir_lib.write_failed(self.workdir, e) from None
        if self.wandb is not None:
            self.wandb.log(step, {f'{split}/{name}': value for name, value in values.items()})
        if not self.object_store or time.monotonic() - self.flushed_at > OBJECT_STORE_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Makes everything written so far readable in the workdir (called at checkpoints, so a
        resumed run finds the lines up to its step)."""
        if not self.enabled:
            return
        try:
            if self.object_store and len(self.rows) != self.rewritten_rows:
                self._rewrite()
            if self.tensorboard is not None:
                self.tensorboard.flush()
        except OSError as e:
            raise workdir_lib.write_failed(self.workdir, e) from None
        self.flushed_at = time.monotonic()

    def _rewrite(self) -> None:
        workdir_lib.write_atomically(self.path, ''.join(json.dumps(row) + '\n' for row in self.rows))
        self.rewritten_rows = len(self.rows)

    def write_details(self, step: int, details: dict) -> None:
        if self.enabled:
            path = details_path(self.workdir, step)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                workdir_lib.write_atomically(path, json.dumps(details))
            except OSError as e:
                raise workdir_lib.write_failed(self.workdir, e) from None

    def close(self) -> None:
        if not self.enabled:
            return
        self.flush()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()

    def add_figures(self, folder) -> None:
        """W&B: the report's PNG figures (report.build's folder), after close()."""
        if self.enabled and self.wandb is not None:
            self.wandb.add_figures(epath.Path(folder))


class WandbRun:
    """The run's W&B run: the id kept in <workdir>/wandb_id, so every restart of the workdir
    resumes the same run (resume='allow'); the config; scalars at the run's steps.

    W&B takes steps in increasing order only: after a resume from step s it keeps the points the
    stopped run logged beyond s and ignores, with a warning, the resumed run's at those steps
    (the same numbers but for throughput: a resume is bitwise exact). Offline, each (re)start
    is a folder of its own with the same id, which `wandb sync` uploads in order. Files go to
    $WANDB_DIR if set, else the workdir (a local one), else wandb's default (./wandb)."""

    def __init__(self, workdir: epath.Path, config):
        self.workdir, self.config = workdir, config
        self.run = self._start(json.loads(config.to_json_best_effort()))

    def _start(self, config_json: dict | None):
        import wandb
        c = self.config.wandb
        id_file = self.workdir / WANDB_ID_FILE
        local = not workdir_lib.is_object_store(self.workdir)
        try:
            run = wandb.init(
                project=c.project, entity=c.entity or None, group=c.group or None,
                tags=list(c.tags) or None, name=c.name or self.workdir.name,
                id=id_file.read_text().strip() if id_file.exists() else None, resume='allow',
                mode=os.environ.get('WANDB_MODE') or c.mode, config=config_json,
                dir=os.environ.get('WANDB_DIR') or (os.fspath(self.workdir) if local else None),
                reinit='create_new')  # never a run of the caller's that is still open
        except wandb.errors.Error as e:
            raise UserError(f'W&B could not start the run ({str(e).splitlines()[0][:160]}): run '
                            "`wandb login`, or set wandb.mode='offline' (sync later with `wandb "
                            "sync`) or drop 'wandb' from config.writers") from None
        if not id_file.exists():
            workdir_lib.write_atomically(id_file, run.id + '\n')
        return run

    def log(self, step: int, scalars: dict) -> None:
        self.run.log(scalars, step=int(step))

    def finish(self) -> None:
        self.run.finish()

    def add_figures(self, folder: epath.Path) -> None:
        """The PNGs in `folder` as images in the run's summary (report/<name>), the run reopened
        for them."""
        import wandb
        from PIL import Image
        run = self._start(None)
        run.summary.update({f'report/{path.stem}': wandb.Image(Image.open(io.BytesIO(
            path.read_bytes()))) for path in sorted(folder.glob('*.png'))})
        run.finish()


class _ObjectEvents:
    """A TensorBoard event file on an object store (no append): its bytes are kept and the whole
    object is rewritten at each flush."""

    def __init__(self, path: str):
        self.path, self.buffer = epath.Path(path), io.BytesIO()
        self.written = -1  # bytes of the buffer the object holds (-1: not written yet)

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        if self.buffer.tell() != self.written:  # tensorboardX flushes several times at close
            self.path.write_bytes(self.buffer.getvalue())
            self.written = self.buffer.tell()

    def close(self) -> None:
        self.flush()


class _ObjectEventsFactory:
    """tensorboardX's writer factory for an object store's scheme: files through etils.epath."""

    def open(self, path: str) -> _ObjectEvents:
        return _ObjectEvents(path)

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


def _tensorboardx():
    """tensorboardX, imported without torch where torch is not imported yet: tensorboardX imports
    it, when installed, only to accept torch tensors (1.6 s of every run here; bigjax writes
    floats). `import torch` works as before afterwards."""
    if 'torch' in sys.modules or 'tensorboardX' in sys.modules:
        import tensorboardX
        return tensorboardX
    sys.modules['torch'] = None  # meanwhile `import torch` raises ImportError
    try:
        import tensorboardX
    finally:
        del sys.modules['torch']
    return tensorboardX


def _register_object_store_events(workdir: epath.Path) -> None:
    from tensorboardX import record_writer
    record_writer.register_writer_factory(os.fspath(workdir).split(':')[0], _ObjectEventsFactory())


class Throughput:
    """Training speed over a log window, leaving out compilation, eval and checkpoint time."""

    def __init__(self, step: int):
        self.restart(step)
        self.first_step_seconds = None

    def restart(self, step: int) -> None:
        self.start, self.first_step, self.paused_seconds = time.monotonic(), step, 0.0

    def first_step_done(self, step: int) -> float:
        """Call once the first step (compilation included) has finished; returns its seconds."""
        self.first_step_seconds = time.monotonic() - self.start
        self.restart(step)
        return self.first_step_seconds

    @contextlib.contextmanager
    def paused(self):
        began = time.monotonic()
        yield
        self.paused_seconds += time.monotonic() - began

    def rates(self, step: int, batch_size: int, tokens_per_example: int = 0,
              flops_per_example: float = 0.0, peak_flops: float = 0.0) -> dict:
        """steps/s and examples/s since the window began (tokens/s for token data, MFU where
        there is a FLOPs formula); a window holding only the first step is measured with its
        compilation, since there is nothing else to measure."""
        steps, seconds = step - self.first_step, time.monotonic() - self.start - self.paused_seconds
        if steps <= 0:
            steps, seconds = 1, self.first_step_seconds
        steps_per_sec = steps / max(seconds, 1e-9)
        rates = {'steps_per_sec': steps_per_sec, 'examples_per_sec': steps_per_sec * batch_size}
        if tokens_per_example:
            rates['tokens_per_sec'] = rates['examples_per_sec'] * tokens_per_example
        if flops_per_example and peak_flops:
            rates['mfu'] = rates['examples_per_sec'] * flops_per_example / peak_flops
        return rates


class Progress:
    """A progress bar (steps/s, ETA) on a terminal; plain log lines at log steps otherwise."""

    def __init__(self, start_step: int, total_steps: int, *, enabled: bool):
        self.enabled = enabled
        self.total_steps = total_steps
        self.bar = None
        self.shown = {}  # The latest train loss and eval accuracy, beside the bar.
        self.first_step, self.start_time = start_step, time.monotonic()
        if enabled and sys.stderr.isatty():
            self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit='step',
                                 dynamic_ncols=True)

    def update(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def report(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            key = 'loss' if split == 'train' else 'accuracy'
            if key in values:
                self.shown[f'{split}_{key}'] = values[key]
            self.bar.set_postfix_str(format_values(self.shown), refresh=True)
            return
        line = f'step {step}/{self.total_steps} {split}: {format_values(values)}'
        if split == 'train':
            rate = (step - self.first_step) / max(time.monotonic() - self.start_time, 1e-9)
            line += f' | ETA {_duration((self.total_steps - step) / rate)}'
        log.info(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if seconds == float('inf'):
        return '?'
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m{seconds:02d}s' if hours else f'{minutes}m{seconds:02d}s'
