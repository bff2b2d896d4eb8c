"""Runs are named by what they are: two runs that differ in an essential never share a folder name (TensorBoard's
runs list), and a layer has the same tag at any depth, so runs of different depths line up card by card."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO
from deepinit.settings.hydra import register


def run_folder(*overrides: str) -> str:
    """The run folder's name as Hydra makes it for these overrides, the time stamp left out."""
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    return Path(cfg.hydra.run.dir).name.rsplit("_", 1)[0]


def test_the_default_run_keeps_its_short_name():
    # fails when a default in conf/ changes without records.UNSAID, which would lengthen every run's name
    assert run_folder() == "kaiming_relu_d50_w256_s0"


@pytest.mark.parametrize(
    "overrides, name",
    [
        (["architecture=batchnorm"], "kaiming_relu_d50_w256_batchnorm_s0"),
        (["architecture=residual"], "kaiming_relu_d50_w256_residual_s0"),
        (["norm=layernorm"], "kaiming_relu_d50_w256_layernorm_s0"),
        (["optim=sgd"], "kaiming_relu_d50_w256_sgd_lr0.001_s0"),
        (["optim.lr=0.001", "data.batch_size=64"], "kaiming_relu_d50_w256_lr0.001_b64_s0"),
        (["trainer.max_epochs=5", "bias=false", "seed=3"], "kaiming_relu_d50_w256_e5_nobias_s3"),
        (["data=fashion_mnist", "trainer.max_steps=100"], "kaiming_relu_d50_w256_100steps_FashionMNIST_s0"),
        (["block=residual", "alpha=1/sqrt_L"], "kaiming_relu_d50_w256_residual-alpha=1-sqrt_L_s0"),
        (["architecture=rezero", "norm=layernorm"], "kaiming_relu_d50_w256_residual-alpha=rezero+layernorm_s0"),
        (["trainer.max_epochs=null", "trainer.max_steps=20"], "kaiming_relu_d50_w256_20steps_s0"),
    ],
)
def test_an_essential_off_its_default_is_in_the_name(overrides, name):
    assert run_folder(*overrides) == name


def test_runs_that_differ_in_architecture_have_different_names():
    names = {run_folder(f"architecture={a}") for a in
             ("plain", "batchnorm", "layernorm", "residual", "residual_scaled", "rezero")}  # fmt: skip
    assert len(names) == 6


def test_a_layer_has_the_same_tag_at_depth_50_and_100():
    from deepinit.network.model import MLP
    from deepinit.observe.recorder import LayerRecorder
    from deepinit.settings.records import StatsSettings

    tags = []
    for depth in (50, 100):
        recorder = LayerRecorder(StatsSettings(True, 50, 0, ["activations"], False, 1, None, 0))
        recorder.open(MLP(depth, 8, "relu"), None, REPO)
        tags.append(recorder._tag("activations", "sqr", 7))
    assert tags == ["activations/sqr/layer_0007"] * 2
