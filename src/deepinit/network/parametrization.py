"""Width parametrizations: how each kind of parameter's initial scale and learning rate follow the width.

The standard parametrization (sp) is what an init scheme and one learning rate give: every layer's weights drawn
with variance ~ 1/fan_in, one learning rate for all. The maximal update parametrization (mup; Yang & Hu 2021, Yang
et al. 2022, "Tensor Programs V", Table 3) rescales from a base width n0 at which it equals sp: with the width
multiplier m = width / base_width,

    kind       parameters                                      init variance   Adam lr   SGD lr
    input      the first layer's weights                       x 1             x 1       x m
    hidden     the square layers' weights (residual branches)  x 1             x 1/m     x 1
    readout    the last layer's weights                        x 1/m           x 1/m     x 1/m
    vector     biases and normalization gains of width size    x 1             x 1       x m
    scalar     the logits' bias, rezero's alphas               x 1             x 1       x 1

(TP5's Table 3 in its relative form: its fan_in and fan_out of width size become m, those of fixed size 1. Its
"input weights and all biases" row is split here by fan_out: a bias of the logits' size is finite in both.) Only the
init and the learning rates change, never the forward pass: the statistics, the theory at step 0 (told the
readout's scale: rescale returns it) and the batched stack see the same network. The init scheme still draws every
layer; the parametrization rescales the readout afterwards (rescale), or zeroes it (zero_readout). Adam's rules
stand for any adaptive optimizer (its update's size does not follow the gradient's); SGD's for plain gradient descent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from deepinit.network.model import MLP

PARAMS = ("sp", "mup")
ONE_GROUP = "all"  # the name of an optimizer's only group (sp), in summary.json's learning_rates
KINDS = ("input", "hidden", "readout", "vector", "scalar")


@dataclass(frozen=True)
class Exponents:
    """A kind's exponents of the width multiplier m: init variance x m**init_var, learning rate x m**lr[optimizer]."""

    init_var: int
    adam: int
    sgd: int

    def lr(self, optimizer: str) -> int:
        return self.sgd if optimizer == "sgd" else self.adam


RULES: dict[str, dict[str, Exponents]] = {
    "sp": dict.fromkeys(KINDS, Exponents(0, 0, 0)),
    "mup": {
        "input": Exponents(0, 0, 1),
        "hidden": Exponents(0, -1, 0),
        "readout": Exponents(-1, -1, -1),
        "vector": Exponents(0, 0, 1),
        "scalar": Exponents(0, 0, 0),
    },
}


def groups_of(model: MLP) -> Iterator[tuple[str, str, list[nn.Parameter]]]:
    """(name, kind, parameters) for every parameter of `model`, each in one group: input.weight, input.bias,
    hidden.weight, hidden.bias, readout.weight, readout.bias, norm (gains and biases), alpha (rezero). Groups with no
    parameter (no bias, no hidden layer, no norm) are left out."""
    linears = list(model.linears)
    first, hidden, last = linears[0], linears[1:-1], linears[-1]
    named = [
        ("input.weight", "input", [first.weight]),
        ("input.bias", "vector", [first.bias]),
        ("hidden.weight", "hidden", [lin.weight for lin in hidden]),
        ("hidden.bias", "vector", [lin.bias for lin in hidden]),
        ("readout.weight", "readout", [last.weight]),
        ("readout.bias", "scalar", [last.bias]),
        ("norm", "vector", list(model.norms.parameters())),
        ("alpha", "scalar", [model.alphas] if isinstance(model.alphas, nn.Parameter) else []),
    ]
    for name, kind, params in named:
        params = [p for p in params if p is not None]
        if params:
            yield name, kind, params


def width_multiplier(model: MLP, base_width: int) -> float:
    """m = the hidden width / base_width (the input layer's fan_out, which every hidden layer shares)."""
    return model.linears[0].out_features / base_width


def param_groups(model: MLP, param: str, optimizer: str, lr: float, base_width: int) -> list[dict]:
    """The optimizer's parameter groups, named (torch keeps a group's extra keys): each kind's learning rate under
    `param` for `optimizer` (adam: any adaptive optimizer; sgd), from the base learning rate `lr`."""
    m = width_multiplier(model, base_width)
    return [{"params": params, "name": name, "lr": lr * m ** RULES[param][kind].lr(optimizer)}
            for name, kind, params in groups_of(model)]  # fmt: skip


@torch.no_grad()
def rescale(model: MLP, param: str, base_width: int, zero_readout: bool = False) -> float:
    """After the init scheme drew the weights: the readout's variance x m**init_var (mup: 1/m), or zero. Returns
    that multiplier of the variance (the theory's readout_var)."""
    readout = model.linears[-1].weight
    if zero_readout:
        readout.zero_()
        return 0.0
    multiplier = width_multiplier(model, base_width) ** RULES[param]["readout"].init_var
    readout.mul_(math.sqrt(multiplier))
    return multiplier
