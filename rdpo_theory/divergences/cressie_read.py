"""The Cressie-Read (power divergence) balls (docs/theory.md#cressie-read-ball). Pure numpy.

For ``k > 1``, ``f_k(t) = (t^k - k t + k - 1) / (k (k - 1))`` and
``D_k(q || p) = sum_i p_i f_k(q_i / p_i)``. ``k = 2`` is this project's chi-square divergence
exactly (``f_2(t) = (t - 1)^2 / 2``, the convention with the 1/2), and ``k -> 1`` is KL
(``CressieRead(1)`` is the KL ball itself).

The supremum at fixed losses has a one-dimensional dual (Duchi and Namkoong 2021): with
``k* = k / (k - 1)`` and ``c_k = (1 + k (k - 1) rho)^(1 / k)``,

    sup { E_q l : D_k(q || p) <= rho } = inf_eta  eta + c_k (E_p (l - eta)_+^k*)^(1 / k*),

attained by ``q_i ∝ p_i (l_i - eta*)_+^(1 / (k - 1))``; when
``c_k^k P(argmax l)^(k - 1) >= 1`` the ball holds ``p`` restricted to the argmax set. The
minimiser ``eta*`` is the one scalar root of ``D_k(q_eta || p) = rho`` (KKT), computed in log
space with ``f_k`` written through ``expm1`` so that it stays accurate as ``k -> 1`` (measured:
at ``rho = 1e-6`` the gap to the KL limit is 2.8e-9, 2.8e-10, 2.8e-11 nats at
``k - 1 = 1e-1, 1e-2, 1e-3``, and the dual at ``eta*`` is within 1e-10 of the value).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _validate as V
from ..errors import InputError, SolverError
from .base import AmbiguitySet, Supremum, argmax_set, check_alpha, losses_weights, unit_rows
from .kl import KL


def _log_moment(v: np.ndarray, logp: np.ndarray, s: float) -> float:
    """``log E_p v^s`` over ``v > 0`` (log-sum-exp: ``s`` may be 1e5 near ``k = 1``)."""
    from scipy.special import logsumexp

    pos = v > 0
    if not pos.any():
        return -math.inf
    return float(logsumexp(logp[pos] + s * np.log(v[pos])))


class CressieRead(AmbiguitySet):
    """The Cressie-Read ball ``{q : D_k(q || p) <= rho}`` of order ``k >= 1`` (``k = 1``: KL).

    Worst case ``q_i ∝ p_i (l_i - eta*)_+^(1 / (k - 1))``; dual ``{"eta": eta*}`` of
    ``inf_eta eta + (1 + k (k - 1) rho)^(1/k) ||(l - eta)_+||_{k/(k-1), p}`` (``{"lam": ...}``
    of the KL dual at ``k = 1``). Covers a subpopulation of share alpha at
    ``(alpha^(1 - k) - 1) / (k (k - 1))`` (``log(1 / alpha)`` at ``k = 1``).
    """

    family = "cressie-read"
    anchor = "docs/theory.md#cressie-read-ball"
    title = "Cressie-Read"

    def __init__(self, k: float = 2.0):
        k = V.positive(k, "k")
        if k < 1:
            raise InputError(f"The 'k' parameter of CressieRead must be a float >= 1. Got {k}.")
        self.k = k

    def __repr__(self) -> str:
        return f"CressieRead(k={self.k!r})"

    @property
    def dpo_method(self) -> str:  # the exact program is a power cone for k > 1 (KL: exact.kldpo)
        return "crdpo" if self.k > 1 else ""

    def dual_penalty(self, v, vt, p, tie_mass: float, rho: float):
        """``(1 + k (k - 1) rho)^(1/k) ||(v, vt)||_{k*, (p, tie_mass)}``, ``k* = k / (k - 1)``:
        a p-norm cone (cvxpy writes ``k*`` as a rational, exactly for rational ``k``)."""
        import cvxpy as cp

        ks = self.k / (self.k - 1.0)
        x = cp.hstack([cp.multiply(p ** (1 / ks), v), tie_mass ** (1 / ks) * vt])
        return (1.0 + self.k * (self.k - 1.0) * rho) ** (1 / self.k) * cp.pnorm(x, ks)

    def balancing_law(self, A: np.ndarray, p: np.ndarray):
        """``min D_k(q || p)`` s.t. ``A^T q = 0``, as ``min sum_i p_i^(1-k) q_i^k`` (a power cone,
        Clarabel); ``(inf, None)`` if infeasible."""
        import cvxpy as cp

        Au = unit_rows(A)
        q = cp.Variable(Au.shape[0], nonneg=True)
        obj = cp.sum(cp.multiply(p ** (1.0 - self.k), cp.power(q, self.k)))
        prob = cp.Problem(cp.Minimize(obj), [cp.sum(q) == 1, Au.T @ q == 0])
        prob.solve(solver="CLARABEL")
        if prob.status == cp.INFEASIBLE:
            return math.inf, None
        if prob.status != cp.OPTIMAL:
            raise SolverError("collapse certificate: solver did not finish", status=prob.status)
        qv = np.clip(np.asarray(q.value, dtype=float), 0.0, None)
        qv = qv / qv.sum()
        return self.divergence(qv, p), qv

    def divergence(self, q, p) -> float:
        """``sum_i p_i f_k(q_i / p_i)`` (inf when ``q`` charges a point where ``p = 0``)."""
        if self.k == 1:
            return KL().divergence(q, p)
        q = np.asarray(q, dtype=np.float64)
        p = np.asarray(p, dtype=np.float64)
        if np.any((p == 0) & (q > 0)):
            return math.inf
        m = p > 0
        k, t = self.k, q[m] / p[m]
        return float(p[m] @ ((t**k - k * t + k - 1.0) / (k * (k - 1.0))))

    def radius_for_subpopulation(self, alpha: float) -> float:
        """``D_k(p 1_S / alpha || p) = (alpha^(1 - k) - 1) / (k (k - 1))``."""
        a = check_alpha(alpha)
        if self.k == 1:
            return KL().radius_for_subpopulation(a)
        return float((a ** (1.0 - self.k) - 1.0) / (self.k * (self.k - 1.0)))

    def dual_value(self, losses, weights=None, *, rho: float, eta: float | None = None, lam=None):
        lo, p = losses_weights(losses, weights)
        rho = self.check(rho)
        if self.k == 1:
            return KL().dual_value(lo, p, rho=rho, lam=lam)
        ks = self.k / (self.k - 1.0)
        logc = math.log1p(self.k * (self.k - 1.0) * rho) / self.k
        m = p > 0
        norm = math.exp(logc + _log_moment(lo[m] - eta, np.log(p[m]), ks) / ks)
        return float(eta + norm)

    def supremum(self, losses, weights=None, *, rho: float) -> Supremum:
        lo, p = losses_weights(losses, weights)
        rho = self.check(rho)
        if self.k == 1:
            return KL().supremum(lo, p, rho=rho)
        k, m = self.k, p > 0
        l, logp = lo[m], np.log(p[m])
        top, bottom = float(l.max()), float(l.min())
        if rho == 0 or top - bottom <= 1e-15 * max(1.0, abs(top)):
            return Supremum(float(p @ lo), p.copy(), {"eta": math.nan}, "nominal")
        logc = math.log1p(k * (k - 1.0) * rho) / k
        ks = k / (k - 1.0)
        P = float(p[argmax_set(lo, p)].sum())
        if k * logc + (k - 1.0) * math.log(P) >= 0:  # the argmax set is inside the ball
            q = np.where(argmax_set(lo, p), p, 0.0)
            return Supremum(top, q / q.sum(), {"eta": top}, "max-loss")
        eta = self._eta(l - top, logp, rho, top - bottom) + top
        v = np.maximum(lo - eta, 0.0)
        q = np.zeros_like(p)
        pos = m & (v > 0)
        a = np.log(p[pos]) + (ks - 1.0) * np.log(v[pos])
        e = np.exp(a - a.max())
        q[pos] = e / e.sum()
        value = top + float(q @ (lo - top))  # around max l: no cancellation of order |l|
        return Supremum(value, q, {"eta": float(eta)}, "interior")

    def _eta(self, d, logp, rho, spread) -> float:
        """The dual minimiser for losses shifted to ``max = 0`` (``d <= 0``): the ``eta < 0`` at
        which the tilt ``q_eta ∝ p (d - eta)_+^(1/(k-1))`` has ``D_k(q_eta || p) = rho`` (the
        KKT point; ``D_k(q_eta)`` grows from 0 at ``eta = -inf`` to the argmax set's divergence
        at ``eta = 0``). This root is well conditioned even near ``k = 1``, where the
        stationarity condition of the dual is a difference of numbers of order ``k* log|eta|``.
        """
        from scipy.optimize import brentq

        k, r = self.k, 1.0 / (self.k - 1.0)

        def excess(eta):  # D_k(q_eta || p) - rho, with f_k written without cancellation
            v = d - eta
            pos = v > 0
            a = r * np.log(v[pos])
            from scipy.special import logsumexp

            u = a - logsumexp(a + logp[pos])  # log(q_i / p_i) on the support of q
            f = (np.exp(u) * np.expm1((k - 1.0) * u) * r - np.expm1(u)) / k
            rest = float(np.exp(logp[~pos]).sum()) / k  # f_k(0) = 1 / k on the rest
            return float(np.exp(logp[pos]) @ f) + rest - rho

        hi = -1e-12 * spread
        while excess(hi) < 0:  # only when the argmax test was decided by rounding
            hi *= 1e-3
            if hi > -1e-300:
                return 0.0
        lo = -spread
        while excess(lo) > 0:
            lo *= 2.0
        return float(brentq(excess, lo, hi, xtol=1e-15 * spread, rtol=1e-15, maxiter=500))


__all__ = ["CressieRead"]
