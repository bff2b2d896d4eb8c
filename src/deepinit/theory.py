"""What the variance theory predicts for a deep MLP at initialization (see docs/theory.md).

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
from typing import Any

import numpy as np
import torch

from deepinit.activations import ACTIVATIONS
from deepinit.init_schemes import SCHEMES, bias_variance

# Gauss-Hermite (probabilists') nodes and weights: E f(z), z ~ N(0,1) = sum w_i f(x_i) / sqrt(2 pi). An even
# count keeps a node off z = 0, where selu's and relu's derivatives jump (an odd count put its largest weight
# on the jump and overstated E selu'(z)^2 by 11%).
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(200)
_WEIGHTS = _WEIGHTS / math.sqrt(2 * math.pi)


def gauss_expect(fn: Callable[[np.ndarray], np.ndarray], q: float) -> float:
    """E fn(sqrt(q) z), z ~ N(0, 1), by 200-point Gauss-Hermite quadrature."""
    return float(np.dot(_WEIGHTS, fn(math.sqrt(max(q, 0.0)) * _NODES)))


def second_moment(activation: str, q: float) -> float:
    """V(q) = E phi(sqrt(q) z)^2: the activation's closed form where it has one (docs/theory.md table), else
    quadrature."""
    a = ACTIVATIONS[activation]
    closed = a.second_moment(q) if a.second_moment else None
    return closed if closed is not None else gauss_expect(lambda x: a.phi(x) ** 2, q)


def mean(activation: str, q: float) -> float:
    """E phi(sqrt(q) z): the post-activation mean (relu: sqrt(q / 2 pi))."""
    a = ACTIVATIONS[activation]
    closed = a.mean(q) if a.mean else None
    return closed if closed is not None else gauss_expect(a.phi, q)


def derivative_second_moment(activation: str, q: float) -> float:
    """E phi'(sqrt(q) z)^2, the per-layer backward factor besides the weights."""
    a = ACTIVATIONS[activation]
    closed = a.derivative_second_moment(q) if a.derivative_second_moment else None
    return closed if closed is not None else gauss_expect(lambda x: a.dphi(x) ** 2, q)


def fourth_moment_ratio(activation: str, q: float) -> float:
    """E phi^4 / (E phi^2)^2 at N(0, q): sets the finite-width spread of m_l / m_{l-1} (6 for relu, 3 linear)."""
    fn = ACTIVATIONS[activation].phi
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
    dphi = ACTIVATIONS[activation].dphi
    for layer in layers:
        mu1 = derivative_second_moment(activation, pred.q[layer])
        mu2 = gauss_expect(lambda x: dphi(x) ** 4, pred.q[layer])
        m1 *= pred.sigma_w2[layer] * mu1
        s2 += (0.0 if pred.orthogonal else 1.0) + mu2 / mu1**2 - 1
    return {"m1": m1, "s2": s2}


# --- depth scales and trainability (Poole et al. 2016; Schoenholz et al. 2017; docs/trainability.md) -----------
TRAINABLE_XI = 6  # Schoenholz et al.: with a fixed SGD budget a network of depth L trains where L < 6 xi_c
_Z1, _Z2 = np.meshgrid(_NODES, _NODES, indexing="ij")  # 2-D Gauss-Hermite: the outer product of the 1-D rule
_W2 = np.outer(_WEIGHTS, _WEIGHTS)


def pair_expect(fn: Callable[[np.ndarray], np.ndarray], q: float, c: float) -> float:
    """E fn(u1) fn(u2) with u1 = sqrt(q) z1, u2 = sqrt(q) (c z1 + sqrt(1 - c^2) z2): two inputs at correlation c."""
    r = math.sqrt(max(q, 0.0))
    c = min(max(c, -1.0), 1.0)
    u1, u2 = r * _Z1, r * (c * _Z1 + math.sqrt(1 - c * c) * _Z2)
    return float(np.sum(_W2 * fn(u1) * fn(u2)))


def correlation_step(activation: str, q: float, c: float, sigma_w2: float, sigma_b2: float) -> float:
    """The correlation map (docs/theory.md 6): c_{l+1} from c_l for two inputs whose pre-activations have second
    moment q. The next layer's q is sigma_w^2 V(q) + sigma_b^2, the same for both."""
    q_next = sigma_w2 * second_moment(activation, q) + sigma_b2
    if q_next <= 0:
        return 1.0
    return (sigma_w2 * pair_expect(ACTIVATIONS[activation].phi, q, c) + sigma_b2) / q_next


def fixed_point_q(activation: str, sigma_w2: float, sigma_b2: float) -> float:
    """q* = sigma_w^2 V(q*) + sigma_b^2, the length every input's q_l approaches; inf where it grows without bound
    (an unbounded activation above its critical sigma_w^2), nan where every q is a fixed point (relu at 2, linear
    at 1, no bias)."""
    k = ACTIVATIONS[activation].homogeneous
    if k is not None:
        slope = sigma_w2 * k
        if math.isclose(slope, 1.0, rel_tol=1e-12):
            return math.nan if sigma_b2 == 0 else math.inf
        return sigma_b2 / (1 - slope) if slope < 1 else math.inf
    q = 1.0
    for _ in range(5_000):  # the map contracts at rate e^(-1/xi_q)
        q_next = sigma_w2 * second_moment(activation, q) + sigma_b2
        if q_next > 1e12:
            return math.inf
        if abs(q_next - q) <= 1e-13 * max(q, 1e-300) or q_next < 1e-30:
            return q_next if q_next >= 1e-30 else 0.0
        q, q_prev = q_next, q
    # still moving: with no bias at the edge (tanh at sigma_w^2 = 1) q falls to 0 like 1/(2l), not exponentially
    return 0.0 if q < 1e-3 and q < q_prev else q


def _dV_dq(activation: str, q: float) -> float:
    """dV/dq = E[phi'^2 + phi phi''] at N(0, q) (Gaussian integration by parts), by a central difference."""
    h = 1e-4 * max(q, 1e-6)
    lo = max(q - h, 0.0)
    return (second_moment(activation, q + h) - second_moment(activation, lo)) / (q + h - lo)


def depth_scales(activation: str, sigma_w2: float, sigma_b2: float = 0.0) -> dict[str, Any]:
    """The mean-field depth scales of a deep MLP with W ~ N(0, sigma_w^2 / fan_in), b ~ N(0, sigma_b^2):

    q_star: the fixed point of the length map; chi_1 = sigma_w^2 E phi'(sqrt(q*) z)^2, the stability of c = 1
    (and the per-layer gradient factor); c_star: the correlation every pair of inputs approaches (1 in the
    ordered phase); chi_c = sigma_w^2 E phi'(u1) phi'(u2) at c*; xi_q = -1/ln(sigma_w^2 V'(q*)) and
    xi_c = -1/ln chi_c, the layers over which lengths and correlations forget the input; phase: ordered
    (chi_1 < 1), chaotic (> 1) or critical (= 1, within 1e-9, where xi_c is infinite); trainable_depth =
    6 xi_c. Where q grows without bound (relu above sigma_w^2 = 2, say) the signal and the gradients grow by
    chi_1 per layer and xi_c is 1/ln chi_1, the layers over which they grow by e. The degenerate relu and
    linear points (every q a fixed point) are critical with infinite scales."""
    q_star = fixed_point_q(activation, sigma_w2, sigma_b2)
    inf = math.inf
    if math.isnan(q_star):  # relu at 2, linear at 1, no bias: c -> 1 by a power law, not exponentially
        return {"q_star": inf, "chi_1": 1.0, "c_star": 1.0, "chi_c": 1.0, "xi_q": inf, "xi_c": inf,
                "phase": "critical", "trainable_depth": inf}  # fmt: skip
    q_eval = min(q_star, Q_UNBOUNDED)
    chi_1 = _chi_1(activation, sigma_w2, q_star)
    k = ACTIVATIONS[activation].homogeneous
    slope_q = sigma_w2 * (k if k is not None else _dV_dq(activation, q_eval))
    xi_q = _depth(slope_q)
    if math.isclose(chi_1, 1.0, rel_tol=1e-9, abs_tol=1e-9):
        phase, c_star, chi_c = "critical", 1.0, 1.0
    elif chi_1 < 1:
        phase, c_star, chi_c = "ordered", 1.0, chi_1
    elif math.isinf(q_star):
        phase, c_star, chi_c = "chaotic", 1.0, chi_1
    else:
        phase = "chaotic"
        c_star = _chaotic_fixed_point(activation, q_star, sigma_w2, sigma_b2)
        chi_c = sigma_w2 * pair_expect(ACTIVATIONS[activation].dphi, q_star, c_star)
    xi_c = _depth(chi_c)
    return {"q_star": q_star, "chi_1": chi_1, "c_star": c_star, "chi_c": chi_c, "xi_q": xi_q, "xi_c": xi_c,
            "phase": phase, "trainable_depth": TRAINABLE_XI * xi_c}  # fmt: skip


Q_UNBOUNDED = 1e8  # where q* is infinite, the slopes are taken at this q: their large-q limit


def _chi_1(activation: str, sigma_w2: float, q_star: float) -> float:
    """chi_1 = sigma_w^2 E phi'(sqrt(q*) z)^2, the stability of c = 1 and the gradients' per-layer factor."""
    return sigma_w2 * derivative_second_moment(activation, min(q_star, Q_UNBOUNDED))


def _depth(rate: float) -> float:
    """The depth scale of a per-layer factor: 1/|ln rate| (inf at 1): how many layers change a deviation by e."""
    # within 1e-9 of 1: a power law (tanh at the edge with no bias) that finite differences see as 1 - 1e-10
    return math.inf if rate <= 0 or math.isclose(rate, 1.0, rel_tol=1e-9) else 1 / abs(math.log(rate))


def _chaotic_fixed_point(activation: str, q_star: float, sigma_w2: float, sigma_b2: float) -> float:
    """c* < 1, the attracting fixed point of the correlation map in the chaotic phase, by bisection on
    g(c) = map(c) - c: g(0) >= 0 (the map of uncorrelated inputs is (sigma_w^2 (E phi)^2 + sigma_b^2) / q* >= 0)
    and g < 0 just below 1, where the map's slope chi_1 exceeds 1."""

    def g(c: float) -> float:
        return correlation_step(activation, q_star, c, sigma_w2, sigma_b2) - c

    lo, hi = 0.0, 1.0 - 1e-6  # closer to 1, quadrature's error at a kink (relu-like units) outweighs g
    if g(lo) <= 0:
        return 0.0  # odd activations with no bias: uncorrelated inputs stay uncorrelated
    if g(hi) >= 0:
        return 1.0  # so close to the edge that c* cannot be told from 1
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if g(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def edge_of_chaos(activation: str, sigma_b2: float = 0.0) -> float:
    """sigma_w^2 where chi_1 = 1 for bias variance sigma_b^2 (tanh: 1 at 0, 1.76095 at 0.05; relu 2; linear 1)."""
    k = ACTIVATIONS[activation].homogeneous
    if k is not None:
        return 1 / k

    def chi_1(sigma_w2: float) -> float:
        return _chi_1(activation, sigma_w2, fixed_point_q(activation, sigma_w2, sigma_b2)) - 1

    lo, hi = 1e-3, 1.0
    while chi_1(hi) < 0:
        lo, hi = hi, 2 * hi
        if hi > 1e4:
            return math.inf  # (sigmoid with a large bias: chi_1 stays below 1)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if chi_1(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def correlation_profile(
    activation: str, c_input: float, q: Sequence[float], sigma_w2: Sequence[float], sigma_b2: Sequence[float]
) -> list[float]:
    """c_l for layers 1..L from c_1 (the first layer's pre-activation correlation, set by the inputs'): each
    next layer through the correlation map at the predicted q_l (the mean over inputs)."""
    out = [c_input]
    for layer in range(1, len(q)):
        out.append(correlation_step(activation, q[layer - 1], out[-1], sigma_w2[layer], sigma_b2[layer]))
    return out


@dataclass
class Trainability:
    """The verdict on a run's init before its first step (summary.json's `theory`): the depth scales at its hidden
    layers' (sigma_w^2, sigma_b^2) (depth_scales' keys), its depth against them, and what the theory assumed."""

    sigma_w2: float
    sigma_b2: float
    activation: str
    depth: int
    q_star: float
    chi_1: float
    c_star: float
    chi_c: float
    xi_q: float
    xi_c: float
    phase: str
    trainable_depth: float
    depth_over_xi_c: float
    within: bool  # depth < 6 xi_c
    assumed: list[str]


def trainability(
    model, scheme: str, gain: float, std: float | None = None, bias_std: float | None = 0.0
) -> Trainability:
    """depth_scales at the (sigma_w^2, sigma_b^2) of an initialized `deepinit.model.MLP`'s hidden layers, with
    the network's depth against them and what was assumed."""
    linears = model.linears
    hidden = [lin for lin in linears[1:-1] if lin.in_features == lin.out_features] or [linears[0]]
    fan_in, fan_out = hidden[0].in_features, hidden[0].out_features
    assumed = [SCHEMES[scheme].assumed] if SCHEMES[scheme].assumed else []
    formula = scheme_sigma_w2(scheme, fan_in, fan_out, gain, std)
    if formula is None:
        sigma_w2 = float(np.mean([measured_sigma_w2(lin.weight)[0] for lin in hidden]))
    else:
        sigma_w2 = formula[0]
    first = linears[0]
    if first.in_features != first.out_features and len(linears) > 2:
        assumed.append(
            f"the {fan_in}x{fan_out} layers' scales; layer 1 ({first.in_features} -> {first.out_features}) only"
            " sets the inputs' q and c"
        )
    sigma_b2 = 0.0 if first.bias is None else bias_variance(bias_std, fan_in)
    scales = depth_scales(model.activation, sigma_w2, sigma_b2)
    depth = model.depth
    return Trainability(
        sigma_w2=sigma_w2, sigma_b2=sigma_b2, activation=model.activation, depth=depth, **scales,
        depth_over_xi_c=depth / scales["xi_c"], within=depth < scales["trainable_depth"], assumed=assumed,
    )  # fmt: skip


def verdict(t: Trainability) -> str:
    """The one line a run prints before its first step (docs/trainability.md):
    theory: sigma_w^2=2.5 sigma_b^2=0.05 tanh: chaotic (chi_1=1.134), xi_c=11.8, trains to about 6 xi_c = 71
    layers; depth 50 is within it"""
    head = f"theory: sigma_w^2={t.sigma_w2:.4g} sigma_b^2={t.sigma_b2:.4g} {t.activation}"
    where = "within it" if t.within else f"beyond it ({t.depth} layers = {t.depth_over_xi_c:.3g} xi_c)"
    if math.isinf(t.xi_c):
        reach = f"xi_c infinite: no depth limit from the theory; depth {t.depth} is within it"
    else:
        reach = (
            f"xi_c={t.xi_c:.3g}, trains to about 6 xi_c = {t.trainable_depth:.0f} layers; depth {t.depth} is {where}"
        )
    line = f"{head}: {t.phase} (chi_1={t.chi_1:.4g}), {reach}"
    return line + "".join(f"; assumed: {note}" for note in t.assumed)
