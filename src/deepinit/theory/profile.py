"""The layer-by-layer prediction for an initialized MLP (docs/theory.md 1-5): the forward second moments q_l and m_l,
the backward gradient profile, their finite-width spread, the sigma_w^2 each scheme implies, and the spectrum of the
input-output Jacobian (dynamical isometry)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deepinit.network.init_schemes import SCHEMES, bias_variance
from deepinit.network.model import alpha_value
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
    q_act: list[float]  # the activation's input's second moment: q_l, or 1 where normalized (layers 1..L-1)
    act_mean: list[float]  # post-activation mean
    grad_sqr: list[float]  # E g_l^2 relative to E g_anchor^2 (multiply by the measured value there)
    grad_anchor: int  # the layer (0-based) grad_sqr is relative to: the logits, or batchnorm's last hidden layer
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
    norm: str = "none",
    alphas: Sequence[float | None] | None = None,
) -> Prediction:
    """Mean-field forward/backward recursions for a depth-L MLP, with the finite-width spread (docs/theory.md 1-3,
    and 7 for normalization and residual blocks).

    sigma_w2[l] = (forward, backward) and shapes[l] = (fan_in, fan_out) for layer l+1. orthogonal: weights
    with orthonormal rows or columns (orthogonal, lsuv) rather than iid Gaussian-like entries. norm: layernorm or
    batchnorm before every hidden activation (at step 0 both give the activation an input of second moment 1);
    alphas[l]: layer l+1's residual multiplier (h_l = h_{l-1} + alpha (W a + b)), None where the layer is plain.
    The gradient profile of a batchnorm network is its own (batchnorm_gradient_rate); None-free lists throughout,
    NaN where there is no prediction.
    """
    depth = len(sigma_w2)
    biases = [float(sigma_b2)] * depth if isinstance(sigma_b2, int | float) else list(sigma_b2)
    alphas = list(alphas) if alphas is not None else [None] * depth
    normalized = norm != "none"
    q, m, mu, q_var, m_var, q_act = [], [], [], [], [], []
    prev, prev_var = input_sqr, 0.0
    for layer, (fan_in, fan_out) in enumerate(shapes):
        branch = sigma_w2[layer][0] * prev + biases[layer]
        branch_var = prev_var + _ratio_log_var(3.0, fan_in, fan_out, orthogonal)  # h itself: kurtosis 3
        alpha = alphas[layer]
        if alpha is None:
            q_l, var_l = branch, branch_var
        else:
            # the stream plus a branch whose scale follows the stream's own (m_{l-1} is phi of the same h): the
            # stream's log-fluctuation carries over whole, the branch adds its new sampling spread by its share, and
            # the cross term 2 alpha h.(W a), zero on average, adds Var = 4 alpha^2 q_{l-1} sigma_w^2 m / (n q_l^2)
            q_l = q[-1] + alpha**2 * branch
            share = alpha**2 * branch / q_l if q_l > 0 else 0.0
            cross = 4 * alpha**2 * q[-1] * (branch - biases[layer]) / (fan_out * q_l**2) if q_l > 0 else 0.0
            var_l = q_var[-1] + share**2 * max(branch_var - q_var[-1], 0.0) + cross
        q.append(q_l)
        q_var.append(var_l)
        if layer < depth - 1:
            into = 1.0 if normalized else q_l  # a normalized activation input has second moment 1 whatever q_l
            q_act.append(into)
            m.append(second_moment(activation, into))
            mu.append(mean(activation, into))
            kurtosis = fourth_moment_ratio(activation, into)
            own = _ratio_log_var(kurtosis, fan_in, fan_out, orthogonal)  # m's sampling given the layer's input
            if normalized:  # the scale is reset per input: only this layer's sampling spread is left
                m_var.append(own)
            elif alpha is None:
                m_var.append(prev_var + own)
            else:  # the stream's scale, and what phi's sampling adds beyond h's own
                m_var.append(var_l + max(own - _ratio_log_var(3.0, fan_in, fan_out, orthogonal), 0.0))
            prev, prev_var = m[-1], m_var[-1]
    chi = []
    for layer in range(depth - 1):
        # through the activation (and the normalization's 1/sqrt(q_l): layernorm divides h by its own scale)
        through = derivative_second_moment(activation, q_act[layer]) / (q[layer] if normalized else 1.0)
        alpha = alphas[layer + 1]
        branch = sigma_w2[layer + 1][1] * through
        chi.append(branch if alpha is None else 1 + alpha**2 * branch)
    anchor = depth - 1  # the profile is relative to the logits' E g_L^2 ...
    if norm == "batchnorm" and depth > 2:
        # ... but in a batchnorm network to the last hidden layer's: the rate holds between normalized layers
        anchor = depth - 2
        plain = all(a is None for a in alphas)
        chi = [batchnorm_gradient_rate(activation) if plain else math.nan for _ in chi[:-1]] + [math.nan]
    grad = [math.nan] * depth
    grad[anchor] = 1.0
    for layer in range(anchor - 1, -1, -1):
        grad[layer] = grad[layer + 1] * chi[layer]
    return Prediction(
        q=q,
        m=m,
        q_act=q_act,
        act_mean=mu,
        grad_sqr=grad,
        grad_anchor=anchor,
        chi=chi,
        q_log_sd=[math.sqrt(v) for v in q_var],
        m_log_sd=[math.sqrt(v) for v in m_var],
        sigma_w2=[s[0] for s in sigma_w2],
        orthogonal=orthogonal,
        sigma_b2=biases,
    )


def batchnorm_gradient_rate(activation: str) -> float:
    """E g_l^2 / E g_{l+1}^2 between hidden layers of a batchnorm network at step 0, at large width and batch (Yang,
    Pennington, Rao, Sohl-Dickstein & Schoenholz 2019, "A Mean Field Theory of Batch Normalization"): pi / (pi - 1)
    for relu, whatever the weights' scale (batchnorm removes it); NaN (no prediction here) for other activations."""
    return math.pi / (math.pi - 1) if activation == "relu" else math.nan


def predict_model(
    model,
    scheme: str,
    gain: float,
    std: float | None = None,
    input_sqr: float = 1.0,
    bias_std: float | None = 0.0,
    readout_var: float = 1.0,
) -> tuple[Prediction, str]:
    """Prediction for an initialized `deepinit.network.model.MLP`; returns it with a note on where sigma_w^2 came
    from. readout_var: what a width parametrization multiplied the scheme's readout variance by (mup: base_width /
    width; 0 for a zero readout)."""
    shapes = [(lin.in_features, lin.out_features) for lin in model.linears]
    from_formula = [scheme_sigma_w2(scheme, fan_in, fan_out, gain, std) for fan_in, fan_out in shapes]
    if all(s is not None for s in from_formula):
        sigma_w2, note = from_formula, f"sigma_w^2 from the {scheme} formula (gain {gain:.4g})"
        sigma_w2[-1] = (sigma_w2[-1][0] * readout_var, sigma_w2[-1][1] * readout_var)  # measured weights have it
    else:
        sigma_w2 = [measured_sigma_w2(lin.weight) for lin in model.linears]
        note = f"sigma_w^2 measured from the weights {scheme} produced (its scale has no closed form)"
    has_bias = model.linears[0].bias is not None
    sigma_b2 = [bias_variance(bias_std, fan_in) if has_bias else 0.0 for fan_in, _ in shapes]
    orthogonal = SCHEMES[scheme].orthogonal
    alphas = [None] * model.depth
    start = alpha_value(model.alpha, model.depth)
    for layer in model.blocks:
        alphas[layer] = 0.0 if start is None else start
    pred = predict(model.activation, sigma_w2, shapes, input_sqr, sigma_b2, orthogonal, model.norm, alphas)
    return pred, note


def isometry(activation: str, pred: Prediction, layers: range) -> dict[str, float]:
    """docs/theory.md 4 (Pennington, Schoenholz & Ganguli 2017): for J over `layers` (0-based, square), the mean
    squared singular value m1 = prod sigma_w^2 mu1 and the spread s^2 ~ sum (v_W + v_D), v_W = 1 for
    Gaussian and 0 for orthogonal weights, v_D = mu2 / mu1^2 - 1 with mu_k = E phi'(h)^(2k)."""
    m1, s2 = 1.0, 0.0
    for layer in layers:
        m1 *= pred.sigma_w2[layer] * derivative_second_moment(activation, pred.q[layer])
        s2 += (0.0 if pred.orthogonal else 1.0) + derivative_spread(activation, pred.q[layer])
    return {"m1": m1, "s2": s2}
