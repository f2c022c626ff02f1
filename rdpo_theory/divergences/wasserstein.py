"""Wasserstein balls ``{Q : W_p(Q, P) <= rho}`` (docs/theory.md#wasserstein-dro,
docs/theory.md#ambiguity-sets).

A Wasserstein ball moves the pairs instead of reweighting them, so its interface differs from the
divergence balls where the maths does:

* **supremum at fixed losses**: on a finite candidate set Z' (losses ``L`` (K,) of the
  candidates, ground cost ``d`` (n, K) from the support to them), the transport LP
  ``sup { sum_ik pi_ik L_k : sum_k pi_ik = p_i, sum_ik pi_ik d_ik^p <= rho^p }``
  (:func:`transport_primal_sup`, HiGHS) with its dual ``eta rho^p + sum_i p_i max_k
  (L_k - eta d_ik^p)`` (:func:`transport_dual_value`); the worst-case law is the plan's column
  sums over the candidates, and the plan itself is the transport map;
* **robust risk of a log-linear policy** (:meth:`Wasserstein.robust_risk`): over continuous x with
  fixed labels, ``p = 1`` is the closed form ``E_P l + rho beta ||theta - theta_ref||_2``
  (docs/theory.md#w1-continuous) and ``p > 1`` the scalar dual of
  :func:`rdpo_theory.exact.wasserstein_p.robust_value` (docs/theory.md#wp-continuous); with
  ``candidates`` it is the transport LP above;
* **no reweighting**: the scalable algorithm (Algorithm 1) adds a gradient-norm penalty rather
  than weighting pairs, and a subpopulation ``p 1_S / alpha`` lies in a Wasserstein ball only at
  its (data-dependent) transport cost, so :meth:`Wasserstein.pair_weights` and
  :meth:`Wasserstein.radius_for_subpopulation` raise :class:`~rdpo_theory.InputError`.

Pure numpy and scipy: no cvxpy (the continuous ``p > 1`` risk loads the exact package).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _validate as V
from ..errors import InputError, SolverError
from .base import AmbiguitySet, Supremum


def default_cost(X, y, Xc, yc, kappa: float) -> np.ndarray:
    """``d(z_i, z'_k) = ||x_i - x'_k||_2 + kappa [y_i != y'_k]`` (n, K); inf when kappa = inf
    and the labels differ."""
    n, K = X.shape[0], Xc.shape[0]
    D = np.empty((n, K))
    step = max(1, 4_000_000 // max(1, K * X.shape[1]))
    for lo in range(0, n, step):  # exact differences (no cancellation: d(z, z) = 0 exactly)
        D[lo : lo + step] = np.linalg.norm(X[lo : lo + step, None, :] - Xc[None], axis=2)
    flip = y[:, None] != yc[None, :]
    return np.where(flip, D + kappa, D) if np.isfinite(kappa) else np.where(flip, np.inf, D)


def transport_primal_sup(L, p, C, budget: float) -> tuple[float, np.ndarray, float]:
    """The optimal-transport LP ``max sum_ik pi_ik L_k`` over plans with row sums ``p`` and
    cost ``sum_ik pi_ik C_ik <= budget``; entries with ``C_ik = inf`` are forbidden.

    Parameters
    ----------
    L : (K,) candidate losses; p : (n,) weights; C : (n, K) costs ``d^p``; budget : ``rho^p``.

    Returns
    -------
    value : float
    plan : ndarray (n, K)
        Optimal plan ``pi``; its column sums are the worst-case distribution over candidates.
    eta : float
        The LP multiplier of the budget constraint (an optimal Wasserstein dual eta).
    """
    import scipy.sparse as sp
    from scipy.optimize import linprog

    L = np.asarray(L, dtype=float)
    n, K = C.shape
    rows = np.flatnonzero(p > 0)
    allowed = np.isfinite(C[rows])
    ii, kk = np.nonzero(allowed)
    nv = ii.shape[0]
    A_eq = sp.csr_matrix((np.ones(nv), (ii, np.arange(nv))), shape=(rows.shape[0], nv))
    costs = C[rows][ii, kk]
    shift = float(L[kk].max())
    res = linprog(
        -(L[kk] - shift),
        A_ub=sp.csr_matrix(costs[None, :]),
        b_ub=[budget],
        A_eq=A_eq,
        b_eq=p[rows],
        bounds=(0, None),
        method="highs",
    )
    if res.status != 0:
        raise SolverError(
            f"transport LP (Wasserstein certificate): HiGHS ended with {res.message!r}.",
            status=f"highs_{res.status}",
            hint="check that every row can reach a candidate within the budget rho^p.",
        )
    plan = np.zeros((n, K))
    plan[rows[ii], kk] = np.clip(res.x, 0.0, None)
    eta = float(-res.ineqlin.marginals[0])
    return float(-res.fun) + shift * float(p[rows].sum()), plan, max(eta, 0.0)


def transport_dual_value(L, p, C, budget: float, eta: float) -> float:
    """``eta * budget + sum_i p_i max_k (L_k - eta C_ik)`` (docs/theory.md#finite-candidates),
    inf entries skipped."""
    rows = p > 0
    with np.errstate(invalid="ignore"):
        inner = np.where(np.isfinite(C[rows]), L[None, :] - eta * C[rows], -np.inf)
    return float(eta * budget + p[rows] @ inner.max(axis=1))


class Wasserstein(AmbiguitySet):
    """The ball ``{Q : W_p(Q, P) <= rho}`` of order ``p >= 1`` (rho in units of x).

    Parameters
    ----------
    p : float >= 1
        The order.
    cost : ndarray (n, K), optional
        Ground distance ``d`` from each support point to each candidate for the finite-candidate
        supremum (``inf`` forbids a move); :func:`default_cost` builds
        ``||x - x'||_2 + kappa [y != y']``. May also be given to :meth:`supremum`.
    """

    parameter = "rho"
    anchor = "docs/theory.md#wasserstein-dro"
    title = "Wasserstein"

    def __init__(self, p: float = 1.0, cost=None):
        p = V.positive(p, "p")
        if p < 1:
            raise InputError(f"p must be >= 1, got {p}")
        self.p = p
        self.cost = None if cost is None else np.asarray(cost, dtype=np.float64)

    @property
    def family(self) -> str:  # "w1", "w2", ... (rdpo_theory.methods vocabulary)
        return f"w{self.p:g}"

    def __repr__(self) -> str:
        return f"Wasserstein(p={self.p!r}{'' if self.cost is None else ', cost=...'})"

    def _cost(self, cost, n: int | None, K: int) -> np.ndarray:
        C = self.cost if cost is None else np.asarray(cost, dtype=np.float64)
        if C is None:
            raise InputError("a Wasserstein supremum at fixed losses needs a cost matrix (n, K)")
        n = C.shape[0] if n is None else n
        if C.shape != (n, K):
            raise InputError(f"cost must have shape ({n}, {K}), got {C.shape}")
        return C

    def supremum(self, losses, weights=None, *, rho: float, cost=None) -> Supremum:
        """The transport LP over the candidates: ``losses`` (K,) are the candidates' losses,
        ``weights`` (n,) the nominal law on the support, ``cost`` (n, K) the ground distance.
        ``worst_case`` (K,) is the law on the candidates; ``dual`` holds ``eta`` (the budget's
        multiplier) and ``plan`` (n, K), the transport map."""
        L = V.as_vector(losses, "losses")
        C = self._cost(cost, None if weights is None else len(weights), L.shape[0])
        w = V.as_weights(weights, C.shape[0], "weights")
        rho = self.check(rho)
        value, plan, eta = transport_primal_sup(L, w, C**self.p, rho**self.p)
        return Supremum(value, plan.sum(axis=0), {"eta": eta, "plan": plan}, "interior")

    def dual_value(self, losses, weights=None, *, rho: float, eta: float, cost=None) -> float:
        """``eta rho^p + sum_i p_i max_k (L_k - eta d_ik^p)`` (:func:`transport_dual_value`)."""
        L = V.as_vector(losses, "losses")
        C = self._cost(cost, None if weights is None else len(weights), L.shape[0])
        w = V.as_weights(weights, C.shape[0], "weights")
        return transport_dual_value(L, w, C**self.p, self.check(rho) ** self.p, float(eta))

    def divergence(self, q, p, cost=None) -> float:
        """``W_p`` between ``p`` (n,) on the support and ``q`` (K,) on the candidates: the
        transport LP ``min sum_ik pi_ik d_ik^p`` with marginals ``p`` and ``q``, to the ``1/p``."""
        import scipy.sparse as sp
        from scipy.optimize import linprog

        q = np.asarray(q, dtype=np.float64)
        p = np.asarray(p, dtype=np.float64)
        C = self._cost(cost, p.shape[0], q.shape[0]) ** self.p
        ok = np.isfinite(C)
        ii, kk = np.nonzero(ok)
        nv = ii.shape[0]
        A = sp.vstack(
            [
                sp.csr_matrix((np.ones(nv), (ii, np.arange(nv))), shape=(p.shape[0], nv)),
                sp.csr_matrix((np.ones(nv), (kk, np.arange(nv))), shape=(q.shape[0], nv)),
            ]
        )
        res = linprog(C[ii, kk], A_eq=A, b_eq=np.r_[p, q], bounds=(0, None), method="highs")
        if res.status == 2:
            return math.inf
        if res.status != 0:
            raise SolverError(f"W_p distance LP: {res.message}", status=f"highs_{res.status}")
        return float(max(res.fun, 0.0) ** (1.0 / self.p))

    def robust_risk(
        self,
        theta,
        data,
        *,
        rho: float,
        beta: float,
        theta_ref=None,
        candidates=None,
        cost=None,
        kappa: float = math.inf,
    ) -> float:
        """``sup_{W_p(Q, P) <= rho} E_Q l(theta)`` (nats) for the DPO losses of a log-linear
        policy: continuous x with fixed labels (closed form at ``p = 1``, the scalar dual of
        :func:`rdpo_theory.exact.wasserstein_p.robust_value` at ``p > 1``), or over
        ``candidates`` (a PreferenceData; cost :attr:`cost` or :func:`default_cost` with label
        flips at ``kappa``, or ``cost`` (n, K)) by the transport LP."""
        from ..losses import dpo_losses, dpo_risk

        rho = self.check(rho)
        kw = {"beta": beta, "theta_ref": theta_ref}
        if candidates is not None:
            C = self.cost if cost is None else cost
            if C is None:
                C = default_cost(data.X, data.y, candidates.X, candidates.y, kappa)
            lc = dpo_losses(theta, candidates, **kw)
            return self.supremum(lc, data.weights, rho=rho, cost=C).value
        if self.p == 1:
            delta = theta - V.as_theta(theta_ref, data.d)
            return dpo_risk(theta, data, **kw) + rho * beta * float(np.linalg.norm(delta))
        from ..exact.wasserstein_p import robust_value

        return robust_value(theta, data, rho=rho, p=self.p, **kw)[0]

    def radius_for_subpopulation(self, alpha: float) -> float:
        raise InputError(
            "a Wasserstein ball holds a subpopulation only at its transport cost, which depends "
            "on the data; use a divergence ball (divergences.DIVERGENCES) to cover shares"
        )

    def pair_weights(self, losses, param: float, *, weights=None):
        raise InputError(
            "a Wasserstein ball moves pairs instead of reweighting them: its scalable algorithm "
            "is a gradient-norm penalty (Algorithm 1, rdpo_theory.losses.wdpo_objective)"
        )

    def torch_pair_weights(self, per_pair, param: float, *, weights=None):
        return self.pair_weights(per_pair, param, weights=weights)


__all__ = ["Wasserstein", "default_cost", "transport_dual_value", "transport_primal_sup"]
