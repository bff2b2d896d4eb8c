"""One study run: build data, model, init and trainer from a Hydra config; train, test, summarize.

`run(cfg, run_dir)` is the whole job and returns the summary it writes to `run_dir/summary.json`.
`check_group_choices` lets the command line reject an unknown config-group choice in one line, before
Hydra composes anything.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams as tensorboard_hparams

from deepinit import theory
from deepinit.init_schemes import initialize
from deepinit.layer_stats import LayerStats
from deepinit.model import ACTIVATIONS, MLP
from deepinit.module import Classifier
from deepinit.provision import DataError
from deepinit.sweep import INTERRUPTED_CHECKPOINT, clear_attempt, earlier_summary, same_settings

log = logging.getLogger(__name__)

# A diverged step returns None on purpose (skipping its update); the divergence line already says so.
warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")
# With an OnExceptionCheckpoint among the callbacks (InterruptCheckpoint), Lightning looks for its file on every fit
# and warns when there is none; resuming is asked for explicitly here (resume=), so those warnings say nothing.
warnings.filterwarnings("ignore", message=r"`\.fit\(ckpt_path=None\)` was called without a model")
warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint')


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


class InterruptCheckpoint(OnExceptionCheckpoint):
    """Lightning's on-exception checkpoint, for Ctrl-C only (a failing run, a full disk above all, gets none):
    the state the run reached, which `resume=` goes on from. Removed when a run that uses it ends well."""

    def __init__(self, run_dir: Path) -> None:
        checkpoint = Path(run_dir) / INTERRUPTED_CHECKPOINT
        super().__init__(dirpath=checkpoint.parent, filename=checkpoint.stem)

    def on_exception(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        exception = args[-1] if args else kwargs.get("exception")
        if isinstance(exception, KeyboardInterrupt):
            super().on_exception(trainer, *args, **kwargs)


# ENOSPC: disk full; EDQUOT: quota; EFBIG: the process's file-size limit (ulimit -f)
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def no_room(error: BaseException, run_dir: Path) -> NoRoomError | None:
    """The one-line error for a write that failed for want of space (anywhere in error's chain), else None."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, NoRoomError):
            return cause
        if isinstance(cause, OSError) and cause.errno in NO_ROOM:
            break
        cause = cause.__cause__ or cause.__context__
    else:
        return None
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    free = shutil.disk_usage(existing).free / 2**20
    return NoRoomError(
        f"no room to write the run's files in {run_dir} ({cause.strerror}; {free:,.0f} MiB free there); free some"
        " space, or leave out the checkpoints (the largest files) with trainer.enable_checkpointing=false",
    )


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

    def log_hyperparams(
        self, params: dict[str, Any], metrics: dict[str, float] | None = None, step: int | None = None
    ) -> None:
        """Lightning's log_hyperparams (hparams.yaml), with the HParams summaries written here: the TRAINING label
        added and the experiment's SHOWN columns marked to be ticked on open."""
        super().log_hyperparams(params)  # with no metrics, Lightning only keeps them for hparams.yaml
        if not metrics:
            return
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


def check_group_choices(overrides: Sequence[str], conf_dir: Path) -> None:
    """Raise ConfigError for `group=choice` overrides (comma lists too) naming no file in conf/<group>/."""
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        group = conf_dir / key
        if not sep or not group.is_dir() or "(" in value or "*" in value or key.startswith("hydra/"):
            continue  # plain values, sweep functions and hydra/* groups (plugins add choices) are Hydra's to check
        choices = sorted(p.stem for p in group.glob("*.yaml"))
        for choice in value.split(","):
            if choice not in choices:
                raise ConfigError(f"unknown {key} {choice!r}; choose one of: {', '.join(choices)}")


def check_runs_dir(overrides: Sequence[str]) -> None:
    """Raise ConfigError when a `runs_dir=` override names a folder that cannot be made: Hydra makes the run's
    folder before any of our code runs, and would answer with a traceback."""
    values = [o.partition("=")[2] for o in overrides if o.lstrip("+").startswith("runs_dir=")]
    if not values or "," in values[-1]:
        return
    try:
        Path(values[-1]).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"runs_dir={values[-1]} cannot be made ({e.strerror}); choose a folder you can write to"
        ) from None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's choices


def validate(cfg: DictConfig) -> None:
    checks = [
        (isinstance(cfg.depth, int) and cfg.depth >= 2, f"depth must be an integer >= 2 (got {cfg.depth})"),
        (isinstance(cfg.width, int) and cfg.width >= 1, f"width must be an integer >= 1 (got {cfg.width})"),
        (
            cfg.activation in ACTIVATIONS,
            f"unknown activation {cfg.activation!r}; choose one of: {', '.join(ACTIVATIONS)}",
        ),
        (
            cfg.threads is None or (isinstance(cfg.threads, int) and cfg.threads >= 1),
            f"threads must be null or an integer >= 1 (got {cfg.threads})",
        ),
        (isinstance(cfg.fast, bool), f"fast must be true or false (got {cfg.fast})"),
        (
            cfg.matmul_precision in MATMUL_PRECISIONS,
            f"unknown matmul_precision {cfg.matmul_precision!r}; choose one of: {', '.join(MATMUL_PRECISIONS)}",
        ),
        (isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool), f"seed must be an integer (got {cfg.seed!r})"),
        (_number(cfg.optim.lr) and cfg.optim.lr > 0, f"optim.lr must be a number > 0 (got {cfg.optim.lr})"),
        (
            isinstance(cfg.data.batch_size, int) and cfg.data.batch_size >= 1,
            f"data.batch_size must be an integer >= 1 (got {cfg.data.batch_size})",
        ),
        (
            isinstance(cfg.data.eval_batch_size, int) and cfg.data.eval_batch_size >= 1,
            f"data.eval_batch_size must be an integer >= 1 (got {cfg.data.eval_batch_size})",
        ),
    ]
    if cfg.init.name == "gaussian":
        sw2, sb2 = cfg.init.sigma_w2, cfg.init.sigma_b2
        checks += [
            (_number(sw2) and sw2 > 0, f"init.sigma_w2 must be a number > 0 (got {sw2})"),
            (_number(sb2) and sb2 >= 0, f"init.sigma_b2 must be a number >= 0 (got {sb2})"),
        ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def check_strategy(trainer: L.Trainer) -> None:
    """Raise ConfigError for the multi-process set-ups this study cannot run correctly."""
    launcher = trainer.strategy.launcher
    if isinstance(launcher, _MultiProcessingLauncher):
        raise ConfigError(
            "trainer.strategy=ddp_spawn (or ddp_fork, ddp_notebook) keeps a run's history in the processes it starts, "
            "where its summary cannot read it; use trainer.strategy=ddp for one run, torchrun for a sweep (README)"
        )
    in_multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if (
        in_multirun
        and isinstance(launcher, _SubprocessScriptLauncher)
        and not launcher.cluster_environment.creates_processes_externally
    ):
        raise ConfigError(
            "trainer.strategy=ddp inside -m: Lightning would start each extra process by re-running the whole sweep; "
            "run the sweep as torchrun --nproc_per_node=<devices> scripts/train.py -m ..., or with "
            "hydra/launcher=slurm hydra.launcher.tasks_per_node=<devices>"
        )


def _essentials(cfg: DictConfig) -> dict[str, Any]:
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


def _scalar(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def build(
    cfg: DictConfig, datamodule: L.LightningDataModule | None = None
) -> tuple[L.LightningDataModule, Classifier, dict[str, Any]]:
    """Data module (set up on the CPU unless given), initialized model wrapped for Lightning, what init used."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if datamodule is None:
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
    model = MLP(depth=cfg.depth, width=cfg.width, activation=cfg.activation, bias=cfg.bias)
    init_cfg = OmegaConf.to_container(cfg.init, resolve=True)
    # Data-dependent schemes (lsuv) name the size of the real training batch they measure on.
    batch = datamodule.sample_batch(init_cfg.pop("batch_size"), seed=cfg.seed) if "batch_size" in init_cfg else None
    init_used = initialize(model, batch=batch, **init_cfg)
    return datamodule, Classifier(model, instantiate(cfg.optim), fast=cfg.fast), init_used


def layer_stats(cfg: DictConfig, init_used: dict[str, Any]) -> LayerStats | None:
    """The run's LayerStats callback as `stats=` configures it, with the init's theory; None for stats=off."""
    stats_cfg = OmegaConf.to_container(cfg.stats, resolve=True)
    if not stats_cfg.pop("enabled"):
        return None
    try:
        return LayerStats(**stats_cfg, theory=theory_inputs(cfg, init_used))
    except (TypeError, ValueError) as e:  # LayerStats checks its own settings; here they are the stats.* keys
        raise ConfigError(str(e)) from None


def theory_inputs(cfg: DictConfig, init_used: dict[str, Any]) -> dict[str, Any]:
    """The init as the theory module takes it (scheme, gain, std, bias_std)."""
    return {"scheme": cfg.init.name, "gain": init_used["gain"], "std": cfg.init.get("std"),
            "bias_std": init_used["bias_std"]}  # fmt: skip


def predict_trainability(cfg: DictConfig, model: MLP, init_used: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    """The depth scales of this run's init and whether its depth is within 6 xi_c, said in one line before the
    first step (summary.json's `theory`)."""
    prediction = theory.trainability(model, **theory_inputs(cfg, init_used))
    (log.debug if quiet else log.info)(theory.verdict(prediction))
    return prediction


def hparams_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The HParams row: the config essentials, and the theory's chi_1, xi_c and depth / xi_c."""
    t = summary.get("theory") or {}
    return {**summary["config"], **{f"theory/{k}": t[k] for k in ("chi_1", "xi_c", "depth_over_xi_c") if k in t}}


def make_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """lightning.Trainer from `trainer.*`; a setting Lightning rejects is one ConfigError line with its reason."""
    try:
        return instantiate(cfg.trainer, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise ConfigError(f"lightning.Trainer rejects the trainer.* settings: {cause}") from None


@contextmanager
def job_scope() -> Iterator[None]:
    """Restore, when a run ends, the process-wide state it changes: RNG streams, Lightning's seed variables,
    determinism and precision flags, the thread count, the Ctrl-C handler. Jobs that share a process (Hydra's
    basic launcher, a joblib worker) then start alike, whatever ran before them."""
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG")}
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    precision, threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None  # Lightning ignores Ctrl-C after the first
    try:
        yield
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        torch.set_float32_matmul_precision(precision)
        torch.set_num_threads(threads)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])


def apply_process_settings(cfg: DictConfig) -> None:
    """The run's process-wide settings (job_scope restores the process's own afterwards)."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.set_float32_matmul_precision(cfg.matmul_precision)


def run(cfg: DictConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train and test one configuration; write and return run_dir/summary.json. resume: go on from the checkpoint
    an interrupted attempt left in run_dir (with no checkpoint, start it over there)."""
    with job_scope():
        return _run(cfg, Path(run_dir), resume)


def start_summary(run_dir: Path, start: float) -> dict[str, Any]:
    """A run's summary.json as it begins: failed until it says otherwise."""
    started = datetime.fromtimestamp(start).isoformat(timespec="milliseconds")
    return {"status": "failed", "reason": None, "config": None, "run_dir": str(run_dir), "started": started}


def record_config(summary: dict[str, Any], cfg: DictConfig) -> None:
    summary["config"] = _essentials(cfg)
    summary["settings"] = OmegaConf.to_container(cfg, resolve=True)  # all of it, to tell a rerun apart


def record_divergence(summary: dict[str, Any], divergence: dict[str, Any], depth: int) -> None:
    """status diverged, the record, and the one-line reason (step, loss, first non-finite layer)."""
    d = divergence
    where = f"first non-finite output at layer {d['layer']} of {depth}" if d["layer"] else "outputs finite"
    summary.update(status="diverged", divergence=d)
    summary["reason"] = f"loss became {d['loss']} at step {d['step']} (epoch {d['epoch']}); {where}"


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


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_whole(run_dir / "summary.json", (json.dumps(_finite(summary), indent=2) + "\n").encode())


def write_whole(path: Path, data: bytes | memoryview) -> None:
    """Write path whole or not at all: a full disk leaves no truncated file to be read as a result."""
    part = path.with_name(path.name + ".part")
    try:
        part.write_bytes(data)
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)


def remove_truncated_checkpoints(run_dir: Path) -> None:
    """Lightning writes a checkpoint to the temp folder and then copies it into place, so a full disk can leave a
    truncated one; a checkpoint is a zip archive, whose directory is written last."""
    for checkpoint in run_dir.glob("checkpoints/*.ckpt"):
        if not zipfile.is_zipfile(checkpoint):
            checkpoint.unlink()


def resume_from(cfg: DictConfig, run_dir: Path, summary: dict[str, Any]) -> Path | None:
    """The checkpoint to go on from in run_dir, with the interrupted attempt's history carried into `summary`;
    None (run_dir cleared) when the attempt left none. ConfigError when it ran with other settings."""
    earlier = earlier_summary(run_dir)
    if earlier is None or earlier.get("status") != "interrupted":
        status = "no summary.json" if earlier is None else f"its status is {earlier.get('status')}"
        raise ConfigError(f"resume={run_dir}: nothing to resume ({status}); only an interrupted run resumes")
    if not same_settings(earlier, cfg):
        raise ConfigError(f"resume={run_dir}: the config composed now differs from the run's own; edit it back first")
    checkpoint = run_dir / INTERRUPTED_CHECKPOINT
    if not checkpoint.is_file():  # interrupted before its first step: nothing to go on from
        log.info(f"resuming {run_dir}: no checkpoint was left, so the run starts over there")
        clear_attempt(run_dir)
        return None
    # the run's history: its first start, then each resumption (when, from which step)
    summary["resumed"] = [*earlier.get("resumed", []), {"at_step": earlier.get("steps"), "at": summary["started"]}]
    summary["started"] = earlier["started"]
    summary["earlier_wall_time_s"] = earlier.get("wall_time_s", 0) + earlier.get("earlier_wall_time_s", 0)
    return checkpoint


def record_interruption(summary: dict[str, Any], trainer: L.Trainer | None, run_dir: Path) -> None:
    """status interrupted, where, and how to go on."""
    checkpoint = run_dir / INTERRUPTED_CHECKPOINT
    where = "before training started"
    if trainer is not None:
        summary.update(steps=trainer.global_step, epochs=trainer.current_epoch)
        where = f"at step {trainer.global_step} (epoch {trainer.current_epoch})"
    kept = f"checkpoint {checkpoint}" if checkpoint.is_file() else "no checkpoint (it starts over)"
    summary.update(status="interrupted", checkpoint=str(checkpoint) if checkpoint.is_file() else None)
    summary["reason"] = f"interrupted {where}; {kept}; resume with: python scripts/train.py resume={run_dir}"


def _run(cfg: DictConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
    start = time.time()
    summary = start_summary(run_dir, start)
    logger: RunLogger | None = None
    trainer: L.Trainer | None = None
    try:
        validate(cfg)
        checkpoint = resume_from(cfg, run_dir, summary) if resume else None
        record_config(summary, cfg)
        apply_process_settings(cfg)
        datamodule, module, init_used = build(cfg)
        logger = RunLogger(save_dir=str(run_dir), name="", version="", default_hp_metric=False)
        stats = layer_stats(cfg, init_used)
        callbacks = [stats] if stats is not None else []
        # Lightning adds its default ModelCheckpoint (the last epoch's) only where no Checkpoint callback is given,
        # and refuses any Checkpoint callback under enable_checkpointing=false (Ctrl-C then leaves none)
        checkpointing = cfg.trainer.get("enable_checkpointing", True)
        checkpoints = [ModelCheckpoint(), InterruptCheckpoint(run_dir)] if checkpointing else []
        callbacks_all = [*callbacks, *checkpoints]
        trainer = make_trainer(cfg, logger=logger, callbacks=callbacks_all, default_root_dir=str(run_dir))
        check_strategy(trainer)
        device = trainer.strategy.root_device
        threads = torch.get_num_threads()
        where = f"{device} ({threads} thread{'s' * (threads > 1)})" if device.type == "cpu" else str(device)
        sizes = "/".join(str(len(datamodule.splits[k][0])) for k in ("train", "val", "test"))
        n_params = sum(p.numel() for p in module.parameters())
        (log.info if trainer.is_global_zero else log.debug)(
            f"deepinit: {' '.join(f'{k}={v}' for k, v in summary['config'].items())} | gain {init_used['gain']:.4g}"
            f" | {cfg.data.dataset} train/val/test {sizes} | {n_params:,} parameters | device {where}"
            + (f" | resuming from {checkpoint}" if checkpoint else "")
        )
        summary["theory"] = predict_trainability(cfg, module.model, init_used, quiet=not trainer.is_global_zero)
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if module.divergence is not None:
            record_divergence(summary, module.divergence, cfg.depth)
            log.warning(f"diverged: {summary['reason']}")
        else:
            trainer.test(module, datamodule=datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
            summary.update(status="ok")
        summary["metrics"] = final_metrics(metrics, module.val_acc_history)
        summary.update(init=init_used, steps=trainer.global_step, epochs=trainer.current_epoch, device=str(device))
        summary["training_step"] = module.step_kind
        summary["hparams_metrics"] = hparams_metrics(summary, callbacks[0] if callbacks else None)
        # Once, at the end, with the final metrics: TensorBoard's HParams columns come from the first hparams
        # summary a run writes, so an early one (without metrics) would hide them.
        logger.log_hyperparams(hparams_row(summary), summary["hparams_metrics"], step=trainer.global_step)
    except (ConfigError, DataError) as e:
        summary["reason"] = str(e)
        raise
    except (KeyboardInterrupt, SystemExit) as e:
        # Ctrl-C: inside fit or test, Lightning shuts down gracefully (callbacks' on_exception: the checkpoint)
        # and ends with sys.exit(1); elsewhere it is the KeyboardInterrupt itself
        if isinstance(e, SystemExit) and not (trainer is not None and trainer.interrupted):
            raise
        record_interruption(summary, trainer, run_dir)
        raise RunInterrupted(summary) from None
    except Exception as e:
        full = no_room(e, run_dir)
        summary["reason"] = str(full or f"{type(e).__name__}: {e}")
        if full:
            remove_truncated_checkpoints(run_dir)  # which also leaves room for summary.json
            raise full from e
        raise
    finally:
        if logger is not None:
            logger.close(summary["status"])
        summary["wall_time_s"] = round(time.time() - start + summary.pop("earlier_wall_time_s", 0), 2)
        if rank_zero_only.rank == 0:  # under DDP the other processes ran the same job; one writes its summary
            try:
                write_summary(run_dir, summary)
            except OSError as e:
                if summary["status"] == "failed":  # the run's own error goes on up
                    log.error(f"{run_dir / 'summary.json'} not written: {e}")
                elif full := no_room(e, run_dir):
                    raise full from e
                else:
                    raise
    return summary


def hparams_metrics(summary: dict[str, Any], layer_stats: LayerStats | None) -> dict[str, float]:
    """The run's final metrics as TensorBoard's HParams dashboard ranks them (NaN where not measured)."""
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
    history = layer_stats.history if layer_stats is not None else {}
    act = dict(history.get(("activations", "sqr"), [])).get(0)
    grad = dict(history.get(("gradients", "sqr"), [])).get(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["final/step0_ln_act_sqr_last_over_first"] = float(np.log(act[-1] / act[0])) if act is not None else nan
        out["final/step0_ln_grad_sqr_first_over_last"] = float(np.log(grad[0] / grad[-1])) if grad is not None else nan
    return out


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so summary.json stays valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def describe_end(summary: dict[str, Any], runs_root: Path) -> str:
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
