"""How fast a sweep's networks learned against how well conditioned theory says they are (Pennington, Schoenholz &
Ganguli 2017: a Jacobian whose squared singular values stay near 1, dynamical isometry, learns at a speed that does
not fall with depth).

A section of the sweep report (deepinit.sweep.report): speed.csv, report_speed.png and report.md's rank correlations,
for a sweep whose runs measured their learning speed (deepinit.observe.speed) at more than one depth. docs/isometry.md
shows one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from deepinit.observe.figures import plt
from deepinit.results.summary import FINISHED, Summary

STEM, TITLE = "speed", "Learning speed: measured against the Jacobian's predicted spread"
COLUMNS = ["init", "activation", "sigma_w2", "sigma_b2", "depth", "lr", "steps", "seed", "test_acc",
           "steps_to_target", "predicted_spread", "measured_spread"]  # fmt: skip
ARM_KEYS = ("sigma_w2", "sigma_b2", "lr", "steps")  # named in an arm's label where they vary within it


def rows_of(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per finished run with a theory block and a speed record. A run that never reached the target (or
    diverged before it) has no steps_to_target; a diverged run has no test accuracy; a run without layer
    statistics at step 0 (the report's `_step0`) has no measured spread."""
    out = []
    for job in jobs:
        summary: Summary | None = job.get("_summary")
        if summary is None or summary.status not in FINISHED or summary.theory is None or summary.speed is None:
            continue
        if summary.theory.architecture != "plain":  # the depth scales and the Jacobian's theory are plain MLPs'
            continue
        t, config = summary.theory, summary.config or {}
        ok = summary.status == "ok" and summary.metrics is not None
        out.append(
            {
                "init": config.get("init"),
                "activation": t.activation,
                "sigma_w2": round(t.sigma_w2, 6),
                "sigma_b2": round(t.sigma_b2, 6),
                "depth": t.depth,
                "lr": config.get("lr"),
                "steps": summary.budget,
                "seed": config.get("seed"),
                "test_acc": summary.metrics.test_acc if ok else None,
                "steps_to_target": summary.speed.steps_to_target,
                "target_acc": summary.speed.target_acc,
                "predicted_spread": t.jacobian_spread,
                "measured_spread": job.get("_step0", {}).get(("isometry", "spread"), {}).get(0),
                "_summary": summary,  # the report says from it why a column of speed.csv is empty
            }
        )
    return sorted(out, key=lambda r: (r["activation"], r["init"], r["depth"], r["seed"] or 0))


def applies(rows: list[dict[str, Any]]) -> bool:
    return len({r["depth"] for r in rows}) > 1


def arms(rows: list[dict[str, Any]]) -> list[str]:
    """Each row's line of the figure: its activation and init (a sweep of these is a sweep of arms, conf/arm/), and
    whatever else varies within an arm (sigma_w^2, sigma_b^2, learning rate, budget), so that only seeds pool."""
    by_arm: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_arm[(r["activation"], r["init"])].append(r)
    varied = [k for k in ARM_KEYS if any(len({m[k] for m in members}) > 1 for members in by_arm.values())]
    return [" ".join([r["activation"], str(r["init"]), *(f"{k} {_g(r[k])}" for k in varied)]) for r in rows]


def _g(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def cells(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """(arm, depth) -> over seeds: test accuracy (a diverged run counts as chance, 0.1), steps to the target (a
    run that never got there counts as its budget, a lower bound), how many reached it, the predicted spread."""
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r, name in zip(rows, arms(rows), strict=True):
        grouped[(name, r["depth"])].append(r)
    out = {}
    for key, members in grouped.items():
        accs = [0.1 if m["test_acc"] is None else m["test_acc"] for m in members]
        steps = [m["steps"] if m["steps_to_target"] is None else m["steps_to_target"] for m in members]
        measured = [m["measured_spread"] for m in members if m["measured_spread"] is not None]
        out[key] = {
            "acc": float(np.mean(accs)), "acc_sd": float(np.std(accs)),
            "steps": float(np.mean(steps)), "steps_sd": float(np.std(steps)),
            "reached": sum(m["steps_to_target"] is not None for m in members), "runs": len(members),
            "budget": max(m["steps"] for m in members), "target": members[0]["target_acc"],
            "predicted": members[0]["predicted_spread"],
            "measured": float(np.mean(measured)) if measured else None,
        }  # fmt: skip
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank); NaN for fewer than three pairs or a constant side."""
    if len(x) < 3:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: list[float]) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def agreement_lines(rows: list[dict[str, Any]], jobs: list[dict[str, Any]] | None = None) -> list[str]:
    """report.md's section: how well the predicted spread orders the measured speed, over all cells and within
    each depth (where depth itself does not do the ordering), and the cells it gets wrong, with the likely why.
    jobs (the sweep's every run) are not needed here: the cells are the runs that measured their speed."""
    table = cells(rows)
    keys = sorted(table, key=lambda k: (k[1], k[0]))
    predicted = [table[k]["predicted"] for k in keys]
    # slower is worse: more steps to the target, lower accuracy after the budget
    rho_steps = spearman(predicted, [table[k]["steps"] for k in keys])
    rho_acc = spearman(predicted, [-table[k]["acc"] for k in keys])
    target, budget = table[keys[0]]["target"], max(c["budget"] for c in table.values())
    lines = [
        f"Cells (arm x depth, mean over seeds): {len(table)}; steps to the target: the first step with validation "
        f"accuracy >= {target:g} ({budget} where never within the budget); the predicted spread is the verdict's "
        "(docs/theory.md 4).",
        "",
        f"- rank correlation (Spearman) of the predicted spread with steps to the target: {rho_steps:.2f}; with "
        f"test accuracy after the budget (negated): {rho_acc:.2f}",
    ]
    within = []
    for depth in sorted({k[1] for k in keys}):
        here = [k for k in keys if k[1] == depth]
        rho = spearman([table[k]["predicted"] for k in here], [table[k]["steps"] for k in here])
        if math.isfinite(rho):
            within.append(f"{depth}: {rho:.2f}")
    if within:
        lines.append(f"- within each depth (predicted spread against steps to the target): {', '.join(within)}")
    wrong = _misordered(table)
    if wrong:
        lines += ["", "Pairs at one depth where the better-conditioned arm learned slower:", "",
                  "| depth | better conditioned (spread) | its steps | worse conditioned (spread) | its steps "
                  "| why, likely |",
                  "|" + "---|" * 6]  # fmt: skip
        for depth, a, b in wrong:
            ca, cb = table[(a, depth)], table[(b, depth)]
            lines.append(
                f"| {depth} | {a} ({ca['predicted']:.3g}) | {_steps(ca)} | {b} ({cb['predicted']:.3g}) | {_steps(cb)}"
                f" | {_why(ca, cb)} |"
            )
    return lines


def _misordered(table: dict[tuple[str, int], dict[str, Any]]) -> list[tuple[int, str, str]]:
    """(depth, better-conditioned arm, worse-conditioned arm) where the better one needed clearly more steps."""
    out = []
    for depth in sorted({k[1] for k in table}):
        arms = sorted((a for a, d in table if d == depth), key=lambda a: table[(a, depth)]["predicted"])
        for i, a in enumerate(arms):
            for b in arms[i + 1 :]:
                ca, cb = table[(a, depth)], table[(b, depth)]
                margin = max(ca["steps_sd"] + cb["steps_sd"], 0.1 * cb["steps"])
                if ca["predicted"] < cb["predicted"] and ca["steps"] > cb["steps"] + margin:
                    out.append((depth, a, b))
    return out


def _steps(cell: dict[str, Any]) -> str:
    if cell["reached"] == 0:
        return f"never in {cell['budget']}"
    return f"{cell['steps']:.0f}" + ("" if cell["reached"] == cell["runs"] else f" ({cell['reached']}/{cell['runs']})")


def _why(better: dict[str, Any], worse: dict[str, Any]) -> str:
    if better["predicted"] < 2 and worse["predicted"] < 2:
        return "both near-isometric: the spread no longer limits the speed; the loss landscape and the learning rate do"
    if better["reached"] == 0:
        return "the budget or the learning rate: the better-conditioned arm had not got there yet"
    return ("the spread is one statistic of the spectrum at step 0; the activation's curvature and the fixed "
            "learning rate (not tuned per arm) matter too")  # fmt: skip


def figure(rows: list[dict[str, Any]]):
    """Three panels against depth (log), a line per arm with its spread over seeds: test accuracy after the budget,
    steps to the target (open markers: not reached, drawn at the budget), the predicted Jacobian spread (dots:
    measured at step 0)."""
    table = cells(rows)
    fig, (acc_ax, steps_ax, spread_ax) = plt.subplots(1, 3, figsize=(16, 4.6))
    for name in sorted({k[0] for k in table}):
        depths = sorted(d for a, d in table if a == name)
        here = [table[(name, d)] for d in depths]
        line = acc_ax.errorbar(depths, [c["acc"] for c in here], yerr=[c["acc_sd"] for c in here], marker="o",
                               capsize=3, label=name)  # fmt: skip
        color = line[0].get_color()
        steps_ax.errorbar(depths, [c["steps"] for c in here], yerr=[c["steps_sd"] for c in here], color=color,
                          capsize=3, label=name)  # fmt: skip
        for d, c in zip(depths, here, strict=True):
            steps_ax.plot(d, c["steps"], "o", color=color, mfc=color if c["reached"] else "white")
        spread_ax.plot(depths, [c["predicted"] for c in here], "-", color=color, label=name)
        measured = [(d, c["measured"]) for d, c in zip(depths, here, strict=True) if c["measured"] is not None]
        if measured:
            spread_ax.plot(*zip(*measured, strict=True), "o", color=color)
    budget, target = max(c["budget"] for c in table.values()), next(iter(table.values()))["target"]
    acc_ax.set(xscale="log", xlabel="depth", ylabel="test accuracy", ylim=(0, 1),
               title=f"accuracy after {budget} SGD steps")  # fmt: skip
    steps_ax.axhline(budget, color="gray", ls=":", lw=1)
    steps_ax.set(xscale="log", xlabel="depth", ylabel="steps", title=f"steps to {target:g} validation accuracy "
                 "(open: not reached)")  # fmt: skip
    spread_ax.set(xscale="log", yscale="log", xlabel="depth", ylabel="var / mean^2 of J's squared singular values",
                  title="Jacobian spread at step 0: theory (lines), measured (dots)")  # fmt: skip
    for ax in (acc_ax, steps_ax, spread_ax):
        ax.grid(alpha=0.3, which="both")
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
