"""A run stopped from outside: the signals a run answers, where it stops, and how the process then ends.

- SIGINT (Ctrl-C) is Lightning's: a KeyboardInterrupt wherever the run is, Lightning's graceful shutdown inside fit.
- SIGTERM (`kill`, `timeout`, the end of a SLURM job, Kubernetes, a preemption) and submitit's preemption signal
  (SIGUSR2, or what SUBMITIT_PREEMPT_SIGNAL names) are caught here while a run lasts (`catching`, entered by
  deepinit.run.parts.job_scope). Inside training the run finishes the step it is in and stops before the next
  (`StopBetweenSteps`), so the checkpoint then written holds whole steps, logged and counted; anywhere else at
  once. Either way it stops as Ctrl-C stops it (`Stopped` is a KeyboardInterrupt): the interrupt checkpoint
  (deepinit.run.checkpoints), `interrupted` with the step and the signal, the line saying how to go on.

The process then ends with the conventional status, 128 + the signal's number (130 Ctrl-C, 143 SIGTERM), unless
another handler of that signal was there before the run (submitit's): it is run instead (`pass_on`), and
submitit's requeues the job, which resumes by itself.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM and submitit's preemption signal (its env var, as submitit reads it, else SIGUSR2)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    preempt = getattr(signal, f"SIG{name}", signal.SIGUSR2)
    return tuple(dict.fromkeys((signal.SIGTERM, preempt)))


class Stopped(KeyboardInterrupt):
    """A stop signal ended the run: handled as Ctrl-C is (Lightning's graceful shutdown, `interrupted`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    received: int | None = None  # the first stop signal of this run
    deferring = False  # inside training: stop between two steps, not where the signal lands


_state = _State()


def _handler(signum: int, frame: Any) -> None:
    if _state.received is None:
        log.warning(f"deepinit: {signal.Signals(signum).name} received; stopping"
                    + (" once this step is done" if _state.deferring else ""))  # fmt: skip
    _state.received = _state.received or signum
    if not _state.deferring:
        raise Stopped(signum)


def received() -> int | None:
    """The stop signal this run received (None: none; Ctrl-C is not recorded here)."""
    return _state.received


@contextmanager
def catching() -> Iterator[None]:
    """Answer the stop signals while the block runs (from the main thread only: Python's rule for handlers); the
    handlers that were there before are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    earlier = {s: signal.getsignal(s) for s in stop_signals()}
    _state.received, _state.deferring = None, False
    for s in earlier:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        _state.deferring = False
        for s, handler in earlier.items():
            signal.signal(s, handler)


class StopBetweenSteps(L.Callback):
    """While the Trainer trains, a stop signal waits until the step it came in is done, logged and counted: the run
    stops at the start of the next (Lightning's own SIGTERM handling stops there too, at the end of the last); before
    and after training it stops the run at once. First among the callbacks, so that nothing of the next step starts
    (a recorded step's hooks)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _state.deferring = True
        self._stop_if_asked()

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self._stop_if_asked()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _state.deferring = False
        self._stop_if_asked()

    def on_exception(self, *args: Any, **kwargs: Any) -> None:
        _state.deferring = False

    @staticmethod
    def _stop_if_asked() -> None:
        if _state.received is not None:
            raise Stopped(_state.received)


def signal_of(error: BaseException) -> int:
    """The signal that stopped a run (deepinit.run.lifecycle.RunInterrupted's, a Stopped's), SIGINT otherwise."""
    return getattr(error, "signum", None) or signal.SIGINT


def exit_status(error: BaseException) -> int:
    """128 + the number of the signal that stopped the process, as a shell reports a process that it ended."""
    return 128 + signal_of(error)


def pass_on(signum: int) -> None:
    """Run the handler that the process had for `signum` before the run (submitit's checkpoint-and-requeue, which
    exits); nothing where it had none."""
    handler = signal.getsignal(signum)
    if callable(handler) and handler is not _handler and signum != signal.SIGINT:
        handler(signum, None)
