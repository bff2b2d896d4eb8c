"""Training throughput, side by side in one process: the plain PyTorch loop against the project's path.

    python scripts/bench.py                      # CPU (or the GPU if there is one), defaults below
    python scripts/bench.py --device cuda --width 512   # the GPU figures in docs/performance.md
    python scripts/bench.py --profile            # also: where the project step's time goes (torch.profiler)

Cases: the reference loop (plain PyTorch, data as one tensor on the device, torch's default optimizer
settings); the project's path (Lightning, the fast step) with stats off, default and full; the project's
path with fast=false (the plain eager step); the usual tutorial pipeline (torchvision MNIST with
ToTensor/Normalize per sample, a DataLoader with 0 workers); with --group K, K seeds as one batched group; with
--lr-grid N, N learning rates (an octave apart) job by job and as one batched group, each member at its own rate,
over the timed steps and as whole jobs (set-up, every step, summary: what a sweep's time is made of):

    python scripts/bench.py --depth 4 --lr-grid 10 --cases "lr grid of 10"

They are measured in turn, repeat after repeat (so machine noise hits them alike), after a warm-up that is not
timed; the table shows the median samples/s and each case's ratio to the reference loop. Results go to
<out>/bench-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader
from torchvision import transforms

from deepinit.batched import train_group
from deepinit.run.parts import build, layer_stats
from deepinit.settings.hydra import from_config, register
from deepinit.settings.records import MATMUL_PRECISIONS, Settings

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read means what it says."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """Wall time from the first timed step's start to the last step's end (device synchronized); optionally
    runs a torch profiler over exactly those steps."""

    def __init__(self, warmup: int, steps: int, device: torch.device, profiler=None) -> None:
        self.warmup, self.steps, self.device, self.profiler = warmup, steps, device, profiler

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            sync(self.device)
            if self.profiler is not None:
                self.profiler.start()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup + self.steps:
            sync(self.device)
            self.seconds = time.perf_counter() - self.start
            if self.profiler is not None:
                self.profiler.stop()


class OnStep(L.Callback):
    """on_step(step) before each training step: the batched group's steps timed from its Trainer."""

    def __init__(self, on_step) -> None:
        self.on_step = on_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.on_step(trainer.global_step)


def plain_loop(run: Settings, datamodule, device: torch.device, warmup: int, steps: int, batches: Iterator) -> float:
    """samples/s of a plain PyTorch loop (forward, backward, step) over `batches` (making each batch is timed too)."""
    _, module, _ = build(run, datamodule)
    model = module.model.to(device)
    optimizer = module.optimizer_factory(model.parameters())  # as configured, torch's defaults otherwise
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return steps * run.data.batch_size / (time.perf_counter() - start)


def reference_loop(run: Settings, datamodule, device: torch.device, warmup: int, steps: int) -> float:
    """The plain PyTorch loop: data as one in-memory tensor on the device, slicing, forward, backward, step."""
    x_all, y_all = (t.to(device) for t in datamodule.splits["train"])
    order = torch.randperm(len(x_all), device=device)
    batch = run.data.batch_size

    def batches() -> Iterator:
        for step in itertools.count():
            idx = order[(step * batch) % (len(x_all) - batch) :][:batch]
            yield x_all[idx], y_all[idx]

    return plain_loop(run, datamodule, device, warmup, steps, batches())


def tutorial_pipeline(run: Settings, datamodule, device: torch.device, warmup: int, steps: int) -> float:
    """The usual tutorial: torchvision's MNIST, ToTensor + Normalize on every sample, a DataLoader, 0 workers."""
    normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize((run.data.mean,), (run.data.std,))])
    dataset = getattr(torchvision.datasets, run.data.dataset)(run.data.root, train=True, transform=normalize)
    loader = DataLoader(dataset, batch_size=run.data.batch_size, shuffle=True, num_workers=0, drop_last=True)

    def batches() -> Iterator:
        while True:
            for x, y in loader:
                yield x.to(device), y.to(device)

    return plain_loop(run, datamodule, device, warmup, steps, batches())


def project_path(run: Settings, datamodule, device: torch.device, warmup: int, steps: int, profiler=None) -> float:
    """The project's own training path: Classifier + DataModule + the run's LayerStats (stats.*) through a
    Lightning Trainer."""
    _, module, init_used = build(run, datamodule)
    timer = StepTimer(warmup, steps, device, profiler)
    stats = layer_stats(run, init_used)
    callbacks: list[L.Callback] = [timer] if stats is None else [stats, timer]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator=device.type,
            devices=1,
            max_steps=warmup + steps + 1,
            limit_val_batches=0,
            logger=TensorBoardLogger(tmp, name="", version=""),
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(module, datamodule=datamodule)
    return steps * run.data.batch_size / timer.seconds


def batched_group(runs: list[Settings], device: torch.device, warmup: int, steps: int) -> float:
    """len(runs) same-shape runs as one stacked model (deepinit.batched, hydra/launcher=batched), stats default;
    samples/s summed over the members."""
    marks: dict[int, float] = {}

    def on_step(step: int) -> None:
        if step in (warmup, warmup + steps):
            sync(device)
            marks[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        train_group(runs, [Path(tmp) / str(i) for i in range(len(runs))], [OnStep(on_step)])
    return len(runs) * steps * runs[0].data.batch_size / (marks[warmup + steps] - marks[warmup])


def one_by_one(runs: list[Settings], datamodule, device: torch.device, warmup: int, steps: int) -> float:
    """The same runs job by job, as a sweep without the batched launcher trains them: samples/s over their
    timed steps together."""
    seconds = sum(steps * run.data.batch_size / project_path(run, datamodule, device, warmup, steps) for run in runs)
    return len(runs) * steps * runs[0].data.batch_size / seconds


def whole_jobs(runs: list[Settings], batched: bool) -> float:
    """The runs from their settings to their summaries (deepinit.run.train.run each, or one train_group), as a sweep
    runs them: samples/s over the wall time, set-up and summaries included."""
    from deepinit.run.train import run as train_run

    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / str(i) for i in range(len(runs))]
        start = time.perf_counter()
        summaries = train_group(runs, dirs) if batched else [train_run(r, d) for r, d in zip(runs, dirs, strict=True)]
        seconds = time.perf_counter() - start
    return sum(s.steps for s in summaries) * runs[0].data.batch_size / seconds


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
    ]
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before each measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="then profile the project's step (stats default)")
    parser.add_argument(
        "--group",
        type=int,
        default=None,
        help="also K runs batched as one stacked model (default: 16 on CUDA, none on CPU)",
    )
    parser.add_argument(
        "--lr-grid",
        type=int,
        default=0,
        help="also a learning-rate grid of N runs (lr 2^-14, 2^-13, ..., stats off, as experiment=lr_transfer): "
        "batched as one stacked model against job by job",
    )
    parser.add_argument("--optim", default=None, help="conf/optim choice (adam, sgd); default: the project's")
    parser.add_argument(
        "--matmul-precision",
        default="highest",
        choices=MATMUL_PRECISIONS,
        help="float32 matmuls for every case (high: TF32 on GPU tensor cores); the project's matmul_precision",
    )
    parser.add_argument(
        "--cases",
        default=None,
        help="only the cases whose names end or begin with one of these, comma-separated (e.g. 'stats off,stats "
        "default,stats full', 'lr grid of 10'), beside the reference loop; default: every case",
    )
    parser.add_argument("--out", default="runs/bench", help="folder for the JSON and Markdown results")
    args = parser.parse_args()

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    torch.set_float32_matmul_precision(args.matmul_precision)  # the plain loops' too, not only the project's
    overrides = [f"depth={args.depth}", f"width={args.width}", f"data.batch_size={args.batch}"]
    overrides += [f"matmul_precision={args.matmul_precision}", *([f"optim={args.optim}"] if args.optim else [])]
    overrides.append("stats.figures=false")  # drawn once at the end of fit, after the timed steps
    group = args.group if args.group is not None else 16 if device.type == "cuda" else 0
    short = [
        f"trainer.max_steps={args.warmup + args.steps + 1}",
        "trainer.limit_val_batches=0",
        "trainer.limit_test_batches=0",
        "trainer.enable_checkpointing=false",  # what happens after the timed steps: kept short
        "+trainer.enable_progress_bar=false",  # the bench prints its own rows, not a bar per run
    ]
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):

        def compose_settings(*more: str) -> Settings:
            return from_config(compose("train", overrides=[*overrides, *more]))

        run = compose_settings()
        off_run, full_run = compose_settings("stats=off"), compose_settings("stats=full")
        eager_run = compose_settings("fast=false")
        on_device = f"trainer.accelerator={device.type}"
        group_runs = [compose_settings(*short, f"seed={seed}", on_device) for seed in range(group)]
        grid = [2.0 ** (-14 + i) for i in range(args.lr_grid)]
        lr_runs = [compose_settings(*short, "stats=off", f"optim.lr={lr}", on_device) for lr in grid]
    datamodule, _, _ = build(run)
    warmup, steps = args.warmup, args.steps
    reference_name = "reference loop (plain PyTorch)"
    cases = {
        reference_name: lambda: reference_loop(run, datamodule, device, warmup, steps),
        "project, stats off": lambda: project_path(off_run, datamodule, device, warmup, steps),
        "project, stats default": lambda: project_path(run, datamodule, device, warmup, steps),
        "project, stats full": lambda: project_path(full_run, datamodule, device, warmup, steps),
        "project, stats default, fast=false": lambda: project_path(eager_run, datamodule, device, warmup, steps),
        "tutorial pipeline (DataLoader, 0 workers)": lambda: tutorial_pipeline(run, datamodule, device, warmup, steps),
    }
    batched_name = f"batched group of {group} runs (stats default, summed)"
    if group:
        cases[batched_name] = lambda: batched_group(group_runs, device, warmup, steps)
    grid = f"lr grid of {len(lr_runs)}"
    grid_names = {"steps": (f"{grid}, job by job (stats off, summed)", f"{grid}, batched (stats off, summed)"),
                  "jobs": (f"{grid}, job by job, whole jobs", f"{grid}, batched, whole jobs")}  # fmt: skip
    if lr_runs:
        cases[grid_names["steps"][0]] = lambda: one_by_one(lr_runs, datamodule, device, warmup, steps)
        cases[grid_names["steps"][1]] = lambda: batched_group(lr_runs, device, warmup, steps)
        cases[grid_names["jobs"][0]] = lambda: whole_jobs(lr_runs, batched=False)
        cases[grid_names["jobs"][1]] = lambda: whole_jobs(lr_runs, batched=True)
    if args.cases:
        wanted = [w.strip() for w in args.cases.split(",") if w.strip()]
        chosen = [n for n in cases if any(n.endswith(w) or n.startswith(w) for w in wanted)]
        cases = {n: f for n, f in cases.items() if n == reference_name or n in chosen}
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-Trainer banners between rows
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for repeat in range(args.repeats):
        # every other repeat in reverse: a machine growing busier or quieter within a repeat favours no case
        for name in list(cases) if repeat % 2 == 0 else list(cases)[::-1]:
            samples[name].append(cases[name]())
            print(f"  repeat {repeat + 1}/{args.repeats}  {name:<42} {samples[name][-1]:>10,.0f} samples/s", flush=True)
    median = {name: statistics.median(v) for name, v in samples.items()}
    reference = median[reference_name]
    off, default = median.get("project, stats off"), median.get("project, stats default")
    tutorial = median.get("tutorial pipeline (DataLoader, 0 workers)")
    machine = machine_name(device)
    lines = [
        f"{datetime.now():%Y-%m-%d}: depth {args.depth}, width {args.width}, batch {args.batch}, relu, "
        f"{run.optim.name}, matmul precision {args.matmul_precision}, "
        f"{steps} timed steps x {args.repeats} repeats (median), device "
        f"{device} ({machine}), torch {torch.__version__}, lightning {L.__version__}",
        "",
        "| case | samples/s | vs reference |",
        "|---|---:|---:|",
        *[f"| {name} | {median[name]:,.0f} | {median[name] / reference:.2f}x |" for name in cases],
        "",
    ]
    if default and tutorial:
        lines.append(f"project (stats default) vs tutorial pipeline: {default / tutorial:.2f}x")
    # the throughput stats cost: from the medians, and as the median of each repeat's own ratio (the cases of one
    # repeat ran minutes apart, so a noisy machine's slow drift cancels out of it)
    overhead = {
        k: {
            "of_medians": 1 - median[f"project, stats {k}"] / off,
            "paired": statistics.median(
                1 - on / o for on, o in zip(samples[f"project, stats {k}"], samples["project, stats off"], strict=True)
            ),
        }
        for k in ("default", "full")
        if off and f"project, stats {k}" in median
    }
    if overhead:
        lines.append(
            "stats overhead, as throughput lost vs stats off: "
            + ", ".join(f"{k} {v['of_medians']:.1%}" for k, v in overhead.items())
            + " (the median of each repeat's own: "
            + ", ".join(f"{k} {v['paired']:.1%}" for k, v in overhead.items())
            + ")"
        )
    if group and batched_name in median and default:
        lines.append(
            f"batched group of {group} vs the same runs one by one: {median[batched_name] / default:.2f}x the project"
            f"'s path (stats default), {median[batched_name] / reference:.2f}x the reference loop"
        )
    for what, (alone, batched) in grid_names.items():
        if alone in median and batched in median:
            paired = statistics.median(b / a for a, b in zip(samples[alone], samples[batched], strict=True))
            lines.append(
                f"{grid} (lr 2^-14 to 2^{-15 + len(lr_runs)}), batched vs job by job, "
                f"{'the timed steps' if what == 'steps' else 'whole jobs'}: {median[batched] / median[alone]:.2f}x"
                f" (the median of each repeat's own: {paired:.2f}x)"
            )
    print("\n" + "\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench-{device.type}.md").write_text("\n".join(lines) + "\n")
    result = {"args": vars(args), "device": str(device), "machine": machine, "torch": torch.__version__}
    result |= {
        "samples_per_s": samples,
        "median": median,
        "ratio_to_reference": {k: v / reference for k, v in median.items()},
        "stats_overhead": overhead,
    }
    (out / f"bench-{device.type}.json").write_text(json.dumps(result, indent=2))
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []
        )
        profiler = torch.profiler.profile(activities=activities)
        project_path(run, datamodule, device, warmup, steps, profiler)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        table = profiler.key_averages().table(sort_by=sort, row_limit=20)
        print(f"\nwhere the project step's time goes ({steps} steps, stats default):\n{table}")
        (out / f"profile-{device.type}.txt").write_text(table)


if __name__ == "__main__":
    main()
