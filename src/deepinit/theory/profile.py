"""The layer-by-layer prediction for an initialized MLP (docs/theory.md 1-5): the forward second moments q_l and m_l,
the backward gradient profile, their finite-width spread, the sigma_w^2 each scheme implies, and the spectrum of the
input-output Jacobian (dynamical isometry)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deepinit.init_schemes import SCHEMES, bias_variance
from deepinit.theory.moments import (
    derivative_second_moment,
    derivative_spread,
    fourth_moment_ratio,
    mean,
    second_moment,
)


def scheme_sigma_w2(
    name: str, fan_in: int, fan_out: int, gain: float, std: float | None = None
) -> tuple[float, float] | None:
    """(sigma_w^2 forward = fan_in Var W, sigma_w^2 backward = fan_out Var W) a scheme implies for one layer.

    None for schemes whose scale is not set by a formula: `spectral` (divides by the measured largest
    singular value) and `lsuv` (rescales on a real batch); use `measured_sigma_w2` on their weights.
    """
    variance = SCHEMES[name].variance
    if variance is None:
        return None
    var = variance(fan_in, fan_out, gain, std)
    return fan_in * var, fan_out * var


def measured_sigma_w2(weight: torch.Tensor) -> tuple[float, float]:
    """(fan_in, fan_out) * mean(W^2) of actual weights: what data-dependent schemes ended up with."""
    fan_out, fan_in = weight.shape
    ms = weight.detach().double().square().mean().item()
    return fan_in * ms, fan_out * ms


@dataclass
class Prediction:
    """Per-layer predictions, index l-1 for layer l (activation entries: layers 1..L-1)."""

    q: list[float]  # pre-activation second moment
    m: list[float]  # post-activation second moment
    act_mean: list[float]  # post-activation mean
    grad_sqr: list[float]  # E g_l^2 relative to E g_L^2 (multiply by the measured last-layer value)
    chi: list[float]  # per-layer backward factor E g_l^2 / E g_{l+1}^2 (length L-1)
    q_log_sd: list[float]  # finite-width sd of ln q_l around ln of the mean (whose median is lower by sd^2/2)
    m_log_sd: list[float]  # the same for ln m_l
    sigma_w2: list[float]  # forward sigma_w^2 per layer, as used
    orthogonal: bool
    sigma_b2: list[float]  # bias variance per layer, as used


def _ratio_log_var(kurtosis: float, fan_in: int, fan_out: int, orthogonal: bool) -> float:
    """Var ln(unit average of f(h)^2 / its mean) for one layer, given its input (docs/theory.md 1f).

    Gaussian weights: the n units are iid given the input, Var = (E f^4 / (E f^2)^2 - 1) / n (relu 5/n, the
    raw h^2 2/n). Orthonormal rows remove the chi-square part of that (relu 3/n, linear 0) but, when they
    project fan_in > fan_out dimensions down, keep the projection's own 2 (1/fan_out - 1/fan_in).
    """
    if not orthogonal:
        return (kurtosis - 1) / fan_out
    return max(kurtosis - 3, 0.0) / fan_out + 2 * max(1 / fan_out - 1 / fan_in, 0.0)


def predict(
    activation: str,
    sigma_w2: Sequence[tuple[float, float]],
    shapes: Sequence[tuple[int, int]],
    input_sqr: float = 1.0,
    sigma_b2: float | Sequence[float] = 0.0,
    orthogonal: bool = False,
) -> Prediction:
    """Mean-field forward/backward recursions for a depth-L MLP, with the finite-width spread.

    sigma_w2[l] = (forward, backward) and shapes[l] = (fan_in, fan_out) for layer l+1. orthogonal: weights
    with orthonormal rows or columns (orthogonal, lsuv) rather than iid Gaussian-like entries.
    """
    depth = len(sigma_w2)
    biases = [float(sigma_b2)] * depth if isinstance(sigma_b2, int | float) else list(sigma_b2)
    q, m, mu, q_var, m_var = [], [], [], [], []
    prev, prev_var = input_sqr, 0.0
    for layer, (fan_in, fan_out) in enumerate(shapes):
        q_l = sigma_w2[layer][0] * prev + biases[layer]
        q.append(q_l)
        q_var.append(prev_var + _ratio_log_var(3.0, fan_in, fan_out, orthogonal))  # h itself: kurtosis 3
        if layer < depth - 1:
            m.append(second_moment(activation, q_l))
            mu.append(mean(activation, q_l))
            kurtosis = fourth_moment_ratio(activation, q_l)
            m_var.append(prev_var + _ratio_log_var(kurtosis, fan_in, fan_out, orthogonal))
            prev, prev_var = m[-1], m_var[-1]
    chi = [sigma_w2[layer + 1][1] * derivative_second_moment(activation, q[layer]) for layer in range(depth - 1)]
    grad = [1.0]
    for factor in reversed(chi):
        grad.append(grad[-1] * factor)
    return Prediction(
        q=q,
        m=m,
        act_mean=mu,
        grad_sqr=grad[::-1],
        chi=chi,
        q_log_sd=[math.sqrt(v) for v in q_var],
        m_log_sd=[math.sqrt(v) for v in m_var],
        sigma_w2=[s[0] for s in sigma_w2],
        orthogonal=orthogonal,
        sigma_b2=biases,
    )


def predict_model(
    model, scheme: str, gain: float, std: float | None = None, input_sqr: float = 1.0, bias_std: float | None = 0.0
) -> tuple[Prediction, str]:
    """Prediction for an initialized `deepinit.model.MLP`; returns it with a note on where sigma_w^2 came from."""
    shapes = [(lin.in_features, lin.out_features) for lin in model.linears]
    from_formula = [scheme_sigma_w2(scheme, fan_in, fan_out, gain, std) for fan_in, fan_out in shapes]
    if all(s is not None for s in from_formula):
        sigma_w2, note = from_formula, f"sigma_w^2 from the {scheme} formula (gain {gain:.4g})"
    else:
        sigma_w2 = [measured_sigma_w2(lin.weight) for lin in model.linears]
        note = f"sigma_w^2 measured from the weights {scheme} produced (its scale has no closed form)"
    has_bias = model.linears[0].bias is not None
    sigma_b2 = [bias_variance(bias_std, fan_in) if has_bias else 0.0 for fan_in, _ in shapes]
    orthogonal = SCHEMES[scheme].orthogonal
    return predict(model.activation, sigma_w2, shapes, input_sqr, sigma_b2, orthogonal), note


def isometry(activation: str, pred: Prediction, layers: range) -> dict[str, float]:
    """docs/theory.md 4 (Pennington, Schoenholz & Ganguli 2017): for J over `layers` (0-based, square), the mean
    squared singular value m1 = prod sigma_w^2 mu1 and the spread s^2 ~ sum (v_W + v_D), v_W = 1 for
    Gaussian and 0 for orthogonal weights, v_D = mu2 / mu1^2 - 1 with mu_k = E phi'(h)^(2k)."""
    m1, s2 = 1.0, 0.0
    for layer in layers:
        m1 *= pred.sigma_w2[layer] * derivative_second_moment(activation, pred.q[layer])
        s2 += (0.0 if pred.orthogonal else 1.0) + derivative_spread(activation, pred.q[layer])
    return {"m1": m1, "s2": s2}
