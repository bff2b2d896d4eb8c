"""One batched group, from its members' records to their summaries: `train_group(settings, run_dirs)`."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from deepinit.batched.group import GroupModule, Member, MembersLogger
from deepinit.batched.stacked import StackedBatches, StackedMLP
from deepinit.data.datamodule import TensorBatches
from deepinit.results.summary import Summary, write_whole
from deepinit.run import stopping
from deepinit.run.lifecycle import RunRecord
from deepinit.run.parts import apply_process_settings, assemble, job_scope
from deepinit.run.progress import progress_bar
from deepinit.settings.records import Settings

log = logging.getLogger(__name__)


def train_group(
    settings: Sequence[Settings], run_dirs: Sequence[Path], callbacks: Sequence[L.Callback] = ()
) -> list[Summary]:
    """Train same-shape runs (equal Settings.group_key) as one stacked model; write and return each one's summary.
    callbacks: more Lightning callbacks for the group's Trainer (scripts/bench.py times the steps with one)."""
    with job_scope():  # as a lone run: the process's RNG, threads and flags are as they were afterwards
        return _train_group(settings, run_dirs, callbacks)


def _train_group(
    settings: Sequence[Settings], run_dirs: Sequence[Path], callbacks: Sequence[L.Callback]
) -> list[Summary]:
    if len({s.group_key() for s in settings}) != 1:
        raise ValueError("train_group needs runs of one shape and loop (equal group_key)")
    first = settings[0]
    apply_process_settings(first.run)
    with ExitStack() as records:  # a member's record ends with its summary, or with the group's failure
        members: list[Member] = []
        trainer: L.Trainer | None = None
        try:
            datamodule = None
            for k, (own, run_dir) in enumerate(zip(settings, run_dirs, strict=True)):
                record = records.enter_context(RunRecord(run_dir))
                parts = assemble(own, record, datamodule)  # exactly as the lone run assembles its own
                datamodule = parts.datamodule
                members.append(Member(k, own, record, parts))
            trainer = first.trainer.make(
                logger=MembersLogger(members), enable_checkpointing=False,  # each member's own, at the end
                callbacks=[stopping.StopBetweenSteps(), *progress_bar(first.trainer), *callbacks],
                default_root_dir=str(Path(run_dirs[0]).parent),
            )  # fmt: skip
            for member in members:
                member.record.trainer = trainer
            device = trainer.strategy.root_device
            datamodule.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in datamodule.splits.items()}
            train = StackedBatches(
                [TensorBatches(*datamodule.splits["train"], first.data.batch_size, first.data.shuffle,
                               seed=own.data.shuffle_seed) for own in settings]
            )  # fmt: skip
            stack = StackedMLP([m.model for m in members])
            group = GroupModule(stack, members, first.optim.factory(), first.run.fast)
            essentials = [own.essentials() for own in settings]  # what the members share (lr and param may differ)
            shared = " ".join(f"{k}={v}" for k, v in essentials[0].items() if all(e[k] == v for e in essentials))
            log.info(f"deepinit: a batched group of {len(members)} runs | {shared} | device {device}")
            trainer.fit(group, train_dataloaders=train, val_dataloaders=datamodule.val_dataloader())
            if group.live:
                trainer.test(group, dataloaders=datamodule.test_dataloader(), verbose=False)
        finally:
            for member in members:  # the CSV closed and the figures drawn, however the group ended
                if member.recorder is not None:
                    member.recorder.close(trainer.global_step if trainer is not None else 0)
        first_error = None
        for member in members:  # one member's failure here (its checkpoint on a full disk) is its own
            try:
                with member.record:
                    _conclude(member, trainer, group.step_kind, first.trainer.checkpointing)
            except Exception as e:
                first_error = first_error or e
        if first_error is not None:
            raise first_error
    return [member.record.summary for member in members]


def _conclude(member: Member, trainer: L.Trainer, kind: str, checkpointing: bool) -> None:
    """The member's summary.json (the fields a lone run writes), its HParams row and its checkpoint."""
    record, steps, epochs = member.record, trainer.global_step, trainer.current_epoch
    if member.divergence is not None:
        steps = member.divergence.step + 1
        record.diverged(member.divergence, member.settings.model.depth)
    history = member.recorder.history if member.recorder is not None else {}
    record.conclude(
        member.metrics, member.val_acc_history, history,
        init=member.init_used, steps=steps, epochs=epochs, device=str(trainer.strategy.root_device),
        training_step=kind, speed=member.speed.result() if member.speed is not None else None,
        learning_rates=member.learning_rates,
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
