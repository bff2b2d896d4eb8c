"""Every private name of Lightning, TensorBoard and torch that the study relies on, in one place.

Each use says what public API is missing. tests/test_private_api.py fails when any of these names changes, so an
upgrade of those libraries breaks one test here first, not a run somewhere.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter


def count_replayed_update(optimizer: LightningOptimizer) -> None:
    """Count a replayed CUDA graph's update as the optimizer step it is. Under manual optimization Lightning counts
    global_step in these two hooks, which LightningOptimizer.step calls around the torch optimizer's step; a replay
    runs that step's kernels without the call, and Lightning has no public way to count a step it did not run."""
    optimizer._on_before_step()
    optimizer._on_after_step()


def align_logging_step(trainer: Any) -> None:
    """After a resume from a checkpoint taken mid-batch (Ctrl-C), set Lightning's logging-step counter back to the
    optimizer steps. Lightning bumps it by one on a restart, as if the checkpoint had been saved at a batch's end, so
    the logged steps would run one ahead; the counter has no public setter."""
    loop = trainer.fit_loop.epoch_loop
    if trainer.accumulate_grad_batches == 1 and loop._batches_that_stepped != trainer.global_step:
        loop._batches_that_stepped = trainer.global_step


def epoch_end_as_next_epoch_start(checkpoint: dict[str, Any]) -> None:
    """Make an epoch's own checkpoint (epoch=<e>-step=<n>.ckpt, saved in on_train_epoch_end: the fit loop's epoch
    processed, not yet completed) the state of the next epoch's start. Resumed as saved, with training bounded by
    steps (trainer.max_steps) Lightning restarts inside the finished epoch: it runs that epoch's end again, and the
    data module (deepinit.data.datamodule, which goes on from the loop's counters) hands it the finished pass's
    empty rest as an epoch of its own, so every later epoch number came out one too high. The loops' progress
    counters in a checkpoint have no public API."""
    loop = checkpoint.get("loops", {}).get("fit_loop")
    if loop is None:
        return
    epochs, batches = loop["epoch_progress"], loop["epoch_loop.batch_progress"]
    if not batches.get("is_last_batch") or epochs["current"]["processed"] != epochs["current"]["completed"] + 1:
        return
    for count in (epochs["total"], epochs["current"]):
        count["completed"] = count["processed"]
    batches["current"] = dict.fromkeys(batches["current"], 0)
    batches["is_last_batch"] = False


def save_on_the_clock(callback: Any, trainer: Any) -> None:
    """Have a ModelCheckpoint with a train_time_interval save once that much time has passed since its last save, as
    its on_train_batch_end does under automatic optimization (rank 0's clock decides for every process). Under
    manual optimization that hook saves only every_n_train_steps, never on the clock, and neither the clock nor the
    save has a public entry."""
    interval = callback._train_time_interval
    if interval is None:
        return
    now = time.monotonic()
    due = trainer.strategy.broadcast(now - callback._last_time_checked >= interval.total_seconds())
    if not due or callback._should_skip_saving_checkpoint(trainer):
        return
    callback._last_time_checked = now
    candidates = callback._monitor_candidates(trainer)
    callback._save_topk_checkpoint(trainer, candidates)
    callback._save_last_checkpoint(trainer, candidates)


def spawns_processes(launcher: Any) -> bool:
    """Whether the strategy starts its processes itself, by spawning or forking (ddp_spawn, ddp_fork, ddp_notebook):
    Lightning says which launcher a strategy uses only through these private classes."""
    return isinstance(launcher, _MultiProcessingLauncher)


def reruns_the_script(launcher: Any) -> bool:
    """Whether the strategy starts its other processes by running the script again (ddp outside torchrun/SLURM),
    which inside a Hydra multirun would rerun the whole sweep."""
    if not isinstance(launcher, _SubprocessScriptLauncher):
        return False
    return not launcher.cluster_environment.creates_processes_externally


def open_experiment(logger: TensorBoardLogger) -> SummaryWriter | None:
    """The logger's SummaryWriter if it was ever opened (its public `experiment` property would open one)."""
    return logger._experiment


def sanitize_hparams(logger: TensorBoardLogger, params: dict[str, Any]) -> dict[str, Any]:
    """Lightning's own conversion of hyperparameter values for TensorBoard (None as "None", ...), so that a row
    written by hand matches the ones Lightning writes; it exists only as a private static method."""
    return logger._sanitize_params(params)


def event_writer(writer: SummaryWriter) -> Any:
    """The SummaryWriter's FileWriter, made if need be: TensorBoard's hparams summaries are written through it (the
    public add_hparams writes them into a new run folder of their own)."""
    return writer._get_file_writer()


def foreach_norm(tensors: list[Tensor]) -> list[Tensor]:
    """One fused kernel for the norms of many tensors (torch's public API has only the per-tensor norm)."""
    return torch._foreach_norm(tensors)


def foreach_sub(a: list[Tensor], b: list[Tensor]) -> list[Tensor]:
    """a - b for lists of tensors, in one fused kernel."""
    return torch._foreach_sub(a, b)


def hydra_args_parser() -> Any:
    """Hydra's command-line parser (its flags -m, --cfg, --help, ...), to put the flags before the overrides and to
    refuse a bad one in one line before Hydra runs: hydra.main parses sys.argv itself, with no public parser."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()
