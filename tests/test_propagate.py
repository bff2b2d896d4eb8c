"""The propagation experiments agree with docs/theory.md at small sizes, and the script writes its table."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from deepinit import propagate as P


def assert_all_agree(exp: P.Experiment) -> None:
    bad = [f"{r.id}: {r.measured} vs {r.theory} ({r.tolerance})" for r in exp.rows if not r.agrees]
    assert not bad, "\n".join(bad)


def by_id(exp: P.Experiment) -> dict[str, P.Row]:
    return {r.id: r for r in exp.rows}


def test_float32_overflows_near_layer_28_and_underflows_near_70():
    exp = P.overflow(n=512, layers=100, seeds=4)
    assert_all_agree(exp)
    # the notebook's loop index i = layer - 1 broke at 28; ln(3.4e38) / ln(sqrt 512) = 28.4
    assert all(26 <= layer - 1 <= 30 for layer in exp.data["nan_layer"])
    assert all(layer >= nan for layer, nan in zip(exp.data["inf_layer"], exp.data["nan_layer"], strict=True))
    # ln(1.4e-45) / ln(0.01 sqrt 512) = 69.5
    assert all(66 <= layer <= 73 for layer in exp.data["zero_layer"])
    assert all(math.isfinite(v) for v in exp.data["ln_ratio"])


def test_variance_of_x_at_w_is_the_squared_norm_of_x():
    exp = P.variance(n=512, columns=4000, seeds=12)
    assert_all_agree(exp)
    rows = by_id(exp)
    assert [rows[k].expected for k in ("2a", "2c", "2d")] == pytest.approx([512, 1 / 512, 1])
    assert rows["2b"].expected == pytest.approx(math.sqrt(2 * 512 + 2 * (512**2 + 1024) / 3999))


def test_relu_moments_match_the_exact_values():
    assert P.expected_chi(512) == pytest.approx(22.6164, abs=1e-4)
    exp = P.relu_moments(n=512, scalar_trials=100000, trials=64)
    assert_all_agree(exp)
    rows = by_id(exp)
    assert rows["3a"].expected == pytest.approx(0.3183, abs=1e-4)
    assert rows["3c"].expected == pytest.approx(9.0226, abs=1e-4)
    assert rows["3d"].expected == 256
    assert rows["3e"].expected == pytest.approx(0.5639, abs=1e-4)
    assert rows["3f"].expected == pytest.approx(1.0)
    # relu acts on the sum: the mean is ~9, nowhere near 512/pi = 163 (the notebook's guess)
    assert rows["3c"].value < 10


def test_one_reused_matrix_grows_past_sqrt_n_layers_where_fresh_ones_do_not():
    exp = P.reuse(n=512, depths=(10, 50, 100), draws_reused=24, draws_fresh=8)
    assert_all_agree(exp)
    ids = [r.id for r in exp.rows]
    # fresh x2, reused linear x3, reused relu sd x2, fraction of reused relu draws that grow
    assert ids == ["4a", "4b", "4c", "4d", "4e", "4f", "4g", "4h"]
    reused, fresh = exp.data["reused"]["linear"], exp.data["fresh"]["linear"]
    assert reused.shape == (24, 101) and fresh.shape == (8, 101)
    # at L = 100 = 4.4 sqrt(n) the reused matrix has grown by e^2.7 on average; fresh layers stay near 1
    assert reused[:, 100].mean() > 1.0 and abs(float(fresh[:, 100].median())) < 1.0
    # reused relu: the spread grows linearly with L (2 L / sqrt(n)), fresh relu only like sqrt(5 L / n)
    assert exp.data["reused"]["relu"][:, 100].std() > 3 * exp.data["fresh"]["relu"][:, 100].std()


def test_fresh_he_relu_layers_drift_log_normally():
    exp = P.drift(n=64, depths=(50, 200), draws=48)
    assert_all_agree(exp)
    rows = by_id(exp)
    assert rows["5c"].expected == pytest.approx(-2.5 * 200 / 64) and rows["5c"].value < -3
    assert rows["5d"].expected == pytest.approx(math.sqrt(5 * 200 / 64))


def test_log_growth_one_fresh_layer_has_the_chi_square_law():
    # one fresh linear layer: ||A x||^2 / ||x||^2 = chi^2_n / n exactly, so ln ratio has variance psi'(n/2) ~ 2/n
    ln = P.log_growth(n=32, depth=1, draws=4000, reuse=False, seed=0)["linear"][:, 1].numpy()
    assert np.exp(ln).mean() == pytest.approx(1.0, abs=4 * math.sqrt(2 / 32 / 4000))
    assert ln.var() == pytest.approx(2 / 32, rel=0.15)


def test_table_counts_agreement_and_flags_a_disagreeing_row():
    good = P.Row("9a", "setup", "1.0", "1", "±0.1", value=1.05, expected=1.0, tol=0.1)
    bad = P.Row("9b", "setup", "2.0", "1", "±0.1", value=2.0, expected=1.0, tol=0.1)
    text = P.format_table([good, bad])
    lines = text.splitlines()
    assert lines[-1] == "1 of 2 rows agree with theory"
    assert lines[-3].startswith("9a") and lines[-3].endswith("yes")
    assert lines[-2].startswith("9b") and lines[-2].endswith("NO")


@pytest.mark.slow
def test_script_writes_the_table_and_figures(tmp_path):
    overrides = [
        "overflow.seeds=3",
        "variance.columns=2000",
        "variance.seeds=8",
        "relu.scalar_trials=20000",
        "relu.trials=32",
        "reuse.depths=[10,50]",
        "reuse.draws_reused=12",
        "reuse.draws_fresh=4",
        "drift.n=64",
        "drift.depths=[50,100]",
        "drift.draws=16",
        f"runs_dir={tmp_path}",
    ]
    cmd = [sys.executable, str(REPO / "scripts" / "propagate.py"), *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert run.name.startswith("propagate_")

    summary = json.loads((run / "table.json").read_text())
    table = summary["table"]
    assert summary["rows"] == len(table) and summary["agree"] == len(table)
    assert {r["id"][0] for r in table} == set("12345") and all(r["agrees"] for r in table)
    assert summary["config"]["drift"]["n"] == 64
    with open(run / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [r["id"] for r in table] and all(r["agrees"] == "True" for r in rows)
    assert (run / "reuse_vs_fresh.png").stat().st_size > 10000
    assert (run / "drift_histogram.png").stat().st_size > 10000

    out = done.stdout.splitlines()
    header = next(line for line in out if line.startswith("id "))
    assert header.split() == P.COLUMNS
    assert f"{len(table)} of {len(table)} rows agree with theory" in out
    assert any(line.startswith("4c ") for line in out)
