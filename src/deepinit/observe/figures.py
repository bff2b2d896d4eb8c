"""Matplotlib figures of layer statistics: the depth profile and the layer x step heat map."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # figures go to files and TensorBoard; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

History = dict[tuple[str, str], list[tuple[int, np.ndarray]]]

PROFILE_PANELS = [
    ("preactivations", "sqr", "pre-activation mean square q_l"),
    ("preactivations", "corr", "correlation c_l between inputs' pre-activations"),
    ("activations", "sqr", "activation mean square m_l"),
    ("gradients", "sqr", "gradient mean square E g_l^2 (dL/dh_l)"),
    ("activations", "health", "dead / saturated fraction"),
    ("weight_grads", "grad_data_ratio", "grad:data ratio std(dW)/std(W)"),
    ("updates", "log10_update_data_ratio", "log10 update:data ratio"),
]


def _pick_steps(steps: list[int], points: int) -> list[int]:
    """The first logged step (init) and evenly spaced later ones, the last included."""
    if len(steps) <= points:
        return steps
    picks = np.linspace(0, len(steps) - 1, points).round().astype(int)
    return [steps[i] for i in sorted(set(picks))]


def _finite(values: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(values), values, np.nan)  # gaps, not errors, where a run overflowed


def _use_log(series: list[np.ndarray]) -> bool:
    """Log-scaled where the values are >= 0 and the positive ones span decades (a vanishing signal's underflow to 0
    is left out of the picture, not a reason to draw it linearly)."""
    values = np.concatenate([s[np.isfinite(s)] for s in series]) if series else np.array([])
    positive = values[values > 0]
    return bool(positive.size) and values.min() >= 0 and positive.max() / positive.min() > 10


THEORY_CURVES = {  # panel -> (predicted curve, its finite-width log sd) from LayerStats.prediction
    ("preactivations", "sqr"): ("preactivations_sqr", "log_sd_preactivations"),
    ("activations", "sqr"): ("activations_sqr", "log_sd_activations"),
    ("gradients", "sqr"): ("gradients_sqr", None),
    ("preactivations", "corr"): ("preactivations_corr", None),
}


def _overlay_theory(ax, curve: np.ndarray, log_sd: np.ndarray | None) -> None:
    """Predicted mean (dashed) and, where known, the band median * exp(+-2 sd) of its log-normal spread."""
    layers = np.arange(1, len(curve) + 1)
    ax.plot(layers, curve, "k--", lw=1.2, label="theory (init)")
    if log_sd is not None:
        median = curve * np.exp(-(log_sd**2) / 2)
        ax.fill_between(
            layers,
            median * np.exp(-2 * log_sd),
            median * np.exp(2 * log_sd),
            color="0.6",
            alpha=0.3,
            label="theory +-2 sd (finite width)",
        )


def depth_profile_figure(
    history: History, activation: str, points: int = 5, prediction: dict[str, np.ndarray] | None = None
) -> Figure | None:
    """Each panel: a quantity against layer index, one line per logged step (init and a few later), with the
    theory's prediction at init overlaid where `prediction` has it."""
    health = "dead" if ("activations", "dead") in history else "saturated"
    panels = [(g, health if q == "health" else q, t) for g, q, t in PROFILE_PANELS]
    panels = [p for p in panels if (p[0], p[1]) in history]
    if not panels:
        return None
    rows = math.ceil(len(panels) / 4)
    fig, axes = plt.subplots(rows, 4, figsize=(20, 4 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (group, quantity, title) in zip(axes.flat, panels, strict=False):
        _profile_panel(ax, history, group, quantity, title, points, prediction)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Depth profile ({activation})")
    fig.tight_layout()
    return fig


def _profile_panel(ax, history: History, group: str, quantity: str, title: str, points: int,
                   prediction: dict[str, np.ndarray] | None) -> None:  # fmt: skip
    """One quantity against layer index, a line per chosen step, the theory at init over it where known."""
    records = dict(history[(group, quantity)])
    chosen = _pick_steps(sorted(records), points)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(chosen)))
    series = [_finite(records[s]) for s in chosen]
    for step, values, color in zip(chosen, series, colors, strict=True):
        ax.plot(np.arange(1, len(values) + 1), values, marker=".", color=color, label=f"step {step}")
    curve, sd = THEORY_CURVES.get((group, quantity), (None, None))
    if prediction and curve in prediction:
        _overlay_theory(ax, prediction[curve], prediction.get(sd))
        series.append(prediction[curve])
    if _use_log(series):
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("layer")
    ax.grid(alpha=0.3)
    _say_where_not_finite(ax, series[: len(chosen)])


def _say_where_not_finite(ax, series: list[np.ndarray]) -> None:
    """Words where a line has no value to draw: an empty panel says why (a diverged run's overflow)."""
    gaps = [int(np.argmax(~np.isfinite(s))) + 1 for s in series if not np.isfinite(s).all()]
    if gaps:
        whole = all(not np.isfinite(s).any() for s in series)
        text = "no finite values: the signal overflowed" if whole else f"not finite from layer {min(gaps)} on"
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="firebrick",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "firebrick"})  # fmt: skip


# TensorBoard's image cards are about 500 px wide: a figure of that size reads there without enlarging.
CARD_SIZE, CARD_DPI = (5.0, 3.5), 100
CARD_PANELS = {("activations", "sqr"): "activations: mean square per layer",
               ("gradients", "sqr"): "gradients: mean square per layer"}  # fmt: skip


def card_figures(history: History, points: int, prediction: dict[str, np.ndarray] | None,
                 heat_maps: bool = True) -> dict[str, Figure]:  # fmt: skip
    """The network-level view, a figure a TensorBoard card: the depth profiles of the activations' and the
    gradients' mean square (a line per chosen step, the theory at init dashed with its finite-width band) and
    (heat_maps) their layer x step heat maps. Keys: the card's name."""
    cards = {}
    for (group, quantity), title in CARD_PANELS.items():
        if (group, quantity) not in history:
            continue
        fig, ax = plt.subplots(figsize=CARD_SIZE, dpi=CARD_DPI)
        _profile_panel(ax, history, group, quantity, title, points, prediction)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        cards[f"depth profile, {group}"] = fig
        if heat_maps:
            fig, ax = plt.subplots(figsize=CARD_SIZE, dpi=CARD_DPI)
            _heat_panel(fig, ax, history, group, quantity)
            fig.tight_layout()
            cards[f"heat map, {group}"] = fig
    return cards


def heatmap_figure(history: History) -> Figure | None:
    """log10 of the activation and gradient mean squares, layer x logged step."""
    panels = [(g, q) for g, q in (("activations", "sqr"), ("gradients", "sqr")) if (g, q) in history]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, (group, quantity) in zip(axes.flat, panels, strict=True):
        _heat_panel(fig, ax, history, group, quantity)
    fig.tight_layout()
    return fig


def _heat_panel(fig: Figure, ax, history: History, group: str, quantity: str) -> None:
    steps = [s for s, _ in history[(group, quantity)]]
    with np.errstate(divide="ignore", invalid="ignore"):
        grid = np.log10(_finite(np.stack([v for _, v in history[(group, quantity)]]))).T
    image = ax.imshow(
        grid,
        aspect="auto",
        origin="lower",
        cmap="magma",
        extent=(-0.5, len(steps) - 0.5, 0.5, grid.shape[0] + 0.5),
        interpolation="nearest",
    )
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int)
    ax.set_xticks(ticks, [str(steps[t]) for t in ticks])
    ax.set_xlabel("step")
    ax.set_ylabel("layer")
    ax.set_title(f"log10 {group} mean square")
    fig.colorbar(image, ax=ax)
    if not np.isfinite(grid).all():
        ax.text(0.5, 0.02, "blank: not finite (overflowed)", transform=ax.transAxes, ha="center", fontsize=8,
                color="firebrick")  # fmt: skip
