"""The Hydra callback that writes a sweep's report (deepinit.sweep.report) when a multirun ends, whatever happened to
its jobs; conf/train.yaml names it under hydra.callbacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # imported here: Hydra imports every plugin module at start-up, in every app
        from lightning.pytorch.utilities import rank_zero_only

        from deepinit.sweep.report import summarize

        if rank_zero_only.rank == 0:  # a sweep run under torchrun ends in every process; one writes the report
            summarize(Path(config.hydra.sweep.dir))
