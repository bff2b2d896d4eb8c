"""The deep MLP under study: a plain nn.Module that knows nothing of Lightning.

Layer l (1-based, l = 1..L) maps the previous layer's activation a_{l-1} (a_0 the image) to its pre-activation h_l,
and, but for the last, on through the normalization N and the activation phi (the order Linear -> norm ->
activation):

    plain:     h_l = W_l a_{l-1} + b_l
    residual:  h_l = h_{l-1} + alpha_l (W_l a_{l-1} + b_l)    for the square layers 2..L-1 (one Linear a branch)
    a_l = phi(N(h_l))                                        N: none, batchnorm or layernorm over the units

So a residual block's branch is N, phi and one Linear applied to the stream h (pre-normalization, as in pre-norm
ResNets); layer 1 (784 -> width) and layer L (width -> 10, the logits) are never residual and never normalized
after. alpha is a number (1 by default), "1/sqrt_L" (1 / sqrt(L)) or "rezero" (a learnable scalar a block, 0 at
the start: ReZero, Bachlechner et al. 2020; SkipInit, De & Smith 2020).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from deepinit.network.activations import activation as activation_record

NORMS = ("none", "batchnorm", "layernorm")
BLOCKS = ("plain", "residual")
ALPHAS = ("1/sqrt_L", "rezero")  # besides a number


def architecture(norm: str, block: str, alpha: float | str) -> str:
    """The architecture in a few words (the HParams column, the verdict, the report's rows): plain, layernorm,
    residual, residual alpha=rezero + batchnorm, ..."""
    parts = [] if block == "plain" else [block if alpha == 1 else f"{block} alpha={alpha}"]
    parts += [] if norm == "none" else [norm]
    return " + ".join(parts) or "plain"


def norm_module(norm: str, width: int) -> nn.Module:
    if norm == "batchnorm":
        return nn.BatchNorm1d(width)
    if norm == "layernorm":
        return nn.LayerNorm(width)
    return nn.Identity()


def alpha_value(alpha: float | str, depth: int) -> float | None:
    """The branch multiplier at step 0 as a number (None for rezero, whose alphas are parameters, 0 at first)."""
    if alpha == "rezero":
        return None
    return 1 / math.sqrt(depth) if alpha == "1/sqrt_L" else float(alpha)


class MLP(nn.Module):
    """`depth` Linear layers (input and output included), an activation after every one but the last; with `norm`
    a normalization before each of those activations, with block="residual" a skip around each square layer (the
    module docstring has the equations).

    `linears[i]`, `norms[i]` and `activations[i]` are layer i+1 in the study's 1-based numbering; `taps[i]` (an
    identity) carries layer i+1's pre-activation h, stream included: callbacks hook them, in order.
    """

    def __init__(
        self,
        depth: int,
        width: int,
        activation: str = "relu",
        in_features: int = 784,
        out_features: int = 10,
        bias: bool = True,
        norm: str = "none",
        block: str = "plain",
        alpha: float | str = 1.0,
    ) -> None:
        super().__init__()
        record = activation_record(activation)
        if depth < 2:
            raise ValueError(f"depth must be >= 2 (got {depth})")
        if width < 1:
            raise ValueError(f"width must be >= 1 (got {width})")
        if norm not in NORMS or block not in BLOCKS:
            raise ValueError(f"norm must be one of {NORMS} and block one of {BLOCKS} (got {norm!r}, {block!r})")
        sizes = self.sizes(depth, width, in_features, out_features)
        self.activation, self.norm, self.block, self.alpha = activation, norm, block, alpha
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.norms = nn.ModuleList(norm_module(norm, width) for _ in range(depth - 1))
        self.activations = nn.ModuleList(record.module() for _ in range(depth - 1))
        self.taps = nn.ModuleList(nn.Identity() for _ in range(depth))
        # layers 2..L-1 (0-based 1..L-2) are the residual blocks; their alphas, a buffer or (rezero) parameters
        self.blocks = list(range(1, depth - 1)) if block == "residual" else []
        start = alpha_value(alpha, depth)
        if start is None:
            self.alphas = nn.Parameter(torch.zeros(len(self.blocks)))
        else:
            self.register_buffer("alphas", torch.full((len(self.blocks),), start), persistent=False)

    @staticmethod
    def sizes(depth: int, width: int, in_features: int = 784, out_features: int = 10) -> list[int]:
        """The widths of the layers' inputs and of the last output: layer i maps sizes[i] to sizes[i + 1]."""
        return [in_features] + [width] * (depth - 1) + [out_features]

    @property
    def depth(self) -> int:
        return len(self.linears)

    @property
    def architecture(self) -> str:
        return architecture(self.norm, self.block, self.alpha)

    @property
    def plain(self) -> bool:
        """No normalization, no skips: the network the mean-field theory of the depth scales is about."""
        return self.norm == "none" and self.block == "plain"

    def layers(self) -> Iterator[tuple[nn.Linear, nn.Module | None]]:
        """(linear, activation) pairs in order; the output layer's activation is None."""
        for i, linear in enumerate(self.linears):
            yield linear, (self.activations[i] if i < len(self.activations) else None)

    def layer_outputs(self, x: Tensor) -> Iterator[Tensor]:
        """Each layer's output (its activation a_l; the logits last), from layer 1 to L."""
        a, h = x.flatten(1), None
        last = self.depth - 1
        for i, linear in enumerate(self.linears):
            z = linear(a)
            h = self.taps[i](h + self.alphas[i - 1] * z if self.blocks and 0 < i < last else z)
            if i == last:
                yield h
            else:
                yield (a := self.activations[i](h if self.norm == "none" else self.norms[i](h)))

    def forward(self, x: Tensor) -> Tensor:
        for out in self.layer_outputs(x):  # noqa: B007  (the last output is the logits)
            pass
        return out

    @torch.no_grad()
    def first_nonfinite_layer(self, x: Tensor) -> int | None:
        """1-based index of the first layer whose output is not finite, or None."""
        for index, out in enumerate(self.layer_outputs(x), start=1):
            if not torch.isfinite(out).all():
                return index
        return None
