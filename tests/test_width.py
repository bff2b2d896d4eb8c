"""Width: the abc-parametrization's exponents (deepinit.theory.width), the coord statistics (stats group `coords`)
and the coord check's sweep report (deepinit.sweep.coord_report), on real MNIST runs."""

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
from tensorboard.plugins.custom_scalar import layout_pb2

from conftest import compose_cfg, read_events, train_inprocess
from deepinit.network import parametrization
from deepinit.network.init_schemes import init_settings, initialize
from deepinit.network.model import MLP
from deepinit.network.parametrization import Exponents
from deepinit.observe.recorder import LayerRecorder
from deepinit.settings.records import StatsSettings
from deepinit.theory.width import width_line, width_scaling

# docs/theory.md 9's table: the exponent of width in a step's change, input / hidden / logits, and the regime
CHANGES = {
    ("sp", "adam"): ((0, 1, 1), "unstable"),
    ("sp", "sgd"): ((-0.5, 0.5, 1), "unstable"),
    ("mup", "adam"): ((0, 0, 0), "feature learning"),
    ("mup", "sgd"): ((0, 0, 0), "feature learning"),
}


@pytest.mark.parametrize(("param", "optimizer"), list(CHANGES))
def test_the_width_exponents_are_the_abc_parametrizations(param, optimizer):
    scaling = width_scaling(param, optimizer)
    (input_, hidden, logits), regime = CHANGES[(param, optimizer)]
    assert scaling.change == {"input": input_, "hidden": hidden, "readout": logits}
    assert scaling.regime == regime
    assert scaling.output == {"input": 0, "hidden": 0, "readout": -0.5 if param == "mup" else 0}


def test_sp_is_stable_only_with_a_learning_rate_falling_as_one_over_width_and_sgd_is_then_a_kernel():
    sgd, adam = width_scaling("sp", "sgd"), width_scaling("sp", "adam")
    assert (sgd.stable_lr, sgd.stable_regime) == (-1, "kernel")
    assert sgd.stable_change == {"input": -1.5, "hidden": -0.5, "readout": 0}
    assert (adam.stable_lr, adam.stable_regime) == (-1, "feature learning")  # but for its input layer:
    assert "but for the input layer (~ width^-1)" in width_line(adam, "sp")


def test_the_exponents_follow_the_parametrizations_rules(monkeypatch):
    # mup's hidden layers at sp's Adam rate: their change grows with width again
    rules = {**parametrization.RULES["mup"], "hidden": Exponents(0, 0, 0)}
    monkeypatch.setitem(parametrization.RULES, "mup", rules)
    scaling = width_scaling("mup", "adam")
    assert (scaling.change["hidden"], scaling.regime) == (1, "unstable")


def kaiming_mlp(width: int, **kwargs) -> MLP:
    torch.manual_seed(0)
    model = MLP(depth=4, width=width, **kwargs)
    initialize(model, init_settings({"name": "kaiming", "gain": None, "bias_std": 0.0}))
    return model


def coords_recorder() -> LayerRecorder:
    settings = StatsSettings.from_dict(
        {"enabled": True, "every_n_steps": 1, "histogram_every_n_steps": 0, "groups": ["coords"], "figures": False,
         "profile_points": 2, "csv_file": None, "isometry_max_depth": 0}
    )  # fmt: skip
    return LayerRecorder(settings)


def record(recorder: LayerRecorder, model: MLP, step: int, x: torch.Tensor) -> None:
    recorder.hook(step)
    model(x).sum().backward()
    recorder.before_update()
    with torch.no_grad():  # an "update" that changes every layer
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    recorder.end_step()


def outputs_of(model: MLP, x: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's pre-activation (its Linear's output, the logits last) in a forward on x."""
    outputs: list[torch.Tensor] = []
    handles = [tap.register_forward_hook(lambda m, i, out: outputs.append(out.detach())) for tap in model.taps]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return outputs


def mean_abs(tensors) -> list[float]:
    return [t.abs().mean().item() for t in tensors]


def test_the_change_is_measured_on_the_first_batch_whichever_batch_a_step_saw(tmp_path, mnist_module):
    model = kaiming_mlp(64, norm="batchnorm")
    recorder = coords_recorder()
    recorder.open(model, None, tmp_path)
    x = mnist_module.splits["train"][0]
    first, other = x[:32], x[32:64]
    at_init = outputs_of(copy.deepcopy(model), first)
    record(recorder, model, 0, first)
    # step 1 sees another batch: its change is taken on the first one, with the weights before its update, and
    # that extra forward leaves the batch norms' running statistics as training alone leaves them
    twin = copy.deepcopy(model)
    now_on_first, now_on_other = outputs_of(copy.deepcopy(model), first), outputs_of(twin, other)
    record(recorder, model, 1, other)
    for kept, trained in zip(twin.buffers(), model.buffers(), strict=True):
        assert torch.equal(kept, trained)
    (step0, l1_0), (step1, l1_1) = recorder.history[("coords", "l1")]
    (_, delta_0), (_, delta_1) = recorder.history[("coords", "delta_l1")]
    assert (step0, step1) == (0, 1)
    assert l1_0 == pytest.approx(mean_abs(at_init), rel=1e-5) and list(delta_0) == [0.0] * 4
    assert l1_1 == pytest.approx(mean_abs(now_on_other), rel=1e-5)
    assert delta_1 == pytest.approx(mean_abs(a - b for a, b in zip(now_on_first, at_init, strict=True)), rel=1e-5)
    assert min(delta_1) > 0

    # a resumed run goes on measuring from the same first outputs
    resumed = coords_recorder()
    resumed.load_state_dict(recorder.state_dict())
    resumed.open(model, None, tmp_path)
    later = outputs_of(copy.deepcopy(model), first)
    record(resumed, model, 2, first)  # the first batch again: the step's own outputs
    (_, delta_2) = resumed.history[("coords", "delta_l1")][-1]
    assert delta_2 == pytest.approx(mean_abs(a - b for a, b in zip(later, at_init, strict=True)), rel=1e-5)


def read_coord_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_the_coord_check_reports_each_layers_change_against_width_beside_the_theory(tmp_path, mnist_root):
    done = train_inprocess("-m", "experiment=coord_check", "optim=adam", "width=64,256", "seed=0", "depth=3",
                           "sweep_name=coord", runs_dir=tmp_path, data_root=mnist_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp_path / "coord"
    rows = read_coord_csv(sweep / "coord.csv")
    assert list(rows[0]) == ["param", "optimizer", "width", "seed", "step", "layer", "l1", "delta_l1"]
    assert {(r["param"], r["width"]) for r in rows} == {("sp", "64"), ("sp", "256"), ("mup", "64"), ("mup", "256")}
    assert {int(r["step"]) for r in rows} == set(range(6)) and {int(r["layer"]) for r in rows} == {1, 2, 3}
    assert all(float(r["delta_l1"]) == 0 for r in rows if r["step"] == "0")
    # at its base width mup is sp: the same sizes, step by step
    at_base = {p: [float(r["l1"]) for r in rows if (r["param"], r["width"]) == (p, "64")] for p in ("sp", "mup")}
    assert at_base["mup"] == pytest.approx(at_base["sp"], rel=1e-5)

    # report.md's slopes are those of coord.csv's changes, beside the theory's exponent for the logits
    report = (sweep / "report.md").read_text()
    for param, theory in (("sp", "+1"), ("mup", "+0")):
        change = {int(r["width"]): float(r["delta_l1"]) for r in rows
                  if (r["param"], r["step"], r["layer"]) == (param, "5", "3")}  # fmt: skip
        slope = math.log2(change[256] / change[64]) / 2
        (line,) = [line for line in report.splitlines() if line.startswith(f"| {param} | adam | 3 (logits) |")]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[-3]) == pytest.approx(slope, abs=0.006) and cells[-1] == theory
    assert (sweep / "report_coord.png").stat().st_size > 10_000
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    regimes = {s["config"]["param"].split()[0]: s["theory"]["regime"] for s in summaries.values() if "theory" in s}
    assert regimes == {"sp": "unstable", "mup": "feature learning"}
    assert np.isfinite([float(r["l1"]) for r in rows]).all()
    # TensorBoard's Custom Scalars: the story, then the coords charts; no empty Signal section
    (layout_event,) = read_events(next(sweep.glob("*width=64"))).Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(layout_event.tensor_proto.string_val[0])
    assert [c.title for c in layout.category] == ["Overview", "coords"]


def test_a_finished_run_from_before_data_shuffle_existed_counts_as_shuffled():
    """A rerun sweep does not retrain a finished job whose summary predates data.shuffle (Settings.AS_BEFORE)."""
    shuffled, fixed = compose_cfg("depth=3"), compose_cfg("depth=3", "data.shuffle=false")
    before = json.loads(json.dumps(shuffled.config))
    del before["data"]["shuffle"]
    assert shuffled.same_results(before)
    assert fixed.differing(before) == {"data.shuffle": ("(unset)", False)}


@pytest.mark.slow
def test_the_lr_transfer_report_gives_each_widths_best_rate_from_the_tail_of_its_training_loss(tmp_path, mnist_root):
    lrs = (2**-12, 2**-9, 2**-6)
    done = train_inprocess("-m", "experiment=lr_transfer", "width=32,64", f"optim.lr={','.join(map(str, lrs))}",
                           "depth=3", "param.base_width=32", "trainer.max_steps=40", "trainer.val_check_interval=40",
                           "trainer.limit_val_batches=1", "sweep_name=transfer", runs_dir=tmp_path,
                           data_root=mnist_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp_path / "transfer"
    rows = read_coord_csv(sweep / "lr_transfer.csv")
    assert list(rows[0]) == ["param", "optimizer", "width", "lr", "seed", "steps", "train_loss", "val_acc", "status"]
    assert len(rows) == 12 and {r["steps"] for r in rows} == {"40"} and {r["status"] for r in rows} == {"ok"}

    # train_loss: the mean of the losses logged in the last tenth of the steps, as TensorBoard has them
    name = ("optim.lr=0.001953125,", "param=mup,width=64")
    (job,) = [p.parent for p in sweep.glob("*/summary.json") if all(part in p.parent.name for part in name)]
    losses = [e.value for e in read_events(job).Scalars("Overview/loss, train")]
    assert len(losses) == 40
    (row,) = [r for r in rows if (r["param"], r["width"], float(r["lr"])) == ("mup", "64", 2**-9)]
    assert float(row["train_loss"]) == pytest.approx(np.mean(losses[-4:]), rel=1e-6)

    # report.md's best rate per width is the lowest training loss of lr_transfer.csv
    report = (sweep / "report.md").read_text()
    for param in ("sp", "mup"):
        best = {}
        for width in ("32", "64"):
            here = {float(r["lr"]): float(r["train_loss"]) for r in rows if (r["param"], r["width"]) == (param, width)}
            best[width] = math.log2(min(here, key=here.get))
        (line,) = [line for line in report.splitlines() if line.startswith(f"| {param} | adam | 2^")]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert [c.split()[0] for c in cells[2:4]] == [f"2^{best['32']:g}", f"2^{best['64']:g}"]
        assert float(cells[-1]) == best["64"] - best["32"]
    assert (sweep / "report_lr_transfer.png").stat().st_size > 10_000
