"""Depth scales (Poole et al. 2016; Schoenholz et al. 2017; docs/theory.md 6, docs/trainability.md): the fixed point
of the length map, the correlation map and its fixed point, chi_1, xi_q and xi_c, the phase, and the edge of chaos."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from deepinit.network.activations import ACTIVATIONS
from deepinit.theory.moments import derivative_second_moment, pair_expect, second_moment

TRAINABLE_XI = 6  # Schoenholz et al.: with a fixed SGD budget a network of depth L trains where L < 6 xi_c


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
