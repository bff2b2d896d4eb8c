"""A real multirun through the command line: one sweep folder, a report with every job, failures recorded, not fatal.
Through scripts/train.py's cli() in this process (train_inprocess), where Hydra's basic launcher runs a sweep's jobs
in any case (tests/test_stopping.py and tests/test_interrupt.py run sweeps as processes of their own)."""

import csv
import json
import shutil

import pytest

from conftest import train_inprocess
from test_hparams import hparams_data


@pytest.mark.slow
def test_multirun_grid_report_and_failures(tmp_path, mnist_root):
    done = train_inprocess(
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


@pytest.mark.slow
def test_a_failing_job_is_a_row_not_the_end_of_the_sweep(tmp_path, mnist_root):
    done = train_inprocess(
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
    from deepinit.sweep.report import aggregate_lines

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


def _jobs(sweep):
    return sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())


@pytest.mark.slow
def test_rerunning_the_command_resumes_the_sweep(tmp_path, mnist_root):
    grid = ("-m", "init=kaiming,xavier", "depth=3", "trainer.max_steps=3", "trainer.limit_val_batches=1")

    def sweep_once(*extra):
        done = train_inprocess(*grid, *extra, runs_dir=tmp_path, data_root=mnist_root)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout + done.stderr

    sweep_once()
    (sweep,) = tmp_path.iterdir()
    assert sweep.name == "sweep_init=kaiming,xavier_depth=3_" + "_".join(grid[3:])
    kaiming, xavier = _jobs(sweep)
    kaiming_events = sorted(kaiming.glob("events.*"))
    # xavier was interrupted before its first checkpoint: only it runs again, and its new events replace the old ones
    # (one that left a checkpoint goes on from it: tests/test_stopping.py)
    summary_path = xavier / "summary.json"
    summary_path.write_text(summary_path.read_text().replace('"status": "ok"', '"status": "interrupted"'))
    shutil.rmtree(xavier / "checkpoints")
    old_xavier_events = sorted(xavier.glob("events.*"))
    out = sweep_once()
    assert "job 0 skipped: ok in an earlier run" in out and "job 1: replacing an earlier attempt" in out
    assert sorted(kaiming.glob("events.*")) == kaiming_events
    new_xavier_events = sorted(xavier.glob("events.*"))
    assert len(new_xavier_events) == 1 and new_xavier_events != old_xavier_events
    assert json.loads(summary_path.read_text())["status"] == "ok"
    # a finished job whose settings differ from the command's (changed defaults) is not taken for done
    summary = json.loads((kaiming / "summary.json").read_text())
    summary["settings"]["width"] = 999
    (kaiming / "summary.json").write_text(json.dumps(summary))
    out = sweep_once()
    assert "job 0: replacing an earlier attempt" in out and "job 1 skipped: ok" in out
    # force=true reruns everything, in the same folders
    out = sweep_once("force=true")
    assert "skipped" not in out and out.count("replacing an earlier attempt") == 2
    assert [p.name for p in tmp_path.iterdir()] == [sweep.name] and _jobs(sweep) == [kaiming, xavier]
    with open(sweep / "report.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok", "ok"]
    assert len(list((sweep / "report").glob("events.*"))) == 1  # the report replaced, not stacked


@pytest.mark.slow
def test_experiment_notebook_runs_its_grid(tmp_path, mnist_root):
    done = train_inprocess(
        "-m", "experiment=notebook", "trainer.max_steps=1", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "stats=off", "trainer.enable_checkpointing=false",  # 314 MB a run
        runs_dir=tmp_path, data_root=mnist_root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (sweep,) = tmp_path.iterdir()
    assert sweep.name.startswith("sweep_experiment=notebook_")
    with open(sweep / "report.csv") as f:
        rows = {(r["activation"], r["init"]): r for r in csv.DictReader(f)}
    assert set(rows) == {(a, i) for a in ("linear", "relu") for i in ("normal", "small", "lecun", "kaiming")}
    assert all(r["depth"] == "100" and r["width"] == "512" for r in rows.values())
    # N(0,1) at width 512: the signal grows ~sqrt(512) per layer, float32 overflows long before layer 100
    assert {k for k, r in rows.items() if r["status"] == "diverged"} == {("linear", "normal"), ("relu", "normal")}


def test_sweep_names_are_readable_stable_and_bounded():
    from deepinit.settings.records import folder_name

    where = ["runs_dir=/tmp/x", "data.root=/data", "threads=1", "force=true"]
    assert folder_name(sweep=["init=kaiming,xavier", "depth=10,50", *where]) == "sweep_init=kaiming,xavier_depth=10,50"
    long = ["init=" + ",".join(["kaiming"] * 30)]
    name = folder_name(sweep=long)
    assert len(name) == len("sweep_") + 100 and name == folder_name(sweep=long)
    assert name != folder_name(sweep=[*long, "seed=1"])  # the hash tells apart what the prefix cuts off
    assert "/" not in folder_name(sweep=["+trainer.default_root_dir=/a/b"])
