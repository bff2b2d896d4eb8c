"""Does the init still matter with normalization and skip connections? A section of the sweep report
(deepinit.sweep.report) for a sweep over architectures (conf/architecture/) and inits: architecture.csv,
report_architecture.png (test accuracy, init x architecture, a panel per depth) and report.md's answer in numbers:
for each architecture how far apart its inits ended. docs/normalization.md shows one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from deepinit.observe.figures import plt
from deepinit.results.summary import FINISHED, Summary

STEM, TITLE = "architecture", "Does the init still matter? Test accuracy by architecture"
COLUMNS = ["architecture", "init", "activation", "depth", "seed", "status", "test_acc"]
# inits whose mean accuracies end within this of each other count as "the init does not matter" here
IRRELEVANT = 0.05
CHANCE = 0.1  # a diverged run's accuracy in the cell means


def rows_of(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per finished run of the report's (deepinit.sweep.report.collect: its architecture, init, ...); a diverged
    run has no test accuracy."""
    out = []
    for job in jobs:
        summary: Summary | None = job.get("_summary")
        if summary is None or summary.status not in FINISHED:
            continue
        ok = summary.status == "ok" and summary.metrics is not None
        out.append(
            {
                **{k: job[k] for k in ("architecture", "init", "activation", "depth", "seed")},
                "status": summary.status,
                "test_acc": summary.metrics.test_acc if ok else None,
                "_summary": summary,  # the report says from it why a column of architecture.csv is empty
            }
        )
    return sorted(out, key=lambda r: (r["depth"], r["architecture"], r["init"], r["seed"] or 0))


def applies(rows: list[dict[str, Any]]) -> bool:
    return len({r["architecture"] for r in rows}) > 1 and len({r["init"] for r in rows}) > 1


def cells(rows: list[dict[str, Any]]) -> dict[tuple[int, str, str], dict[str, Any]]:
    """(depth, architecture, init) -> mean test accuracy over seeds (a diverged run counts as chance), and how many
    of its runs diverged."""
    grouped: dict[tuple[int, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        grouped[(r["depth"], r["architecture"], r["init"])].append(r)
    return {
        key: {
            "acc": float(np.mean([CHANCE if m["test_acc"] is None else m["test_acc"] for m in members])),
            "diverged": sum(m["status"] == "diverged" for m in members),
            "runs": len(members),
        }
        for key, members in grouped.items()
    }


def _order(rows: list[dict[str, Any]], key: str) -> list[str]:
    """Architectures or inits in the order the sweep first names them (the experiment's order, plain first)."""
    return list(dict.fromkeys(r[key] for r in sorted(rows, key=lambda r: r["architecture"] != "plain")))


def agreement_lines(rows: list[dict[str, Any]], jobs: list[dict[str, Any]] | None = None) -> list[str]:
    """report.md's answer: per architecture and depth, the best and worst init, how far apart they ended and which
    inits ended near the best (an architecture can make all inits but one irrelevant). jobs (the sweep's every
    run) are not needed here: every finished run has its cell."""
    table = cells(rows)
    lines = [
        f"Cells (depth x architecture x init, mean over seeds; a diverged run counts as {CHANCE:g}): {len(table)}. "
        f"The init does not matter where its inits end within {IRRELEVANT:g} of each other.",
        "",
        "| depth | architecture | best init | worst init | spread | within 0.05 of the best | diverged | the init |",
        "|---:|---|---|---|---:|---|---:|---|",
    ]
    verdicts: dict[bool, list[str]] = {True: [], False: []}
    for depth in sorted({d for d, _, _ in table}):
        for arch in _order(rows, "architecture"):
            here = {i: c for (d, a, i), c in table.items() if (d, a) == (depth, arch)}
            if len(here) < 2:
                continue
            best, worst = max(here, key=lambda i: here[i]["acc"]), min(here, key=lambda i: here[i]["acc"])
            spread = here[best]["acc"] - here[worst]["acc"]
            diverged = sum(c["diverged"] for c in here.values())
            irrelevant = spread < IRRELEVANT
            verdicts[irrelevant].append(f"{arch} (depth {depth}: {spread:.3f})")
            near = [i for i in here if here[best]["acc"] - here[i]["acc"] < IRRELEVANT]
            others = [i for i in here if i not in near]
            within = f"{len(near)} of {len(here)}" + (f" (not {', '.join(others)})" if others else "")
            lines.append(
                f"| {depth} | {arch} | {best} ({here[best]['acc']:.3f}) | {worst} ({here[worst]['acc']:.3f}) | "
                f"{spread:.3f} | {within} | {diverged} | {'does not matter' if irrelevant else 'matters'} |"
            )
    lines += [
        "",
        f"- the init does not matter (inits within {IRRELEVANT:g}): {', '.join(verdicts[True]) or 'nowhere'}",
        f"- the init matters: {', '.join(verdicts[False]) or 'nowhere'}",
    ]
    return lines


def figure(rows: list[dict[str, Any]]):
    """Mean test accuracy, init (rows) x architecture (columns), a panel per depth; 'div' marks diverged runs."""
    table = cells(rows)
    depths = sorted({d for d, _, _ in table})
    archs, inits = _order(rows, "architecture"), _order(rows, "init")
    fig, axes = plt.subplots(1, len(depths), figsize=(1.6 * len(archs) * len(depths) + 2, 0.5 * len(inits) + 2.4),
                             squeeze=False)  # fmt: skip
    for ax, depth in zip(axes.flat, depths, strict=True):
        values = np.array([[table.get((depth, a, i), {}).get("acc", math.nan) for a in archs] for i in inits])
        image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(archs)), [a.replace(" + ", "\n+ ").replace(" alpha=", "\nalpha=") for a in archs],
                      fontsize=8)  # fmt: skip
        ax.set_yticks(range(len(inits)), inits)
        for (y, x), v in np.ndenumerate(values):
            cell = table.get((depth, archs[x], inits[y]))
            text = "" if cell is None else f"{v:.2f}" + (" div" if cell["diverged"] else "")
            ax.text(x, y, text, ha="center", va="center", fontsize=8, color="white" if v < 0.5 else "black")
        ax.set(title=f"test accuracy, depth {depth}", xlabel="architecture", ylabel="init")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig
