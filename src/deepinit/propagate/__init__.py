"""The notebook's propagation experiments as plain functions, each set against docs/theory.md.

No Lightning, no Hydra: every experiment is a function that draws its own random numbers from a seed
and returns an `Experiment` with table rows (measured, theory, tolerance, agrees) and the arrays its
figure needs. scripts/propagate.py runs them all and writes the table; docs/initialization_questions.md
cites the rows by id.

Tolerances come from spreads, never from hand-tuning: a mean is allowed 3-4 standard errors (from the
predicted spread where docs/theory.md gives one, else from the sampled one), a median 3 standard errors of a
median (1.2533 sd / sqrt(draws) for a normal sample), a sample sd 3 standard errors of an sd
(sd / sqrt(2 (draws - 1))). Products over depth are log-normal, so depth experiments are read in ln space.

- records.py: the table's rows and experiments, random streams, tolerance rules;
- single_layer.py: 1-3, overflow and underflow, var(x @ w), relu(a x);
- depth.py: 4-5, one reused matrix against fresh ones over depth, the finite-width drift;
- table.py: all of them as one table, and their figures.
"""

from deepinit.propagate.depth import drift, log_growth, relu_drift_theory, reuse
from deepinit.propagate.records import Experiment, Row, generator
from deepinit.propagate.single_layer import expected_chi, overflow, relu_moments, variance
from deepinit.propagate.table import COLUMNS, format_table, plot_drift, plot_growth, row_dicts, run_all

__all__ = [
    "COLUMNS", "Experiment", "Row", "drift", "expected_chi", "format_table", "generator", "log_growth", "overflow",
    "plot_drift", "plot_growth", "relu_drift_theory", "relu_moments", "reuse", "row_dicts", "run_all", "variance",
]  # fmt: skip
