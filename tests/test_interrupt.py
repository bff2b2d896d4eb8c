"""Ctrl-C loses nothing: a run says where it stopped, keeps a checkpoint and resumes into one continuous history;
the same sweep started twice runs each job once. Each stopped run (and the sweep started twice) a process of its own,
as a user's; the runs that go on from them through the command line's cli() in this process (train_inprocess).
Slow: every test trains hundreds of steps and waits for a signal to land."""

import collections
import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, read_events, signal_at, train_inprocess
from deepinit.run.logger import tag_of

pytestmark = pytest.mark.slow

ARGS = [
    "depth=10", "trainer.max_epochs=2", "trainer.limit_train_batches=200", "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=10", "stats.every_n_steps=20",
]  # fmt: skip


def ctrl_c_at(runs_dir, mnist_root, step: int, args=ARGS) -> tuple[subprocess.CompletedProcess, object]:
    """Start the run, and once its (first) layer statistics reach `step`, send SIGINT as a terminal's Ctrl-C does."""
    return signal_at(runs_dir, mnist_root, step, args, signal.SIGINT)


def steps_of(run_dir, tag):
    return [e.step for e in read_events(run_dir).Scalars(tag)]


def test_ctrl_c_keeps_a_checkpoint_and_the_run_resumes_as_if_never_stopped(tmp_path, mnist_root):
    done, run = ctrl_c_at(tmp_path / "stopped", mnist_root, 60)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if "deepinit: interrupted" in line]
    assert len(lines) == 1 and f"resume with: python scripts/train.py resume={run}" in lines[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 60 <= summary["steps"] < 200 and summary["epochs"] == 0
    assert (run / "checkpoints" / "interrupted.ckpt").is_file()

    resumed = train_inprocess(f"resume={run}", runs_dir=tmp_path / "unused", data_root=mnist_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = train_inprocess(*ARGS, runs_dir=tmp_path / "whole", data_root=mnist_root)
    assert whole.returncode == 0, whole.stderr[-2000:]
    (uninterrupted,) = (tmp_path / "whole").iterdir()
    summary, reference = (json.loads((d / "summary.json").read_text()) for d in (run, uninterrupted))
    assert summary["status"] == "ok" and summary["steps"] == reference["steps"] == 400
    assert summary["resumed"][0]["at_step"] >= 60
    assert abs(summary["metrics"]["test_acc"] - reference["metrics"]["test_acc"]) < 0.01
    assert not (run / "checkpoints" / "interrupted.ckpt").exists()  # used, then removed
    # one continuous history: every step once, the same steps as the uninterrupted run's
    for tag in (tag_of("train/loss"), tag_of("val/acc"), "activations/sqr/layer_0005"):
        assert steps_of(run, tag) == steps_of(uninterrupted, tag), tag
    rows = collections.Counter(tuple(r.values())[:4] for r in csv.DictReader(open(run / "layer_stats.csv")))
    reference_rows = collections.Counter(
        tuple(r.values())[:4] for r in csv.DictReader(open(uninterrupted / "layer_stats.csv"))
    )  # noqa: E501
    assert max(rows.values()) == 1 and set(rows) == set(reference_rows)


def test_the_same_sweep_started_twice_runs_each_job_once(tmp_path, mnist_root):
    env = {**os.environ, "DEEPINIT_DATA": str(mnist_root), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "-m", f"runs_dir={tmp_path}",
           "init=kaiming,xavier,lecun", "depth=3", "trainer.max_steps=60", "trainer.limit_val_batches=2"]  # fmt: skip
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
             for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    (sweep,) = tmp_path.iterdir()
    jobs = sorted(p.parent for p in sweep.glob("*/.hydra"))
    assert len(jobs) == 3
    for job in jobs:
        assert len(list(job.glob("events.out.tfevents.*"))) == 1, job
        assert json.loads((job / "summary.json").read_text())["status"] == "ok"
    ran = sum(o.count("deepinit: ok") for o in outputs)
    assert ran == 3, outputs  # each job trained by one of the two processes
    report = (sweep / "report.csv").read_text()
    assert report.count(",ok,") == 3


def test_ctrl_c_stops_a_sweep_and_rerunning_it_resumes_the_interrupted_job(tmp_path, mnist_root):
    args = ["-m", "init=kaiming,xavier", *ARGS[:2], "trainer.limit_train_batches=100", *ARGS[3:]]
    done, job = ctrl_c_at(tmp_path, mnist_root, 40, args)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    (sweep,) = tmp_path.iterdir()
    assert sorted(p.parent.name for p in sweep.glob("*/.hydra")) == [job.name]  # the sweep stopped there
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "interrupted" and (job / "checkpoints" / "interrupted.ckpt").is_file()

    again = train_inprocess(*args, runs_dir=tmp_path, data_root=mnist_root)
    assert again.returncode == 0, again.stderr[-2000:]
    jobs = sorted(p.parent for p in sweep.glob("*/.hydra"))
    assert jobs[0] == job and jobs[1].name.startswith("1_") and "init=xavier" in jobs[1].name
    for run in jobs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["steps"] == 200, run
        # one event file per attempt (TensorBoard reads a folder's files as one run), every logged step once
        assert len(list(run.glob("events.out.tfevents.*"))) == (2 if run == job else 1), run
        assert steps_of(run, tag_of("train/loss")) == list(range(9, 200, 10)), run
    resumed = json.loads((job / "summary.json").read_text())["resumed"]
    assert len(resumed) == 1 and resumed[0]["at_step"] >= 40


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_a_batched_group_and_every_member_says_where(tmp_path, mnist_root, signum):
    args = ["-m", "hydra/launcher=batched", "init=kaiming,xavier", *ARGS[:2], "trainer.limit_train_batches=100"]
    args += ARGS[3:]
    done, _ = signal_at(tmp_path, mnist_root, 40, args, signum)
    output = done.stdout + done.stderr
    assert done.returncode == 128 + signum and "Traceback" not in output, output[-2000:]
    (sweep,) = tmp_path.iterdir()
    jobs = sorted(p.parent for p in sweep.glob("*/.hydra"))
    assert len(jobs) == 2
    for run in jobs:  # both members, through the lone run's lifecycle: where the group stopped, how to go on
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["steps"] >= 40, summary
        by = "" if signum == signal.SIGINT else " by SIGTERM"  # Ctrl-C goes unsaid
        assert summary["reason"].startswith(f"interrupted at step {summary['steps']} (epoch 0){by}; no checkpoint")
    assert f"deepinit: interrupted at step {summary['steps']}" in output

    again = train_inprocess(*args, runs_dir=tmp_path, data_root=mnist_root)  # the group runs again, from the start
    assert again.returncode == 0, again.stderr[-2000:]
    for run in jobs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["steps"] == 200 and summary["training_step"] == "batched", run
        assert len(list(run.glob("events.out.tfevents.*"))) == 1, run  # the interrupted attempt's were cleared
        assert steps_of(run, tag_of("train/loss")) == list(range(9, 200, 10)), run
