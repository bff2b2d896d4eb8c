"""Expectations over a Gaussian pre-activation h = sqrt(q) z, z ~ N(0, 1), that every prediction is built from:
V(q) = E phi(h)^2, E phi(h), E phi'(h)^2, the fourth-moment ratio, and pairs of inputs at correlation c. Closed forms
come from the activation's record (deepinit.network.activations), quadrature does the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from deepinit.network.activations import ACTIVATIONS

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


_Z1, _Z2 = np.meshgrid(_NODES, _NODES, indexing="ij")  # 2-D Gauss-Hermite: the outer product of the 1-D rule
_W2 = np.outer(_WEIGHTS, _WEIGHTS)


def pair_expect(fn: Callable[[np.ndarray], np.ndarray], q: float, c: float) -> float:
    """E fn(u1) fn(u2) with u1 = sqrt(q) z1, u2 = sqrt(q) (c z1 + sqrt(1 - c^2) z2): two inputs at correlation c."""
    r = math.sqrt(max(q, 0.0))
    c = min(max(c, -1.0), 1.0)
    u1, u2 = r * _Z1, r * (c * _Z1 + math.sqrt(1 - c * c) * _Z2)
    return float(np.sum(_W2 * fn(u1) * fn(u2)))


def derivative_spread(activation: str, q: float) -> float:
    """v_D = mu2 / mu1^2 - 1, mu_k = E phi'(sqrt(q) z)^(2k): the spread of phi'^2 that each layer adds to the
    Jacobian's spectrum (docs/theory.md 4: 0 for linear, 1 for relu, tanh 0.0133 at q = 0.05)."""
    mu1 = derivative_second_moment(activation, q)
    mu2 = gauss_expect(lambda x: ACTIVATIONS[activation].dphi(x) ** 4, q)
    return mu2 / mu1**2 - 1
