"""A run's life from its first line to its summary.json: the one place that decides how a run ends.

Every run goes through a `RunRecord`: a lone run (deepinit.train), each member of a batched group
(deepinit.batched) and, under DDP, every rank (rank 0 writes the file). It starts `failed` and ends as one of

- ok: trained and tested (`conclude`);
- diverged: the loss stopped being finite, a result of the study (`diverged`, then `conclude`);
- interrupted: Ctrl-C; the reason says where it stopped and how to go on (RunInterrupted is raised);
- failed: anything else; bad settings and bad data keep their one line, a full disk becomes NoRoomError's.

`with RunRecord(run_dir) as record:` turns whatever ends the block into that status and writes
summary.json whole (on a full disk it first removes the truncated checkpoint, which makes room for it; where
even the summary cannot be written, the run's own one-line error still goes up). The run's TensorBoard logger
(RunLogger) is opened and closed here too, with its HParams row written once at the end, with the final metrics.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import shutil
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams as tensorboard_hparams

from deepinit.provision import DataError
from deepinit.sweep import INTERRUPTED_CHECKPOINT, clear_attempt, earlier_summary, same_settings

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting the study cannot run with; the message names it and the valid choices."""


class NoRoomError(RuntimeError):
    """A run could not write its files: the disk, a quota or the file-size limit is full."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; its summary says interrupted. A KeyboardInterrupt still, so that it stops a sweep
    (Hydra's launchers record an Exception as the job's failure and go on)."""

    def __init__(self, summary: dict[str, Any]) -> None:
        super().__init__(summary["reason"])
        self.summary = summary


# What a run's user can mend: bad settings, bad data, a full disk. Their one line is the whole message: no traceback.
USER_ERRORS = (ConfigError, DataError, NoRoomError)

# ENOSPC: disk full; EDQUOT: quota; EFBIG: the process's file-size limit (ulimit -f)
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def no_room(error: BaseException, run_dir: Path) -> NoRoomError | None:
    """The one-line error, naming run_dir, for a write that failed for want of space (anywhere in error's chain),
    else None. A NoRoomError already made for another folder is made again for this one."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    cause = next((c for c in chain if isinstance(c, OSError) and c.errno in NO_ROOM), None)
    if cause is None:
        return next((c for c in chain if isinstance(c, NoRoomError)), None)
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    free = shutil.disk_usage(existing).free / 2**20
    return NoRoomError(
        f"no room to write the run's files in {run_dir} ({cause.strerror}; {free:,.0f} MiB free there); free some"
        " space, or leave out the checkpoints (the largest files) with trainer.enable_checkpointing=false",
    )


def essentials(cfg: DictConfig) -> dict[str, Any]:
    """The settings a reader compares runs by (summary.json's `config`, the HParams row, the start line)."""
    return {
        "init": cfg.init.name,
        "depth": cfg.depth,
        "width": cfg.width,
        "activation": cfg.activation,
        "bias": cfg.bias,
        "optimizer": cfg.optim._target_.rsplit(".", 1)[-1].lower(),
        "lr": cfg.optim.lr,
        "batch_size": cfg.data.batch_size,
        "max_epochs": cfg.trainer.max_epochs,
        "data": cfg.data.dataset,
        "seed": cfg.seed,
    }


def training_label(config: dict[str, Any]) -> str:
    """The optimizer, learning rate and seed in one short cell of the HParams table: 'adam, 0.0003, 0'."""
    return f"{config['optimizer']}, {config['lr']:g}, {config['seed']}"


class RunLogger(TensorBoardLogger):
    """One event file per run. Lightning finalizes (closes) its logger after fit and again after test, and a
    closed writer reopens as a new event file on the next write; here those only flush, and `close` ends the
    writer once, when the run is over (failures included). Its HParams entry opens on the study's columns."""

    # TensorBoard's HParams dashboard ticks at most 5 hyperparameter columns when it opens (a fixed 5 in its
    # query pane): those whose experiment entry says `differs`, by name, then the rest by name. Left to itself it
    # showed activation, batch_size, bias, data, depth; these five are the study's columns instead, the last one
    # short enough for a cell (each of the three is also a column of its own, one tick away).
    TRAINING = "optimizer, lr, seed"
    SHOWN = ("init", "depth", "activation", "width", TRAINING)

    def __init__(self, run_dir: Path) -> None:
        super().__init__(save_dir=str(run_dir), name="", version="", default_hp_metric=False)

    @rank_zero_only  # under DDP the other processes' experiment is a dummy with no file writer
    def log_hyperparams(
        self, params: dict[str, Any], metrics: dict[str, float] | None = None, step: int | None = None
    ) -> None:
        """Lightning's log_hyperparams, with the HParams summaries written here: the TRAINING label added and the
        experiment's SHOWN columns marked to be ticked on open; hparams.yaml then holds the row."""
        super().log_hyperparams(params)  # with no metrics, Lightning only keeps them for hparams.yaml
        if not metrics:
            return
        # Lightning writes hparams.yaml once, when it is missing: at the start, before there is a row to write
        save_hparams_to_yaml(Path(self.log_dir) / self.NAME_HPARAMS_FILE, self.hparams)
        self.log_metrics(metrics, step)
        shown = self._sanitize_params({**params, self.TRAINING: training_label(params)})  # Lightning's: None as "None"
        experiment, start, end = tensorboard_hparams(shown, metrics)
        value = experiment.value[0]
        data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in self.SHOWN
        value.metadata.plugin_data.content = data.SerializeToString()
        writer = self.experiment._get_file_writer()
        for summary in (experiment, start, end):
            writer.add_summary(summary, step)

    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self._experiment.flush()

    def close(self, status: str) -> None:
        super().finalize(status)


def _scalar(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def final_metrics(metrics: dict[str, float], val_acc_history: list[float]) -> dict[str, float | None]:
    """summary.json's metrics from the last logged values ("test/acc", ...) and the per-epoch val accuracy."""
    return {
        "test_acc": _scalar(metrics, "test/acc"),
        "test_loss": _scalar(metrics, "test/loss"),
        "val_acc": val_acc_history[-1] if val_acc_history else None,
        "best_val_acc": max(val_acc_history, default=None),
        "val_loss": _scalar(metrics, "val/loss"),
        "train_loss": _scalar(metrics, "train/loss"),
        "train_acc": _scalar(metrics, "train/acc"),  # the last logged batch's
    }


def hparams_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The HParams row: the config essentials, and the theory's chi_1, xi_c and depth / xi_c."""
    t = summary.get("theory") or {}
    return {**summary["config"], **{f"theory/{k}": t[k] for k in ("chi_1", "xi_c", "depth_over_xi_c") if k in t}}


def hparams_metrics(summary: dict[str, Any], history: dict[tuple[str, str], list]) -> dict[str, float]:
    """The run's final metrics as TensorBoard's HParams dashboard ranks them (NaN where not measured); history:
    the layer statistics' record (deepinit.recorder.LayerRecorder.history), for the init's step-0 drift."""
    nan = float("nan")
    m = summary.get("metrics") or {}
    divergence = summary.get("divergence") or {}
    out = {
        f"final/{k}": nan if m.get(k) is None else float(m[k])
        for k in ("test_acc", "test_loss", "best_val_acc", "val_acc", "train_loss")
    }
    out["final/diverged"] = float(summary["status"] == "diverged")
    out["final/divergence_step"] = float(divergence.get("step", -1))
    # Step-0 diagnostics of the init itself: how far the forward signal and the gradient drift across depth.
    act = dict(history.get(("activations", "sqr"), [])).get(0)
    grad = dict(history.get(("gradients", "sqr"), [])).get(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["final/step0_ln_act_sqr_last_over_first"] = float(np.log(act[-1] / act[0])) if act is not None else nan
        out["final/step0_ln_grad_sqr_first_over_last"] = float(np.log(grad[0] / grad[-1])) if grad is not None else nan
    return out


def write_whole(path: Path, data: bytes | memoryview) -> None:
    """Write path whole or not at all: a full disk leaves no truncated file to be read as a result."""
    part = path.with_name(path.name + ".part")
    try:
        part.write_bytes(data)
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_whole(run_dir / "summary.json", (json.dumps(_finite(summary), indent=2) + "\n").encode())


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so summary.json stays valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def remove_truncated_checkpoints(run_dir: Path) -> None:
    """Lightning writes a checkpoint to the temp folder and then copies it into place, so a full disk can leave a
    truncated one; a checkpoint is a zip archive, whose directory is written last."""
    for checkpoint in run_dir.glob("checkpoints/*.ckpt"):
        if not zipfile.is_zipfile(checkpoint):
            checkpoint.unlink()


class RunRecord:
    """One run's summary.json, from start to end (see the module docstring). `trainer`, once set, says where
    Ctrl-C stopped the run (its global_step and current_epoch) and whether Lightning's graceful shutdown ran."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.start = Path(run_dir), time.time()
        started = datetime.fromtimestamp(self.start).isoformat(timespec="milliseconds")
        self.summary: dict[str, Any] = {
            "status": "failed", "reason": None, "config": None, "run_dir": str(run_dir), "started": started,
        }  # fmt: skip
        self.logger: RunLogger | None = None
        self.trainer: Any = None
        self.closed = False

    def configure(self, cfg: DictConfig) -> None:
        self.summary["config"] = essentials(cfg)
        self.summary["settings"] = OmegaConf.to_container(cfg, resolve=True)  # all of it, to tell a rerun apart

    def open_logger(self) -> RunLogger:
        self.logger = RunLogger(self.run_dir)
        return self.logger

    def resume(self, cfg: DictConfig) -> Path | None:
        """The checkpoint to go on from in run_dir, with the interrupted attempt's history carried into the
        summary; None (run_dir cleared) when the attempt left none. ConfigError when it ran with other settings."""
        earlier = earlier_summary(self.run_dir)
        if earlier is None or earlier.get("status") != "interrupted":
            status = "no summary.json" if earlier is None else f"its status is {earlier.get('status')}"
            raise ConfigError(f"resume={self.run_dir}: nothing to resume ({status}); only an interrupted run resumes")
        if not same_settings(earlier, cfg):
            raise ConfigError(
                f"resume={self.run_dir}: the config composed now differs from the run's own; edit it back first"
            )
        checkpoint = self.run_dir / INTERRUPTED_CHECKPOINT
        if not checkpoint.is_file():  # interrupted before its first step: nothing to go on from
            log.info(f"resuming {self.run_dir}: no checkpoint was left, so the run starts over there")
            clear_attempt(self.run_dir)
            return None
        # the run's history: its first start, then each resumption (when, from which step)
        summary = self.summary
        summary["resumed"] = [*earlier.get("resumed", []), {"at_step": earlier.get("steps"), "at": summary["started"]}]
        summary["started"] = earlier["started"]
        summary["earlier_wall_time_s"] = earlier.get("wall_time_s", 0) + earlier.get("earlier_wall_time_s", 0)
        return checkpoint

    def diverged(self, divergence: dict[str, Any], depth: int) -> None:
        """status diverged, the record, and the one-line reason (step, loss, first non-finite layer)."""
        d = divergence
        where = f"first non-finite output at layer {d['layer']} of {depth}" if d["layer"] else "outputs finite"
        self.summary.update(status="diverged", divergence=d)
        self.summary["reason"] = f"loss became {d['loss']} at step {d['step']} (epoch {d['epoch']}); {where}"
        log.warning(f"diverged: {self.summary['reason']} ({self.run_dir.name})")

    def conclude(
        self,
        metrics: dict[str, float],
        val_acc_history: list[float],
        history: dict[tuple[str, str], list],
        **fields: Any,
    ) -> None:
        """The run trained to its end: ok unless it diverged; its final metrics (last logged values), `fields`
        (init, steps, epochs, device, training_step), and the HParams row with the final metrics, written once:
        TensorBoard's HParams columns come from the first hparams summary a run writes."""
        summary = self.summary
        if summary["status"] != "diverged":
            summary["status"] = "ok"
        summary["metrics"] = final_metrics(metrics, val_acc_history)
        summary.update(fields)
        summary["hparams_metrics"] = hparams_metrics(summary, history)
        if self.logger is not None:
            self.logger.log_hyperparams(hparams_row(summary), summary["hparams_metrics"], step=summary["steps"])

    def __enter__(self) -> RunRecord:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> bool:
        if not self.closed:
            instead = self.close(error)
            if instead is not None:
                raise instead
        return False

    def close(self, error: BaseException | None = None) -> BaseException | None:
        """End the run as `error` (None: as recorded) says: its status and reason, the logger closed, summary.json
        written. Returns the exception to raise instead of error (RunInterrupted, NoRoomError), if any."""
        self.closed = True
        instead = self._outcome(error) if error is not None else None
        if self.logger is not None:
            try:
                self.logger.close(self.summary["status"])
            except OSError as e:  # the last events would not write (a full disk): the summary still says so
                if error is None:
                    instead = self._outcome(e) or e
                else:
                    log.error(f"{self.run_dir}: event file not closed: {e}")
        self.summary["wall_time_s"] = round(time.time() - self.start + self.summary.pop("earlier_wall_time_s", 0), 2)
        if rank_zero_only.rank == 0:  # under DDP the other processes ran the same job; one writes its summary
            try:
                write_summary(self.run_dir, self.summary)
            except OSError as e:
                if self.summary["status"] == "failed":  # the run's own error goes on up
                    log.error(f"{self.run_dir / 'summary.json'} not written: {e}")
                elif full := no_room(e, self.run_dir):
                    raise full from e
                else:
                    raise
        return instead

    def _outcome(self, error: BaseException) -> BaseException | None:
        summary = self.summary
        if isinstance(error, ConfigError | DataError):
            summary.update(status="failed", reason=str(error))
            return None
        # Ctrl-C: inside fit or test, Lightning shuts down gracefully (callbacks' on_exception: the checkpoint) and
        # ends with sys.exit(1); elsewhere it is the KeyboardInterrupt itself
        if isinstance(error, KeyboardInterrupt) or (
            isinstance(error, SystemExit) and self.trainer is not None and self.trainer.interrupted
        ):
            self._interrupted()
            interrupted = RunInterrupted(summary)
            interrupted.__suppress_context__ = True
            return interrupted
        if isinstance(error, SystemExit):
            return None
        full = no_room(error, self.run_dir)
        summary.update(status="failed", reason=str(full or f"{type(error).__name__}: {error}"))
        if full is None:
            return None
        remove_truncated_checkpoints(self.run_dir)  # which also leaves room for summary.json
        full.__cause__ = error
        return full

    def _interrupted(self) -> None:
        """status interrupted, where, and how to go on."""
        summary, trainer = self.summary, self.trainer
        checkpoint = self.run_dir / INTERRUPTED_CHECKPOINT
        where = "before training started"
        if trainer is not None:
            summary.update(steps=trainer.global_step, epochs=trainer.current_epoch)
            where = f"at step {trainer.global_step} (epoch {trainer.current_epoch})"
        kept = f"checkpoint {checkpoint}" if checkpoint.is_file() else "no checkpoint (it starts over)"
        summary.update(status="interrupted", checkpoint=str(checkpoint) if checkpoint.is_file() else None)
        summary["reason"] = f"interrupted {where}; {kept}; resume with: python scripts/train.py resume={self.run_dir}"


def describe_end(summary: dict[str, Any], runs_root: Path) -> str:
    """The run's last console line: status, accuracy, time, where its logs are and how to view them."""
    m = summary.get("metrics") or {}
    parts = [f"deepinit: {summary['status']}"]
    if summary["status"] == "failed" and summary.get("reason"):
        parts.append(summary["reason"])
    if m.get("test_acc") is not None:
        parts.append(f"test acc {m['test_acc']:.4f} (loss {m['test_loss']:.4f})")
    if m.get("best_val_acc") is not None:
        parts.append(f"best val acc {m['best_val_acc']:.4f}")
    parts.append(f"{summary['wall_time_s']:.0f} s")
    parts.append(f"logs in {summary['run_dir']}")
    parts.append(f"view: tensorboard --logdir {runs_root}")
    return " | ".join(parts)
