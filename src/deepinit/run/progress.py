"""Training's progress in optimizer steps, out of the run's real total, as the console can show it.

In a terminal (stderr is one) a single bar, redrawn in place; anywhere else (a file, a pipe, a cluster job's log) a
line every `trainer.log_every_n_steps` steps through logging, so the job's log file gets the same lines and no
carriage return ever reaches a file (in a terminal the log file gets none: the bar is the console's). The total is
the steps the run will take: max_steps, or max_epochs times the optimizer steps of an epoch (limit_train_batches
and gradient accumulation counted), whichever comes first.
Validation and test show nothing here: they take a moment, and the run's end line gives the test accuracy.

`progress_bar(settings.trainer)` is the callback a run's Trainer gets: a lone run and a batched group alike.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import ExitStack
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from deepinit.settings.records import TrainerSettings

log = logging.getLogger(__name__)

BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class StepProgress(ProgressBar):
    """Steps done out of the run's total: a tqdm bar on stderr when `terminal`, else a logged line every
    log_every_n_steps steps and at the end of training. A resumed run counts on from the step it resumed at."""

    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal, self.enabled = terminal, True
        self.bar: tqdm | None = None
        self.total: int | None = None
        self.shown = 0  # the step of the last line
        self.began = (0.0, 0)  # (time, step) when this attempt started training: the rate is this attempt's
        self.console = ExitStack()

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        self.total = None if math.isinf(total) else int(total)
        self.shown, self.began = trainer.global_step, (time.monotonic(), trainer.global_step)
        if self.terminal and self.enabled:
            self.bar = tqdm(desc=f"epoch {trainer.current_epoch}", total=self.total, initial=trainer.global_step,
                             file=sys.stderr, dynamic_ncols=True, smoothing=0, unit=" steps", bar_format=BAR,
                             miniters=1)  # redrawn every 0.1 s at most; tqdm's own miniters only ever grows
            # a line logged while the bar is drawn (a stop signal's, a divergence's) goes above it, not into it
            self.console.enter_context(logging_redirect_tqdm())

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"epoch {trainer.current_epoch}", refresh=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        # the logged values change every log_every_n_steps (module.logs_now); reading them is a device sync
        due = step % max(trainer.log_every_n_steps, 1) == 0 or step == self.total
        if self.bar is not None:
            if due:
                self.bar.set_postfix_str(self.metrics(trainer, pl_module), refresh=False)
            self.bar.update(step - self.bar.n)  # redrawn at most every 0.1 s (tqdm's mininterval)
        elif due and self.enabled and step > self.shown:
            self.line(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None and not trainer.sanity_checking:
            self.bar.set_postfix_str(self.metrics(trainer, pl_module))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is None and self.enabled and trainer.global_step > self.shown:
            self.line(trainer, pl_module)  # training ended off the cadence: diverged, max_time
        self.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.close()  # the bar's line ended here, so the run's last line (interrupted, failed) is a line of its own

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.console.close()

    def metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        values = self.get_metrics(trainer, pl_module)
        return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())

    def line(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step, (started, first) = trainer.global_step, self.began
        elapsed = time.monotonic() - started
        rate = (step - first) / elapsed if elapsed > 0 else 0.0
        text = f"step {step}" + (f"/{self.total}" if self.total is not None else "")
        text += f" | epoch {trainer.current_epoch} | {tqdm.format_interval(elapsed)}, {rate:.1f} steps/s"
        if self.total is not None and rate > 0 and step < self.total:
            text += f", {tqdm.format_interval((self.total - step) / rate)} left"
        if metrics := self.metrics(trainer, pl_module):
            text += f" | {metrics}"
        log.info(text)
        self.shown = step


def progress_bar(trainer: TrainerSettings) -> list[L.Callback]:
    """The run's progress callback, as a list to splice into the Trainer's callbacks: none under
    trainer.enable_progress_bar=false (Lightning refuses a progress bar callback then)."""
    if not trainer.options.get("enable_progress_bar", True):
        return []
    return [StepProgress(terminal=sys.stderr.isatty())]
