"""One job from its folder to its end line: the protocol that a lone run, a sweep's job under Hydra's basic launcher
and every job of the batched launcher (a group's members and the jobs that run alone) go through.

    with open_job(cfg, run_dir, num) as job:   # claimed, its settings built, its action decided
        if job.pending:
            job.run()                          # alone; a batched group trains its members and sets their summaries
        job.end()                              # its last line

`open_job` decides once what a job does (`Job.action`):
- held: another process runs it (its lock, deepinit.run.folder.claim): nothing to do here;
- refused: its settings are refused; its summary says failed, unless an earlier attempt's record is kept
  (lifecycle.refuse_job); a lone run's refusal goes up as its one-line error;
- skip: a sweep job that finished earlier with these settings (force=true reruns it);
- resume: resume= (a lone run), or a sweep job whose interrupted attempt had these settings (but for
  Settings.RESUMABLE) and left a checkpoint (lifecycle.check_resume decides, for both);
- run: anything else, after clearing what an earlier attempt left in a sweep job's folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import BaseFileLock

from deepinit.base.rules import ConfigError
from deepinit.results.summary import FINISHED, Summary
from deepinit.run import stopping, train
from deepinit.run.checkpoints import newest_usable
from deepinit.run.folder import claim, clear_attempt
from deepinit.run.lifecycle import (
    RunInterrupted,
    RunRecord,
    check_resume,
    refuse_job,
    report_failure,
    report_interrupted,
    status,
)
from deepinit.settings.hydra import from_config
from deepinit.settings.records import Settings

log = logging.getLogger("deepinit")


@dataclass
class Job:
    """A job as open_job decided it: its folder, sweep job number (None: a lone run), rank (under torchrun, rank 0
    clears and reports), settings, action, the attempt it resumes (`earlier`), its summary once it has one, and its
    lock (held until the job is closed)."""

    run_dir: Path
    num: int | None = None
    rank: int = 0
    settings: Settings | None = None
    action: str = "run"
    earlier: Summary | None = None
    summary: Summary | None = None
    lock: BaseFileLock | None = None

    @property
    def name(self) -> str:
        return "the run" if self.num is None else f"job {self.num}"

    @property
    def pending(self) -> bool:
        """Whether it is still to be trained (run or resume)."""
        return self.action in ("run", "resume")

    def run(self) -> Summary:
        """Train it alone (deepinit.run.train.run) under the failure policy: Ctrl-C or a stop signal stops it, and the
        sweep, with its one line (RunInterrupted goes up); a sweep job's failure is its summary, a row of the sweep
        report; a lone run's failure goes up (scripts/train.py says a user's error in one line)."""
        assert self.settings is not None and self.pending
        try:
            self.summary = train.run(self.settings, self.run_dir, earlier=self.earlier)
        except RunInterrupted as e:
            report_interrupted(e)
            stopping.pass_on(e.signum)  # submitit's handler, where it ran us: it requeues the job and exits
            raise
        except Exception as e:
            if self.num is None:
                raise
            report_failure(e, self.name)
            self.failed(e)
        return self.summary

    def failed(self, error: BaseException) -> Summary:
        """Its summary after a failure already reported: the one its run wrote, else one that says failed."""
        written = status(self.run_dir, locked=True)
        self.summary = written if written.status != "missing" else RunRecord.failed(self.run_dir, error)
        return self.summary

    def end(self, log_file: Path | None = None) -> None:
        """Its last line (status, accuracy, time, where its logs are, how to view them), where it ran or was refused
        here; log_file: also appended there (the batched launcher ends its jobs after Hydra's job logging)."""
        if self.summary is None or self.action in ("held", "skip") or self.rank != 0:
            return
        # runs_dir, or where a refused sweep job's folder says it is: <runs_dir>/<sweep>/<job>
        runs_root = Path(self.settings.run.runs_dir) if self.settings is not None else self.run_dir.parents[1]
        line = self.summary.end_line(runs_root)
        log.info(line if self.num is None else f"job {self.num}: {line}")
        if log_file is not None:
            with open(log_file, "a") as f:
                f.write(line + "\n")

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_job(cfg: Any, run_dir: Path, num: int | None = None, rank: int = 0) -> Job:
    """The job in run_dir, for Hydra's composed config `cfg`: claimed (a sweep job's lock), its Settings built, its
    action decided (see the module docstring). A lone run's refused settings raise ConfigError once its summary says
    failed."""
    job = Job(Path(run_dir), num, rank)
    if num is not None and (lock := claim(job.run_dir, num, rank)) is None:
        job.action = "held"
        return job
    job.lock = lock if num is not None else None
    try:
        job.settings = settings = from_config(cfg)
    except ConfigError as e:
        if num is None:
            RunRecord.failed(job.run_dir, e)
            raise
        job.action, job.summary = "refused", refuse_job(job.run_dir, num, e, clear=rank == 0)
        return job
    if num is None:  # a lone run: resume= was checked before Hydra wrote into its folder; checked again here
        if settings.run.resume is not None:
            job.action, job.earlier = "resume", check_resume(job.run_dir, settings)
        return job
    earlier = status(job.run_dir, locked=True)  # this process holds the lock: a `running` there died
    if earlier.status in FINISHED and settings.same_results(earlier.settings) and not settings.run.force:
        log.info(f"job {num} skipped: {earlier.status} in an earlier run (force=true reruns it)")
        job.action, job.summary = "skip", earlier
        return job
    try:
        job.earlier = check_resume(job.run_dir, settings, locked=True)
    except ConfigError:  # finished, failed, missing, or other settings: it runs again
        job.earlier = None
    if job.earlier is not None and (checkpoint := newest_usable(job.run_dir)) is not None:
        log.info(f"job {num}: resuming its interrupted attempt from {checkpoint}")
        job.action = "resume"
    else:
        job.earlier = None
        if rank == 0 and (removed := clear_attempt(job.run_dir)):
            log.info(f"job {num}: replacing an earlier attempt ({', '.join(removed)})")
    return job
