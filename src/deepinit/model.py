"""The deep MLP under study: a plain nn.Module that knows nothing of Lightning."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from deepinit.activations import activation as activation_record


class MLP(nn.Module):
    """`depth` Linear layers (input and output included), an activation after every one but the last.

    `linears[i]` and `activations[i]` are layer i+1 in the study's 1-based numbering; callbacks find the
    layers there, in order.
    """

    def __init__(
        self,
        depth: int,
        width: int,
        activation: str = "relu",
        in_features: int = 784,
        out_features: int = 10,
        bias: bool = True,
    ) -> None:
        super().__init__()
        record = activation_record(activation)
        if depth < 2:
            raise ValueError(f"depth must be >= 2 (got {depth})")
        if width < 1:
            raise ValueError(f"width must be >= 1 (got {width})")
        sizes = self.sizes(depth, width, in_features, out_features)
        self.activation = activation
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.activations = nn.ModuleList(record.module() for _ in range(depth - 1))

    @staticmethod
    def sizes(depth: int, width: int, in_features: int = 784, out_features: int = 10) -> list[int]:
        """The widths of the layers' inputs and of the last output: layer i maps sizes[i] to sizes[i + 1]."""
        return [in_features] + [width] * (depth - 1) + [out_features]

    @property
    def depth(self) -> int:
        return len(self.linears)

    def layers(self) -> Iterator[tuple[nn.Linear, nn.Module | None]]:
        """(linear, activation) pairs in order; the output layer's activation is None."""
        for i, linear in enumerate(self.linears):
            yield linear, (self.activations[i] if i < len(self.activations) else None)

    def layer_outputs(self, x: Tensor) -> Iterator[Tensor]:
        """Each layer's output (after its activation, if any), from layer 1 to the logits."""
        x = x.flatten(1)
        for linear, act in self.layers():
            x = linear(x)
            yield x if act is None else (x := act(x))

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
