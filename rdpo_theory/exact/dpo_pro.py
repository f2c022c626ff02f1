"""DPO-PRO: DPO with label-only (preference) ambiguity, exact and certified for log-linear
policies (docs/theory.md#dpo-pro; Kim, Verma, Tec and Tambe, arXiv 2510.23590).

DPO-PRO keeps the pairs ``(s, a1, a2)`` and lets an adversary move only the *preference
probability* of each pair inside a chi-square ball around the observed soft label ``q``:

    L_PRO(theta) = sum_i p_i sup { f_i(pi) : pi in [0, 1], (pi - q_i)^2 / (q_i (1 - q_i)) <= rho }

with ``f_i(pi) = pi softplus(-m_i) + (1 - pi) softplus(m_i)`` the expected DPO loss of row ``i``
when its recorded label is right with probability ``pi``, and ``m_i = sy_i beta
(theta - theta_ref) . x_i``. The ball is an interval ``[lo_i, hi_i]`` with half-width
``delta_i = sqrt(rho q_i (1 - q_i))`` (clipped to [0, 1]); since ``softplus(-m) - softplus(m) =
-m`` the supremum is attained at an end and

    sup = softplus(m_i) + max(-lo_i m_i, -hi_i m_i)
        = softplus(-m_i) + (1 - q_i) m_i + (delta of the active end) |m_i|,

DPO at the soft label plus a weighted absolute-margin penalty: convex in theta. With hard
labels (``q_i`` in {0, 1}) the ball is the point ``q_i`` and DPO-PRO is DPO.

Soft labels: ``q`` may be given per row (the probability that the row's recorded preference
is right). Otherwise it is read off the data: the rows of one pair ``{x, -x}`` are pooled and
``q_i`` is the share of the pair's weight whose signed feature ``sy x`` agrees with row ``i``
(:func:`soft_labels`). Summing the per-row suprema then equals the per-pair supremum of the
paper (the interval for the pair's other orientation is the mirror image).

Certificate (``docs/theory.md#optimality-gap``): for any ``pi_i`` in the intervals,
``min_theta sum_i p_i f_i(pi_i)`` is a lower bound of ``min L_PRO`` (weak duality), and
``f_i(pi) = softplus(-m_i) + (1 - pi) m_i`` is a logistic objective plus a linear term, which
:func:`.optimality.logistic_lower_bound` bounds from below. The ``pi`` used is the program's
saddle point (the multipliers of the two epigraph constraints).
"""

from __future__ import annotations

import time

import numpy as np

from .. import _validate as V
from .. import losses as L
from .. import options as O
from ..data import PreferenceData
from ..errors import InputError, SolverError
from ..lazy import cvxpy as cp
from ..objective_kernels import label_interval
from ._common import solve_with_retries
from .dpo import informative_rows
from .optimality import logistic_lower_bound
from .problem import prepare
from .result import ExactResult, certify_optimal
from .status import REGIME_NOMINAL, STATUS_OPTIMAL

LOG2 = float(np.log(2.0))


# ---------------------------------------------------------------------------- numpy kernel
def soft_labels(data: PreferenceData, *, decimals: int = 12) -> np.ndarray:
    """Per-row soft labels ``q_i`` (n,): the share of the weight of row ``i``'s pair ``{x, -x}``
    whose signed feature ``sy x`` points the same way as row ``i``'s. Rows with ``x = 0`` get
    ``q = 1`` (their loss is constant). Rows are matched on ``x`` rounded to ``decimals``."""
    X = np.asarray(data.X, dtype=float)
    n = X.shape[0]
    nz = X != 0
    first = np.where(nz.any(axis=1), np.argmax(nz, axis=1), 0)
    sgn = np.sign(X[np.arange(n), first])
    sgn[sgn == 0] = 1.0
    canon = np.round(X * sgn[:, None], decimals)
    _, pair = np.unique(canon, axis=0, return_inverse=True)
    pair = pair.ravel()
    direction = data.signed_labels * sgn  # +1: the row prefers the canonical orientation
    w = data.weights
    total = np.bincount(pair, weights=w)
    plus = np.bincount(pair, weights=w * (direction > 0))
    share_plus = np.divide(plus, total, out=np.ones_like(total), where=total > 0)
    q = np.where(direction > 0, share_plus[pair], 1.0 - share_plus[pair])
    q[~nz.any(axis=1)] = 1.0
    return q


def dpo_pro_loss(m, q, *, rho: float) -> np.ndarray:
    """DPO-PRO per-row loss (nats): ``sup_{pi in [lo, hi]} pi softplus(-m) + (1 - pi)
    softplus(m) = softplus(m) + max(-lo m, -hi m)`` elementwise (docs/theory.md#dpo-pro).

    Parameters
    ----------
    m : array_like (n,)
        Scaled margins ``sy beta (theta - theta_ref) . x``.
    q : array_like (n,)
        Probability that each row's recorded preference is right (1 for hard labels).
    rho : float >= 0
        Chi-square radius of the label ball.
    """
    m = np.asarray(m, dtype=float)
    lo, hi = label_interval(q, rho)
    return L.dpo_loss(-m) + np.maximum(-lo * m, -hi * m)


def worst_labels(m, q, *, rho: float) -> np.ndarray:
    """The adversary's label probabilities ``pi_i`` (the maximising end of the interval)."""
    lo, hi = label_interval(q, rho)
    return np.where(np.asarray(m) > 0, lo, hi)


# ---------------------------------------------------------------------------- exact solver
@O.declare({"rho": O.NONNEGATIVE, "beta": O.POSITIVE}, owner="dpo_pro")
def dpo_pro(
    X,
    y=None,
    *,
    rho: float,
    beta: float,
    weights=None,
    q=None,
    theta_ref=None,
    radius=None,
    cvxpy_solver: str = "CLARABEL",
) -> ExactResult:
    """Exact DPO-PRO (docs/theory.md#dpo-pro), a convex conic program:

        min_theta sum_i p_i [softplus(m_i) + t_i],  t_i >= -lo_i m_i,  t_i >= -hi_i m_i,

    ``||theta||_2 <= radius`` when given; ``[lo_i, hi_i]`` the chi-square label ball of radius
    ``rho`` around ``q_i`` (:func:`label_interval`).

    Parameters
    ----------
    X : array_like (n, d) or PreferenceData
    y : array_like (n,), labels in {0, 1}
    rho : float >= 0
        Chi-square radius of each pair's label ball (dimensionless).
    beta : float > 0
    weights : array_like (n,), optional
    q : array_like (n,), optional
        Soft labels: the probability that row ``i``'s recorded preference is right. Default:
        pooled from the data (:func:`soft_labels`).
    theta_ref : array_like (d,), optional
    radius : float, optional
    cvxpy_solver : str
        Conic backend (default Clarabel).

    Returns
    -------
    ExactResult
        ``value`` = the DPO-PRO risk at theta (nats, numpy), ``optimality_gap`` certified,
        ``info["worst_labels"]`` = the adversary's label probabilities ``pi`` (n,) at theta
        (``worst_case`` stays None: the law of the pairs does not move),
        ``info["soft_labels"]`` = q, regime ``"nominal"``.
    """
    cvxpy_solver = V.cvxpy_solver(cvxpy_solver, method="dpo_pro")
    prob = prepare(X, y, weights, beta=beta, theta_ref=theta_ref, radius=radius)
    d, beta, tref = prob.data, prob.beta, prob.tref
    qq = soft_labels(d) if q is None else np.asarray(q, dtype=float)
    if qq.shape != (d.n,) or not np.all((qq >= 0) & (qq <= 1)):
        raise InputError(f"q must be an array of shape ({d.n},) with entries in [0, 1]")
    lo, hi = label_interval(qq, rho)
    keep = informative_rows(d.X, d.weights)
    A = d.signed_labels[keep, None] * beta * d.X[keep]
    p, lo_k, hi_k = d.weights[keep], lo[keep], hi[keep]
    tie = float(d.weights[~keep].sum())
    t0 = time.perf_counter()
    if not keep.any():
        th = tref.copy() if prob.radius is None else _into(tref, prob.radius)
        return ExactResult(th, LOG2, STATUS_OPTIMAL, "dpo-pro", optimality_gap=0.0,
                           info={"solver": "none (all losses constant)", "soft_labels": qq},
                           regime=REGIME_NOMINAL)  # fmt: skip
    amax = float(np.abs(A).max())
    s = float(2.0 ** np.round(np.log2(amax))) if amax > 0 else 1.0
    Au, tref_u = A / s, tref * s
    rad_u = None if prob.radius is None else prob.radius * s
    th = cp.Variable(d.d)
    m = Au @ th - Au @ tref_u
    t = cp.Variable(A.shape[0])
    c_lo, c_hi = t >= cp.multiply(-lo_k, m), t >= cp.multiply(-hi_k, m)
    cons = [c_lo, c_hi] + ([cp.norm(th, 2) <= rad_u] if rad_u is not None else [])
    obj = p @ (cp.logistic(m) + t) + tie * LOG2
    problem = cp.Problem(cp.Minimize(obj), cons)
    solve_with_retries(problem, what="exact DPO-PRO", cvxpy_solver=cvxpy_solver)
    thu = np.asarray(th.value, dtype=float)
    if rad_u is not None and np.linalg.norm(thu) > rad_u:
        thu *= rad_u / np.linalg.norm(thu)
    theta = thu / s
    margins = L.margins(theta, d.X, d.y, beta=beta, theta_ref=tref)
    value = float(d.weights @ dpo_pro_loss(margins, qq, rho=rho))
    # the saddle label probabilities: multipliers of the two epigraph constraints
    a, b = (np.clip(np.asarray(c.dual_value, dtype=float), 0, None) for c in (c_lo, c_hi))
    share = np.divide(a, a + b, out=np.full_like(a, 0.5), where=(a + b) > 0)
    pi = share * lo_k + (1.0 - share) * hi_k
    # f_i(pi) = softplus(-m_i) + (1 - pi_i) m_i: logistic rows + linear term sum p(1-pi) a
    lower, oinfo = logistic_lower_bound(
        Au,
        p,
        thu,
        theta_ref=tref_u,
        radius=rad_u,
        linear=Au.T @ (p * (1.0 - pi)),
        constant=tie * LOG2,
    )
    if rad_u is None and not np.isfinite(lower):
        # the lower bound is -inf only when the logistic part leaves a direction free: with
        # hard labels and separable data the minimiser is at infinity
        raise SolverError(
            "exact DPO-PRO: without a radius the objective decreases along a direction the "
            "data leave free (separable pairs with hard labels), so no minimiser is certified.",
            status="unbounded",
            hint="pass a finite radius= (the parameter bound B).",
        )
    gap = certify_optimal(value, lower, what="exact DPO-PRO")
    worst = worst_labels(margins, qq, rho=rho)
    return ExactResult(
        theta=theta,
        value=value,
        status=STATUS_OPTIMAL,
        method="dpo-pro",
        optimality_gap=gap,
        info={
            "solver": "cvxpy",
            "cvxpy_solver": cvxpy_solver,
            "seconds": time.perf_counter() - t0,
            "solver_value": float(problem.value),
            "soft_labels": qq,
            "worst_labels": worst,
            "optimality": oinfo,
        },
        regime=REGIME_NOMINAL,
    )


def _into(theta, radius):
    n = float(np.linalg.norm(theta))
    return theta if n <= radius else theta * (radius / n)


__all__ = ["dpo_pro", "dpo_pro_loss", "label_interval", "soft_labels", "worst_labels"]
