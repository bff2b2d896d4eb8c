"""Beyond one process: joblib and submitit launchers for sweeps, DDP (2 CPU processes, gloo) for a run and a sweep."""

import csv
import json
import os
import re
import subprocess
import sys
from datetime import datetime

import pytest

from conftest import REPO, train_cli, train_inprocess

TINY = ("init=kaiming,xavier", "depth=10", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1")


def _summaries(runs_dir):
    (sweep,) = runs_dir.iterdir()
    return sweep, [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]


def _tiny_sweep(runs_dir, data_root, *overrides, command=train_cli):
    done = command("-m", *overrides, *TINY, runs_dir=runs_dir, data_root=data_root)
    assert done.returncode == 0, done.stderr[-2000:]
    return _summaries(runs_dir)


@pytest.mark.slow
def test_joblib_runs_two_jobs_at_once_without_oversubscribing(tmp_path, mnist_root):
    overrides = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.max_steps=60")
    sweep, summaries = _tiny_sweep(tmp_path, mnist_root, *overrides)
    assert [s["status"] for s in summaries] == ["ok", "ok"]
    spans = [(datetime.fromisoformat(s["started"]).timestamp(), s["wall_time_s"]) for s in summaries]
    assert max(start for start, _ in spans) < min(start + wall for start, wall in spans)  # they overlapped
    for job in sorted(sweep.glob("*/train.log")):  # joblib gives each worker its share of the cores
        threads = int(re.search(r"device cpu \((\d+) threads?\)", job.read_text()).group(1))
        assert threads == 1 or 2 * threads <= len(os.sched_getaffinity(0))
    assert (sweep / "report.csv").exists()


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_grid(tmp_path, mnist_root):
    sweep, summaries = _tiny_sweep(
        tmp_path, mnist_root, "hydra/launcher=submitit_local", "threads=1", "trainer.max_steps=20"
    )
    assert [(s["config"]["init"], s["status"]) for s in summaries] == [("kaiming", "ok"), ("xavier", "ok")]
    assert len(list(sweep.glob(".submitit/*/*_result.pkl"))) == 2  # each ran as its own submitit job
    with open(sweep / "report.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


@pytest.mark.slow
def test_batched_launcher_writes_what_the_basic_launcher_writes(tmp_path, mnist_root):
    """hydra/launcher=batched: 4 runs (2 inits x 2 seeds) as one stacked group; folders, summaries and report
    in the same form as Hydra's basic launcher gives them; a rerun skips them all (resume)."""
    grid = ("seed=0,1", "trainer.max_steps=40", *TINY)
    done = train_inprocess("-m", "hydra/launcher=batched", *grid, runs_dir=tmp_path / "batched", data_root=mnist_root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "one batched group of 4" in done.stdout + done.stderr
    batched, batched_summaries = _summaries(tmp_path / "batched")
    basic, basic_summaries = _tiny_sweep(tmp_path / "basic", mnist_root, *grid[:2], command=train_inprocess)

    def files(sweep):
        return sorted(re.sub(r"tfevents\..*", "tfevents", p.relative_to(sweep).as_posix()) for p in sweep.rglob("*"))

    assert files(batched) == files(basic) and len(batched_summaries) == 4
    for one, other in zip(batched_summaries, basic_summaries, strict=True):
        assert one["status"] == "ok" and one["training_step"] == "batched" and other["training_step"] == "fast"
        assert one["config"] == other["config"] and one["steps"] == other["steps"] == 40
        assert set(one) == set(other) and set(one["metrics"]) == set(other["metrics"])
        assert abs(one["metrics"]["test_acc"] - other["metrics"]["test_acc"]) < 0.05  # one test batch of 1000
    with open(batched / "report.csv") as a, open(basic / "report.csv") as b:
        assert csv.DictReader(a).fieldnames == csv.DictReader(b).fieldnames
    again = train_inprocess("-m", "hydra/launcher=batched", *grid, runs_dir=tmp_path / "batched", data_root=mnist_root)
    assert again.returncode == 0 and (again.stdout + again.stderr).count("skipped: ok in an earlier run") == 4


@pytest.mark.slow
def test_a_full_disk_fails_a_batched_group_in_one_line(mnist_root, full_disk):
    done = train_cli(
        "-m", "hydra/launcher=batched", "trainer.max_steps=5", "stats=off", *TINY, data_root=mnist_root, **full_disk
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output[-2000:]  # the sweep itself goes on
    sweep, summaries = _summaries(full_disk["runs_dir"])
    assert f"batched group failed: NoRoomError: no room to write the run's files in {sweep} (" in output
    assert [s["status"] for s in summaries] == ["failed", "failed"]
    # each member's summary.json says what a lone run's says (its own folder named)
    assert all(s["reason"].startswith(f"no room to write the run's files in {sweep}/") for s in summaries)
    assert "2 runs: 2 failed" in output
    assert not list(sweep.rglob("*.ckpt*"))  # no truncated checkpoint


def test_a_bad_setting_fails_a_batched_group_in_one_line(tmp_path, mnist_root):
    done = train_inprocess("-m", "hydra/launcher=batched", *TINY, "depth=1", runs_dir=tmp_path, data_root=mnist_root)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output[-2000:]  # a row each, as with the basic one
    # refused settings are each job's own failure (checked before any group forms), one line each
    for job in (0, 1):
        assert f"job {job} failed: ConfigError: depth must be an integer >= 2 (got 1)" in output
    _, summaries = _summaries(tmp_path)
    assert [s["reason"] for s in summaries] == ["depth must be an integer >= 2 (got 1)"] * 2  # a lone run's line


def test_batched_launcher_refuses_a_bad_group_size(tmp_path, mnist_root):
    done = train_inprocess(
        "-m", "hydra/launcher=batched", "hydra.launcher.max_group_size=0", runs_dir=tmp_path, data_root=mnist_root
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "hydra.launcher.max_group_size must be an integer >= 1 (got 0)" in done.stderr


def test_slurm_launcher_config_composes_with_its_settings(tmp_path):
    import yaml

    done = train_inprocess("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2",
                           "--cfg=hydra", runs_dir=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    launcher = yaml.safe_load(done.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["partition"], launcher["gpus_per_node"], launcher["timeout_min"]) == ("gpu", 2, 60)
    assert (launcher["signal_delay_s"], launcher["max_num_timeout"]) == (120, 3)  # a stopped job requeues, resumes


DDP = ("width=64", "trainer.max_epochs=1", "trainer.limit_val_batches=1", "trainer.accelerator=cpu",
       "trainer.devices=2", "trainer.strategy=ddp")  # fmt: skip
SHARD_STEPS = -(-55_000 // 2 // 128)  # each of 2 processes steps through its half of the training set


def _one_each(job):
    assert len(list(job.glob("events.*"))) == 1 and len(list(job.glob("summary.json"))) == 1
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == SHARD_STEPS, summary
    with open(job / "layer_stats.csv") as f:
        assert sum(line.startswith("step,") for line in f) == 1  # one process observed
    return summary


@pytest.mark.slow
def test_ddp_single_run_shards_the_data_and_writes_once(tmp_path, mnist_root):
    done = train_cli("depth=2", *DDP, runs_dir=tmp_path, data_root=mnist_root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Error executing job" not in done.stderr, done.stderr[-2000:]  # nor in the second process
    (run,) = tmp_path.iterdir()
    assert _one_each(run)["metrics"]["test_acc"] > 0.85


@pytest.mark.slow
def test_ddp_sweep_runs_under_torchrun_and_not_under_a_plain_multirun(tmp_path, mnist_root):
    env = {**os.environ, "DEEPINIT_DATA": str(mnist_root)}
    # --standalone: a free port of its own (the default, 29500, is shared with any other torchrun on the machine)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "scripts" / "train.py"),
           "-m", "depth=2,3", *DDP, f"runs_dir={tmp_path / 'torchrun'}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    sweep, _ = _summaries(tmp_path / "torchrun")
    for job in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir()):
        _one_each(job)
    assert len(list((sweep / "report").glob("events.*"))) == 1  # one process wrote the report

    plain = train_cli("-m", "depth=2", *DDP, runs_dir=tmp_path / "plain", data_root=mnist_root)
    assert plain.returncode == 0, plain.stderr[-2000:]
    _, (summary,) = _summaries(tmp_path / "plain")
    assert summary["status"] == "failed" and "re-running the whole sweep" in summary["reason"]
