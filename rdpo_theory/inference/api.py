"""``confidence``: standard errors and confidence intervals for exact DPO, KLDPO and WDPO
(docs/theory.md#inference)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..data import as_data
from ..errors import InputError
from ..options import NONE, Instance, Interval, Options, declare
from .bootstrap import acceleration, intervals, run_bootstrap
from .fit import METHODS, fit_exact
from .sandwich import influence, sandwich_covariance, smoothness, weighted_sd

KINDS = ("sandwich", "bootstrap")

#: Above this many distinct rows BCa takes its acceleration from the sandwich influences
#: (one fit per row would be too many).
JACKKNIFE_MAX_ROWS = 1000
ON_NONSMOOTH = ("bootstrap", "raise", "nan")


@dataclass
class ConfidenceResult:
    """Estimate, standard errors and intervals of a robust DPO fit.

    Attributes
    ----------
    theta : ndarray (d,)
        The exact estimate.
    se : ndarray (d,)
        Standard error of each component (sandwich, or the bootstrap standard deviation).
    ci : ndarray (d, 2)
        Two-sided intervals at ``level`` (Wald, or bootstrap percentile/BCa).
    value : float
        The robust value at theta (nats): the empirical minimax value.
    value_se : float
    value_ci : ndarray (2,)
        Interval for the population minimax value.
    kind : {"sandwich", "bootstrap"}
        What produced ``se`` and ``ci`` (``"bootstrap"`` also when a non-smooth sandwich fell
        back to it).
    level : float
    cov : ndarray (d, d) or None
        Sandwich covariance of theta (None for the bootstrap).
    draws : ndarray (B, d + 1) or None
        Bootstrap draws of ``(theta, value)`` (None for the sandwich).
    info : dict
        ``method``, ``rho``, ``n_samples``, ``regime``, ``smooth`` (bool), ``nonsmooth``
        (the reason or None), ``dual`` (lam* or eta*), ``lam_se`` (KLDPO), ``interval``
        (``"wald"``, ``"percentile"`` or ``"bca"``), ``failed`` (bootstrap fits that failed).
    """

    theta: np.ndarray
    se: np.ndarray
    ci: np.ndarray
    value: float
    value_se: float
    value_ci: np.ndarray
    kind: str
    level: float = 0.95
    cov: np.ndarray | None = None
    draws: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """Tidy table: one row per theta component and one for the value, with columns
        ``quantity, index, estimate, se, ci_lo, ci_hi, level, kind, method, rho``."""
        rows = [
            {
                "quantity": "theta",
                "index": j,
                "estimate": self.theta[j],
                "se": self.se[j],
                "ci_lo": self.ci[j, 0],
                "ci_hi": self.ci[j, 1],
            }
            for j in range(self.theta.shape[0])
        ]
        rows.append(
            {
                "quantity": "value",
                "index": 0,
                "estimate": self.value,
                "se": self.value_se,
                "ci_lo": self.value_ci[0],
                "ci_hi": self.value_ci[1],
            }
        )
        df = pd.DataFrame(rows)
        df["level"], df["kind"] = self.level, self.kind
        df["method"], df["rho"] = self.info.get("method"), self.info.get("rho")
        return df

    def delta(self, fn: Callable, grad: Callable | None = None, *, step: float = 1e-6) -> dict:
        """Standard error and interval of a smooth scalar ``fn(theta)`` (e.g. a policy's
        expected reward on a world) by the delta method: ``se = sqrt(g^T Cov g)`` with
        ``g = grad(theta)`` (central differences of ``fn`` when ``grad`` is None); for a
        bootstrap result, the standard deviation and percentile interval of ``fn`` over the
        draws.

        Returns
        -------
        dict with ``estimate``, ``se``, ``ci`` (2,).
        """
        est = float(fn(self.theta))
        if self.cov is None:
            if self.draws is None:
                raise InputError("this result has neither a covariance nor bootstrap draws")
            vals = np.array([fn(t) for t in self.draws[:, : self.theta.shape[0]]], float)
            a = 1 - self.level
            return {
                "estimate": est,
                "se": float(vals.std(ddof=1)),
                "ci": np.quantile(vals, [a / 2, 1 - a / 2]),
            }
        if grad is not None:
            g = np.asarray(grad(self.theta), float)
        else:
            d = self.theta.shape[0]
            g = np.empty(d)
            for j in range(d):
                e = np.zeros(d)
                e[j] = step * (1 + abs(self.theta[j]))
                g[j] = (fn(self.theta + e) - fn(self.theta - e)) / (2 * e[j])
        se = float(np.sqrt(max(g @ self.cov @ g, 0.0)))
        z = norm.ppf(0.5 + self.level / 2)
        return {"estimate": est, "se": se, "ci": np.array([est - z * se, est + z * se])}


_REAL_POS = [Interval(float, 0, None, closed="neither")]


@declare(
    {
        "method": [Options(METHODS)],
        "rho": [Interval(float, 0, None, closed="left"), NONE],
        "beta": _REAL_POS,
        "level": [Interval(float, 0, 1, closed="neither")],
        "kind": [Options(KINDS)],
        "n_samples": [Interval(int, 1, None, closed="left"), NONE],
        "radius": [Interval(float, 0, None, closed="neither", allow_inf=True), NONE],
        "n_boot": [Interval(int, 2, None, closed="left")],
        "interval": [Options(("percentile", "bca"))],
        "on_nonsmooth": [Options(ON_NONSMOOTH)],
        "seed": [Interval(int, 0, None, closed="left")],
        "jobs": [Interval(int, None, None), Instance(int)],
        "solver": [Options(("fast", "cvxpy"))],
        "progress": ["boolean"],
    }
)
def confidence(
    X,
    y=None,
    *,
    method: str,
    rho: float | None = None,
    beta: float,
    weights=None,
    level: float = 0.95,
    kind: str = "sandwich",
    n_samples: int | None = None,
    theta_ref=None,
    radius: float | None = None,
    candidates=None,
    n_boot: int = 500,
    interval: str = "bca",
    on_nonsmooth: str = "bootstrap",
    seed: int = 0,
    jobs: int = 1,
    backend: str | None = None,
    solver: str = "fast",
    progress: bool = False,
) -> ConfidenceResult:
    """Fit exact DPO, KLDPO or WDPO (p = 1) and give standard errors and intervals.

    ``kind="sandwich"``: Wald intervals ``est +- z_{(1+level)/2} se`` with the M-estimation
    covariance ``H^-1 Cov(psi) H^-1 / n`` of each dual (docs/theory.md#inference). The value's
    standard error is ``sd(v) / sqrt(n)``, ``v`` the value's influence. ``kind="bootstrap"``:
    ``n_boot`` multinomial resamples of the empirical law through the sweep backends, with
    percentile or BCa intervals.

    Parameters
    ----------
    X : array_like (n, d) or PreferenceData
        Pair feature differences (or a data set with labels and weights).
    y : array_like (n,), labels in {0, 1}
    method : {"dpo", "kldpo", "wdpo"}
    rho : float >= 0, optional
        Radius: nats (KL) or feature-norm units (W1). Required for ``kldpo`` and ``wdpo``.
    beta : float > 0
    weights : array_like (n,), optional
        Empirical law (default uniform). For aggregated data (counts / n) pass ``n_samples``.
    level : float in (0, 1)
    kind : {"sandwich", "bootstrap"}
    n_samples : int, optional
        The number of i.i.d. pairs behind the data (default: the number of rows; required
        when ``weights`` is given).
    theta_ref : array_like (d,), optional
    radius : float > 0, optional
        Parameter bound B. An estimate on its sphere is non-smooth.
    candidates : (Xc, yc), optional
        WDPO over finite candidates: non-smooth, bootstrap only.
    n_boot : int >= 2
    interval : {"percentile", "bca"}
        Bootstrap interval type.
    on_nonsmooth : {"bootstrap", "raise", "nan"}
        What a sandwich request does at a non-smooth estimate (collapse to theta_ref,
        max-loss regime, active ball, finite candidates): fall back to the bootstrap, raise
        InputError, or return NaN standard errors; ``info["nonsmooth"]`` names the case.
    seed : int >= 0
        Bootstrap seed (``SeedSequence`` streams ``(seed, b)``).
    jobs : int
        joblib ``n_jobs`` for the bootstrap (-1: all cores).
    backend : str, optional
        joblib backend (``"loky"``, ``"threading"``, ``"dask"``).
    solver : {"fast", "cvxpy"}
        Exact solver path (the fast path falls back to cvxpy when uncertified).
    progress : bool
        A tqdm bar over bootstrap resamples.

    Returns
    -------
    ConfidenceResult

    Raises
    ------
    InputError
        Malformed input, a missing radius, or a non-smooth estimate with
        ``on_nonsmooth="raise"``.
    """
    data = as_data(X, y, weights)
    if method != "dpo" and rho is None:
        raise InputError(f"The 'rho' parameter of confidence must be given for method {method!r}.")
    rho = 0.0 if method == "dpo" else float(rho)
    if n_samples is None:
        if weights is not None or (y is None and not np.allclose(data.weights, 1 / data.n)):
            raise InputError(
                "The 'n_samples' parameter of confidence must be given with weights (the "
                "number of i.i.d. pairs behind the empirical law)."
            )
        n_samples = data.n
    if candidates is not None and method != "wdpo":
        raise InputError("candidates apply to method 'wdpo' only")
    fit_kwargs = dict(
        method=method,
        rho=rho,
        beta=float(beta),
        theta_ref=theta_ref,
        radius=radius,
        candidates=candidates,
        solver=solver,
    )
    res = fit_exact(data, **fit_kwargs)
    why = smoothness(res, method=method, radius=radius, theta_ref=theta_ref)
    info = {
        "method": method,
        "rho": rho,
        "n_samples": int(n_samples),
        "regime": res.regime,
        "smooth": why is None,
        "nonsmooth": why,
        "dual": res.dual,
    }
    d = data.d
    z = norm.ppf(0.5 + level / 2)
    if kind == "sandwich" and why is not None:
        if on_nonsmooth == "raise":
            raise InputError(
                f"no Wald interval for {method} here: the estimator is not smooth ({why}); "
                "use kind='bootstrap'."
            )
        if on_nonsmooth == "nan":
            nan = np.full(d, np.nan)
            return ConfidenceResult(
                res.theta,
                nan,
                np.full((d, 2), np.nan),
                float(res.value),
                float("nan"),
                np.full(2, np.nan),
                "sandwich",
                level,
                None,
                None,
                {**info, "interval": "none"},
            )
        kind = "bootstrap"
        info["fallback"] = f"sandwich refused ({why}): bootstrap"
    if kind == "sandwich":
        lam = res.dual if method == "kldpo" else None
        inf = influence(
            data, res.theta, method=method, rho=rho, beta=float(beta), theta_ref=theta_ref, lam=lam
        )
        cov_all = sandwich_covariance(inf["H"], inf["psi"], data.weights, n_samples)
        cov = cov_all[:d, :d]
        se = np.sqrt(np.diag(cov))
        value_se = weighted_sd(inf["v"], data.weights) / np.sqrt(n_samples)
        if method == "kldpo":
            info["lam_se"] = float(np.sqrt(cov_all[d, d]))
        info["interval"] = "wald"
        return ConfidenceResult(
            res.theta,
            se,
            np.column_stack([res.theta - z * se, res.theta + z * se]),
            float(res.value),
            float(value_se),
            np.array([res.value - z * value_se, res.value + z * value_se]),
            "sandwich",
            level,
            cov,
            None,
            info,
        )
    # BCa's acceleration: the jackknife over distinct rows when there are few of them, else
    # the infinitesimal jackknife (the sandwich influences) where the estimate is smooth
    jack = interval == "bca" and data.n <= JACKKNIFE_MAX_ROWS
    accel = None
    if interval == "bca" and not jack:
        if why is None:
            accel = _influence_acceleration(data, res, method, rho, beta, theta_ref, n_samples)
            info["acceleration"] = "infinitesimal jackknife"
        else:
            interval = "percentile"
            info["bca"] = f"BCa needs the jackknife over {data.n} rows here ({why}): percentile"
    boot = run_bootstrap(
        data,
        n_samples=n_samples,
        fit_kwargs=fit_kwargs,
        n_boot=n_boot,
        seed=seed,
        jackknife=jack,
        jobs=jobs,
        backend=backend,
        progress=progress,
    )
    draws = boot["draws"]
    if draws.shape[0] < 2:
        raise InputError("fewer than two bootstrap fits succeeded; see the solver errors")
    est = np.concatenate([res.theta, [res.value]])
    if jack:
        accel = acceleration(boot["jack"], boot["jack_mult"])
        info["acceleration"] = "jackknife over rows"
    ci = intervals(draws, est, level, how=interval, accel=accel)
    sd = draws.std(axis=0, ddof=1)
    info.update(interval=interval, failed=boot["failed"], n_boot=int(draws.shape[0]))
    return ConfidenceResult(
        res.theta,
        sd[:d],
        ci[:d],
        float(res.value),
        float(sd[d]),
        ci[d],
        "bootstrap",
        level,
        None,
        draws,
        info,
    )


def _influence_acceleration(data, res, method, rho, beta, theta_ref, n) -> np.ndarray:
    """BCa acceleration ``sum p U^3 / (6 sqrt(n) (sum p U^2)^1.5)`` from the empirical
    influences ``U`` of ``(theta, value)``: ``-H^-1 psi`` and ``v`` (docs/theory.md#inference)."""
    lam = res.dual if method == "kldpo" else None
    inf = influence(
        data, res.theta, method=method, rho=rho, beta=float(beta), theta_ref=theta_ref, lam=lam
    )
    p = data.weights
    psi = inf["psi"] - p @ inf["psi"]
    U = np.column_stack([-np.linalg.solve(inf["H"], psi.T).T[:, : data.d], inf["v"] - p @ inf["v"]])
    return (p @ U**3) / (6.0 * np.sqrt(n) * np.maximum(p @ U**2, 1e-300) ** 1.5)
