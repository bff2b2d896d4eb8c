"""What periodic checkpoints cost (checkpoint.every_minutes / every_n_steps), side by side in one process.

    python scripts/bench_checkpoints.py                    # depth 50 (width 256) and depth 1,000 (width 128), Adam
    python scripts/bench_checkpoints.py --cases 50x256 --steps 200

For each case the project's training path (Lightning, the fast step, stats off) trains `--steps` steps with no
periodic checkpoint and with one every `--every` steps (deepinit.run.checkpoints: AtomicCheckpointIO, the newest kept),
in turn, `--repeats` times (machine noise hits both alike); the medians give the seconds one checkpoint adds and the
overhead: measured at that interval, and what it comes to at the default interval (conf/checkpoint/default.yaml).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import TensorBoardLogger

from deepinit.run import checkpoints
from deepinit.run.parts import build
from deepinit.settings.hydra import from_config, register

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def fit_seconds(run, datamodule, steps: int, every: int | None, folder: Path) -> tuple[float, int]:
    """Wall seconds of `steps` training steps (with a periodic checkpoint every `every`, or none), and the bytes of
    the last checkpoint written (0: none)."""
    _, module, _ = build(run, datamodule)
    periodic = checkpoints.periodic(folder, None, every) if every else None
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=0, logger=TensorBoardLogger(folder),
        callbacks=[periodic] if periodic else [], enable_checkpointing=periodic is not None,
        plugins=[checkpoints.AtomicCheckpointIO()], enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    written = sorted((folder / checkpoints.FOLDER).glob("*.ckpt"))
    return seconds, written[-1].stat().st_size if written else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["50x256", "1000x128"], help="depth x width")
    parser.add_argument("--steps", type=int, default=None, help="steps a measurement (300; 60 from depth 500)")
    parser.add_argument("--every", type=int, default=None, help="steps between checkpoints (default: steps / 4)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # the table, not Lightning's start-up lines
    warnings.filterwarnings("ignore", module="lightning")
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        default_minutes = compose("train").checkpoint.every_minutes
        rows = []
        for case in args.cases:
            depth, width = (int(v) for v in case.split("x"))
            steps = args.steps or (60 if depth >= 500 else 300)
            every = args.every or max(1, steps // 4)
            run = from_config(compose("train", overrides=[f"depth={depth}", f"width={width}", "stats=off",
                                                          "speed=off"]))  # fmt: skip
            datamodule = run.data.make()
            datamodule.setup("fit")
            times: dict[str, list[float]] = {"off": [], "on": []}
            size = 0
            with tempfile.TemporaryDirectory() as tmp:
                fit_seconds(run, datamodule, 5, every, Path(tmp) / "warmup")  # first-call costs, untimed
                for k in range(args.repeats):
                    times["off"].append(fit_seconds(run, datamodule, steps, None, Path(tmp) / f"off{k}")[0])
                    seconds, size = fit_seconds(run, datamodule, steps, every, Path(tmp) / f"on{k}")
                    times["on"].append(seconds)
            off, on = statistics.median(times["off"]), statistics.median(times["on"])
            n = steps // every
            per_checkpoint = max(on - off, 0.0) / n
            at_default = per_checkpoint / (60 * default_minutes) if default_minutes else float("nan")
            rows.append((case, size / 2**20, off / steps, per_checkpoint, on / off - 1, every, at_default))
            print(f"{case}: {off / steps:.3f} s/step; a checkpoint of {size / 2**20:.0f} MiB adds "
                  f"{per_checkpoint:.3f} s", flush=True)  # fmt: skip
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; default every_minutes={default_minutes}")
    print("| depth x width | checkpoint | s / step | s / checkpoint | overhead, measured (every) | at the default |")
    print("|---|---|---|---|---|---|")
    for case, mib, step, per, measured, every, at_default in rows:
        print(f"| {case} | {mib:.0f} MiB | {step:.3f} | {per:.3f} | {100 * measured:+.1f}% ({every} steps) |"
              f" {100 * at_default:.2f}% |")  # fmt: skip


if __name__ == "__main__":
    main()
