"""What the variance theory predicts for a deep MLP at initialization (see ../shared/THEORY.md).

Plain functions, no Lightning. Notation: q_l = E h_l^2 (pre-activation second moment), m_l = E phi(h_l)^2
(post-activation second moment), sigma_w^2 = fan_in * Var(W), sigma_b^2 = Var(b). Forward:
q_l = sigma_w,l^2 * m_{l-1} + sigma_b^2 with m_0 the input's second moment; this holds in expectation over
the weights for ANY input (zero-mean weights), so MNIST's correlated 784 pixels are fine for layer 1.
Backward: E g_l^2 = fan_out_{l+1} Var(W_{l+1}) * E phi'(h_l)^2 * E g_{l+1}^2, anchored at the measured
gradient of the logits (the theory does not predict the loss's own gradient).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Gauss-Hermite (probabilists') nodes and weights: E f(z), z ~ N(0,1) = sum w_i f(x_i) / sqrt(2 pi). An even
# count keeps a node off z = 0, where selu's and relu's derivatives jump (an odd count put its largest weight
# on the jump and overstated E selu'(z)^2 by 11%).
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(200)
_WEIGHTS = _WEIGHTS / math.sqrt(2 * math.pi)

SELU_ALPHA, SELU_LAMBDA = 1.6732632423543772, 1.0507009873554805
LEAKY_SLOPE = 0.01


def _phi(name: str) -> Callable[[np.ndarray], np.ndarray]:
    t = torch.from_numpy
    return {
        "linear": lambda x: x,
        "relu": lambda x: np.maximum(x, 0.0),
        "leaky_relu": lambda x: np.where(x > 0, x, LEAKY_SLOPE * x),
        "tanh": np.tanh,
        "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
        "gelu": lambda x: torch.nn.functional.gelu(t(x)).numpy(),
        "selu": lambda x: torch.nn.functional.selu(t(x)).numpy(),
    }[name]


def _dphi(name: str) -> Callable[[np.ndarray], np.ndarray]:
    def autograd(fn):
        def d(x: np.ndarray) -> np.ndarray:
            xt = torch.from_numpy(x).requires_grad_(True)
            (g,) = torch.autograd.grad(fn(xt).sum(), xt)
            return g.numpy()

        return d

    return {
        "linear": lambda x: np.ones_like(x),
        "relu": lambda x: (x > 0).astype(float),
        "leaky_relu": lambda x: np.where(x > 0, 1.0, LEAKY_SLOPE),
        "tanh": lambda x: 1.0 - np.tanh(x) ** 2,
        "sigmoid": lambda x: (s := 1.0 / (1.0 + np.exp(-x))) * (1.0 - s),
        "gelu": autograd(torch.nn.functional.gelu),
        "selu": autograd(torch.nn.functional.selu),
    }[name]


def gauss_expect(fn: Callable[[np.ndarray], np.ndarray], q: float) -> float:
    """E fn(sqrt(q) z), z ~ N(0, 1), by 200-point Gauss-Hermite quadrature."""
    return float(np.dot(_WEIGHTS, fn(math.sqrt(max(q, 0.0)) * _NODES)))


def _std_normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def second_moment(activation: str, q: float) -> float:
    """V(q) = E phi(sqrt(q) z)^2: closed forms where they exist (THEORY.md table), quadrature otherwise."""
    if activation == "linear":
        return q
    if activation == "relu":
        return q / 2
    if activation == "leaky_relu":
        return (1 + LEAKY_SLOPE**2) * q / 2
    if activation == "gelu":
        return q * (0.25 + math.asin(q / (1 + q)) / (2 * math.pi) + q / (math.pi * (1 + q) * math.sqrt(1 + 2 * q)))
    if activation == "selu":
        r = math.sqrt(q)
        tail = math.exp(2 * q) * _std_normal_cdf(-2 * r) - 2 * math.exp(q / 2) * _std_normal_cdf(-r) + 0.5
        return SELU_LAMBDA**2 * (q / 2 + SELU_ALPHA**2 * tail)
    return gauss_expect(lambda x: _phi(activation)(x) ** 2, q)


def mean(activation: str, q: float) -> float:
    """E phi(sqrt(q) z): the post-activation mean (relu: sqrt(q / 2 pi))."""
    if activation == "linear":
        return 0.0
    if activation == "relu":
        return math.sqrt(q / (2 * math.pi))
    return gauss_expect(_phi(activation), q)


def derivative_second_moment(activation: str, q: float) -> float:
    """E phi'(sqrt(q) z)^2, the per-layer backward factor besides the weights."""
    closed = {"linear": 1.0, "relu": 0.5, "leaky_relu": (1 + LEAKY_SLOPE**2) / 2}
    if activation in closed:
        return closed[activation]
    if activation == "selu":  # its derivative jumps at 0, where quadrature converges slowly
        return SELU_LAMBDA**2 * (0.5 + SELU_ALPHA**2 * math.exp(2 * q) * _std_normal_cdf(-2 * math.sqrt(q)))
    return gauss_expect(lambda x: _dphi(activation)(x) ** 2, q)


def fourth_moment_ratio(activation: str, q: float) -> float:
    """E phi^4 / (E phi^2)^2 at N(0, q): sets the finite-width spread of m_l / m_{l-1} (6 for relu, 3 linear)."""
    fn = _phi(activation)
    # A vanishing or exploding signal (0.01 or N(0,1) weights at depth 100: q ~ 1e-190 or 1e+250) would under- or
    # overflow the squared moments; the ratio is scale-free for relu-like units and tends to its small- and
    # large-signal limits for smooth ones, so q clamped to what float64 can square to the fourth gives the same.
    q = min(max(q, 1e-30), 1e30)
    return gauss_expect(lambda x: fn(x) ** 4, q) / gauss_expect(lambda x: fn(x) ** 2, q) ** 2


def scheme_sigma_w2(
    name: str, fan_in: int, fan_out: int, gain: float, std: float | None = None
) -> tuple[float, float] | None:
    """(sigma_w^2 forward = fan_in Var W, sigma_w^2 backward = fan_out Var W) a scheme implies for one layer.

    None for schemes whose scale is not set by a formula: `spectral` (divides by the measured largest
    singular value) and `lsuv` (rescales on a real batch); use `measured_sigma_w2` on their weights.
    """
    var = {
        "normal": (std if std is not None else 1.0) ** 2,
        "small": (std if std is not None else 0.01) ** 2,
        "lecun": gain**2 / fan_in,
        "xavier": 2 * gain**2 / (fan_in + fan_out),
        "xavier_uniform": 2 * gain**2 / (fan_in + fan_out),
        "kaiming": gain**2 / fan_in,
        "kaiming_uniform": gain**2 / fan_in,
        "kaiming_fan_out": gain**2 / fan_out,
        # Orthonormal rows (fan_out <= fan_in) or columns: every entry has variance 1 / max(fan_in, fan_out).
        "orthogonal": gain**2 / max(fan_in, fan_out),
        "torch_default": 1 / (3 * fan_in),  # U(+-1/sqrt(fan_in))
    }.get(name)
    return None if var is None else (fan_in * var, fan_out * var)


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


def _ratio_log_var(kurtosis: float, fan_in: int, fan_out: int, orthogonal: bool) -> float:
    """Var ln(unit average of f(h)^2 / its mean) for one layer, given its input (THEORY.md 1f).

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
    if model.linears[0].bias is None:
        sigma_b2: float | list[float] = 0.0
    elif bias_std is None:  # nn.Linear's own bias: U(+-1/sqrt(fan_in))
        sigma_b2 = [1 / (3 * fan_in) for fan_in, _ in shapes]
    else:
        sigma_b2 = bias_std**2
    orthogonal = scheme in ("orthogonal", "lsuv")
    return predict(model.activation, sigma_w2, shapes, input_sqr, sigma_b2, orthogonal), note


def isometry(activation: str, pred: Prediction, layers: range) -> dict[str, float]:
    """THEORY.md 4 (Pennington, Schoenholz & Ganguli 2017): for J over `layers` (0-based, square), the mean
    squared singular value m1 = prod sigma_w^2 mu1 and the spread s^2 ~ sum (v_W + v_D), v_W = 1 for
    Gaussian and 0 for orthogonal weights, v_D = mu2 / mu1^2 - 1 with mu_k = E phi'(h)^(2k)."""
    m1, s2 = 1.0, 0.0
    dphi = _dphi(activation)
    for layer in layers:
        mu1 = derivative_second_moment(activation, pred.q[layer])
        mu2 = gauss_expect(lambda x: dphi(x) ** 4, pred.q[layer])
        m1 *= pred.sigma_w2[layer] * mu1
        s2 += (0.0 if pred.orthogonal else 1.0) + mu2 / mu1**2 - 1
    return {"m1": m1, "s2": s2}
