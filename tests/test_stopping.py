"""A run stopped by anyone goes on where it stopped: SIGTERM, kill -9 (with and without a checkpoint write cut short),
a sweep stopped both ways, submitit's preemption signal. Real runs, through the command line: each stopped one a
process of its own, the runs that go on from it (and the uninterrupted reference) through its cli() in this process."""

import collections
import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, read_events, signal_at, train_inprocess, wait_for_step
from deepinit.run import checkpoints
from deepinit.run.logger import tag_of

LOSS = tag_of("train/loss")  # as TensorBoard shows it

# 1,500 steps of a small MLP (about 6 s of training here), a periodic checkpoint every 100 steps; no figures at the
# end (half a short run's time; tests/test_layer_stats.py reads them)
RUN = [
    "depth=3", "width=64", "trainer.max_steps=1500", "trainer.max_epochs=-1", "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=10", "stats.every_n_steps=10", "stats.figures=false", "speed=off",
    "checkpoint.every_n_steps=100",
]  # fmt: skip
# The resumed run repeats the uninterrupted run's arithmetic step for step (the same weights, optimizer state and
# batches), so its results agree to rounding: the tolerance is for a different thread split of a reduction only.
TOLERANCE = 1e-4


def summary_of(run):
    return json.loads((run / "summary.json").read_text())


def stats_steps(run):
    """The steps layer_stats.csv holds, each once however often the run was stopped (else AssertionError)."""
    with open(run / "layer_stats.csv") as f:
        rows = collections.Counter(tuple(r.values())[:4] for r in csv.DictReader(f))  # step, layer, group, stat
    assert max(rows.values()) == 1, [row for row, n in rows.items() if n > 1][:3]
    return sorted({int(row[0]) for row in rows})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist_root):
    runs = tmp_path_factory.mktemp("whole")
    done = train_inprocess(*RUN, runs_dir=runs, data_root=mnist_root)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = runs.iterdir()
    return summary_of(run), stats_steps(run)


def assert_same_results(run, uninterrupted):
    reference, steps = uninterrupted
    summary = summary_of(run)
    assert summary["status"] == "ok" and summary["steps"] == reference["steps"] == 1500, summary["reason"]
    assert summary["epochs"] == reference["epochs"] == 4  # epochs 0-3 (an epoch is 430 steps)
    for key in ("test_acc", "test_loss"):
        assert summary["metrics"][key] == pytest.approx(reference["metrics"][key], abs=TOLERANCE), key
    assert stats_steps(run) == steps  # one history, every recorded step once
    assert [e.step for e in read_events(run).Scalars(LOSS)] == list(range(9, 1500, 10))  # in TensorBoard too
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch=3-step=1500.ckpt"]  # the rest pruned


@pytest.mark.slow
def test_sigterm_stops_a_run_like_ctrl_c_and_it_resumes_to_the_same_result(tmp_path, mnist_root, uninterrupted):
    step = random.Random().randint(100, 900)
    done, run = signal_at(tmp_path, mnist_root, step, RUN, signal.SIGTERM)
    assert done.returncode == 143, done.stderr[-2000:]  # 128 + SIGTERM, as a shell reports it
    assert "Traceback" not in done.stdout + done.stderr
    summary = summary_of(run)
    assert summary["status"] == "interrupted" and step <= summary["steps"] < 1500
    where = f"interrupted at step {summary['steps']} (epoch {summary['epochs']}) by SIGTERM"
    assert summary["reason"].startswith(where)
    assert summary["checkpoint"] == str(run / "checkpoints" / "interrupted.ckpt")
    assert f"resume with: python scripts/train.py resume={run}" in done.stdout + done.stderr

    resumed = train_inprocess(f"resume={run}", runs_dir=tmp_path / "unused", data_root=mnist_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert summary_of(run)["resumed"][0]["at_step"] == summary["steps"]
    assert_same_results(run, uninterrupted)


@pytest.mark.slow
def test_kill_9_loses_only_the_steps_since_the_newest_checkpoint(tmp_path, mnist_root, uninterrupted):
    """Killed just after the first epoch ended (step 430), with periodic checkpoints on a clock as by default
    (checkpoint.every_minutes; Lightning wrote none under the fast step), the newest of them then passed over as if
    there were none: the run goes on from the epoch's own checkpoint, which resumed as saved gave every later epoch a
    number one too high (deepinit.base.private_api); the sweep test below resumes a killed job from its periodic one."""
    on_a_clock = [a for a in RUN if not a.startswith("checkpoint.")] + ["checkpoint.every_minutes=0.002"]  # 0.12 s
    done, run = signal_at(tmp_path, mnist_root, 440, on_a_clock, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["status"] == "running" and on_disk["pid"] > 0 and on_disk["host"]  # as the process left it
    periodic = list((run / "checkpoints").glob("periodic-step=*.ckpt"))
    assert len(periodic) == 1  # the newest only
    periodic[0].unlink()
    newest = run / "checkpoints" / "epoch=0-step=430.ckpt"
    last = 430
    # a kill during a later write: a half-written temporary, and (as a writer without the rename would leave it) a
    # newer checkpoint cut short; both are passed over for the last whole one
    (run / "checkpoints" / f"periodic-step={last + 100}.ckpt.part").write_bytes(b"PK\x03\x04 cut")
    cut = run / "checkpoints" / f"periodic-step={last + 100}.ckpt"
    cut.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    later = time.time() + 5
    os.utime(cut, (later, later))

    resumed = train_inprocess(f"resume={run}", runs_dir=tmp_path / "unused", data_root=mnist_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {newest}" in resumed.stdout + resumed.stderr
    assert f"{cut}: damaged" in resumed.stdout + resumed.stderr
    assert summary_of(run)["resumed"][0]["at_step"] == last
    assert_same_results(run, uninterrupted)  # the damaged file pruned with the periodic ones, the temporary too


def test_a_checkpoint_write_that_fails_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    io = checkpoints.AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "periodic-step=100.ckpt"
    io.save_checkpoint({"global_step": 100, "w": torch.ones(1000)}, path)
    before = path.read_bytes()

    def cut(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", cut)
    with pytest.raises(OSError):
        io.save_checkpoint({"global_step": 200, "w": torch.zeros(1000)}, path)
    assert path.read_bytes() == before and checkpoints.intact(path)
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind
    assert checkpoints.newest_usable(tmp_path) == path


def test_a_run_whose_process_died_reads_as_interrupted(tmp_path):
    from deepinit.results.summary import Summary
    from deepinit.run.lifecycle import status

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process
    for pid, expected in ((gone.pid, "interrupted"), (os.getppid(), "running")):  # dead; alive (pytest's parent)
        Summary(status="running", run_dir=str(tmp_path), host=socket.gethostname(), pid=pid).write(tmp_path)
        read = status(tmp_path)
        assert read.status == expected, pid
        assert (expected == "interrupted") == ("ended without a word" in (read.reason or "")), read.reason
    # another host's process cannot be seen from here: still running (a sweep's job lock tells there)
    Summary(status="running", run_dir=str(tmp_path), host="elsewhere", pid=gone.pid).write(tmp_path)
    assert status(tmp_path).status == "running"


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_and_by_kill_9_finishes_every_job_once(tmp_path, mnist_root, uninterrupted):
    sweep_args = ["-m", *RUN, "seed=0,1", "sweep_name=s"]
    done, job0 = signal_at(tmp_path, mnist_root, 300, sweep_args, signal.SIGTERM, watch="s/0_*/layer_stats.csv")
    assert done.returncode == 143, done.stderr[-2000:]
    again, job1 = signal_at(tmp_path, mnist_root, 300, sweep_args, signal.SIGKILL, watch="s/1_*/layer_stats.csv")
    assert again.returncode == -signal.SIGKILL
    log = again.stdout + again.stderr
    assert "job 0: resuming its interrupted attempt from" in log and "replacing an earlier attempt" not in log
    assert summary_of(job0)["status"] == "ok"

    last = train_inprocess(*sweep_args, runs_dir=tmp_path, data_root=mnist_root)
    assert last.returncode == 0, last.stderr[-2000:]
    log = last.stdout + last.stderr
    assert "job 0 skipped: ok in an earlier run" in log and "job 1: resuming its interrupted attempt from" in log
    for job in (job0, job1):
        summary = summary_of(job)
        assert summary["status"] == "ok" and len(summary["resumed"]) == 1 and summary["resumed"][0]["at_step"] >= 200
    assert_same_results(job0, uninterrupted)  # seed 0 is the uninterrupted run's
    with open(tmp_path / "s" / "report.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok", "ok"]


@pytest.mark.slow
def test_a_lone_job_of_the_batched_launcher_resumes_from_its_checkpoint(tmp_path, mnist_root, uninterrupted):
    """Under hydra/launcher=batched a job that runs alone (here the sweep's only one) goes through the same job
    protocol as under the basic launcher: stopped by SIGTERM and rerun, it goes on from its checkpoint."""
    sweep_args = ["-m", *RUN, "seed=0", "hydra/launcher=batched", "sweep_name=b"]
    done, job = signal_at(tmp_path, mnist_root, 300, sweep_args, signal.SIGTERM, watch="b/0_*/layer_stats.csv")
    assert done.returncode == 143, done.stderr[-2000:]
    assert summary_of(job)["status"] == "interrupted"
    again = train_inprocess(*sweep_args, runs_dir=tmp_path, data_root=mnist_root)
    assert again.returncode == 0, again.stderr[-2000:]
    log = again.stdout + again.stderr
    assert "job 0: resuming its interrupted attempt from" in log and "replacing an earlier attempt" not in log
    summary = summary_of(job)
    assert len(summary["resumed"]) == 1 and summary["resumed"][0]["at_step"] >= 200, summary.get("resumed")
    assert_same_results(job, uninterrupted)  # seed 0 is the uninterrupted run's


@pytest.mark.slow
def test_submitit_requeues_a_preempted_job_which_resumes_from_its_checkpoint(tmp_path, mnist_root, uninterrupted):
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "-m", f"runs_dir={tmp_path}", *RUN,
           "hydra/launcher=submitit_local", "threads=1", "sweep_name=s"]  # fmt: skip
    env = {**os.environ, "DEEPINIT_DATA": str(mnist_root)}
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            job = wait_for_step(tmp_path, "s/0_*/layer_stats.csv", 400)
            pid = summary_of(job)["pid"]  # the job's own process, as its record names it
            os.kill(pid, signal.SIGUSR2)  # what submitit's scheduler sends before a time limit or a preemption
        finally:
            returncode = proc.wait(timeout=300)
    assert returncode == 0, (tmp_path / "out.txt").read_text()[-3000:]
    summary = summary_of(job)
    assert summary["status"] == "ok" and summary["steps"] == 1500 and summary["pid"] != pid  # the requeued one's
    assert len(summary["resumed"]) == 1 and summary["resumed"][0]["at_step"] >= 400  # from where it stopped
    assert stats_steps(job) == uninterrupted[1]  # no step done twice, none missing (threads=1: results may round
    # differently from the two-thread reference, so they are not compared here)


def test_a_run_that_ended_well_keeps_its_newest_epoch_checkpoint_only(tmp_path):
    """Resumed from an epoch's own checkpoint, Lightning's ModelCheckpoint does not know that file (its state was
    saved before it): the earlier epoch's checkpoint stayed beside the last one, 40 MB at depth 50."""
    folder = tmp_path / checkpoints.FOLDER
    folder.mkdir()
    names = ["epoch=0-step=430.ckpt", "epoch=3-step=1500.ckpt", "periodic-step=700.ckpt", f"x.ckpt{checkpoints.PART}"]
    for name in names:
        (folder / name).write_bytes(b"PK")
    checkpoints.remove_stale(tmp_path)
    assert [p.name for p in folder.iterdir()] == ["epoch=3-step=1500.ckpt"]
