"""The table's records (Row, Experiment), the random streams, and the tolerance rules every experiment uses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

FLOAT32_MAX = torch.finfo(torch.float32).max  # 3.4028e38
FLOAT32_SUBNORMAL = 2.0**-149  # 1.4e-45, the smallest positive float32: one ulp of the subnormal range
MEDIAN_SE = math.sqrt(math.pi / 2)  # se(median) = 1.2533 sd / sqrt(k) for a normal sample


@dataclass
class Row:
    """One line of the table: `value` is compared with `expected`; the row agrees if within `tol`."""

    id: str
    setup: str
    measured: str
    theory: str
    tolerance: str
    value: float
    expected: float
    tol: float
    agrees: bool = field(init=False)

    def __post_init__(self) -> None:
        self.agrees = bool(abs(self.value - self.expected) <= self.tol)


@dataclass
class Experiment:
    name: str
    rows: list[Row]
    data: dict[str, Any] = field(default_factory=dict)  # arrays for the figures, not part of the table


def generator(seed: int, *keys: int) -> torch.Generator:
    """A torch generator for (seed, experiment, sub-run): independent streams, reproducible one by one."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _g(v: float, digits: int = 4) -> str:
    return f"{v:.{digits}g}"


def _normal_quantile_of_max(m: int) -> float:
    """The typical largest |z| among m standard normals: P(|z| > t) = 1/m."""
    return float(torch.special.ndtri(torch.tensor(1 - 0.5 / m, dtype=torch.float64)))


def _median_tol(values: list[float] | np.ndarray) -> float:
    """3 standard errors of the median of discrete per-seed results, from their sampled spread."""
    v = np.asarray(values, dtype=float)
    return 3 * MEDIAN_SE * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
