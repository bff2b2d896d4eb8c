"""A run's verdict before its first step: the depth scales at its init's (sigma_w^2, sigma_b^2), its depth against 6
xi_c, what the theory assumed, and the one line the run prints (docs/trainability.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deepinit.init_schemes import SCHEMES, bias_variance
from deepinit.theory.depth_scales import depth_scales
from deepinit.theory.profile import measured_sigma_w2, scheme_sigma_w2


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
