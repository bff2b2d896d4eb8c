"""The fast training step (fast=true) trains as the plain eager step does (fast=false), on real MNIST.

On CPU the fast step runs without its CUDA graph; everything else (manual optimization, fused optimizer,
divergence tracked on the device and read every `check_every` steps, updates skipped through found_inf) is
the same code the graph replays on CUDA.
"""

import dataclasses

import lightning as L
import pytest
import torch

from conftest import compose_cfg, improved
from deepinit.run.parts import build

LOSS, ACC = "train/loss", "train/acc"  # as Lightning's own TensorBoardLogger writes them


class LossTrajectory(L.Callback):
    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if "train/loss" in trainer.callback_metrics:
            self.losses[trainer.global_step] = trainer.callback_metrics["train/loss"].item()


def quiet_trainer(**kwargs) -> L.Trainer:
    """A Trainer that trains only: no validation, logger, checkpoint, progress bar or summary."""
    settings = dict(accelerator="cpu", limit_val_batches=0, logger=False, enable_checkpointing=False)
    return L.Trainer(**settings | dict(enable_progress_bar=False, enable_model_summary=False) | kwargs)


def fit(mnist_module, *overrides: str, fast: bool, steps: int, check_every: int | None = None, callbacks=(), **trainer):
    """A fresh model for `overrides` trained `steps` steps; returns it and its initial parameters."""
    cfg = compose_cfg(*overrides, f"fast={str(fast).lower()}")
    _, module, _ = build(cfg, mnist_module)
    module.check_every = check_every
    trainer = quiet_trainer(max_steps=steps, callbacks=list(callbacks), **trainer)
    initial = [p.detach().clone() for p in module.parameters()]
    trainer.fit(module, datamodule=mnist_module)
    return module, initial


def trajectory(mnist_module, *overrides: str, fast: bool, steps: int = 50, **trainer):
    losses = LossTrajectory()
    # train/loss logged every step (the fast step logs it at the logging steps only)
    module, initial = fit(
        mnist_module, *overrides, fast=fast, steps=steps, callbacks=[losses], log_every_n_steps=1, **trainer
    )
    assert sorted(losses.losses) == list(range(1, steps + 1))
    dtype = next(module.parameters()).dtype
    return module, initial, torch.tensor([losses.losses[s] for s in range(1, steps + 1)], dtype=dtype)


# Two code paths that run different kernels (fused against torch's default optimizers, the graph's replays
# against eager steps) round differently in float32's last bits, and which bits depends on the kernels the CPU
# picks (avx512, avx2, default); training amplifies a last-bit difference to ~1e-4 over 50 steps, ~5e-2 for Adam
# on near-zero gradients. In float64 the same amplification leaves them within ~1e-11 (measured: equal under all
# three kernel sets here). So trajectories are compared in float64, and float32 is checked one step at a time.
FLOAT64 = {"precision": "64-true"}
TRAJECTORY_RTOL = 1e-9


@pytest.fixture(scope="module")
def fast_trajectory(mnist_module):
    """The fast step's float64 trajectory for an optim= choice, trained once: the eager runs it is compared with
    (torch's default and fused Adam) share it."""
    done = {}

    def of(optim: str):
        if optim not in done:
            done[optim] = trajectory(mnist_module, optim, "depth=10", fast=True, **FLOAT64)
        return done[optim]

    return of


@pytest.mark.slow
@pytest.mark.parametrize(
    "optim, eager_optim",
    [
        ("optim=adam", "optim=adam"),  # torch's default (unfused) Adam, as fast=false runs it
        ("optim=adam", "+optim.fused=true"),
        ("optim=sgd", "optim=sgd"),
    ],
)
def test_fast_step_follows_the_eager_loss_trajectory(mnist_module, fast_trajectory, optim, eager_optim):
    eager, eager_init, eager_curve = trajectory(mnist_module, optim, eager_optim, "depth=10", fast=False, **FLOAT64)
    fast, fast_init, fast_curve = fast_trajectory(optim)
    assert eager.step_kind == "eager" and fast.step_kind == "fast"
    assert fast_curve.dtype == torch.float64 and next(fast.parameters()).dtype == torch.float64
    assert all(torch.equal(a, b) for a, b in zip(eager_init, fast_init, strict=True))  # same seed, same init
    assert improved(eager_curve, 0.5)  # it learned: the comparison is not between two flat lines
    torch.testing.assert_close(fast_curve, eager_curve, rtol=TRAJECTORY_RTOL, atol=0)
    for a, b in zip(eager.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=TRAJECTORY_RTOL, atol=1e-12)


@pytest.mark.parametrize("optim", ["optim=adam", "optim=sgd"])
def test_one_float32_fast_step_updates_as_the_eager_step(mnist_module, optim):
    """One float32 step from the same state: the updates agree to what float32 rounding of the weights allows
    (a few ulps of |w| + |update|), whatever kernels the CPU runs, and are far larger than that (not vacuous)."""
    eager, start = fit(mnist_module, optim, "depth=10", fast=False, steps=1)
    fast, _ = fit(mnist_module, optim, "depth=10", fast=True, steps=1)
    assert fast.step_kind == "fast" and next(fast.parameters()).dtype == torch.float32
    eps, tiny = torch.finfo(torch.float32).eps, torch.finfo(torch.float32).tiny
    for w0, a, b in zip(start, eager.parameters(), fast.parameters(), strict=True):
        update_eager, update_fast = a.detach() - w0, b.detach() - w0
        rounding = 4 * eps * (w0.abs() + update_eager.abs()) + tiny  # tiny: zero biases, updates of 0
        assert ((update_fast - update_eager).abs() <= rounding).all()
        assert (update_eager.abs() / rounding).median() > 10  # a wrong update (lr, momentum, skipped) would show


@pytest.mark.slow
def test_fast_step_learning_curve_matches_the_default_eager_one(mnist_module):
    """fast=true against fast=false as a user runs them (fused against torch's default Adam), 200 steps."""
    _, _, eager_curve = trajectory(mnist_module, "depth=10", fast=False, steps=200)
    _, _, fast_curve = trajectory(mnist_module, "depth=10", fast=True, steps=200)
    # per-batch losses wander apart (Adam, above); their 20-step means, what a chart shows, stay together
    # (measured: within 0.016 while the loss falls from 2.48 to 0.25)
    eager_means, fast_means = eager_curve.view(10, 20).mean(1), fast_curve.view(10, 20).mean(1)
    assert eager_means[-1] < 0.4 and (fast_means - eager_means).abs().max() < 0.03


@pytest.mark.slow
def test_fast_step_logs_what_the_eager_step_logs(mnist_module, tmp_path):
    """The fast step logs train/* at Lightning's logging steps only: the event files hold the same steps and
    the same values as the eager step's, which logs every step (float64 training, see FLOAT64; the events hold
    float32)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from conftest import read_events

    events = {}
    for fast in (False, True):
        logger = TensorBoardLogger(tmp_path, name=str(fast), version="")
        fit(mnist_module, "optim=sgd", "depth=5", fast=fast, steps=120, log_every_n_steps=25, logger=logger, **FLOAT64)
        events[fast] = {tag: read_events(tmp_path / str(fast)).Scalars(tag) for tag in (LOSS, ACC)}
    for tag, eager in events[False].items():
        fast = events[True][tag]
        assert [e.step for e in fast] == [e.step for e in eager] == [24, 49, 74, 99]
        torch.testing.assert_close([e.value for e in fast], [e.value for e in eager], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, step",
    [
        (("init=normal", "depth=50"), 0),  # overflows in the forward of step 0
        (("optim=sgd", "optim.lr=3", "depth=10"), 3),  # updates blow up over a few steps
    ],
)
def test_fast_step_records_divergence_as_the_eager_step_does(mnist_module, overrides, step):
    eager, _ = fit(mnist_module, *overrides, fast=False, steps=60)
    # Read the device's flags only every 7 steps, as on CUDA (every log_every_n_steps): the steps between the
    # divergence and the read must change nothing.
    fast, _ = fit(mnist_module, *overrides, fast=True, steps=60, check_every=7)
    assert eager.divergence.step == step
    assert fast.divergence.step == step and fast.divergence.layer == eager.divergence.layer
    assert str(fast.divergence.loss) in ("nan", "inf") and str(eager.divergence.loss) in ("nan", "inf")
    # The weights the divergence left, exactly: the same fast step stopped before the diverging step (same
    # arithmetic) ends where the run that went on 60 steps ends, so no update came after the divergence.
    stopped, _ = fit(mnist_module, *overrides, fast=True, steps=step, check_every=7)
    assert stopped.divergence is None
    for a, b in zip(stopped.parameters(), fast.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(eager.parameters(), fast.parameters(), strict=True):  # unfused/fused SGD: rounding apart
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fast_step_makes_no_host_sync_between_reads(mnist_module, monkeypatch):
    """On the GPU a host read (.item(), bool(tensor), .tolist()) waits for every queued kernel; the fast step
    makes one every check_every steps and none in between."""
    reads: list[str] = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: (reads.append(_n), _o(self, *a, **k))[1]
        )

    per_step: dict[int, int] = {}

    class CountReads(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.before = len(reads)

    cfg = compose_cfg("depth=5", "width=32", "fast=true")
    _, module, _ = build(cfg, mnist_module)
    module.check_every = 10
    step = module.training_step

    def counted(batch, batch_idx):
        before = len(reads)
        step(batch, batch_idx)
        per_step[module.global_step] = len(reads) - before

    module.training_step = counted
    trainer = quiet_trainer(max_steps=40, callbacks=[CountReads()])
    trainer.fit(module, datamodule=mnist_module)
    assert per_step == {s: int(s % 10 == 0) for s in range(1, 41)}


@pytest.mark.parametrize(
    "override, trainer_args, why",
    [
        ("optim._target_=torch.optim.RMSprop", {}, "optimizer torch.optim.RMSprop has no fused implementation on cpu"),
        (None, {"gradient_clip_val": 1.0}, "trainer.gradient_clip_val (the fast step does not clip gradients)"),
        (None, {"accumulate_grad_batches": 2}, "trainer.accumulate_grad_batches (the fast step updates every batch)"),
        (None, {"precision": "bf16-mixed"}, "trainer.precision=bf16-mixed"),
    ],
)
def test_fast_step_steps_aside_where_it_cannot_run(mnist_module, caplog, override, trainer_args, why):
    cfg = compose_cfg("depth=3", *([override] if override else []))
    _, module, _ = build(cfg, mnist_module)
    trainer = quiet_trainer(max_steps=5, **trainer_args)
    with caplog.at_level("INFO", logger="deepinit.training.module"):
        trainer.fit(module, datamodule=mnist_module)
    assert module.step_kind == "eager" and trainer.global_step == 5
    assert f"fast step off: {why}" in caplog.text


@pytest.mark.parametrize("name, flags", [("Adam", {"fused": True, "capturable": True}), ("SGD", {"fused": True})])
def test_the_fast_optimizer_is_fused_and_capturable_where_it_has_the_flag(name, flags):
    from functools import partial

    from deepinit.training.fast_step import fused_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = fused_optimizer(partial(getattr(torch.optim, name), lr=0.1), iter(params), capturable=True)
    assert optimizer is not None and all(optimizer.defaults[k] == v for k, v in flags.items())
    assert fused_optimizer(partial(torch.optim.RMSprop, lr=0.1), params, capturable=False) is None


@pytest.mark.slow
def test_graph_path_trains_counts_and_stops_as_the_eager_step(mnist_module, graphs_on_cpu, tmp_path):
    """The CUDA-graph path's bookkeeping, on CPU (see graphs_on_cpu): replays between observed eager steps
    (LayerStats every 7 steps) and warm-up give the eager step's losses and step count, and divergence read
    every 7 steps stops the run at the eager step's step with its weights."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from deepinit.observe.layer_stats import LayerStats
    from deepinit.observe.recorder import LayerRecorder

    curves = {}
    for fast in (False, True):
        losses = LossTrajectory()
        quiet = (
            "stats.every_n_steps=7",
            "stats.histogram_every_n_steps=0",
            "stats.figures=false",
            "stats.csv_file=null",
        )
        stats = LayerStats(LayerRecorder(compose_cfg(*quiet).stats))
        logger = TensorBoardLogger(tmp_path, name=str(fast), version="")
        module, _ = fit(
            mnist_module, "optim=sgd", "depth=10", fast=fast, steps=60, callbacks=[losses, stats], logger=logger,
            log_every_n_steps=1, **FLOAT64,
        )  # fmt: skip
        curves[fast] = torch.tensor([losses.losses[s] for s in range(1, 61)], dtype=torch.float64)
    assert module.step_kind == "fast, CUDA graph" and module.fast_step.graph is not None
    assert improved(curves[False], 0.5)
    torch.testing.assert_close(curves[True], curves[False], rtol=TRAJECTORY_RTOL, atol=0)

    overrides = ("optim=sgd", "optim.lr=3", "depth=10")  # diverges at step 3, after the capture
    eager, _ = fit(mnist_module, *overrides, fast=False, steps=60)
    fast, _ = fit(mnist_module, *overrides, fast=True, steps=60, check_every=7)
    assert fast.fast_step.graph is not None
    assert fast.divergence == dataclasses.replace(eager.divergence, loss=fast.divergence.loss)  # step, epoch, layer
    assert str(fast.divergence.loss) in ("nan", "inf")  # nan or inf: == would not do
    stopped, _ = fit(mnist_module, *overrides, fast=True, steps=3, check_every=7)  # the same steps, up to it
    for a, b in zip(stopped.parameters(), fast.parameters(), strict=True):
        assert torch.equal(a, b)  # replays after the divergence changed nothing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA graph needs a GPU (checked on the GPU machine)")
@pytest.mark.parametrize("optim, eager_optim", [("optim=adam", "+optim.fused=true"), ("optim=sgd", "optim=sgd")])
def test_cuda_graph_step_follows_the_eager_step(mnist_module, optim, eager_optim):
    runs = {}
    for fast in (False, True):
        cfg = compose_cfg("depth=10", optim, *([] if fast else [eager_optim]), f"fast={str(fast).lower()}")
        _, module, _ = build(cfg, mnist_module)
        trajectory = LossTrajectory()
        trainer = quiet_trainer(accelerator="cuda", max_steps=100, log_every_n_steps=10, callbacks=[trajectory])
        trainer.fit(module, datamodule=mnist_module)
        runs[fast] = module, trajectory.losses
    (_, eager_losses), (fast, fast_losses) = runs[False], runs[True]
    assert fast.step_kind == "fast, CUDA graph" and fast.fast_step.graph is not None
    steps = list(range(10, 101, 10))  # where the fast step reads its loss (between them it is not read)
    assert set(steps) <= set(fast_losses)
    torch.testing.assert_close(
        torch.tensor([fast_losses[s] for s in steps]),
        torch.tensor([eager_losses[s] for s in steps]),
        rtol=1e-3,
        atol=1e-4,
    )
