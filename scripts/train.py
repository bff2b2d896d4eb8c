"""Train one deep MLP (or a sweep with -m) on MNIST with a chosen init scheme.

python scripts/train.py init=kaiming depth=50
python scripts/train.py -m init=normal,xavier,kaiming depth=10,50
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from deepinit.provision import DataError
from deepinit.sweep import skip_or_clear, sweep_name
from deepinit.train import ConfigError, NoRoomError, check_group_choices, check_runs_dir, describe_end, run

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("deepinit")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    # A rerun of the same sweep command lands in the same folders: finish what is missing, keep what is done.
    # Under torchrun, one process clears.
    if hydra_cfg.mode == RunMode.MULTIRUN and skip_or_clear(run_dir, cfg, hydra_cfg.job.num, rank_zero_only.rank == 0):
        return
    try:
        summary = run(cfg, run_dir)
    except Exception as e:
        message = f"{'data error' if isinstance(e, DataError) else 'error'}: {e}"
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # One job's failure is a row of the sweep report (its summary.json says failed), not the sweep's end.
            # Bad input or a full disk is one line; anything else is a bug, whose traceback goes to the job's log.
            expected = isinstance(e, ConfigError | DataError | NoRoomError)
            log.error(f"job {hydra_cfg.job.num} failed: {message}", exc_info=not expected)
            return
        if isinstance(e, ConfigError | DataError | NoRoomError):
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


if __name__ == "__main__":
    try:
        check_group_choices(sys.argv[1:], CONF_DIR)
        check_runs_dir(sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"error: {e}")
    name_the_sweep(sys.argv)
    main()
