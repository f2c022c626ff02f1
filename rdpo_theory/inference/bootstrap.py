"""Nonparametric bootstrap (percentile and BCa) of the exact estimators
(docs/theory.md#inference).

A resample of ``n`` i.i.d. pairs from the empirical law P_n is a multinomial draw of counts
over its rows, so an aggregated data set (``World.empirical``) is resampled without expanding
it. Resamples and the jackknife that gives BCa's acceleration run as one sweep through
:func:`rdpo_theory.studies.sweep.run_sweep` (joblib processes, threads, or a dask cluster with
``backend="dask"``), each task on its own ``SeedSequence`` stream.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from ..data import PreferenceData
from ..errors import SolverError
from ..studies.sweep import Task, run_sweep
from .fit import fit_exact


def _statistic(res) -> list[float]:
    return [float(t) for t in res.theta] + [float(res.value)]


def _subset(data: PreferenceData, w: np.ndarray) -> PreferenceData:
    keep = w > 0
    return PreferenceData(data.X[keep], data.y[keep], w[keep] / w[keep].sum())


def resample_task(params: dict, seed, shared: dict) -> dict:
    """One bootstrap resample (``kind="boot"``) or one jackknife deletion (``kind="jack"``,
    row ``i``): fit, and return the statistic ``(theta..., value)`` as columns ``s0...``.
    A sweep function (module level, picklable)."""
    data, n, kw = shared["data"], shared["n"], shared["fit"]
    if params["kind"] == "boot":
        counts = np.random.default_rng(seed).multinomial(n, data.weights)
        w = counts / n
    else:
        c = data.weights * n
        c[params["i"]] = max(c[params["i"]] - 1.0, 0.0)
        w = c / c.sum()
    try:
        res = fit_exact(_subset(data, w), **kw)
    except SolverError as exc:
        return {"ok": False, "reason": str(exc)[:200]}
    return {"ok": True, **{f"s{j}": v for j, v in enumerate(_statistic(res))}}


def run_bootstrap(
    data: PreferenceData,
    *,
    n_samples: int,
    fit_kwargs: dict,
    n_boot: int,
    seed: int,
    jackknife: bool,
    jobs: int = 1,
    backend: str | None = None,
    progress: bool = False,
) -> dict:
    """Bootstrap draws (B, k) and jackknife values (rows, k) of the statistic
    ``(theta_1..theta_d, value)``, with the jackknife rows' multiplicities ``n p_i``.

    Failed fits (SolverError) are dropped and counted in ``failed``."""
    tasks = [Task({"kind": "boot", "i": b}, (seed, b)) for b in range(n_boot)]
    if jackknife:
        tasks += [Task({"kind": "jack", "i": i}, (seed, n_boot + i)) for i in range(data.n)]
    shared = {"data": data, "n": n_samples, "fit": fit_kwargs}
    res = run_sweep(
        resample_task,
        tasks,
        namespace="inference-bootstrap",
        shared=shared,
        jobs=jobs,
        backend=backend,
        progress=progress,
        desc="bootstrap",
    )
    k = data.d + 1

    def stack(kind):
        rows = [r for r in res.rows if r["kind"] == kind and r["ok"]]
        idx = np.array([r["i"] for r in rows], dtype=int)
        vals = np.array([[r[f"s{j}"] for j in range(k)] for r in rows]).reshape(len(rows), k)
        return idx, vals

    _, draws = stack("boot")
    jidx, jack = stack("jack")
    failed = sum(1 for r in res.rows if not r["ok"])
    return {
        "draws": draws,
        "jack": jack,
        "jack_mult": data.weights[jidx] * n_samples,
        "failed": failed,
    }


def acceleration(jack: np.ndarray, mult: np.ndarray) -> np.ndarray:
    """BCa acceleration per statistic from jackknife values (m, k) with multiplicities (m,):
    ``a = sum c U^3 / (6 (sum c U^2)^1.5)``, ``U = mean - jack``."""
    if jack.shape[0] == 0:
        return np.zeros(jack.shape[1])
    mean = (mult @ jack) / mult.sum()
    U = mean - jack
    num = mult @ U**3
    den = 6.0 * np.maximum(mult @ U**2, 1e-300) ** 1.5
    return num / den


def intervals(draws, estimate, level: float, *, how: str, accel=None) -> np.ndarray:
    """Percentile or BCa intervals (k, 2) for each column of ``draws`` (B, k) around
    ``estimate`` (k,)."""
    alpha = 1.0 - level
    lo_q, hi_q = np.full(draws.shape[1], alpha / 2), np.full(draws.shape[1], 1 - alpha / 2)
    if how == "bca":
        below = (draws < estimate).mean(axis=0) + 0.5 * (draws == estimate).mean(axis=0)
        z0 = norm.ppf(np.clip(below, 1e-6, 1 - 1e-6))
        a = np.zeros_like(z0) if accel is None else accel
        out = []
        for q in (alpha / 2, 1 - alpha / 2):
            zq = norm.ppf(q)
            out.append(norm.cdf(z0 + (z0 + zq) / (1 - a * (z0 + zq))))
        lo_q, hi_q = out
    ci = np.empty((draws.shape[1], 2))
    for j in range(draws.shape[1]):
        ci[j] = np.quantile(draws[:, j], [lo_q[j], hi_q[j]])
    return ci
