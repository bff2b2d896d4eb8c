"""scripts/bench.py runs every case end to end on real MNIST and writes the results README quotes."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow  # a process of its own: 11 cases, each trained
def test_bench_measures_every_case_and_writes_its_tables(tmp_path, mnist_root):
    cmd = [sys.executable, str(REPO / "scripts" / "bench.py"), "--device", "cpu", "--depth", "3", "--width", "16"]
    cmd += ["--steps", "5", "--warmup", "4", "--repeats", "1", "--group", "2", "--lr-grid", "2", "--out", str(tmp_path)]
    env = {**os.environ, "DEEPINIT_DATA": str(mnist_root)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "bench-cpu.json").read_text())
    cases = result["median"]
    assert len(cases) == 11 and "batched group of 2 runs (stats default, summed)" in cases
    assert {"lr grid of 2, batched (stats off, summed)", "lr grid of 2, job by job, whole jobs"} < set(cases)
    assert all(v > 0 for v in cases.values()) and result["ratio_to_reference"]["reference loop (plain PyTorch)"] == 1
    table = (tmp_path / "bench-cpu.md").read_text()
    assert "| project, stats default |" in table and "batched group of 2 vs the same runs one by one" in table
    assert "lr grid of 2 (lr 2^-14 to 2^-13), batched vs job by job, whole jobs: " in table
