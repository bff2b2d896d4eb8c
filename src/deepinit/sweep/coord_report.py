"""The coord check: how big each layer's output and its change after a few steps are as width grows. A section of the
sweep report (deepinit.sweep.report) for runs that recorded the `coords` statistics at several widths
(conf/experiment/coord_check.yaml): coord.csv, report_coord.png (mup's coord-check figure: a panel per step, log2
width across, a line per layer, a row per parametrization and quantity) and, in report.md, the slope of log2
delta_l1 against log2 width per layer and step beside the exponent deepinit.theory.width predicts. docs/width.md
shows one.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from typing import Any

import numpy as np

from deepinit.observe.figures import plt
from deepinit.results.summary import FINISHED, Summary
from deepinit.theory.width import WidthScaling, width_scaling

STEM, TITLE = "coord", "The coord check: each layer's output and its change against width"
COLUMNS = ["param", "optimizer", "width", "seed", "step", "layer", "l1", "delta_l1"]
QUANTITIES = {"l1": "mean |h|", "delta_l1": "mean |h - h at step 0|"}
TOLERANCE = 0.25  # a measured slope this close to the theory's exponent agrees with it


def rows_of(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (run, step, layer) of the finished runs that recorded the coords statistics."""
    out = []
    for job in jobs:
        summary: Summary | None = job.get("_summary")
        if summary is None or summary.status not in FINISHED:
            continue
        stats = (summary.settings or {}).get("stats", {})
        if "coords" not in stats.get("groups", ()) or not stats.get("csv_file"):
            continue
        path = job["_dir"] / stats["csv_file"]
        if not path.exists():
            continue
        param = (summary.settings or {}).get("param", {"name": "sp", "zero_readout": False})
        found: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
        with open(path) as f:
            for row in csv.DictReader(f):
                if row["group"] == "coords":
                    found[(int(row["step"]), int(row["layer"]))][row["quantity"]] = float(row["value"])
        for (step, layer), values in sorted(found.items()):
            out.append(
                {
                    "param": param["name"], "optimizer": job["optimizer"], "width": job["width"],
                    "seed": job["seed"], "step": step, "layer": layer, **values,
                    "_depth": job["depth"], "_zero_readout": bool(param.get("zero_readout")),
                }
            )  # fmt: skip
    return sorted(out, key=lambda r: (r["param"], r["optimizer"], r["width"], r["seed"] or 0, r["step"], r["layer"]))


def applies(rows: list[dict[str, Any]]) -> bool:
    return len({r["width"] for r in rows}) > 1


def kind(layer: int, depth: int) -> str:
    """deepinit.theory.width's layer kind of a 1-based layer."""
    return "input" if layer == 1 else "readout" if layer == depth else "hidden"


def _panels(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted({(r["param"], r["optimizer"]) for r in rows}, key=lambda p: (p[0] != "sp", p[1]))


def means(rows: list[dict[str, Any]], quantity: str) -> dict[tuple[str, str, int, int], dict[int, float]]:
    """(param, optimizer, step, layer) -> {width: the quantity's mean over seeds}."""
    grouped: dict[tuple[str, str, int, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        value = r.get(quantity)
        if value is not None and math.isfinite(value):
            grouped[(r["param"], r["optimizer"], r["step"], r["layer"])][r["width"]].append(value)
    return {key: {w: float(np.mean(v)) for w, v in sorted(by_width.items())} for key, by_width in grouped.items()}


def slope(by_width: dict[int, float]) -> float:
    """The least-squares slope of log2 value against log2 width (nan with fewer than two positive values)."""
    pairs = [(math.log2(w), math.log2(v)) for w, v in by_width.items() if v > 0]
    if len(pairs) < 2:
        return math.nan
    x, y = np.array(pairs).T
    return float(np.polyfit(x, y, 1)[0])


def theories(rows: list[dict[str, Any]]) -> dict[tuple[str, str], WidthScaling]:
    """(param, optimizer) -> deepinit.theory.width's exponents for its runs."""
    return {(r["param"], r["optimizer"]): width_scaling(r["param"], r["optimizer"], r["_zero_readout"]) for r in rows}


def slopes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (param, optimizer, layer) and step after step 0: the measured slope of log2 delta_l1 against log2 width,
    over every width and over the wider half (from `wide_from` on: the theory's exponents are a large-width limit),
    and the theory's exponent for the layer's kind."""
    depth = {(r["param"], r["optimizer"]): r["_depth"] for r in rows}
    theory = theories(rows)
    out = []
    for (param, optimizer, step, layer), by_width in sorted(means(rows, "delta_l1").items()):
        if step == 0:
            continue
        which = kind(layer, depth[(param, optimizer)])
        wide = dict(list(by_width.items())[len(by_width) // 2 :])
        out.append(
            {"param": param, "optimizer": optimizer, "layer": layer, "kind": which, "step": step,
             "slope": slope(by_width), "wide_slope": slope(wide), "wide_from": min(wide),
             "theory": theory[(param, optimizer)].change[which]}
        )  # fmt: skip
    return out


def agreement_lines(rows: list[dict[str, Any]], jobs: list[dict[str, Any]] | None = None) -> list[str]:
    """report.md's table: per parametrization, optimizer and layer the slope of log2 delta_l1 against log2 width at
    each step, beside the theory's exponent (deepinit.theory.width, docs/theory.md 9); and the last step's verdict."""
    found = slopes(rows)
    if not found:
        return ["No step after step 0 was recorded: no change to measure."]
    steps = sorted({s["step"] for s in found})
    widths = sorted({r["width"] for r in rows})
    seeds = len({r["seed"] for r in rows})
    wide_from = found[0]["wide_from"]
    lines = [
        f"Widths {', '.join(map(str, widths))}; {seeds} seed(s), the mean over seeds at each width. The slope of log2"
        " delta_l1 against log2 width (a least-squares line through every width) is the exponent of width in the"
        " size of a layer's change; the theory's is the abc-parametrization's (docs/theory.md 9), a large-width"
        f" limit: the last column fits step {steps[-1]} from width {wide_from} on.",
        "",
        f"| param | optimizer | layer | {' | '.join(f'step {s}' for s in steps)} | step {steps[-1]}, width >= "
        f"{wide_from} | theory |",
        f"|---|---|---|{'---:|' * len(steps)}---:|---:|",
    ]
    table: dict[tuple[str, str, int], dict[int, dict[str, Any]]] = defaultdict(dict)
    for s in found:
        table[(s["param"], s["optimizer"], s["layer"])][s["step"]] = s
    for (param, optimizer, layer), by_step in sorted(table.items(), key=lambda kv: (kv[0][0] != "sp", kv[0][1:])):
        first = next(iter(by_step.values()))
        cells = " | ".join(f"{by_step[s]['slope']:+.2f}" if s in by_step else "" for s in steps)
        wide = by_step[steps[-1]]["wide_slope"] if steps[-1] in by_step else math.nan
        name = f"{layer} ({first['kind'] if first['kind'] != 'readout' else 'logits'})"
        lines.append(f"| {param} | {optimizer} | {name} | {cells} | {wide:+.2f} | {first['theory']:+g} |")
    last = [s for s in found if s["step"] == steps[-1]]
    agree = [s for s in last if abs(s["slope"] - s["theory"]) <= TOLERANCE]
    within = f"{len(agree)} of {len(last)} layers' slopes over every width are within {TOLERANCE} of the theory"
    lines += ["", f"At step {steps[-1]}, {within}."]
    theory = theories(rows)
    for param, optimizer in _panels(rows):
        here = [s for s in last if (s["param"], s["optimizer"]) == (param, optimizer)]
        logits = [s for s in here if s["kind"] == "readout"]
        hidden = [s["slope"] for s in here if s["kind"] == "hidden"]
        parts = [f"the logits' change ~ width^{logits[0]['slope']:.2f}" if logits else None,
                 f"the hidden layers' ~ width^{min(hidden):.2f} to {max(hidden):.2f}" if hidden else None]  # fmt: skip
        expected = theory[(param, optimizer)]
        lines.append(
            f"- {param}, {optimizer}: {', '.join(p for p in parts if p)}; theory: {expected.regime} (the logits"
            f" ~ width^{expected.change['readout']:g}, the hidden layers ~ width^{expected.change['hidden']:g})"
        )
    return lines


def figure(rows: list[dict[str, Any]]):
    """mup's coord-check figure: a panel per step, log2 width across, the size up (log scale), a line per layer
    (the mean over seeds); a row per parametrization and optimizer for l1, and another for delta_l1."""
    panels = _panels(rows)
    steps = sorted({r["step"] for r in rows})
    layers = sorted({r["layer"] for r in rows})
    depth = max(layers)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(layers)))
    values = {q: means(rows, q) for q in QUANTITIES}
    fig, axes = plt.subplots(
        2 * len(panels), len(steps), figsize=(2.4 * len(steps) + 1.5, 2.2 * 2 * len(panels) + 0.6), squeeze=False,
        sharex=True, sharey="row",  # a row's panels on one scale: how a size grows from step to step shows
    )  # fmt: skip
    for p, (param, optimizer) in enumerate(panels):
        for q, (quantity, label) in enumerate(QUANTITIES.items()):
            row = axes[2 * p + q]
            for ax, step in zip(row, steps, strict=True):
                for color, layer in zip(colors, layers, strict=True):
                    by_width = values[quantity].get((param, optimizer, step, layer), {})
                    shown = {w: v for w, v in by_width.items() if v > 0}
                    if shown:
                        name = f"layer {layer}" + (" (logits)" if layer == depth else "")
                        ax.plot(np.log2(list(shown)), list(shown.values()), "o-", ms=3, color=color, label=name)
                ax.set_yscale("log")
                ax.set_title(f"{param}, {optimizer}: step {step}", fontsize=9)
                if step == steps[0]:
                    ax.set_ylabel(label, fontsize=9)
                if quantity == "delta_l1" and step == 0:
                    ax.text(0.5, 0.5, "0 at step 0", transform=ax.transAxes, ha="center", va="center", color="grey")
    for ax in axes[-1]:
        ax.set_xlabel("log2 width")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(layers), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return fig
