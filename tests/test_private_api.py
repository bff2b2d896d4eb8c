"""Each private name of Lightning, TensorBoard and torch that deepinit.base.private_api uses, exercised for real: an
upgrade that renames or changes one fails here, by name, before any run does."""

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

from deepinit.base import private_api


class Manual(L.LightningModule):
    """Manual optimization that counts each step without running the optimizer, as a replayed CUDA graph does."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        private_api.count_replayed_update(self.optimizers())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return [torch.zeros(1, 2)] * 4


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)  # fmt: skip


def test_a_replayed_update_counts_as_a_step_and_the_logging_counter_follows():
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(Manual())
    assert trainer.global_step == 3  # three batches counted, no optimizer.step() called
    loop = trainer.fit_loop.epoch_loop
    loop._batches_that_stepped = trainer.global_step + 1  # as Lightning leaves it after a mid-batch resume
    private_api.align_logging_step(trainer)
    assert loop._batches_that_stepped == trainer.global_step


def test_a_checkpoint_on_the_clock_is_saved_under_manual_optimization(tmp_path):
    """Lightning's ModelCheckpoint alone saves nothing on train_time_interval under manual optimization; through
    private_api.save_on_the_clock (deepinit.run.checkpoints.PeriodicCheckpoint) every batch's end past the interval
    saves, and the newest is kept."""
    from datetime import timedelta

    from deepinit.run.checkpoints import PeriodicCheckpoint

    for kind, saved in ((L.pytorch.callbacks.ModelCheckpoint, []), (PeriodicCheckpoint, ["step=4.ckpt"])):
        folder = tmp_path / kind.__name__
        clock = kind(dirpath=folder, filename="{step}", train_time_interval=timedelta(0), save_on_train_epoch_end=False)
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, max_steps=4,
                  callbacks=[clock]).fit(Manual())  # fmt: skip
        assert sorted(p.name for p in folder.glob("*.ckpt")) == saved, kind


class SaveWhereTheRunDoes(L.Callback):
    """A checkpoint at a batch's end (a periodic one) and one at the epoch's end (the epoch's own)."""

    def __init__(self, folder) -> None:
        self.folder = folder

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 1:
            trainer.save_checkpoint(self.folder / "periodic.ckpt")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.folder / "epoch.ckpt")


class FourBatches(Manual):
    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(4, 2), batch_size=1)


def test_an_epochs_own_checkpoint_reads_as_the_next_epochs_start(tmp_path):
    quiet_trainer(max_epochs=1, callbacks=[SaveWhereTheRunDoes(tmp_path)]).fit(FourBatches())
    epoch = torch.load(tmp_path / "epoch.ckpt", weights_only=False)
    loop = epoch["loops"]["fit_loop"]
    epochs, batches = loop["epoch_progress"], loop["epoch_loop.batch_progress"]
    assert (epochs["current"]["processed"], epochs["current"]["completed"], batches["is_last_batch"]) == (1, 0, True)
    private_api.epoch_end_as_next_epoch_start(epoch)
    assert epochs["total"]["completed"] == epochs["current"]["completed"] == 1
    assert set(batches["current"].values()) == {0} and not batches["is_last_batch"]

    periodic = torch.load(tmp_path / "periodic.ckpt", weights_only=False)
    as_saved = repr(periodic["loops"])
    private_api.epoch_end_as_next_epoch_start(periodic)  # mid-epoch: already where the run goes on
    assert repr(periodic["loops"]) == as_saved
    weights = {"state_dict": {}}  # no loops (a weights-only checkpoint): nothing to read
    private_api.epoch_end_as_next_epoch_start(weights)
    assert weights == {"state_dict": {}}


def test_the_launchers_are_told_apart():
    assert private_api.spawns_processes(quiet_trainer(devices=2, strategy="ddp_spawn").strategy.launcher)
    assert private_api.reruns_the_script(quiet_trainer(devices=2, strategy="ddp").strategy.launcher)
    single = quiet_trainer(devices=1).strategy.launcher
    assert not private_api.spawns_processes(single) and not private_api.reruns_the_script(single)


def test_tensorboard_logger_internals(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="", version="")
    assert private_api.open_experiment(logger) is None
    writer = logger.experiment
    assert private_api.open_experiment(logger) is writer
    assert private_api.sanitize_hparams(logger, {"a": None, "b": 1}) == {"a": "None", "b": 1}
    file_writer = private_api.event_writer(SummaryWriter(str(tmp_path / "w")))
    assert callable(file_writer.add_summary)


def test_foreach_ops_equal_the_per_tensor_ones():
    a, b = [torch.randn(3, 4), torch.randn(5)], [torch.randn(3, 4), torch.randn(5)]
    norms, diffs = private_api.foreach_norm(a), private_api.foreach_sub(a, b)
    for x, y, n, d in zip(a, b, norms, diffs, strict=True):
        torch.testing.assert_close(n, x.norm())
        torch.testing.assert_close(d, x - y)


def test_hydras_parser_knows_its_flags():
    args = private_api.hydra_args_parser().parse_intermixed_args(["depth=3", "-m", "init=a,b", "--cfg", "job"])
    assert args.multirun and args.cfg == "job" and args.overrides == ["depth=3", "init=a,b"]
