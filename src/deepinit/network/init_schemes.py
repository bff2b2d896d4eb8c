"""The initialization schemes of the study: one `Scheme` record each (how it fills a weight matrix, the variance
the theory reads, its settings, what the theory assumes of it), in one registry, SCHEMES.

Each fill function fills one weight matrix in place, given the gain (from the activation unless the config
overrides it) and the scheme's own options from `conf/init/<name>.yaml`, whose keys and ranges are the scheme's
settings record (GainInit, FixedStdInit, GaussianInit, LsuvInit: the Hydra schema of its file). torch.nn.init does
the sampling wherever it has the function; `gain / sqrt(fan)` schemes sample with gain 1 ('linear') and scale by the
gain, so any gain can be given, not only the ones calculate_gain knows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deepinit.base.rules import Checked, ConfigError, integer, number, setting, text
from deepinit.network.activations import ACTIVATIONS
from deepinit.network.model import MLP

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


# --- each scheme's settings: the keys of its yaml file, their types and ranges --------------------------------------
class InitSettings(Checked):
    """What every scheme's settings answer: its name, the gain and `bias_std` it draws with (a field, or for
    `gaussian` derived from sigma_b2), its fixed `std` where it has one."""

    PREFIX = "init"
    name: str
    bias_std: float | None

    def gain_for(self, activation: str) -> float:
        """The gain the weights are drawn with: the configured one, else the activation's recommended gain."""
        gain = getattr(self, "gain", None)
        return ACTIVATIONS[activation].gain if gain is None else float(gain)

    @property
    def std_option(self) -> float | None:
        """The fixed weight std of `normal`/`small` (blind to fan-in and gain), else None."""
        return None

    def data_batch_size(self) -> int | None:
        """The number of real training images the scheme measures on (LSUV), else None."""
        return None

    def theory_inputs(self, used: dict[str, Any]) -> dict[str, Any]:
        """The init as deepinit.theory takes it (scheme, gain, std, bias_std, and the readout's variance multiplier a
        width parametrization applied), given what `initialize` used."""
        return {"scheme": self.name, "gain": used["gain"], "std": self.std_option, "bias_std": used["bias_std"],
                "readout_var": used.get("readout_var", 1.0)}  # fmt: skip


@dataclass(frozen=True)
class GainInit(InitSettings):
    """gain: null for the activation's; bias_std: 0 zero biases, > 0 N(0, bias_std^2), null nn.Linear's own."""

    name: str = setting(text())
    gain: float | None = setting(number(null=True))
    bias_std: float | None = setting(number(at_least=0, null=True))


@dataclass(frozen=True)
class FixedStdInit(GainInit):
    """normal, small: N(0, std^2) whatever the width (gain unused, kept for reference)."""

    std: float = setting(number(at_least=0))

    @property
    def std_option(self) -> float | None:
        return self.std


@dataclass(frozen=True)
class GaussianInit(InitSettings):
    """The depth-scale papers' parametrization: W ~ N(0, sigma_w2 / fan_in), b ~ N(0, sigma_b2)."""

    name: str = setting(text())
    sigma_w2: float = setting(number(above=0))
    sigma_b2: float = setting(number(at_least=0))

    def gain_for(self, activation: str) -> float:
        return math.sqrt(self.sigma_w2)

    @property
    def bias_std(self) -> float | None:  # type: ignore[override]  (derived: the base only declares it)
        return math.sqrt(self.sigma_b2)


@dataclass(frozen=True)
class LsuvInit(GainInit):
    """Orthonormal, then each layer rescaled on `batch_size` real training images until within `tol` of unit
    variance, at most `max_iter` times."""

    tol: float = setting(number(above=0))
    max_iter: int = setting(integer(1))
    batch_size: int = setting(integer(1))

    def data_batch_size(self) -> int | None:
        return self.batch_size


def bias_variance(bias_std: float | None, fan_in: int) -> float:
    """sigma_b^2 of biases drawn with bias_std; None: nn.Linear's own U(+-1/sqrt(fan_in)), variance 1 / (3 fan_in)."""
    return 1 / (3 * fan_in) if bias_std is None else float(bias_std) ** 2


UNIFORM = "i.i.d. uniform weights: at large width only their variance enters"
TORCH_UNIFORM = "i.i.d. uniform weights (nn.Linear's): at large width only their variance enters"


@dataclass(frozen=True)
class Scheme:
    """One init scheme, everything about it in one place.

    fill: fills one weight matrix in place, given the gain (and the `std` option where the scheme takes it);
    variance: Var(W) of a (fan_in, fan_out) layer for a gain and std, as the theory reads it (sigma_w^2 = fan_in
    Var W); None where no formula sets the scale (measured from the weights instead); settings: the record of its
    yaml's keys; orthogonal: orthonormal rows or columns rather than i.i.d. entries (the finite-width spread
    differs); assumed: what the depth-scale theory takes for granted about such weights; branch_fill: for a scheme
    of residual networks (block=residual only), how it fills the branches' Linears and the last layer (`fill`: layer
    1)."""

    fill: WeightInit
    variance: Callable[[int, int, float, float | None], float] | None
    settings: type[InitSettings] = GainInit
    orthogonal: bool = False
    assumed: str | None = None
    branch_fill: WeightInit | None = None

    @property
    def residual(self) -> bool:
        return self.branch_fill is not None


SCHEMES: dict[str, Scheme] = {
    "normal": Scheme(_fixed_std, _std_or(1.0), FixedStdInit),
    "small": Scheme(_fixed_std, _std_or(0.01), FixedStdInit),
    "lecun": Scheme(_kaiming_normal("fan_in"), _fan_in),  # fan_in scaling with gain 1 (its yaml fixes gain: 1)
    "xavier": Scheme(lambda w, gain: nn.init.xavier_normal_(w, gain=gain), _xavier),
    "xavier_uniform": Scheme(lambda w, gain: nn.init.xavier_uniform_(w, gain=gain), _xavier, assumed=UNIFORM),
    "kaiming": Scheme(_kaiming_normal("fan_in"), _fan_in),
    # The depth-scale papers' parametrization: gain sqrt(sigma_w2) and bias std sqrt(sigma_b2) (initialize).
    "gaussian": Scheme(_kaiming_normal("fan_in"), _fan_in, GaussianInit),
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
        LsuvInit,
        orthogonal=True,
        assumed="LSUV's orthogonal weights, not i.i.d. Gaussian: the same maps at their measured sigma_w^2",
    ),
    # Fixup with one-Linear branches: the branches and the logits start at 0 (the network is layer 1, then the
    # identity), layer 1 as kaiming; no closed-form sigma_w^2 per layer (measured from the weights).
    "fixup": Scheme(
        _kaiming_normal("fan_in"),
        None,
        branch_fill=lambda w, gain: nn.init.zeros_(w),
        assumed="Fixup's zero branches: the stream keeps layer 1's q, and only the last layer learns at step 0",
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


def init_settings(values: dict[str, Any]) -> InitSettings:
    """The scheme's settings record from `init.*` (its name picks the record): an unknown scheme, a key the scheme
    does not take or a value out of range is one ConfigError line."""
    name = values.get("name")
    if name not in SCHEMES:
        raise ConfigError(f"unknown init {name!r}; choose one of: {', '.join(SCHEMES)}")
    return SCHEMES[name].settings.from_dict(values, what=f"init {name}")


def initialize(model: MLP, init: InitSettings, batch: Tensor | None = None) -> dict[str, Any]:
    """Apply `init` to every Linear of `model`; returns what was used (gain, bias_std, LSUV variances).

    bias_std None keeps nn.Linear's own bias init; 0 gives zeros; > 0 draws N(0, bias_std^2). `gaussian` draws with
    gain sqrt(sigma_w2) and bias std sqrt(sigma_b2). `lsuv` needs `batch`, a batch of real training inputs.
    """
    scheme = SCHEMES[init.name]
    gain, bias_std = init.gain_for(model.activation), init.bias_std
    weight_options = {} if init.std_option is None else {"std": init.std_option}
    for index, linear in enumerate(model.linears):
        fill = scheme.branch_fill if scheme.branch_fill is not None and index > 0 else scheme.fill
        fill(linear.weight.data, gain, **weight_options)
        if linear.bias is not None and bias_std is not None:
            nn.init.normal_(linear.bias, 0.0, bias_std) if bias_std > 0 else nn.init.zeros_(linear.bias)
    used: dict[str, Any] = {"gain": gain, "bias_std": bias_std}
    if isinstance(init, LsuvInit):
        if batch is None:
            raise ValueError("init 'lsuv' needs a batch of training data")
        used["lsuv_variances"] = lsuv_rescale(model, batch, tol=init.tol, max_iter=init.max_iter)
    return used
