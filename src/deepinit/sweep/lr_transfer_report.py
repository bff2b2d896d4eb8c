"""Learning-rate transfer: does the best learning rate of a narrow model carry over to a wide one? A section of the
sweep report (deepinit.sweep.report) for a sweep over widths and learning rates (conf/experiment/lr_transfer.yaml):
lr_transfer.csv, report_lr_transfer.png (Tensor Programs V's figure 1: training loss against log2 lr, a line per
width, a panel per parametrization, diverged runs marked) and, in report.md, the best log2 lr per width and how far
it moves from the narrowest width to the widest. docs/width.md shows one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
from matplotlib.ticker import FormatStrFormatter

from deepinit.observe.figures import plt
from deepinit.results.summary import FINISHED, Summary

STEM, TITLE = "lr_transfer", "Learning-rate transfer: the best learning rate at each width"
COLUMNS = ["param", "optimizer", "width", "lr", "seed", "steps", "train_loss", "val_acc", "status"]


def rows_of(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per finished run: its training loss (the mean of the last tenth of its steps' losses; none for a run
    that diverged) and last validation accuracy."""
    out = []
    for job in jobs:
        summary: Summary | None = job.get("_summary")
        if summary is None or summary.status not in FINISHED or job.get("lr") is None:
            continue
        metrics = summary.metrics if summary.status == "ok" else None
        param = (summary.settings or {}).get("param", {"name": "sp"})["name"]
        out.append(
            {
                "param": param, "optimizer": job["optimizer"], "width": job["width"], "lr": job["lr"],
                "seed": job["seed"], "steps": summary.steps, "status": summary.status,
                "train_loss": metrics.train_loss_tail if metrics else None,
                "val_acc": metrics.val_acc if metrics else None, "_summary": summary,
            }
        )  # fmt: skip
    return sorted(out, key=lambda r: (r["param"] != "sp", r["optimizer"], r["width"], r["lr"], r["seed"] or 0))


def applies(rows: list[dict[str, Any]]) -> bool:
    return len({r["width"] for r in rows}) > 1 and len({r["lr"] for r in rows}) > 2


def _panels(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["param"], r["optimizer"]) for r in rows))


def curves(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[float, float]]:
    """(param, optimizer, width) -> {lr: mean training loss over seeds}; inf where a seed diverged or lost no
    loss (a run that ended at nan counts as the worst)."""
    grouped: dict[tuple[str, str, int], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        loss = r["train_loss"]
        grouped[(r["param"], r["optimizer"], r["width"])][r["lr"]].append(
            loss if loss is not None and math.isfinite(loss) else math.inf
        )
    return {key: {lr: float(np.mean(v)) for lr, v in sorted(by_lr.items())} for key, by_lr in grouped.items()}


def best(by_lr: dict[float, float]) -> tuple[float, float] | None:
    """(log2 of the learning rate with the lowest loss, that loss); None where every run diverged."""
    finite = {lr: loss for lr, loss in by_lr.items() if math.isfinite(loss)}
    if not finite:
        return None
    lr = min(finite, key=finite.get)
    return math.log2(lr), finite[lr]


def shifts(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(param, optimizer) -> the best log2 lr per width, and its shift from the narrowest width to the widest
    (negative: the wide model wants a smaller rate); `edge` where a best rate sits at the grid's end (the true best
    may lie beyond it)."""
    table = curves(rows)
    out = {}
    for param, optimizer in _panels(rows):
        widths = sorted(w for p, o, w in table if (p, o) == (param, optimizer))
        found = {w: best(table[(param, optimizer, w)]) for w in widths}
        usable = [w for w in widths if found[w] is not None]
        edge = []
        for w in usable:
            grid = [math.log2(lr) for lr in table[(param, optimizer, w)]]
            if found[w][0] in (min(grid), max(grid)):
                edge.append(w)
        shift = found[usable[-1]][0] - found[usable[0]][0] if len(usable) > 1 else math.nan
        out[(param, optimizer)] = {"best": found, "shift": shift, "edge": edge, "from": usable[0] if usable else None,
                                   "to": usable[-1] if usable else None}  # fmt: skip
    return out


def agreement_lines(rows: list[dict[str, Any]], jobs: list[dict[str, Any]] | None = None) -> list[str]:
    """report.md's answer: per parametrization the best log2 lr at each width and how far it moves."""
    found = shifts(rows)
    widths = sorted({r["width"] for r in rows})
    steps = sorted({r["steps"] for r in rows if r["steps"] is not None})
    seeds = len({r["seed"] for r in rows})
    lines = [
        f"The lowest training loss (the mean of the last tenth of {'/'.join(map(str, steps))} steps' batch losses,"
        f" over {seeds} seed(s)) picks each width's best learning rate; a diverged run counts as the worst.",
        "",
        f"| param | optimizer | {' | '.join(f'width {w}' for w in widths)} | shift (octaves) |",
        f"|---|---|{'---:|' * len(widths)}---:|",
    ]
    for (param, optimizer), result in found.items():
        cells = []
        for w in widths:
            b = result["best"].get(w)
            cells.append("" if b is None else f"2^{b[0]:g} ({b[1]:.3g})" + (" edge" if w in result["edge"] else ""))
        lines.append(f"| {param} | {optimizer} | {' | '.join(cells)} | {result['shift']:+g} |")
    lines.append("")
    for (param, optimizer), result in found.items():
        if result["from"] is None:
            lines.append(f"- {param}, {optimizer}: every run diverged")
            continue
        moved = abs(result["shift"])
        edge = " (a best rate at the grid's edge: the shift is a bound)" if result["edge"] else ""
        lines.append(
            f"- {param}, {optimizer}: the best log2 lr moves by {moved:g} octave{'s' * (moved != 1)} from width"
            f" {result['from']} to {result['to']}{edge}"
        )
    diverged = sum(r["status"] == "diverged" for r in rows)
    lines.append(f"- diverged runs: {diverged} of {len(rows)}")
    return lines


def figure(rows: list[dict[str, Any]]):
    """Tensor Programs V's figure 1: training loss against log2 lr, a line per width (darker: wider), a panel per
    parametrization and optimizer; x where a run diverged, a ring on each width's best rate."""
    table = curves(rows)
    panels = _panels(rows)
    widths = sorted({r["width"] for r in rows})
    colors = dict(zip(widths, plt.cm.viridis(np.linspace(0.9, 0, len(widths))), strict=True))
    finite = [v for c in table.values() for v in c.values() if math.isfinite(v)]
    top = min(max(finite, default=3.0), 3.0) * 1.3
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False, sharey=True)
    for ax, (param, optimizer) in zip(axes[0], panels, strict=True):
        for w in widths:
            by_lr = table.get((param, optimizer, w))
            if not by_lr:
                continue
            x = np.log2(list(by_lr))
            y = np.array(list(by_lr.values()))
            ax.plot(x, np.where(np.isfinite(y), y, np.nan), "o-", ms=3, color=colors[w], label=f"width {w}")
            if (~np.isfinite(y)).any():
                ax.plot(x[~np.isfinite(y)], [top] * int((~np.isfinite(y)).sum()), "x", color=colors[w], ms=7)
            b = best(by_lr)
            if b is not None:
                ax.plot([b[0]], [b[1]], "o", ms=10, mfc="none", color=colors[w])
        ax.set_yscale("log")
        ax.set_ylim(top=top * 1.15)
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FormatStrFormatter("%.2g"))
        ax.set(title=f"{param}, {optimizer}", xlabel="log2 learning rate")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss (last tenth of the steps)")
    axes[0][-1].legend(fontsize=8, title="x: diverged, ring: best", title_fontsize=8)
    fig.tight_layout()
    return fig
