"""The whole table of the notebook's experiments against theory, as text, and their figures."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepinit.propagate.depth import REUSED_LINEAR_512, drift, relu_drift_theory, reuse
from deepinit.propagate.records import Experiment, Row
from deepinit.propagate.single_layer import overflow, relu_moments, variance

# ---------------------------------------------------------------------------------------------------
# The whole table


def run_all(
    seed: int = 0,
    overflow_kw: dict | None = None,
    variance_kw: dict | None = None,
    relu_kw: dict | None = None,
    reuse_kw: dict | None = None,
    drift_kw: dict | None = None,
) -> list[Experiment]:
    """Every experiment with its own keyword arguments (sizes, trial counts) and the shared seed."""
    return [
        overflow(seed=seed, **(overflow_kw or {})),
        variance(seed=seed, **(variance_kw or {})),
        relu_moments(seed=seed, **(relu_kw or {})),
        reuse(seed=seed, **(reuse_kw or {})),
        drift(seed=seed, **(drift_kw or {})),
    ]


COLUMNS = ["id", "setup", "measured", "theory", "tolerance", "agrees"]
LEGEND = (
    "ln ratio = ln(||x_L||^2 / ||x_0||^2) = ln(m_L / m_0); layer k = after k products (the notebook's i = k - 1)\n"
    "a row agrees when |measured - theory| <= tolerance; se = standard error from the predicted or sampled spread"
)


def format_table(rows: list[Row]) -> str:
    """Fixed-width text table and a final 'N of M rows agree with theory' line."""
    cells = [COLUMNS] + [[r.id, r.setup, r.measured, r.theory, r.tolerance, "yes" if r.agrees else "NO"] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = [LEGEND, ""]
    lines.append("  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells[1:]]
    agree = sum(r.agrees for r in rows)
    lines.append(f"{agree} of {len(rows)} rows agree with theory")
    return "\n".join(lines)


def row_dicts(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


# ---------------------------------------------------------------------------------------------------
# Figures


def plot_growth(exp: Experiment, path: Path) -> None:
    """Median and IQR of ln(||x_l||^2/||x_0||^2) against layer: one reused matrix versus fresh ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = exp.data["n"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, act in zip(axes, ["linear", "relu"], strict=True):
        for kind, color in [("fresh", "tab:blue"), ("reused", "tab:red")]:
            v = exp.data[kind][act]
            q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=v.dtype), dim=0).numpy()
            layers = np.arange(v.shape[1])
            ax.plot(layers, q[1], color=color, label=f"{kind} matrix: median ({v.shape[0]} draws)")
            ax.fill_between(layers, q[0], q[2], color=color, alpha=0.2, label=f"{kind}: IQR")
        layers = np.arange(exp.data["fresh"][act].shape[1])
        m1, text = (-1.0, "-l/n") if act == "linear" else (-2.5, "-2.5 l/n")
        ax.plot(layers, m1 * layers / n, "k--", lw=1, label=f"fresh theory {text}")
        if act == "linear" and n == 512:
            pts = sorted(REUSED_LINEAR_512.items())
            ax.plot([p[0] for p in pts], [p[1][0] for p in pts], "kx", label="docs/theory.md 1e (geometric mean)")
        ax.axvline(math.sqrt(n), color="gray", lw=0.8, ls=":")
        ax.set_title(f"{act}, n = {n} ({'a/sqrt(n)' if act == 'linear' else 'a*sqrt(2/n)'}); dotted: sqrt(n)")
        ax.set_xlabel("layer l")
        ax.set_ylabel("ln(||x_l||^2 / ||x_0||^2)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_drift(exp: Experiment, path: Path) -> None:
    """Histogram of ln(m_L/m_0) at the deepest layer against the log-normal prediction, and spread vs depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, ln = exp.data["n"], exp.data["ln"]
    depth = ln.shape[1] - 1
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    v = ln[:, depth].numpy()
    theory_mean, theory_sd = relu_drift_theory(n, depth)
    mean, sd = theory_mean[-1], theory_sd[-1]
    left.hist(v, bins=max(8, len(v) // 4), density=True, alpha=0.6, label=f"{len(v)} draws")
    grid = np.linspace(mean - 4 * sd, mean + 4 * sd, 300)
    left.plot(
        grid, np.exp(-0.5 * ((grid - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)), "k-", label="N(-2.5L/n, 5L/n)"
    )
    left.axvline(0, color="gray", ls=":", lw=0.8)
    left.set_xlabel(f"ln(m_L / m_0), L = {depth}")
    left.set_title(f"fresh He relu layers, n = {n}")
    left.legend(fontsize=8)

    layers = np.arange(depth + 1)
    q = torch.quantile(ln, torch.tensor([0.1, 0.5, 0.9], dtype=ln.dtype), dim=0).numpy()
    right.fill_between(layers, q[0], q[2], alpha=0.2, label="measured 10-90%")
    right.plot(layers, q[1], label="measured median")
    right.plot(layers, theory_mean, "k--", label="theory median -2.5 l/n")
    band = 1.2816 * theory_sd
    right.plot(layers, theory_mean - band, "k:", lw=1, label="theory 10-90%")
    right.plot(layers, theory_mean + band, "k:", lw=1)
    right.set_xlabel("layer l")
    right.set_ylabel("ln(m_l / m_0)")
    right.set_title("the median drifts down, the spread grows like sqrt(l)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
