"""What the console shows while a run trains: in a terminal one bar counting the run's real steps, anywhere else a
line every log_every_n_steps steps and no carriage return; the run's last line a line of its own; a resumed run
says what it restored instead of Lightning's warning."""

import logging
import os
import signal
import subprocess
import sys

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import REPO, signal_at, train_inprocess
from deepinit.run.progress import StepProgress, progress_bar
from deepinit.settings.records import TrainerSettings

SMALL = ["depth=3", "width=16", "trainer.max_steps=60"]


def screen(text: str) -> list[str]:
    """The lines a terminal shows for `text`: each line as its last carriage return left it (a bar's redraws, and a
    tqdm.write's clearing of the bar, overwrite the line from its start)."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n")]


@pytest.mark.slow
def test_a_run_with_output_to_a_file_writes_no_carriage_return(tmp_path, mnist_root):
    runs, console = tmp_path / "runs", tmp_path / "console.txt"
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), f"runs_dir={runs}", *SMALL]
    env = {**os.environ, "DEEPINIT_DATA": str(mnist_root), "PYTHONUNBUFFERED": "1"}
    with open(console, "w") as out:  # as `python scripts/train.py ... > console.txt 2>&1`
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=600)
    output = console.read_bytes().decode()
    assert done.returncode == 0, output[-2000:]
    (run,) = runs.iterdir()
    log = (run / "train.log").read_bytes().decode()  # Hydra's job log: the same lines, timed
    for text in (output, log):
        assert "\r" not in text
        assert "step 50/60 | epoch 0" in text and "step 60/60" in text  # the run's real total, not an epoch's 430
        assert "0/?" not in text and "Training" not in text and "Testing" not in text
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert last.startswith("deepinit: ok | test acc"), output[-2000:]


@pytest.mark.slow
def test_a_resumed_run_says_what_it_restores_and_lightning_does_not_warn(tmp_path, mnist_root):
    args = ["depth=3", "width=16", "trainer.max_steps=200", "stats.every_n_steps=10", "speed=off"]
    done, run = signal_at(tmp_path, mnist_root, 20, args, signal.SIGTERM)
    assert done.returncode == 143, done.stderr[-2000:]
    last = [line for line in done.stdout.splitlines() if line.strip()][-1]  # text mode: a bar's \r ends a line too
    assert last.startswith("deepinit: interrupted at step") and "resume with:" in last

    resumed = train_inprocess(f"resume={run}", runs_dir=tmp_path / "unused", data_root=mnist_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    output = resumed.stdout + resumed.stderr
    assert "the weights, the optimizer state and the shuffled batches are restored" in output
    assert "not resumable" not in output and "unreliable" not in output
    assert "step 200/200" in output
    assert resumed.stdout.strip().splitlines()[-1].startswith("deepinit: ok | test acc")


class Tiny(L.LightningModule):
    """10 batches of 4 an epoch; logs its loss to the progress bar as the study's module does."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1]), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(autouse=True)
def lightning_quiet(caplog):
    caplog.set_level(logging.WARNING, logger="lightning.pytorch")  # as the study's runs have it (conf/train.yaml)


def fit(bar: StepProgress, callbacks=(), **trainer_args) -> L.Trainer:
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    trainer = L.Trainer(callbacks=[bar, *callbacks], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu", log_every_n_steps=5, **trainer_args)  # fmt: skip
    trainer.fit(Tiny(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=20))
    return trainer


# (max_steps, max_epochs, limit_train_batches) -> the steps the run takes: the smaller of max_steps and max_epochs
# epochs of (limited) batches
TOTALS = [((-1, 3, 1.0), 30), ((25, 3, 1.0), 25), ((-1, 3, 4), 12), ((100, 2, 0.5), 10)]


@pytest.mark.parametrize("limits, total", TOTALS)
def test_in_a_terminal_one_bar_counts_to_the_steps_the_run_takes(capsys, limits, total):
    max_steps, max_epochs, limit = limits
    trainer = fit(StepProgress(terminal=True), max_steps=max_steps, max_epochs=max_epochs, limit_train_batches=limit)
    assert trainer.global_step == total
    err = capsys.readouterr().err
    shown = [line for line in screen(err) if line]
    assert len(shown) == 1 and f"{total}/{total} steps" in shown[0], err  # one bar, left at its end
    assert "/?" not in err and "Training" not in err and "Validation" not in err  # no bar without its total
    assert err.endswith("\n")


@pytest.mark.parametrize("limits, total", TOTALS)
def test_elsewhere_a_line_every_log_every_n_steps(caplog, capsys, limits, total):
    max_steps, max_epochs, limit = limits
    with caplog.at_level(logging.INFO, logger="deepinit.run.progress"):
        fit(StepProgress(terminal=False), max_steps=max_steps, max_epochs=max_epochs, limit_train_batches=limit)
    steps = [r.getMessage().split(" |")[0] for r in caplog.records if r.name == "deepinit.run.progress"]
    assert steps == [f"step {n}/{total}" for n in [*range(5, total, 5), total]]
    assert "\r" not in "".join(capsys.readouterr())


class Interrupt(L.Callback):
    """Logs a line at step 3 (as a stop signal's handler does) and presses Ctrl-C at step 6."""

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 3:
            logging.getLogger("deepinit").warning("deepinit: SIGTERM received; stopping once this step is done")
        if trainer.global_step == 6:
            raise KeyboardInterrupt


def test_in_a_terminal_other_lines_are_lines_of_their_own(capsys):
    console = logging.StreamHandler(sys.stderr)  # the console's handler, as Hydra's (on the captured stderr)
    logging.getLogger().addHandler(console)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C
            fit(StepProgress(terminal=True), [Interrupt()], max_epochs=1)
        logging.getLogger("deepinit").warning("deepinit: interrupted at step 6 (epoch 0); resume with: ...")
    finally:
        logging.getLogger().removeHandler(console)
    shown = [line for line in screen(capsys.readouterr().err) if line]
    assert shown[0] == "deepinit: SIGTERM received; stopping once this step is done"  # above the bar
    assert shown[1].startswith("epoch 0:") and "6/10 steps" in shown[1]  # the bar, ended where it stopped
    assert shown[2:] == ["deepinit: interrupted at step 6 (epoch 0); resume with: ..."]  # last, not glued or redrawn


def test_enable_progress_bar_false_still_turns_it_off():
    on = TrainerSettings.from_dict("trainer", {"_target_": "lightning.Trainer"})
    off = TrainerSettings.from_dict("trainer", {"_target_": "lightning.Trainer", "enable_progress_bar": False})
    (bar,) = progress_bar(on)
    assert isinstance(bar, StepProgress) and bar.terminal == sys.stderr.isatty()
    assert progress_bar(off) == []
    trainer = off.make(callbacks=progress_bar(off), logger=False)  # Lightning refuses a bar it was told to leave out
    assert trainer.progress_bar_callback is None
