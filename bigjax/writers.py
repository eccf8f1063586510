"""Where a run's numbers go: metrics.jsonl, TensorBoard events, and the console.

Only process 0 writes; on other processes every method does nothing.
"""

import json
import logging
import sys
import time

import tqdm
from etils import epath

METRICS_FILE = 'metrics.jsonl'

log = logging.getLogger('bigjax')


def show_log() -> None:
    """Sends bigjax's INFO messages to stderr unless the caller set up handlers for them."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
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


def format_values(values: dict) -> str:
    return ' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                    for k, v in values.items())


class MetricWriter:
    """Appends `{"step", "split", ...}` lines to metrics.jsonl and scalars to TensorBoard."""

    def __init__(self, workdir, *, enabled: bool, start_step: int):
        """On resume (start_step > 0) lines from after the restored step are dropped first."""
        self.enabled = enabled
        self.path = epath.Path(workdir) / METRICS_FILE
        self.tensorboard = None
        if not enabled:
            return
        kept = [row for row in read_metrics(workdir) if row.get('step', 0) <= start_step]
        tmp = self.path.parent / (METRICS_FILE + '.tmp')
        tmp.write_text(''.join(json.dumps(row) + '\n' for row in kept))
        tmp.replace(self.path)
        from tensorboardX import SummaryWriter
        self.tensorboard = SummaryWriter(str(epath.Path(workdir) / 'tensorboard'),
                                         purge_step=start_step or None)

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        row = {'step': int(step), 'split': split, **values}
        with self.path.open('a') as f:
            f.write(json.dumps(row) + '\n')
        for name, value in values.items():
            self.tensorboard.add_scalar(f'{split}/{name}', value, int(step))
        self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


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
