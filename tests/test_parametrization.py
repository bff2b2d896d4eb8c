"""The width parametrizations (deepinit.network.parametrization): every parameter in one named group, the learning
rates Tensor Programs V's Table 3 gives, read back from a real optimizer, and mup equal to sp at its base width."""

import json
import signal

import pytest
import torch

from conftest import compose_cfg, signal_at, train_inprocess
from deepinit.network.init_schemes import init_settings, initialize
from deepinit.network.model import MLP
from deepinit.network.parametrization import param_groups, rescale

LR = 1e-3
# TP5 Table 3 at width 1024 from base width 256 (m = 4): each group's learning rate over the base one
MUP_AT_4X = {
    "adam": {"input.weight": 1, "input.bias": 1, "hidden.weight": 1 / 4, "hidden.bias": 1, "readout.weight": 1 / 4,
             "readout.bias": 1},
    "sgd": {"input.weight": 4, "input.bias": 4, "hidden.weight": 1, "hidden.bias": 4, "readout.weight": 1 / 4,
            "readout.bias": 1},
}  # fmt: skip


def kaiming_mlp(width: int, seed: int = 0, **kwargs) -> MLP:
    torch.manual_seed(seed)
    model = MLP(depth=4, width=width, **kwargs)
    initialize(model, init_settings({"name": "kaiming", "gain": None, "bias_std": 0.0}))
    return model


def optimizer_lrs(model: MLP, param: str, optimizer: str) -> dict[str, float]:
    make = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    built = make(param_groups(model, param, optimizer, LR, base_width=256), lr=LR)
    grouped = [id(p) for group in built.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter once
    return {group["name"]: group["lr"] / LR for group in built.param_groups}


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_mup_gives_each_layer_kind_the_learning_rate_of_tensor_programs_v(optimizer):
    model = kaiming_mlp(1024)
    assert optimizer_lrs(model, "mup", optimizer) == pytest.approx(MUP_AT_4X[optimizer])
    assert set(optimizer_lrs(model, "sp", optimizer).values()) == {1}


def test_norm_gains_and_rezero_alphas_are_vector_and_scalar_like():
    model = kaiming_mlp(1024, norm="layernorm", block="residual", alpha="rezero")
    assert optimizer_lrs(model, "mup", "sgd")["norm"] == 4 and optimizer_lrs(model, "mup", "sgd")["alpha"] == 1
    assert optimizer_lrs(model, "mup", "adam")["norm"] == 1 and optimizer_lrs(model, "mup", "adam")["alpha"] == 1


def test_mup_rescales_only_the_readout_and_equals_sp_at_its_base_width():
    drawn, sp, mup = kaiming_mlp(1024), kaiming_mlp(1024), kaiming_mlp(1024)
    rescale(sp, "sp", base_width=256)
    rescale(mup, "mup", base_width=256)
    for a, b, c in zip(drawn.parameters(), sp.parameters(), mup.parameters(), strict=True):
        assert torch.equal(a, b)  # sp: as the scheme drew them
        if c is not mup.linears[-1].weight:
            assert torch.equal(a, c)
    assert torch.allclose(mup.linears[-1].weight, drawn.linears[-1].weight / 2)  # variance / m, m = 4

    base, at_base = kaiming_mlp(256), kaiming_mlp(256)
    rescale(at_base, "mup", base_width=256)
    assert all(torch.equal(a, b) for a, b in zip(base.parameters(), at_base.parameters(), strict=True))
    assert optimizer_lrs(at_base, "mup", "adam") == optimizer_lrs(at_base, "sp", "adam")

    rescale(at_base, "mup", base_width=256, zero_readout=True)
    assert not at_base.linears[-1].weight.any()


TINY = ("depth=3", "trainer.max_steps=20", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "stats=off",
        "speed=off")  # fmt: skip


def summary_of(runs_dir) -> dict:
    (folder,) = [p for p in runs_dir.iterdir() if (p / "summary.json").exists()]
    return json.loads((folder / "summary.json").read_text()) | {"folder": folder.name}


@pytest.mark.slow
def test_mup_at_its_base_width_ends_as_sp_and_a_wider_run_trains_with_tp5s_rates(tmp_path, mnist_root):
    runs = {}
    for param in ("sp", "mup"):
        done = train_inprocess(f"param={param}", "param.base_width=256", "width=256", *TINY,
                               runs_dir=tmp_path / param, data_root=mnist_root)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        runs[param] = summary_of(tmp_path / param)
    sp, mup = runs["sp"], runs["mup"]
    for key in ("test_acc", "test_loss", "train_loss"):
        assert mup["metrics"][key] == pytest.approx(sp["metrics"][key], rel=1e-5, abs=1e-6), key
    assert (sp["config"]["param"], mup["config"]["param"]) == ("sp", "mup base_width=256")
    assert sp["learning_rates"] == {"all": 3e-4}
    assert set(mup["learning_rates"].values()) == {3e-4}
    assert "_mup-base_width=256_" in mup["folder"] and "sp" not in sp["folder"].split("_")

    done = train_inprocess("param=mup", "param.base_width=256", "width=1024", "trainer.max_steps=2", *TINY[2:],
                           "depth=3", runs_dir=tmp_path / "wide", data_root=mnist_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    wide = summary_of(tmp_path / "wide")
    assert {name: lr / 3e-4 for name, lr in wide["learning_rates"].items()} == pytest.approx(MUP_AT_4X["adam"])


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["param=mup", "depth=2"], "param=mup scales the hidden layers with width, and depth=2 has none; choose depth"),
        (["param=mup", "param.base_width=0"], "param.base_width must be an integer >= 1 (got 0)"),
        (["param.name=ntk"], "unknown param.name 'ntk'; choose one of: sp, mup"),
        (["param=ntk"], "unknown param 'ntk'; choose one of: mup, sp"),
    ],
)
def test_bad_parametrizations_are_one_line(tmp_path, overrides, says):
    done = train_inprocess(*overrides, runs_dir=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert says in line, line


@pytest.mark.slow
def test_the_batched_launcher_trains_sp_and_mup_runs_of_one_width_and_every_lr_as_one_group(tmp_path, mnist_root):
    done = train_inprocess("-m", "hydra/launcher=batched", "param=sp,mup", "init=kaiming,xavier", "optim.lr=1e-3,3e-4",
                           "width=512", "param.base_width=128", *TINY[1:], "depth=3", "trainer.max_steps=5",
                           runs_dir=tmp_path, data_root=mnist_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert "runs alone" not in out and "batched group of 8" in out, out[-3000:]
    summaries = [json.loads(p.read_text()) for p in tmp_path.rglob("summary.json")]
    assert len(summaries) == 8 and all(s["status"] == "ok" for s in summaries)
    for s in summaries:  # each member's own rates, as its lone run's optimizer has them
        lr, rates = s["settings"]["optim"]["lr"], s["learning_rates"]
        if s["settings"]["param"]["name"] == "sp":
            assert rates == {"all": lr}
        else:
            assert {name: rate / lr for name, rate in rates.items()} == pytest.approx(MUP_AT_4X["adam"])


def test_a_finished_run_from_before_param_existed_counts_as_an_sp_run():
    """A rerun sweep compares its jobs' settings with their finished summaries' (Settings.same_results): a summary
    written before param= existed has no param group, and must not send its job to train again."""
    sp, mup, zero = (compose_cfg("depth=3", *extra) for extra in ([], ["param=mup"], ["param.zero_readout=true"]))
    before = {k: v for k, v in sp.config.items() if k != "param"}
    assert sp.same_results(before)
    assert not mup.same_results(before) and not zero.same_results(before)


def test_the_step0_theory_predicts_the_logits_of_a_rescaled_readout(mnist_module):
    """mup at 4x its base width quarters the readout's variance: the theory's logits q, given that multiplier,
    matches the logits measured on real MNIST; the scheme's own readout scale would predict 4x too much."""
    from deepinit.theory.profile import predict_model

    x = mnist_module.sample_batch(512, seed=0).flatten(1)
    model = kaiming_mlp(1024)
    readout_var = rescale(model, "mup", base_width=256)
    with torch.no_grad():
        measured = model(x).double().square().mean().item()
    inputs = {"scheme": "kaiming", "gain": 2**0.5, "bias_std": 0.0, "input_sqr": x.double().square().mean().item()}
    told, _ = predict_model(model, readout_var=readout_var, **inputs)
    untold, _ = predict_model(model, **inputs)
    assert readout_var == 0.25
    assert 0.7 < measured / told.q[-1] < 1.4, (measured, told.q[-1])
    assert measured / untold.q[-1] < 0.4


@pytest.mark.slow
def test_a_stopped_mup_run_resumes_with_its_groups_and_ends_as_the_uninterrupted_one(tmp_path, mnist_root):
    """The optimizer's six named groups and their Adam state go into the checkpoint and come back on resume=."""
    args = ["param=mup", "param.base_width=32", "width=128", "depth=3", "trainer.max_steps=300",
            "trainer.max_epochs=-1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=4",
            "stats.every_n_steps=10", "stats.figures=false", "speed=off"]  # fmt: skip
    whole = train_inprocess(*args, runs_dir=tmp_path / "whole", data_root=mnist_root)
    assert whole.returncode == 0, whole.stderr[-2000:]
    reference = summary_of(tmp_path / "whole")

    done, run = signal_at(tmp_path / "stopped", mnist_root, 120, args, signal.SIGTERM)
    assert done.returncode == 143 and json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    resumed = train_inprocess(f"resume={run}", runs_dir=tmp_path / "unused", data_root=mnist_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = summary_of(tmp_path / "stopped")
    assert summary["resumed"] and summary["steps"] == reference["steps"] == 300
    assert summary["learning_rates"] == reference["learning_rates"] and len(summary["learning_rates"]) == 6
    for key in ("test_acc", "test_loss"):
        assert summary["metrics"][key] == pytest.approx(reference["metrics"][key], abs=1e-4), key
