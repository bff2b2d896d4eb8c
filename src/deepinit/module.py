"""The LightningModule: wires the MLP, cross-entropy, accuracy and the optimizer; records divergence."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from deepinit.model import MLP


class Classifier(L.LightningModule):
    def __init__(self, model: MLP, optimizer: Callable[[Iterable[Tensor]], torch.optim.Optimizer]) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.divergence: dict[str, Any] | None = None
        self.val_acc_history: list[float] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _loss_acc(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        logits = self.model(x)
        return F.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        loss, acc = self._loss_acc(batch)
        # Under DDP every process must agree to skip, or the others would wait for its gradients forever.
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True):
            # Divergence is a result of the study, not a crash: record where, skip this update, stop.
            self.divergence = {
                "step": self.global_step,
                "epoch": self.current_epoch,
                "loss": loss.item(),
                "layer": self.model.first_nonfinite_layer(batch[0]),
            }
            self.trainer.should_stop = True
            return None
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", acc)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if self.divergence is not None:
            return  # a diverged model's outputs are NaN; its "accuracy" would be argmax noise
        loss, acc = self._loss_acc(batch)
        # every DDP process evaluates the whole split, so syncing only averages equal numbers (and says so)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/acc", acc, prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.divergence is None and "val/acc" in self.trainer.callback_metrics:
            self.val_acc_history.append(self.trainer.callback_metrics["val/acc"].item())

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, acc = self._loss_acc(batch)
        self.log("test/loss", loss, sync_dist=True)
        self.log("test/acc", acc, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())
