"""HParams: each run's hyperparameters and final metrics, read back from its (single) event file."""

import math

import pytest
import yaml
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import compose_cfg, read_events
from deepinit.run.train import run


def hparams_data(run_dir, shown=None):
    """(session-start hparams, metric tags of the experiment) from the hparams plugin's summaries; `shown` (a
    list) receives the columns the dashboard ticks on open (its query pane ticks the `differs` ones first)."""
    (events,) = run_dir.glob("events.out.tfevents.*")  # one file: no writer reopened after a close
    start, metrics = None, None
    for event in EventFileLoader(str(events)).Load():
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name != "hparams":
                continue
            data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
            if data.HasField("session_start_info"):
                assert start is None, "hparams written twice: the dashboard would take the first"
                start = {k: v.string_value or v.number_value for k, v in data.session_start_info.hparams.items()}
            if data.HasField("experiment"):
                metrics = [m.name.tag for m in data.experiment.metric_infos]
                if shown is not None:
                    shown.extend(h.name for h in data.experiment.hparam_infos if h.differs)
    return start, metrics


@pytest.mark.slow
@pytest.mark.parametrize("init, depth, status", [("kaiming", 6, "ok"), ("normal", 50, "diverged")])
def test_hparams_with_final_metrics_once(tmp_path, mnist_root, init, depth, status):
    cfg = compose_cfg(
        f"init={init}",
        f"depth={depth}",
        "trainer.max_steps=30",
        "trainer.limit_val_batches=2",
        "+trainer.val_check_interval=10",
        data_root=mnist_root,
    )
    summary = run(cfg, tmp_path)
    assert summary.status == status
    shown = []
    start, metrics = hparams_data(tmp_path, shown)
    # the study's columns open ticked (TensorBoard ticks at most five), optimizer, lr and seed in one of them
    assert sorted(shown) == ["activation", "depth", "init", "optimizer, lr, seed", "width"]
    assert start["optimizer, lr, seed"] == "adam, 0.0003, 0"
    # the theory's verdict on the init: kaiming + relu is critical (xi_c infinite), normal's sigma_w^2 = 256 explodes
    theory = summary.theory
    assert start["theory/chi_1"] == pytest.approx(theory.chi_1) and start["theory/xi_c"] == theory.xi_c
    assert start["theory/depth_over_xi_c"] == pytest.approx(depth / theory.xi_c)
    # relu with i.i.d. weights: each of the depth - 2 square layers adds v_W + v_D = 1 + 1 to the Jacobian's spread
    assert start["theory/jacobian_spread"] == pytest.approx(theory.jacobian_spread) == pytest.approx(2 * (depth - 2))
    assert (theory.phase, theory.chi_1) == (("critical", 1.0) if init == "kaiming" else ("chaotic", 128.0))
    assert start["init"] == init and start["depth"] == depth and start["optimizer"] == "adam"
    assert start["lr"] == pytest.approx(3e-4) and start["activation"] == "relu" and start["data"] == "MNIST"
    assert set(metrics) == set(summary.hparams_metrics) and "hp_metric" not in metrics
    events = read_events(tmp_path)
    final = {tag: events.Scalars(tag)[-1].value for tag in metrics}
    assert final["final/diverged"] == (status == "diverged")
    if status == "ok":
        assert final["final/test_acc"] == pytest.approx(summary.metrics.test_acc)
        assert final["final/divergence_step"] == -1
        # kaiming + relu holds the forward signal: ln(m_last / m_first) at step 0 is within the band's few sd
        assert abs(final["final/step0_ln_act_sqr_last_over_first"]) < 1
    else:
        assert math.isnan(final["final/test_acc"]) and final["final/divergence_step"] == 0
    assert "hp_metric" not in events.Tags()["scalars"]
    # hparams.yaml holds the same row (Lightning writes the file at the start, before there is a row to write)
    saved = yaml.safe_load((tmp_path / "hparams.yaml").read_text())
    assert saved["init"] == init and saved["depth"] == depth and saved["theory/xi_c"] == start["theory/xi_c"]


TINY_PHASE = """# @package _global_
defaults:
  - phase_diagram_cpu
  - _self_
hydra:
  sweeper:
    params:
      init.sigma_w2: 1.0,4.0
      depth: 6
      trainer.max_steps: 3,5
width: 16
trainer:
  limit_test_batches: 1
"""


@pytest.mark.slow
def test_a_sweep_opens_on_the_keys_it_varies(tmp_path, mnist_root):
    """experiment=phase_diagram_cpu varies init.sigma_w2 and the budget trainer.max_steps: both are HParams columns,
    ticked when TensorBoard opens (here the same experiment on a grid of four tiny runs)."""
    from conftest import train_inprocess

    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "tiny_phase.yaml").write_text(TINY_PHASE)
    runs = tmp_path / "runs"
    done = train_inprocess("-m", "experiment=tiny_phase", f"hydra.searchpath=[file://{conf.parent}]", runs_dir=runs,
                           data_root=mnist_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (sweep,) = runs.iterdir()
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert len(jobs) == 4
    rows = []
    for job in jobs:
        shown = []
        start, _ = hparams_data(job, shown)
        assert sorted(shown) == ["activation", "depth", "init", "init.sigma_w2", "trainer.max_steps"]
        rows.append((start["init.sigma_w2"], start["trainer.max_steps"], start["init"]))
    assert sorted(rows) == [(1.0, 3, "gaussian"), (1.0, 5, "gaussian"), (4.0, 3, "gaussian"), (4.0, 5, "gaussian")]
    # the report's figures: TensorBoard opens a sweep of many runs with none ticked, so the last line says where
    last = (done.stdout + done.stderr).strip().splitlines()[-1]
    assert "sweep report: 4 runs: 4 ok" in last and "report_accuracy.png" in last and "tick the run 'report'" in last
