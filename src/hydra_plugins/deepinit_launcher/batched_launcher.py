"""hydra/launcher=batched: a sweep's same-shape runs trained together as stacked models (deepinit.batched).

    python scripts/train.py -m hydra/launcher=batched init=kaiming,xavier,orthogonal,lecun seed=0,1,2,3 depth=50

Every job gets its folder, .hydra/ and log exactly as under Hydra's basic launcher, and its settings
(deepinit.settings.hydra.from_config: a job whose settings are refused is a failed row, as under scripts/train.py);
each job is opened as scripts/train.py opens it (deepinit.sweep.job.open_job: claimed; skipped where it finished
earlier; resumed, alone, where an interrupted attempt left a checkpoint). The jobs left are grouped by
`Settings.group_key` (same shapes and loop: they differ in init and seed), each group split into chunks that fit
the memory budget, and each chunk trained as one stacked model. Jobs that cannot be batched
(`deepinit.batched.why_alone`: DDP, mixed precision, gradient clipping or accumulation, an optimizer that is not
elementwise), jobs that resume, and groups of one, run as usual, one by one (Job.run). Failures follow the script's
policy (deepinit.run.lifecycle.report_failure).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger("deepinit")


class BatchedLauncher(Launcher):
    def __init__(self, max_group_size: int = 64, memory_gb: float | None = None) -> None:
        if not (isinstance(max_group_size, int) and max_group_size >= 1):
            raise ValueError(f"hydra.launcher.max_group_size must be an integer >= 1 (got {max_group_size})")
        if memory_gb is not None and not memory_gb > 0:
            raise ValueError(f"hydra.launcher.memory_gb must be null or a number > 0 (got {memory_gb})")
        self.max_group_size, self.memory_gb = max_group_size, memory_gb
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def _budget(self) -> int:
        """Bytes one group may use: memory_gb, else 80% of the free GPU memory, else half the free host memory."""
        import torch

        if self.memory_gb is not None:
            return int(self.memory_gb * 2**30)
        if torch.cuda.is_available():
            return int(0.8 * torch.cuda.mem_get_info()[0])
        return int(0.5 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # imported here: Hydra imports every plugin module at start-up, in every app, batched or not
        from deepinit.base.rules import ConfigError
        from deepinit.batched import memory_estimate, train_group, why_alone
        from deepinit.run.lifecycle import RunInterrupted, no_room, report_failure, report_interrupted
        from deepinit.sweep.job import Job, open_job

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs, batched where they share a shape")

        # 1. Each job's folder, .hydra/ and log, as Hydra's basic launcher makes them, and the job opened as
        # scripts/train.py opens it (deepinit.sweep.job): claimed, its settings built, run / resume / skip decided.
        jobs: list[Job] = []

        def prepare(cfg: DictConfig) -> Job:
            hydra_cfg = HydraConfig.get()
            job = open_job(cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg.job.num)
            jobs.append(job)
            return job

        returns: list[JobReturn] = []
        with ExitStack() as held:
            held.callback(lambda: [job.close() for job in jobs])  # each job's lock, held until the launcher is done
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(sweep_config):
                    sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
                returns.append(
                    run_job(
                        hydra_context=self.hydra_context,
                        task_function=prepare,
                        config=sweep_config,
                        job_dir_key="hydra.sweep.dir",
                        job_subdir_key="hydra.sweep.subdir",
                    )
                )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

            # 2. Group what is left to run; split groups to fit the memory budget.
            pending = [job for job in jobs if job.pending]
            groups: dict[str, list[Job]] = defaultdict(list)
            alone: list[Job] = []
            for job in pending:
                try:  # a resumed job goes on from its own checkpoint, which a group does not read
                    reason = "it resumes its interrupted attempt" if job.action == "resume" else why_alone(job.settings)
                except ConfigError as e:  # a Trainer setting Lightning rejects: the lone run says so in its one line
                    reason = str(e)
                if reason is not None:
                    log.info(f"{job.name} runs alone: {reason}")
                    alone.append(job)
                else:
                    groups[job.settings.group_key()].append(job)
            chunks: list[list[Job]] = []
            budget = self._budget()
            for members in groups.values():
                size = max(1, min(self.max_group_size, budget // memory_estimate(members[0].settings)))
                chunks += [members[i : i + size] for i in range(0, len(members), size)]
            alone += [chunk[0] for chunk in chunks if len(chunk) == 1]
            chunks = [chunk for chunk in chunks if len(chunk) > 1]

            # 3. Train: each chunk as one stacked model; the rest one by one, as the basic launcher would.
            for chunk in chunks:
                log.info(f"jobs {', '.join(str(j.num) for j in chunk)}: one batched group of {len(chunk)}")
                try:
                    results = train_group([j.settings for j in chunk], [j.run_dir for j in chunk])
                except RunInterrupted as e:  # Ctrl-C: every member's summary says where; the sweep stops here
                    report_interrupted(e)
                    raise
                except Exception as e:  # the group's failure is each member's row in the report, not the sweep's end
                    error = no_room(e, chunk[0].run_dir.parent) or e  # a full disk: the sweep's folder named
                    report_failure(error, "batched group")
                    results = [j.failed(error) for j in chunk]
                for job, summary in zip(chunk, results, strict=True):
                    job.summary = summary
            for job in alone:
                job.run()
            for job in jobs:
                job.end(log_file=job.run_dir / f"{self.config.hydra.job.name}.log")
        for r in returns:
            if r.status == JobStatus.COMPLETED and isinstance(r.return_value, Job):
                r.return_value = r.return_value.summary
        return returns
