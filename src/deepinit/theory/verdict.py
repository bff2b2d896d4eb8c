"""A run's verdict before its first step: the depth scales at its init's (sigma_w^2, sigma_b^2), its depth against 6
xi_c, what the theory assumed, and the one line the run prints (docs/trainability.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deepinit.network.init_schemes import SCHEMES, bias_variance
from deepinit.theory.depth_scales import Q_UNBOUNDED, depth_scales
from deepinit.theory.moments import derivative_spread
from deepinit.theory.profile import Prediction, isometry, measured_sigma_w2, predict_model, scheme_sigma_w2

# The per-layer spread below which a network counts as near-isometric: tanh at q* = 0.05 adds 0.013 a layer,
# at q* = 0.25 already 0.14; i.i.d. weights add 1 and relu 1 whatever the weights, so neither can be isometric.
ISOMETRIC_RATE = 0.05


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
    # the Jacobian of the square stack (layers 2..L-1) at step 0 (docs/theory.md 4): mean squared singular value, the
    # spread s^2 = var / mean^2 of the squared singular values, layer by layer from the input's q (MNIST's, 1), and
    # the spread added per layer at the fixed point q*; isometric: that rate is below ISOMETRIC_RATE
    jacobian_m1: float
    jacobian_spread: float
    spread_per_layer: float
    isometric: bool
    assumed: list[str]
    # beyond the plain MLP (deepinit.network.model): what the step-0 theory expects of the architecture, in words (None:
    # plain)
    architecture: str = "plain"
    expectation: str | None = None
    # as width grows (deepinit.theory.width, docs/theory.md 9): the regime of the run's parametrization and optimizer
    # at its fixed learning rate, and the verdict's sentence on it (None: a run from before it was said)
    regime: str | None = None
    width: str | None = None


def trainability(
    model, scheme: str, gain: float, std: float | None = None, bias_std: float | None = 0.0, readout_var: float = 1.0
) -> Trainability:
    """depth_scales at the (sigma_w^2, sigma_b^2) of an initialized `deepinit.network.model.MLP`'s hidden layers, with
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
    # the step-0 profile from a unit input (normalized MNIST: E x^2 = 1), the stack the recorder measures
    pred, _ = predict_model(model, scheme, gain, std, input_sqr=1.0, bias_std=bias_std, readout_var=readout_var)
    no_theory = {"m1": math.nan, "s2": math.nan}  # the Jacobian's theory is the plain stack's
    spectrum = isometry(model.activation, pred, range(1, depth - 1)) if model.plain else no_theory
    q_star = scales["q_star"] if math.isfinite(scales["q_star"]) else Q_UNBOUNDED
    rate = (0.0 if SCHEMES[scheme].orthogonal else 1.0) + derivative_spread(model.activation, q_star)
    return Trainability(
        sigma_w2=sigma_w2, sigma_b2=sigma_b2, activation=model.activation, depth=depth, **scales,
        depth_over_xi_c=depth / scales["xi_c"], within=depth < scales["trainable_depth"],
        jacobian_m1=spectrum["m1"], jacobian_spread=spectrum["s2"], spread_per_layer=rate,
        isometric=model.plain and rate < ISOMETRIC_RATE, assumed=assumed, architecture=model.architecture,
        expectation=None if model.plain else expectation(model, pred),
    )  # fmt: skip


def expectation(model, pred: Prediction) -> str:
    """What the step-0 theory expects of a normalized or residual network (docs/theory.md 7): how its stream's q
    grows or its normalization resets it, and how its gradients grow toward the input."""
    depth, parts = model.depth, []
    if model.blocks:
        first, last = model.blocks[0], model.blocks[-1]
        grows = pred.q[last] / pred.q[first - 1]
        parts.append(f"the stream's q grows {grows:.3g}x over the {len(model.blocks)} blocks")
    if model.norm != "none":
        parts.append(f"{model.norm} resets every activation's input to q = 1")
    anchor = pred.grad_anchor
    ratio = pred.grad_sqr[0] / pred.grad_sqr[anchor]
    if not math.isfinite(ratio):
        parts.append(f"no prediction here for the gradients of {model.activation} with {model.norm}")
    else:
        where = "the logits" if anchor == depth - 1 else f"layer {anchor + 1}"
        parts.append(f"E g^2 at layer 1 / at {where}: {ratio:.3g}")
        if model.norm == "batchnorm":
            parts[-1] += f" (x {pred.chi[0]:.3g} a layer whatever the init: batchnorm's gradient explosion)"
    return "; ".join(parts)


def conditioning(t: Trainability) -> str:
    """How well conditioned the network is at step 0, in words: near-isometric, or a spread that grows with the
    depth (Pennington, Schoenholz & Ganguli 2017: learning then slows with depth)."""
    if t.depth < 4:
        return "Jacobian: no square stack to speak of"
    head = f"Jacobian of layers 2-{t.depth - 1}: mean squared singular value {t.jacobian_m1:.3g}, spread"
    if t.isometric:
        rate = f"{t.spread_per_layer:.2g} per layer at q*"
        return f"{head} {t.jacobian_spread:.3g} at depth {t.depth}, {rate}: near-isometric"
    about = "about the depth" if t.spread_per_layer >= 0.5 else f"{t.spread_per_layer:.2g} x the depth"
    return f"{head} {t.jacobian_spread:.3g}, {about}: expect training to slow with depth"


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
    assumed = "".join(f"; assumed: {note}" for note in t.assumed)
    width = f"; {t.width}" if t.width else ""
    if t.expectation is not None:  # the depth scales and the Jacobian's theory are the plain MLP's
        return f"{head}, {t.architecture}: {t.expectation}{width}{assumed}"
    return f"{head}: {t.phase} (chi_1={t.chi_1:.4g}), {reach}; {conditioning(t)}{width}{assumed}"
