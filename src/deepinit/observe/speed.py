"""How fast a run learns: its accuracy on a fixed slice of the validation split every `speed.every_n_steps` steps,
and the first step at which it reached `speed.target_acc` (summary.json's `speed`, the HParams metric
final/steps_to_target, TensorBoard's Overview/speed card).

Read from the curve, not from the run's end: a very deep network can reach the target and unlearn afterwards.
`SpeedTracker` is the logic and knows no Trainer (a batched group feeds one per member from one evaluation of the
stack); `LearningSpeed` is the thin Lightning callback that feeds a lone run's. Neither changes training: the
evaluation is a forward pass without gradients on tensors the training never sees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch import Tensor

from deepinit.results.summary import Speed

if TYPE_CHECKING:
    from deepinit.settings.records import SpeedSettings


def accuracies(forward: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, chunk: int) -> Tensor:
    """Accuracy of `forward`'s logits ([..., N, C]: a lone model's, or a stack's [K, N, C]) on (x, y), in chunks
    of `chunk` images; a scalar per leading index ([K] for a stack)."""
    correct = None
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            logits = forward(x[start : start + chunk])
            hits = (logits.argmax(-1) == y[start : start + chunk]).sum(-1, dtype=torch.float64)
            correct = hits if correct is None else correct + hits
    return correct / len(x)


class SpeedTracker:
    """One run's learning-speed record: `due(step)` says when to measure, `record(step, acc)` keeps the value."""

    def __init__(self, settings: SpeedSettings, x: Tensor, y: Tensor) -> None:
        self.settings = settings
        self.x, self.y = x[: settings.samples], y[: settings.samples]
        self.curve: list[list[float]] = []

    def due(self, step: int) -> bool:
        return step % self.settings.every_n_steps == 0 and (not self.curve or step > self.curve[-1][0])

    def record(self, step: int, acc: float) -> None:
        self.curve.append([step, float(acc)])

    @property
    def steps_to_target(self) -> int | None:
        return next((int(step) for step, acc in self.curve if acc >= self.settings.target_acc), None)

    def result(self) -> Speed:
        s = self.settings
        return Speed(s.target_acc, s.every_n_steps, len(self.x), self.steps_to_target, [list(p) for p in self.curve])

    def state_dict(self) -> dict[str, Any]:
        return {"curve": self.curve}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curve = [list(p) for p in state.get("curve", [])]


def speed_tracker(settings: SpeedSettings, val: tuple[Tensor, Tensor]) -> SpeedTracker | None:
    """The run's tracker on the first `speed.samples` images of its validation split (x, y); None for speed=off."""
    return SpeedTracker(settings, *val) if settings.enabled else None


class LearningSpeed(L.Callback):
    """Feeds a lone run's SpeedTracker: accuracy at step 0 and after every `every_n_steps`-th update, written as
    speed/val_acc at that step (TensorBoard's Overview/speed card). Its record goes into the run's checkpoints, so a
    resumed run's curve is whole."""

    def __init__(self, tracker: SpeedTracker, chunk: int) -> None:
        self.tracker, self.chunk = tracker, chunk

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if not self.tracker.due(step) or getattr(pl_module, "divergence", None) is not None:
            return
        tracker = self.tracker
        # as Lightning moves and converts a validation batch (64-true: float64); once, then a no-op
        tracker.x = trainer.precision_plugin.convert_input(tracker.x.to(pl_module.device))
        tracker.y = tracker.y.to(pl_module.device)
        model, training = pl_module.model, pl_module.model.training
        model.eval()  # batchnorm: the batch's own statistics would be updated into the running ones
        acc = accuracies(model, tracker.x, tracker.y, self.chunk).item()
        model.train(training)
        self.tracker.record(step, acc)
        if trainer.logger is not None:
            trainer.logger.log_metrics({"speed/val_acc": acc}, step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._measure(trainer, pl_module)  # step 0: the initialization's accuracy (a resumed run's: none due)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        self._measure(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict)
