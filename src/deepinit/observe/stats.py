"""Per-layer statistics of a deep MLP: plain tensor functions, no Lightning.

Every function returns {quantity: tensor of shape [n_layers]} on the tensors' own device, so a caller can
concatenate all of them and cross to the host once. Layer i of the result is the study's layer i+1.
Non-finite values are not hidden: they propagate into mean/std as nan/inf and are counted in `nonfinite`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from deepinit.base.private_api import foreach_norm, foreach_sub
from deepinit.network.activations import ACTIVATIONS

# "Dead" = the unit's pre-activation is <= 0 on every sample of the batch (for relu: its output is exactly 0
# throughout, and it gets no gradient). "Saturated" = |output - centre| beyond 0.97 of the half-range. Which rule an
# activation follows is its record's (deepinit.network.activations).
SATURATION = 0.97

# (group, quantity) pairs each group can record; `health` is dead or saturated depending on activation.
GROUPS: dict[str, tuple[str, ...]] = {
    "preactivations": ("mean", "std", "sqr", "nonfinite", "corr"),
    "activations": ("mean", "std", "sqr", "dead", "saturated", "nonfinite"),
    "normalized": ("mean", "std", "sqr", "nonfinite", "corr"),  # N(h), the activation's input, where norm is set
    "gradients": ("std", "sqr"),
    "weights": ("std", "norm"),
    "weight_grads": ("std", "norm", "grad_data_ratio"),
    "updates": ("std", "log10_update_data_ratio"),
    # the coord check's (docs/width.md): each Linear's output h (the logits last), its mean |h| and the mean |h - h_0|
    # of its change since the first record, on that record's batch; not in stats' default groups
    "coords": ("l1", "delta_l1"),
}


class Stacked:
    """Tensors stacked by shape (a deep MLP has 3: first, hidden, last), once for every statistic taken of them:
    `rows(fn)` is fn applied to each tensor, [len(tensors), ...], in as many calls as there are shapes, so the op
    count does not grow with depth. dtype: stacked as that type (float64 for the moments: one pass, not a stack
    and then a copy)."""

    def __init__(self, tensors: Sequence[Tensor], dtype: torch.dtype | None = None) -> None:
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, t in enumerate(tensors):
            groups[tuple(t.shape)].append(i)
        self.order = [i for idx in groups.values() for i in idx]
        self.parts = [_stack([tensors[i] for i in idx], dtype) for idx in groups.values()]

    def rows(self, fn: Callable[[Tensor], Tensor]) -> Tensor:
        values = torch.cat([fn(part) for part in self.parts])
        return values[torch.argsort(torch.tensor(self.order, device=values.device))]


def _stack(tensors: list[Tensor], dtype: torch.dtype | None) -> Tensor:
    if dtype is None or tensors[0].dtype == dtype or any(t.requires_grad for t in tensors):
        return torch.stack(tensors).to(dtype or tensors[0].dtype)
    out = torch.empty((len(tensors), *tensors[0].shape), dtype=dtype, device=tensors[0].device)
    return torch.stack(tensors, out=out)


def rowwise(tensors: Sequence[Tensor], fn: Callable[[Tensor], Tensor]) -> Tensor:
    """fn applied to each tensor, returning [len(tensors), ...]: same-shaped tensors are stacked and reduced in one
    call (a deep MLP has 3 shapes: first, hidden, last), so the op count does not grow with depth."""
    return Stacked(tensors).rows(fn)


def _flat(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda stacked: fn(stacked.flatten(1))


def _mean_sqr_std(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row mean, mean square and (unbiased) std of [k, n], the std from the first two moments.

    torch's std is ~20x slower than these two reductions on CPU; the moment form loses precision only when
    |mean| >> std (relative error ~ 1e-7 * (mean/std)^2), far below what the study reads off its charts.
    """
    n = t.shape[1]
    mean, sqr = t.mean(1), t.square().mean(1)
    std = ((sqr - mean * mean).clamp_min(0) * (n / max(n - 1, 1))).sqrt()
    return mean, sqr, std


def _std(stacked: Tensor) -> Tensor:
    return _mean_sqr_std(stacked.flatten(1))[2]


def _moment_rows(stacked: Tensor) -> Tensor:
    """[k, ...] -> [k, 4]: mean, std, mean square, non-finite fraction.

    In float64: an exploding network's h passes 1.8e19, where h^2 overflows float32, some 20 layers before h
    itself does, and the study wants that explosion charted up to the layer where the network really breaks."""
    t = stacked.flatten(1).double()
    mean, sqr, std = _mean_sqr_std(t)
    return torch.stack([mean, std, sqr, _nonfinite_fraction(t, sqr)], dim=1)


def _nonfinite_fraction(t: Tensor, sqr: Tensor) -> Tensor:
    """[k, n] -> [k]: the fraction of t's values that are not finite (float32, as it always was), given sqr, its
    rows' mean squares. A row whose mean square is finite has only finite values (one inf or nan makes it inf or
    nan): on the CPU, where asking costs no device sync, such a batch is known to have none without another pass
    over it (isfinite is four: abs, compare, compare, and); on a GPU the count is a kernel, and asking would be a
    sync."""
    if t.device.type == "cpu" and bool(torch.isfinite(sqr).all()):
        return torch.zeros(len(t), dtype=torch.float32, device=t.device)
    return (~torch.isfinite(t)).float().mean(1)


MOMENTS = ("mean", "std", "sqr", "nonfinite")


def _moments(stacked: Stacked) -> dict[str, Tensor]:
    return dict(zip(MOMENTS, stacked.rows(_moment_rows).unbind(1), strict=True))


def moments(tensors: Sequence[Tensor]) -> dict[str, Tensor]:
    """mean, std, mean square (the second moment the theory predicts) and the non-finite fraction."""
    return _moments(Stacked(tensors, torch.float64))


def _corr_rows(stacked: Tensor) -> Tensor:
    """[k, batch, units] -> [k]: the mean over pairs of different inputs of h_a . h_b / (|h_a| |h_b|), the
    correlation the mean-field correlation map follows (uncentred, as q_ab / sqrt(q_aa q_bb)). In float64, as the
    moments: an exploding layer's h^2 overflows float32 first."""
    h = stacked.double()
    unit = h / h.norm(dim=2, keepdim=True)
    return pair_mean(unit @ unit.transpose(1, 2))


def pair_mean(gram: Tensor) -> Tensor:
    """The mean of [..., n, n]'s off-diagonal entries: over the pairs of different inputs."""
    n = gram.shape[-1]
    return (gram.sum((-2, -1)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)) / max(n * (n - 1), 1)


def correlations(pre: Sequence[Tensor]) -> Tensor:
    """Per layer, the mean correlation between the pre-activations of pairs of different inputs in the batch."""
    return rowwise(pre, _corr_rows)


def unit_health(pre: Sequence[Tensor], post: Sequence[Tensor], activation: str) -> dict[str, Tensor]:
    """Fraction of dead units (relu-like) or of saturated outputs (tanh, sigmoid); nothing for others."""
    record = ACTIVATIONS[activation]
    if record.dead:
        stacked = Stacked(pre)
        return {"dead": _of_finite(stacked.rows(_all_finite), stacked.rows(_dead_rows))}
    if record.saturation is not None:
        return {"saturated": _saturated(post, record.saturation, rowwise(post, _all_finite))}
    return {}


def _dead_rows(stacked: Tensor) -> Tensor:
    """[layers, batch, units] -> [layers]: the fraction of units <= 0 over the whole batch."""
    return (stacked <= 0).all(dim=1).flatten(1).float().mean(1)


def _saturated(post: Sequence[Tensor], saturation: tuple[float, float], finite: Tensor) -> Tensor:
    """The fraction of outputs beyond SATURATION of the half-range from the centre, per layer (in the outputs'
    own dtype: x - centre rounds as there); NaN where `finite` (per layer) says a value is not a number."""
    centre, half = saturation
    return _of_finite(finite, rowwise(post, _flat(lambda x: ((x - centre).abs() > SATURATION * half).float().mean(1))))


def _all_finite(stacked: Tensor) -> Tensor:
    return torch.isfinite(stacked).flatten(1).all(1)


def _of_finite(finite: Tensor, fraction: Tensor) -> Tensor:
    """A unit fraction per layer, NaN where the layer's values overflowed (finite: per layer, whether all are
    finite): they are not dead, nor saturated, they are not numbers (a diverged run's layers past the first
    non-finite one)."""
    return torch.where(finite, fraction, torch.nan)


def forward_stats(
    pre: Sequence[Tensor], post: Sequence[Tensor], activation: str, normed: Sequence[Tensor] = ()
) -> dict[str, dict[str, Tensor]]:
    """Stats of each layer's pre-activation h (all layers; a residual network's stream), of each activation's
    output (all but the last) and, in a normalized network, of each activation's normalized input (`normalized`).

    Each list is stacked once, in float64, for its moments, its correlations and the unit fractions: a recorded
    step's cost is these passes over the batch's activations, and each one saved is saved at every record."""
    pre_rows = Stacked(pre, torch.float64)
    found = {"preactivations": {**_moments(pre_rows), "corr": pre_rows.rows(_corr_rows)}}
    found["activations"] = _moments(Stacked(post, torch.float64))
    if normed:
        normed_rows = Stacked(normed, torch.float64)
        found["normalized"] = {**_moments(normed_rows), "corr": normed_rows.rows(_corr_rows)}
    # the units' fractions: of the activation's input (normalized, or h; the last layer's h has no activation); a
    # layer's values are all finite where the moments counted no non-finite one
    units, units_moments = pre_rows, found["preactivations"]
    if normed:
        units, units_moments = normed_rows, found["normalized"]
    record = ACTIVATIONS[activation]
    if record.dead:  # the float64 stack compares as the tensors do
        n = len(post)
        found["activations"]["dead"] = _of_finite(units_moments["nonfinite"][:n] == 0, units.rows(_dead_rows)[:n])
    elif record.saturation is not None:
        post_finite = found["activations"]["nonfinite"] == 0
        found["activations"]["saturated"] = _saturated(post, record.saturation, post_finite)
    return found


def gradient_stats(grads: Sequence[Tensor]) -> dict[str, dict[str, Tensor]]:
    """Stats of dLoss/d(pre-activation) per layer, the backward signal the theory predicts."""
    m = moments(grads)
    return {"gradients": {"std": m["std"], "sqr": m["sqr"]}}


def weight_stats(weights: Sequence[Tensor], grads: Sequence[Tensor] | None = None) -> dict[str, dict[str, Tensor]]:
    """Weight std and norm; with gradients, their std, norm and grad:data ratio std(grad W) / std(W)."""
    w_std = rowwise(weights, _std)
    out = {"weights": {"std": w_std, "norm": torch.stack(foreach_norm(list(weights)))}}
    if grads is not None:
        g_std = rowwise(grads, _std)
        out["weight_grads"] = {
            "std": g_std,
            "norm": torch.stack(foreach_norm(list(grads))),
            "grad_data_ratio": g_std / w_std,
        }
    return out


def update_stats(
    before: Sequence[Tensor], after: Sequence[Tensor], before_std: Tensor | None = None
) -> dict[str, dict[str, Tensor]]:
    """std of the update the optimizer actually applied, and log10 std(Delta W) / std(W) (about -3 is healthy).

    before_std: std of `before`, if already computed (it is, for the grad:data ratio)."""
    deltas = foreach_sub(list(after), list(before))
    d_std = rowwise(deltas, _std)
    w_std = rowwise(before, _std) if before_std is None else before_std
    return {"updates": {"std": d_std, "log10_update_data_ratio": torch.log10(d_std / w_std)}}


def _l1_rows(stacked: Tensor) -> Tensor:
    return stacked.flatten(1).abs().mean(1)


def coord_stats(
    outputs: Sequence[Tensor], first: Sequence[Tensor], now: Sequence[Tensor] | None = None
) -> dict[str, dict[str, Tensor]]:
    """The coord check's sizes (Yang et al. 2022; mup's coord_check): per layer the mean |h| of its output, and the
    mean |h - h_first| of its change since `first`, its output on the first record's inputs; `now`: the output on
    those inputs now, where this step saw other inputs (default: `outputs`, the same inputs)."""
    changes = foreach_sub(list(outputs if now is None else now), list(first))
    return {"coords": {"l1": rowwise(outputs, _l1_rows), "delta_l1": rowwise(changes, _l1_rows)}}


HISTOGRAM_BINS = 64


def _histogram_rows(stacked: Tensor) -> Tensor:
    """[k, ...] -> [k, 5 + bins]: min, max, count, sum, sum of squares and bin counts of the finite values."""
    t = stacked.flatten(1).float()
    finite = torch.isfinite(t)
    lo = torch.where(finite, t, torch.inf).amin(1, keepdim=True)
    hi = torch.where(finite, t, -torch.inf).amax(1, keepdim=True)
    span = (hi - lo).clamp_min(1e-30)
    index = ((t - lo) / span * HISTOGRAM_BINS).nan_to_num(0.0).clamp(0, HISTOGRAM_BINS - 1).long()
    counts = torch.zeros(len(t), HISTOGRAM_BINS, device=t.device).scatter_add_(1, index, finite.float())
    t = torch.where(finite, t, 0.0)
    parts = [lo, hi, finite.sum(1, keepdim=True), t.sum(1, keepdim=True), t.square().sum(1, keepdim=True)]
    return torch.cat([*parts, counts], dim=1)


def histograms(tensors: Sequence[Tensor]) -> Tensor:
    """Per tensor, the parts of a TensorBoard histogram of its finite values: [n, 5 + HISTOGRAM_BINS]."""
    return rowwise(tensors, _histogram_rows)


def jacobian_spectrum(layers: Sequence[tuple[torch.nn.Module, torch.nn.Module]], x: Tensor, probes: int = 16) -> Tensor:
    """Mean m1 and normalized spread s^2 = var / m1^2 of the eigenvalues of J J^T, J = d x_out / d x_in of the
    square hidden stack `layers` ((linear, activation) pairs), from Hutchinson probes: m1 ~ ||J u||^2 / n (a
    jvp), m2 ~ ||J^T J u||^2 / n (then a vjp). Each row of x has its own J (the activations' slopes depend
    on the input, and MNIST digits differ in scale), so s^2 is taken per row and then averaged: pooling rows
    would add the spread between inputs to the spread the theory describes. Returns tensor([m1, s2])."""

    def stack(h: Tensor) -> Tensor:
        for linear, act in layers:
            h = act(linear(h))
        return h

    rows, n = x.shape
    x = x.detach().repeat_interleave(probes, dim=0)
    u = torch.randn(x.shape, generator=torch.Generator(x.device).manual_seed(0), device=x.device, dtype=x.dtype)
    with torch.enable_grad():
        _, ju = torch.func.jvp(stack, (x,), (u,))
        _, pullback = torch.func.vjp(stack, x)
        (jtju,) = pullback(ju)
    m1 = (ju.square().sum(1) / n).view(rows, probes).mean(1)
    m2 = (jtju.square().sum(1) / n).view(rows, probes).mean(1)
    return torch.stack([m1.mean(), (m2 / m1.square() - 1).mean()])
