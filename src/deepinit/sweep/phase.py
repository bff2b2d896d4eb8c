"""The trainability phase diagram of a sweep over (sigma_w^2, depth): what trained against what the depth scales
predict (Schoenholz et al. 2017: a network of depth L trains with a fixed SGD budget where L < 6 xi_c).

A section of the sweep report (deepinit.sweep.report): phase.csv, report_phase.png and the agreement lines of report.md,
for a sweep whose runs vary sigma_w^2 and depth. docs/trainability.md shows one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from deepinit import theory
from deepinit.observe.figures import plt
from deepinit.results.summary import FINISHED, Summary

STEM, TITLE = "phase", "Trainability: measured against 6 xi_c"  # phase.csv, report_phase.png, report.md's heading
TRAINED = 0.5  # test accuracy after the budget that counts as trained (chance is 0.1; runs land near one or the other)
COLUMNS = ["sigma_w2", "sigma_b2", "depth", "steps", "seed", "train_acc", "test_acc", "xi_c", "depth_over_xi_c",
           "trainable", "predicted"]  # fmt: skip


def why_not_judged(job: dict[str, Any]) -> str | None:
    """Why a run of the sweep (a row of deepinit.sweep.report.collect) has no place in the diagram, None where it has:
    it did not finish (failed, interrupted, missing, running), it has no theory verdict, or it is not a plain MLP."""
    summary: Summary | None = job.get("_summary")
    if summary is None:
        return job.get("status") or "missing"
    if summary.status not in FINISHED:
        return summary.status
    if summary.theory is None:
        return "no theory verdict"
    if summary.theory.architecture != "plain":  # the depth scales and the Jacobian's theory are plain MLPs'
        return f"not plain ({summary.theory.architecture})"
    return None


def rows_of(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per finished run with a theory block: its cell (sigma_w^2, sigma_b^2, depth, budget) and results.
    A diverged run did not train; its accuracy is chance's empty value."""
    out = []
    for job in jobs:
        if why_not_judged(job) is not None:
            continue
        summary: Summary = job["_summary"]
        t, metrics, ok = summary.theory, summary.metrics, summary.status == "ok"
        test_acc = metrics.test_acc if ok and metrics else None
        out.append(
            {
                "sigma_w2": round(t.sigma_w2, 6),
                "sigma_b2": round(t.sigma_b2, 6),
                "depth": t.depth,
                "steps": summary.budget,
                "seed": (summary.config or {}).get("seed"),
                "train_acc": metrics.train_acc if ok and metrics else None,
                "test_acc": test_acc,
                "xi_c": t.xi_c,
                "depth_over_xi_c": t.depth_over_xi_c,
                "trainable": test_acc is not None and test_acc >= TRAINED,
                "predicted": t.within,  # depth < 6 xi_c, as the run's verdict said
                "activation": t.activation,
                "status": summary.status,
                "_summary": summary,  # the report says from it why a column of phase.csv is empty
            }
        )
    return sorted(out, key=lambda r: (r["steps"], r["sigma_w2"], r["depth"], r["seed"] or 0))


def applies(rows: list[dict[str, Any]]) -> bool:
    """A grid over sigma_w^2 and depth of one activation (the diagram's lines are that activation's)."""
    return (
        len({r["sigma_w2"] for r in rows}) > 1
        and len({r["depth"] for r in rows}) > 1
        and (len({r["activation"] for r in rows}) == 1)
    )


def cells(rows: list[dict[str, Any]]) -> dict[tuple[int, float, int], dict[str, Any]]:
    """(steps, sigma_w^2, depth) -> mean test accuracy over seeds (a diverged run counts as 0.1, chance), whether
    the cell trained (its mean at least TRAINED) and whether the theory says it should; its runs, and how many of
    them diverged."""
    grouped: dict[tuple[int, float, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        grouped[(r["steps"], r["sigma_w2"], r["depth"])].append(r)
    out = {}
    for key, members in grouped.items():
        acc = float(np.mean([0.1 if m["test_acc"] is None else m["test_acc"] for m in members]))
        first = members[0]
        out[key] = {"acc": acc, "trained": acc >= TRAINED, "predicted": first["predicted"],
                    "depth_over_xi_c": first["depth_over_xi_c"], "runs": len(members),
                    "diverged": sum(m.get("status") == "diverged" for m in members)}  # fmt: skip
    return out


def agreement_lines(rows: list[dict[str, Any]], jobs: list[dict[str, Any]] | None = None) -> list[str]:
    """report.md's section: how many of the sweep's cells it could judge (jobs: the sweep's every run, the report's
    rows; without them, the judged runs are the sweep) and why the others not, how often measured and predicted
    agree, overall and away from the boundary, and every cell with its verdicts and, where they disagree, the
    likely reason."""
    table = cells(rows)
    skipped = [(_cell_of(job), job.get("job", "?"), why) for job in jobs or [] if (why := why_not_judged(job))]
    unjudged: dict[tuple[int, float, int], list[str]] = defaultdict(list)
    for key, _, why in skipped:
        if key is not None:
            unjudged[key].append(why)
    nowhere = [f"{name} ({why})" for key, name, why in skipped if key is None]
    agree = [c["trained"] == c["predicted"] for c in table.values()]
    shallow = [c["trained"] for c in table.values() if c["depth_over_xi_c"] <= 3]
    deep = [not c["trained"] for c in table.values() if c["depth_over_xi_c"] >= 12]
    diverged = sum(c["diverged"] for c in table.values())
    runs = f"- runs judged: {len(rows)} of {len(rows) + len(skipped)}"
    if diverged:
        runs += f", {diverged} of them diverged (counted as not trained, at chance, 0.1)"
    if skipped:
        runs += f"; not judged: {_counted(why for _, _, why in skipped)}"
    if nowhere:  # neither the summary nor the job's own config names its sigma_w^2, depth and budget
        runs += f"; of these, in no cell: {', '.join(nowhere)}"
    lines = [
        f"Cells (sigma_w^2 x depth x budget, mean over seeds): judged {len(table)} of the sweep's "
        f"{len(set(table) | set(unjudged))}; trained means test accuracy >= {TRAINED:g}; predicted means depth "
        "< 6 xi_c.",
        "",
        runs,
        f"- measured and predicted agree in {sum(agree)} of {len(agree)} cells ({_pct(agree)})",
        f"- depth <= 3 xi_c that trained: {sum(shallow)} of {len(shallow)} ({_pct(shallow)})",
        f"- depth >= 12 xi_c that did not train: {sum(deep)} of {len(deep)} ({_pct(deep)})",
        "",
        "| steps | sigma_w^2 | depth | depth / xi_c | runs | test acc | measured | predicted | agree | why, likely |",
        "|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for key in sorted(set(table) | set(unjudged)):
        steps, sw2, depth = key
        missed = unjudged.get(key, [])
        c = table.get(key)
        if c is None:
            lines.append(f"| {steps} | {sw2:g} | {depth} |  | 0 of {len(missed)} |  |  |  |  | "
                         f"not judged: {_counted(missed)} |")  # fmt: skip
            continue
        why = "" if c["trained"] == c["predicted"] else _why(key, c, table)
        if missed:
            why += ("; " if why else "") + f"not judged: {_counted(missed)}"
        acc = f"{c['acc']:.3f}" + (f" ({c['diverged']} diverged)" if c["diverged"] else "")
        n = f"{c['runs']} of {c['runs'] + len(missed)}" if missed else str(c["runs"])
        lines.append(
            f"| {steps} | {sw2:g} | {depth} | {c['depth_over_xi_c']:.3g} | {n} | "
            f"{acc} | {'trained' if c['trained'] else 'not'} | {'trains' if c['predicted'] else 'not'} | "
            f"{'yes' if c['trained'] == c['predicted'] else 'no'} | {why} |"
        )
    return lines


def _counted(reasons: Iterable[str]) -> str:
    """'2 failed, 1 missing': how many runs for each reason, most first."""
    return ", ".join(f"{n} {why}" for why, n in Counter(reasons).most_common())


def _cell_of(job: dict[str, Any]) -> tuple[int, float, int] | None:
    """A run's cell (budget, sigma_w^2, depth) from its settings, for a run the diagram could not judge: its
    summary.json's, else the job's own .hydra/config.yaml (a missing run wrote no summary). None where they do not
    name all three: a scheme other than gaussian has its sigma_w^2 only in the theory verdict a judged run has."""
    summary: Summary | None = job.get("_summary")
    settings = summary.settings if summary is not None and summary.settings else _job_config(job.get("_dir"))
    init, trainer = settings.get("init") or {}, settings.get("trainer") or {}
    sw2, depth, steps = init.get("sigma_w2"), settings.get("depth"), trainer.get("max_steps")
    if init.get("name") != "gaussian" or not isinstance(sw2, int | float) or not isinstance(depth, int):
        return None
    if not isinstance(steps, int) or steps <= 0:
        return None  # a budget of epochs: its steps are known only from a run that ran them
    return steps, round(float(sw2), 6), depth


def _job_config(job_dir: Path | None) -> dict[str, Any]:
    try:
        return yaml.safe_load((Path(job_dir) / ".hydra" / "config.yaml").read_text()) or {}
    except (TypeError, OSError, yaml.YAMLError):
        return {}


def _why(key: tuple[int, float, int], cell: dict[str, Any], table: dict) -> str:
    """A disagreement's likely reason, from the cell and its neighbours in budget."""
    steps, sw2, depth = key
    other = {k[0]: c["trained"] for k, c in table.items() if k[1:] == (sw2, depth) and k[0] != steps}
    if not cell["trained"] and any(trained for budget, trained in other.items() if budget > steps):
        return f"the budget: {max(other)} steps train it"
    if cell["trained"] and any(not trained for budget, trained in other.items() if budget < steps):
        return f"the budget: beyond 6 xi_c, {min(other)} steps do not train it; more steps widen the band"
    if 3 < cell["depth_over_xi_c"] < 12:
        return "near the boundary: 6 xi_c is a rule of thumb, and finite width and layer 1 (784 wide) shift it"
    if not cell["trained"]:
        return "too few steps or too small a learning rate for this depth, far inside 6 xi_c"
    return "trained far beyond 6 xi_c: finite width and the 784-wide layer 1 give it more than the theory"


def _pct(flags: list[bool]) -> str:
    return f"{100 * sum(flags) / len(flags):.0f}%" if flags else "no cells"


def figure(rows: list[dict[str, Any]]):
    """Test accuracy over (sigma_w^2, depth), log depth, one panel per budget, with 6 xi_c and chi_1 = 1 drawn."""
    table = cells(rows)
    budgets = sorted({k[0] for k in table})
    sw2s = sorted({k[1] for k in table})
    depths = sorted({k[2] for k in table})
    activation, sigma_b2 = rows[0]["activation"], rows[0]["sigma_b2"]
    x_edges = _edges(np.array(sw2s), log=False)
    y_edges = _edges(np.array(depths, dtype=float), log=True)
    fine = np.linspace(x_edges[0], x_edges[-1], 120)
    limit = [theory.TRAINABLE_XI * theory.depth_scales(activation, s, sigma_b2)["xi_c"] for s in fine]
    edge = theory.edge_of_chaos(activation, sigma_b2)
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets) + 1, 4.8), squeeze=False)
    for ax, steps in zip(axes.flat, budgets, strict=True):
        grid = np.array([[table.get((steps, s, d), {}).get("acc", np.nan) for s in sw2s] for d in depths])
        image = ax.pcolormesh(x_edges, y_edges, grid, vmin=0, vmax=1, cmap="viridis", shading="flat")
        ax.plot(fine, np.minimum(limit, 1e6), "w-", lw=2, label="6 xi_c")
        if x_edges[0] <= edge <= x_edges[-1]:
            ax.axvline(edge, color="w", ls="--", lw=1.2, label=f"chi_1 = 1 ({edge:.3g})")
        ax.set_yscale("log")
        ax.set_ylim(y_edges[0], y_edges[-1])
        ax.set_yticks(depths, [str(d) for d in depths])
        ax.minorticks_off()
        ax.set(xlabel="sigma_w^2", ylabel="depth", title=f"{steps} SGD steps")
        ax.legend(fontsize=8, loc="upper right")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="test accuracy")
    fig.suptitle(f"Trainability: {activation}, sigma_b^2 = {sigma_b2:g}")
    return fig


def _edges(centres: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges halfway between grid values (geometrically for a log axis), half a step beyond the ends."""
    v = np.log(centres) if log else centres
    mid = (v[1:] + v[:-1]) / 2 if len(v) > 1 else np.array([])
    step = (v[1] - v[0]) if len(v) > 1 else 1.0
    edges = np.concatenate([[v[0] - (mid[0] - v[0] if len(mid) else step / 2)], mid,
                            [v[-1] + (v[-1] - mid[-1] if len(mid) else step / 2)]])  # fmt: skip
    return np.exp(edges) if log else edges
