"""Learning speed (deepinit.speed): the curve of validation accuracy, the first step at the target, in summary.json,
TensorBoard and HParams; through the real training loop on real MNIST."""

import math

import pytest
import torch

from conftest import compose_cfg, read_events, train_cli
from deepinit.model import MLP
from deepinit.speed import accuracies
from deepinit.train import run


def test_a_run_records_the_step_it_first_reached_the_target(tmp_path, mnist_root):
    cfg = compose_cfg("depth=4", "trainer.max_steps=60", "speed.every_n_steps=20", "speed.target_acc=0.8",
                      "stats=off", "trainer.limit_val_batches=1", data_root=mnist_root)  # fmt: skip
    summary = run(cfg, tmp_path)
    speed = summary.speed
    steps = [s for s, _ in speed.curve]
    assert steps == [0, 20, 40, 60] and speed.samples == 1024 and speed.target_acc == 0.8
    accs = [a for _, a in speed.curve]
    assert accs[0] < 0.3 < 0.8 <= accs[-1]  # chance at the initialization, trained after 60 Adam steps
    assert speed.steps_to_target == next(s for s, a in speed.curve if a >= 0.8)
    assert summary.hparams_metrics["final/steps_to_target"] == speed.steps_to_target
    logged = read_events(tmp_path).Scalars("speed/val_acc")
    assert [(e.step, pytest.approx(e.value)) for e in logged] == [tuple(p) for p in speed.curve]


def test_never_reaching_the_target_is_null(tmp_path, mnist_root):
    cfg = compose_cfg("depth=4", "trainer.max_steps=10", "speed.every_n_steps=5", "speed.target_acc=1.0",
                      "stats=off", "trainer.limit_val_batches=1", data_root=mnist_root)  # fmt: skip
    summary = run(cfg, tmp_path)
    assert summary.speed.steps_to_target is None and len(summary.speed.curve) == 3
    assert math.isnan(summary.hparams_metrics["final/steps_to_target"])


def test_accuracies_of_a_stack_are_each_members():
    torch.manual_seed(0)
    models = [MLP(3, 16, "relu") for _ in range(2)]
    x, y = torch.randn(50, 784), torch.randint(0, 10, (50,))
    stacked = accuracies(lambda xb: torch.stack([m(xb) for m in models]), x, y, chunk=16)
    alone = [accuracies(m, x, y, chunk=50).item() for m in models]
    assert stacked.tolist() == pytest.approx(alone)
    assert alone[0] == pytest.approx((models[0](x).argmax(1) == y).float().mean().item())


@pytest.mark.parametrize(
    "override, line",
    [("data.val_size=0", "speed is measured on validation images, and data.val_size=0 holds none"),
     ("speed.target_acc=1.5", "speed.target_acc must be a number > 0 and <= 1 (got 1.5)")],
)  # fmt: skip
def test_bad_speed_settings_are_one_line(tmp_path, mnist_root, override, line):
    done = train_cli(override, runs_dir=tmp_path, data_root=mnist_root)
    assert done.returncode == 1 and line in done.stderr and "Traceback" not in done.stderr, done.stderr[-1500:]
