"""Train one deep MLP (or a sweep with -m) on MNIST with a chosen init scheme.

python scripts/train.py init=kaiming depth=50
python scripts/train.py -m init=normal,xavier,kaiming depth=10,50
python scripts/train.py resume=<run folder>          # go on after Ctrl-C
"""

import logging
import sys
from contextlib import ExitStack
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from deepinit.lifecycle import USER_ERRORS, ConfigError, RunInterrupted, describe_end
from deepinit.provision import DataError
from deepinit.sweep import claim, resume_point, skip_or_clear, sweep_name
from deepinit.train import check_group_choices, check_runs_dir, run

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("deepinit")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    with ExitStack() as held:
        resume = cfg.resume is not None
        if multirun:
            # One process at a time per job. A rerun of the same sweep command lands in the same folders: an
            # interrupted job goes on from its checkpoint, a finished one is kept, the rest run (again).
            # Under torchrun, one process clears.
            lock = claim(run_dir, hydra_cfg.job.num, rank_zero_only.rank)
            if lock is None:
                return
            held.callback(lock.release)
            resume = (point := resume_point(run_dir, cfg)) is not None
            if resume:
                log.info(f"job {hydra_cfg.job.num}: resuming its interrupted attempt from {point}")
            elif skip_or_clear(run_dir, cfg, hydra_cfg.job.num, rank_zero_only.rank == 0):
                return
        try:
            summary = run(cfg, run_dir, resume=resume)
        except RunInterrupted as e:
            log.warning(f"deepinit: {e.summary['reason']}")  # the console's one line, and the run's log
            raise  # and the sweep stops here
        except Exception as e:
            message = f"{'data error' if isinstance(e, DataError) else 'error'}: {e}"
            if multirun:
                # One job's failure is a row of the sweep report (its summary.json says failed), not the sweep's
                # end. Bad input or a full disk is one line; anything else is a bug, whose traceback goes to the
                # job's log.
                log.error(f"job {hydra_cfg.job.num} failed: {message}", exc_info=not isinstance(e, USER_ERRORS))
                return
            if isinstance(e, USER_ERRORS):
                sys.exit(message)  # exit status 1, the message alone on stderr
            raise
    if rank_zero_only.rank == 0:  # under DDP, once
        log.info(describe_end(summary, Path(cfg.runs_dir)))


def name_the_sweep(argv: list[str]) -> None:
    """In a multirun, add sweep_name=<named by the overrides> unless the command names its sweep folder."""
    overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
    task = [o for o in overrides if not o.startswith("hydra")]
    named = any(o.startswith(("sweep_name=", "hydra.sweep.dir=")) for o in overrides)
    if {"-m", "--multirun"} & set(argv) and not named:
        # beside the other overrides: argparse takes them as one run of positional arguments
        at = max((i + 1 for i, a in enumerate(argv) if a in overrides), default=len(argv))
        argv.insert(at, f"sweep_name='{sweep_name(task)}'")


def resume_command(argv: list[str]) -> list[str]:
    """`resume=<run folder>` as the command that made that run (its own overrides, from .hydra/overrides.yaml),
    run in that folder; other arguments as they are. ConfigError when the folder is no run's."""
    given = [a for a in argv[1:] if a.startswith("resume=")]
    if not given:
        return argv
    if {"-m", "--multirun"} & set(argv):
        raise ConfigError("resume= takes one run's folder; to resume a sweep, run the sweep's command again")
    folder = Path(given[-1].partition("=")[2]).resolve()
    saved = folder / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise ConfigError(f"resume={folder}: not a run folder (no .hydra/overrides.yaml in it)")
    own = [o for o in OmegaConf.load(saved) if not o.startswith(("resume=", "hydra.run.dir=", "sweep_name="))]
    rest = [a for a in argv[1:] if not a.startswith("resume=")]
    return [argv[0], *own, *rest, f"hydra.run.dir={folder}", f"resume={folder}"]


if __name__ == "__main__":
    try:
        sys.argv = resume_command(sys.argv)
        check_group_choices(sys.argv[1:], CONF_DIR)
        check_runs_dir(sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"error: {e}")
    name_the_sweep(sys.argv)
    try:
        main()
    except KeyboardInterrupt as e:  # Ctrl-C: the run (a sweep's current job) has said where it stopped
        if not isinstance(e, RunInterrupted):  # outside any run: between a sweep's jobs, say
            print("deepinit: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)  # 128 + SIGINT, as a shell reports a process that Ctrl-C ended
