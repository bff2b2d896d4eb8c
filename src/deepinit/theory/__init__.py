"""What the variance theory predicts for a deep MLP at initialization (see docs/theory.md).

Plain functions, no Lightning. Notation: q_l = E h_l^2 (pre-activation second moment), m_l = E phi(h_l)^2
(post-activation second moment), sigma_w^2 = fan_in * Var(W), sigma_b^2 = Var(b). Forward:
q_l = sigma_w,l^2 * m_{l-1} + sigma_b^2 with m_0 the input's second moment; this holds in expectation over
the weights for ANY input (zero-mean weights), so MNIST's correlated 784 pixels are fine for layer 1.
Backward: E g_l^2 = fan_out_{l+1} Var(W_{l+1}) * E phi'(h_l)^2 * E g_{l+1}^2, anchored at the measured
gradient of the logits (the theory does not predict the loss's own gradient).

- moments.py: expectations over a Gaussian pre-activation (V(q), E phi, E phi'^2, pairs at correlation c);
- profile.py: the layer-by-layer prediction with its finite-width band, sigma_w^2 per scheme, the Jacobian spectrum;
- depth_scales.py: fixed points, the correlation map, chi_1, xi_q, xi_c, the phase, the edge of chaos;
- verdict.py: a run's verdict before its first step (Trainability: depth scales and the Jacobian's conditioning)
  and the line it prints;
- width.py: how each layer's output and its change after a step scale with width, per parametrization and
  optimizer, and the regime (feature learning, kernel, unstable) that follows.
"""

from deepinit.theory.depth_scales import (
    TRAINABLE_XI,
    correlation_profile,
    correlation_step,
    depth_scales,
    edge_of_chaos,
    fixed_point_q,
)
from deepinit.theory.moments import (
    derivative_second_moment,
    derivative_spread,
    fourth_moment_ratio,
    gauss_expect,
    mean,
    pair_expect,
    second_moment,
)
from deepinit.theory.profile import Prediction, isometry, measured_sigma_w2, predict, predict_model, scheme_sigma_w2
from deepinit.theory.verdict import ISOMETRIC_RATE, Trainability, conditioning, trainability, verdict
from deepinit.theory.width import WidthScaling, width_line, width_scaling

__all__ = [
    "ISOMETRIC_RATE", "TRAINABLE_XI", "Prediction", "Trainability", "conditioning", "correlation_profile",
    "correlation_step", "depth_scales", "derivative_second_moment", "derivative_spread", "edge_of_chaos",
    "fixed_point_q", "fourth_moment_ratio", "gauss_expect", "isometry", "mean", "measured_sigma_w2", "pair_expect",
    "predict", "predict_model", "scheme_sigma_w2", "second_moment", "trainability", "verdict", "WidthScaling",
    "width_line", "width_scaling",
]  # fmt: skip
