"""One study run: build data, model, init and trainer from the run's Settings; train, test, summarize.

`run(settings, run_dir)` is the whole job and returns the Summary it writes to `run_dir/summary.json`.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from deepinit import checkpoints, stopping, theory
from deepinit.init_schemes import initialize
from deepinit.layer_stats import LayerStats
from deepinit.lifecycle import RunRecord, check_resume
from deepinit.model import MLP
from deepinit.module import Classifier
from deepinit.private_api import reruns_the_script, spawns_processes
from deepinit.progress import progress_bar
from deepinit.provision import DATASETS
from deepinit.recorder import LayerRecorder
from deepinit.settings.records import RunSettings, Settings
from deepinit.settings.rules import ConfigError
from deepinit.speed import LearningSpeed, speed_tracker
from deepinit.summary import Summary

log = logging.getLogger(__name__)

# A diverged step returns None on purpose (skipping its update); the divergence line already says so.
warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")
# With an OnExceptionCheckpoint among the callbacks (checkpoints.InterruptCheckpoint), Lightning looks for its file on
# every fit and warns when there is none; resuming is asked for explicitly (resume=), so those warnings say nothing.
warnings.filterwarnings("ignore", message=r"`\.fit\(ckpt_path=None\)` was called without a model")
warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint')
# A resumed run's checkpoints folder holds the checkpoints it goes on from (deepinit.checkpoints): by design.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def check_strategy(trainer: L.Trainer, multirun: bool) -> None:
    """Raise ConfigError for the multi-process set-ups this study cannot run correctly."""
    launcher = trainer.strategy.launcher
    if spawns_processes(launcher):
        raise ConfigError(
            "trainer.strategy=ddp_spawn (or ddp_fork, ddp_notebook) keeps a run's history in the processes it starts, "
            "where its summary cannot read it; use trainer.strategy=ddp for one run, torchrun for a sweep (README)"
        )
    if multirun and reruns_the_script(launcher):
        raise ConfigError(
            "trainer.strategy=ddp inside -m: Lightning would start each extra process by re-running the whole sweep; "
            "run the sweep as torchrun --nproc_per_node=<devices> scripts/train.py -m ..., or with "
            "hydra/launcher=slurm hydra.launcher.tasks_per_node=<devices>"
        )


def model_of(settings: Settings) -> MLP:
    """The run's MLP (not yet initialized), its first and last layers shaped by the data set."""
    m, data = settings.model, DATASETS[settings.data.dataset]
    return MLP(m.depth, m.width, m.activation, in_features=data.features, out_features=data.classes, bias=m.bias,
               norm=m.norm, block=m.block, alpha=m.alpha)  # fmt: skip


def build(
    settings: Settings, datamodule: L.LightningDataModule | None = None
) -> tuple[L.LightningDataModule, Classifier, dict[str, Any]]:
    """Data module (set up on the CPU unless given), initialized model wrapped for Lightning, what init used."""
    L.seed_everything(settings.run.seed, workers=True, verbose=False)
    if datamodule is None:
        datamodule = settings.data.make()
        datamodule.setup("fit")
    model = model_of(settings)
    # Data-dependent schemes (lsuv) name the size of the real training batch they measure on.
    size = settings.init.data_batch_size()
    batch = None if size is None else datamodule.sample_batch(size, seed=settings.run.seed)
    init_used = initialize(model, settings.init, batch=batch)
    return datamodule, Classifier(model, settings.optim.factory(), fast=settings.run.fast), init_used


def layer_recorder(settings: Settings, init_used: dict[str, Any]) -> LayerRecorder | None:
    """The run's LayerRecorder as `stats=` configures it, with the init's theory; None for stats=off."""
    if not settings.stats.enabled:
        return None
    return LayerRecorder(settings.stats, theory=settings.init.theory_inputs(init_used))


def layer_stats(settings: Settings, init_used: dict[str, Any]) -> LayerStats | None:
    """The run's LayerStats callback (its recorder fed by the Trainer); None for stats=off."""
    recorder = layer_recorder(settings, init_used)
    return None if recorder is None else LayerStats(recorder)


def predict_trainability(
    settings: Settings, model: MLP, init_used: dict[str, Any], quiet: bool = False
) -> theory.Trainability:
    """The depth scales of this run's init and whether its depth is within 6 xi_c, said in one line before the
    first step (summary.json's `theory`)."""
    prediction = theory.trainability(model, **settings.init.theory_inputs(init_used))
    (log.debug if quiet else log.info)(theory.verdict(prediction))
    return prediction


@contextmanager
def job_scope() -> Iterator[None]:
    """Restore, when a run ends, the process-wide state it changes: RNG streams, Lightning's seed variables,
    determinism and precision flags, the thread count, the signal handlers. Jobs that share a process (Hydra's
    basic launcher, a joblib worker) then start alike, whatever ran before them."""
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG")}
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    precision, threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None  # Lightning ignores Ctrl-C after the first
    try:
        with stopping.catching():  # SIGTERM and a preemption stop the run as Ctrl-C does
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


def apply_process_settings(run: RunSettings) -> None:
    """The run's process-wide settings (job_scope restores the process's own afterwards)."""
    if run.threads is not None:
        torch.set_num_threads(run.threads)
    torch.set_float32_matmul_precision(run.matmul_precision)


def run(settings: Settings, run_dir: Path, resume: bool = False) -> Summary:
    """Train and test one configuration; write and return run_dir/summary.json. resume: go on from the checkpoint
    an interrupted attempt left in run_dir (with no checkpoint, start it over there)."""
    # Checked before anything is written: a refused resume leaves the run as it was. A sweep's job holds its lock
    # (scripts/train.py): an attempt still marked running there died.
    earlier = check_resume(Path(run_dir), settings, locked=settings.multirun) if resume else None
    with job_scope():
        return _run(settings, Path(run_dir), earlier)


def _run(settings: Settings, run_dir: Path, earlier: Summary | None) -> Summary:
    with RunRecord(run_dir) as record:
        checkpoint = record.resume(earlier) if earlier is not None else None
        record.configure(settings)
        apply_process_settings(settings.run)
        datamodule, module, init_used = build(settings)
        logger = record.open_logger()
        recording = layer_stats(settings, init_used)
        tracker = speed_tracker(settings.speed, datamodule.splits["val"])
        speed = [LearningSpeed(tracker, settings.data.eval_batch_size)] if tracker is not None else []
        # Lightning adds its default ModelCheckpoint (the last epoch's) only where no Checkpoint callback is given,
        # and refuses any Checkpoint callback under enable_checkpointing=false (Ctrl-C then leaves none)
        saving = []
        if settings.trainer.checkpointing:
            every = settings.checkpoint
            periodic = checkpoints.periodic(run_dir, every.every_minutes, every.every_n_steps)
            saving = [ModelCheckpoint(), checkpoints.InterruptCheckpoint(run_dir), *([periodic] if periodic else [])]
        callbacks = [stopping.StopBetweenSteps(), *progress_bar(settings.trainer),
                     *([recording] if recording is not None else []), *speed, *saving]  # fmt: skip
        trainer = settings.trainer.make(logger=logger, callbacks=callbacks, default_root_dir=str(run_dir),
                                        plugins=[checkpoints.AtomicCheckpointIO()])  # fmt: skip
        record.trainer = trainer
        check_strategy(trainer, settings.multirun)
        device = trainer.strategy.root_device
        threads = torch.get_num_threads()
        where = f"{device} ({threads} thread{'s' * (threads > 1)})" if device.type == "cpu" else str(device)
        sizes = "/".join(str(len(datamodule.splits[k][0])) for k in ("train", "val", "test"))
        n_params = sum(p.numel() for p in module.parameters())
        (log.info if trainer.is_global_zero else log.debug)(
            f"deepinit: {' '.join(f'{k}={v}' for k, v in settings.essentials().items())}"
            f" | gain {init_used['gain']:.4g} | {settings.data.dataset} train/val/test {sizes}"
            f" | {n_params:,} parameters | device {where}" + (f" | resuming from {checkpoint}" if checkpoint else "")
        )
        quiet = not trainer.is_global_zero
        record.summary.theory = predict_trainability(settings, module.model, init_used, quiet=quiet)
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if module.divergence is not None:
            record.diverged(module.divergence, settings.model.depth)
        else:
            trainer.test(module, datamodule=datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        checkpoints.remove_stale(run_dir)
        record.conclude(
            metrics, module.val_acc_history, recording.history if recording is not None else {},
            init=init_used, steps=trainer.global_step, epochs=trainer.current_epoch, device=str(device),
            training_step=module.step_kind, speed=tracker.result() if tracker is not None else None,
        )  # fmt: skip
    return record.summary
