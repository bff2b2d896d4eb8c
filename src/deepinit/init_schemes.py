"""The initialization schemes of the study: one small function per scheme, in one registry.

Each function fills one weight matrix in place, given the gain (from the activation unless the config
overrides it) and the scheme's own options from `conf/init/<name>.yaml`. torch.nn.init does the sampling
wherever it has the function; `gain / sqrt(fan)` schemes sample with gain 1 ('linear') and scale by the
gain, so any gain can be given, not only the ones calculate_gain knows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from deepinit.model import MLP

WeightInit = Callable[..., None]


def _fixed_std(w: Tensor, gain: float, std: float) -> None:
    nn.init.normal_(w, 0.0, std)  # deliberately blind to fan-in and gain: the explosion/vanishing cases


def _kaiming_normal(mode: str) -> WeightInit:
    def init(w: Tensor, gain: float) -> None:
        nn.init.kaiming_normal_(w, mode=mode, nonlinearity="linear").mul_(gain)

    return init


def _kaiming_uniform(w: Tensor, gain: float) -> None:
    nn.init.kaiming_uniform_(w, mode="fan_in", nonlinearity="linear").mul_(gain)


def _spectral(w: Tensor, gain: float) -> None:
    nn.init.normal_(w)
    w.div_(torch.linalg.matrix_norm(w, ord=2)).mul_(gain)


def _keep(w: Tensor, gain: float) -> None:
    """nn.Linear already drew U(+-1/sqrt(fan_in)) when the model was built."""


SCHEMES: dict[str, WeightInit] = {
    "normal": _fixed_std,
    "small": _fixed_std,
    "lecun": _kaiming_normal("fan_in"),  # LeCun is fan_in scaling with gain 1 (its yaml fixes gain: 1)
    "xavier": lambda w, gain: nn.init.xavier_normal_(w, gain=gain),
    "xavier_uniform": lambda w, gain: nn.init.xavier_uniform_(w, gain=gain),
    "kaiming": _kaiming_normal("fan_in"),
    "gaussian": _kaiming_normal("fan_in"),  # gain sqrt(sigma_w2), from its own options (initialize)
    "kaiming_uniform": _kaiming_uniform,
    "kaiming_fan_out": _kaiming_normal("fan_out"),
    "orthogonal": lambda w, gain: nn.init.orthogonal_(w, gain=gain),
    "torch_default": _keep,
    "spectral": _spectral,
    # LSUV starts orthonormal; `lsuv_rescale` then fixes each layer's scale on a real batch.
    "lsuv": lambda w, gain: nn.init.orthogonal_(w, gain=1.0),
}

# Options a scheme's yaml may carry besides name, gain and bias_std.
SCHEME_OPTIONS = {
    "normal": {"std"},
    "small": {"std"},
    "lsuv": {"tol", "max_iter", "batch_size"},
    "gaussian": {"sigma_w2", "sigma_b2"},
}


def activation_gain(activation: str) -> float:
    """torch's recommended gain for the activation (GELU, which torch does not list, gets ReLU's)."""
    if activation == "leaky_relu":
        return nn.init.calculate_gain("leaky_relu", 0.01)
    return nn.init.calculate_gain({"gelu": "relu"}.get(activation, activation))


@torch.no_grad()
def lsuv_rescale(model: MLP, batch: Tensor, tol: float = 0.1, max_iter: int = 10) -> list[float]:
    """Mishkin & Matas (2016): layer by layer, W <- W / std(W x) until |Var(W x) - 1| < tol.

    Measured on each Linear's output before its activation, on one real batch. Returns the final
    variance of every layer's output.
    """
    variances = []
    x = batch.flatten(1)
    for index, (linear, act) in enumerate(model.layers(), start=1):
        for _ in range(max_iter):
            var = linear(x).var()
            if not torch.isfinite(var) or var <= 0:
                raise ValueError(f"LSUV: layer {index} output variance is {var.item():g}; cannot rescale")
            if abs(var.item() - 1.0) < tol:
                break
            linear.weight.div_(var.sqrt())
        h = linear(x)
        variances.append(h.var().item())
        x = h if act is None else act(h)
    return variances


def initialize(
    model: MLP,
    name: str,
    gain: float | None = None,
    bias_std: float | None = 0.0,
    batch: Tensor | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Apply scheme `name` to every Linear of `model`; returns what was used (gain, bias_std, LSUV variances).

    bias_std None keeps nn.Linear's own bias init; 0 gives zeros; > 0 draws N(0, bias_std^2). `gaussian` takes
    sigma_w2 and sigma_b2 instead: gain sqrt(sigma_w2), bias_std sqrt(sigma_b2).
    """
    if name not in SCHEMES:
        raise ValueError(f"unknown init {name!r}; choose one of: {', '.join(SCHEMES)}")
    unknown = set(options) - SCHEME_OPTIONS.get(name, set())
    if unknown:
        raise ValueError(f"init {name!r} takes no option(s) {', '.join(sorted(unknown))}")
    if name == "gaussian":
        gain, bias_std = math.sqrt(options["sigma_w2"]), math.sqrt(options["sigma_b2"])
    gain = activation_gain(model.activation) if gain is None else float(gain)
    weight_options = {k: v for k, v in options.items() if k == "std"}
    for linear in model.linears:
        SCHEMES[name](linear.weight.data, gain, **weight_options)
        if linear.bias is not None and bias_std is not None:
            nn.init.normal_(linear.bias, 0.0, bias_std) if bias_std > 0 else nn.init.zeros_(linear.bias)
    used: dict[str, Any] = {"gain": gain, "bias_std": bias_std}
    if name == "lsuv":
        if batch is None:
            raise ValueError("init 'lsuv' needs a batch of training data")
        used["lsuv_variances"] = lsuv_rescale(
            model, batch, tol=options.get("tol", 0.1), max_iter=options.get("max_iter", 10)
        )
    return used
