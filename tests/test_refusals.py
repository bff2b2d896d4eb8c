"""A refused command leaves everything it names as it was: resume= of a finished run, of a stopped run with other
settings or of a run still running, and a sweep's rerun whose settings are refused. The runs through the real
command line, the refused commands through its cli() in this process (train_inprocess); every file of the run
compared byte for byte before and after."""

import hashlib
import json
import os
import signal
import socket

import pytest

from conftest import signal_at, train_inprocess

SMALL = ["depth=3", "width=16", "trainer.limit_val_batches=2", "stats.every_n_steps=20", "stats.figures=false"]
pytestmark = pytest.mark.slow  # each test refuses a command on a run it trained first (one stopped by SIGTERM)


def files_of(folder) -> dict[str, str]:
    """Every file below folder (Hydra's .hydra/ record and the job log included) -> its sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "job.lock"  # a sweep's lock file: the OS's, empty, rewritten by flock
    }


def refused(command, folder, *, runs_dir) -> str:
    """Run the command; assert it was refused in one line (exit 1, no traceback) and left folder byte-identical;
    return that line."""
    before = files_of(folder)
    done = train_inprocess(*command, runs_dir=runs_dir)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert files_of(folder) == before
    return lines[0]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, mnist_root):
    """A run stopped by SIGTERM at step >= 40, with its interrupt checkpoint."""
    runs = tmp_path_factory.mktemp("stopped")
    done, run = signal_at(runs, mnist_root, 40, [*SMALL, "trainer.max_steps=5000"], signal.SIGTERM)
    assert done.returncode == 143, done.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    return run


def test_resume_of_a_finished_run_is_refused_and_the_run_kept(tmp_path, mnist_root):
    done = train_inprocess(*SMALL, "trainer.max_steps=20", runs_dir=tmp_path, data_root=mnist_root)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = tmp_path.iterdir()
    line = refused([f"resume={run}"], run, runs_dir=tmp_path / "unused")
    assert "nothing to resume: it finished (ok)" in line
    assert json.loads((run / "summary.json").read_text())["status"] == "ok"


def test_resume_with_other_settings_names_them_and_leaves_the_run_resumable(tmp_path, stopped_run):
    line = refused([f"resume={stopped_run}", "depth=4", "optim.lr=0.001"], stopped_run, runs_dir=tmp_path)
    assert "depth (3 -> 4)" in line and "optim.lr (0.0003 -> 0.001)" in line
    assert "trainer.max_steps, trainer.max_epochs" in line  # what may change
    line = refused([f"resume={stopped_run}", "init=xavier"], stopped_run, runs_dir=tmp_path)
    assert "init.name (kaiming -> xavier)" in line


def test_resume_of_a_run_still_running_is_refused(tmp_path, stopped_run):
    summary_file = stopped_run / "summary.json"
    saved = summary_file.read_bytes()
    # as a live process on this host leaves it: pytest's parent (the refused command runs in this process, whose own
    # pid a record names only when an earlier job in it never ended)
    running = {**json.loads(saved), "status": "running", "host": socket.gethostname(), "pid": os.getppid()}
    summary_file.write_text(json.dumps(running))
    try:
        line = refused([f"resume={stopped_run}"], stopped_run, runs_dir=tmp_path)
        assert f"still running (pid {os.getppid()})" in line
    finally:
        summary_file.write_bytes(saved)


def test_resume_may_train_longer_and_ends_ok(tmp_path, stopped_run, mnist_root):
    """After the refusals the stopped run is still resumable, with a longer budget (trainer.max_steps may change)."""
    done = train_inprocess(f"resume={stopped_run}", "trainer.max_steps=120", runs_dir=tmp_path, data_root=mnist_root)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((stopped_run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == 120 and summary["resumed"][0]["at_step"] >= 40


@pytest.mark.parametrize("launcher", ["basic", "batched"])
def test_a_sweep_rerun_with_a_refused_setting_keeps_the_finished_jobs(tmp_path, mnist_root, launcher):
    sweep = ["-m", f"hydra/launcher={launcher}", "init=kaiming,xavier", *SMALL, "trainer.max_steps=20"]
    done = train_inprocess(*sweep, runs_dir=tmp_path, data_root=mnist_root)
    assert done.returncode == 0, done.stderr[-2000:]
    (folder,) = tmp_path.iterdir()
    jobs = sorted(p.parent for p in folder.glob("*/summary.json"))
    assert len(jobs) == 2
    kept = {job: {k: v for k, v in files_of(job).items() if not k.startswith(".hydra") and k != "train.log"}
            for job in jobs}  # fmt: skip
    # threads does not name the folder (it does not change results): the rerun lands on the finished jobs
    again = train_inprocess(*sweep, "threads=0", runs_dir=tmp_path, data_root=mnist_root)
    assert "Traceback" not in again.stdout + again.stderr
    output = again.stdout + again.stderr
    assert output.count("refused: threads must be null or an integer >= 1 (got 0)") == 2, output[-2000:]
    assert sorted(p.parent for p in folder.glob("*/summary.json")) == jobs
    for job, before in kept.items():
        after = {k: v for k, v in files_of(job).items() if not k.startswith(".hydra") and k != "train.log"}
        assert after == before, job
        assert json.loads((job / "summary.json").read_text())["status"] == "ok"
