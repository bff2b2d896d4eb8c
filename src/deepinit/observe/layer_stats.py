"""LayerStats: the Lightning callback that feeds a run's LayerRecorder (deepinit.observe.recorder) from its Trainer.

The recorder holds the logic and knows no Trainer; this adapter only says when: it hooks the model at the start
of a recorded step, hands over the weights before the optimizer's step, ends the step after the batch, and closes
the record when fit ends (or fails). Under DDP one process records (the weights are the same on all). Its state
(what was recorded so far) goes into the run's checkpoints, so a resumed run's figures span the whole run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from deepinit.observe.recorder import LayerRecorder


class LayerStats(L.Callback):
    def __init__(self, recorder: LayerRecorder) -> None:
        self.recorder = recorder
        self.active = False

    @property
    def history(self) -> dict[tuple[str, str], list]:
        return self.recorder.history

    def observes(self, step: int) -> bool:
        """Whether this step's tensors are read through forward hooks (deepinit.training.module runs such a step
        eagerly)."""
        return self.active and self.recorder.observes(step)

    def state_dict(self) -> dict[str, Any]:
        return self.recorder.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recorder.load_state_dict(state_dict)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out_dir = Path(trainer.log_dir or trainer.default_root_dir)  # under DDP a broadcast: every process asks
        self.active = trainer.is_global_zero
        if self.active:
            self.recorder.open(pl_module.model, getattr(trainer.logger, "experiment", None), out_dir)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        if self.observes(trainer.global_step):
            self.recorder.hook(trainer.global_step)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self.active:
            self.recorder.before_update()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        if self.active:
            self.recorder.end_step()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active:
            self.recorder.close(trainer.global_step)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.active:
            self.recorder.close(trainer.global_step)
