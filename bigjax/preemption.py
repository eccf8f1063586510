"""SIGTERM and SIGINT (how spot TPU VMs, GPU schedulers and Colab end a process) stop training at
a step every process agrees on; the loop saves that step and returns, so rerunning resumes it.

One process: the signal sets a flag that the loop reads after each step. Several processes:
jax.distributed's preemption service catches SIGTERM on any host and agrees on the step with the
others (multihost_utils.reached_preemption_sync_point); SIGINT is passed on to it as SIGTERM.
Later signals while stopping are only logged, so a second SIGTERM cannot cut a save short.
Handlers are installed for the run only, and only when it runs on the main thread.
"""

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

from bigjax.writers import log

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
    """`with Preemption() as preemption:` ... `if preemption.reached(step): save and stop`."""

    def __init__(self):
        self.signal_name: str | None = None
        self._agreed = jax.process_count() > 1
        self._previous = {}

    def __enter__(self) -> 'Preemption':
        if threading.current_thread() is not threading.main_thread():
            return self  # Python handles signals on the main thread only.
        for number in SIGNALS:
            if not (self._agreed and number == signal.SIGTERM):  # The service's own handler.
                self._previous[number] = signal.signal(number, self._received)
        return self

    def __exit__(self, *exc_info):
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _received(self, number, frame):
        del frame
        name = signal.Signals(number).name
        if self.signal_name is not None:
            log.warning('%s received while stopping: the checkpoint is being saved; the run '
                        'exits when it is on disk', name)
            return
        self.signal_name = name
        log.warning('%s received: finishing this step, then saving a checkpoint', name)
        if self._agreed:
            os.kill(os.getpid(), signal.SIGTERM)  # Every process stops at one agreed step.

    def reached(self, step: int) -> bool:
        """Whether training should save `step` and stop (call it after every step, on every
        process)."""
        if not self._agreed:
            return self.signal_name is not None
        if multihost_utils.reached_preemption_sync_point(step):
            self.signal_name = self.signal_name or 'SIGTERM'
            return True
        return False
