"""A run's parts, built from its Settings: the data module, the initialized model under Lightning, the layer
recorder, the trainability prediction, the process-wide state a run sets and restores. The lone run
(deepinit.run.train) and each member of a batched group (deepinit.batched) are assembled from these, so both build a
run the same way (the same seed, the same init, the same theory)."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch

from deepinit import theory
from deepinit.base.private_api import reruns_the_script, spawns_processes
from deepinit.base.rules import ConfigError
from deepinit.data.provision import DATASETS
from deepinit.network.init_schemes import initialize
from deepinit.network.model import MLP
from deepinit.network.parametrization import param_groups, rescale
from deepinit.observe.layer_stats import LayerStats
from deepinit.observe.recorder import LayerRecorder
from deepinit.observe.speed import SpeedTracker, speed_tracker
from deepinit.run import stopping
from deepinit.run.lifecycle import RunRecord
from deepinit.settings.records import RunSettings, Settings
from deepinit.training.module import Classifier

log = logging.getLogger(__name__)

# A diverged step returns None on purpose (skipping its update); the divergence line already says so.
warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")
# With an OnExceptionCheckpoint among the callbacks (checkpoints.InterruptCheckpoint), Lightning looks for its file on
# every fit and warns when there is none; resuming is asked for explicitly (resume=), so those warnings say nothing.
warnings.filterwarnings("ignore", message=r"`\.fit\(ckpt_path=None\)` was called without a model")
warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint')
# A resumed run's checkpoints folder holds the checkpoints it goes on from (deepinit.run.checkpoints): by design.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
# The fast step's periodic checkpoint holds the weights after its update, as the eager step's does: what is wanted.
warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization and every_n_train_steps")


def check_strategy(trainer: L.Trainer, multirun: bool) -> None:
    """Raise ConfigError for the multi-process set-ups this study cannot run correctly."""
    launcher = trainer.strategy.launcher
    if spawns_processes(launcher):
        raise ConfigError(
            "trainer.strategy=ddp_spawn (or ddp_fork, ddp_notebook) keeps a run's history in the processes it starts, "
            "where its summary cannot read it; use trainer.strategy=ddp for one run, torchrun for a sweep "
            "(docs/sweeps.md)"
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
    param, groups = settings.param, None
    if not param.standard:  # sp's one group keeps the checkpoints of runs from before param= resumable
        init_used["readout_var"] = rescale(model, param.name, param.base_width, param.zero_readout)
        groups = param_groups(model, param.name, settings.optim.name, settings.optim.lr, param.base_width)
    return datamodule, Classifier(model, settings.optim.factory(), settings.run.fast, groups), init_used


def layer_recorder(settings: Settings, init_used: dict[str, Any]) -> LayerRecorder | None:
    """The run's LayerRecorder as `stats=` configures it, with the init's theory; None for stats=off."""
    if not settings.stats.enabled:
        return None
    return LayerRecorder(settings.stats, theory=settings.init.theory_inputs(init_used))


def layer_stats(settings: Settings, init_used: dict[str, Any]) -> LayerStats | None:
    """The run's LayerStats callback (its recorder fed by the Trainer); None for stats=off."""
    recorder = layer_recorder(settings, init_used)
    return None if recorder is None else LayerStats(recorder)


@dataclass
class Parts:
    """A run's parts (assemble): its data module, initialized model under Lightning, what init used, layer recorder
    (None: stats=off) and learning-speed tracker (None: speed=off)."""

    datamodule: L.LightningDataModule
    module: Classifier
    init_used: dict[str, Any]
    recorder: LayerRecorder | None
    speed: SpeedTracker | None


def assemble(settings: Settings, record: RunRecord, datamodule: L.LightningDataModule | None = None) -> Parts:
    """A run's parts, built in one order for a lone run and each member of a batched group (which share their data
    module): its record configured (summary.json says running), data and initialized model (build), its TensorBoard
    logger opened (record.logger), its layer recorder and learning-speed tracker."""
    record.configure(settings)
    datamodule, module, init_used = build(settings, datamodule)
    record.open_logger()
    recorder = layer_recorder(settings, init_used)
    return Parts(datamodule, module, init_used, recorder, speed_tracker(settings.speed, datamodule.splits["val"]))


def predict_trainability(
    settings: Settings, model: MLP, init_used: dict[str, Any], quiet: bool = False
) -> theory.Trainability:
    """The depth scales of this run's init and whether its depth is within 6 xi_c, and its regime as width grows,
    said in one line before the first step (summary.json's `theory`)."""
    prediction = theory.trainability(model, **settings.init.theory_inputs(init_used))
    param, optimizer = settings.param, settings.optim.name
    scaling = theory.width_scaling(param.name, optimizer, param.zero_readout)
    prediction.regime, prediction.width = scaling.regime, theory.width_line(scaling, param.label)
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
