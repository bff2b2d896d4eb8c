"""One study run: build data, model, init and trainer from a Hydra config; train, test, summarize.

`run(cfg, run_dir)` is the whole job and returns the summary it writes to `run_dir/summary.json`.
`check_group_choices` lets the command line reject an unknown config-group choice in one line, before
Hydra composes anything.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher
from omegaconf import DictConfig, OmegaConf

from deepinit import theory
from deepinit.activations import ACTIVATIONS
from deepinit.init_schemes import initialize
from deepinit.layer_stats import LayerStats
from deepinit.lifecycle import ConfigError, RunRecord
from deepinit.model import MLP
from deepinit.module import Classifier
from deepinit.recorder import LayerRecorder
from deepinit.sweep import INTERRUPTED_CHECKPOINT

log = logging.getLogger(__name__)

# A diverged step returns None on purpose (skipping its update); the divergence line already says so.
warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")
# With an OnExceptionCheckpoint among the callbacks (InterruptCheckpoint), Lightning looks for its file on every fit
# and warns when there is none; resuming is asked for explicitly here (resume=), so those warnings say nothing.
warnings.filterwarnings("ignore", message=r"`\.fit\(ckpt_path=None\)` was called without a model")
warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint')


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
    if (settings := stats_settings(cfg)) is not None:
        try:
            LayerRecorder(**settings)  # the recorder checks its own settings; here they are the stats.* keys
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None


def stats_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """The LayerRecorder's settings from `stats.*`; None for stats=off."""
    settings = OmegaConf.to_container(cfg.stats, resolve=True)
    return settings if settings.pop("enabled") else None


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


def layer_recorder(cfg: DictConfig, init_used: dict[str, Any]) -> LayerRecorder | None:
    """The run's LayerRecorder as `stats=` configures it (checked by validate), with the init's theory; None for
    stats=off."""
    settings = stats_settings(cfg)
    return None if settings is None else LayerRecorder(**settings, theory=theory_inputs(cfg, init_used))


def layer_stats(cfg: DictConfig, init_used: dict[str, Any]) -> LayerStats | None:
    """The run's LayerStats callback (its recorder fed by the Trainer); None for stats=off."""
    recorder = layer_recorder(cfg, init_used)
    return None if recorder is None else LayerStats(recorder)


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


def _run(cfg: DictConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
    with RunRecord(run_dir) as record:
        validate(cfg)
        checkpoint = record.resume(cfg) if resume else None
        record.configure(cfg)
        apply_process_settings(cfg)
        datamodule, module, init_used = build(cfg)
        logger = record.open_logger()
        stats = layer_stats(cfg, init_used)
        # Lightning adds its default ModelCheckpoint (the last epoch's) only where no Checkpoint callback is given,
        # and refuses any Checkpoint callback under enable_checkpointing=false (Ctrl-C then leaves none)
        checkpointing = cfg.trainer.get("enable_checkpointing", True)
        checkpoints = [ModelCheckpoint(), InterruptCheckpoint(run_dir)] if checkpointing else []
        callbacks = [*([stats] if stats is not None else []), *checkpoints]
        trainer = record.trainer = make_trainer(cfg, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir))
        check_strategy(trainer)
        device = trainer.strategy.root_device
        threads = torch.get_num_threads()
        where = f"{device} ({threads} thread{'s' * (threads > 1)})" if device.type == "cpu" else str(device)
        sizes = "/".join(str(len(datamodule.splits[k][0])) for k in ("train", "val", "test"))
        n_params = sum(p.numel() for p in module.parameters())
        (log.info if trainer.is_global_zero else log.debug)(
            f"deepinit: {' '.join(f'{k}={v}' for k, v in record.summary['config'].items())}"
            f" | gain {init_used['gain']:.4g} | {cfg.data.dataset} train/val/test {sizes} | {n_params:,} parameters"
            f" | device {where}" + (f" | resuming from {checkpoint}" if checkpoint else "")
        )
        record.summary["theory"] = predict_trainability(cfg, module.model, init_used, quiet=not trainer.is_global_zero)
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if module.divergence is not None:
            record.diverged(module.divergence, cfg.depth)
        else:
            trainer.test(module, datamodule=datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        record.conclude(
            metrics, module.val_acc_history, stats.history if stats is not None else {},
            init=init_used, steps=trainer.global_step, epochs=trainer.current_epoch, device=str(device),
            training_step=module.step_kind,
        )  # fmt: skip
    return record.summary
