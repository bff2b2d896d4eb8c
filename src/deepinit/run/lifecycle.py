"""A run's life from its first line to its summary.json: the one place that decides how a run ends, and how a
failure is reported.

Every run goes through a `RunRecord`: a lone run (deepinit.run.train), each member of a batched group
(deepinit.batched) and, under DDP, every rank (rank 0 writes the file). Once configured it says `running` (with
host and pid: a run whose process died reads as interrupted, deepinit.results.summary) and ends as one of

- ok: trained and tested (`conclude`);
- diverged: the loss stopped being finite, a result of the study (`diverged`, then `conclude`);
- interrupted: Ctrl-C or a stop signal (deepinit.run.stopping); the reason says where it stopped, by which signal, and
  how to go on (RunInterrupted is raised);
- failed: anything else; bad settings and bad data keep their one line, a full disk becomes NoRoomError's.

`with RunRecord(run_dir) as record:` turns whatever ends the block into that status and writes summary.json
(deepinit.results.summary.Summary) whole (on a full disk it first removes the truncated checkpoint, which makes room for
it; where even the summary cannot be written, the run's own one-line error still goes up). The run's TensorBoard
logger (RunLogger) is opened and closed here too, with its HParams row written once at the end.

`report_failure`, `report_interrupted` and `exit_line` are the failure policy of the script and the launchers: the
user's errors (bad settings, bad data, a full disk) are one line; anything else is a bug, and its traceback goes to
the job's log.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from deepinit.base.rules import ConfigError
from deepinit.data.provision import DataError
from deepinit.results.summary import UNFINISHED, Divergence, Metrics, Summary
from deepinit.run import checkpoints, stopping
from deepinit.run.folder import clear_attempt, running_elsewhere
from deepinit.run.logger import RunLogger, hparams_metrics, hparams_row, shown_columns
from deepinit.settings.records import Settings

log = logging.getLogger(__name__)


class NoRoomError(RuntimeError):
    """A run could not write its files: the disk, a quota or the file-size limit is full."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or a stop signal (signum) stopped a run; its summary says interrupted. A KeyboardInterrupt still, so
    that it stops a sweep (Hydra's launchers record an Exception as the job's failure and go on)."""

    def __init__(self, summary: Summary, signum: int = signal.SIGINT) -> None:
        super().__init__(summary.reason)
        self.summary, self.signum = summary, signum


# What a run's user can mend: bad settings, bad data, a full disk. Their one line is the whole message: no traceback.
USER_ERRORS = (ConfigError, DataError, NoRoomError)


def exit_line(error: BaseException) -> str:
    """The one line a lone run's user sees for their error: `error: ...`, or `data error: ...`."""
    return f"{'data error' if isinstance(error, DataError) else 'error'}: {error}"


def report_failure(error: BaseException, what: str) -> None:
    """Log that `what` (a sweep's job, a batched group) failed, in one line; a bug's traceback goes with it (to the
    job's log). The sweep goes on: a failure is a row of its report."""
    user = isinstance(error, USER_ERRORS)
    log.error(f"{what} failed: {type(error).__name__}: {error}", exc_info=None if user else error)


def refuse_job(run_dir: Path, num: int, error: ConfigError, clear: bool = True) -> Summary | None:
    """A sweep job whose settings are refused, in one line (a row of the sweep report, not the sweep's end): its
    summary says failed, unless an earlier attempt left one (a rerun with a bad value of a key that does not name the
    folder), which a refusal keeps as it was. Returns the failed summary, or None where the earlier one was kept.
    clear: remove what a killed attempt left first (under torchrun, one process does)."""
    if status(run_dir, locked=True).status != "missing":
        log.error(f"job {num} refused: {error}; its earlier attempt is left as it was")
        return None
    report_failure(error, f"job {num}")
    if clear:
        clear_attempt(run_dir)
    return RunRecord.failed(run_dir, error)


def report_interrupted(interrupted: RunInterrupted) -> None:
    """The console's one line (and the run's log's) for a run that Ctrl-C stopped: where, and how to go on."""
    log.warning(f"deepinit: {interrupted.summary.reason}")


# ENOSPC: disk full; EDQUOT: quota; EFBIG: the process's file-size limit (ulimit -f)
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def no_room(error: BaseException, run_dir: Path) -> NoRoomError | None:
    """The one-line error, naming run_dir, for a write that failed for want of space (anywhere in error's chain),
    else None. A NoRoomError already made for another folder is made again for this one."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    cause = next((c for c in chain if isinstance(c, OSError) and c.errno in NO_ROOM), None)
    if cause is None:
        return next((c for c in chain if isinstance(c, NoRoomError)), None)
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    free = shutil.disk_usage(existing).free / 2**20
    return NoRoomError(
        f"no room to write the run's files in {run_dir} ({cause.strerror}; {free:,.0f} MiB free there); free some"
        " space, or leave out the checkpoints (the largest files) with trainer.enable_checkpointing=false",
    )


def remove_truncated_checkpoints(run_dir: Path) -> None:
    """Lightning writes a checkpoint to the temp folder and then copies it into place, so a full disk can leave a
    truncated one; a checkpoint is a zip archive, whose directory is written last."""
    for checkpoint in run_dir.glob("checkpoints/*.ckpt"):
        if not zipfile.is_zipfile(checkpoint):
            checkpoint.unlink()


def resume_hint(run_dir: Path) -> str:
    """How a stopped run goes on, as its reason and the console say it."""
    return f"resume with: python scripts/train.py resume={run_dir}"


def status(run_dir: Path, locked: bool = False) -> Summary:
    """The run in run_dir as its files tell it: the one place that reads a run's status off the disk.

    - running, reason "running in another process": some other process holds its sweep job's lock (a summary.json
      there is an earlier attempt's);
    - interrupted: its summary says running, but its process ended without a word (kill -9, the OOM killer); with
      `locked` (the caller holds the job's lock) a `running` on any host died;
    - missing: no readable summary.json (killed before its first write, or not a run's folder);
    - else what its summary.json says (running on another host, which this one cannot see, stays running).
    """
    run_dir = Path(run_dir)
    if not locked and running_elsewhere(run_dir):
        return Summary(run_dir=str(run_dir), status="running", reason="running in another process")
    summary = Summary.read(run_dir)
    if summary is None:
        return Summary(run_dir=str(run_dir), status="missing", reason="no summary.json (killed?)")
    if summary.status == "running" and (locked or not summary.may_be_running()):
        summary.status = "interrupted"
        summary.reason = (f"its process ({summary.pid} on {summary.host}) ended without a word (kill -9, the OOM "
                          f"killer?); {resume_hint(run_dir)}")  # fmt: skip
    return summary


def check_resume(run_dir: Path, settings: Settings, locked: bool = False) -> Summary:
    """The summary of the stopped attempt in run_dir that `settings` may go on from; else ConfigError, one line
    naming why (still running, nothing to resume, other settings: which keys). It only reads: a refused resume
    leaves the run's files as they were. locked: the caller holds the job's lock (deepinit.run.folder.claim), so an
    attempt that still says `running` died."""
    earlier = status(run_dir, locked)
    if earlier.status == "missing":
        raise ConfigError(f"resume={run_dir}: nothing to resume (no readable summary.json in it)")
    if earlier.status == "running" and earlier.host in (socket.gethostname(), None):  # None: its job's lock is held
        where = f"pid {earlier.pid}" if earlier.pid is not None else "in another process"
        raise ConfigError(f"resume={run_dir}: it is still running ({where}); stop it first")
    if earlier.status not in UNFINISHED:
        done = f"it {'failed' if earlier.status == 'failed' else 'finished'} ({earlier.status})"
        raise ConfigError(f"resume={run_dir}: nothing to resume: {done}; only an interrupted run resumes. To train it "
                          "again or longer, start a new run with its settings")  # fmt: skip
    changed = settings.differing(earlier.settings, also=Settings.RESUMABLE)
    if changed:
        keys = ", ".join(f"{k} ({before} -> {now})" for k, (before, now) in list(changed.items())[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise ConfigError(
            f"resume={run_dir}: these settings differ from the run's own: {keys}{more}; a resumed run may change only "
            f"{', '.join(Settings.RESUMABLE)} (and where it writes, how many threads): drop the others"
        )
    return earlier


class RunRecord:
    """One run's summary.json, from start to end (see the module docstring). `trainer`, once set, says where
    Ctrl-C stopped the run (its global_step and current_epoch) and whether Lightning's graceful shutdown ran."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.start = Path(run_dir), time.time()
        started = datetime.fromtimestamp(self.start).isoformat(timespec="milliseconds")
        self.summary = Summary(run_dir=str(run_dir), started=started)
        self.settings: Settings | None = None
        self.logger: RunLogger | None = None
        self.trainer: Any = None
        self.closed = False

    @classmethod
    def failed(cls, run_dir: Path, error: BaseException) -> Summary:
        """The summary a run writes that failed before it could start (its settings refused, say)."""
        record = cls(run_dir)
        if (instead := record.close(error)) is not None:
            raise instead
        return record.summary

    def configure(self, settings: Settings) -> None:
        """The run's settings, and summary.json says `running` (this host, this process) from here on."""
        self.settings = settings
        summary = self.summary
        summary.config = settings.essentials()
        summary.settings = settings.config  # all of it, to tell a rerun apart
        summary.status, summary.host, summary.pid = "running", socket.gethostname(), os.getpid()
        if rank_zero_only.rank == 0:
            summary.write(self.run_dir)

    def open_logger(self) -> RunLogger:
        """The run's TensorBoard logger. A resumed run's starts by telling TensorBoard to drop what the earlier
        attempt logged from the resumption's step on (kill -9 leaves steps after the last checkpoint, trained again)."""
        resumed_at = self.summary.resumed[-1]["at_step"] if self.summary.resumed else None
        self.logger = RunLogger(self.run_dir, purge_step=resumed_at)
        return self.logger

    def resume(self, earlier: Summary) -> Path | None:
        """The newest usable checkpoint to go on from in run_dir, with the stopped attempt's history (`earlier`, as
        check_resume returned it) carried into the summary; None (run_dir cleared) when the attempt left none."""
        checkpoint = checkpoints.newest_usable(self.run_dir)
        if checkpoint is None:  # stopped before its first checkpoint: nothing to go on from
            log.info(f"resuming {self.run_dir}: no checkpoint was left, so the run starts over there")
            clear_attempt(self.run_dir)
            return None
        # the run's history: its first start, then each resumption (when, from which step)
        summary = self.summary
        at_step = checkpoints.step_of(checkpoint, earlier.steps)
        summary.resumed = [*(earlier.resumed or []), {"at_step": at_step, "at": summary.started}]
        summary.started = earlier.started
        summary.earlier_wall_time_s = (earlier.wall_time_s or 0) + earlier.earlier_wall_time_s
        return checkpoint

    def diverged(self, divergence: Divergence, depth: int) -> None:
        """status diverged, the record, and the one-line reason (step, loss, first non-finite layer)."""
        self.summary.status, self.summary.divergence = "diverged", divergence
        self.summary.reason = divergence.reason(depth)
        log.warning(f"diverged: {self.summary.reason} ({self.run_dir.name})")

    def conclude(
        self,
        metrics: dict[str, float],
        val_acc_history: list[float],
        history: dict[tuple[str, str], list],
        **fields: Any,
    ) -> None:
        """The run trained to its end: ok unless it diverged; its final metrics (last logged values), `fields`
        (init, steps, epochs, device, training_step), and the HParams row with the final metrics, written once:
        TensorBoard's HParams columns come from the first hparams summary a run writes."""
        summary = self.summary
        if summary.status != "diverged":
            summary.status = "ok"
        losses = self.logger.train_losses if self.logger is not None else []
        summary.metrics = Metrics.final(metrics, val_acc_history, losses, fields.get("steps"))
        for name, value in fields.items():
            setattr(summary, name, value)
        summary.hparams_metrics = hparams_metrics(summary, history)
        if self.logger is not None:
            swept = self.settings.swept_columns() if self.settings is not None else {}
            self.logger.log_hyperparams(
                hparams_row(summary, swept), summary.hparams_metrics, step=summary.steps, shown=shown_columns(swept)
            )

    def __enter__(self) -> RunRecord:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> bool:
        if not self.closed:
            instead = self.close(error)
            if instead is not None:
                raise instead
        return False

    def close(self, error: BaseException | None = None) -> BaseException | None:
        """End the run as `error` (None: as recorded) says: its status and reason, the logger closed, summary.json
        written. Returns the exception to raise instead of error (RunInterrupted, NoRoomError), if any."""
        self.closed = True
        instead = self._outcome(error) if error is not None else None
        if self.logger is not None:
            try:
                self.logger.close(self.summary.status)
            except OSError as e:  # the last events would not write (a full disk): the summary still says so
                if error is None:
                    instead = self._outcome(e) or e
                else:
                    log.error(f"{self.run_dir}: event file not closed: {e}")
        self.summary.wall_time_s = round(time.time() - self.start + self.summary.earlier_wall_time_s, 2)
        if rank_zero_only.rank == 0:  # under DDP the other processes ran the same job; one writes its summary
            try:
                self.summary.write(self.run_dir)
            except OSError as e:
                if self.summary.status == "failed":  # the run's own error goes on up
                    log.error(f"{self.run_dir / 'summary.json'} not written: {e}")
                elif full := no_room(e, self.run_dir):
                    raise full from e
                else:
                    raise
        return instead

    def _outcome(self, error: BaseException) -> BaseException | None:
        summary = self.summary
        if isinstance(error, ConfigError | DataError):
            summary.status, summary.reason = "failed", str(error)
            return None
        # Ctrl-C: inside fit or test, Lightning shuts down gracefully (callbacks' on_exception: the checkpoint) and
        # ends with sys.exit(1); elsewhere it is the KeyboardInterrupt itself
        if isinstance(error, KeyboardInterrupt) or (
            isinstance(error, SystemExit) and self.trainer is not None and self.trainer.interrupted
        ):
            signum = stopping.received() or signal.SIGINT
            self._interrupted(signum)
            interrupted = RunInterrupted(summary, signum)
            interrupted.__suppress_context__ = True
            return interrupted
        if isinstance(error, SystemExit):
            return None
        full = no_room(error, self.run_dir)
        summary.status, summary.reason = "failed", str(full or f"{type(error).__name__}: {error}")
        if full is None:
            return None
        remove_truncated_checkpoints(self.run_dir)  # which also leaves room for summary.json
        full.__cause__ = error
        return full

    def _interrupted(self, signum: int) -> None:
        """status interrupted, where, by which signal (Ctrl-C's goes unsaid), and how to go on."""
        summary, trainer = self.summary, self.trainer
        checkpoint = checkpoints.newest_usable(self.run_dir)
        where = "before training started"
        if trainer is not None:
            summary.steps, summary.epochs = trainer.global_step, trainer.current_epoch
            where = f"at step {trainer.global_step} (epoch {trainer.current_epoch})"
        if signum != signal.SIGINT:
            where += f" by {signal.Signals(signum).name}"
        kept = f"checkpoint {checkpoint}" if checkpoint is not None else "no checkpoint (it starts over)"
        summary.status, summary.checkpoint = "interrupted", None if checkpoint is None else str(checkpoint)
        summary.reason = f"interrupted {where}; {kept}; {resume_hint(self.run_dir)}"
