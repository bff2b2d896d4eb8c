"""The theory predicts which networks train: the verdict a run prints before its first step, its `theory` block,
and the correlation map measured at step 0 against the theory's c_l. Through the command line's cli(), in this process
(train_inprocess)."""

import csv
import json
import math
import shutil

import numpy as np
import pytest

from conftest import read_csv, read_events, train_inprocess
from deepinit import theory
from deepinit.sweep.report import summarize

RUN = ["init=gaussian", "init.sigma_b2=0.05", "activation=tanh", "depth=50", "trainer.max_steps=1",
       "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.enable_checkpointing=false",
       "stats.figures=false"]  # fmt: skip


def step0(run_dir, group, quantity):
    values = read_csv(run_dir)[(0, group, quantity)]
    return np.array([values[layer] for layer in sorted(values)])


@pytest.mark.slow
@pytest.mark.parametrize("sigma_w2, phase", [(2.5, "chaotic"), (1.0, "ordered")])
def test_a_run_says_what_the_theory_predicts_and_its_correlations_follow_it(tmp_path, mnist_root, sigma_w2, phase):
    done = train_inprocess(*RUN, f"init.sigma_w2={sigma_w2}", runs_dir=tmp_path, data_root=mnist_root)
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = tmp_path.iterdir()
    theory = json.loads((run_dir / "summary.json").read_text())["theory"]
    assert theory["phase"] == phase and theory["depth"] == 50
    assert theory["trainable_depth"] == pytest.approx(6 * theory["xi_c"])
    lines = [line for line in done.stdout.splitlines() if line.startswith("theory: ")]
    assert len(lines) == 1, done.stdout[-3000:]
    within = "within it" if theory["within"] else "beyond it"
    assert lines[0].startswith(f"theory: sigma_w^2={sigma_w2:g} sigma_b^2=0.05 tanh: {phase} (chi_1=")
    assert f"xi_c={theory['xi_c']:.3g}, trains to about 6 xi_c = {6 * theory['xi_c']:.0f} layers" in lines[0]
    assert f"depth 50 is {within}" in lines[0] and "layer 1 (784 -> 256)" in lines[0]
    measured = step0(run_dir, "preactivations", "corr")
    predicted = step0(run_dir, "theory", "preactivations_corr")
    assert len(measured) == len(predicted) == 50
    assert abs(measured[0] - predicted[0]) < 0.02  # layer 1: the inputs' own correlation, through one layer
    deep = measured[30:].mean()
    if phase == "chaotic":
        # finite width: the deep layers' mean correlation scatters around c* by about 0.8 (1 - c*^2) / sqrt(width)
        # (measured over seeds 0-7: 0.447 +- 0.041 at width 256, 0.439 +- 0.022 at 1024, c* = 0.4468)
        spread = 3 * (1 - theory["c_star"] ** 2) / math.sqrt(256)
        assert 0.2 < theory["c_star"] < 0.7 and abs(deep - theory["c_star"]) < spread
        assert abs(predicted[-1] - theory["c_star"]) < 0.01
    else:
        assert theory["c_star"] == 1.0 and deep > 0.999 and predicted[-1] > 0.999  # every input alike


def test_schemes_off_the_theory_say_what_was_assumed(tmp_path, mnist_root):
    done = train_inprocess("init=orthogonal", "depth=4", "trainer.max_steps=1", "trainer.limit_val_batches=1",
                           "trainer.limit_test_batches=1", "stats.figures=false", runs_dir=tmp_path,
                           data_root=mnist_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("theory: ")]
    assert "sigma_w^2=2 " in line and "relu: critical" in line and "assumed: orthogonal weights" in line


@pytest.mark.slow
def test_the_phase_diagram_experiment_reports_accuracy_against_6_xi_c(tmp_path, mnist_root):
    """experiment=phase_diagram_cpu on a 2 x 2 corner of its grid, one budget: the report's table and figure."""
    done = train_inprocess("-m", "experiment=phase_diagram_cpu", "init.sigma_w2=1.0,2.25", "depth=3,40",
                           "trainer.max_steps=60", runs_dir=tmp_path, data_root=mnist_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "batched group of 2 runs" in done.stdout + done.stderr  # a depth's sigma_w^2 trained together
    (sweep,) = tmp_path.iterdir()
    rows = list(csv.DictReader(open(sweep / "phase.csv")))
    assert list(rows[0]) == ["sigma_w2", "sigma_b2", "depth", "steps", "seed", "train_acc", "test_acc", "xi_c",
                             "depth_over_xi_c", "trainable", "predicted"]  # fmt: skip
    cells = {(float(r["sigma_w2"]), int(r["depth"])): r for r in rows}
    assert set(cells) == {(1.0, 3), (1.0, 40), (2.25, 3), (2.25, 40)}
    for (sigma_w2, depth), r in cells.items():
        expected = theory.depth_scales("tanh", sigma_w2, 0.05)["xi_c"]
        assert float(r["xi_c"]) == pytest.approx(expected) and r["steps"] == "60" and float(r["sigma_b2"]) == 0.05
        assert r["predicted"] == str(depth < 6 * expected)
        assert r["trainable"] == str(float(r["test_acc"]) >= 0.5)
    # sigma_w^2 = 1 is ordered (xi_c 3.6): depth 40 is 11 xi_c and does not train; depth 3 trains in 60 steps
    assert cells[(1.0, 40)]["trainable"] == "False" and cells[(1.0, 3)]["trainable"] == "True"
    assert (sweep / "report_phase.png").stat().st_size > 20_000
    report = (sweep / "report.md").read_text()
    assert "## Trainability: measured against 6 xi_c" in report and "measured and predicted agree in" in report
    # every cell judged and listed, agreeing or not, each with its verdicts
    assert "judged 4 of the sweep's 4;" in report and "- runs judged: 4 of 4\n" in report
    listed = [line.split(" | ")[:3] for line in report.splitlines() if line.startswith("| 60 | ")]
    assert sorted(listed) == [["| 60", "1", "3"], ["| 60", "1", "40"], ["| 60", "2.25", "3"], ["| 60", "2.25", "40"]]
    # the experiment validates at each epoch's end (430 steps of 128 images), after these runs' 60 steps
    assert ("\n\nbest_val_acc: empty, no validation ran in its 60 steps (Lightning validates at "
            "trainer.val_check_interval: by default at each epoch's end)\n") in report  # fmt: skip
    figures = read_events(sweep / "report").Tags()["images"]
    assert "report/phase" in figures
    # a job that never wrote its summary (killed before its end) is a cell the report names and could not judge
    killed = sweep / "4_depth=80,init.sigma_w2=1.0"
    shutil.copytree(next(sweep.glob("0_*")) / ".hydra", killed / ".hydra")
    config = killed / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("depth: 3\n", "depth: 80\n", 1))
    summarize(sweep)
    report = (sweep / "report.md").read_text()
    assert "judged 4 of the sweep's 5;" in report and "- runs judged: 4 of 5; not judged: 1 missing\n" in report
    assert "| 60 | 1 | 80 |  | 0 of 1 |  |  |  |  | not judged: 1 missing |" in report
