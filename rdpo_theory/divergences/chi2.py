"""The chi-square ball and its exact sorted closed form (docs/theory.md#baselines,
docs/theory.md#ambiguity-sets).

This project's chi-square divergence carries a factor 1/2:
``D(q || p) = 1/2 sum_i p_i (q_i / p_i - 1)^2``, which is the Cressie-Read (power) divergence
of order ``k = 2`` exactly (docs/theory.md#ambiguity-sets). Pure numpy.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _validate as V
from ..errors import SolverError
from .base import AmbiguitySet, Supremum, check_alpha, losses_weights, unit_rows


def chi2_weights(losses, *, rho: float, weights=None) -> np.ndarray:
    """Worst-case distribution of the chi-square ball, exactly.

    ``argmax_q sum_i q_i l_i`` over the simplex subject to
    ``D(q || p) = 1/2 sum_i p_i (q_i / p_i - 1)^2 <= rho``. By the Cressie-Read dual
    (Duchi and Namkoong 2021) the answer is ``q_i = p_i (l_i - eta*)_+ / sum_j p_j (l_j - eta*)_+``
    where ``eta*`` minimises ``eta + sqrt(1 + 2 rho) sqrt(sum_i p_i (l_i - eta)_+^2)``; it is
    found exactly by sorting (see ``chi2_eta``). When
    ``sqrt((1 + 2 rho) P(argmax l)) >= 1`` the ball contains the point mass on the argmax set
    and ``q`` is ``p`` restricted to it.

    Returns
    -------
    ndarray, shape (n,), summing to 1.
    """
    lo, p = losses_weights(losses, weights)
    eta = chi2_eta(lo, p, V.positive(rho, "rho", allow_zero=True))
    if eta is None:
        return p.copy()
    top = lo >= np.max(lo[p > 0])
    if eta == np.inf:  # point mass on the argmax set
        q = np.where(top, p, 0.0)
        return q / q.sum()
    q = p * np.maximum(lo - eta, 0.0)
    return q / q.sum()


def chi2_eta(lo: np.ndarray, p: np.ndarray, rho: float):
    """``eta*`` of :func:`chi2_weights`; None when q = p (rho = 0 or constant losses); inf
    for the argmax regime.

    Exact and vectorised: with the losses sorted in decreasing order and the top k active,
    stationarity ``sqrt(1 + 2 rho) E(l - eta)_+ = sqrt(E (l - eta)_+^2)`` gives
    ``eta_k = u_k - sqrt(s2_k / ((1 + 2 rho) P_k - 1))`` (u_k, s2_k: mean and variance of the
    top k under p, P_k their mass); the answer is the k whose eta_k lies in
    ``[l_(k+1), l_(k))``.
    """
    keep = p > 0
    l, w = lo[keep], p[keep]
    lmax = l.max()
    top = l >= lmax
    if rho == 0 or np.all(top):
        return None
    c2 = 1.0 + 2.0 * rho
    if c2 * w[top].sum() >= 1.0:
        return np.inf
    order = np.argsort(-l, kind="stable")
    ls, ws = l[order], w[order]
    P = np.cumsum(ws)
    u = np.cumsum(ws * ls) / P
    s2 = np.maximum(np.cumsum(ws * (ls - u[-1]) ** 2) / P - (u - u[-1]) ** 2, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = u - np.sqrt(s2 / (c2 * P - 1.0))
    nxt = np.concatenate([ls[1:], [-np.inf]])
    ok = (c2 * P > 1.0) & (eta >= nxt) & (eta < ls)
    if not ok.any():  # rounding at a segment boundary: take the closest candidate
        bad = np.where(c2 * P > 1.0, np.maximum(nxt - eta, eta - ls), np.inf)
        return float(eta[int(np.argmin(bad))])
    return float(eta[int(np.argmax(ok))])


def chi2_objective(losses, *, rho: float, weights=None) -> float:
    """``sup { E_q l : 1/2 sum_i p_i (q_i / p_i - 1)^2 <= rho }`` (nats), via
    :func:`chi2_weights`. For small rho with every ``q_i > 0`` it equals
    ``E_p l + sqrt(2 rho Var_p(l))``."""
    lo, p = losses_weights(losses, weights)
    return float(chi2_weights(lo, rho=rho, weights=p) @ lo)


def chi2_divergence(q, p) -> float:
    """``D(q || p) = 1/2 sum_i p_i (q_i / p_i - 1)^2`` (inf if q charges a point with p = 0)."""
    q = np.asarray(q, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if np.any((p == 0) & (q > 0)):
        return float("inf")
    k = p > 0
    return float(0.5 * np.sum((q[k] - p[k]) ** 2 / p[k]))


def chi2_dual_value(lo: np.ndarray, p: np.ndarray, rho: float, eta: float) -> float:
    """``eta + sqrt(1 + 2 rho) sqrt(sum_i p_i (l_i - eta)_+^2)`` (nats): the chi-square dual at
    ``eta``, ``>= sup { E_q l : D(q || p) <= rho }`` for every real ``eta``."""
    v = np.maximum(lo - eta, 0.0)
    return float(eta + math.sqrt(1.0 + 2.0 * rho) * math.sqrt(float(p @ (v * v))))


class ChiSquare(AmbiguitySet):
    """The chi-square ball ``{q : 1/2 sum_i p_i (q_i / p_i - 1)^2 <= rho}`` (the project's
    convention, with the 1/2).

    Worst case ``q_i ∝ p_i (l_i - eta*)_+`` (:func:`chi2_weights`, exact by sorting); dual
    ``{"eta": eta*}`` of ``inf_eta eta + sqrt(1 + 2 rho) ||(l - eta)_+||_{2,p}``. Covers a
    subpopulation of share alpha at ``(1 - alpha) / (2 alpha)``.
    """

    family = "chi2"
    anchor = "docs/theory.md#chi-square-ball"
    dpo_method = "chi2dpo"
    title = "chi-square"

    def divergence(self, q, p) -> float:
        """``1/2 sum_i p_i (q_i / p_i - 1)^2`` (:func:`chi2_divergence`)."""
        return chi2_divergence(q, p)

    def into_ball(self, q, p, rho: float) -> np.ndarray:
        """As the base method, with the exact mixing weight of a quadratic divergence:
        ``D((1 - t) q + t p) = (1 - t)^2 D(q)``."""
        q = np.clip(np.asarray(q, dtype=float), 0.0, None)
        q = q / q.sum()
        D = chi2_divergence(q, p)
        t = 0.0 if D <= rho else 1.0 - np.sqrt(rho / D)
        return (1.0 - t) * q + t * p

    def radius_for_subpopulation(self, alpha: float) -> float:
        """``(1 - alpha) / (2 alpha)``."""
        a = check_alpha(alpha)
        return float((1.0 - a) / (2.0 * a))

    def supremum(self, losses, weights=None, *, rho: float) -> Supremum:
        lo, p = losses_weights(losses, weights)
        rho = self.check(rho)
        q = chi2_weights(lo, rho=rho, weights=p)
        eta = chi2_eta(lo, p, rho)
        if eta is None:
            return Supremum(float(q @ lo), q, {"eta": math.nan}, "nominal")
        if eta == np.inf:
            return Supremum(float(q @ lo), q, {"eta": float(lo[p > 0].max())}, "max-loss")
        return Supremum(float(q @ lo), q, {"eta": float(eta)}, "interior")

    def best_response(self, losses, weights, rho: float) -> np.ndarray:
        """:func:`chi2_weights` (which validates its input)."""
        return chi2_weights(losses, rho=rho, weights=weights)

    def dual_value(self, losses, weights=None, *, rho: float, eta: float) -> float:
        lo, p = losses_weights(losses, weights)
        return chi2_dual_value(lo, p, self.check(rho), float(eta))

    def dual_penalty(self, v, vt, p, tie_mass: float, rho: float):
        """``sqrt(1 + 2 rho) ||(v, vt)||_{2, (p, tie_mass)}`` (a second-order cone)."""
        import cvxpy as cp

        pen = cp.norm(cp.hstack([cp.multiply(np.sqrt(p), v), np.sqrt(tie_mass) * vt]), 2)
        return np.sqrt(1 + 2 * rho) * pen

    def balancing_law(self, A: np.ndarray, p: np.ndarray):
        """``min D(q || p)`` s.t. ``A^T q = 0``: a QP (Clarabel); ``(inf, None)`` if
        infeasible."""
        import cvxpy as cp

        Au = unit_rows(A)
        q = cp.Variable(Au.shape[0], nonneg=True)
        prob = cp.Problem(
            cp.Minimize(0.5 * cp.sum(cp.multiply(1 / p, cp.square(q - p)))),
            [cp.sum(q) == 1, Au.T @ q == 0],
        )
        prob.solve(solver="CLARABEL")
        if prob.status == cp.INFEASIBLE:
            return float("inf"), None
        if prob.status != cp.OPTIMAL:
            raise SolverError(
                "collapse certificate: solver did not finish", status=str(prob.status)
            )
        qv = np.clip(np.asarray(q.value, dtype=float), 0.0, None)
        qv = qv / qv.sum()
        return chi2_divergence(qv, p), qv


__all__ = [
    "ChiSquare",
    "chi2_divergence",
    "chi2_dual_value",
    "chi2_eta",
    "chi2_objective",
    "chi2_weights",
]
