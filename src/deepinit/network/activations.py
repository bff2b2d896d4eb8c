"""The activation functions of the study: one `Activation` record each, everything the study knows of it, in one
registry, ACTIVATIONS. A new activation is one record here.

The model builds its modules from it, the init schemes take its gain, the layer statistics its health rule (dead
or saturated units), and the theory its phi and phi' (for quadrature), its closed-form moments where they exist
and whether it is positively homogeneous (docs/theory.md, the table of V(q) = E phi(sqrt(q) z)^2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Array = Callable[[np.ndarray], np.ndarray]
Moment = Callable[[float], float | None]  # a closed form at q, or None where it does not hold (falls to quadrature)

LEAKY_SLOPE = 0.01
SELU_ALPHA, SELU_LAMBDA = 1.6732632423543772, 1.0507009873554805


@dataclass(frozen=True)
class Activation:
    """One activation, in one place.

    module: builds a fresh nn.Module; phi, dphi: the function and its derivative on numpy arrays (the theory's
    quadrature); gain: torch's recommended init gain; dead: relu-like, a unit is dead when its pre-activation is
    <= 0 on a whole batch; saturation: (centre, half-range) of a bounded output, a unit saturated beyond 0.97 of
    it; homogeneous: k where V(q) = k q and E phi'^2 = k for every q (positively homogeneous units), else None;
    second_moment, mean, derivative_second_moment: closed forms of E phi^2, E phi and E phi'^2 at N(0, q) where
    they exist (None: quadrature)."""

    module: Callable[[], nn.Module]
    phi: Array
    dphi: Array
    gain: float
    dead: bool = False
    saturation: tuple[float, float] | None = None
    homogeneous: float | None = None
    second_moment: Moment | None = None
    mean: Moment | None = None
    derivative_second_moment: Moment | None = None


def _autograd(fn: Callable[[torch.Tensor], torch.Tensor]) -> Array:
    """phi' of a torch function, by autograd, on numpy arrays."""

    def d(x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(x).requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xt).sum(), xt)
        return g.numpy()

    return d


def _on_numpy(fn: Callable[[torch.Tensor], torch.Tensor]) -> Array:
    return lambda x: fn(torch.from_numpy(x)).numpy()


def _std_normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _gelu_second_moment(q: float) -> float:
    return q * (0.25 + math.asin(q / (1 + q)) / (2 * math.pi) + q / (math.pi * (1 + q) * math.sqrt(1 + 2 * q)))


def _selu_second_moment(q: float) -> float | None:
    if q >= 100:  # exp(2q) overflows beyond; quadrature is exact enough there
        return None
    r = math.sqrt(q)
    tail = math.exp(2 * q) * _std_normal_cdf(-2 * r) - 2 * math.exp(q / 2) * _std_normal_cdf(-r) + 0.5
    return SELU_LAMBDA**2 * (q / 2 + SELU_ALPHA**2 * tail)


def _selu_derivative_second_moment(q: float) -> float | None:
    if q >= 100:  # its derivative jumps at 0, where quadrature converges slowly; closed form up to exp's range
        return None
    return SELU_LAMBDA**2 * (0.5 + SELU_ALPHA**2 * math.exp(2 * q) * _std_normal_cdf(-2 * math.sqrt(q)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _homogeneous(k: float) -> dict:
    """The closed forms of a positively homogeneous unit: V(q) = k q, E phi'^2 = k."""
    return {"homogeneous": k, "second_moment": lambda q: k * q, "derivative_second_moment": lambda q: k}


_LEAKY_K = (1 + LEAKY_SLOPE**2) / 2

ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(
        nn.ReLU, lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float), nn.init.calculate_gain("relu"),
        dead=True, mean=lambda q: math.sqrt(q / (2 * math.pi)), **_homogeneous(0.5),
    ),
    "tanh": Activation(
        nn.Tanh, np.tanh, lambda x: 1.0 - np.tanh(x) ** 2, nn.init.calculate_gain("tanh"), saturation=(0.0, 1.0)
    ),
    "linear": Activation(
        nn.Identity, lambda x: x, np.ones_like, nn.init.calculate_gain("linear"), mean=lambda q: 0.0,
        **_homogeneous(1.0),
    ),
    "leaky_relu": Activation(
        lambda: nn.LeakyReLU(negative_slope=LEAKY_SLOPE),
        lambda x: np.where(x > 0, x, LEAKY_SLOPE * x),
        lambda x: np.where(x > 0, 1.0, LEAKY_SLOPE),
        nn.init.calculate_gain("leaky_relu", LEAKY_SLOPE),
        dead=True,
        **_homogeneous(_LEAKY_K),
    ),
    "gelu": Activation(  # torch lists no gain for GELU: ReLU's
        nn.GELU, _on_numpy(torch.nn.functional.gelu), _autograd(torch.nn.functional.gelu),
        nn.init.calculate_gain("relu"), dead=True, second_moment=_gelu_second_moment,
    ),
    "selu": Activation(
        nn.SELU, _on_numpy(torch.nn.functional.selu), _autograd(torch.nn.functional.selu),
        nn.init.calculate_gain("selu"), dead=True, second_moment=_selu_second_moment,
        derivative_second_moment=_selu_derivative_second_moment,
    ),
    "sigmoid": Activation(
        nn.Sigmoid, _sigmoid, lambda x: (s := _sigmoid(x)) * (1.0 - s), nn.init.calculate_gain("sigmoid"),
        saturation=(0.5, 0.5),
    ),
}  # fmt: skip


def activation(name: str) -> Activation:
    """The record of `name`; ValueError naming the choices for an unknown one."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]
