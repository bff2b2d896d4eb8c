"""The stacked model of a batched group, and its members' batches stacked."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from deepinit.data.datamodule import TensorBatches
from deepinit.network.activations import ACTIVATIONS
from deepinit.network.model import MLP


class StackedMLP(nn.Module):
    """K same-shape MLPs as one: layer i's weights are one [K, out, in] parameter, its biases [K, out].

    The members stay usable as plain MLPs: their parameters become views into the stack, so a member's forward
    and its LayerRecorder see the weights the stack trains."""

    def __init__(self, members: Sequence[MLP]) -> None:
        super().__init__()
        first = members[0]
        self.activation, self.depth, self.members = first.activation, first.depth, list(members)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([m.linears[i].weight.detach() for m in members])) for i in range(self.depth)
        )
        has_bias = first.linears[0].bias is not None
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([m.linears[i].bias.detach() for m in members]))
            for i in range(self.depth)
            if has_bias
        )
        self.act = ACTIVATIONS[self.activation].module()
        self.bind()

    def bind(self) -> None:
        """Make every member's parameters views into the stack (again after the stack moved device)."""
        for k, member in enumerate(self.members):
            for i, linear in enumerate(member.linears):
                linear.weight = nn.Parameter(self.weights[i].data[k])
                if self.biases:
                    linear.bias = nn.Parameter(self.biases[i].data[k])

    def _apply(self, fn, recurse=True):  # .to(device) replaces the stack's storage: re-point the members
        out = super()._apply(fn, recurse)
        if hasattr(self, "members"):
            self.bind()
        return out

    def forward(self, x: Tensor) -> Tensor:
        """x: [K, batch, 784] (each member its own batch) -> logits [K, batch, 10]."""
        return self.observed_forward(x)[0]

    def observed_forward(self, x: Tensor, keep: bool = False) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Logits, and with keep: every layer's pre-activation [K, batch, out] (gradients retained for the
        statistics) and activation; the last pre-activation is the logits."""
        pre, post = [], []
        for i, w in enumerate(self.weights):
            x = torch.baddbmm(self.biases[i].unsqueeze(1), x, w.transpose(1, 2)) if self.biases else x @ w.mT
            if keep:
                x.retain_grad()
                pre.append(x)
            if i < self.depth - 1:
                x = self.act(x)
                if keep:
                    post.append(x)
        return x, pre, post


class StackedBatches:
    """Each member's next pass, as its lone run's loader makes it (same seed, same order), stacked: one gather
    of [K, batch] indices a step, and no per-member copy of the shuffled data set."""

    def __init__(self, loaders: Sequence[TensorBatches]) -> None:
        self.loaders = loaders

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        orders = torch.stack([loader.next_order() for loader in self.loaders])
        x, y, size = self.loaders[0].x, self.loaders[0].y, self.loaders[0].batch_size
        for start in range(0, orders.shape[1], size):
            index = orders[:, start : start + size]
            yield x[index], y[index]
