"""A sweep job's folder, shared by the processes that may run it: its lock (one process runs a job at a time; a
rerun of the sweep's command, a requeued cluster job or torchrun's ranks take turns) and the clearing of what an
earlier attempt left. Whether a job runs, resumes or is skipped is deepinit.sweep.job's to decide.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from filelock import BaseFileLock, FileLock, Timeout

log = logging.getLogger(__name__)

def clear_attempt(job_dir: Path) -> list[str]:
    """Remove what an earlier attempt wrote into job_dir (keeping Hydra's .hydra/ and the open job log),
    so the new attempt's events are the only ones TensorBoard shows for this run; returns what was removed."""
    removed = []
    for path in sorted(Path(job_dir).iterdir()):
        if path.name == ".hydra" or path.suffix == ".log":
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        removed.append(path.name)
    return removed


def lock_path(job_dir: Path, rank: int = 0) -> Path:
    """The job's lock file (in Hydra's .hydra/, which clearing an attempt keeps); under torchrun each rank walks
    the grid and takes its own."""
    return Path(job_dir) / ".hydra" / ("job.lock" if rank == 0 else f"job.rank{rank}.lock")


def claim(job_dir: Path, job_num: int, rank: int = 0) -> BaseFileLock | None:
    """The job's lock, held by this process until released (the OS releases it if the process dies), or None,
    with one log line, when another process is running the job: the same sweep started twice (a rerun to resume
    while the first still runs, a requeued cluster job) then runs each job once."""
    path = lock_path(job_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        log.info(f"job {job_num} skipped: running in another process (it holds {path})")
        return None
    return lock


def running_elsewhere(job_dir: Path) -> bool:
    """Whether some process holds the job's lock now (the sweep report's 'running')."""
    path = lock_path(job_dir)
    if not path.exists():
        return False
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False
