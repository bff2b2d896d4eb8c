"""One lone run: its parts (deepinit.run.parts) assembled under a Trainer with its checkpoints; train, test, summarize.

`run(settings, run_dir)` is the whole run and returns the Summary it writes to `run_dir/summary.json`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from deepinit.observe.layer_stats import LayerStats
from deepinit.observe.speed import LearningSpeed
from deepinit.results.summary import Summary
from deepinit.run import checkpoints, stopping
from deepinit.run.lifecycle import RunRecord
from deepinit.run.parts import apply_process_settings, assemble, check_strategy, job_scope, predict_trainability
from deepinit.run.progress import progress_bar
from deepinit.settings.records import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, run_dir: Path, earlier: Summary | None = None) -> Summary:
    """Train and test one configuration; write and return run_dir/summary.json. earlier: the stopped attempt in
    run_dir to go on from (lifecycle.check_resume's, in deepinit.sweep.job), from its newest checkpoint (with none, the
    run starts over there)."""
    with job_scope():
        return _run(settings, Path(run_dir), earlier)


def _run(settings: Settings, run_dir: Path, earlier: Summary | None) -> Summary:
    with RunRecord(run_dir) as record:
        checkpoint = record.resume(earlier) if earlier is not None else None
        apply_process_settings(settings.run)
        parts = assemble(settings, record)
        datamodule, module, init_used, tracker = parts.datamodule, parts.module, parts.init_used, parts.speed
        recording = LayerStats(parts.recorder) if parts.recorder is not None else None
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
        trainer = settings.trainer.make(logger=record.logger, callbacks=callbacks, default_root_dir=str(run_dir),
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
            learning_rates=module.learning_rates(),
        )  # fmt: skip
    return record.summary
