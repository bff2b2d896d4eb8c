"""LayerStats on real MNIST runs: values read back from disk against direct computation."""

import copy
import math

import numpy as np
import pytest
import torch
from tensorboard.plugins.custom_scalar import layout_pb2

from conftest import compose_cfg, read_csv, read_events
from deepinit.network.activations import ACTIVATIONS
from deepinit.observe import stats
from deepinit.observe.recorder import OVERVIEW_CARDS, SIGNAL, signal_view
from deepinit.run.parts import build
from deepinit.run.train import run

QUICK = ["trainer.limit_val_batches=0", "trainer.enable_checkpointing=true", "width=64"]


def final_weights(run_dir):
    (ckpt,) = (run_dir / "checkpoints").glob("*.ckpt")
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_step0_statistics_in_event_files_equal_a_direct_computation(tmp_path, mnist_root):
    cfg = compose_cfg("depth=6", "trainer.max_steps=3", "stats.every_n_steps=1", *QUICK, data_root=mnist_root)
    datamodule, module, _ = build(cfg)  # same seed: the very weights and first batch the run will use
    initial = copy.deepcopy(module.model)
    x, _ = next(iter(datamodule.train_dataloader()))
    summary = run(cfg, tmp_path)
    assert summary.status == "ok"

    with torch.no_grad():
        pre, post, h = [], [], x.flatten(1)
        for linear, act in initial.layers():
            h = linear(h)
            pre.append(h)
            if act is not None:
                h = act(h)
                post.append(h)
    events = read_events(tmp_path)
    table = read_csv(tmp_path)
    for group, tensors in (("preactivations", pre), ("activations", post)):
        for quantity, fn in (("mean", torch.mean), ("std", torch.std), ("sqr", lambda t: t.square().mean())):
            for layer, t in enumerate(tensors, start=1):
                tag = f"{group}/{quantity}/layer_{layer:04d}"
                (first, *later) = events.Scalars(tag)
                assert first.step == 0 and len(later) == 2  # step 0, then every step
                assert first.value == pytest.approx(fn(t).item(), rel=1e-5, abs=1e-7), tag
                assert table[(0, group, quantity)][layer] == pytest.approx(fn(t).item(), rel=1e-5, abs=1e-7)
    dead = [(p <= 0).all(0).float().mean().item() for p in pre[:-1]]
    assert [table[(0, "activations", "dead")][i] for i in range(1, 6)] == pytest.approx(dead)
    assert [table[(0, "weights", "std")][i] for i in range(1, 7)] == pytest.approx(
        [lin.weight.std().item() for lin in initial.linears], rel=1e-6
    )


def test_update_data_ratio_is_the_change_actually_applied(tmp_path, mnist_root):
    cfg = compose_cfg("depth=4", "trainer.max_steps=1", "stats.every_n_steps=1", *QUICK, data_root=mnist_root)
    _, module, _ = build(cfg)
    before = {f"model.{k}": v.clone() for k, v in module.model.state_dict().items()}
    run(cfg, tmp_path)
    after = final_weights(tmp_path)
    table = read_csv(tmp_path)
    for layer in range(1, 5):
        key = f"model.linears.{layer - 1}.weight"
        applied = (after[key] - before[key]).std() / before[key].std()
        assert not torch.equal(after[key], before[key])
        measured = table[(0, "updates", "log10_update_data_ratio")][layer]
        assert measured == pytest.approx(math.log10(applied.item()), abs=1e-4)
    # Adam's first step moves every weight by about lr: log10(3e-4 / std(W)), the healthy -3 neighbourhood
    assert -4.5 < table[(0, "updates", "log10_update_data_ratio")][2] < -2


def test_stats_observe_only_identical_weights_on_and_off(tmp_path, mnist_root):
    common = ["depth=8", "trainer.max_steps=25", *QUICK]
    run(compose_cfg(*common, "stats=off", data_root=mnist_root), tmp_path / "off")
    run(compose_cfg(*common, "stats=full", "stats.every_n_steps=3", data_root=mnist_root), tmp_path / "on")
    assert (tmp_path / "on" / "layer_stats.csv").exists() and not (tmp_path / "off" / "layer_stats.csv").exists()
    off, on = final_weights(tmp_path / "off"), final_weights(tmp_path / "on")
    assert off.keys() == on.keys()
    for key in off:
        assert torch.equal(off[key], on[key]), key


def test_tensorboard_layout_figures_and_histograms(tmp_path, mnist_root):
    cfg = compose_cfg(
        "depth=12", "trainer.max_steps=4", "stats=full", "stats.every_n_steps=2", *QUICK, data_root=mnist_root
    )
    run(cfg, tmp_path)
    events = read_events(tmp_path)
    (layout_event,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(layout_event.tensor_proto.string_val[0])
    charts = {chart.title: chart.multiline.tag for cat in layout.category for chart in cat.chart}
    titles = [cat.title for cat in layout.category]
    assert titles[0] == "Overview" and titles[1].startswith("Signal")  # the story first
    for group, quantities in stats.GROUPS.items():
        for quantity in quantities:
            # relu records dead units, not saturation; a plain MLP has no normalized inputs (test_architectures);
            # coords only where asked (test_width)
            if quantity in ("saturated",) or group in ("normalized", "coords"):
                continue
            assert charts[f"{group}/{quantity}"] == [rf"^{group}/{quantity}/layer_\d+$"]
    assert len([t for t in events.Tags()["scalars"] if t.startswith("activations/sqr/")]) == 11
    assert len([t for t in events.Tags()["scalars"] if t.startswith("gradients/sqr/")]) == 12
    cards = {"Signal/depth profile, gradients", "Signal/heat map, activations", "Signal/heat map, gradients",
             OVERVIEW_CARDS["depth profile, activations"]}  # fmt: skip
    assert cards <= set(events.Tags()["images"])
    (first, *_, last) = events.Images(OVERVIEW_CARDS["depth profile, activations"])  # init's, with theory; the end's
    assert (first.step, last.step) == (0, 4) and first.width <= 520  # a TensorBoard card's size, not a thumbnail
    assert (tmp_path / "figures" / "depth_profile.png").stat().st_size > 10_000
    tag = SIGNAL[("activations", "sqr")][0]
    theory = read_events(tmp_path / "theory").Scalars(tag)  # the sibling run: a line in the measured value's card
    assert [e.step for e in theory] == [e.step for e in events.Scalars(tag)] == [0, 2]  # every recorded step
    assert len({e.value for e in theory}) == 1 and abs(theory[0].value) < 0.05  # kaiming relu: the signal kept
    (hist, *_) = events.Histograms("hist_activations/layer_0012")  # step 0: the logits of the first batch
    assert hist.step == 0 and hist.histogram_value.num == 128 * 10
    assert sum(hist.histogram_value.bucket) == 128 * 10
    logits = float(events.Scalars("preactivations/mean/layer_0012")[0].value)
    assert hist.histogram_value.min <= logits <= hist.histogram_value.max
    assert hist.histogram_value.sum / hist.histogram_value.num == pytest.approx(logits, rel=1e-4, abs=1e-6)
    assert len(events.Tags()["histograms"]) == 2 * 12  # activations and gradients, every layer


def test_the_signal_growth_holds_where_the_signal_overflows_or_underflows():
    act, grad = SIGNAL[("activations", "sqr")][0], SIGNAL[("gradients", "sqr")][0]
    vanishing = np.array([1.0, 1e-2, 1e-4, 0.0, 0.0])  # 0.01's signal: 100x smaller a layer, then underflow
    exploding = np.array([np.inf, 1e8, 1e4, 1.0])  # gradients grow backwards, from the last layer, until inf
    view = signal_view({("activations", "sqr"): vanishing, ("gradients", "sqr"): exploding})
    assert view[act] == pytest.approx(-2.0) and view[grad] == pytest.approx(4.0)
    assert signal_view({("activations", "sqr"): np.array([0.0, 0.0])}) == {}  # nothing to say, nothing drawn


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("depth", [2, 100])
def test_every_activation_at_depth_2_and_100(tmp_path, mnist_root, activation, depth):
    cfg = compose_cfg(
        f"depth={depth}",
        f"activation={activation}",
        "trainer.max_steps=2",
        "stats.every_n_steps=1",
        "init=orthogonal",
        "width=32",
        "trainer.limit_val_batches=0",
        "stats.figures=false",  # the table only (figures: test_tensorboard_layout_figures_and_histograms)
        data_root=mnist_root,
    )
    assert run(cfg, tmp_path).status == "ok"
    table = read_csv(tmp_path)
    assert sorted(table[(1, "gradients", "sqr")]) == list(range(1, depth + 1))
    assert sorted(table[(1, "activations", "sqr")]) == list(range(1, depth))
    health = {
        "relu": "dead",
        "leaky_relu": "dead",
        "gelu": "dead",
        "selu": "dead",
        "tanh": "saturated",
        "sigmoid": "saturated",
    }.get(activation)
    recorded = {q for (_, g, q) in table if g == "activations"}
    assert recorded == {"mean", "std", "sqr", "nonfinite"} | ({health} if health else set())
    # Finite, or -inf where the update was genuinely lost: sigmoid at depth 100 (chi ~ 0.045 per layer) leaves
    # early-layer gradients so small that Adam's largest step, lr * g / eps, is below float32 resolution of W.
    grad_data = table[(1, "weight_grads", "grad_data_ratio")]
    for layer, ratio in table[(1, "updates", "log10_update_data_ratio")].items():
        assert math.isfinite(ratio) or (ratio == -math.inf and grad_data[layer] * 3e-4 / 1e-8 < 6e-8), layer


def test_divergence_is_reported_at_the_layer_the_message_names(tmp_path, mnist_root):
    cfg = compose_cfg("init=normal", "depth=50", "trainer.max_steps=3", *QUICK[:2], data_root=mnist_root)
    summary = run(cfg, tmp_path)
    assert summary.status == "diverged"
    table = read_csv(tmp_path)
    # A layer's output is its activation's (the last layer's is its pre-activation, the logits).
    outputs = {**table[(0, "preactivations", "nonfinite")], **table[(0, "activations", "nonfinite")]}
    first_bad = min(layer for layer, frac in outputs.items() if frac > 0)
    assert first_bad == summary.divergence.layer
    events = read_events(tmp_path)
    # Layer statistics keep non-finite values out of the charts (the run's final/* HParams metrics are NaN
    # where a diverged run measured nothing, e.g. final/test_acc: that is the table's "not measured").
    stat_tags = [t for t in events.Tags()["scalars"] if t.split("/")[0] in {*stats.GROUPS, "theory", "isometry"}]
    assert stat_tags and all(math.isfinite(e.value) for tag in stat_tags for e in events.Scalars(tag))
    assert (tmp_path / "figures" / "depth_profile.png").exists()
