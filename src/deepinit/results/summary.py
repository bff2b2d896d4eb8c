"""summary.json as one record, `Summary`, for every writer (deepinit.run.lifecycle.RunRecord, for lone runs and batched
members alike) and every reader (the sweep report, the phase diagram, a rerun's resume and skip decisions).

A run's summary.json holds: status (running while it runs; then ok, diverged, interrupted, failed) and its one-line
reason; host and pid (the process that writes it, so that a later look tells a run still going from one whose
process died: deepinit.run.lifecycle.status calls that one interrupted); config (the
essentials); run_dir; started; and, as the run gets there: settings (the whole composed config), theory (the
verdict on its init), resumed (each resumption), steps, epochs, metrics, speed (deepinit.observe.speed), divergence,
init (what it used), device, training_step, hparams_metrics, checkpoint (where an interrupted run can go on from),
wall_time_s. A field the run never reached is left out of the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepinit.theory import Trainability

STATUSES = ("running", "ok", "diverged", "interrupted", "failed")
FINISHED = ("ok", "diverged")  # a rerun would repeat these; interrupted jobs go on, failed and missing run again
# what a rerun goes on from: interrupted (a process that died while `running` reads so, lifecycle.status), and running
# where this process cannot see the one that wrote it (another host) but holds the job's lock or was told to resume
UNFINISHED = ("interrupted", "running")


@dataclass
class Divergence:
    """Where the loss stopped being finite: the step and epoch, the loss, the first layer whose output was not
    finite on that batch (None: every output finite, the loss itself overflowed)."""

    step: int
    epoch: int
    loss: float
    layer: int | None

    @classmethod
    def at(cls, step: int, epoch: int, loss: float, model: Any, x: Any) -> Divergence:
        """The record for a model whose loss on batch x became non-finite at `step` (its weights as they were then)."""
        return cls(step=step, epoch=epoch, loss=loss, layer=model.first_nonfinite_layer(x))

    def reason(self, depth: int) -> str:
        where = f"first non-finite output at layer {self.layer} of {depth}" if self.layer else "outputs finite"
        return f"loss became {self.loss} at step {self.step} (epoch {self.epoch}); {where}"


@dataclass
class Metrics:
    """The run's final metrics: the last logged values, and the per-epoch validation accuracy's last and best."""

    test_acc: float | None
    test_loss: float | None
    val_acc: float | None
    best_val_acc: float | None
    val_loss: float | None
    train_loss: float | None
    train_acc: float | None  # the last logged batch's
    # the mean of the train/loss values logged in the last tenth of the run's steps (each a batch's: one alone is
    # noisy); every step's with trainer.log_every_n_steps=1. A run resumed within that tenth: its last attempt's
    train_loss_tail: float | None = None

    @classmethod
    def final(
        cls,
        logged: dict[str, float],
        val_acc_history: list[float],
        train_losses: list[tuple[int, float]] = (),
        steps: int | None = None,
    ) -> Metrics:
        """logged: the last logged values; train_losses: (step, train/loss) as logged (steps from 0), of a run of
        `steps` optimizer steps (None: up to the last logged one)."""

        def last(key: str) -> float | None:
            return None if logged.get(key) is None else float(logged[key])

        tail = None
        if train_losses:
            steps = steps or max(step for step, _ in train_losses) + 1
            values = [loss for step, loss in train_losses if step >= steps - max(steps // 10, 1)]
            tail = float(sum(values) / len(values)) if values else None

        return cls(
            test_acc=last("test/acc"),
            test_loss=last("test/loss"),
            val_acc=val_acc_history[-1] if val_acc_history else None,
            best_val_acc=max(val_acc_history, default=None),
            val_loss=last("val/loss"),
            train_loss=last("train/loss"),
            train_acc=last("train/acc"),
            train_loss_tail=tail,
        )


@dataclass
class Speed:
    """summary.json's `speed`: the target, how often and on how many validation images accuracy was measured, the
    first measured step at or above the target (None: never, within the run), and the curve [[step, accuracy]]."""

    target_acc: float
    every_n_steps: int
    samples: int
    steps_to_target: int | None
    curve: list[list[float]] = field(default_factory=list)


@dataclass
class Summary:
    status: str = "failed"
    reason: str | None = None
    config: dict[str, Any] | None = None
    run_dir: str = ""
    started: str = ""
    host: str | None = None
    pid: int | None = None
    settings: dict[str, Any] | None = None
    theory: Trainability | None = None
    resumed: list[dict[str, Any]] | None = None
    steps: int | None = None
    epochs: int | None = None
    metrics: Metrics | None = None
    speed: Speed | None = None
    divergence: Divergence | None = None
    init: dict[str, Any] | None = None
    # the optimizer's learning rate per named group (a width parametrization's per layer kind); one group: `all`
    learning_rates: dict[str, float] | None = None
    device: str | None = None
    training_step: str | None = None
    hparams_metrics: dict[str, float] | None = None
    checkpoint: str | None = None  # an interrupted run's; written (null too) for interrupted runs only
    wall_time_s: float | None = None
    earlier_wall_time_s: float = field(default=0.0, metadata={"file": False})  # a resumed run's attempts so far

    ALWAYS = ("status", "reason", "config", "run_dir", "started")

    def to_json(self) -> dict[str, Any]:
        """summary.json's content: the fields the run reached (see the module docstring); NaN and inf as strings."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("file") is False:
                continue
            wanted = (
                f.name in self.ALWAYS or value is not None or (f.name == "checkpoint" and self.status == "interrupted")
            )
            if wanted:
                out[f.name] = _finite(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
        return out

    @property
    def budget(self) -> int | None:
        """The steps the run was given (trainer.max_steps), or those it ran where it was given epochs instead: the
        sweep report's sections compare runs of one budget."""
        max_steps = (self.settings or {}).get("trainer", {}).get("max_steps")
        return max_steps if max_steps and max_steps > 0 else self.steps

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        return _record(cls, data)

    def write(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_whole(run_dir / "summary.json", (json.dumps(self.to_json(), indent=2) + "\n").encode())

    @classmethod
    def read(cls, run_dir: Path) -> Summary | None:
        """The summary.json in run_dir as written, or None where there is none (or it cannot be read); what it says
        of a run that may have died is deepinit.run.lifecycle.status's to decide."""
        try:
            return cls.from_json(json.loads((Path(run_dir) / "summary.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def may_be_running(self) -> bool:
        """Whether the process that wrote `running` may still be at it: alive on this host, or on another host
        (which this one cannot see: a sweep's job lock tells there, deepinit.run.folder)."""
        if self.host != socket.gethostname():
            return True
        if self.pid is None or self.pid == os.getpid():  # this process's own record: an earlier job's, never ended
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, someone else's
            return True
        return True

    def end_line(self, runs_root: Path) -> str:
        """The run's last console line: status, accuracy, time, where its logs are and how to view them."""
        m = self.metrics
        parts = [f"deepinit: {self.status}"]
        if self.status == "failed" and self.reason:
            parts.append(self.reason)
        if m is not None and m.test_acc is not None:
            parts.append(f"test acc {m.test_acc:.4f} (loss {m.test_loss:.4f})")
        if m is not None and m.best_val_acc is not None:
            parts.append(f"best val acc {m.best_val_acc:.4f}")
        parts.append(f"{self.wall_time_s or 0:.0f} s")
        parts.append(f"logs in {self.run_dir}")
        parts.append(f"view: tensorboard --logdir {runs_root}")
        return " | ".join(parts)


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so summary.json stays valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _record(cls: type, data: dict[str, Any]) -> Any:
    """A dataclass from its JSON form: nested records rebuilt, "inf"/"nan" strings read back as floats."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: _value(hints[k], v) for k, v in data.items() if k in names})


def _value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return _record(option, value)
        if option is float and isinstance(value, str):
            return float(value)
    return value


PART = ".part"  # the suffix of a file being written by write_whole


def write_whole(path: Path, data: bytes | memoryview, sync: bool = False) -> None:
    """Write path whole or not at all, through a temporary file beside it: a full disk or a kill leaves no truncated
    file to be read as a result. sync: on disk before the name points at it (a crash then leaves old or new)."""
    part = path.with_name(path.name + PART)
    try:
        with open(part, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)
