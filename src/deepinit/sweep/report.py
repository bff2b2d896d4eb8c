"""The sweep report: every run of a multirun in one table and a few figures, written into the sweep folder.

`summarize(sweep_dir)` reads each job's summary.json (and its step-0 layer statistics), writes `report.csv`,
`report.md` and `report_*.png`, and each SECTIONS module's that applies to the sweep (deepinit.sweep.phase's `phase.csv`
for a sweep over sigma_w^2 and depth, deepinit.sweep.speed_report's `speed.csv` for runs that measured their learning
speed at several depths, deepinit.sweep.architecture_report's `architecture.csv` for a sweep over architectures and
inits), and logs the figures to TensorBoard under `<sweep>/report`. Beneath a table, a column that no run measured
(best_val_acc where no validation ran, ...) says why, from the runs' own summaries and settings.
The Hydra callback that calls it when a multirun ends is hydra_plugins.deepinit_launcher.sweep_report.SweepReport;
scripts/summarize.py calls it by hand.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepinit.observe.figures import plt
from deepinit.results.summary import FINISHED, Summary
from deepinit.run.lifecycle import status
from deepinit.sweep import architecture_report, coord_report, lr_transfer_report, phase, speed_report

log = logging.getLogger(__name__)

# The report's sections beyond the table: modules with STEM (<stem>.csv, report_<stem>.png), TITLE, COLUMNS,
# rows_of(jobs), applies(rows), figure(rows) and agreement_lines(rows, jobs) (report.md's text; jobs: every run of
# the sweep, for a section that says which it could not use).
SECTIONS = (phase, speed_report, architecture_report, coord_report, lr_transfer_report)
COLUMNS = [
    "job", "status", "init", "activation", "architecture", "depth", "width", "optimizer", "lr", "seed", "test_acc",
    "best_val_acc", "test_loss", "divergence_step", "divergence_layer", "wall_time_s", "reason",
]  # fmt: skip


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder (a folder holding .hydra/); a job that wrote no summary.json is 'missing', one that
    another process is running is 'running'."""
    rows = []
    for job in sorted(p.parent for p in Path(sweep_dir).glob("*/.hydra")):
        summary = status(job)
        if not summary.started:  # missing, or running in another process: nothing of this attempt to show yet
            rows.append({"job": job.name, "status": summary.status, "reason": summary.reason, "_dir": job})
            continue
        config, metrics, divergence = summary.config or {}, summary.metrics, summary.divergence
        rows.append(
            {
                "job": job.name,
                "status": summary.status,
                **{k: config.get(k) for k in ("init", "activation", "depth", "width", "optimizer", "lr", "seed")},
                "architecture": config.get("architecture", "plain"),  # runs from before the option were plain
                **{k: getattr(metrics, k) if metrics else None for k in ("test_acc", "best_val_acc", "test_loss")},
                "divergence_step": divergence.step if divergence else None,
                "divergence_layer": divergence.layer if divergence else None,
                "wall_time_s": summary.wall_time_s,
                "reason": summary.reason,
                "_dir": job,
                "_summary": summary,
                "_step0": step0(job, summary),
            }
        )
    return rows


def step0(job: Path, summary: Summary) -> dict[tuple[str, str], dict[int, float]]:
    """The run's layer statistics at step 0, from its CSV (stats.csv_file): (group, quantity) -> {layer: value},
    whole-network values (the Jacobian's) at layer 0; empty where it wrote none."""
    name = (summary.settings or {}).get("stats", {}).get("csv_file", "layer_stats.csv")
    path = job / name if name else None
    found: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    if path is None or not path.exists():
        return found
    with open(path) as f:
        for row in csv.DictReader(f):
            if row["step"] != "0":
                break  # rows are written step by step: step 0 comes first
            found[(row["group"], row["quantity"])][int(row["layer"])] = float(row["value"])
    return found


def _step0_profiles(found: dict[tuple[str, str], dict[int, float]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Measured and predicted pre-activation mean square per layer at step 0."""
    measured, theory = found.get(("preactivations", "sqr")), found.get(("theory", "preactivations_sqr"), {})
    if not measured:
        return None
    layers = sorted(measured)
    return np.array([measured[layer] for layer in layers]), np.array([theory.get(layer, math.nan) for layer in layers])


def _mean_sd(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite)) if len(finite) > 1 else 0.0


def _accuracy_grid(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], list[float]]:
    """(activation, init, depth) -> test accuracies over seeds; diverged and failed runs count as missing."""
    grid: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in rows:
        if r.get("init") is not None and r.get("depth") is not None:
            acc = r.get("test_acc") if r["status"] == "ok" else None
            grid[(_panel(r), r["init"], r["depth"])].append(acc)
    return grid


def _panel(row: dict[str, Any]) -> str:
    """A figure panel's runs: one activation, one architecture."""
    arch = row.get("architecture", "plain")
    return row["activation"] if arch == "plain" else f"{row['activation']}, {arch}"


def _panels(rows: list[dict[str, Any]], size):
    """The accuracy grid and, if it has any runs, a figure with one panel per activation: (fig, [(ax, act)])."""
    grid = _accuracy_grid(rows)
    activations = sorted({a for a, _, _ in grid})
    if not activations:
        return grid, None
    fig, axes = plt.subplots(1, len(activations), figsize=size(len(activations)), squeeze=False)
    return grid, (fig, list(zip(axes.flat, activations, strict=True)))


def accuracy_figure(rows: list[dict[str, Any]]):
    """Test accuracy against depth, one line per init (mean and spread over seeds), a panel per activation."""
    grid, panels = _panels(rows, lambda n: (6 * n, 4.2))
    if not panels:
        return None
    fig, pairs = panels
    for ax, activation in pairs:
        for init in sorted({i for a, i, _ in grid if a == activation}):
            depths = sorted(d for a, i, d in grid if a == activation and i == init)
            stats = [_mean_sd(grid[(activation, init, d)]) for d in depths]
            ax.errorbar(depths, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=init)
        ax.set(xlabel="depth", ylabel="test accuracy", title=activation, ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def heatmap_figure(rows: list[dict[str, Any]]):
    """Mean test accuracy, init x depth (activations side by side); blank where every seed diverged or failed."""
    grid, panels = _panels(rows, lambda n: (5 + 4 * n, 4.5))
    if not panels:
        return None
    fig, pairs = panels
    for ax, activation in pairs:
        inits = sorted({i for a, i, _ in grid if a == activation})
        depths = sorted({d for a, _, d in grid if a == activation})
        values = np.array([[_mean_sd(grid.get((activation, i, d), []))[0] for d in depths] for i in inits])
        image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(depths)), [str(d) for d in depths])
        ax.set_yticks(range(len(inits)), inits)
        for (y, x), v in np.ndenumerate(values):
            ax.text(
                x,
                y,
                "diverged" if math.isnan(v) else f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if v < 0.5 else "black",
            )
        ax.set(xlabel="depth", title=f"test accuracy ({activation})")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def profiles_figure(rows: list[dict[str, Any]]):
    """Step-0 pre-activation mean square against layer for every run (log scale), theory dashed beside it."""
    profiles = [(r, p) for r in rows if "_step0" in r and (p := _step0_profiles(r["_step0"])) is not None]
    if not profiles:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.cm.tab10(np.linspace(0, 1, 10))
    labels = sorted({(r["init"], _panel(r)) for r, _ in profiles})
    for r, (measured, predicted) in profiles:
        color = colors[labels.index((r["init"], _panel(r))) % 10]
        layers = np.arange(1, len(measured) + 1)
        with np.errstate(invalid="ignore"):
            ax.plot(
                layers,
                np.where(np.isfinite(measured) & (measured > 0), measured, np.nan),
                color=color,
                lw=1.2,
                label=f"{r['init']}, {_panel(r)}",
            )
            ax.plot(
                layers, np.where(np.isfinite(predicted) & (predicted > 0), predicted, np.nan), "--", color=color, lw=0.8
            )
    ax.set_yscale("log")
    ax.set(
        xlabel="layer",
        ylabel="pre-activation mean square q_l at step 0",
        title="Step-0 depth profiles: measured (solid) and theory (dashed)",
    )
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))  # one entry per (init, activation), however many seeds
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def aggregate_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: per (init, activation, depth), test accuracy mean +- sd over the seeds that finished ok."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("init") is not None:
            groups[(r["init"], _panel(r), r["depth"])].append(r)
    lines = [
        "| init | activation | depth | runs | ok | diverged | failed | test acc (mean +- sd over ok runs) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for (init, activation, depth), members in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        n = {s: sum(m["status"] == s for m in members) for s in ("ok", "diverged", "failed")}
        mean, sd = _mean_sd([m.get("test_acc") for m in members if m["status"] == "ok"])
        acc = "" if math.isnan(mean) else f"{mean:.4f} +- {sd:.4f}"
        lines.append(
            f"| {init} | {activation} | {depth} | {len(members)} | {n['ok']} | {n['diverged']} | "
            f"{n['failed']} | {acc} |"
        )
    return lines


# Columns whose emptiness is itself the result (no run diverged, every run ended ok): no line says why
RESULTS = ("reason", "divergence_step", "divergence_layer")
UNSAID = "the runs' summaries do not say why"


def empty_column_lines(rows: list[dict[str, Any]], columns: list[str], where: str = "") -> list[str]:
    """One line per column that is empty in every row (a value no run measured), saying why from each run's own
    summary.json and settings (a row's `_summary`); columns with the same reason share a line, and where the runs'
    reasons differ the line counts each. `where` names the table (a section's CSV) at the line's start."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for column in columns:
        if not rows or column in RESULTS or any(r.get(column) not in (None, "") for r in rows):
            continue
        reasons = Counter(why_empty(column, r) for r in rows)
        text = "; ".join(f"{n} run{'s' * (n > 1)}: {why}" for why, n in reasons.most_common())
        if len(reasons) == 1:
            text = next(iter(reasons))
        by_reason[text].append(column)
    return [f"{where}{', '.join(names)}: empty, {text}" for text, names in by_reason.items()]


def why_empty(column: str, row: dict[str, Any]) -> str:
    """Why this run has no value in `column`, from its summary (a run that did not finish has none at all)."""
    summary: Summary | None = row.get("_summary")
    if summary is None:
        return row.get("reason") or row.get("status") or UNSAID
    if summary.status not in FINISHED:
        return f"not finished ({summary.status})"
    explain = WHY_EMPTY.get(column)
    return (explain(summary, row) if explain else None) or UNSAID


def _no_validation(summary: Summary, row: dict[str, Any]) -> str | None:
    data, trainer = (summary.settings or {}).get("data") or {}, (summary.settings or {}).get("trainer") or {}
    if data.get("val_size") == 0:
        return "no validation split (data.val_size=0)"
    if trainer.get("limit_val_batches") == 0:
        return "no validation ran (trainer.limit_val_batches=0)"
    if summary.status == "diverged":
        return "no validation ran before the run diverged"
    # Lightning validates at trainer.val_check_interval (by default each epoch's end, 430 steps on MNIST)
    return (f"no validation ran in its {summary.steps} steps (Lightning validates at trainer.val_check_interval: by "
            "default at each epoch's end)")


def _not_tested(summary: Summary, row: dict[str, Any]) -> str | None:
    if summary.status == "diverged":
        return "a diverged run is not tested"
    if ((summary.settings or {}).get("trainer") or {}).get("limit_test_batches") == 0:
        return "no test ran (trainer.limit_test_batches=0)"
    return None


def _train_not_logged(summary: Summary, row: dict[str, Any]) -> str | None:
    if summary.status == "diverged":
        return "a diverged run counts as not trained"
    every = ((summary.settings or {}).get("trainer") or {}).get("log_every_n_steps", 50)  # Lightning's default
    # a lone run keeps its last step's values too (deepinit.training.module.logs_now); a batched member only what
    # Lightning's logger wrote
    batched = (summary.training_step or "").startswith("batched")
    if batched and summary.steps is not None and summary.steps < every:
        return (f"no training step was logged: a batched group's members keep what Lightning's logger wrote, every "
                f"trainer.log_every_n_steps={every} steps, and they took {summary.steps}")  # fmt: skip
    return None


def _never_reached(summary: Summary, row: dict[str, Any]) -> str | None:
    if summary.speed is None:
        return "no learning speed measured (speed=off)"
    if summary.speed.steps_to_target is None:
        return f"never reached speed.target_acc={summary.speed.target_acc:g} in its {summary.steps} steps"
    return None


def _spread_not_measured(summary: Summary, row: dict[str, Any]) -> str | None:
    stats, depth = (summary.settings or {}).get("stats") or {}, (summary.config or {}).get("depth")
    if stats.get("enabled") is False:
        return "no layer statistics (stats=off)"
    if not stats.get("csv_file"):
        return "no layer_stats.csv to read it from (stats.csv_file=null)"
    limit = stats.get("isometry_max_depth")
    if limit is not None and depth is not None and depth > limit:
        return f"the Jacobian's spectrum is measured up to stats.isometry_max_depth={limit} (depth {depth})"
    return None


# column -> why a finished run has no value in it (None: its summary does not say)
WHY_EMPTY: dict[str, Callable[[Summary, dict[str, Any]], str | None]] = {
    "best_val_acc": _no_validation,
    "test_acc": _not_tested,
    "test_loss": _not_tested,
    "train_acc": _train_not_logged,
    "steps_to_target": _never_reached,
    "measured_spread": _spread_not_measured,
}


def _below(notes: list[str]) -> list[str]:
    """Notes under a table, a blank line apart: a text line right after a table would read as one more row."""
    return ["", *notes] if notes else []


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, columns, extrasaction="ignore")
        out.writeheader()
        out.writerows(rows)


def _figure(fig, name: str, sweep_dir: Path, writer) -> None:
    """report_<name>.png in the sweep folder and report/<name> in TensorBoard (nothing for a figure not drawn)."""
    if fig is not None:
        fig.savefig(sweep_dir / f"report_{name}.png", dpi=110)
        writer.add_figure(f"report/{name}", fig)


def summarize(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write report.csv, report.md and report_*.png into the sweep folder (and to TensorBoard); return the rows."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    if not rows:
        return rows  # not a sweep folder: write nothing into it
    _write_csv(sweep_dir / "report.csv", COLUMNS, rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    counts = defaultdict(int)
    for r in rows:
        counts[r["status"]] += 1
    head = f"# Sweep report: {sweep_dir.name}\n\n{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    from torch.utils.tensorboard import SummaryWriter

    for stale in (sweep_dir / "report").glob("events.out.tfevents.*"):
        stale.unlink()  # a resumed sweep's report replaces the earlier one in TensorBoard, not beside it
    writer = SummaryWriter(str(sweep_dir / "report"))
    text = [head, "## Over seeds", "\n".join(aggregate_lines(rows))]
    for section in SECTIONS:
        found = section.rows_of(rows)
        if section.applies(found):
            _write_csv(sweep_dir / f"{section.STEM}.csv", section.COLUMNS, found)
            _figure(section.figure(found), section.STEM, sweep_dir, writer)
            notes = empty_column_lines(found, section.COLUMNS, where=f"{section.STEM}.csv's ")
            text += [f"## {section.TITLE}", "\n".join(section.agreement_lines(found, rows) + _below(notes))]
    text += ["## Every run", "\n".join(lines + _below(empty_column_lines(rows, COLUMNS)))]
    (sweep_dir / "report.md").write_text("\n\n".join(text) + "\n")
    for name, make in (("accuracy", accuracy_figure), ("heatmap", heatmap_figure), ("profiles", profiles_figure)):
        _figure(make(rows), name, sweep_dir, writer)
    writer.close()
    figures = ", ".join(p.name for p in sorted(sweep_dir.glob("report_*.png")))
    # TensorBoard opens a logdir of many runs with none of them ticked: the report's figures are one tick away
    log.info(
        f"sweep report: {head.splitlines()[-1]}; {sweep_dir / 'report.md'}, figures in {sweep_dir} ({figures}); in"
        f" TensorBoard (tensorboard --logdir {sweep_dir}): tick the run 'report' in the runs list, then Images"
    )
    return rows
