"""How a layer's output and its change after a step scale with width, per parametrization and optimizer (docs/theory.md
9): the abc-parametrization's rules (Yang & Hu 2021, "Feature learning in infinite-width neural networks", section 3
and Theorem 3.4; Yang et al. 2022, Tensor Programs V, Table 3 and its appendix J).

For a width-n MLP (input layer 784 -> n, hidden layers n -> n, readout n -> 10) the typical size of a coordinate
(its mean |.|, the coord check's l1) follows n**exponent as n grows. Writing v_k for a kind's init variance exponent
and c_k for its learning rate's (deepinit.network.parametrization.RULES, relative to sp's 1/fan_in and one rate):

- at init, an output sums fan_in incoherent terms: the input layer's and the hidden layers' outputs are n**0, the
  logits n**(v_readout / 2) (mup: n**-0.5);
- a step's weight change dW = -lr g x^T is coherent with the input x that made it, so dW x sums fan_in terms of one
  sign: n**(c + 1) times the size of dW's entries for a width-size fan_in, n**c for the input layer's 784;
  Adam's entries are lr-sized whatever the gradient (its update is normalized), SGD's are lr x the gradient's
  entries, which the readout sets: the logits' gradient is n**0 and W_readout^T passes back n**((v_readout - 1) / 2);
- a layer's change is the largest of its own weights' term, its bias's term and the change it receives from the
  layer below (W dx, incoherent, keeps dx's size in a hidden layer; the readout's scales it by n**(v_readout / 2)).

The regime as width grows (Yang & Hu's classification, from the last hidden layer's change and the logits'): a change
that grows is unstable; logits that stop moving are trivial; logits that move at n**0 with features that move at n**0
are feature learning (muP), with features that freeze, the kernel regime (NTK). sp at a fixed learning rate is
unstable under both optimizers (its logits' change grows as n**1); `stable_lr` is the learning rate's exponent that
makes it stable, and its regime there: SGD's is the kernel regime (Yang & Hu's Theorem 3.4 for sp), Adam's learns
features in all but the input layer, whose change then shrinks as n**-1.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepinit.network.parametrization import RULES

LAYERS = ("input", "hidden", "readout")  # the coord check's layer kinds: layer 1, layers 2..depth-1, the logits
REGIMES = ("feature learning", "kernel", "unstable", "trivial")


@dataclass(frozen=True)
class WidthScaling:
    """Exponents of the width n in a layer's mean |output| at init (`output`; None: exactly zero, a zeroed readout)
    and in its change after a few steps (`change`), per kind of LAYERS; the regime as width grows; and, for a
    parametrization unstable at a fixed learning rate, the exponent of n its learning rate needs to be stable
    (`stable_lr`) and the regime it then trains in."""

    param: str
    optimizer: str
    output: dict[str, float | None]
    change: dict[str, float]
    regime: str
    stable_lr: float = 0.0
    stable_change: dict[str, float] | None = None
    stable_regime: str | None = None


def _changes(param: str, optimizer: str, v_readout: float, lr_exponent: float) -> dict[str, float]:
    rules = RULES[param]
    c = {kind: rules[kind].lr(optimizer) + lr_exponent for kind in rules}
    # the size of the gradient reaching the width-size layers: Adam's update ignores it, SGD's is proportional to it
    grad = (v_readout - 1) / 2 if optimizer == "sgd" else 0.0
    input_ = max(c["input"] + grad, c["vector"] + grad)  # fan_in 784: a fixed number of coherent terms
    hidden = max(input_, c["hidden"] + grad + 1, c["vector"] + grad)
    readout = max(c["readout"] + 1, hidden + v_readout / 2, c["scalar"])  # the logits' own gradient is n**0
    return {"input": input_, "hidden": hidden, "readout": readout}


def _regime(change: dict[str, float], readout_output: float | None) -> str:
    logits = max(change["readout"], readout_output if readout_output is not None else -1.0)
    if logits > 0 or change["hidden"] > 0:
        return "unstable"
    if change["readout"] < 0:
        return "trivial"
    return "feature learning" if change["hidden"] == 0 else "kernel"


def width_scaling(param: str, optimizer: str, zero_readout: bool = False) -> WidthScaling:
    """The width exponents of `param` (deepinit.network.parametrization.PARAMS) trained by `optimizer` (adam: any
    adaptive optimizer; sgd) at a learning rate fixed as width grows, with the scheme's readout or a zeroed one."""
    rules = RULES[param]
    v_readout = rules["readout"].init_var
    if zero_readout:  # after its first step the readout is its update: entries of the readout's learning rate
        v_readout = 2 * rules["readout"].lr(optimizer) + 1
    output = {"input": 0.0, "hidden": 0.0, "readout": None if zero_readout else v_readout / 2}
    change = _changes(param, optimizer, v_readout, 0.0)
    regime = _regime(change, output["readout"])
    if regime != "unstable":
        return WidthScaling(param, optimizer, output, change, regime)
    # every change term is linear in the learning rate's exponent: shift the largest to 0
    stable = -max(change["hidden"], change["readout"], output["readout"] or 0.0)
    stable_change = _changes(param, optimizer, v_readout, stable)
    return WidthScaling(
        param, optimizer, output, change, regime, stable, stable_change, _regime(stable_change, output["readout"])
    )


def _power(exponent: float) -> str:
    return f"width^{exponent:g}"


def width_line(scaling: WidthScaling, label: str) -> str:
    """What the verdict line says of width: the parametrization (its `label`, e.g. "mup base_width=256"), the
    regime and the exponents that decide it."""
    change = scaling.change
    moves = f"a step moves the hidden outputs ~ {_power(change['hidden'])}, the logits ~ {_power(change['readout'])}"
    line = f"width ({label}, {scaling.optimizer}): {scaling.regime} as width grows ({moves})"
    if scaling.stable_change is not None:
        line += f"; stable with lr ~ {_power(scaling.stable_lr)}, there {scaling.stable_regime}"
        if scaling.stable_regime == "feature learning" and scaling.stable_change["input"] < 0:
            line += f" but for the input layer (~ {_power(scaling.stable_change['input'])})"
    return line
