"""What a job needs to know about the sweep it belongs to: the sweep folder's name, and whether it already ran.

The sweep folder is named by the command's own overrides (`sweep_init=kaiming,xavier_depth=10,50`), not by the
time, so rerunning the same command finds the same folder, where the jobs that already finished are skipped.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import BaseFileLock, FileLock, Timeout

from deepinit.summary import FINISHED, UNFINISHED, Summary

if TYPE_CHECKING:
    from deepinit.settings.records import Settings

log = logging.getLogger(__name__)

MAX_NAME = 100


def sweep_name(overrides: Sequence[str]) -> str:
    """`sweep_<overrides>` for a multirun's command-line overrides: readable, stable, one path component; the keys
    that do not change results (Settings.NEUTRAL) are left out."""
    from deepinit.settings.records import Settings

    kept = [o for o in overrides if o.lstrip("+~").split("=")[0] not in Settings.NEUTRAL]
    name = re.sub(r"[^\w=,.+-]", "-", "_".join(kept)) or "defaults"
    if len(name) > MAX_NAME:  # keep it readable and unique: a prefix and a hash of the whole
        name = f"{name[: MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return f"sweep_{name}"


def resume_point(job_dir: Path, settings: Settings) -> Path | None:
    """The newest usable checkpoint (deepinit.checkpoints) an unfinished attempt with these settings (but for
    Settings.RESUMABLE, a longer budget, as resume= allows) left, to go on from, else None. For the job's lock
    holder: an attempt that still says `running` died (on any host)."""
    from deepinit.checkpoints import newest_usable

    summary = Summary.read(job_dir)
    unfinished = summary is not None and summary.status in UNFINISHED
    resumable = unfinished and not settings.differing(summary.settings, also=settings.RESUMABLE)
    return newest_usable(job_dir) if resumable else None


def finished_summary(job_dir: Path, settings: Settings) -> Summary | None:
    """The summary of an earlier attempt at this job if it finished with the same settings, else None."""
    summary = Summary.read(job_dir)
    finished = summary is not None and summary.status in FINISHED and settings.same_results(summary.settings)
    return summary if finished else None


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


def skip_or_clear(job_dir: Path, settings: Settings, job_num: int, clear: bool = True) -> Summary | None:
    """A sweep job's start: the earlier summary when that attempt finished with these settings (the job is then
    skipped, unless force=true), else None, after clearing what an unfinished attempt left (where `clear`)."""
    done = finished_summary(job_dir, settings)
    if done is not None and not settings.run.force:
        log.info(f"job {job_num} skipped: {done.status} in an earlier run (force=true reruns it)")
        return done
    if clear and (removed := clear_attempt(job_dir)):
        log.info(f"job {job_num}: replacing an earlier attempt ({', '.join(removed)})")
    return None
