"""What a job needs to know about the sweep it belongs to: the sweep folder's name, and whether it already ran.

The sweep folder is named by the command's own overrides (`sweep_init=kaiming,xavier_depth=10,50`), not by the
time, so rerunning the same command finds the same folder, where the jobs that already finished are skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Where a sweep writes or what it reads from does not change its results, so it does not change its name.
NOT_IN_NAME = {"runs_dir", "data.root", "force", "sweep_name", "threads"}
FINISHED = ("ok", "diverged")  # a rerun would repeat these exactly; failed, interrupted and missing jobs run again
MAX_NAME = 100


def sweep_name(overrides: Sequence[str]) -> str:
    """`sweep_<overrides>` for a multirun's command-line overrides: readable, stable, one path component."""
    kept = [o for o in overrides if o.lstrip("+~").split("=")[0] not in NOT_IN_NAME]
    name = re.sub(r"[^\w=,.+-]", "-", "_".join(kept)) or "defaults"
    if len(name) > MAX_NAME:  # keep it readable and unique: a prefix and a hash of the whole
        name = f"{name[: MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return f"sweep_{name}"


def _identity(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's results (a job's full config, JSON-normalized, minus NOT_IN_NAME)."""
    settings = json.loads(json.dumps(settings))
    for key in NOT_IN_NAME:
        *parents, leaf = key.split(".")
        node = settings
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return settings


def finished_summary(job_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The summary of an earlier attempt at this job if it finished with the same settings, else None."""
    try:
        summary = json.loads((Path(job_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    same = _identity(summary.get("settings") or {}) == _identity(OmegaConf.to_container(cfg, resolve=True))
    return summary if summary.get("status") in FINISHED and same else None


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


def skip_or_clear(job_dir: Path, cfg: DictConfig, job_num: int, clear: bool = True) -> dict[str, Any] | None:
    """A sweep job's start: the earlier summary when that attempt finished with these settings (the job is then
    skipped, unless cfg.force), else None, after clearing what an unfinished attempt left (where `clear`)."""
    done = finished_summary(job_dir, cfg)
    if done is not None and not cfg.force:
        log.info(f"job {job_num} skipped: {done['status']} in an earlier run (force=true reruns it)")
        return done
    if clear and (removed := clear_attempt(job_dir)):
        log.info(f"job {job_num}: replacing an earlier attempt ({', '.join(removed)})")
    return None
