"""A run's checkpoints, all in <run>/checkpoints/: what writes them, how, and which one a resumed run goes on from.

- `interrupted.ckpt` (InterruptCheckpoint): the state a stopped run reached (Ctrl-C, SIGTERM, a preemption).
- `periodic-step=<n>.ckpt` (`periodic`, checkpoint.every_minutes or every_n_steps): the newest only, so that a kill
  with no warning (kill -9, the OOM killer, a lost node) loses at most that much training.
- `epoch=<e>-step=<n>.ckpt`: Lightning's own, the last epoch's (trainer.enable_checkpointing).

Every one is written whole or not at all (AtomicCheckpointIO: a temporary file in the same folder, flushed to disk,
then renamed over the name), and a newer one replaces an older only once it is complete: a kill during a write
leaves the previous checkpoint usable. `newest_usable` is the one a resumed run goes on from, whichever kind.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from deepinit.base.private_api import epoch_end_as_next_epoch_start, save_on_the_clock
from deepinit.results.summary import PART, write_whole

log = logging.getLogger(__name__)

FOLDER = "checkpoints"
INTERRUPTED = "interrupted.ckpt"
PERIODIC = "periodic-{step}"  # ModelCheckpoint's filename pattern: periodic-step=120.ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, written whole or not at all in the checkpoint's own folder (Lightning's own
    writes a temporary file where the system keeps them and moves it into place, which between file systems is
    a copy that a kill can leave half done)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_whole(path, buffer.getbuffer(), sync=True)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's reader, with an epoch's own checkpoint read as the next epoch's start: resumed as saved, every
        later epoch number came out one too high (private_api.epoch_end_as_next_epoch_start)."""
        checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        epoch_end_as_next_epoch_start(checkpoint)
        return checkpoint


class InterruptCheckpoint(OnExceptionCheckpoint):
    """Lightning's on-exception checkpoint, for a stopped run only (Ctrl-C, a stop signal: deepinit.run.stopping; a
    failing run, a full disk above all, gets none): the state the run reached, which a resumed run goes on from.
    Lightning removes it when a run that uses it ends well."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(dirpath=Path(run_dir) / FOLDER, filename=Path(INTERRUPTED).stem)

    def on_exception(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        exception = args[-1] if args else kwargs.get("exception")
        if isinstance(exception, KeyboardInterrupt | SIGTERMException):
            super().on_exception(trainer, *args, **kwargs)


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, also on the clock under the fast step. For a module that optimizes by hand (the
    fast step) Lightning saves only every_n_train_steps, never on train_time_interval (checkpoint.every_minutes, the
    default: a kill -9 lost everything since the last epoch); here the clock is read at a batch's end as Lightning
    reads it for the eager step (both steps have stepped there)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if not pl_module.automatic_optimization:
            save_on_the_clock(self, trainer)


def periodic(run_dir: Path, every_minutes: float | None, every_n_steps: int | None) -> ModelCheckpoint | None:
    """The ModelCheckpoint that keeps the newest periodic checkpoint: every_n_steps steps apart where set, else
    every_minutes of training apart; None where neither is set."""
    if every_minutes is None and every_n_steps is None:
        return None
    interval = None if every_minutes is None or every_n_steps is not None else timedelta(minutes=every_minutes)
    return PeriodicCheckpoint(
        dirpath=Path(run_dir) / FOLDER, filename=PERIODIC, save_top_k=1, every_n_train_steps=every_n_steps,
        train_time_interval=interval, save_on_train_epoch_end=False,
    )  # fmt: skip


def intact(path: Path) -> bool:
    """Whether a checkpoint file is whole: a zip archive (torch.save's format) whose every member's CRC checks."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def newest_usable(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of the run, of any kind (the last written is the furthest along: a resumed run
    writes after the one it went on from); damaged ones are said and passed over."""
    candidates = sorted((Path(run_dir) / FOLDER).glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for path in candidates:
        if intact(path):
            return path
        log.warning(f"{path}: damaged (a write cut short?); passed over for an older checkpoint")
    return None


def step_of(path: Path, summary_steps: int | None) -> int | None:
    """The step a checkpoint holds: in its name (periodic-step=120, epoch=1-step=860), else (interrupted.ckpt) the
    stopped run's summary's."""
    found = re.search(r"step=(\d+)", Path(path).name)
    return int(found.group(1)) if found else summary_steps


def remove_stale(run_dir: Path) -> None:
    """Remove what a run that ended well no longer needs: periodic checkpoints, half-written files, and epoch
    checkpoints but the newest (a run resumed from an epoch's checkpoint restores a ModelCheckpoint state saved before
    that file existed, so Lightning does not replace it)."""
    folder = Path(run_dir) / FOLDER
    epochs = sorted(folder.glob("epoch=*.ckpt"), key=lambda p: step_of(p, -1))
    for path in [*folder.glob("periodic-*.ckpt"), *folder.glob(f"*{PART}"), *epochs[:-1]]:
        path.unlink(missing_ok=True)

