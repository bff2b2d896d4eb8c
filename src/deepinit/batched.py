"""Batched training: K runs of the same shape trained together as one stacked model, each still its own run.

A study grid is mostly runs that differ only in init scheme and seed. On a GPU one such run uses a sliver of
the device; K of them stacked as [K, out, in] weights and trained with batched matmuls fill it. Each member
keeps everything of its own: its init (built exactly as a lone run builds it), its shuffled batches, its run
folder with TensorBoard events, layer statistics, figures, checkpoint and summary.json, written in the same
form as a lone run's, through the same RunRecord (deepinit.lifecycle).

What a member shares with a lone run: Lightning runs both. The group is a LightningModule (GroupModule) over
the stacked model, fitted and tested by a Trainer made from the composed `trainer.*` config, so epochs, step
limits, validation and logging follow Lightning's rules as a lone run's do; whatever Lightning logs for the
group, MembersLogger writes into each member's own logger with the member's own values.

Why the members stay independent: the loss is the sum of the members' losses, so each member's gradient is
its own; the optimizers (Adam, SGD) are elementwise, so one optimizer over stacked tensors is K optimizers. A
member whose loss stops being finite is frozen (its weights restored after every step; its optimizer state,
elementwise too, then no longer matters) and recorded as diverged at that step, as a lone run would record
it; the others go on. On a step some member records, the one stacked pass keeps every layer's tensors, and
that member's LayerRecorder gets its slice: what its hooks would have captured alone. On CUDA the step's two
halves (forward and backward, then the update) are replayed from CUDA graphs (GroupStep).

`group_key(cfg)` says which runs can share a group, `why_alone(cfg)` which cannot join one;
`train_group(cfgs, run_dirs)` trains one group.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers.logger import Logger
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from deepinit.activations import ACTIVATIONS
from deepinit.data import TensorBatches
from deepinit.fast_step import Graphed, fused_optimizer
from deepinit.lifecycle import RunRecord, essentials, write_whole
from deepinit.model import MLP
from deepinit.module import count_replayed_update, logs_now
from deepinit.sweep import result_settings
from deepinit.train import (
    apply_process_settings,
    build,
    job_scope,
    layer_recorder,
    make_trainer,
    predict_trainability,
    validate,
)

log = logging.getLogger(__name__)

# What may differ between members of one group besides sweep.RESULT_NEUTRAL: everything else must be equal (same
# shapes, same loop); data.shuffle_seed is ${seed}, each member shuffling its own way.
PER_MEMBER = ("init", "seed", "stats", "data.shuffle_seed")


def group_key(cfg: DictConfig) -> str:
    """Runs with equal keys can be trained as one stacked model."""
    return json.dumps(result_settings(OmegaConf.to_container(cfg, resolve=True), also=PER_MEMBER), sort_keys=True)


def memory_estimate(cfg: DictConfig) -> int:
    """Bytes one member needs on the device: weights, gradients, two Adam moments, and the activations of a
    batch kept for backward (float32)."""
    sizes = [784] + [cfg.width] * (cfg.depth - 1) + [10]
    params = sum((a + int(cfg.bias)) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    activations = cfg.data.batch_size * sum(sizes) * 3  # pre-activation, activation, gradient
    return 4 * (4 * params + activations)


class StackedMLP(nn.Module):
    """K same-shape MLPs as one: layer i's weights are one [K, out, in] parameter, its biases [K, out].

    The members stay usable as plain MLPs: their parameters become views into the stack, so a member's forward
    and its LayerRecorder see the weights the stack trains."""

    def __init__(self, members: Sequence[MLP]) -> None:
        super().__init__()
        first = members[0]
        self.activation, self.depth, self.members = first.activation, first.depth, list(members)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([m.linears[i].weight.detach() for m in members])) for i in range(self.depth)
        )
        has_bias = first.linears[0].bias is not None
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([m.linears[i].bias.detach() for m in members]))
            for i in range(self.depth)
            if has_bias
        )
        self.act = ACTIVATIONS[self.activation].module()
        self.bind()

    def bind(self) -> None:
        """Make every member's parameters views into the stack (again after the stack moved device)."""
        for k, member in enumerate(self.members):
            for i, linear in enumerate(member.linears):
                linear.weight = nn.Parameter(self.weights[i].data[k])
                if self.biases:
                    linear.bias = nn.Parameter(self.biases[i].data[k])

    def _apply(self, fn, recurse=True):  # .to(device) replaces the stack's storage: re-point the members
        out = super()._apply(fn, recurse)
        if hasattr(self, "members"):
            self.bind()
        return out

    def forward(self, x: Tensor) -> Tensor:
        """x: [K, batch, 784] (each member its own batch) -> logits [K, batch, 10]."""
        return self.observed_forward(x)[0]

    def observed_forward(self, x: Tensor, keep: bool = False) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Logits, and with keep: every layer's pre-activation [K, batch, out] (gradients retained for the
        statistics) and activation; the last pre-activation is the logits."""
        pre, post = [], []
        for i, w in enumerate(self.weights):
            x = torch.baddbmm(self.biases[i].unsqueeze(1), x, w.transpose(1, 2)) if self.biases else x @ w.mT
            if keep:
                x.retain_grad()
                pre.append(x)
            if i < self.depth - 1:
                x = self.act(x)
                if keep:
                    post.append(x)
        return x, pre, post


# Optimizers whose update of a tensor is elementwise: one over stacked tensors is one per member.
ELEMENTWISE = {
    f"torch.optim.{name}" for name in ("Adam", "AdamW", "SGD", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam")
}


def why_alone(cfg: DictConfig) -> str | None:
    """Why this job cannot join a batched group, or None when it can: what the group step cannot do, read off the
    Trainer the job's own config makes (every other Trainer setting the group's Trainer follows as a lone one)."""
    if cfg.optim._target_ not in ELEMENTWISE:
        return f"optimizer {cfg.optim._target_} (not known to update elementwise)"
    with job_scope():  # a Trainer sets process-wide flags (trainer.deterministic): not the launcher's to keep
        trainer = make_trainer(cfg, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    if trainer.world_size > 1:
        return f"more than one device or a strategy (world size {trainer.world_size})"
    if trainer.gradient_clip_val:
        return "trainer.gradient_clip_val (the group step does not clip gradients)"
    if trainer.accumulate_grad_batches != 1:
        return "trainer.accumulate_grad_batches (the group step updates every batch)"
    if trainer.precision != "32-true":
        return f"trainer.precision={trainer.precision} (the group step runs float32)"
    return None


class Member:
    """One run of the group: its config, folder, record, logger, layer statistics and results."""

    def __init__(self, index: int, cfg: DictConfig, record: RunRecord, model: MLP, init_used: dict[str, Any]) -> None:
        self.index, self.cfg, self.record, self.model, self.init_used = index, cfg, record, model, init_used
        self.run_dir = record.run_dir
        self.record.configure(cfg)
        self.logger = self.record.open_logger()
        self.stats = layer_recorder(cfg, init_used)
        if self.stats is not None:
            self.stats.open(model, self.logger.experiment, self.run_dir)
        self.record.summary["theory"] = predict_trainability(cfg, model, init_used)
        self.divergence: dict[str, Any] | None = None
        self.frozen: list[Tensor] = []  # its slices of the parameters, once diverged
        self.val_acc_history: list[float] = []
        self.values: dict[str, float] = {}  # its latest train/*, val/*, test/* values, for MembersLogger
        self.metrics: dict[str, float] = {}  # the values last logged, for its summary

    @property
    def live(self) -> bool:
        return self.divergence is None

    def observes(self, step: int) -> bool:
        return self.stats is not None and self.live and self.stats.observes(step)


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


class StackedBatches:
    """Each member's next pass, as its lone run's loader makes it (same seed, same order), stacked: one gather
    of [K, batch] indices a step, and no per-member copy of the shuffled data set."""

    def __init__(self, loaders: Sequence[TensorBatches]) -> None:
        self.loaders = loaders

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        orders = torch.stack([loader.next_order() for loader in self.loaders])
        x, y, size = self.loaders[0].x, self.loaders[0].y, self.loaders[0].batch_size
        for start in range(0, orders.shape[1], size):
            index = orders[:, start : start + size]
            yield x[index], y[index]


class GroupStep:
    """The group's training step in two halves, so that the host can look at the members' losses between
    them: forward and backward (one [2, K] tensor of losses and accuracies out), then the optimizer's update.
    With `graph` (CUDA, fast=true) each half is a `Graphed`: replayed on every step that no member records and
    whose batch has the usual size (the update whenever the forward was), eager otherwise, as the lone fast step."""

    def __init__(self, stack: StackedMLP, optimizer: torch.optim.Optimizer, device: torch.device, graph: bool):
        self.stack, self.optimizer = stack, optimizer
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
            (), not self.replayed, captured_fn=self.optimizer.step, eager_fn=lightning_optimizer.step
        )
        if replayed:
            count_replayed_update(lightning_optimizer)


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
        self._totals: Tensor | None = None  # [2, K] float64: the evaluation's summed loss and accuracy, and count
        self._count = 0

    @property
    def live(self) -> list[Member]:
        return [m for m in self.members if m.live]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.stack.parameters())
        # fused where it exists, as the lone run's fast step: one kernel for every member's update
        graph = self.fast and self.device.type == "cuda"
        optimizer = self.fast and fused_optimizer(self.optimizer_factory, params, capturable=graph)
        self.graphs = graph and bool(optimizer)
        return optimizer or self.optimizer_factory(params)

    @property
    def step_kind(self) -> str:
        return "batched, CUDA graph" if self.group_step is not None and self.group_step.captured else "batched"

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        step, stack, optimizer = self.global_step, self.stack, self.optimizers()
        if self.group_step is None:
            self.group_step = GroupStep(stack, optimizer.optimizer, self.device, self.graphs)
        observers = [m for m in self.members if m.observes(step)]
        out, pre, post = self.group_step.forward_backward(x, y, keep=bool(observers))
        for member in observers:
            k = member.index
            grads = [t.grad[k] for t in pre] if all(t.grad is not None for t in pre) else None
            member.stats.observe(step, x[k], [t[k] for t in pre], [t[k] for t in post], grads)
            for i, linear in enumerate(member.model.linears):  # the member's weight gradients, as views
                linear.weight.grad = stack.weights[i].grad[k]
                if stack.biases:
                    linear.bias.grad = stack.biases[i].grad[k]
        losses, accs = out.tolist()  # the group's one host read a step
        for member in self.live:
            member.values.update({"train/loss": losses[member.index], "train/acc": accs[member.index]})
            if not math.isfinite(losses[member.index]):
                # Divergence is a result: record it as a lone run does, and freeze this member from here on.
                member.divergence = {
                    "step": step,
                    "epoch": self.current_epoch,
                    "loss": losses[member.index],
                    "layer": member.model.first_nonfinite_layer(x[member.index]),
                }
                member.frozen = [p[member.index].clone() for p in stack.parameters()]
        for member in observers:
            member.stats.before_update()
        self.group_step.update(optimizer)
        with torch.no_grad():
            for member in self.members:
                if member.frozen:
                    for p, kept in zip(stack.parameters(), member.frozen, strict=True):
                        p[member.index].copy_(kept)
        for member in observers:
            member.stats.end_step()
            for p in member.model.parameters():
                p.grad = None  # the views into this step's gradients
        live = self.live
        if not live:
            self.trainer.should_stop = True
            return
        if not logs_now(self.trainer, batch_idx):
            return
        # what Lightning writes (MembersLogger gives each member its own value); the means are for the progress bar
        self.log("train/loss", sum(m.values["train/loss"] for m in live) / len(live), prog_bar=True)
        self.log("train/acc", sum(m.values["train/acc"] for m in live) / len(live))
        self.log("diverged", float(len(self.members) - len(live)), prog_bar=True, logger=False)

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


class OnStep(L.Callback):
    """on_step(step) before each training step (scripts/bench.py times the steps with it)."""

    def __init__(self, on_step: Callable[[int], None]) -> None:
        self.on_step = on_step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        self.on_step(trainer.global_step)


def train_group(
    cfgs: Sequence[DictConfig], run_dirs: Sequence[Path], on_step: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """Train same-shape runs (equal `group_key`) as one stacked model; write and return each one's summary.
    on_step(step) is called before each training step."""
    with job_scope():  # as a lone run: the process's RNG, threads and flags are as they were afterwards
        return _train_group(cfgs, run_dirs, on_step)


def _train_group(
    cfgs: Sequence[DictConfig], run_dirs: Sequence[Path], on_step: Callable[[int], None] | None
) -> list[dict[str, Any]]:
    if len({group_key(cfg) for cfg in cfgs}) != 1:
        raise ValueError("train_group needs runs of one shape and loop (equal group_key)")
    for cfg in cfgs:
        validate(cfg)
    cfg0 = cfgs[0]
    apply_process_settings(cfg0)
    with ExitStack() as records:  # a member's record ends with its summary, or with the group's failure
        members: list[Member] = []
        trainer: L.Trainer | None = None
        try:
            datamodule = None
            for k, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs, strict=True)):
                record = records.enter_context(RunRecord(run_dir))
                datamodule, module, init_used = build(cfg, datamodule)  # exactly as the lone run builds its model
                members.append(Member(k, cfg, record, module.model, init_used))
            trainer = make_trainer(
                cfg0, logger=MembersLogger(members), enable_checkpointing=False,  # each member's own, at the end
                callbacks=[OnStep(on_step)] if on_step else [], default_root_dir=str(Path(run_dirs[0]).parent),
            )  # fmt: skip
            for member in members:
                member.record.trainer = trainer
            device = trainer.strategy.root_device
            datamodule.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in datamodule.splits.items()}
            train = StackedBatches(
                [TensorBatches(*datamodule.splits["train"], cfg0.data.batch_size, shuffle=True,
                               seed=cfg.data.shuffle_seed) for cfg in cfgs]
            )  # fmt: skip
            group = GroupModule(StackedMLP([m.model for m in members]), members, instantiate(cfg0.optim), cfg0.fast)
            shared = " ".join(f"{k}={v}" for k, v in essentials(cfg0).items() if k not in ("init", "seed"))
            log.info(f"deepinit: a batched group of {len(members)} runs | {shared} | device {device}")
            trainer.fit(group, train_dataloaders=train, val_dataloaders=datamodule.val_dataloader())
            if group.live:
                trainer.test(group, dataloaders=datamodule.test_dataloader(), verbose=False)
        finally:
            for member in members:  # the CSV closed and the figures drawn, however the group ended
                if member.stats is not None:
                    member.stats.close(trainer.global_step if trainer is not None else 0)
        first_error = None
        for member in members:  # one member's failure here (its checkpoint on a full disk) is its own
            try:
                with member.record:
                    _conclude(member, trainer, group.step_kind, cfg0.trainer.get("enable_checkpointing", True))
            except Exception as e:
                first_error = first_error or e
        if first_error is not None:
            raise first_error
    return [member.record.summary for member in members]


def _conclude(member: Member, trainer: L.Trainer, kind: str, checkpointing: bool) -> None:
    """The member's summary.json (the fields a lone run writes), its HParams row and its checkpoint."""
    record, steps, epochs = member.record, trainer.global_step, trainer.current_epoch
    if member.divergence is not None:
        steps = member.divergence["step"] + 1
        record.diverged(member.divergence, member.cfg.depth)
    history = member.stats.history if member.stats is not None else {}
    record.conclude(
        member.metrics, member.val_acc_history, history,
        init=member.init_used, steps=steps, epochs=epochs, device=str(trainer.strategy.root_device),
        training_step=kind,
    )  # fmt: skip
    if checkpointing:
        # Lightning checkpoints the module it trains, the stack; a member's file is its own model's weights under
        # the keys a lone run's checkpoint gives them (state_dict["model.linears.0.weight"], ...), named as the lone
        # run's ModelCheckpoint names its last epoch's
        folder = member.run_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        state = {f"model.{k}": v.detach().cpu().clone() for k, v in member.model.state_dict().items()}
        last_epoch = max(epochs - 1, 0)
        checkpoint = {"epoch": last_epoch, "global_step": steps, "state_dict": state}
        buffer = io.BytesIO()  # through memory, so that a full disk is an OSError that says so
        torch.save(checkpoint | {"pytorch-lightning_version": L.__version__}, buffer)
        name = ModelCheckpoint(dirpath=folder).format_checkpoint_name({"epoch": last_epoch, "step": steps})
        write_whole(Path(name), buffer.getbuffer())
