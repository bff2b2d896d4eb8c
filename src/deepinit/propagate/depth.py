"""The notebook's depth experiments: ln(||x_L||^2 / ||x_0||^2) through linear and He-relu layers with one reused
matrix or fresh ones, and the finite-width drift of fresh He-relu stacks (log-normal)."""

from __future__ import annotations

import math

import numpy as np
import torch

from deepinit import theory
from deepinit.propagate.records import MEDIAN_SE, Experiment, Row, _g, generator

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
