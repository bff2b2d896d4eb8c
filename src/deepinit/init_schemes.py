"""The initialization schemes of the study: one `Scheme` record each (how it fills a weight matrix, the variance
the theory reads, its options, what the theory assumes of it), in one registry, SCHEMES.

Each fill function fills one weight matrix in place, given the gain (from the activation unless the config
overrides it) and the scheme's own options from `conf/init/<name>.yaml`. torch.nn.init does the sampling
wherever it has the function; `gain / sqrt(fan)` schemes sample with gain 1 ('linear') and scale by the
gain, so any gain can be given, not only the ones calculate_gain knows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deepinit.activations import ACTIVATIONS
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


def _fan_in(fan_in: int, fan_out: int, gain: float, std: float | None) -> float:
    return gain**2 / fan_in


def _xavier(fan_in: int, fan_out: int, gain: float, std: float | None) -> float:
    return 2 * gain**2 / (fan_in + fan_out)


def _std_or(default: float) -> Callable[[int, int, float, float | None], float]:
    return lambda fan_in, fan_out, gain, std: (default if std is None else std) ** 2


UNIFORM = "i.i.d. uniform weights: at large width only their variance enters"
TORCH_UNIFORM = "i.i.d. uniform weights (nn.Linear's): at large width only their variance enters"


@dataclass(frozen=True)
class Scheme:
    """One init scheme, everything about it in one place.

    fill: fills one weight matrix in place, given the gain (and the `std` option where the scheme takes it);
    variance: Var(W) of a (fan_in, fan_out) layer for a gain and std, as the theory reads it (sigma_w^2 = fan_in
    Var W); None where no formula sets the scale (measured from the weights instead); options: what its yaml may
    carry besides name, gain and bias_std; orthogonal: orthonormal rows or columns rather than i.i.d. entries (the
    finite-width spread differs); assumed: what the depth-scale theory takes for granted about such weights."""

    fill: WeightInit
    variance: Callable[[int, int, float, float | None], float] | None
    options: frozenset[str] = frozenset()
    orthogonal: bool = False
    assumed: str | None = None


SCHEMES: dict[str, Scheme] = {
    "normal": Scheme(_fixed_std, _std_or(1.0), frozenset({"std"})),
    "small": Scheme(_fixed_std, _std_or(0.01), frozenset({"std"})),
    "lecun": Scheme(_kaiming_normal("fan_in"), _fan_in),  # fan_in scaling with gain 1 (its yaml fixes gain: 1)
    "xavier": Scheme(lambda w, gain: nn.init.xavier_normal_(w, gain=gain), _xavier),
    "xavier_uniform": Scheme(lambda w, gain: nn.init.xavier_uniform_(w, gain=gain), _xavier, assumed=UNIFORM),
    "kaiming": Scheme(_kaiming_normal("fan_in"), _fan_in),
    # The depth-scale papers' parametrization: gain sqrt(sigma_w2) and bias std sqrt(sigma_b2) (initialize).
    "gaussian": Scheme(_kaiming_normal("fan_in"), _fan_in, frozenset({"sigma_w2", "sigma_b2"})),
    "kaiming_uniform": Scheme(_kaiming_uniform, _fan_in, assumed=UNIFORM),
    "kaiming_fan_out": Scheme(_kaiming_normal("fan_out"), lambda fan_in, fan_out, gain, std: gain**2 / fan_out),
    # Orthonormal rows (fan_out <= fan_in) or columns: every entry has variance 1 / max(fan_in, fan_out).
    "orthogonal": Scheme(
        lambda w, gain: nn.init.orthogonal_(w, gain=gain),
        lambda fan_in, fan_out, gain, std: gain**2 / max(fan_in, fan_out),
        orthogonal=True,
        assumed="orthogonal weights, not i.i.d. Gaussian: the same maps at their sigma_w^2 (at large width)",
    ),
    "torch_default": Scheme(  # U(+-1/sqrt(fan_in))
        _keep, lambda fan_in, fan_out, gain, std: 1 / (3 * fan_in), assumed=TORCH_UNIFORM
    ),
    # Divides by the measured largest singular value: no formula for the scale.
    "spectral": Scheme(
        _spectral, None, assumed="spectrally normalized weights: the Gaussian maps at their measured sigma_w^2"
    ),
    # LSUV starts orthonormal; `lsuv_rescale` then fixes each layer's scale on a real batch.
    "lsuv": Scheme(
        lambda w, gain: nn.init.orthogonal_(w, gain=1.0),
        None,
        frozenset({"tol", "max_iter", "batch_size"}),
        orthogonal=True,
        assumed="LSUV's orthogonal weights, not i.i.d. Gaussian: the same maps at their measured sigma_w^2",
    ),
}


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
    scheme = SCHEMES[name]
    unknown = set(options) - scheme.options
    if unknown:
        raise ValueError(f"init {name!r} takes no option(s) {', '.join(sorted(unknown))}")
    if name == "gaussian":
        gain, bias_std = math.sqrt(options["sigma_w2"]), math.sqrt(options["sigma_b2"])
    gain = ACTIVATIONS[model.activation].gain if gain is None else float(gain)
    weight_options = {k: v for k, v in options.items() if k == "std"}
    for linear in model.linears:
        scheme.fill(linear.weight.data, gain, **weight_options)
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
