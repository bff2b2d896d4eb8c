"""Training throughput, side by side in one process: the plain PyTorch loop against the project's path.

    python scripts/bench.py                      # CPU (or the GPU if there is one), defaults below
    python scripts/bench.py --device cpu --depth 50 --width 256 --batch 128 --steps 200 --repeats 3

Cases are measured in turn, repeat after repeat (so machine noise hits them alike), after a warm-up that
is not timed; the table shows the median samples/s and each case's ratio to the reference loop.
Results go to <out>/bench-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf

from deepinit.layer_stats import LayerStats
from deepinit.train import build

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class StepTimer(L.Callback):
    """Wall time from the first timed step's start to the last step's end (device synchronized)."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self._sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup + self.steps:
            self._sync()
            self.seconds = time.perf_counter() - self.start


def reference_loop(cfg, datamodule, device: torch.device, warmup: int, steps: int) -> float:
    """The plain PyTorch loop: data as one in-memory tensor on the device, slicing, forward, backward, step."""
    _, module, _ = build(cfg, datamodule)
    model = module.model.to(device)
    optimizer = module.configure_optimizers()
    x_all, y_all = (t.to(device) for t in datamodule.splits["train"])
    order = torch.randperm(len(x_all), device=device)
    batch = cfg.data.batch_size
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        idx = order[(step * batch) % (len(x_all) - batch) :][:batch]
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return steps * batch / seconds


def project_path(cfg, datamodule, device: torch.device, warmup: int, steps: int, stats_name: str) -> float:
    """The project's own training path: Classifier + DataModule through a Lightning Trainer."""
    _, module, _ = build(cfg, datamodule)
    timer = StepTimer(warmup, steps, device)
    callbacks: list[L.Callback] = [timer]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        stats_cfg = OmegaConf.to_container(compose("train", overrides=[f"stats={stats_name}"]).stats)
    if stats_cfg.pop("enabled"):
        stats_cfg["figures"] = False  # drawn once at the end of fit, outside any step
        callbacks.insert(0, LayerStats(**stats_cfg))
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
    return steps * cfg.data.batch_size / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before each measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="runs/bench", help="folder for the JSON and Markdown results")
    args = parser.parse_args()

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    overrides = [f"depth={args.depth}", f"width={args.width}", f"data.batch_size={args.batch}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule, _, _ = build(cfg)
    cases = {
        "reference loop (plain PyTorch)": lambda: reference_loop(cfg, datamodule, device, args.warmup, args.steps),
        "project, stats off": lambda: project_path(cfg, datamodule, device, args.warmup, args.steps, "off"),
        "project, stats default": lambda: project_path(cfg, datamodule, device, args.warmup, args.steps, "default"),
        "project, stats full": lambda: project_path(cfg, datamodule, device, args.warmup, args.steps, "full"),
    }
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-Trainer banners between rows
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for repeat in range(args.repeats):
        for name, measure in cases.items():
            samples[name].append(measure())
            print(f"  repeat {repeat + 1}/{args.repeats}  {name:<32} {samples[name][-1]:>10,.0f} samples/s", flush=True)
    median = {name: statistics.median(v) for name, v in samples.items()}
    reference = median["reference loop (plain PyTorch)"]
    off = median["project, stats off"]
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    lines = [
        f"depth {args.depth}, width {args.width}, batch {args.batch}, {args.steps} timed steps x {args.repeats} "
        f"repeats, device {device} ({machine}), torch {torch.__version__}, lightning {L.__version__}",
        "",
        "| case | samples/s (median) | vs reference |",
        "|---|---:|---:|",
        *[f"| {name} | {median[name]:,.0f} | {median[name] / reference:.2f}x |" for name in cases],
        "",
        "stats overhead, as lost throughput vs stats off: "
        + ", ".join(f"{k} {1 - median[f'project, stats {k}'] / off:.1%}" for k in ("default", "full")),
    ]
    print("\n" + "\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench-{device.type}.md").write_text("\n".join(lines) + "\n")
    (out / f"bench-{device.type}.json").write_text(
        json.dumps(
            {"args": vars(args), "device": str(device), "machine": machine, "samples_per_s": samples, "median": median},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
