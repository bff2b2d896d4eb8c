"""The notebook's propagation experiments as plain functions, each set against docs/theory.md.

No Lightning, no Hydra: every experiment is a function that draws its own random numbers from a seed
and returns an `Experiment` with table rows (measured, theory, tolerance, agrees) and the arrays its
figure needs. scripts/propagate.py runs them all and writes the table; docs/initialization_questions.md
cites the rows by id.

Tolerances come from spreads, never from hand-tuning: a mean is allowed 3-4 standard errors (from the
predicted spread where docs/theory.md gives one, else from the sampled one), a median 3 standard errors of a
median (1.2533 sd / sqrt(draws) for a normal sample), a sample sd 3 standard errors of an sd
(sd / sqrt(2 (draws - 1))). Products over depth are log-normal, so depth experiments are read in ln space.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepinit import theory

FLOAT32_MAX = torch.finfo(torch.float32).max  # 3.4028e38
FLOAT32_SUBNORMAL = 2.0**-149  # 1.4e-45, the smallest positive float32: one ulp of the subnormal range
MEDIAN_SE = math.sqrt(math.pi / 2)  # se(median) = 1.2533 sd / sqrt(k) for a normal sample

# docs/theory.md 1e: Monte Carlo values for one reused A = a / sqrt(512). They are exp(mean ln ratio), the
# geometric mean over draws; the distribution is right-skewed, so the median is lower (see the rows).
# Each value carries the precision it is quoted to, in ln units.
REUSED_LINEAR_512 = {
    50: (math.log(1.6), "1.6", 0.05 / 1.6),
    100: (math.log(15), "15", 0.5 / 15),
    200: (8.0, "e^8", 0.5),
}
# docs/theory.md 1e: the spectral radius of A = a / sqrt(512) is 1.032 +- 0.015 over draws. Past sqrt(n) layers
# ln ||A^L x||^2 ~ 2 L ln rho, so draws spread by sd ~ 2 L * 0.015 / 1.032 (an upper bound before the
# growth is rho-dominated: about 2/3 of the measured sd at L = 50, equal at L = 200).
RHO_512 = (1.032, 0.015)
RELU_REUSED_SD_COEF = 2.0  # docs/theory.md 1e: sd of ln lambda^2 is "about 2.0 / sqrt(n)", quoted to +-0.05


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


# ---------------------------------------------------------------------------------------------------
# 1. Overflow and underflow of x = a @ x in float32 (the notebook's first cells)


def overflow(n: int = 512, layers: int = 100, seeds: int = 12, seed: int = 0) -> Experiment:
    """float32 x = randn(n), one reused a = randn(n, n) * scale, `layers` products, as the notebook does.

    Layers are counted 1-based (layer k = after k products); the notebook's loop index is i = k - 1.
    """
    nan_layer, inf_layer, zero_layer, survived, ln_ratio = [], [], [], [], []
    for s in range(seeds):
        g = generator(seed, 1, s)
        x0 = torch.randn(n, generator=g)
        a = torch.randn(n, n, generator=g)
        x, nan_at, inf_at = x0, None, None
        for k in range(1, layers + 1):
            x = a @ x
            if nan_at is None and x.std() != x.std():  # the notebook's break condition
                nan_at = k
            if inf_at is None and torch.isinf(x).any():
                inf_at = k
            if nan_at is not None and inf_at is not None:
                break
        nan_layer.append(nan_at or layers + 1)
        inf_layer.append(inf_at or layers + 1)

        small, x = a * 0.01, x0
        zero_at = layers + 1
        for k in range(1, layers + 1):
            x = small @ x
            if not x.any():
                zero_at = k
                break
        zero_layer.append(zero_at)

        scaled, x = a / math.sqrt(n), x0
        for _ in range(layers):
            x = scaled @ x
        ok = bool(torch.isfinite(x).all() and x.any())
        survived.append(ok)
        ln_ratio.append(float((x.double().norm() ** 2 / x0.double().norm() ** 2).log()) if ok else float("nan"))

    # Overflow: entries have rms g^k (g = sqrt n per layer, rms of x0 = 1) and pass FLOAT32_MAX at
    # k_x = ln(max) / ln g = 28.4, so x holds inf at layer ceil(k_x). std()'s float32 sum of n entries is
    # sqrt(n) = one layer's growth larger and overflows (+inf + -inf = nan) up to a layer earlier.
    growth = math.sqrt(n)
    k_x = math.log(FLOAT32_MAX) / math.log(growth)
    lo, hi = math.ceil(k_x - 1), math.ceil(k_x)
    med = float(np.median(nan_layer))
    tol = (hi - lo) / 2 + _median_tol(nan_layer)
    rows = [
        Row(
            "1a",
            f"f32 x=a@x, one a~N(0,1) {n}x{n}, {seeds} seeds: std() nan at layer",
            f"{_g(med)} [{min(nan_layer)}-{max(nan_layer)}], inf in x at {_g(float(np.median(inf_layer)))}",
            f"ln 3.4e38/ln {growth:.2f} = {k_x:.1f}: {lo}-{hi}",
            f"±{_g(tol, 3)} (window+3se)",
            med,
            (lo + hi) / 2,
            tol,
        )
    ]

    # Underflow: rms f^k with f = 0.01 sqrt n reaches one subnormal ulp at k0 = ln(ulp) / ln f = 69.5. x is
    # exactly 0 once every product 0.01 a_ij x_j rounds away (largest |x_j| * largest |a_ij| < ulp/2), and
    # for sure once every exact sum does (largest |y_i| < ulp/2): a window about two layers wide.
    f = 0.01 * math.sqrt(n)
    z_x, z_a = _normal_quantile_of_max(n), _normal_quantile_of_max(n * n)
    k0 = math.log(FLOAT32_SUBNORMAL) / math.log(f)
    c_prod = math.log(FLOAT32_SUBNORMAL / (2 * z_x * 0.01 * z_a)) / math.log(f)  # x_j small enough after c_prod
    c_sum = math.log(FLOAT32_SUBNORMAL / (2 * z_x)) / math.log(f)
    lo, hi = math.floor(c_prod) + 2, math.floor(c_sum) + 1
    med = float(np.median(zero_layer))
    tol = (hi - lo) / 2 + _median_tol(zero_layer)
    rows.append(
        Row(
            "1b",
            f"same, a*0.01 (x{f:.4f}/layer): x == 0 at layer",
            f"{_g(med)} [{min(zero_layer)}-{max(zero_layer)}]",
            f"1.4e-45 at {k0:.1f}: 0 at {lo}-{hi}",
            f"±{_g(tol, 3)} (window+3se)",
            med,
            (lo + hi) / 2,
            tol,
        )
    )

    frac = float(np.mean(survived))
    finite = [v for v in ln_ratio if math.isfinite(v)]
    spread = f"{_g(min(finite), 2)}..{_g(max(finite), 2)}" if finite else "none"
    limit = 2 * math.log(FLOAT32_MAX)  # ln of the largest representable ||x||^2 / ||x0||^2 ratio, about 177
    rows.append(
        Row(
            "1c",
            f"same, a/sqrt({n}): finite, nonzero at layer {layers}",
            f"{sum(survived)}/{seeds} seeds, ln ratio {spread}",
            f"all: |ln ratio| << {limit:.0f}",
            "all seeds",
            frac,
            1.0,
            0.0,
        )
    )
    data = {"nan_layer": nan_layer, "inf_layer": inf_layer, "zero_layer": zero_layer, "ln_ratio": ln_ratio}
    return Experiment("overflow", rows, data)


# ---------------------------------------------------------------------------------------------------
# 2. var(x @ w): the sum of n products has variance ||x||^2 ~ chi^2_n


def variance(n: int = 512, columns: int = 10000, seeds: int = 20, seed: int = 0) -> Experiment:
    """var over the columns of x @ w, w of shape (n, columns), per seed; mean and spread over seeds.

    The notebook used 500000 columns (1 GB in float32). Given x the columns are iid N(0, ||x||^2), so
    the estimate's relative sd is sqrt(2 / columns) (1.4% at 10000), small next to the 6% seed spread.
    """
    rows = []
    scales = [(1.0, "", "n = "), (1 / n, f"*1/{n}", "1/n = "), (1 / math.sqrt(n), f"*1/sqrt({n})", "")]
    for rid, (scale, label, text) in zip("acd", scales, strict=True):
        vals = []
        for s in range(seeds):
            g = generator(seed, 2, ord(rid), s)
            x = torch.randn(n, generator=g)
            w = torch.randn(n, columns, generator=g) * scale
            vals.append(float((x @ w).double().var()))
        v = np.array(vals)
        c2 = scale**2
        # Var over seeds = Var ||x||^2 + E[var estimate's noise] = 2n + 2 E||x||^4 / (columns - 1)
        sd_pred = c2 * math.sqrt(2 * n + 2 * (n * n + 2 * n) / (columns - 1))
        tol = 4 * sd_pred / math.sqrt(seeds)
        rows.append(
            Row(
                f"2{rid}",
                f"var(x@w), w~N(0,1){label} {n}x{columns}, {seeds} seeds: mean",
                f"{_g(v.mean())} (sd {_g(v.std(ddof=1), 3)})",
                f"{text}{_g(n * c2)} (sd {_g(sd_pred, 3)})",
                f"±{_g(tol, 3)} (4 se)",
                float(v.mean()),
                n * c2,
                tol,
            )
        )
        if rid == "a":
            tol_sd = 3 * sd_pred / math.sqrt(2 * (seeds - 1))
            rows.append(
                Row(
                    "2b",
                    "same: sd over seeds (chi^2_n + column noise)",
                    _g(v.std(ddof=1)),
                    f"sqrt(2n+2n^2/cols) = {_g(sd_pred)}",
                    f"±{_g(tol_sd, 3)} (3 se of sd)",
                    float(v.std(ddof=1)),
                    sd_pred,
                    tol_sd,
                )
            )
    rows.sort(key=lambda r: r.id)
    return Experiment("variance", rows)


# ---------------------------------------------------------------------------------------------------
# 3. Linear then relu: relu acts on the sum, whose scale is ||x||, not on each product


def expected_chi(n: int) -> float:
    """E||x|| for x ~ N(0, I_n): sqrt(2) Gamma((n+1)/2) / Gamma(n/2) (22.6164 at n = 512)."""
    return math.sqrt(2) * math.exp(math.lgamma((n + 1) / 2) - math.lgamma(n / 2))


def relu_moments(n: int = 512, scalar_trials: int = 200000, trials: int = 256, seed: int = 0) -> Experiment:
    """Mean and mean square of relu(a x), scalar and n-dimensional, over repeated float64 trials."""
    rows = []
    g = generator(seed, 3, 0)
    a = torch.randn(scalar_trials, generator=g, dtype=torch.float64)
    x = torch.randn(scalar_trials, generator=g, dtype=torch.float64)
    y = (a * x).clamp(min=0)
    for rid, stat, exact, text in [("3a", y, 1 / math.pi, "1/pi"), ("3b", y**2, 0.5, "1/2")]:
        tol = 4 * float(stat.std()) / math.sqrt(scalar_trials)
        what = "mean" if rid == "3a" else "mean square"
        rows.append(
            Row(
                rid,
                f"relu(a*x), scalars a,x~N(0,1), {scalar_trials} trials: {what}",
                _g(float(stat.mean())),
                f"{text} = {_g(exact)}",
                f"±{_g(tol, 3)} (4 se)",
                float(stat.mean()),
                exact,
                tol,
            )
        )

    chi = expected_chi(n)
    chunk = 16  # 16 float64 512x512 matrices = 32 MB at a time
    for j, (scale, label) in enumerate([(1.0, ""), (math.sqrt(2 / n), f"*sqrt(2/{n})")]):
        g = generator(seed, 3, 1 + j)
        means, sqrs = [], []
        for start in range(0, trials, chunk):
            k = min(chunk, trials - start)
            xs = torch.randn(k, n, 1, generator=g, dtype=torch.float64)
            ws = torch.randn(k, n, n, generator=g, dtype=torch.float64) * scale
            ys = torch.bmm(ws, xs).squeeze(-1).clamp(min=0)
            means.append(ys.mean(dim=1))
            sqrs.append(ys.pow(2).mean(dim=1))
        # given x, y_i ~ N(0, scale^2 ||x||^2): E relu(y) = s / sqrt(2 pi), E relu(y)^2 = s^2 / 2
        mean_text = "E|x|/sqrt(2pi) = " if j == 0 else f"E|x|/sqrt({n}pi) = "
        for rid, stat, exact, text, what in [
            ("ce"[j], torch.cat(means), scale * chi / math.sqrt(2 * math.pi), mean_text, "mean"),
            ("df"[j], torch.cat(sqrs), scale**2 * n / 2, "n/2 = " if j == 0 else "", "mean square"),
        ]:
            tol = 4 * float(stat.std()) / math.sqrt(trials)
            rows.append(
                Row(
                    f"3{rid}",
                    f"relu(a@x), a~N(0,1){label} {n}x{n}, {trials} trials: {what}",
                    f"{_g(float(stat.mean()))} (trial sd {_g(float(stat.std()), 3)})",
                    f"{text}{_g(exact)}",
                    f"±{_g(tol, 3)} (4 se)",
                    float(stat.mean()),
                    exact,
                    tol,
                )
            )
    return Experiment("relu", rows, {"expected_norm": chi})


# ---------------------------------------------------------------------------------------------------
# 4-5. Depth: ln(||x_L||^2 / ||x_0||^2) through linear and He-relu layers, one reused or fresh matrices


def log_growth(n: int, depth: int, draws: int, reuse: bool, seed: int, stream: int = 0) -> dict[str, torch.Tensor]:
    """ln(||x_l||^2 / ||x_0||^2) for l = 0..depth, shape (draws, depth + 1), for 'linear' and 'relu'.

    Weights are a / sqrt(n) for linear and a * sqrt(2 / n) for relu, with a ~ N(0, 1) either drawn once
    per draw (reuse=True, the notebook's loop) or fresh every layer. Both activations see the same a.
    x is renormalized after every layer (both maps are positively homogeneous, so its direction is
    unchanged) and the log norms are summed in float64: no overflow however far a draw drifts.
    """
    g = generator(seed, 4, stream, int(reuse))
    gains = {"linear": 1 / math.sqrt(n), "relu": math.sqrt(2 / n)}
    x0 = torch.randn(draws, n, 1, generator=g)
    x0 = x0 / x0.norm(dim=1, keepdim=True)
    states = dict.fromkeys(gains, x0)
    out = {act: torch.zeros(draws, depth + 1, dtype=torch.float64) for act in gains}
    a = torch.randn(draws, n, n, generator=g) if reuse else None
    for layer in range(1, depth + 1):
        w = a if reuse else torch.randn(draws, n, n, generator=g)
        for act, gain in gains.items():
            x = torch.bmm(w, states[act]) * gain
            if act == "relu":
                x = x.clamp(min=0)
            norm = x.norm(dim=1, keepdim=True)
            out[act][:, layer] = out[act][:, layer - 1] + 2 * norm.flatten().double().log()
            states[act] = x / norm
    return out


def _summary(v: torch.Tensor) -> str:
    q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=v.dtype))
    return f"med {_g(float(q[1]), 3)} [IQR {_g(float(q[0]), 3)}..{_g(float(q[2]), 3)}]"


def reuse(
    n: int = 512,
    depths: tuple[int, ...] = (10, 50, 100, 200),
    draws_reused: int = 32,
    draws_fresh: int = 24,
    seed: int = 0,
) -> Experiment:
    """One reused A versus a fresh matrix per layer, linear and He-relu, at several depths."""
    depths = sorted(depths)
    depth = depths[-1]
    reused = log_growth(n, depth, draws_reused, True, seed)
    fresh = log_growth(n, depth, draws_fresh, False, seed)
    rows = []

    # Fresh layers: ln R_l iid with mean -1/n, var 2/n (linear) or -2.5/n, 5/n (relu), docs/theory.md 1f
    for act, m1, v1, text in [("linear", -1.0, 2.0, "-L/n"), ("relu", -2.5, 5.0, "-2.5L/n")]:
        v = fresh[act][:, depth]
        mean, sd = m1 * depth / n, math.sqrt(v1 * depth / n)
        tol = 3 * MEDIAN_SE * sd / math.sqrt(draws_fresh)
        rows.append(
            Row(
                f"4{'ab'[act == 'relu']}",
                f"fresh {act} layers, n={n}, L={depth}, {draws_fresh} draws: median ln ratio",
                f"{_summary(v)} sd {_g(float(v.std()), 3)}",
                f"{text} = {_g(mean)} (sd {_g(sd, 3)})",
                f"±{_g(tol, 3)} (3 se of median)",
                float(v.median()),
                mean,
                tol,
            )
        )

    # One reused linear A: like fresh while L << sqrt(n), then rho(A)^(2L) takes over (docs/theory.md 1e)
    letter = iter("cdefghij")
    for L in depths:
        v = reused["linear"][:, L]
        mean, sd = float(v.mean()), float(v.std())
        if L <= math.sqrt(n) / 2:
            pred, ptext = -L / n, f"like fresh: -L/n = {_g(-L / n)}"
            tol, ttext = 3 * math.sqrt(2 * L / n) / math.sqrt(draws_reused), "3 se"
        elif n == 512 and L in REUSED_LINEAR_512:
            pred, text, quoted = REUSED_LINEAR_512[L]
            ptext = f"ln {text} = {_g(pred)} (docs/theory.md 1e)"
            # the predicted spread, not the sampled one: ln ratio is right-skewed, and a small sample that
            # misses the tail understates its mean and its sd together
            sd_pred = 2 * L * RHO_512[1] / RHO_512[0]
            tol, ttext = 3 * sd_pred / math.sqrt(draws_reused) + quoted, "3 se + digits"
        else:
            continue  # docs/theory.md has no number for this (n, L)
        rows.append(
            Row(
                f"4{next(letter)}",
                f"one reused A=a/sqrt(n), n={n}, L={L}, {draws_reused} draws: mean ln ratio",
                f"{_g(mean)} (sd {_g(sd, 3)}, med {_g(float(v.median()), 3)})",
                ptext,
                f"±{_g(tol, 3)} ({ttext})",
                mean,
                pred,
                tol,
            )
        )

    # One reused relu A: iterates settle on relu(Av) = lambda v, so ln m_L ~ L ln lambda^2 with
    # sd[ln lambda^2] ~ 2.0 / sqrt(n); only once the iterates have settled (L >= 2 sqrt(n)).
    settled = [L for L in depths if L >= 2 * math.sqrt(n)]
    for L in settled:
        v = reused["relu"][:, L]
        pred = RELU_REUSED_SD_COEF * L / math.sqrt(n)
        tol = 3 * pred / math.sqrt(2 * (draws_reused - 1)) + pred * 0.05 / RELU_REUSED_SD_COEF
        rows.append(
            Row(
                f"4{next(letter)}",
                f"one reused relu A=a*sqrt(2/n), L={L}: sd of ln ratio",
                f"{_g(float(v.std()))} (med {_g(float(v.median()), 3)})",
                f"2.0 L/sqrt(n) = {_g(pred)}",
                f"±{_g(tol, 3)} (3 se of sd + digits)",
                float(v.std()),
                pred,
                tol,
            )
        )
    tol = 3 * math.sqrt(0.25 / draws_reused)
    if settled and tol < 0.5:  # with 9 draws or fewer no fraction could fall outside: no row
        L = settled[0]
        frac = float((reused["relu"][:, L] > 0).double().mean())
        rows.append(
            Row(
                f"4{next(letter)}",
                f"same, L={L}: fraction of draws that grow",
                _g(frac),
                "1/2: half explode, half vanish",
                f"±{_g(tol, 3)} (3 binomial se)",
                frac,
                0.5,
                tol,
            )
        )
    return Experiment("reuse", rows, {"n": n, "reused": reused, "fresh": fresh})


def relu_drift_theory(n: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (= median) and sd of ln(m_l / m_0), l = 0..depth, for He relu layers of width n, from the project's
    theory module (`theory.predict`: Var ln R = (E relu^4 / (E relu^2)^2 - 1) / n = 5 / n per layer)."""
    pred = theory.predict("relu", [(2.0, 2.0)] * (depth + 1), [(n, n)] * (depth + 1))
    sd = np.array([0.0, *pred.m_log_sd])
    return -(sd**2) / 2, sd


def drift(n: int = 128, depths: tuple[int, ...] = (100, 500), draws: int = 64, seed: int = 0) -> Experiment:
    """Fresh He-initialized relu layers at finite width: ln(m_L / m_0) is log-normal (docs/theory.md 1f).

    R_l = m_l / m_{l-1} is (2/n) chi^2_K with K ~ Binomial(n, 1/2), iid over layers: E R = 1 but
    E ln R = -2.5/n and Var ln R = 5/n (up to O(1/n^2): 1.3% and 3% more at n = 128).
    """
    depths = sorted(depths)
    ln = log_growth(n, depths[-1], draws, False, seed, stream=5)["relu"]
    theory_mean, theory_sd = relu_drift_theory(n, depths[-1])
    rows = []
    for i, L in enumerate(depths):
        v = ln[:, L]
        mean, sd = float(theory_mean[L]), float(theory_sd[L])
        tol_med = 3 * MEDIAN_SE * sd / math.sqrt(draws)
        tol_sd = 3 * sd / math.sqrt(2 * (draws - 1))
        rows.append(
            Row(
                f"5{'acegi'[i]}",
                f"fresh He relu, n={n}, L={L}, {draws} draws: median ln ratio",
                _summary(v),
                f"-2.5 L/n = {_g(mean)}",
                f"±{_g(tol_med, 3)} (3 se of median)",
                float(v.median()),
                mean,
                tol_med,
            )
        )
        rows.append(
            Row(
                f"5{'bdfhj'[i]}",
                f"same, L={L}: sd of ln ratio",
                _g(float(v.std())),
                f"sqrt(5 L/n) = {_g(sd)}",
                f"±{_g(tol_sd, 3)} (3 se of sd)",
                float(v.std()),
                sd,
                tol_sd,
            )
        )
    return Experiment("drift", rows, {"n": n, "depths": depths, "ln": ln})


# ---------------------------------------------------------------------------------------------------
# The whole table


def run_all(
    seed: int = 0,
    overflow_kw: dict | None = None,
    variance_kw: dict | None = None,
    relu_kw: dict | None = None,
    reuse_kw: dict | None = None,
    drift_kw: dict | None = None,
) -> list[Experiment]:
    """Every experiment with its own keyword arguments (sizes, trial counts) and the shared seed."""
    return [
        overflow(seed=seed, **(overflow_kw or {})),
        variance(seed=seed, **(variance_kw or {})),
        relu_moments(seed=seed, **(relu_kw or {})),
        reuse(seed=seed, **(reuse_kw or {})),
        drift(seed=seed, **(drift_kw or {})),
    ]


COLUMNS = ["id", "setup", "measured", "theory", "tolerance", "agrees"]
LEGEND = (
    "ln ratio = ln(||x_L||^2 / ||x_0||^2) = ln(m_L / m_0); layer k = after k products (the notebook's i = k - 1)\n"
    "a row agrees when |measured - theory| <= tolerance; se = standard error from the predicted or sampled spread"
)


def format_table(rows: list[Row]) -> str:
    """Fixed-width text table and a final 'N of M rows agree with theory' line."""
    cells = [COLUMNS] + [[r.id, r.setup, r.measured, r.theory, r.tolerance, "yes" if r.agrees else "NO"] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = [LEGEND, ""]
    lines.append("  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells[1:]]
    agree = sum(r.agrees for r in rows)
    lines.append(f"{agree} of {len(rows)} rows agree with theory")
    return "\n".join(lines)


def row_dicts(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


# ---------------------------------------------------------------------------------------------------
# Figures


def plot_growth(exp: Experiment, path: Path) -> None:
    """Median and IQR of ln(||x_l||^2/||x_0||^2) against layer: one reused matrix versus fresh ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = exp.data["n"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, act in zip(axes, ["linear", "relu"], strict=True):
        for kind, color in [("fresh", "tab:blue"), ("reused", "tab:red")]:
            v = exp.data[kind][act]
            q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=v.dtype), dim=0).numpy()
            layers = np.arange(v.shape[1])
            ax.plot(layers, q[1], color=color, label=f"{kind} matrix: median ({v.shape[0]} draws)")
            ax.fill_between(layers, q[0], q[2], color=color, alpha=0.2, label=f"{kind}: IQR")
        layers = np.arange(exp.data["fresh"][act].shape[1])
        m1, text = (-1.0, "-l/n") if act == "linear" else (-2.5, "-2.5 l/n")
        ax.plot(layers, m1 * layers / n, "k--", lw=1, label=f"fresh theory {text}")
        if act == "linear" and n == 512:
            pts = sorted(REUSED_LINEAR_512.items())
            ax.plot([p[0] for p in pts], [p[1][0] for p in pts], "kx", label="docs/theory.md 1e (geometric mean)")
        ax.axvline(math.sqrt(n), color="gray", lw=0.8, ls=":")
        ax.set_title(f"{act}, n = {n} ({'a/sqrt(n)' if act == 'linear' else 'a*sqrt(2/n)'}); dotted: sqrt(n)")
        ax.set_xlabel("layer l")
        ax.set_ylabel("ln(||x_l||^2 / ||x_0||^2)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_drift(exp: Experiment, path: Path) -> None:
    """Histogram of ln(m_L/m_0) at the deepest layer against the log-normal prediction, and spread vs depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, ln = exp.data["n"], exp.data["ln"]
    depth = ln.shape[1] - 1
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    v = ln[:, depth].numpy()
    theory_mean, theory_sd = relu_drift_theory(n, depth)
    mean, sd = theory_mean[-1], theory_sd[-1]
    left.hist(v, bins=max(8, len(v) // 4), density=True, alpha=0.6, label=f"{len(v)} draws")
    grid = np.linspace(mean - 4 * sd, mean + 4 * sd, 300)
    left.plot(
        grid, np.exp(-0.5 * ((grid - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)), "k-", label="N(-2.5L/n, 5L/n)"
    )
    left.axvline(0, color="gray", ls=":", lw=0.8)
    left.set_xlabel(f"ln(m_L / m_0), L = {depth}")
    left.set_title(f"fresh He relu layers, n = {n}")
    left.legend(fontsize=8)

    layers = np.arange(depth + 1)
    q = torch.quantile(ln, torch.tensor([0.1, 0.5, 0.9], dtype=ln.dtype), dim=0).numpy()
    right.fill_between(layers, q[0], q[2], alpha=0.2, label="measured 10-90%")
    right.plot(layers, q[1], label="measured median")
    right.plot(layers, theory_mean, "k--", label="theory median -2.5 l/n")
    band = 1.2816 * theory_sd
    right.plot(layers, theory_mean - band, "k:", lw=1, label="theory 10-90%")
    right.plot(layers, theory_mean + band, "k:", lw=1)
    right.set_xlabel("layer l")
    right.set_ylabel("ln(m_l / m_0)")
    right.set_title("the median drifts down, the spread grows like sqrt(l)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
