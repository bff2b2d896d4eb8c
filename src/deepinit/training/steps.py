"""Which training step can run here: one rule, `why_not(needs, trainer, optimizer)`, for both special steps, with
what each needs as data (`FAST`: deepinit.training.fast_step, a lone run's; `GROUP`: deepinit.batched, a stacked
group's).

Where a lone run's fast step cannot run, the run takes the plain eager step; where the group step cannot, the job
runs alone. The facts come from the Lightning Trainer the run's settings make: it is what normalizes devices,
strategies and precisions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class StepNeeds:
    """What a training step needs of its run. precisions: the Trainer precisions it runs (what it says of them);
    optimizer: "fused" (a fused implementation on the device: one kernel for every update, skippable on the device)
    or "elementwise" (an update that is elementwise, so that one optimizer over stacked tensors is one per member)."""

    name: str
    precisions: tuple[str, ...]
    precision_text: str
    optimizer: str


FAST = StepNeeds("the fast step", ("32-true", "64-true"), "float32 or float64, with no grad scaler", "fused")
GROUP = StepNeeds("the group step", ("32-true",), "float32", "elementwise")

# Optimizers whose update of a tensor is elementwise: one over stacked tensors is one per member.
ELEMENTWISE = tuple(getattr(torch.optim, n) for n in ("Adam", "AdamW", "SGD", "Adagrad", "RMSprop", "Adamax", "NAdam",
                                                      "RAdam"))  # fmt: skip


def optimizer_name(optimizer: Callable[..., torch.optim.Optimizer]) -> str:
    """The optimizer a factory (functools.partial over its class) makes, as torch.optim.<Name> where it is one."""
    cls: Any = getattr(optimizer, "func", optimizer)
    name = getattr(cls, "__name__", repr(cls))
    return f"torch.optim.{name}" if getattr(torch.optim, name, None) is cls else f"{cls.__module__}.{name}"


def why_not(needs: StepNeeds, trainer: Any, optimizer: Callable[..., torch.optim.Optimizer]) -> str | None:
    """Why the step `needs` describes cannot run in this Trainer with this optimizer factory, or None if it can."""
    from deepinit.training.fast_step import fused_optimizer  # the fast step's own attempt at a fused optimizer

    if trainer.world_size > 1:
        return f"more than one device or a strategy (world size {trainer.world_size})"
    if trainer.gradient_clip_val:
        return f"trainer.gradient_clip_val ({needs.name} does not clip gradients)"
    if trainer.accumulate_grad_batches != 1:
        return f"trainer.accumulate_grad_batches ({needs.name} updates every batch)"
    if trainer.precision not in needs.precisions:
        return f"trainer.precision={trainer.precision} ({needs.name} runs {needs.precision_text})"
    if needs.optimizer == "elementwise" and getattr(optimizer, "func", None) not in ELEMENTWISE:
        return f"optimizer {optimizer_name(optimizer)} (not known to update elementwise)"
    if needs.optimizer == "fused":
        device = trainer.strategy.root_device
        if fused_optimizer(optimizer, [nn.Parameter(torch.zeros(1, device=device))], False) is None:
            return f"optimizer {optimizer_name(optimizer)} has no fused implementation on {device.type}"
    return None
