"""Run the notebook's propagation experiments against docs/theory.md and write the table and figures.

python scripts/propagate.py
python scripts/propagate.py seed=3 reuse.draws_reused=128 drift.n=256
"""

import csv
import json
import logging
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from deepinit.propagate import COLUMNS, format_table, plot_drift, plot_growth, row_dicts, run_all

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("deepinit")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="propagate")
def main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    kw = OmegaConf.to_container(cfg, resolve=True)
    start = time.perf_counter()
    experiments = run_all(
        seed=cfg.seed,
        overflow_kw=kw["overflow"],
        variance_kw=kw["variance"],
        relu_kw=kw["relu"],
        reuse_kw={**kw["reuse"], "depths": tuple(kw["reuse"]["depths"])},
        drift_kw={**kw["drift"], "depths": tuple(kw["drift"]["depths"])},
    )
    seconds = time.perf_counter() - start
    rows = [r for e in experiments for r in e.rows]
    records = row_dicts(rows)

    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + ["value", "expected", "tol"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    summary = {
        "agree": sum(r.agrees for r in rows),
        "rows": len(rows),
        "seconds": round(seconds, 1),
        "config": {k: v for k, v in kw.items() if k != "runs_dir"},
        "table": records,
    }
    (out / "table.json").write_text(json.dumps(summary, indent=2) + "\n")
    by_name = {e.name: e for e in experiments}
    plot_growth(by_name["reuse"], out / "reuse_vs_fresh.png")
    plot_drift(by_name["drift"], out / "drift_histogram.png")

    log.info(format_table(rows))
    log.info(f"({seconds:.0f} s) table.csv, table.json, reuse_vs_fresh.png, drift_histogram.png in {out}")


if __name__ == "__main__":
    main()
