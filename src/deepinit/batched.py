"""Batched training: K runs of the same shape trained together as one stacked model, each still its own run.

A study grid is mostly runs that differ only in init scheme and seed. On a GPU one such run uses a sliver of
the device; K of them stacked as [K, out, in] weights and trained with batched matmuls fill it. Each member
keeps everything of its own: its init (built exactly as a lone run builds it), its shuffled batches, its run
folder with TensorBoard events, layer statistics, figures, checkpoint and summary.json, written in the same
form as a lone run's (scripts/train.py through Lightning).

Why the members stay independent: the loss is the sum of the members' losses, so each member's gradient is
its own; the optimizers (Adam, SGD) are elementwise, so one optimizer over stacked tensors is K optimizers. A
member whose loss stops being finite is frozen (its weights restored after every step; its optimizer state,
elementwise too, then no longer matters) and recorded as diverged at that step, as a lone run would record
it; the others go on. On a logging step the one stacked pass keeps every layer's tensors, and each member's
LayerStats gets its slice: what its hooks would have captured alone. On CUDA the step's two halves (forward
and backward, then the update) are replayed from CUDA graphs (GroupStep).

`group_key(cfg)` says which runs can share a group; `train_group(cfgs, run_dirs)` trains one group.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm import tqdm

from deepinit.data import TensorBatches
from deepinit.fast_step import WARMUP_STEPS, capture, fused_optimizer, on_side_stream
from deepinit.lifecycle import RunRecord, essentials, write_whole
from deepinit.model import ACTIVATIONS, MLP
from deepinit.sweep import result_settings
from deepinit.train import apply_process_settings, build, job_scope, layer_stats, predict_trainability, validate

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

    The members stay usable as plain MLPs: their parameters become views into the stack, so LayerStats can
    hook a member and a member's forward sees the weights the stack trains."""

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
        self.act = ACTIVATIONS[self.activation]()
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


def _limit(limit: int | float, total: int) -> int:
    return min(total, limit) if isinstance(limit, int) else int(total * limit)


class Member:
    """One run of the group: its config, folder, logger, statistics and results."""

    def __init__(self, index: int, cfg: DictConfig, run_dir: Path, model: MLP, init_used: dict[str, Any]) -> None:
        self.index, self.cfg, self.run_dir, self.model, self.init_used = index, cfg, Path(run_dir), model, init_used
        self.record = RunRecord(run_dir)
        self.record.configure(cfg)
        self.logger = self.record.open_logger()
        self.stats = layer_stats(cfg, init_used)
        self.record.summary["theory"] = predict_trainability(cfg, model, init_used)
        self.trainer = SimpleNamespace(  # what LayerStats reads of a Trainer
            is_global_zero=True, logger=self.logger, log_dir=str(run_dir), default_root_dir=str(run_dir), global_step=0
        )
        self.module = SimpleNamespace(model=model)
        self.divergence: dict[str, Any] | None = None
        self.frozen: list[Tensor] = []  # its slices of the parameters, once diverged
        self.val_acc_history: list[float] = []
        self.metrics: dict[str, float] = {}

    def observes(self, step: int) -> bool:
        return self.stats is not None and self.divergence is None and step % self.stats.every_n_steps == 0

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.logger.log_metrics(metrics, step)
        self.metrics.update(metrics)


def _stacked_batches(loaders: Sequence[TensorBatches]):
    """Each member's next pass, as its lone run's loader makes it (same seed, same order), stacked: one gather
    of [K, batch] indices a step, and no per-member copy of the shuffled data set."""
    orders = torch.stack([loader.next_order() for loader in loaders])
    x, y, size = loaders[0].x, loaders[0].y, loaders[0].batch_size
    for start in range(0, orders.shape[1], size):
        index = orders[:, start : start + size]
        yield x[index], y[index]


class GroupStep:
    """The group's training step in two halves, so that the host can look at the members' losses between
    them: forward and backward (one [2, K] tensor of losses and accuracies out), then the optimizer's update.

    With `graph` (CUDA, fast=true) each half is captured once as a CUDA graph after WARMUP_STEPS eager steps
    on a side stream, and replayed on every step that nobody observes and whose batch has the usual size; the
    others run eagerly on the same parameters, gradients and optimizer state, as the lone fast step does."""

    def __init__(self, stack: StackedMLP, optimizer: torch.optim.Optimizer, device: torch.device, graph: bool):
        self.stack, self.optimizer, self.device = stack, optimizer, device
        self.graph_wanted = graph and device.type == "cuda"
        self.forward_graph: tuple[torch.cuda.CUDAGraph, Tensor] | None = None
        self.update_graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[Tensor, Tensor] | None = None
        self.eager_steps = 0
        self.replaying = False  # whether this step's forward was replayed (then its update is, where it can be)
        self.update_capturable = True

    @property
    def captured(self) -> bool:
        return self.forward_graph is not None

    def _forward_backward(self, x: Tensor, y: Tensor, keep: bool) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        logits, pre, post = self.stack.observed_forward(x, keep)
        per_sample = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        losses = per_sample.view(len(x), -1).mean(1)
        losses.sum().backward()  # each member's gradient is its own loss's
        return torch.stack([losses.detach(), (logits.argmax(2) == y).to(losses.dtype).mean(1)]), pre, post

    def forward_backward(self, x: Tensor, y: Tensor, keep: bool) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Losses and accuracies [2, K]; with keep, every layer's pre-activations (with gradients) and activations."""
        if self.static is None:
            self.static = (torch.empty_like(x), torch.empty_like(y))
        replayable = self.graph_wanted and not keep and x.shape == self.static[0].shape
        if replayable and not self.captured and self.eager_steps >= WARMUP_STEPS:
            self.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates (and rewrites) them
            sx, sy = self.static
            self.forward_graph = capture(lambda: self._forward_backward(sx, sy, False)[0], "batched step")
            self.graph_wanted = self.captured
        self.replaying = replayable and self.captured
        if self.replaying:
            self.static[0].copy_(x)
            self.static[1].copy_(y)
            graph, out = self.forward_graph
            graph.replay()
            return out, [], []
        # Eager. Gradients stay allocated once a graph holds them: its backward writes into those tensors.
        self.optimizer.zero_grad(set_to_none=not self.captured)
        if self.graph_wanted and not self.captured:
            return on_side_stream(lambda: self._forward_backward(x, y, keep), self.device)
        return self._forward_backward(x, y, keep)

    def update(self) -> None:
        """The optimizer's step for every member: replayed when this step's forward was, and it can be."""
        if self.replaying and self.update_graph is None and self.update_capturable:
            captured = capture(self.optimizer.step, "batched update")
            self.update_capturable = captured is not None
            self.update_graph = captured[0] if captured else None
        if self.replaying and self.update_graph is not None:
            self.update_graph.replay()
        elif self.graph_wanted and not self.captured:  # a warm-up step
            on_side_stream(self.optimizer.step, self.device)
            self.eager_steps += 1
        else:
            self.optimizer.step()


def train_group(
    cfgs: Sequence[DictConfig], run_dirs: Sequence[Path], on_step: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """Train same-shape runs (equal `group_key`) as one stacked model; write and return each one's summary.
    on_step(step) is called before each training step (scripts/bench.py times the steps with it)."""
    with job_scope():  # as a lone run: the process's RNG, threads and flags are as they were afterwards
        return _train_group(cfgs, run_dirs, on_step)


def _train_group(
    cfgs: Sequence[DictConfig], run_dirs: Sequence[Path], on_step: Callable[[int], None] | None
) -> list[dict[str, Any]]:
    keys = {group_key(cfg) for cfg in cfgs}
    if len(keys) != 1:
        raise ValueError("train_group needs runs of one shape and loop (equal group_key)")
    for cfg in cfgs:
        validate(cfg)
    cfg0 = cfgs[0]
    apply_process_settings(cfg0)
    datamodule = None
    members: list[Member] = []
    for k, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs, strict=True)):
        datamodule, module, init_used = build(cfg, datamodule)  # exactly as the lone run builds its model
        members.append(Member(k, cfg, run_dir, module.model, init_used))
    accelerator = cfg0.trainer.accelerator
    device = torch.device("cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu")
    datamodule.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in datamodule.splits.items()}
    stack = StackedMLP([m.model for m in members]).to(device)
    optimizer_factory = instantiate(cfg0.optim)
    # fused where it exists, as the lone run's fast step: one kernel for every member's update
    graph = cfg0.fast and device.type == "cuda"
    optimizer = cfg0.fast and fused_optimizer(optimizer_factory, stack.parameters(), capturable=graph)
    group_step = GroupStep(stack, optimizer or optimizer_factory(stack.parameters()), device, graph and bool(optimizer))
    trainer_cfg = cfg0.trainer
    batch_size = cfg0.data.batch_size
    loaders = [
        TensorBatches(*datamodule.splits["train"], batch_size, shuffle=True, seed=cfg.data.shuffle_seed) for cfg in cfgs
    ]
    n_train = _limit(trainer_cfg.limit_train_batches, len(loaders[0]))
    max_steps = trainer_cfg.max_steps if trainer_cfg.max_steps and trainer_cfg.max_steps > 0 else math.inf
    log_every = trainer_cfg.log_every_n_steps
    for member in members:
        if member.stats is not None:
            member.stats.on_fit_start(member.trainer, member.module)
    step, epochs = 0, 0
    shared = " ".join(f"{k}={v}" for k, v in essentials(cfg0).items() if k not in ("init", "seed"))
    log.info(f"deepinit: a batched group of {len(members)} runs | {shared} | device {device}")
    live = members
    max_epochs = trainer_cfg.max_epochs  # as Lightning reads it: -1 is no limit; null is 1000 unless max_steps
    if max_epochs is None:
        max_epochs = 1000 if max_steps == math.inf else math.inf
    elif max_epochs == -1:
        max_epochs = math.inf
    total = min(max_steps, max_epochs * n_train)
    progress = tqdm(
        total=None if total == math.inf else int(total), desc=f"batched, {len(members)} runs", mininterval=0.5
    )
    try:
        for epoch in itertools.count():
            if epoch >= max_epochs:
                break
            for batch_idx, (x, y) in enumerate(_stacked_batches(loaders)):
                if batch_idx >= n_train or step >= max_steps or not live:
                    break
                if on_step is not None:
                    on_step(step)
                _train_step(group_step, members, x, y, step, epoch)
                step += 1
                live = [m for m in members if m.divergence is None]
                progress.update()
                if live:
                    mean = sum(m.loss for m in live) / len(live)
                    progress.set_postfix(
                        epoch=epoch, mean_loss=f"{mean:.3f}", diverged=len(members) - len(live), refresh=False
                    )
                if step % log_every == 0:
                    for m in live:
                        m.log({"train/loss": m.loss, "train/acc": m.acc, "epoch": float(epoch)}, step - 1)
            else:
                batch_idx = n_train
            epochs = epoch + 1  # as Lightning's current_epoch after fit: the epochs entered
            if not live or batch_idx < n_train:  # as Lightning: an epoch cut short by max_steps is not validated
                break
            _evaluate(stack, live, datamodule, "val", trainer_cfg.limit_val_batches, step - 1, epoch)
        _evaluate(stack, live, datamodule, "test", trainer_cfg.limit_test_batches, step, epochs)
        progress.close()
        for member in members:
            if member.stats is not None:
                member.trainer.global_step = step
                member.stats._finish(member.trainer)
        kind = "batched, CUDA graph" if group_step.captured else "batched"
        return [_finish(m, step, epochs, device, trainer_cfg, kind) for m in members]
    except BaseException as e:
        progress.close()
        instead = None
        for member in members:  # each member's summary says how the group ended, those not written yet
            if not member.record.closed:
                instead = member.record.close(e) or instead
        if instead is not None:
            raise instead  # its cause is the error itself
        raise


def _train_step(group_step: GroupStep, members: list[Member], x: Tensor, y: Tensor, step: int, epoch: int) -> None:
    stack, optimizer = group_step.stack, group_step.optimizer
    observers = [m for m in members if m.observes(step)]
    # On a logging step the same one pass keeps every layer's tensors, which each observing member's LayerStats
    # gets sliced to its own: what its hooks would capture in a lone run.
    out, pre, post = group_step.forward_backward(x, y, keep=bool(observers))
    for member in observers:
        k = member.index
        grads = [t.grad[k] for t in pre] if all(t.grad is not None for t in pre) else None
        member.stats.observe(step, x[k], [t[k] for t in pre], [t[k] for t in post], grads)
        for i, linear in enumerate(member.model.linears):  # the member's weight gradients, as views
            linear.weight.grad = stack.weights[i].grad[k]
            if stack.biases:
                linear.bias.grad = stack.biases[i].grad[k]
    losses, accs = out.tolist()  # the group's one host read a step
    for member in members:
        member.loss, member.acc = losses[member.index], accs[member.index]
        if not math.isfinite(member.loss) and member.divergence is None:
            # Divergence is a result: record it as a lone run does, and freeze this member from here on.
            member.divergence = {
                "step": step,
                "epoch": epoch,
                "loss": member.loss,
                "layer": member.model.first_nonfinite_layer(x[member.index]),
            }
            member.frozen = [p[member.index].clone() for p in stack.parameters()]
    for member in observers:
        member.stats.on_before_optimizer_step(member.trainer, member.module, optimizer)
    group_step.update()
    with torch.no_grad():
        for member in members:
            if member.frozen:
                for p, kept in zip(stack.parameters(), member.frozen, strict=True):
                    p[member.index].copy_(kept)
    for member in observers:
        member.stats.on_train_batch_end(member.trainer, member.module, None, None, 0)
        for p in member.model.parameters():
            p.grad = None  # the views into this step's gradients


@torch.no_grad()
def _evaluate(stack: StackedMLP, members: list[Member], datamodule, split: str, limit, step: int, epoch: int) -> None:
    if not members:
        return
    x_all, y_all = datamodule.splits[split]
    batches = TensorBatches(x_all, y_all, datamodule.eval_batch_size)
    n = _limit(limit, len(batches))
    if n == 0:
        return  # as Lightning with limit_*_batches=0: not evaluated
    index = torch.tensor([m.index for m in members], device=x_all.device)
    total_loss = torch.zeros(len(members), device=x_all.device, dtype=torch.float64)
    total_acc = torch.zeros_like(total_loss)
    count = 0
    for i, (x, y) in enumerate(batches):
        if i >= n:
            break
        logits = stack(x.expand(len(stack.members), *x.shape))[index]
        loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(members)), reduction="none").view(len(members), -1)
        total_loss += loss.mean(1).double() * len(x)  # Lightning's epoch mean: batch means weighted by batch size
        total_acc += (logits.argmax(2) == y).double().mean(1) * len(x)
        count += len(x)
    losses, accs = (total_loss / count).tolist(), (total_acc / count).tolist()
    for member, loss, acc in zip(members, losses, accs, strict=True):
        member.log({f"{split}/loss": loss, f"{split}/acc": acc, "epoch": float(epoch)}, step)
        if split == "val":
            member.val_acc_history.append(acc)


def _finish(
    member: Member, step: int, epochs: int, device: torch.device, trainer_cfg: DictConfig, kind: str
) -> dict[str, Any]:
    """The member's summary.json (the fields a lone run writes), its HParams row and its checkpoint."""
    record = member.record
    with record:
        return _conclude(member, step, epochs, device, trainer_cfg, kind)


def _conclude(
    member: Member, step: int, epochs: int, device: torch.device, trainer_cfg: DictConfig, kind: str
) -> dict[str, Any]:
    record = member.record
    steps = step
    if member.divergence is not None:
        steps = member.divergence["step"] + 1
        record.diverged(member.divergence, member.cfg.depth)
    history = member.stats.history if member.stats is not None else {}
    record.conclude(
        member.metrics, member.val_acc_history, history,
        init=member.init_used, steps=steps, epochs=epochs, device=str(device), training_step=kind,
    )  # fmt: skip
    member.logger.save()  # hparams.yaml, as Lightning's loop saves it
    if trainer_cfg.get("enable_checkpointing", True):
        folder = member.run_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        # the keys Lightning's checkpoint gives the same weights: state_dict["model.linears.0.weight"], ...
        state = {f"model.{k}": v.detach().cpu().clone() for k, v in member.model.state_dict().items()}
        last_epoch = max(epochs - 1, 0)
        checkpoint = {"epoch": last_epoch, "global_step": steps, "state_dict": state}
        buffer = io.BytesIO()  # through memory, so that a full disk is an OSError that says so
        torch.save(checkpoint | {"pytorch-lightning_version": L.__version__}, buffer)
        write_whole(folder / f"epoch={last_epoch}-step={steps}.ckpt", buffer.getbuffer())
    return record.summary
