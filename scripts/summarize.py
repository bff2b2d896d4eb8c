"""Write the sweep report (report.csv, report.md, report_*.png, TensorBoard) for a finished or partial sweep.

    python scripts/summarize.py runs/sweep_experiment=depth_sweep

A multirun of scripts/train.py does this by itself when it ends (deepinit.sweep.report.SweepReport).
"""

import logging
import sys
from pathlib import Path

from deepinit.sweep.report import summarize

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit(f"usage: python scripts/summarize.py <sweep folder>  (got: {' '.join(sys.argv[1:]) or 'nothing'})")
    rows = summarize(Path(sys.argv[1]))
    if not rows:
        sys.exit(f"error: no run folders (with .hydra/) under {sys.argv[1]}")
