"""The theory module against docs/theory.md's numbers, Monte Carlo (float64, fixed seeds) and real MNIST runs."""

import math

import numpy as np
import pytest
import torch

from conftest import compose_cfg, init_of, read_csv
from deepinit import theory
from deepinit.network.activations import ACTIVATIONS
from deepinit.network.init_schemes import initialize
from deepinit.network.model import MLP
from deepinit.observe import stats
from deepinit.run.train import run


@pytest.mark.parametrize(
    "activation, q, expected",
    [("tanh", 1.0, 0.394294), ("tanh", 0.25, 0.173516), ("tanh", 4.0, 0.635261), ("sigmoid", 1.0, 0.293379)],
)
def test_second_moments_match_theory_md(activation, q, expected):
    assert theory.second_moment(activation, q) == pytest.approx(expected, abs=2e-6)


# selu: the reference notes once gave 1.071615; the closed form lambda^2 (1/2 + alpha^2 e^2 Phi(-2)) and a trapezoid
# integral split at the derivative's jump both give 1.0715750 (the doc's figure is off by 4e-5, Monte Carlo-sized).
@pytest.mark.parametrize(
    "activation, expected", [("tanh", 0.464403), ("sigmoid", 0.044836), ("gelu", 0.455851), ("selu", 1.071575)]
)
def test_derivative_moments_match_theory_md(activation, expected):
    assert theory.derivative_second_moment(activation, 1.0) == pytest.approx(expected, abs=2e-6)


@pytest.mark.parametrize("activation", ["gelu", "selu", "relu", "leaky_relu", "linear"])
@pytest.mark.parametrize("q", [0.1, 1.0, 3.0])
def test_closed_forms_agree_with_quadrature(activation, q):
    fn = ACTIVATIONS[activation].phi
    # selu itself has a kink at 0 (slopes lambda*alpha and lambda), where quadrature converges only to ~1e-5
    rel = 1e-4 if activation == "selu" else 1e-9
    assert theory.second_moment(activation, q) == pytest.approx(theory.gauss_expect(lambda x: fn(x) ** 2, q), rel=rel)


def test_tanh_fixed_point_with_gain_5_3():
    # docs/theory.md 2: sigma_w^2 = 25/9 -> q* = 1.1785, m* = 0.42425, chi_1 = 1.2098
    q = 1.0
    for _ in range(500):
        q = 25 / 9 * theory.second_moment("tanh", q)
    assert q == pytest.approx(1.1785, abs=1e-4)
    assert theory.second_moment("tanh", q) == pytest.approx(0.42425, abs=1e-5)
    assert 25 / 9 * theory.derivative_second_moment("tanh", q) == pytest.approx(1.2098, abs=1e-4)


def test_tanh_lecun_decays_like_one_over_2l():
    depth = 2000
    pred = theory.predict("tanh", [(1.0, 1.0)] * depth, [(256, 256)] * depth)
    # docs/theory.md 2: 1/m_L ~ 2L - (5/6) ln L + 1.11
    assert 1 / pred.m[-1] == pytest.approx(2 * (depth - 1) - 5 / 6 * math.log(depth - 1) + 1.11, rel=2e-3)


def test_relu_halves_under_xavier_and_holds_under_kaiming():
    shapes = [(512, 512)] * 50
    xavier = theory.predict("relu", [(1.0, 1.0)] * 50, shapes)
    kaiming = theory.predict("relu", [(2.0, 2.0)] * 50, shapes)
    assert xavier.m[-1] == pytest.approx(2.0**-49, rel=1e-12)  # m_49 = (1/2)^49 with m_0 = 1
    assert kaiming.q == pytest.approx([2.0] * 50) and kaiming.chi == pytest.approx([1.0] * 49)
    # docs/theory.md 5: He + relu, n = 512, 50 layers: ln(m_50/m_0) has sd 0.70 (5 * 50 / 512 = 0.488 = 0.70^2)
    assert kaiming.m_log_sd[-1] ** 2 == pytest.approx(5 * 49 / 512, rel=1e-6)


def test_vanishing_and_exploding_signals_keep_their_finite_width_band():
    """0.01 / N(0,1) weights at depth 100: q reaches ~1e-190 / 1e+250, whose squares under/overflow."""
    shapes = [(256, 256)] * 100
    small = theory.predict("relu", [(1e-4 * 256,) * 2] * 100, shapes)
    assert 0 < small.m[-1] < 1e-180
    assert small.m_log_sd[-1] ** 2 == pytest.approx(5 * 99 / 256, rel=1e-6)  # kurtosis 6 at any scale
    assert theory.fourth_moment_ratio("tanh", 1e-200) == pytest.approx(3.0, rel=1e-6)  # linear regime
    normal = theory.predict("relu", [(256.0, 256.0)] * 100, shapes)  # N(0,1): sigma_w^2 = fan_in
    assert normal.m[-1] > 1e200 and normal.m_log_sd[-1] ** 2 == pytest.approx(5 * 99 / 256, rel=1e-6)
    assert theory.fourth_moment_ratio("tanh", 1e200) == pytest.approx(1.0, rel=1e-6)  # a sign function


def monte_carlo_q(activation, scheme, depth=12, width=256, draws=12, seed=0):
    """Per-layer E h_l^2 over `draws` fresh networks (float64) on one N(0,1) batch; returns [draws, depth]."""
    torch.manual_seed(seed)
    x = torch.randn(32, 784, dtype=torch.float64)
    rows = []
    for _ in range(draws):
        model = MLP(depth=depth, width=width, activation=activation).double()
        gain = 1.0 if scheme in ("lecun", "xavier") else ACTIVATIONS[activation].gain
        initialize(model, init_of(scheme, gain=gain))
        with torch.no_grad():
            h, row = x, []
            for linear, act in model.layers():
                h = linear(h)
                row.append(h.square().mean().item())
                h = act(h) if act is not None else h
        rows.append(row)
    return np.array(rows), model, gain


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("scheme", ["kaiming", "lecun", "xavier", "orthogonal"])
def test_forward_prediction_against_monte_carlo(activation, scheme):
    draws = 12
    measured, model, gain = monte_carlo_q(activation, scheme, draws=draws)
    pred, _ = theory.predict_model(model, scheme, gain, input_sqr=1.0)
    ln_ratio = np.log(measured.mean(0) / np.array(pred.q))
    # The mean over draws is unbiased; its log scatters by about (single-draw sd) / sqrt(draws). Four of those,
    # plus a floor for the one shared input batch (32 samples: its m_0 scatters by sqrt(2 / (32 * 784))).
    tol = 4 * np.array(pred.q_log_sd) / math.sqrt(draws) + 4 * math.sqrt(2 / (32 * 784))
    assert np.all(np.abs(ln_ratio) < tol), (ln_ratio.round(3), tol.round(3))


@pytest.mark.parametrize("activation", ["relu", "tanh", "linear"])
def test_backward_prediction_against_monte_carlo(activation):
    torch.manual_seed(1)
    depth, draws = 10, 12
    x = torch.randn(64, 784, dtype=torch.float64)
    ratios = []
    for _ in range(draws):
        model = MLP(depth=depth, width=256, activation=activation).double()
        initialize(model, init_of("kaiming"))
        outs = []
        h = x
        for linear, act in model.layers():
            h = linear(h)
            h.retain_grad()
            outs.append(h)
            h = act(h) if act is not None else h
        h.square().sum().backward()  # any loss: the prediction is relative to the logits' gradient
        g = [o.grad.square().mean().item() for o in outs]
        ratios.append(np.array(g) / g[-1])
    pred, _ = theory.predict_model(model, "kaiming", ACTIVATIONS[activation].gain, input_sqr=1.0)
    ln_ratio = np.log(np.mean(ratios, axis=0) / np.array(pred.grad_sqr))
    # Backward products fluctuate like the forward ones: allow 4 forward-spread standard errors, depth-matched.
    tol = 4 * np.array(pred.q_log_sd[::-1]) / math.sqrt(draws) + 0.05
    assert np.all(np.abs(ln_ratio) < tol), (ln_ratio.round(3), tol.round(3))


@pytest.mark.parametrize(
    "activation, scheme, per_layer",
    [("relu", "kaiming", 5), pytest.param("relu", "orthogonal", 3, marks=pytest.mark.slow), ("linear", "kaiming", 2)],
)
def test_finite_width_spread_against_monte_carlo(activation, scheme, per_layer):
    # docs/theory.md 1f: Var ln(m_L/m_0) ~ per_layer * L / n for square layers, one input, fresh weights.
    n, layers, draws = 64, 40, 300
    torch.manual_seed(2)
    logs = []
    for _ in range(draws):
        x = torch.randn(1, n, dtype=torch.float64)
        m0 = x.square().mean()
        for _ in range(layers):
            w = torch.empty(n, n, dtype=torch.float64)
            gain = math.sqrt(2) if activation == "relu" else 1.0
            if scheme == "orthogonal":
                torch.nn.init.orthogonal_(w, gain=gain)
            else:
                torch.nn.init.normal_(w, std=gain / math.sqrt(n))
            x = x @ w.T
            x = torch.relu(x) if activation == "relu" else x
        logs.append(math.log(x.square().mean() / m0))
    shapes = [(n, n)] * (layers + 1)
    sigma = 2.0 if activation == "relu" else 1.0
    pred = theory.predict(activation, [(sigma, sigma)] * (layers + 1), shapes, orthogonal=scheme == "orthogonal")
    predicted_var = pred.m_log_sd[layers - 1] ** 2
    assert predicted_var == pytest.approx(per_layer * layers / n, rel=0.05)
    measured_var = np.var(logs, ddof=1)
    # sampling sd of a variance estimate ~ var * sqrt(2 / (draws - 1)) (log-normal tails: allow 4 of them)
    assert abs(measured_var - predicted_var) < 4 * predicted_var * math.sqrt(2 / (draws - 1)), measured_var
    assert np.mean(logs) == pytest.approx(-predicted_var / 2, abs=4 * math.sqrt(predicted_var / draws))


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [["init=kaiming"], ["init=xavier"], ["init=lecun", "activation=tanh"], ["init=orthogonal", "activation=linear"]],
)
def test_step0_profile_on_real_mnist_lies_within_the_predicted_band(tmp_path, mnist_root, overrides):
    cfg = compose_cfg(
        *overrides,
        "depth=50",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=0",
        "trainer.enable_checkpointing=false",
        data_root=mnist_root,
    )
    assert run(cfg, tmp_path).status == "ok"
    table = read_csv(tmp_path)
    log_ratio = table[(0, "theory", "log_ratio_preactivations_sqr")]
    sd = table[(0, "theory", "log_sd_preactivations")]
    assert sorted(log_ratio) == list(range(1, 51))
    for layer in log_ratio:
        # log-normal: the median sits sd^2/2 below the mean; the band is +-2 sd around it (as drawn)
        assert abs(log_ratio[layer] + sd[layer] ** 2 / 2) <= 2 * sd[layer], (layer, log_ratio[layer], sd[layer])


def exact_spectrum(pairs, rows):
    """Exact mean and normalized spread of eig(J J^T) per row (jacrev + eigvalsh), averaged over rows."""

    def stack(h):
        for linear, act in pairs:
            h = act(linear(h))
        return h

    m1s, s2s = [], []
    for row in rows:
        jac = torch.func.jacrev(stack)(row)
        lam = torch.linalg.eigvalsh(jac @ jac.T)
        m1s.append(lam.mean().item())
        s2s.append((lam.var(unbiased=False) / lam.mean() ** 2).item())
    return np.mean(m1s), np.mean(s2s)


@pytest.mark.parametrize(
    "activation, scheme",
    [("linear", "orthogonal"), ("linear", "kaiming"), ("relu", "kaiming"), ("tanh", "orthogonal"), ("tanh", "xavier")],
)
def test_isometry_theory_and_hutchinson_estimate_against_exact_spectra(activation, scheme):
    torch.manual_seed(3)
    depth, width = 12, 128
    model = MLP(depth=depth, width=width, activation=activation).double()
    gain = 1.0 if scheme == "xavier" else ACTIVATIONS[activation].gain
    initialize(model, init_of(scheme, gain=gain))
    x1 = model.activations[0](model.linears[0](torch.randn(16, 784, dtype=torch.float64)))
    hidden = range(1, depth - 1)
    pairs = [(model.linears[i], model.activations[i]) for i in hidden]
    m1, s2 = exact_spectrum(pairs, x1)
    pred, _ = theory.predict_model(model, scheme, gain, input_sqr=1.0)
    expected = theory.isometry(activation, pred, hidden)
    estimate = stats.jacobian_spectrum(pairs, x1, probes=64).tolist()
    # Theory vs exact: one network draw, so m1 carries the finite-width log spread of the forward pass.
    assert math.log(m1 / expected["m1"]) == pytest.approx(0, abs=3 * pred.m_log_sd[-1] + 0.02)
    # s^2 = sum (v_W + v_D) is the infinite-width (free probability) value; at n = 128 and 10 layers the exact
    # spread is up to ~10% lower (Gaussian linear: 9.08 against 10).
    assert s2 == pytest.approx(expected["s2"], rel=0.15, abs=0.02)
    # Hutchinson vs exact: relative error ~ sqrt(2 (1 + s^2) / (n k)) per row, averaged over 16 rows.
    rel = 4 * math.sqrt(2 * (1 + s2) / (width * 64 * 16))
    assert estimate[0] == pytest.approx(m1, rel=rel)
    assert estimate[1] == pytest.approx(s2, rel=0.15, abs=0.02)


# The verdict's conditioning: tanh near q* = 0 (sigma_w^2 1.05, sigma_b^2 2e-5: q* ~ 0.0004) and far from it
# (sigma_w^2 2.5, sigma_b^2 0.05: q* ~ 1.3), orthogonal against i.i.d. weights; relu, which no weights make isometric.
@pytest.mark.parametrize(
    "activation, scheme, options, isometric",
    [
        ("tanh", "orthogonal", {"gain": 1.05**0.5, "bias_std": 2e-5**0.5}, True),
        ("tanh", "gaussian", {"sigma_w2": 1.05, "sigma_b2": 2e-5}, False),
        ("tanh", "orthogonal", {"gain": 2.5**0.5, "bias_std": 0.05**0.5}, False),
        ("tanh", "gaussian", {"sigma_w2": 2.5, "sigma_b2": 0.05}, False),
        ("relu", "orthogonal", {}, False),
        ("relu", "kaiming", {}, False),
    ],
)
def test_the_verdicts_jacobian_spread_against_exact_spectra(activation, scheme, options, isometric):
    # L << n, where the infinite-width (free probability) spread holds: 24 square layers of width 256
    torch.manual_seed(5)
    depth, width = 26, 256
    model = MLP(depth=depth, width=width, activation=activation).double()
    init = init_of(scheme, **options)
    used = initialize(model, init)
    x1 = model.activations[0](model.linears[0](torch.randn(8, 784, dtype=torch.float64)))
    m1, s2 = exact_spectrum([(model.linears[i], model.activations[i]) for i in range(1, depth - 1)], x1)
    t = theory.trainability(model, **init.theory_inputs(used))
    assert t.isometric is isometric and (t.spread_per_layer < theory.ISOMETRIC_RATE) is isometric
    assert s2 == pytest.approx(t.jacobian_spread, rel=0.15, abs=0.03)
    assert math.log(m1 / t.jacobian_m1) == pytest.approx(0, abs=0.3)
    if isometric:  # near-isometric: the whole stack's spread stays far below one per layer
        assert s2 < 0.1 * (depth - 2)
    statement = theory.conditioning(t)
    assert statement.endswith("near-isometric" if isometric else "expect training to slow with depth"), statement


@pytest.mark.parametrize(
    "activation, q, expected",
    [("linear", 0.7, 0.0), ("relu", 0.3, 1.0), ("relu", 5.0, 1.0), ("tanh", 0.05, None), ("tanh", 1.3, None)],
)
def test_derivative_spread_against_monte_carlo(activation, q, expected):
    z = np.random.default_rng(0).standard_normal(4_000_000)
    d2 = ACTIVATIONS[activation].dphi(np.sqrt(q) * z) ** 2
    sampled = d2.var() / d2.mean() ** 2 if d2.mean() > 0 else 0.0
    value = theory.derivative_spread(activation, q)
    assert value == pytest.approx(sampled, rel=0.01, abs=1e-4)
    if expected is not None:
        assert value == pytest.approx(expected, abs=1e-9)


# --- depth scales (docs/theory.md 6) against Monte Carlo -------------------------------------------------------------
@pytest.mark.parametrize(
    "sigma_b2, sigma_w2", [(0.0, 1.0), (0.01, 1.42421), (0.05, 1.76095), (0.1, 1.98607), (0.3, 2.50513), (1.0, 3.44321)]
)
def test_tanh_edge_of_chaos_matches_theory_md(sigma_b2, sigma_w2):
    assert theory.edge_of_chaos("tanh", sigma_b2) == pytest.approx(sigma_w2, abs=2e-5)
    assert theory.depth_scales("tanh", sigma_w2, sigma_b2)["chi_1"] == pytest.approx(1.0, abs=1e-4)


def test_depth_scales_of_theory_md_examples_and_degenerate_points():
    gain_5_3 = theory.depth_scales("tanh", 25 / 9, 0.0)  # docs/theory.md 2: q* 1.1785, chi_1 1.2098
    assert gain_5_3["q_star"] == pytest.approx(1.1785, abs=1e-4) and gain_5_3["chi_1"] == pytest.approx(
        1.2098, abs=1e-4
    )
    assert gain_5_3["phase"] == "chaotic" and gain_5_3["c_star"] == 0.0  # odd, no bias: uncorrelated stays so
    for activation, sigma_w2 in [("relu", 2.0), ("linear", 1.0), ("tanh", 1.0)]:
        d = theory.depth_scales(activation, sigma_w2, 0.0)
        assert d["phase"] == "critical" and d["xi_c"] == d["trainable_depth"] == math.inf, activation
    assert theory.depth_scales("relu", 2.0, 0.0)["xi_q"] == math.inf
    # off the degenerate point the scales are finite again (docs/theory.md 6)
    assert 0 < theory.depth_scales("relu", 1.5, 0.0)["xi_c"] < math.inf
    for activation in ACTIVATIONS:
        for sigma_w2 in (0.5, 1.0, 2.0, 4.0):
            d = theory.depth_scales(activation, sigma_w2, 0.05)
            assert d["phase"] in ("ordered", "chaotic", "critical")
            assert not any(isinstance(v, float) and math.isnan(v) for v in d.values()), (activation, sigma_w2, d)
    assert theory.edge_of_chaos("relu") == 2.0 and theory.edge_of_chaos("linear") == 1.0


def simulate_pairs(activation, sigma_w2, sigma_b2, q0, c0, depth, width=1000, nets=8, seed=0):
    """Two inputs at second moment q0 and correlation c0 through `nets` wide random networks (float64):
    h_{l+1} = W phi(h_l) + b, W ~ N(0, sigma_w^2 / n), b ~ N(0, sigma_b^2). Returns q_l, c_l (mean over nets)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(nets, 2, width, generator=gen, dtype=torch.float64)
    h = torch.stack([z[:, 0], c0 * z[:, 0] + math.sqrt(1 - c0**2) * z[:, 1]], dim=1) * math.sqrt(q0)
    phi = ACTIVATIONS[activation].module()
    qs, cs = [], []
    for _ in range(depth):
        w = torch.randn(nets, width, width, generator=gen, dtype=torch.float64) * math.sqrt(sigma_w2 / width)
        b = torch.randn(nets, 1, width, generator=gen, dtype=torch.float64) * math.sqrt(sigma_b2)
        h = phi(h) @ w.transpose(1, 2) + b
        norms = h.norm(dim=2)
        qs.append((norms.square() / width).mean().item())
        cs.append(((h[:, 0] * h[:, 1]).sum(1) / (norms[:, 0] * norms[:, 1])).mean().item())
    return np.array(qs), np.array(cs)


def measured_map_slope(activation, sigma_w2, sigma_b2, q, c, delta=0.02, width=4000, pairs=32, seed=0):
    """d c_{l+1} / d c_l at c by Monte Carlo: one wide random layer (float64), pairs at c - delta and c + delta
    (one-sided at c = 1) built from the same Gaussians and weights, so their noise cancels in the difference."""
    gen = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(2, pairs, width, generator=gen, dtype=torch.float64)
    w = torch.randn(width, width, generator=gen, dtype=torch.float64) * math.sqrt(sigma_w2 / width)
    b = torch.randn(width, generator=gen, dtype=torch.float64) * math.sqrt(sigma_b2)
    phi = ACTIVATIONS[activation].module()

    def next_corr(c_in):
        ha, hb = math.sqrt(q) * z1, math.sqrt(q) * (c_in * z1 + math.sqrt(1 - c_in**2) * z2)
        a, b_ = phi(ha) @ w.T + b, phi(hb) @ w.T + b
        return ((a * b_).sum(1) / (a.norm(dim=1) * b_.norm(dim=1))).mean().item()

    hi, lo = (c, c - delta) if c + delta > 1 else (c + delta, c - delta)
    return (next_corr(hi) - next_corr(lo)) / (hi - lo)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sigma_w2, phase",
    [(1.0, "ordered"), (1.6, "ordered"), (1.9, "chaotic"), (2.5, "chaotic"), (4.0, "chaotic")],
)
def test_tanh_depth_scales_against_monte_carlo(sigma_w2, phase):
    """Both phases and near the edge (1.76 at sigma_b^2 = 0.05): q_l reaches q*, c_l follows the correlation map
    to c*, and the map's slope at c*, chi_c (xi_c = -1 / ln chi_c), is what a wide random layer shows."""
    sigma_b2 = 0.05
    d = theory.depth_scales("tanh", sigma_w2, sigma_b2)
    assert d["phase"] == phase
    c0 = 0.5 if phase == "ordered" else 0.99
    q, c = simulate_pairs("tanh", sigma_w2, sigma_b2, d["q_star"], c0, depth=40)
    assert q[10:].mean() == pytest.approx(d["q_star"], rel=0.02)
    predicted = np.array(theory.correlation_profile("tanh", c0, [d["q_star"]] * 41, [sigma_w2] * 41, [sigma_b2] * 41))
    # finite width: 8 networks of 1000 units scatter by ~0.03 per layer at c ~ 0.2, and a layer's error persists
    assert np.abs(c - predicted[1:]).max() < 0.08
    assert c[25:].mean() == pytest.approx(predicted[26:].mean(), abs=0.03)
    assert abs(predicted[-1] - d["c_star"]) < abs(predicted[0] - d["c_star"])
    slope = measured_map_slope("tanh", sigma_w2, sigma_b2, d["q_star"], d["c_star"])
    assert slope == pytest.approx(d["chi_c"], rel=0.03)


@pytest.mark.slow
def test_relu_at_two_is_critical_and_its_correlations_approach_one_by_a_power_law():
    d = theory.depth_scales("relu", 2.0, 0.0)
    assert d["phase"] == "critical" and d["xi_c"] == math.inf
    q, c = simulate_pairs("relu", 2.0, 0.0, 1.0, 0.0, depth=60)
    predicted = np.array(theory.correlation_profile("relu", 0.0, [1.0] * 61, [2.0] * 61, [0.0] * 61)[1:])
    assert np.abs(c - predicted).max() < 0.05
    # a power law 1 - c_l ~ 1/l^2: from layer 15 to 60 it shrinks ~16-fold, where any exponential with the
    # first layers' rate would shrink it by more than 10^4
    gap = 1 - c
    assert 5 < gap[14] / gap[59] < 40
    early_rate = gap[5] / gap[1]
    assert gap[59] / gap[14] > 100 * early_rate ** (45 / 4)
