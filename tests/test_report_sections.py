"""The sweep report's text on hand-made runs: the trainability section judges every cell it can and says which it
cannot and why, and a column that no run measured says why beneath its table."""

from deepinit.results.summary import Metrics, Speed, Summary
from deepinit.sweep import phase
from deepinit.sweep.report import empty_column_lines

MNIST = {"dataset": "MNIST", "batch_size": 128, "val_size": 5000}


def cell_row(steps, sigma_w2, depth, test_acc, predicted, depth_over_xi_c, status="ok", seed=0):
    return {"steps": steps, "sigma_w2": sigma_w2, "depth": depth, "seed": seed, "test_acc": test_acc,
            "predicted": predicted, "depth_over_xi_c": depth_over_xi_c, "status": status}  # fmt: skip


def gaussian_settings(sigma_w2, depth, steps):
    return {"depth": depth, "init": {"name": "gaussian", "sigma_w2": sigma_w2}, "trainer": {"max_steps": steps}}


def test_the_trainability_section_lists_every_cell_and_says_which_it_could_not_judge(tmp_path):
    rows = [
        cell_row(30, 1.0, 3, 0.31, True, 0.83),  # disagrees
        cell_row(30, 1.0, 40, 0.098, False, 11.0),  # agrees
        cell_row(30, 2.25, 3, 0.91, True, 0.2),  # agrees; its second seed failed
        cell_row(30, 2.25, 40, None, True, 2.6, status="diverged"),  # counts as chance: disagrees
    ]
    missing = tmp_path / "5_depth=80"  # no summary.json: its cell comes from the job's own config
    (missing / ".hydra").mkdir(parents=True)
    (missing / ".hydra" / "config.yaml").write_text(
        "depth: 80\ninit:\n  name: gaussian\n  sigma_w2: 1.0\ntrainer:\n  max_steps: 30\n"
    )
    jobs = [
        {"job": "4_seed=1", "status": "failed", "_summary": Summary(status="failed",
                                                                      settings=gaussian_settings(2.25, 3, 30))},
        {"job": missing.name, "status": "missing", "_dir": missing},
        {"job": "6_init=kaiming", "status": "failed", "_summary": Summary(status="failed", settings={})},
    ]  # fmt: skip
    lines = phase.agreement_lines(rows, jobs)
    text = "\n".join(lines)
    assert lines[0].startswith("Cells (sigma_w^2 x depth x budget, mean over seeds): judged 4 of the sweep's 5;")
    assert (
        "- runs judged: 4 of 7, 1 of them diverged (counted as not trained, at chance, 0.1); not judged: 2 failed, "
        "1 missing; of these, in no cell: 6_init=kaiming (failed)" in lines
    )
    assert "- measured and predicted agree in 2 of 4 cells (50%)" in lines  # the agreement lines stay
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| steps")]
    assert table == [
        "| 30 | 1 | 3 | 0.83 | 1 | 0.310 | not | trains | no | too few steps or too small a learning rate for this "
        "depth, far inside 6 xi_c |",
        "| 30 | 1 | 40 | 11 | 1 | 0.098 | not | not | yes |  |",
        "| 30 | 1 | 80 |  | 0 of 1 |  |  |  |  | not judged: 1 missing |",
        "| 30 | 2.25 | 3 | 0.2 | 1 of 2 | 0.910 | trained | trains | yes | not judged: 1 failed |",
        "| 30 | 2.25 | 40 | 2.6 | 1 | 0.100 (1 diverged) | not | trains | no | too few steps or too small a learning "
        "rate for this depth, far inside 6 xi_c |",
    ]
    assert "| steps | sigma_w^2 | depth | depth / xi_c | runs | test acc | measured | predicted | agree |" in text


def test_without_the_sweeps_runs_the_judged_runs_are_the_sweep():
    lines = phase.agreement_lines([cell_row(30, 1.0, 3, 0.9, True, 0.8), cell_row(30, 1.0, 40, 0.1, False, 11.0)])
    assert "judged 2 of the sweep's 2;" in lines[0] and "- runs judged: 2 of 2" in lines
    assert sum(line.startswith("| 30 |") for line in lines) == 2


def ok_run(steps=30, trainer=None, data=MNIST, status="ok", **fields):
    settings = {"data": data, "trainer": {"log_every_n_steps": 50, **(trainer or {})}}
    metrics = Metrics(test_acc=0.3, test_loss=2.0, val_acc=None, best_val_acc=None, val_loss=None, train_loss=None,
                      train_acc=None)  # fmt: skip
    summary = Summary(status=status, settings=settings, steps=steps, metrics=metrics, **fields)
    return {"job": "0", "status": status, "test_acc": 0.3, "best_val_acc": None, "reason": None, "_summary": summary}


def test_a_column_no_run_measured_says_why_beneath_the_table():
    columns = ["job", "test_acc", "best_val_acc", "reason"]
    assert empty_column_lines([ok_run(trainer={"limit_val_batches": 0})] * 2, columns) == [
        "best_val_acc: empty, no validation ran (trainer.limit_val_batches=0)"
    ]  # reason is empty because every run ended ok: a result, not a gap
    assert empty_column_lines([ok_run(data={**MNIST, "val_size": 0})], columns) == [
        "best_val_acc: empty, no validation split (data.val_size=0)"
    ]
    assert empty_column_lines([ok_run(steps=30)], columns, where="phase.csv's ") == [
        "phase.csv's best_val_acc: empty, no validation ran in its 30 steps (Lightning validates at "
        "trainer.val_check_interval: by default at each epoch's end)"
    ]
    # runs that stopped for different reasons: each reason counted
    mixed = [ok_run(trainer={"limit_val_batches": 0}), ok_run(status="diverged"), ok_run(status="diverged")]
    assert empty_column_lines(mixed, columns) == [
        "best_val_acc: empty, 2 runs: no validation ran before the run diverged; 1 run: no validation ran "
        "(trainer.limit_val_batches=0)"
    ]
    # a column some run has a value in says nothing
    assert empty_column_lines([ok_run(steps=30), {**ok_run(), "best_val_acc": 0.5}], columns) == []


def test_other_unmeasured_columns_say_why():
    batched = ok_run(steps=30, training_step="batched")
    assert empty_column_lines([{**batched, "train_acc": None}], ["train_acc"]) == [
        "train_acc: empty, no training step was logged: a batched group's members keep what Lightning's logger "
        "wrote, every trainer.log_every_n_steps=50 steps, and they took 30"
    ]
    untested = {**ok_run(trainer={"limit_test_batches": 0}), "test_acc": None, "test_loss": None}
    assert empty_column_lines([untested], ["test_acc", "test_loss"]) == [
        "test_acc, test_loss: empty, no test ran (trainer.limit_test_batches=0)"
    ]
    slow = ok_run(steps=600, speed=Speed(target_acc=0.9, every_n_steps=50, samples=1024, steps_to_target=None))
    assert empty_column_lines([{**slow, "steps_to_target": None}], ["steps_to_target"]) == [
        "steps_to_target: empty, never reached speed.target_acc=0.9 in its 600 steps"
    ]
    gone = {"job": "3", "status": "missing", "reason": "no summary.json (killed?)"}
    assert empty_column_lines([gone], ["test_acc"]) == ["test_acc: empty, no summary.json (killed?)"]
