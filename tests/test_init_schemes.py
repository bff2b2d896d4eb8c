"""Each scheme's weight statistics against its formula, within sampling error; LSUV on real MNIST."""

import math

import pytest
import torch

from conftest import init_of
from deepinit.network.activations import ACTIVATIONS
from deepinit.network.init_schemes import SCHEMES, init_settings, initialize
from deepinit.network.model import MLP

WIDTH = 384  # layers 784->384, 384->384, 384->10: square and rectangular shapes


def expected_std(name: str, fan_in: int, fan_out: int, gain: float) -> float:
    return {
        "normal": 1.0,
        "small": 0.01,
        "lecun": 1 / math.sqrt(fan_in),
        "xavier": gain * math.sqrt(2 / (fan_in + fan_out)),
        "xavier_uniform": gain * math.sqrt(2 / (fan_in + fan_out)),
        "kaiming": gain / math.sqrt(fan_in),
        "kaiming_uniform": gain / math.sqrt(fan_in),
        "kaiming_fan_out": gain / math.sqrt(fan_out),
        "torch_default": 1 / math.sqrt(3 * fan_in),
    }[name]


def build(name: str, activation: str = "relu", seed: int = 0, **options) -> MLP:
    torch.manual_seed(seed)
    model = MLP(depth=3, width=WIDTH, activation=activation)
    gain = 1.0 if name in ("lecun", "normal", "small") else None
    bias_std = None if name == "torch_default" else 0.0
    initialize(model, init_of(name, gain=gain, bias_std=bias_std, **options))
    return model


@pytest.mark.parametrize("activation", ["relu", "tanh", "linear"])
@pytest.mark.parametrize(
    "name",
    [
        "normal",
        "small",
        "lecun",
        "xavier",
        "xavier_uniform",
        "kaiming",
        "kaiming_uniform",
        "kaiming_fan_out",
        "torch_default",
    ],
)
def test_weight_std_matches_formula(name, activation):
    model = build(name, activation)
    gain = ACTIVATIONS[activation].gain
    for layer in model.linears:
        w = layer.weight.detach().double()
        fan_out, fan_in = w.shape
        # sd of a sample std over N iid entries is about std * sqrt(kurtosis-term / 4N); 6 of them is generous
        # for both Gaussian (excess kurtosis 0) and uniform (-1.2) entries.
        rel_tol = 6 * math.sqrt(1 / (2 * w.numel()))
        assert w.std().item() == pytest.approx(expected_std(name, fan_in, fan_out, gain), rel=rel_tol)
        assert abs(w.mean().item()) < 6 * w.std().item() / math.sqrt(w.numel())
        if name == "torch_default":
            assert layer.bias.abs().max() <= 1 / math.sqrt(fan_in)
        else:
            assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize("name, bound", [("xavier_uniform", "xavier"), ("kaiming_uniform", "kaiming")])
def test_uniform_schemes_respect_their_bound(name, bound):
    gain = ACTIVATIONS["relu"].gain
    for layer in build(name).linears:
        fan_out, fan_in = layer.weight.shape
        limit = math.sqrt(3) * expected_std(bound, fan_in, fan_out, gain)
        assert layer.weight.abs().max() <= limit
        assert layer.weight.abs().max() > 0.99 * limit


def test_orthogonal_rows_or_columns_are_orthonormal_times_gain():
    gain = ACTIVATIONS["tanh"].gain
    for layer in build("orthogonal", "tanh").linears:
        w = layer.weight.detach().double()
        small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(small, gain**2 * torch.eye(len(small), dtype=torch.double), atol=1e-5, rtol=0)


def test_spectral_norm_equals_gain():
    gain = ACTIVATIONS["relu"].gain
    for layer in build("spectral").linears:
        assert torch.linalg.matrix_norm(layer.weight.double(), ord=2).item() == pytest.approx(gain, rel=1e-5)


def test_gain_override_scales_std():
    torch.manual_seed(0)
    model = MLP(depth=3, width=WIDTH)
    initialize(model, init_of("kaiming", gain=3.0))
    w = model.linears[1].weight
    assert w.std().item() == pytest.approx(3.0 / math.sqrt(WIDTH), rel=0.02)


def test_bias_std_draws_gaussian_biases():
    torch.manual_seed(0)
    model = MLP(depth=3, width=4096)
    initialize(model, init_of("kaiming", bias_std=0.5))
    assert model.linears[1].bias.std().item() == pytest.approx(0.5, rel=0.1)


def test_every_registered_scheme_is_covered_and_has_a_config():
    from conftest import REPO

    configs = {p.stem for p in (REPO / "conf" / "init").glob("*.yaml")}
    assert configs == set(SCHEMES)


def test_unknown_scheme_and_option_are_rejected():
    with pytest.raises(ValueError, match="choose one of"):
        init_settings({"name": "bogus"})
    with pytest.raises(ValueError, match="init.std is not a setting of init kaiming; it takes: name, gain, bias_std"):
        init_of("kaiming", std=2.0)


@pytest.mark.parametrize("activation", ["relu", "tanh", "selu"])
def test_lsuv_gives_unit_variance_on_a_real_batch(mnist_module, activation):
    tol = 0.1
    torch.manual_seed(0)
    model = MLP(depth=20, width=256, activation=activation)
    batch = mnist_module.sample_batch(512)
    used = initialize(model, init_of("lsuv", tol=tol, max_iter=10), batch=batch)
    # Recompute independently: every Linear's output variance on that batch is within tol of 1.
    x = batch
    with torch.no_grad():
        for (linear, act), reported in zip(model.layers(), used["lsuv_variances"], strict=True):
            h = linear(x)
            assert abs(h.var().item() - 1) < tol
            assert h.var().item() == pytest.approx(reported, rel=1e-5)
            x = h if act is None else act(h)
    # ...and on a different real batch it generalizes (not just fit to the one it saw).
    with torch.no_grad():
        out = model(mnist_module.sample_batch(512, seed=1))
    assert 0.7 < out.var().item() < 1.3
