"""The notebook's first experiments: one layer (or one reused matrix) at a time: float32 overflow and underflow of
x = a @ x, the variance of x @ w, and the mean and mean square of relu(a x)."""

from __future__ import annotations

import math

import numpy as np
import torch

from deepinit.propagate.records import (
    FLOAT32_MAX,
    FLOAT32_SUBNORMAL,
    Experiment,
    Row,
    _g,
    _median_tol,
    _normal_quantile_of_max,
    generator,
)

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
