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

from deepinit.activations import ACTIVATIONS
from deepinit.private_api import foreach_norm, foreach_sub

# "Dead" = the unit's pre-activation is <= 0 on every sample of the batch (for relu: its output is exactly 0
# throughout, and it gets no gradient). "Saturated" = |output - centre| beyond 0.97 of the half-range. Which rule an
# activation follows is its record's (deepinit.activations).
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
}


def rowwise(tensors: Sequence[Tensor], fn: Callable[[Tensor], Tensor]) -> Tensor:
    """fn applied to each tensor, returning [len(tensors), ...]: same-shaped tensors are stacked and reduced in one
    call (a deep MLP has 3 shapes: first, hidden, last), so the op count does not grow with depth."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[tuple(t.shape)].append(i)
    order = [i for idx in groups.values() for i in idx]
    values = torch.cat([fn(torch.stack([tensors[i] for i in idx])) for idx in groups.values()])
    return values[torch.argsort(torch.tensor(order, device=values.device))]


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
    return torch.stack([mean, std, sqr, (~torch.isfinite(t)).float().mean(1)], dim=1)


def moments(tensors: Sequence[Tensor]) -> dict[str, Tensor]:
    """mean, std, mean square (the second moment the theory predicts) and the non-finite fraction."""
    rows = rowwise(tensors, _moment_rows)
    return dict(zip(("mean", "std", "sqr", "nonfinite"), rows.unbind(1), strict=True))


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
    if record.dead:  # stacked [layers, batch, units]: dead = <= 0 over the whole batch
        return {"dead": rowwise(pre, lambda h: _of_finite(h, (h <= 0).all(dim=1).flatten(1).float().mean(1)))}
    if record.saturation is not None:
        centre, half = record.saturation
        saturated = _flat(lambda x: _of_finite(x, ((x - centre).abs() > SATURATION * half).float().mean(1)))
        return {"saturated": rowwise(post, saturated)}
    return {}


def _of_finite(stacked: Tensor, fraction: Tensor) -> Tensor:
    """A unit fraction per layer, NaN where the layer's values overflowed: they are not dead, nor saturated, they
    are not numbers (a diverged run's layers past the first non-finite one)."""
    return torch.where(torch.isfinite(stacked).flatten(1).all(1), fraction, torch.nan)


def forward_stats(
    pre: Sequence[Tensor], post: Sequence[Tensor], activation: str, normed: Sequence[Tensor] = ()
) -> dict[str, dict[str, Tensor]]:
    """Stats of each layer's pre-activation h (all layers; a residual network's stream), of each activation's
    output (all but the last) and, in a normalized network, of each activation's normalized input (`normalized`)."""
    found = {
        "preactivations": {**moments(pre), "corr": correlations(pre)},
        "activations": {**moments(post), **unit_health(list(normed) or pre[: len(post)], post, activation)},
    }
    if normed:
        found["normalized"] = {**moments(normed), "corr": correlations(normed)}
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
