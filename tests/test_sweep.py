"""A real multirun through the CLI: one sweep folder, a report with every job, failures recorded, not fatal."""

import csv
import json

from conftest import train_cli
from test_hparams import hparams_data


def test_multirun_grid_report_and_failures(tmp_path, mnist_root):
    done = train_cli(
        "-m",
        "init=kaiming,normal",
        "depth=4,50",
        "trainer.max_steps=20",
        "trainer.limit_val_batches=2",
        runs_dir=tmp_path,
        data_root=mnist_root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (sweep,) = tmp_path.iterdir()
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert [j.name.split("_", 1)[0] for j in jobs] == ["0", "1", "2", "3"]
    with open(sweep / "report.csv") as f:
        rows = {(r["init"], r["depth"]): r for r in csv.DictReader(f)}
    assert set(rows) == {("kaiming", "4"), ("kaiming", "50"), ("normal", "4"), ("normal", "50")}
    diverged = rows[("normal", "50")]
    assert diverged["status"] == "diverged" and diverged["divergence_step"] == "0"
    assert 30 <= int(diverged["divergence_layer"]) <= 40 and "non-finite" in diverged["reason"]
    assert rows[("kaiming", "4")]["status"] == "ok" and float(rows[("kaiming", "4")]["test_acc"]) > 0.3
    for name in ("accuracy", "heatmap", "profiles"):
        assert (sweep / f"report_{name}.png").stat().st_size > 10_000
    assert "4 runs: 3 ok, 1 diverged" in (sweep / "report.md").read_text()
    for job in jobs:  # every job's HParams, each in its own single event file
        start, metrics = hparams_data(job)
        assert start["depth"] in (4, 50) and "final/test_acc" in metrics


def test_a_failing_job_is_a_row_not_the_end_of_the_sweep(tmp_path, mnist_root):
    done = train_cli(
        "-m", "depth=0,3", "trainer.max_steps=5", "trainer.limit_val_batches=0", runs_dir=tmp_path, data_root=mnist_root
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (sweep,) = tmp_path.iterdir()
    with open(sweep / "report.csv") as f:
        rows = {r["job"].split("_", 1)[0]: r for r in csv.DictReader(f)}
    assert rows["0"]["status"] == "failed" and "depth must be an integer >= 2 (got 0)" in rows["0"]["reason"]
    assert rows["1"]["status"] == "ok"
    failed = json.loads(next(sweep.glob("0_*/summary.json")).read_text())
    assert failed["status"] == "failed"


def test_seed_repeats_aggregate_as_mean_and_spread():
    from deepinit.report import aggregate_lines

    base = {"init": "kaiming", "activation": "relu", "depth": 50}
    rows = [
        {**base, "status": "ok", "test_acc": 0.90, "seed": 0},
        {**base, "status": "ok", "test_acc": 0.94, "seed": 1},
        {**base, "status": "diverged", "test_acc": None, "seed": 2},
        {**base, "init": "normal", "status": "failed", "test_acc": None, "seed": 0},
    ]
    header, rule, *body = aggregate_lines(rows)
    assert "mean +- sd" in header
    assert body == [
        "| kaiming | relu | 50 | 3 | 2 | 1 | 0 | 0.9200 +- 0.0200 |",
        "| normal | relu | 50 | 1 | 0 | 0 | 1 |  |",
    ]
