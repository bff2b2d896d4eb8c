"""The theory at step 0, set against what a run's layer statistics just measured (deepinit.observe.recorder): the
predicted depth profiles with their finite-width band, ln(measured / predicted), the correlation map from the batch's
own inputs, and, for the square hidden stack, the Jacobian's spectrum estimated beside its theory."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from deepinit.network.model import MLP
from deepinit.observe import stats
from deepinit.theory.depth_scales import correlation_profile
from deepinit.theory.profile import Prediction, isometry, predict_model


def jacobian_measured(model: MLP, first_activation: Tensor, isometry_max_depth: int) -> Tensor | None:
    """[m1, s^2] of the square hidden stack's Jacobian (layers 2..L-1: x_1 -> x_{L-1}) at 16 inputs of the batch
    (first_activation: their x_1), 16 Hutchinson probes each, or None outside 4 <= depth <= isometry_max_depth. To be
    taken before the first update: the prediction is of the initialization (one Adam step at depth 200 already
    moves the spread from 1.7 to 3)."""
    depth = model.depth
    if not 4 <= depth <= isometry_max_depth or not model.plain:  # the theory is the plain stack's
        return None
    # the spread estimate m2 / m1^2 - 1 is noisy when s^2 is large, and this runs once
    pairs = [(model.linears[i], model.activations[i]) for i in range(1, depth - 1)]
    return stats.jacobian_spectrum(pairs, first_activation[:16])


def step0_overlay(
    model: MLP,
    x: Tensor,
    found: dict[str, dict[str, Tensor]],
    inputs: dict[str, Any],
    jacobian: Tensor | None,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Tensor]], str]:
    """For the model's step-0 batch x and what was measured there (found: group -> quantity -> per-layer values;
    jacobian: jacobian_measured's [m1, s^2], or None), with the init as theory.predict_model takes it (inputs): the
    curves the figures draw, the `theory` and `isometry` groups to record, and where sigma_w^2 came from."""
    input_sqr = x.flatten(1).double().square().mean().item()
    pred, note = predict_model(model, input_sqr=input_sqr, **inputs)
    q, m = np.array(pred.q), np.array(pred.m)
    measured_q = found["preactivations"]["sqr"].double().cpu().numpy()
    curves = {
        "preactivations_sqr": q,
        "activations_sqr": m,
        "log_sd_preactivations": np.array(pred.q_log_sd),
        "log_sd_activations": np.array(pred.m_log_sd),
        "log_ratio_preactivations_sqr": np.log(measured_q / q),
    }
    if "corr" in found["preactivations"] and model.norm in ("none", "layernorm") and not model.blocks:
        curves["preactivations_corr"] = _correlations(model, x, pred)  # no prediction for batchnorm's or the stream's
    if "gradients" in found:  # anchored at a measured gradient: the logits' (batchnorm: the last hidden layer's)
        anchor = found["gradients"]["sqr"][pred.grad_anchor].item()
        curves["gradients_sqr"] = np.array(pred.grad_sqr) * anchor
    groups = {"theory": {k: torch.as_tensor(v, dtype=torch.float64) for k, v in curves.items()}}
    if jacobian is not None:
        m1, s2 = jacobian.tolist()
        expected = isometry(model.activation, pred, range(1, model.depth - 1))
        values = [m1, s2, expected["m1"], expected["s2"]]
        names = ["mean_sq_singular", "spread", "theory_mean_sq_singular", "theory_spread"]
        groups["isometry"] = {k: torch.tensor([v]) for k, v in zip(names, values, strict=True)}
    return curves, groups, note


def _correlations(model: MLP, x: Tensor, pred: Prediction) -> np.ndarray:
    """c_l of the correlation map, iterated from the inputs' measured correlation: layer 1's expectation pair by
    pair (q_ab = sigma_w^2 x_a.x_b / fan_in + sigma_b^2), then each layer through the map at the predicted q_l (the
    mean over inputs)."""
    x = x.flatten(1).double()
    sigma_b2 = pred.sigma_b2
    gram = pred.sigma_w2[0] * (x @ x.T) / model.linears[0].in_features + sigma_b2[0]
    scale = gram.diagonal().sqrt()
    c_1 = stats.pair_mean(gram / (scale[:, None] * scale[None, :])).item()
    # each layer's map at its activation's input q: q_l, or the unit q layernorm gives (the last entry is unused)
    return np.array(correlation_profile(model.activation, c_1, [*pred.q_act, math.nan], pred.sigma_w2, sigma_b2))
