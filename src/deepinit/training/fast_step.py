"""The training step without host syncs: fused optimizer, divergence tracked on the device, and on CUDA the
whole step (forward, loss, backward, update) captured once as a CUDA graph and replayed.

These networks are small per layer, so a step's time is launch and Python overhead, not arithmetic: on an
H100 the plain eager loop runs ~5x slower than its kernels. A graph replays the step's hundreds of kernels
in one launch. Three things make that possible and keep the results those of the eager step:

- No host sync inside the step. The eager step asks "is the loss finite?" on the host every step (a sync
  that stalls the GPU queue); here the answer stays on the device: the first non-finite step, its loss and
  its batch are recorded there, and every later update is skipped through the fused optimizer's `found_inf`
  (the mechanism AMP's GradScaler uses), so the weights stay exactly those the eager step leaves. The host
  reads the flags every `check_every` steps and then stops the run with the same divergence record.
- Static shapes and buffers: batches are copied into fixed input tensors; a batch of another size (the
  epoch's last) runs the same step eagerly.
- A step somebody observes (LayerStats records it: the module is told so) runs eagerly, so hooks see real
  tensors; the graph and the eager step share parameters, gradients and optimizer state (`Graphed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps on a side stream before capture (lazy init of cuBLAS, autograd, optimizer state)

T = TypeVar("T")


def on_side_stream(fn: Callable[[], T], device: torch.device) -> T:
    """fn() on a fresh CUDA stream, ordered after the current stream's work and before its next: the eager
    warm-up steps before a capture run off the default stream, as the capture will."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        out = fn()
    torch.cuda.current_stream(device).wait_stream(side)
    return out


def capture(fn: Callable[[], T], what: str) -> tuple[torch.cuda.CUDAGraph, T] | None:
    """fn() captured as a CUDA graph (nothing runs until replay) and its outputs, the tensors each replay
    rewrites; None, with one log line, if it cannot be captured: that costs speed, never the run."""
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # TensorBoard's writer thread is not ours
            out = fn()
    except Exception as e:
        log.warning(f"{what}: CUDA graph capture failed ({type(e).__name__}: {e}); running eagerly")
        return None
    return graph, out


def fused_optimizer(
    factory: Callable[..., torch.optim.Optimizer], params: Any, capturable: bool
) -> torch.optim.Optimizer | None:
    """The optimizer with fused=True (one kernel for every parameter's update, and the `found_inf` skip), or
    None where the optimizer has no fused implementation. capturable: for a CUDA graph, where the optimizer has
    the flag (Adam keeps its step count on the device with it; SGD has no such state and no flag)."""
    params = list(params)
    attempts = [{"fused": True, "capturable": True}, {"fused": True}] if capturable else [{"fused": True}]
    for extra in attempts:
        try:
            return factory(params, **extra)
        except (TypeError, RuntimeError, ValueError):
            continue
    return None


class Graphed:
    """A piece of a training step, a function of fixed-shape inputs, replayed from a CUDA graph where it can be
    and run eagerly where it must: the one state machine the lone fast step (FastStep) and the batched group's two
    half-steps (deepinit.batched.GroupStep) share.

    - wanted (CUDA, fast=true): WARMUP_STEPS eager calls on a side stream (lazy init of cuBLAS, autograd,
      optimizer state), then one capture on static copies of the inputs, then replays;
    - a call the caller says is observed (a recorder reads this step's tensors), or whose inputs have another
      shape (the epoch's last batch), runs eagerly on the same parameters, gradients and optimizer state;
    - a capture that fails costs one log line and speed (eager from then on), never the run.
    grads_of: the optimizer whose gradients the piece writes (it runs backward): zeroed before each eager call, and
    kept allocated once captured, because the graph's backward writes into those very tensors.
    """

    def __init__(
        self, what: str, device: torch.device, wanted: bool, grads_of: torch.optim.Optimizer | None = None
    ) -> None:
        self.what, self.device, self.grads_of = what, device, grads_of
        self.wanted = wanted and device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: Any = None  # the captured call's outputs, rewritten by every replay
        self.static: tuple[Tensor, ...] | None = None
        self.eager_calls = 0

    def __call__(
        self,
        inputs: tuple[Tensor, ...],
        observed: bool,
        captured_fn: Callable[..., T],
        eager_fn: Callable[..., T] | None = None,
    ) -> tuple[T, bool]:
        """(outputs, whether replayed). The graph holds captured_fn(*static inputs); eager calls run
        eager_fn(*inputs) (default: captured_fn), which may go through Lightning where the graph cannot."""
        if self.static is None:
            self.static = tuple(torch.empty_like(t) for t in inputs)
        replayable = (
            self.wanted and not observed and all(a.shape == b.shape for a, b in zip(inputs, self.static, strict=True))
        )
        if replayable and self.graph is None and self.eager_calls >= WARMUP_STEPS:
            if self.grads_of is not None:
                self.grads_of.zero_grad(set_to_none=True)  # the graph's backward allocates (and rewrites) them
            static = self.static
            captured = capture(lambda: captured_fn(*static), self.what)
            if captured is None:
                self.wanted = False  # this call then runs eagerly from fresh gradients, as before the capture
            else:
                self.graph, self.out = captured
        if replayable and self.graph is not None:
            for buffer, t in zip(self.static, inputs, strict=True):
                buffer.copy_(t)
            self.graph.replay()
            return self.out, True
        if self.grads_of is not None:
            self.grads_of.zero_grad(set_to_none=self.graph is None)
        fn = eager_fn or captured_fn
        if self.wanted and self.graph is None:
            out = on_side_stream(lambda: fn(*inputs), self.device)
        else:
            out = fn(*inputs)
        self.eager_calls += 1
        return out, False


class FastStep:
    """One training step of `model` on (x, y) with cross-entropy, with no host sync; see the module docstring.

    `backward(loss)` and `step()` are how the eager variant runs them (Lightning's manual_backward and optimizer
    step, so callbacks' hooks fire); the captured variant calls loss.backward() and the torch optimizer directly.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, graph: bool) -> None:
        self.model, self.optimizer, self.device = model, optimizer, device
        self.graphed = Graphed("fast step", device, graph, grads_of=optimizer)
        zero = {"device": device}
        self.counter = torch.zeros((), dtype=torch.long, **zero)  # the step being run, counted on the device
        self.diverged_at = torch.full((), -1, dtype=torch.long, **zero)
        self.diverged_loss = torch.zeros((), **zero)
        self.diverged_n = torch.zeros((), dtype=torch.long, **zero)
        # the optimizer's found_inf: 1 from the first non-finite loss on. float32 whatever the run's precision: the
        # fused kernels take no other (and under precision=64-true this runs where float64 is the default dtype)
        self.skip = torch.zeros((), dtype=torch.float32, **zero)
        self.loss = torch.zeros((), **zero)
        self.acc = torch.zeros((), **zero)
        self.diverged_x: Tensor | None = None  # sized by the first batch: the largest one
        optimizer.found_inf = self.skip

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        return self.graphed.graph

    def start_at(self, step: int) -> None:
        self.counter.fill_(step)

    def _body(self, x: Tensor, y: Tensor, backward: Callable[[Tensor], None], step: Callable[[], Any]) -> None:
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        backward(loss)
        loss = loss.detach()
        first = ~torch.isfinite(loss) & (self.diverged_at < 0)
        self.diverged_at.copy_(torch.where(first, self.counter, self.diverged_at))
        self.diverged_loss.copy_(torch.where(first, loss, self.diverged_loss))
        self.diverged_n.masked_fill_(first, len(x))
        kept = self.diverged_x[: len(x)]
        kept.copy_(torch.where(first, x.flatten(1), kept))
        self.skip.copy_((self.diverged_at >= 0).to(self.skip.dtype))
        step()  # fused: skipped on the device when skip == 1
        self.counter.add_(1)
        self.loss.copy_(loss)
        self.acc.copy_((logits.argmax(1) == y).float().mean())

    def __call__(
        self, x: Tensor, y: Tensor, backward: Callable[[Tensor], None], step: Callable[[], Any], observed: bool
    ) -> bool:
        """Run one step: replayed from the graph when it can be, else eagerly (observed, odd-sized, warm-up).
        Returns whether it was replayed (then `step` was not called: the graph holds the optimizer's update)."""
        if self.diverged_x is None:
            self.diverged_x = torch.zeros_like(x.flatten(1))
        _, replayed = self.graphed(
            (x, y),
            observed,
            captured_fn=lambda x, y: self._body(x, y, lambda loss: loss.backward(), self.optimizer.step),
            eager_fn=lambda x, y: self._body(x, y, backward, step),
        )
        return replayed

    def read(self) -> dict[str, Any]:
        """The host's one look at the device state (a sync): last loss and accuracy, and divergence if any."""
        state = [self.loss, self.acc, self.diverged_at, self.diverged_loss, self.diverged_n]
        loss, acc, at, bad_loss, n = torch.stack([t.double() for t in state]).tolist()
        out: dict[str, Any] = {"loss": loss, "acc": acc, "diverged_at": None}
        if at >= 0:
            out.update(diverged_at=int(at), diverged_loss=bad_loss, diverged_x=self.diverged_x[: int(n)])
        return out
