"""Learning speed (deepinit.observe.speed): the curve of validation accuracy, the first step at the target, in
summary.json, TensorBoard and HParams; through the real training loop on real MNIST."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from conftest import compose_cfg, read_events, train_inprocess
from deepinit.network.model import MLP
from deepinit.observe.speed import accuracies
from deepinit.run.logger import tag_of
from deepinit.run.train import run
from deepinit.sweep import speed_report


@pytest.mark.slow
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
    logged = read_events(tmp_path).Scalars(tag_of("speed/val_acc"))
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
    done = train_inprocess(override, runs_dir=tmp_path, data_root=mnist_root)
    assert done.returncode == 1 and line in done.stderr and "Traceback" not in done.stderr, done.stderr[-1500:]


@pytest.mark.slow
def test_the_isometry_experiment_reports_speed_against_the_predicted_spread(tmp_path, mnist_root):
    """experiment=isometry_cpu on a corner (two tanh arms, depths 4 and 12, 40 steps, two learning rates): speed.csv
    with the predicted and the step-0 measured spread, report_speed.png, report.md's correlations, and cells that
    pool only seeds (the two learning rates are two lines, not one)."""
    done = train_inprocess("-m", "experiment=isometry_cpu", "arm=tanh_orthogonal,tanh_gaussian", "depth=4,12",
                           "optim.lr=1e-3,3e-3", "trainer.max_steps=40", "speed.every_n_steps=10",
                           "speed.target_acc=0.3", "stats.every_n_steps=40", runs_dir=tmp_path,
                           data_root=mnist_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (sweep,) = tmp_path.iterdir()
    rows = list(csv.DictReader(open(sweep / "speed.csv")))
    assert list(rows[0]) == ["init", "activation", "sigma_w2", "sigma_b2", "depth", "lr", "steps", "seed", "test_acc",
                             "steps_to_target", "predicted_spread", "measured_spread"]  # fmt: skip
    assert len(rows) == 8 and {r["steps"] for r in rows} == {"40"}
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    curves = {(s["config"]["init"], s["config"]["depth"], s["config"]["lr"]): s["speed"]["curve"] for s in summaries}
    for r in rows:
        predicted, measured = float(r["predicted_spread"]), float(r["measured_spread"])
        # the verdict's spread: one a layer for Gaussian weights (and tanh's own, large near layer 1's q ~ 1, small at
        # q* = 0.026), under one over these depths for orthogonal weights
        stack = int(r["depth"]) - 2
        assert stack <= predicted < stack + 1.5 if r["init"] == "gaussian" else predicted < 1
        assert measured == pytest.approx(predicted, rel=0.6, abs=0.3)  # 16 inputs x 16 probes at width 128
        curve = curves[(r["init"], int(r["depth"]), float(r["lr"]))]
        reached = next((s for s, a in curve if a >= 0.3), None)
        assert r["steps_to_target"] == ("" if reached is None else str(reached))
    assert speed_report.arms([{"activation": "tanh", "init": "orthogonal", "sigma_w2": 1.05, "sigma_b2": 2e-5,
                               "lr": lr, "steps": 40} for lr in (1e-3, 3e-3)]) == [
        "tanh orthogonal lr 0.001", "tanh orthogonal lr 0.003"]  # fmt: skip
    assert (sweep / "report_speed.png").stat().st_size > 20_000
    report = (sweep / "report.md").read_text()
    assert "## Learning speed: measured against the Jacobian's predicted spread" in report
    assert "Cells (arm x depth, mean over seeds): 8" in report and "rank correlation (Spearman)" in report
    assert "report/speed" in read_events(sweep / "report").Tags()["images"]


def test_spearman_ranks_ties_by_their_mean():
    assert speed_report.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert speed_report.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks 0, 1.5, 1.5, 3 against 0..3: Pearson's r of those ranks
    assert speed_report.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(
        np.corrcoef([0, 1.5, 1.5, 3], [0, 1, 2, 3])[0, 1]
    )
    assert math.isnan(speed_report.spearman([1, 1, 1], [1, 2, 3])) and math.isnan(speed_report.spearman([1], [2]))
