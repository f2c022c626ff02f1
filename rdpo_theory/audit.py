"""Robustness audit of a trained model from its per-pair losses (docs/theory.md#kl-dual).

Given per-pair losses ``l`` (n,) of any model on a preference set (DPO losses from
log-probabilities, or any other per-pair loss) with nominal weights ``p`` (default uniform),
the audit answers: how large can the mean loss become when the pairs are reweighted by an
adversary within a divergence ball around ``p``?

    worst_loss(radius) = sup { sum_i q_i l_i : q in the simplex, D(q || p) <= radius }.

Three balls, each solved exactly by the code the exact solvers use at their optimum:

* ``"kl"``: ``D = KL(q || p)``; the worst case is the tilted law ``q ∝ p exp(l / lam)`` whose
  KL equals the radius (a scalar root in lam, ``exact.kl_tilt.kl_lambda_for_theta``), or ``p``
  restricted to the argmax set when ``radius >= -log P(argmax l)`` (docs/theory.md#kl-regimes).
* ``"chi2"``: ``D = 1/2 sum_i p_i (q_i / p_i - 1)^2`` (the project's convention, with the 1/2);
  the sorted closed form of ``losses.chi2_weights`` (docs/theory.md#baselines).
* ``"cvar"``: ``q_i <= p_i / alpha``; the "radius" is the level alpha in (0, 1] (smaller is
  more adversarial); ``losses.cvar_weights``.

A radius with a meaning (docs/theory.md#subpopulation-radius): every subpopulation of mass
``>= alpha`` (the law ``p`` conditioned on a set of mass alpha) lies in the KL ball of radius
``log(1 / alpha)``, the chi-square ball of radius ``(1 - alpha) / (2 alpha)`` and the CVaR ball
of level alpha; :func:`radius_for_subpopulation` returns these. So ``worst_loss`` at that radius
bounds the mean loss of every group holding at least an alpha share of the data.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import _validate as V
from . import losses as L
from .errors import InputError, SolverError

#: The supported divergence balls.
DIVERGENCES = ("kl", "chi2", "cvar")
#: The four per-pair log-prob columns of an audit table (TRL names, nats): policy chosen,
#: policy rejected, reference chosen, reference rejected.
LOGP_COLUMNS = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")


def check_divergence(divergence: str) -> str:
    """Validate a divergence name (one of :data:`DIVERGENCES`)."""
    if divergence not in DIVERGENCES:
        raise InputError(
            f"The 'divergence' parameter must be one of {DIVERGENCES}. Got {divergence!r} instead."
        )
    return divergence


def check_radius(radius, divergence: str) -> float:
    """A KL or chi-square radius ``>= 0``, or a CVaR level in (0, 1]."""
    if divergence == "cvar":
        a = V.positive(radius, "radius (the CVaR level alpha)")
        if a > 1:
            raise InputError(f"The CVaR level alpha must lie in (0, 1]. Got {a} instead.")
        return a
    return V.positive(radius, "radius", allow_zero=True, allow_inf=False)


def _losses_weights(losses, weights):
    lo = V.as_vector(losses, "losses")
    if lo.shape[0] == 0:
        raise InputError("losses is empty: need at least one pair")
    return lo, V.as_weights(weights, lo.shape[0], "weights")


def worst_case(losses, *, weights=None, divergence: str = "kl", radius: float) -> np.ndarray:
    """The adversary's law ``q`` (n,) attaining ``sup { E_q l : D(q || p) <= radius }``.

    Parameters
    ----------
    losses : array_like, shape (n,)
        Per-pair losses (nats).
    weights : array_like, shape (n,), optional
        Nominal probabilities ``p`` (default uniform 1/n).
    divergence : {"kl", "chi2", "cvar"}
    radius : float
        KL or chi-square radius (>= 0), or the CVaR level alpha in (0, 1].

    Returns
    -------
    ndarray, shape (n,)
        ``q``, summing to 1, zero where ``p`` is zero.

    Raises
    ------
    SolverError
        KL only: the scalar root does not reproduce the radius (losses spread beyond float64).
    """
    lo, p = _losses_weights(losses, weights)
    check_divergence(divergence)
    r = check_radius(radius, divergence)
    if divergence == "chi2":
        return L.chi2_weights(lo, rho=r, weights=p)
    if divergence == "cvar":
        return L.cvar_weights(lo, level=r, weights=p)
    return _kl_worst_case(lo, p, r)


def _kl_worst_case(lo: np.ndarray, p: np.ndarray, rho: float) -> np.ndarray:
    from .exact.kl_tilt import SMALL_RHO, kl_lambda_for_theta, kl_small_radius_bounds, kl_tilt

    if rho == 0:
        return p.copy()
    pos = p > 0
    if rho < SMALL_RHO:  # under the root's resolution: the centred feasible point
        q = np.zeros_like(p)  # (docs/theory.md#kl-small-radius)
        q[pos] = kl_small_radius_bounds(lo[pos], p[pos] / p[pos].sum(), rho)["q"]
        return q
    lam = kl_lambda_for_theta(lo, p, rho)
    q = np.zeros_like(p)
    if lam == 0.0:  # max-loss regime (or constant losses): p restricted to the argmax set
        lmax = float(lo[pos].max())
        top = pos & (lo >= lmax - 1e-14 * max(1.0, abs(lmax)))
        if -math.log(p[top].sum()) > rho * (1 + 1e-9) + 1e-14:
            raise SolverError(
                f"KL worst case: no multiplier reproduces radius {rho!r} "
                "(the losses' spread is at the limit of float64).",
                status="root_failed",
                hint="rescale the losses (e.g. a smaller beta).",
            )
        q[top] = p[top] / p[top].sum()
        return q
    qp, kl, _ = kl_tilt(lo[pos], p[pos], lam)
    if not abs(kl - rho) <= 1e-9 * max(rho, 1e-12) + 1e-14:
        raise SolverError(
            f"KL worst case: the tilted distribution has KL {kl!r}, not the radius {rho!r}.",
            status="root_inaccurate",
            hint="rescale the losses (e.g. a smaller beta).",
        )
    q[pos] = qp
    return q


def ball_size(q, p, divergence: str) -> float:
    """The size of the smallest ball around ``p`` containing ``q``: ``KL(q || p)``,
    ``1/2 sum_i p_i (q_i / p_i - 1)^2``, or for CVaR the largest level
    ``alpha = 1 / max_i (q_i / p_i)`` with ``q <= p / alpha``."""
    check_divergence(divergence)
    q = np.asarray(q, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if divergence == "kl":
        return L.kl_divergence(q, p)
    if divergence == "chi2":
        return L.chi2_divergence(q, p)
    if np.any((p == 0) & (q > 0)):
        return 0.0
    k = p > 0
    return float(1.0 / np.max(q[k] / p[k]))


def _summary(lo, p, q) -> dict:
    k = p > 0
    return {
        "nominal_loss": float(p @ lo),
        "worst_loss": float(q @ lo),
        "ess": float(1.0 / np.sum(q**2)),
        "ess_fraction": float(np.sum(p**2) / np.sum(q**2)),
        "max_weight": float(q.max()),
        "max_ratio": float(np.max(q[k] / p[k])),
    }


def profile(losses, *, weights=None, divergence: str = "kl", radii) -> pd.DataFrame:
    """Exact robustness profile of per-pair losses over a list of radii.

    Parameters
    ----------
    losses : array_like, shape (n,)
        Per-pair losses ``l_i`` (nats).
    weights : array_like, shape (n,), optional
        Nominal probabilities ``p`` (default uniform).
    divergence : {"kl", "chi2", "cvar"}
    radii : sequence of float
        KL/chi-square radii (>= 0) or CVaR levels in (0, 1].

    Returns
    -------
    DataFrame
        One row per radius: ``divergence, radius, nominal_loss`` (``sum p l``), ``worst_loss``
        (``sum q l`` at the exact worst case q, see :func:`worst_case`), ``ess`` (Kish
        effective sample size ``1 / sum q_i^2``, in pairs), ``ess_fraction`` (``ess`` over the
        nominal ``1 / sum p_i^2``), ``max_weight`` (``max q_i``), ``max_ratio``
        (``max q_i / p_i``, how much the most upweighted pair gains) and ``ball_size`` (the
        divergence of q from p; equals the radius unless the ball reaches the max loss).
    """
    lo, p = _losses_weights(losses, weights)
    check_divergence(divergence)
    radii = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    if radii.size == 0:
        raise InputError("radii is empty: give at least one radius")
    rows = []
    for r in radii:
        q = worst_case(lo, weights=p, divergence=divergence, radius=float(r))
        rows.append(
            {"divergence": divergence, "radius": float(r)}
            | _summary(lo, p, q)
            | {"ball_size": ball_size(q, p, divergence)}
        )
    return pd.DataFrame(rows)


def worst_case_error(margins, *, weights=None, divergence: str = "kl", radius: float) -> float:
    """Largest preference error rate over the ball: ``sup_q q({i : m_i < 0})``.

    With ``P = p({m < 0})`` the answer is, exactly:
    KL: the ``s`` in ``[P, 1]`` with ``s log(s/P) + (1-s) log((1-s)/(1-P)) = radius`` (1 when
    ``radius >= log(1/P)``), found as the KL worst case of the 0/1 losses (a scalar root);
    chi-square: ``min(1, P + sqrt(2 radius P (1 - P)))``; CVaR: ``min(1, P / alpha)``.

    Parameters
    ----------
    margins : array_like, shape (n,)
        Oriented margins ``m_i`` (e.g. ``beta`` times the log-ratio difference of chosen
        over rejected); a pair is an error when ``m_i < 0``.
    weights, divergence, radius : as in :func:`profile`.

    Returns
    -------
    float in [0, 1]
    """
    m = V.as_vector(margins, "margins")
    err = (m < 0).astype(np.float64)
    q = worst_case(err, weights=weights, divergence=divergence, radius=radius)
    return float(min(1.0, q @ err))


def top_pairs(
    losses, *, weights=None, divergence: str = "kl", radius: float, k: int = 10
) -> pd.DataFrame:
    """The ``k`` pairs the worst case upweights most.

    Returns
    -------
    DataFrame
        Columns ``index`` (position in ``losses``), ``loss``, ``weight`` (p), ``worst_weight``
        (q) and ``ratio`` (q / p), sorted by ratio then loss, decreasing; at most k rows.
    """
    lo, p = _losses_weights(losses, weights)
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise InputError(f"The 'k' parameter of top_pairs must be a positive integer. Got {k!r}.")
    q = worst_case(lo, weights=p, divergence=divergence, radius=radius)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(p > 0, q / p, 0.0)
    order = np.lexsort((-lo, -ratio))[: int(k)]
    return pd.DataFrame(
        {
            "index": order,
            "loss": lo[order],
            "weight": p[order],
            "worst_weight": q[order],
            "ratio": ratio[order],
        }
    )


def group_profile(losses, groups, *, weights=None) -> pd.DataFrame:
    """Mean loss per group and the worst group.

    Parameters
    ----------
    losses : array_like, shape (n,)
    groups : array_like, shape (n,)
        One label per pair.
    weights : array_like, shape (n,), optional

    Returns
    -------
    DataFrame
        One row per group: ``group``, ``n_pairs``, ``share`` (``P_g = sum_{i in g} p_i``),
        ``loss`` (``sum_{i in g} p_i l_i / P_g``), ``worst`` (True on the group of largest
        loss), ``covering_kl_radius`` (``log(1 / P_g)``, the KL radius whose worst case bounds
        this group's loss).
    """
    lo, p = _losses_weights(losses, weights)
    labels, gl = L.group_losses(lo, groups, weights=p)
    _, idx = L.group_indices(groups, lo.shape[0])
    share = np.bincount(idx, weights=p, minlength=labels.shape[0])
    count = np.bincount(idx, minlength=labels.shape[0])
    worst = np.zeros(labels.shape[0], dtype=bool)
    worst[int(np.argmax(gl))] = True
    return pd.DataFrame(
        {
            "group": labels,
            "n_pairs": count,
            "share": share,
            "loss": gl,
            "worst": worst,
            "covering_kl_radius": -np.log(share),
        }
    )


def radius_for_subpopulation(alpha: float, divergence: str = "kl") -> float:
    """The smallest radius whose ball contains every subpopulation of mass ``>= alpha``.

    A subpopulation of mass alpha is ``q = p 1_S / alpha`` with ``p(S) = alpha``. Its
    divergence from p is ``KL = log(1 / alpha)`` and
    ``chi2 = 1/2 [alpha (1/alpha - 1)^2 + (1 - alpha)] = (1 - alpha) / (2 alpha)`` (the project's
    chi-square carries a factor 1/2); it satisfies ``q <= p / alpha``, so the CVaR level is
    alpha itself. Larger subpopulations have smaller divergences
    (docs/theory.md#subpopulation-radius).

    Parameters
    ----------
    alpha : float in (0, 1]
        The smallest share to cover (e.g. the smallest group's share of the data).
    divergence : {"kl", "chi2", "cvar"}

    Returns
    -------
    float
        KL or chi-square radius, or the CVaR level.
    """
    check_divergence(divergence)
    a = V.positive(alpha, "alpha")
    if a > 1:
        raise InputError(f"The 'alpha' parameter must lie in (0, 1]. Got {a} instead.")
    if divergence == "kl":
        return float(math.log(1.0 / a))
    if divergence == "chi2":
        return float((1.0 - a) / (2.0 * a))
    return float(a)
