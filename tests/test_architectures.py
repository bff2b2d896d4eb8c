"""Normalization and skip connections (deepinit.network.model: norm=, block=, alpha=, init=fixup): the models, their
step-0 theory against real MNIST runs, what the command line accepts and refuses, and how the batched launcher treats
them."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from conftest import compose_cfg, read_csv, read_events, train_cli, train_inprocess
from deepinit.network.model import MLP
from deepinit.run.train import run

# the step-0 statistics, read from layer_stats.csv (no figures drawn at the end)
STEP0 = ["depth=50", "trainer.max_steps=1", "trainer.limit_val_batches=0", "trainer.enable_checkpointing=false",
         "speed=off", "stats.figures=false"]  # fmt: skip


def profile(run_dir, group, quantity):
    values = read_csv(run_dir)[(0, group, quantity)]
    return np.array([values[layer] for layer in sorted(values)])


def band(run_dir):
    """ln(measured / predicted q_l) at step 0 and the predicted sd of ln q_l, layer by layer."""
    return profile(run_dir, "theory", "log_ratio_preactivations_sqr"), profile(
        run_dir, "theory", "log_sd_preactivations"
    )


def test_a_plain_models_parameters_are_unchanged_by_the_options():
    """Checkpoints of earlier runs still load: the identities and norm=none add no parameters or buffers."""
    model = MLP(5, 16)
    assert sorted(model.state_dict()) == sorted(f"linears.{i}.{p}" for i in range(5) for p in ("weight", "bias"))


def test_rezero_starts_as_layer_one_then_the_identity():
    torch.manual_seed(0)
    model = MLP(6, 32, block="residual", alpha="rezero")
    x = torch.randn(8, 784)
    first, last = model.linears[0], model.linears[-1]
    assert torch.allclose(model(x), last(torch.relu(first(x))), atol=1e-6)
    assert [n for n, _ in model.named_parameters() if "linears" not in n] == ["alphas"]


def test_a_residual_block_adds_its_scaled_branch_to_the_stream():
    torch.manual_seed(0)
    model = MLP(4, 32, block="residual", alpha="1/sqrt_L")
    x = torch.randn(8, 784)
    h1 = model.linears[0](x)
    h2 = h1 + 0.5 * model.linears[1](torch.relu(h1))  # 1 / sqrt(4)
    h3 = h2 + 0.5 * model.linears[2](torch.relu(h2))
    assert torch.allclose(model(x), model.linears[3](torch.relu(h3)), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [["block=residual", "alpha=1/sqrt_L"], ["norm=layernorm"], ["norm=batchnorm"],
     ["architecture=residual", "norm=layernorm"]],
)  # fmt: skip
def test_step0_theory_of_normalized_and_residual_relu_lies_within_its_band(tmp_path, mnist_root, overrides):
    """q_l at step 0 on real MNIST, kaiming relu, depth 50: the scaled stream's growth (x (1 + 1/L) a block), or
    normalization's reset, within the predicted finite-width band."""
    assert run(compose_cfg("init=kaiming", *overrides, *STEP0, data_root=mnist_root), tmp_path).status == "ok"
    log_ratio, sd = band(tmp_path)
    assert len(log_ratio) == 50
    # log-normal: the median sits sd^2/2 below the mean; the band is +-2 sd around it (as drawn)
    assert np.all(np.abs(log_ratio + sd**2 / 2) <= 2 * sd + 0.05), (log_ratio, sd)
    q = profile(tmp_path, "preactivations", "sqr")
    if "norm=" in overrides[-1]:
        assert profile(tmp_path, "normalized", "sqr") == pytest.approx(1.0, abs=1e-3)  # every activation's input
    if overrides == ["norm=layernorm"]:  # the correlation map at the unit q layernorm gives (batchnorm: none drawn)
        corr = profile(tmp_path, "preactivations", "corr")
        assert corr == pytest.approx(profile(tmp_path, "theory", "preactivations_corr"), abs=0.03)
    if overrides[0].startswith("norm="):
        assert np.mean(q[1:49]) == pytest.approx(1.0, abs=0.05)  # sigma_w^2 E relu(z)^2 = 1 after every norm
    elif "alpha=1/sqrt_L" in overrides:
        assert q[48] / q[0] == pytest.approx((1 + 1 / 50) ** 48, rel=0.3)
    else:  # residual + layernorm: every block adds sigma_w^2 E relu(z)^2 = 1 to the stream
        assert q[48] - q[0] == pytest.approx(48, rel=0.1)


@pytest.mark.slow
def test_the_unscaled_residual_stream_doubles_every_block_within_its_spread_over_seeds(tmp_path, mnist_root):
    """alpha = 1, kaiming relu: q doubles a block (2^48 over depth 50), and a single weight draw strays from that by
    a log-normal factor whose spread grows with depth: over four seeds, the mean log ratio at layer 49 sits at the
    predicted median (-sd^2/2) within the sampling error, and the seeds' spread is the predicted one within 2x."""
    ratios = []
    for seed in range(4):
        cfg = compose_cfg("init=kaiming", "block=residual", f"seed={seed}", *STEP0, data_root=mnist_root)
        assert run(cfg, tmp_path / str(seed)).status == "ok"
        log_ratio, sd = band(tmp_path / str(seed))
        ratios.append(log_ratio[48])
        q = profile(tmp_path / str(seed), "preactivations", "sqr")
        assert math.log2(q[48] / q[0]) == pytest.approx(48, abs=4)
    predicted_sd = sd[48]
    assert np.mean(ratios) == pytest.approx(-(predicted_sd**2) / 2, abs=3 * predicted_sd / 2), ratios
    assert predicted_sd / 2 < np.std(ratios, ddof=1) < 2 * predicted_sd, (ratios, predicted_sd)


@pytest.mark.slow
def test_batchnorm_gradients_grow_toward_the_input_whatever_the_init(tmp_path, mnist_root):
    """Yang et al. 2019: in a deep batchnorm relu network E g^2 grows by about pi / (pi - 1) a layer toward the input,
    at init; the overlay's gradient theory beside it. Measured with xavier, which in the plain MLP vanishes instead."""
    cfg = compose_cfg("init=xavier", "norm=batchnorm", "width=256", *STEP0, data_root=mnist_root)
    assert run(cfg, tmp_path).status == "ok"
    g = profile(tmp_path, "gradients", "sqr")
    rate = math.exp(math.log(g[5] / g[45]) / 40)  # layers 6..46, away from both ends
    assert rate == pytest.approx(math.pi / (math.pi - 1), rel=0.05), rate
    predicted = profile(tmp_path, "theory", "gradients_sqr")
    assert g[1] / g[48] > 1e6  # the explosion: 1.47^47 predicted
    # layers 2..49 (layer 1's input is the image, not a normalized layer's), anchored at layer 49
    assert np.abs(np.log(g[1:49] / predicted[1:49])) == pytest.approx(0, abs=0.5)


@pytest.mark.parametrize(
    "overrides, said",
    [(["norm=batchnorm"], "x 1.47 a layer whatever the init: batchnorm's gradient explosion"),
     (["block=residual"], "residual: the stream's q grows"),
     (["init=fixup", "block=residual"], "the stream's q grows 1x over the 10 blocks")],
)  # fmt: skip
def test_the_new_options_train_through_the_command_line(tmp_path, mnist_root, overrides, said):
    """Each trains, its verdict says what the theory expects of it, and its layer statistics reach the CSV and
    TensorBoard (batchnorm's normalized inputs as their own group)."""
    done = train_inprocess("init=kaiming", *overrides, "depth=12", "width=64", "trainer.max_steps=20",
                           "trainer.limit_val_batches=1", "trainer.limit_test_batches=2", "stats.every_n_steps=10",
                           "stats.figures=false", runs_dir=tmp_path, data_root=mnist_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("theory: ")]
    assert said in line, line
    (run_dir,) = [p.parent for p in tmp_path.rglob("summary.json")]
    table = read_csv(run_dir)
    assert {step for step, _, _ in table} == {0, 10}
    tags = read_events(run_dir).Tags()["scalars"]
    assert "preactivations/sqr/layer_0005" in tags and "gradients/sqr/layer_0005" in tags
    if "norm=batchnorm" in overrides:
        assert "normalized/sqr/layer_0005" in tags and (0, "normalized", "sqr") in table
    if "init=fixup" in overrides:
        grads = profile(run_dir, "gradients", "sqr")
        assert grads[-1] > 0 and np.all(grads[:-1] == 0)  # zero branches and logits: only the last layer learns first
        assert table[(10, "gradients", "sqr")][6] > 0  # and then the rest


@pytest.mark.parametrize(
    "overrides, line",
    [(["init=fixup"], "init=fixup initializes residual branches, and block=plain has none; set block=residual"),
     (["norm=batchnorm", "data.batch_size=1"], "norm=batchnorm normalizes over the batch, and data.batch_size=1"),
     (["alpha=0.5"], "alpha=0.5 multiplies a residual branch, and block=plain has none"),
     (["norm=groupnorm"], "unknown norm 'groupnorm'; choose one of: none, batchnorm, layernorm"),
     (["block=residual", "alpha=sqrt"], "unknown alpha 'sqrt'; choose one of: 1/sqrt_L, rezero"),
     (["init=lsuv", "norm=layernorm"], "init=lsuv rescales a plain MLP layer by layer")],
)  # fmt: skip
def test_bad_architectures_are_one_line(tmp_path, mnist_root, overrides, line):
    done = train_inprocess(*overrides, runs_dir=tmp_path, data_root=mnist_root)
    assert done.returncode == 1 and line in done.stderr and "Traceback" not in done.stderr, done.stderr[-1500:]


@pytest.mark.slow
def test_the_batched_launcher_runs_them_alone_and_says_why(tmp_path, mnist_root):
    done = train_inprocess("-m", "hydra/launcher=batched", "init=kaiming,xavier", "norm=layernorm", "depth=4",
                           "width=32", "trainer.max_steps=5", "trainer.limit_val_batches=1",
                           "trainer.limit_test_batches=1", runs_dir=tmp_path, data_root=mnist_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert "runs alone: layernorm (the stacked model is a plain MLP)" in out and "batched group" not in out
    assert len(list(tmp_path.rglob("summary.json"))) == 2


@pytest.mark.slow
def test_measuring_the_speed_of_a_batchnorm_run_leaves_its_training_alone(tmp_path, mnist_root):
    """The speed evaluation runs the model in eval mode: batchnorm's running statistics (what the test uses) are
    those training made, with or without speed=."""
    common = ["norm=batchnorm", "depth=6", "width=32", "trainer.max_steps=30", "trainer.limit_val_batches=1",
              "trainer.limit_test_batches=4", "stats=off", "trainer.enable_checkpointing=false"]  # fmt: skip
    with_speed = run(compose_cfg(*common, "speed.every_n_steps=5", data_root=mnist_root), tmp_path / "a")
    without = run(compose_cfg(*common, "speed=off", data_root=mnist_root), tmp_path / "b")
    assert len(with_speed.speed.curve) == 7
    assert with_speed.metrics.test_loss == pytest.approx(without.metrics.test_loss, rel=1e-6)


@pytest.mark.slow
def test_the_norm_ablation_reports_init_against_architecture(tmp_path, mnist_root):
    """experiment=norm_ablation on a corner (plain and rezero, kaiming and normal, depth 6, 30 steps, one seed): the
    plain pair trains as one batched group, the rezero pair alone; architecture.csv, report_architecture.png and
    report.md's answer, with N(0,1) weights at chance in the plain MLP and trained under ReZero."""
    done = train_inprocess("-m", "experiment=norm_ablation", "architecture=plain,rezero", "init=kaiming,normal",
                           "seed=0", "depth=6", "trainer.max_steps=30", "speed=off", runs_dir=tmp_path,
                           data_root=mnist_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert "batched group of 2 runs" in out and "runs alone: residual alpha=rezero" in out
    (sweep,) = tmp_path.iterdir()
    rows = list(csv.DictReader(open(sweep / "architecture.csv")))
    assert list(rows[0]) == ["architecture", "init", "activation", "depth", "seed", "status", "test_acc"]
    acc = {(r["architecture"], r["init"]): float(r["test_acc"] or 0.1) for r in rows}
    assert set(acc) == {("plain", "kaiming"), ("plain", "normal"), ("residual alpha=rezero", "kaiming"),
                        ("residual alpha=rezero", "normal")}  # fmt: skip
    assert acc[("plain", "kaiming")] > 0.5 and acc[("residual alpha=rezero", "kaiming")] > 0.5
    assert (sweep / "report_architecture.png").stat().st_size > 20_000
    report = (sweep / "report.md").read_text()
    assert "## Does the init still matter? Test accuracy by architecture" in report
    assert "| 6 | plain | kaiming" in report and "within 0.05 of the best" in report
    assert "report/architecture" in read_events(sweep / "report").Tags()["images"]


@pytest.mark.slow
def test_a_normalized_residual_network_trains_under_ddp(tmp_path, mnist_root):
    """Two CPU processes (gloo): the batchnorm layers and ReZero's alphas are parameters DDP keeps in step; rank 0
    writes the run once."""
    done = train_cli("depth=4", "width=64", "norm=batchnorm", "block=residual", "alpha=rezero",
                     "trainer.max_epochs=1", "trainer.limit_val_batches=1", "trainer.accelerator=cpu",
                     "trainer.devices=2", "trainer.strategy=ddp", runs_dir=tmp_path, data_root=mnist_root)  # fmt: skip
    assert done.returncode == 0 and "Error executing job" not in done.stderr, done.stderr[-2000:]
    (summary,) = tmp_path.rglob("summary.json")
    result = json.loads(summary.read_text())
    assert result["status"] == "ok" and result["config"]["architecture"] == "residual alpha=rezero + batchnorm"
    assert result["metrics"]["test_acc"] > 0.8
