"""Independent references for the exact robust solvers, written for the tests only.

Nothing here calls the package's solvers: the KL supremum comes from its one-dimensional dual
minimised by scipy, the max-loss limit from a max-margin SOCP in cvxpy, and the minimax value
from multi-start SLSQP (or a grid in d = 1) on the exact robust objective. Each reference is
either exact (the SOCP) or an upper bound of the minimax value (a feasible theta's robust
objective), which is what the honesty checks ``value - optimality_gap <= reference`` need.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit


def softplus(z):
    return np.logaddexp(0.0, z)


def losses(theta, X, y, beta, theta_ref=None):
    """DPO losses ``softplus(-(2y - 1) beta x . (theta - theta_ref))``."""
    d = X.shape[1]
    tref = np.zeros(d) if theta_ref is None else np.asarray(theta_ref, dtype=float)
    return softplus(-(2 * y - 1) * beta * (X @ (np.asarray(theta, dtype=float) - tref)))


def kl_sup(l, p, rho, *, with_law=False):
    """``sup {E_q l : KL(q || p) <= rho}`` as ``inf_{lam > 0} lam rho + lam log E_p e^{l/lam}``
    (strong duality), minimised by a bounded scalar search in log lam, and the lam -> 0 limit
    ``max l`` (an upper bound of the supremum for every rho). With ``with_law`` also the
    maximising law ``q ∝ p e^{l / lam*}`` (uniform on the argmax set in the limit)."""
    l, p = np.asarray(l, dtype=float), np.asarray(p, dtype=float)
    pos = p > 0
    top = float(l[pos].max())
    spread = top - float(l[pos].min())
    if rho == 0 or spread == 0:
        val = float(p @ l) if rho == 0 else top
        return (val, p.copy()) if with_law else val
    lp = np.where(pos, np.log(np.where(pos, p, 1.0)), -np.inf)

    def F(s):
        lam = np.exp(s)
        return lam * rho + top + lam * np.log(np.sum(np.exp((l - top) / lam + lp)))

    # F is convex in lam, hence unimodal in s = log lam: a bounded Brent search finds its min
    lo, hi = np.log(spread) - 40.0, np.log(spread) + 12.0
    res = minimize_scalar(F, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    val = float(min(res.fun, F(hi), top))
    if not with_law:
        return val
    if val == top:
        q = np.where(pos & (l >= top - 1e-12 * max(1.0, abs(top))), p, 0.0)
    else:
        a = (l - top) / np.exp(res.x) + lp
        q = np.exp(a - a.max())
    return val, q / q.sum()


def kl_robust(theta, X, y, beta, rho, weights=None, theta_ref=None):
    """The exact KL-robust objective at theta (nats)."""
    n = X.shape[0]
    p = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=float)
    return kl_sup(losses(theta, X, y, beta, theta_ref), p, rho)


def kl_robust_grad(theta, X, y, beta, rho, weights=None, theta_ref=None):
    """``(value, gradient)`` of the KL-robust objective: by Danskin's theorem the gradient is
    ``E_q* grad l`` for the maximising law q* (a subgradient in the max-loss limit)."""
    n, d = X.shape
    p = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=float)
    tref = np.zeros(d) if theta_ref is None else np.asarray(theta_ref, dtype=float)
    c = (2 * y - 1) * beta
    m = c * (X @ (np.asarray(theta, dtype=float) - tref))
    val, q = kl_sup(softplus(-m), p, rho, with_law=True)
    return val, X.T @ (q * c * -expit(-m))


def max_loss_value(X, y, beta, radius, weights=None, theta_ref=None):
    """``min_{||theta|| <= radius} max_{i: p_i > 0} l_i(theta) = softplus(-t*)`` with ``t*`` the
    max-margin SOCP's value (rows scaled to unit norm, theta in units of the radius)."""
    n, d = X.shape
    p = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=float)
    tref = np.zeros(d) if theta_ref is None else np.asarray(theta_ref, dtype=float)
    A = ((2 * y - 1) * beta)[:, None] * X
    A = A[p > 0]
    norms = np.linalg.norm(A, axis=1)
    zero = norms == 0
    A, norms = A[~zero], norms[~zero]
    R = float(radius)
    phi, t = cp.Variable(d), cp.Variable(A.shape[0])
    # margin of row i: norms_i * R * (unit_i . phi - unit_i . tref / R); maximise the smallest
    U = A / norms[:, None]
    cons = [cp.norm(phi, 2) <= 1.0, t == cp.multiply(norms * R, U @ phi - U @ tref / R)]
    s = cp.Variable()
    cons.append(t >= s)
    if zero.any():
        cons.append(s <= 0)
    cp.Problem(cp.Maximize(s), cons).solve(solver="CLARABEL")
    return float(softplus(-s.value))


def slsqp_minimax(robust, d, radius, *, starts=12, seed=0, scale=1.0, grad=None):
    """Multi-start SLSQP on a convex robust objective over ``||theta|| <= radius`` (or R^d);
    returns the best value found: a feasible point's objective, an upper bound of the min.
    ``scale`` is the natural size of theta (starts are drawn at that size); ``grad``, if
    given, returns ``(value, gradient)``."""
    rng = np.random.default_rng(seed)
    best = robust(np.zeros(d))
    R = np.inf if radius is None else float(radius)
    size = min(R, scale)
    unit = R if radius is not None else size  # optimise over z = theta / unit
    cons = (
        []
        if radius is None
        else [{"type": "ineq", "fun": lambda z: 1.0 - z @ z, "jac": lambda z: -2.0 * z}]
    )
    if grad is None:
        fun, jac = (lambda z: robust(z * unit)), None
    else:

        def fun(z):
            v, g = grad(z * unit)
            return v, g * unit

        jac = True
    for _ in range(starts):
        z0 = rng.normal(size=d)
        z0 *= rng.uniform(0.1, 1.0) * size / unit / max(np.linalg.norm(z0), 1e-300)
        res = minimize(
            fun,
            z0,
            jac=jac,
            method="SLSQP",
            constraints=cons,
            options={"ftol": 1e-14, "maxiter": 200},
        )
        z = res.x
        if radius is not None and np.linalg.norm(z) > 1.0:
            z = z / np.linalg.norm(z)
        best = min(best, robust(z * unit))
    return float(best)


def grid_minimax_1d(robust, radius, *, points=801):
    """d = 1: the robust objective on a grid over ``[-radius, radius]`` refined by a bounded
    scalar search around the best grid point (an upper bound of the min, tight to ~1e-12)."""
    g = np.linspace(-radius, radius, points)
    vals = np.array([robust(np.array([t])) for t in g])
    k = int(np.argmin(vals))
    lo, hi = g[max(k - 1, 0)], g[min(k + 1, points - 1)]
    res = minimize_scalar(
        lambda t: robust(np.array([t])),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-14 * max(radius, 1.0)},
    )
    return float(min(vals.min(), res.fun))


def kl_sup_decimal(l, p, rho, *, digits=60):
    """``sup {E_q l : KL(q || p) <= rho}`` in ``digits``-digit decimal arithmetic (Python's
    ``decimal``), for radii under float64's resolution of the tilt: the multiplier ``lam``
    solves ``KL(q_lam || p) = rho`` by bisection in ``log lam`` (KL decreases in lam), with
    ``q_lam ∝ p exp(l / lam)``. Returns ``(value, lam)`` as floats; the losses and weights
    are taken as exact decimals of their float64 values."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = digits
        L = [Decimal(float(v)) for v in l]
        P = [Decimal(float(v)) for v in p]
        tot = sum(P)
        P = [v / tot for v in P]
        R = Decimal(float(rho))
        mean = sum(pi * li for pi, li in zip(P, L))

        def tilt(lam):
            e = [pi * ((li - mean) / lam).exp() for pi, li in zip(P, L)]
            z = sum(e)
            q = [v / z for v in e]
            kl = sum(qi * (qi / pi).ln() for qi, pi in zip(q, P) if qi > 0)
            return q, kl

        var = sum(pi * (li - mean) ** 2 for pi, li in zip(P, L))
        guess = (var / (2 * R)).sqrt()
        lo, hi = guess / 8, guess * 8  # KL(lo) > rho > KL(hi) for small rho
        assert tilt(lo)[1] > R > tilt(hi)[1]
        for _ in range(200):
            mid = (lo * hi).sqrt()
            if tilt(mid)[1] > R:
                lo = mid
            else:
                hi = mid
        q, _ = tilt(hi)
        return float(sum(qi * li for qi, li in zip(q, L))), float(hi)
