"""A batched group under Lightning: its members (each its own run), the logger that writes what Lightning logs into
each member's own, the group's training step in two halves, and the LightningModule over the stacked model."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers.logger import Logger
from torch import Tensor

from deepinit.base.private_api import count_replayed_update
from deepinit.batched.stacked import StackedMLP
from deepinit.network.parametrization import ONE_GROUP, groups_of, param_groups
from deepinit.observe.speed import accuracies
from deepinit.results.summary import Divergence
from deepinit.run.lifecycle import RunRecord
from deepinit.run.parts import Parts, predict_trainability
from deepinit.settings.records import Settings
from deepinit.training.fast_step import Graphed, fused_optimizer
from deepinit.training.module import logs_now


class Member:
    """One run of the group: its settings, folder, record, logger, layer statistics, learning speed and results."""

    def __init__(self, index: int, settings: Settings, record: RunRecord, parts: Parts) -> None:
        self.index, self.settings, self.record = index, settings, record
        self.model, self.init_used, self.speed = parts.module.model, parts.init_used, parts.speed
        self.run_dir, self.logger, self.recorder = record.run_dir, record.logger, parts.recorder
        if self.recorder is not None:  # fed by the group's step, not by a LayerStats callback
            self.recorder.open(self.model, self.logger.experiment, self.run_dir)
        self.record.summary.theory = predict_trainability(settings, self.model, self.init_used)
        param, optim = settings.param, settings.optim
        # its learning rate per named group, as its lone run's optimizer has them (sp: the same for every group)
        groups = param_groups(self.model, param.name, optim.name, optim.lr, param.base_width)
        self.rates = {group["name"]: group["lr"] for group in groups}
        self.divergence: Divergence | None = None
        self.frozen: list[Tensor] = []  # its slices of the parameters, once diverged
        self.val_acc_history: list[float] = []
        self.values: dict[str, float] = {}  # its latest train/*, val/*, test/* values, for MembersLogger
        self.metrics: dict[str, float] = {}  # the values last logged, for its summary

    @property
    def live(self) -> bool:
        return self.divergence is None

    def observes(self, step: int) -> bool:
        return self.recorder is not None and self.live and self.recorder.observes(step)

    @property
    def learning_rates(self) -> dict[str, float]:
        """summary.json's learning_rates, as its lone run writes them (sp: one group)."""
        return self.rates if not self.settings.param.standard else {ONE_GROUP: self.settings.optim.lr}


class MembersLogger(Logger):
    """The group Trainer's logger: what Lightning logs, when and at the step it logs it (its log_every_n_steps,
    epoch ends, test), written into every live member's own RunLogger, each key with the member's own value."""

    def __init__(self, members: Sequence[Member]) -> None:
        super().__init__()
        self.members = members

    @property
    def name(self) -> str:
        return "members"

    @property
    def version(self) -> str:
        return ""  # as the members' own loggers (the progress bar shows no v_num)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # each member's HParams row is its RunRecord's, written once at the end

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for member in self.members:
            if not member.live:
                continue
            own = {k: member.values[k] if k in member.values else v for k, v in metrics.items()}
            member.logger.log_metrics(own, step)
            member.metrics.update(own)

    def save(self) -> None:
        for member in self.members:
            member.logger.save()

    def finalize(self, status: str) -> None:
        for member in self.members:
            member.logger.finalize(status)


class GroupStep:
    """The group's training step in two halves, so that the host can look at the members' losses between
    them: forward and backward (one [2, K] tensor of losses and accuracies out), then the optimizer's update.
    With `graph` (CUDA, fast=true) each half is a `Graphed`: replayed on every step that no member records and
    whose batch has the usual size (the update whenever the forward was), eager otherwise, as the lone fast step."""

    def __init__(
        self,
        stack: StackedMLP,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        graph: bool,
        scales: Sequence[tuple[Tensor, Tensor]] = (),
    ):
        """scales: (stacked parameter, [K] factors) where members train it at other rates than the optimizer's."""
        self.stack, self.optimizer, self.scales = stack, optimizer, list(scales)
        self.before = [torch.empty_like(p) for p, _ in self.scales]
        self.forward = Graphed("batched step", device, graph, grads_of=optimizer)
        self.update_half = Graphed("batched update", device, graph)
        self.replayed = False  # whether this step's forward was replayed

    @property
    def captured(self) -> bool:
        return self.forward.graph is not None

    def _forward_backward(self, x: Tensor, y: Tensor, keep: bool) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        logits, pre, post = self.stack.observed_forward(x, keep)
        per_sample = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        losses = per_sample.view(len(x), -1).mean(1)
        losses.sum().backward()  # each member's gradient is its own loss's
        return torch.stack([losses.detach(), (logits.argmax(2) == y).to(losses.dtype).mean(1)]), pre, post

    def forward_backward(self, x: Tensor, y: Tensor, keep: bool) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Losses and accuracies [2, K]; with keep, every layer's pre-activations (with gradients) and activations."""
        out, self.replayed = self.forward(
            (x, y),
            observed=keep,
            captured_fn=lambda x, y: self._forward_backward(x, y, False)[0],
            eager_fn=lambda x, y: self._forward_backward(x, y, keep),
        )
        self.update_half.wanted &= self.forward.wanted  # no replayed forward, no replayed update
        return (out, [], []) if self.replayed else out

    def update(self, lightning_optimizer: LightningOptimizer) -> None:
        """The optimizer's step for every member: replayed (the torch optimizer's kernels) when this step's forward
        was and the update can be, else through Lightning's optimizer, which counts the step itself."""
        _, replayed = self.update_half(
            (), not self.replayed, captured_fn=self._scaled(self.optimizer.step),
            eager_fn=self._scaled(lightning_optimizer.step),
        )  # fmt: skip
        if replayed:
            count_replayed_update(lightning_optimizer)

    def _scaled(self, step: Callable[[], Any]) -> Callable[[], Any]:
        """The optimizer's step, each member's part of a scaled parameter moved by its factor times the step's
        change: w + s_k (w' - w) is w - s_k lr u, the step at s_k lr, for any optimizer whose update is the learning
        rate times a direction that does not depend on it (OptimSettings.LINEAR_IN_LR). Device ops only: a CUDA
        graph captures them with the step."""
        if not self.scales:
            return step

        def scaled() -> Any:
            with torch.no_grad():
                for before, (p, _) in zip(self.before, self.scales, strict=True):
                    before.copy_(p)
            out = step()
            with torch.no_grad():
                for before, (p, factors) in zip(self.before, self.scales, strict=True):
                    p.sub_(before).mul_(factors.view(-1, *[1] * (p.dim() - 1))).add_(before)
            return out

        return scaled


class GroupModule(L.LightningModule):
    """The stacked model under Lightning: each training step trains every live member and records, per member,
    what a lone Classifier records (loss, accuracy, divergence, the observed step's tensors); validation and test
    give each member its own loss and accuracy. Manual optimization: the step looks at the members' losses
    between backward and update (to freeze a diverging one), as the lone fast step does on the device."""

    def __init__(self, stack: StackedMLP, members: Sequence[Member], optimizer: Callable, fast: bool) -> None:
        super().__init__()
        self.stack, self.members, self.optimizer_factory, self.fast = stack, list(members), optimizer, fast
        self.automatic_optimization = False
        self.group_step: GroupStep | None = None
        self.scales: list[tuple[Tensor, Tensor]] = []  # configure_optimizers': the members' own rates
        self._totals: Tensor | None = None  # [2, K] float64: the evaluation's summed loss and accuracy, and count
        self._count = 0
        self._speed_images: tuple[Tensor, Tensor] | None = None  # the members' common speed images, on the device

    @property
    def live(self) -> list[Member]:
        return [m for m in self.members if m.live]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params, self.scales = self.param_groups()
        # fused where it exists, as the lone run's fast step: one kernel for every member's update
        graph = self.fast and self.device.type == "cuda"
        optimizer = self.fast and fused_optimizer(self.optimizer_factory, params, capturable=graph)
        self.graphs = graph and bool(optimizer)
        return optimizer or self.optimizer_factory(params)

    def param_groups(self) -> tuple[list, list[tuple[Tensor, Tensor]]]:
        """The optimizer's parameters, and the factors of the members that train at other rates: one group, as
        ever, where every member is sp at one learning rate; else the first member's named groups (a width
        parametrization's per layer kind), each stacked parameter at its rate, and every member's own rate for it
        over that one as the [K] factors GroupStep applies."""
        first = self.members[0]
        if all(m.settings.param.standard and m.rates == first.rates for m in self.members):
            return list(self.stack.parameters()), []
        stacked = {}
        for i, linear in enumerate(first.model.linears):  # a member's parameters are views of the stack's
            stacked[id(linear.weight)] = self.stack.weights[i]
            if self.stack.biases:
                stacked[id(linear.bias)] = self.stack.biases[i]
        groups, scales = [], []
        for name, _, params in groups_of(first.model):
            groups.append({"params": [stacked[id(p)] for p in params], "name": name, "lr": first.rates[name]})
            factors = torch.tensor([m.rates[name] / first.rates[name] for m in self.members], device=self.device)
            if not bool((factors == 1).all()):
                scales += [(p, factors.to(p.dtype)) for p in groups[-1]["params"]]
        return groups, scales

    @property
    def step_kind(self) -> str:
        return "batched, CUDA graph" if self.group_step is not None and self.group_step.captured else "batched"

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        step, stack, optimizer = self.global_step, self.stack, self.optimizers()
        if self.group_step is None:
            self.group_step = GroupStep(stack, optimizer.optimizer, self.device, self.graphs, self.scales)
        observers = [m for m in self.members if m.observes(step)]
        out, pre, post = self.group_step.forward_backward(x, y, keep=bool(observers))
        for member in observers:
            k = member.index
            grads = [t.grad[k] for t in pre] if all(t.grad is not None for t in pre) else None
            member.recorder.observe(step, x[k], [t[k] for t in pre], [t[k] for t in post], grads)
            for i, linear in enumerate(member.model.linears):  # the member's weight gradients, as views
                linear.weight.grad = stack.weights[i].grad[k]
                if stack.biases:
                    linear.bias.grad = stack.biases[i].grad[k]
        losses, accs = out.tolist()  # the group's one host read a step
        for member in self.live:
            member.values.update({"train/loss": losses[member.index], "train/acc": accs[member.index]})
            if not math.isfinite(losses[member.index]):
                # Divergence is a result: record it as a lone run does, and freeze this member from here on.
                k = member.index
                member.divergence = Divergence.at(step, self.current_epoch, losses[k], member.model, x[k])
                member.frozen = [p[member.index].clone() for p in stack.parameters()]
        for member in observers:
            member.recorder.before_update()
        self.group_step.update(optimizer)
        with torch.no_grad():
            for member in self.members:
                if member.frozen:
                    for p, kept in zip(stack.parameters(), member.frozen, strict=True):
                        p[member.index].copy_(kept)
        for member in observers:
            member.recorder.end_step()
            for p in member.model.parameters():
                p.grad = None  # the views into this step's gradients
        live = self.live
        if not live:
            self.trainer.should_stop = True
            return
        self._measure_speed()
        if not logs_now(self.trainer, batch_idx):
            return
        # what Lightning writes (MembersLogger gives each member its own value); the means are for the progress bar
        self.log("train/loss", sum(m.values["train/loss"] for m in live) / len(live), prog_bar=True)
        self.log("train/acc", sum(m.values["train/acc"] for m in live) / len(live))
        self.log("diverged", float(len(self.members) - len(live)), prog_bar=True, logger=False)

    def on_train_start(self) -> None:
        self._measure_speed()  # step 0: the initializations' accuracy

    def _measure_speed(self) -> None:
        """Each live member's learning speed (deepinit.observe.speed) where it is due: one evaluation of the stack on
        the members' common validation images (equal settings in a group: the same images, the same steps)."""
        step = self.global_step
        due = [m for m in self.live if m.speed is not None and m.speed.due(step)]
        if not due:
            return
        if self._speed_images is None:  # moved and converted once, as Lightning does a validation batch
            x, y = due[0].speed.x, due[0].speed.y
            self._speed_images = (self.trainer.precision_plugin.convert_input(x.to(self.device)), y.to(self.device))
        k = len(self.members)
        chunk = self.members[0].settings.data.eval_batch_size
        accs = accuracies(lambda x: self.stack(x.expand(k, *x.shape)), *self._speed_images, chunk).tolist()
        for member in due:
            member.speed.record(step, accs[member.index])
            member.logger.log_metrics({"speed/val_acc": accs[member.index]}, step)

    # --- evaluation: every member on the same batches, each its own mean as Lightning's epoch mean -------------
    def _evaluate(self, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        logits = self.stack(x.expand(len(self.members), *x.shape))
        loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(self.members)), reduction="none")
        batch_means = torch.stack([loss.view(len(self.members), -1).mean(1), (logits.argmax(2) == y).float().mean(1)])
        # Lightning's epoch mean of a logged value: the batch means weighted by batch size
        totals = batch_means.double() * len(x)
        self._totals = totals if self._totals is None else self._totals + totals
        self._count += len(x)

    def _evaluated(self, split: str) -> None:
        totals, count, self._totals, self._count = self._totals, self._count, None, 0
        live = self.live
        if totals is None or not live or self.trainer.sanity_checking:
            return
        losses, accs = (totals / count).tolist()
        for member in live:
            member.values.update({f"{split}/loss": losses[member.index], f"{split}/acc": accs[member.index]})
            if split == "val":
                member.val_acc_history.append(accs[member.index])
        self.log(f"{split}/loss", sum(losses[m.index] for m in live) / len(live), prog_bar=split == "val")
        self.log(f"{split}/acc", sum(accs[m.index] for m in live) / len(live), prog_bar=split == "val")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        self._evaluated("val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_test_epoch_end(self) -> None:
        self._evaluated("test")
