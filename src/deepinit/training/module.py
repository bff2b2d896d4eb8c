"""The LightningModule: wires the MLP, cross-entropy, accuracy and the optimizer; records divergence.

Two training steps give the same training: the fast one (deepinit.training.fast_step: fused optimizer, no host sync,
a CUDA graph on CUDA; Lightning's manual optimization) and the plain eager one (automatic optimization), which
`fast=false` chooses and which runs wherever the fast one cannot (deepinit.training.steps says where).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from deepinit.base.private_api import align_logging_step, count_replayed_update
from deepinit.network.model import MLP
from deepinit.network.parametrization import ONE_GROUP
from deepinit.results.summary import Divergence
from deepinit.training.fast_step import FastStep, fused_optimizer
from deepinit.training.steps import FAST, why_not

log = logging.getLogger(__name__)

# The fast step's Adam is capturable for its CUDA graph, and also runs the (rare) eager steps: that is intended.
warnings.filterwarnings("ignore", message=r"This instance was constructed with capturable=True")


def is_observed(trainer: L.Trainer) -> bool:
    """Whether a callback reads this step's tensors (LayerStats, through hooks, on the steps it records: its
    `observes(step)` says which). Such a step runs eagerly; any other may be replayed from a CUDA graph."""
    return any(cb.observes(trainer.global_step) for cb in trainer.callbacks if hasattr(cb, "observes"))


def logs_now(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether the values a training step logs now, after its update, are written: Lightning writes train/* to the
    logger only every log_every_n_steps (counted after the update, as here); the epoch's and the run's last step
    count too, whose values the summary reads. Logging in between would only refresh the progress bar, at ~0.8 ms
    of Lightning's bookkeeping per self.log call."""
    step = trainer.global_step
    last = batch_idx + 1 >= trainer.num_training_batches or 0 < trainer.max_steps <= step
    return step % max(trainer.log_every_n_steps, 1) == 0 or last


class Classifier(L.LightningModule):
    def __init__(
        self,
        model: MLP,
        optimizer: Callable[[Iterable[Tensor]], torch.optim.Optimizer],
        fast: bool = True,
        param_groups: list[dict[str, Any]] | None = None,
    ) -> None:
        """param_groups: the optimizer's named groups of the model's parameters, each with its own learning rate (a
        width parametrization's, deepinit.network.parametrization); None: one group, the optimizer's own lr."""
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.param_groups = param_groups
        self.fast = fast
        # How often the host reads the fast step's device state (loss, divergence); None: every step on CPU,
        # where it costs nothing, every log_every_n_steps on CUDA, where each read stalls the GPU's queue.
        self.check_every: int | None = None
        self.fast_step: FastStep | None = None
        self.divergence: Divergence | None = None
        self.val_acc_history: list[float] = []

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        blocker = why_not(FAST, self.trainer, self.optimizer_factory) if self.fast else None
        self.automatic_optimization = not self.fast or blocker is not None
        if blocker is not None:
            log.info(f"fast step off: {blocker}")

    def learning_rates(self) -> dict[str, float]:
        """The learning rate of each of the optimizer's groups as it trains, by name (one unnamed group: `all`)."""
        optimizer = self.trainer.optimizers[0]
        return {group.get("name", ONE_GROUP): group["lr"] for group in optimizer.param_groups}

    @property
    def step_kind(self) -> str:
        """The training step this module ran (summary.json's training_step)."""
        if self.automatic_optimization:
            return "eager"
        return "fast, CUDA graph" if self.fast_step is not None and self.fast_step.graph is not None else "fast"

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _loss_acc(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        logits = self.model(x)
        return F.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        if not self.automatic_optimization:
            return self._fast_training_step(batch, batch_idx)
        loss, acc = self._loss_acc(batch)
        # Under DDP every process must agree to skip, or the others would wait for its gradients forever.
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True):
            # Divergence is a result of the study, not a crash: record where, skip this update, stop.
            self.divergence = Divergence.at(self.global_step, self.current_epoch, loss.item(), self.model, batch[0])
            self.trainer.should_stop = True
            return None
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", acc)
        return loss

    def _fast_training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        optimizer = self.optimizers()
        if self.fast_step is None:
            self.fast_step = FastStep(self.model, optimizer.optimizer, self.device, graph=self.device.type == "cuda")
            self.fast_step.start_at(self.global_step)
        replayed = self.fast_step(*batch, self.manual_backward, optimizer.step, observed=is_observed(self.trainer))
        if replayed:
            count_replayed_update(optimizer)
        step, trainer = self.global_step, self.trainer
        every = self.check_every or (trainer.log_every_n_steps if self.device.type == "cuda" else 1)
        log_now = logs_now(trainer, batch_idx)
        if step % max(every, 1) and not log_now:
            return
        state = self.fast_step.read()
        if state["diverged_at"] is not None:
            # the weights have not moved since (every update was skipped): this is the eager step's answer
            at, loss, x = state["diverged_at"], state["diverged_loss"], state["diverged_x"]
            self.divergence = Divergence.at(at, self.current_epoch, loss, self.model, x)
            trainer.should_stop = True
            return
        if log_now:  # host tensors: the progress bar reads them every step, on the GPU a sync each time
            self.log("train/loss", torch.tensor(state["loss"]), prog_bar=True)
            self.log("train/acc", torch.tensor(state["acc"]))

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

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Resumed after Ctrl-C: the Ctrl-C checkpoint is taken mid-batch, and the logged steps would run one ahead
        align_logging_step(self.trainer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["val_acc_history"] = self.val_acc_history  # best_val_acc of a resumed run spans all its epochs

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_acc_history = list(checkpoint.get("val_acc_history", []))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, acc = self._loss_acc(batch)
        self.log("test/loss", loss, sync_dist=True)
        self.log("test/acc", acc, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.param_groups or self.parameters()
        if self.automatic_optimization:
            return self.optimizer_factory(params)
        # fast: fused (one kernel for all updates, and skippable on the device); capturable for a CUDA graph
        return fused_optimizer(self.optimizer_factory, params, capturable=self.device.type == "cuda")
