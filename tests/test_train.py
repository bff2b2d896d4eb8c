"""The real command line: a short real MNIST run, divergence as a result, bad input as one line."""

import json
import os
import shutil

import pytest
import torch

from conftest import compose_cfg, improved, read_events, train_cli, train_inprocess
from deepinit.run.logger import tag_of
from deepinit.run.train import run


def only_run(runs_dir):
    (run,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return run


def scalars(run_dir, tag):
    events = read_events(run_dir)
    return [e.value for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


@pytest.mark.slow
def test_short_real_run_trains_and_writes_its_folder(tmp_path, mnist_root):
    done = train_cli(
        "init=kaiming",
        "depth=10",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=150",
        "trainer.log_every_n_steps=10",
        runs_dir=tmp_path,
        data_root=mnist_root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = only_run(tmp_path)
    assert run.name.startswith("kaiming_relu_d10_w256_e1_s0_")  # the epochs are not the default 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["config"]["depth"] == 10 and summary["steps"] == 150 and summary["training_step"] == "fast"
    assert summary["metrics"]["test_acc"] > 0.85  # 150 SGD steps on real MNIST
    losses = scalars(run, tag_of("train/loss"))
    assert len(losses) == 15 and improved(losses, 0.5)  # steps 9, 19, ..., 149
    assert scalars(run, tag_of("val/acc")) and (run / ".hydra" / "config.yaml").exists()
    assert list((run / "checkpoints").glob("*.ckpt"))
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("deepinit: ok | test acc") and "tensorboard --logdir" in last


@pytest.mark.slow
def test_normal_init_diverges_cleanly(tmp_path, mnist_root):
    done = train_inprocess(
        "init=normal", "depth=50", "trainer.limit_train_batches=5", runs_dir=tmp_path, data_root=mnist_root
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = only_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged"
    d = summary["divergence"]
    # std grows ~sqrt(256/2) = 11.3 per relu layer: float32 (3.4e38) overflows in the mid-30s, in step 0.
    assert d["step"] == 0 and 30 <= d["layer"] <= 40
    assert f"layer {d['layer']} of 50" in summary["reason"] and "\n" not in summary["reason"]
    assert any(line.startswith("diverged: ") for line in done.stdout.splitlines())
    assert list(run.glob("events.out.tfevents.*"))
    assert summary["metrics"]["test_acc"] is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("init=bogus", "unknown init 'bogus'; choose one of: fixup, gaussian, kaiming, "),
        ("depth=0", "depth must be an integer >= 2 (got 0)"),
        ("optim.lr=-1", "optim.lr must be a number > 0 (got -1)"),
        ("activation=swish", "unknown activation 'swish'; choose one of: relu, tanh"),
        ("matmul_precision=tf32", "unknown matmul_precision 'tf32'; choose one of: highest, high, medium"),
        ("seed=abc", "seed must be an integer from 0 to 4294967295 (got 'abc')"),
        ("stats.every_n_steps=0", "stats.every_n_steps must be an integer >= 1 (got 0)"),
        ("stats.histogram_every_n_steps=-1", "stats.histogram_every_n_steps must be an integer >= 0"),
        ("runs_dir=/proc/nope", "runs_dir=/proc/nope cannot be made (No such file or directory); choose a folder"),
        ("trainer.max_epochs=-5", "lightning.Trainer rejects the trainer.* settings: `max_epochs` must be a non-neg"),
        ("data.eval_batch_size=0", "data.eval_batch_size must be an integer >= 1 (got 0)"),
        ("init=gaussian init.sigma_w2=-1", "init.sigma_w2 must be a number > 0 (got -1)"),
        ("init=gaussian init.sigma_b2=-0.1", "init.sigma_b2 must be a number >= 0 (got -0.1)"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, mnist_root, override, message):
    done = train_inprocess(*override.split(), runs_dir=tmp_path, data_root=mnist_root)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout and "HYDRA_FULL_ERROR" not in done.stderr + done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}")


def test_runs_dir_is_made_before_hydra_makes_a_run_folder_in_it(tmp_path):
    """One runs_dir is made (with its parents) before Hydra's turn, so that one that cannot be made is our line;
    a sweep over runs_dir, or none given, is left to Hydra (each job's folder, or the default runs/)."""
    from deepinit.base.rules import ConfigError
    from deepinit.settings.hydra import check_runs_dir

    check_runs_dir(["depth=3", f"runs_dir={tmp_path / 'a,b'}", f"runs_dir={tmp_path / 'x' / 'y'}"])
    assert (tmp_path / "x" / "y").is_dir() and not (tmp_path / "a,b").exists()  # the last runs_dir= wins
    check_runs_dir([f"runs_dir={tmp_path / 'p'},{tmp_path / 'q'}"])
    check_runs_dir(["depth=3"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    with pytest.raises(ConfigError, match="runs_dir=/proc/nope cannot be made"):
        check_runs_dir(["+runs_dir=/proc/nope"])


def test_corrupted_data_file_is_named_not_trained_on(tmp_path, mnist_root):
    data = tmp_path / "data"
    shutil.copytree(mnist_root / "MNIST", data / "MNIST")
    images = data / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[: 1 << 20])
    done = train_inprocess("depth=3", runs_dir=tmp_path / "runs", data_root=data)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("data error: ") and str(images) in line and "re-provision" in line


@pytest.mark.slow
def test_a_full_disk_is_one_clear_line_and_keeps_what_the_run_wrote(mnist_root, full_disk):
    done = train_cli(
        "depth=3", "stats=off", "trainer.limit_train_batches=5", "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1", data_root=mnist_root, **full_disk,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    run = only_run(full_disk["runs_dir"])
    assert line.startswith(f"error: no room to write the run's files in {run} (")
    assert line.endswith("trainer.enable_checkpointing=false")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"] == line.removeprefix("error: ")
    assert read_events(run).Scalars(tag_of("train/loss"))  # what the run logged before the checkpoint stays
    assert not list(run.rglob("*.ckpt*"))  # no truncated checkpoint


def test_a_run_leaves_its_process_as_it_found_it(tmp_path, mnist_root):
    """Jobs that share a process (Hydra's basic launcher, joblib workers) must not inherit seeds or flags."""
    cfg = compose_cfg(
        "depth=3", "trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "+trainer.deterministic=true", "threads=1", "seed=1234", "stats=off", "matmul_precision=high",
        data_root=mnist_root,
    )  # fmt: skip
    threads, seed_env = torch.get_num_threads(), os.environ.get("PL_GLOBAL_SEED")
    precision = torch.get_float32_matmul_precision()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    assert run(cfg, tmp_path / "run").status == "ok"
    assert torch.rand(3).equal(expected)  # the run's seed_everything(1234) did not move this process's stream
    assert os.environ.get("PL_GLOBAL_SEED") == seed_env != "1234"
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads
    assert torch.get_float32_matmul_precision() == precision != "high"


@pytest.mark.slow
@pytest.mark.parametrize("fast, step_kind", [("true", "fast"), ("false", "eager")])
def test_a_float64_run_trains(tmp_path, mnist_root, fast, step_kind):
    """float64, what a variance study reaches for to rule out rounding: the fast step's flags stay float32 (the
    fused kernels take no other) while the run's default dtype is float64."""
    done = train_inprocess(
        "depth=5", "+trainer.precision=64-true", f"fast={fast}", "trainer.max_steps=100", "trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=10", "stats.every_n_steps=20", runs_dir=tmp_path, data_root=mnist_root,
    )  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    run = only_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == 100 and summary["training_step"] == step_kind
    assert summary["metrics"]["test_acc"] > 0.85 and improved(scalars(run, tag_of("train/loss")), 0.5)
    assert scalars(run, "activations/sqr/layer_0001")  # the layer statistics ran on float64 tensors
