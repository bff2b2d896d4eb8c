"""Batched training (deepinit.batched): each member of a stacked group is the run it would be alone."""

import json

import pytest
import torch

from conftest import compose_cfg, improved, read_csv, read_events
from deepinit.batched import StackedMLP, train_group
from deepinit.run.logger import tag_of
from deepinit.run.parts import build
from deepinit.run.train import run

LOSS = tag_of("train/loss")  # as TensorBoard shows it

MEMBERS = [("kaiming", 0), ("xavier", 1), ("orthogonal", 2)]


def scalars(run_dir, tag):
    return torch.tensor([e.value for e in read_events(run_dir).Scalars(tag)])


@pytest.fixture(scope="module")
def lone_and_batched(tmp_path_factory, mnist_root):
    """The same 3 configs (50 steps, SGD, train/loss logged every step) run alone, and as one batched group."""
    root = tmp_path_factory.mktemp("batched")
    common = ["depth=10", "optim=sgd", "trainer.max_steps=50", "trainer.log_every_n_steps=1"]
    cfgs = [compose_cfg(*common, f"init={init}", f"seed={seed}", data_root=mnist_root) for init, seed in MEMBERS]
    lone = [run(cfg, root / f"lone_{init}").to_json() for cfg, (init, _) in zip(cfgs, MEMBERS, strict=True)]
    batched = [s.to_json() for s in train_group(cfgs, [root / f"batched_{init}" for init, _ in MEMBERS])]
    return root, cfgs, lone, batched


def test_members_start_from_the_weights_they_get_alone(mnist_module):
    cfgs = [compose_cfg("depth=6", f"init={init}", f"seed={seed}") for init, seed in MEMBERS]
    assert len({cfg.group_key() for cfg in cfgs}) == 1
    alone = [build(cfg, mnist_module)[1].model for cfg in cfgs]
    stack = StackedMLP([build(cfg, mnist_module)[1].model for cfg in cfgs])
    for k, model in enumerate(alone):
        for i, linear in enumerate(model.linears):
            assert torch.equal(stack.weights[i][k], linear.weight) and torch.equal(stack.biases[i][k], linear.bias)
    x = mnist_module.splits["train"][0][:64]
    stacked_out = stack(x.expand(len(alone), *x.shape))
    for k, model in enumerate(alone):
        torch.testing.assert_close(stacked_out[k], model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_members_follow_their_lone_loss_trajectories(lone_and_batched):
    root, _, lone, batched = lone_and_batched
    for (init, _), alone, member in zip(MEMBERS, lone, batched, strict=True):
        a, b = scalars(root / f"lone_{init}", LOSS), scalars(root / f"batched_{init}", LOSS)
        assert len(a) == len(b) == 50 and improved(a, 0)  # xavier at depth 10 learns slowly: 2.30 -> 2.28
        relative = (a - b).abs() / a
        # Batched and single matmuls sum in other orders, and which order depends on the kernels the CPU picks.
        # Step 0 is one forward pass: float32 sums over fan-in n differ by ~sqrt(n) eps per layer, so the bound is
        # depth * sqrt(784) * eps (1.7e-5; measured 0 to 1e-7). Training amplifies the difference as it amplifies
        # any 1-ulp change (measured ~4e-3 by step 50), so later steps are compared as a chart shows them: means
        # of 10 steps, which a wrong member (another init, other batches) misses by far more.
        eps = torch.finfo(torch.float32).eps
        assert relative[0] < 10 * 784**0.5 * eps and relative[:5].max() < 1e-4
        a10, b10 = a.view(5, 10).mean(1), b.view(5, 10).mean(1)
        assert ((a10 - b10).abs() / a10).max() < 1e-2
        assert abs(alone["metrics"]["test_acc"] - member["metrics"]["test_acc"]) < 0.01


@pytest.mark.slow
def test_members_write_what_a_lone_run_writes(lone_and_batched):
    root, _, lone, batched = lone_and_batched
    for (init, _), alone, member in zip(MEMBERS, lone, batched, strict=True):
        lone_dir, member_dir = root / f"lone_{init}", root / f"batched_{init}"
        names = {p.relative_to(lone_dir).as_posix().split("events.out")[0] for p in lone_dir.rglob("*")}
        assert names == {p.relative_to(member_dir).as_posix().split("events.out")[0] for p in member_dir.rglob("*")}
        lone_events, member_events = read_events(lone_dir), read_events(member_dir)
        assert lone_events.Tags()["scalars"] and set(lone_events.Tags()["scalars"]) == set(
            member_events.Tags()["scalars"]
        )
        for tag in ("test/acc", "final/test_acc", "epoch", LOSS):
            assert [e.step for e in lone_events.Scalars(tag)] == [e.step for e in member_events.Scalars(tag)], tag
        assert set(alone) - {"training_step"} <= set(member) and member["training_step"] == "batched"
        written = json.loads((member_dir / "summary.json").read_text())
        assert written["status"] == "ok" and written["steps"] == alone["steps"] == 50
        assert written["config"] == alone["config"] and written["init"] == alone["init"]
        # step 0 is before any update: the same weights on the same batch give the same layer statistics
        lone_stats, member_stats = read_csv(lone_dir), read_csv(member_dir)
        step0 = [key for key in lone_stats if key[0] == 0]
        assert step0 and set(step0) <= set(member_stats)
        for key in step0:
            for layer, value in lone_stats[key].items():
                assert member_stats[key][layer] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, layer)


@pytest.mark.slow
def test_a_diverging_member_is_frozen_and_the_others_go_on(tmp_path, mnist_root):
    common = ["depth=50", "trainer.max_steps=30", "trainer.log_every_n_steps=1", "stats.figures=false"]
    kaiming_cfg = compose_cfg(*common, "init=kaiming", "seed=0", data_root=mnist_root)
    normal_cfg = compose_cfg(*common, "init=normal", "seed=0", data_root=mnist_root)  # overflows in step 0
    lone_normal = run(normal_cfg, tmp_path / "lone_normal").to_json()
    xavier_cfg = compose_cfg(*common, "init=xavier", "seed=0", data_root=mnist_root)
    kaiming_alone, _ = train_group([kaiming_cfg, xavier_cfg], [tmp_path / "kaiming_alone", tmp_path / "xavier"])
    kaiming, normal = train_group([kaiming_cfg, normal_cfg], [tmp_path / "kaiming", tmp_path / "normal"])
    kaiming_alone, kaiming, normal = kaiming_alone.to_json(), kaiming.to_json(), normal.to_json()
    assert normal["status"] == "diverged" and normal["metrics"]["test_acc"] is None
    for key in ("step", "layer", "epoch"):
        assert normal["divergence"][key] == lone_normal["divergence"][key], key
    assert normal["reason"] == lone_normal["reason"]
    # the healthy member trains exactly as in a group of the same size without a diverged member: nothing leaks
    # across (the same size, because a batched matmul may round differently for another number of members)
    assert kaiming["status"] == "ok" and kaiming["steps"] == 30
    assert torch.equal(scalars(tmp_path / "kaiming", LOSS), scalars(tmp_path / "kaiming_alone", LOSS))
    assert kaiming["metrics"]["test_acc"] == kaiming_alone["metrics"]["test_acc"]


@pytest.mark.parametrize(
    "override, reason",
    [
        (None, None),
        ("+trainer.val_check_interval=0.5", None),  # the group's Trainer follows it as a lone one does
        ("+trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val"),
        ("+trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches"),
        ("+trainer.precision=bf16-mixed", "trainer.precision=bf16-mixed"),
        ("trainer.devices=2", "more than one device"),
        ("optim._target_=torch.optim.LBFGS", "optimizer torch.optim.LBFGS"),
    ],
)
def test_jobs_the_batched_loop_cannot_follow_run_alone(override, reason):
    from deepinit.batched import why_alone

    why = why_alone(compose_cfg(*([override] if override else [])))
    assert why == reason if reason is None else why.startswith(reason)


def graph_group_against_eager_group(tmp_path, mnist_root, accelerator: str) -> None:
    """The group's two half-steps replayed from graphs give the eager group's losses (fast=false, given the same
    fused SGD), and a diverging member is still caught at its step and frozen."""
    common = ["depth=50", "optim=sgd", "trainer.max_steps=60", "trainer.log_every_n_steps=1"]
    common += [f"trainer.accelerator={accelerator}", "stats.every_n_steps=7"]  # observed eager steps in between
    common += ["stats.figures=false"]  # (the end's figures: test_members_write_what_a_lone_run_writes)
    members = [("kaiming", 0), ("normal", 0), ("orthogonal", 1)]  # init=normal overflows in step 0 at depth 50
    out = {}
    for fast in ("true", "false"):
        overrides = [*common, f"fast={fast}", *([] if fast == "true" else ["+optim.fused=true"])]
        cfgs = [compose_cfg(*overrides, f"init={i}", f"seed={s}", data_root=mnist_root) for i, s in members]
        out[fast] = [s.to_json() for s in train_group(cfgs, [tmp_path / fast / init for init, _ in members])]
    graph, eager = out["true"], out["false"]
    assert [s["training_step"] for s in graph] == ["batched, CUDA graph"] * 3
    assert [s["status"] for s in graph] == [s["status"] for s in eager] == ["ok", "diverged", "ok"]
    assert graph[1]["reason"] == eager[1]["reason"] and graph[1]["divergence"]["step"] == 0
    for init in ("kaiming", "orthogonal"):
        a, b = scalars(tmp_path / "false" / init, LOSS), scalars(tmp_path / "true" / init, LOSS)
        assert len(a) == len(b) == 60 and improved(a, 0.2)  # depth 50, SGD: 2.5 -> 2.2 in 60 steps
        relative = (a - b).abs() / a
        if accelerator == "cpu":  # the same code on the same tensors
            assert relative.max() == 0
        else:  # cuBLAS may pick other kernels under capture
            assert relative[:5].max() < 1e-5 and relative.max() < 2e-2
    assert graph[0]["metrics"]["test_acc"] is not None


@pytest.mark.slow
def test_graph_group_bookkeeping_on_cpu(tmp_path, mnist_root, graphs_on_cpu):
    graph_group_against_eager_group(tmp_path, mnist_root, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA graph needs a GPU (checked on the GPU machine)")
def test_cuda_graph_group_trains_as_the_eager_group(tmp_path, mnist_root):
    graph_group_against_eager_group(tmp_path, mnist_root, "gpu")


@pytest.mark.slow
def test_each_member_measures_its_learning_speed_as_it_would_alone(lone_and_batched):
    root, _, lone, batched = lone_and_batched
    for (init, _), alone, member in zip(MEMBERS, lone, batched, strict=True):
        a, b = alone["speed"], member["speed"]
        assert [s for s, _ in a["curve"]] == [s for s, _ in b["curve"]] == [0, 50]
        # same weights up to float rounding: on 1024 images an accuracy moves by 1/1024 per flipped prediction
        for (_, acc_a), (_, acc_b) in zip(a["curve"], b["curve"], strict=True):
            assert acc_b == pytest.approx(acc_a, abs=0.01), init
        assert b["curve"][-1][1] > b["curve"][0][1] + 0.05  # it learned (xavier + relu slowly: 0.08 -> 0.16)
        logged = read_events(root / f"batched_{init}").Scalars(tag_of("speed/val_acc"))
        assert [(e.step, pytest.approx(e.value)) for e in logged] == [tuple(p) for p in b["curve"]]


@pytest.mark.slow
def test_members_at_their_own_learning_rates_and_parametrizations_follow_their_lone_runs(tmp_path, mnist_root):
    """A width's lr grid, sp and mup, as one stacked model (each member its own rate per layer kind: GroupStep's
    factors) ends as each run alone: the same losses step by step (to the tolerance of batched matmuls) and rates."""
    common = ["depth=4", "width=128", "param.base_width=32", "trainer.max_steps=30", "trainer.log_every_n_steps=1",
              "stats=off", "speed=off", "trainer.limit_val_batches=0"]  # fmt: skip
    grid = [("sp", 1e-3), ("sp", 2**-12), ("mup", 1e-3), ("mup", 2**-7)]
    cfgs = [compose_cfg(*common, f"param={p}", f"optim.lr={lr}", data_root=mnist_root) for p, lr in grid]
    assert len({cfg.group_key() for cfg in cfgs}) == 1
    names = [f"{p}_{lr}" for p, lr in grid]
    lone = [run(cfg, tmp_path / f"lone_{n}").to_json() for cfg, n in zip(cfgs, names, strict=True)]
    batched = [s.to_json() for s in train_group(cfgs, [tmp_path / f"batched_{n}" for n in names])]
    losses = {}
    for name, alone, member in zip(names, lone, batched, strict=True):
        a, b = scalars(tmp_path / f"lone_{name}", LOSS), scalars(tmp_path / f"batched_{name}", LOSS)
        assert len(a) == len(b) == 30
        relative = (a - b).abs() / a
        assert relative[:10].max() < 1e-4, (name, relative[:10])  # measured: 6e-7 and below, both kernel sets
        assert ((a.view(3, 10).mean(1) - b.view(3, 10).mean(1)).abs() / a.view(3, 10).mean(1)).max() < 1e-2
        assert member["learning_rates"] == pytest.approx(alone["learning_rates"])
        assert member["training_step"] == "batched"
        losses[name] = b
    # the rates differ enough that a member trained at another's would be far off its own trajectory
    assert (losses["sp_0.001"][10:] - losses["sp_0.000244140625"][10:]).abs().mean() > 0.05
    assert (losses["mup_0.001"][10:] - losses["sp_0.001"][10:]).abs().mean() > 0.01
