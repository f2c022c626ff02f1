"""Empirical-likelihood confidence bounds from the robust value (docs/theory.md#inference).

After Duchi, Glynn and Namkoong (arXiv 1610.03425): for a fixed theta, the robust value over
an f-divergence ball around the empirical law P_n,

    U_n(theta) = sup { E_Q l(theta) : D_f(Q || P_n) <= r_n },

expands as ``E_{P_n} l + sqrt(2 r_n Var(l) / f''(1)) + o(n^-1/2)``. Both divergences of this
project have ``f''(1) = 1`` (KL: ``f(t) = t log t``; chi-square with its factor 1/2:
``f(t) = (t - 1)^2 / 2``), so the radius

    r_n = chi2_{1, 1 - 2 alpha} / (2 n) = z_{1 - alpha}^2 / (2 n)

makes ``U_n`` an asymptotically exact one-sided ``1 - alpha`` upper confidence bound for the
population risk ``E_P0 l(theta)``; the lower end (the infimum over the same ball) with
``alpha / 2`` on each side gives a two-sided interval.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2

from ..audit import worst_case
from ..data import as_data
from ..errors import InputError
from ..losses import dpo_losses
from ..options import NONE, Interval, Options, declare

EL_DIVERGENCES = ("kl", "chi2")


def el_radius(n: int, level: float = 0.95, *, sided: str = "upper") -> float:
    """The ball radius of a calibrated bound: ``chi2_{1, 1 - 2 alpha} / (2 n)`` (one-sided,
    ``alpha = 1 - level``) or ``chi2_{1, level} / (2 n)`` (two-sided), for any divergence with
    ``f''(1) = 1`` (this project's KL and chi-square). Nats for KL."""
    alpha = 1.0 - level
    q = chi2.ppf(1.0 - 2.0 * alpha, 1) if sided == "upper" else chi2.ppf(level, 1)
    return float(q / (2.0 * n))


def _ball_sup(lo, p, divergence, r) -> float:
    q = worst_case(lo, weights=p, divergence=divergence, radius=r)
    return float(q @ lo)


@declare(
    {
        "n_samples": [Interval(int, 1, None, closed="left"), NONE],
        "level": [Interval(float, 0.5, 1, closed="neither")],
        "divergence": [Options(EL_DIVERGENCES)],
        "sided": [Options(("upper", "two"))],
        "beta": [Interval(float, 0, None, closed="neither")],
    }
)
def el_bound(
    theta,
    X,
    y=None,
    *,
    beta: float,
    weights=None,
    theta_ref=None,
    n_samples: int | None = None,
    level: float = 0.95,
    divergence: str = "kl",
    sided: str = "upper",
) -> dict:
    """Empirical-likelihood bound on the population DPO risk at a fixed ``theta``.

    Parameters
    ----------
    theta : array_like (d,)
    X : array_like (n, d) or PreferenceData
    y : array_like (n,), optional
    beta : float > 0
    weights : array_like (n,), optional
        The empirical law (counts / n for aggregated data; default uniform).
    theta_ref : array_like (d,), optional
    n_samples : int, optional
        Number of i.i.d. pairs behind ``weights`` (default: the number of rows, which is right
        only for raw, unaggregated rows).
    level : float in (0.5, 1)
    divergence : {"kl", "chi2"}
    sided : {"upper", "two"}

    Returns
    -------
    dict
        ``upper`` (nats; the robust value, an upper bound with asymptotic coverage
        ``level``), ``lower`` (nats; the two-sided lower end, NaN for ``sided="upper"``),
        ``radius`` (the ball radius) and ``mean`` (the empirical risk).
    """
    data = as_data(X, y, weights)
    n = data.n if n_samples is None else int(n_samples)
    lo = dpo_losses(theta, data, beta=beta, theta_ref=theta_ref)
    p = data.weights
    if not np.all(np.isfinite(lo)):
        raise InputError("theta gives non-finite losses")
    r = el_radius(n, level, sided=sided)
    upper = _ball_sup(lo, p, divergence, r)
    lower = -_ball_sup(-lo, p, divergence, r) if sided == "two" else float("nan")
    return {"upper": upper, "lower": lower, "radius": r, "mean": float(p @ lo)}
