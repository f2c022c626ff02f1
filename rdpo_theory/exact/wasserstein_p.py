"""Exact WDPO over continuous features for W_p, p > 1 (docs/theory.md#wp-continuous).

Transport cost ``||x - x'||_2^p`` with labels fixed. The loss sees x only through ``theta . x``,
so the cheapest way to lower pair i's margin ``m_i = sy_i beta (theta - theta_ref) . x_i`` by
``delta >= 0`` costs ``(delta / (beta a))^p`` with ``a = ||theta - theta_ref||``, and the
Gao-Kleywegt dual's inner supremum is one-dimensional:

    phi_i(theta, eta) = sup_{delta >= 0}  softplus(delta - m_i) - c delta^p,
    c = eta / (beta a)^p.

Its stationarity equation ``sigmoid(delta - m) = c p delta^(p-1)`` has at most three roots:
with ``h(delta) = log sigmoid(delta - m) - log(c p) - (p - 1) log delta`` (same sign as the
equation's residual), ``h' = 0`` reads ``delta sigmoid(m - delta) = p - 1`` and the left side is
unimodal, so h has at most two critical points. We bracket every monotone piece, find each root
by bisection in ``log delta``, and keep the best of the roots and ``delta = 0``. The robust
objective is then

    V(theta) = min_{eta >= 0}  eta rho^p + sum_i p_i phi_i(theta, eta),

jointly convex in (theta, eta) (a supremum of functions convex in theta and linear in eta),
minimised by BFGS in (theta, log eta) on Danskin gradients:

    d/d eta   = rho^p - sum_i p_i (delta_i / (beta a))^p,
    grad_theta = sum_i p_i sigmoid(delta_i - m_i) (-sy_i beta x_i
                                                   + delta_i (theta - theta_ref) / a^2).

At ``theta = theta_ref`` (a = 0) moving x changes nothing and every loss is log 2; there V has
a kink, and ``theta_ref`` is optimal exactly when ``rho >= ||sum_i p_i sy_i x_i||_2`` (the
directional derivative there is ``(beta / 2)(rho ||u|| - g . u)``), a case detected in closed
form before any iteration.
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from .. import _validate as V
from ..data import PreferenceData, as_data
from ..errors import SolverError
from ..losses import dpo_loss
from ..options import NONNEGATIVE, POSITIVE, POSITIVE_INT, RADIUS, Interval, declare
from .ball import on_boundary, project_ball
from .optimality import logistic_lower_bound
from .result import OPTIMALITY_TOL as OPT_TOL
from .result import ExactResult, certify_optimal
from .status import REGIME_COLLAPSE, REGIME_DPO, REGIME_SHIFT, STATUS_OPTIMAL

WHAT = "continuous W_p WDPO"

LOG2 = math.log(2.0)
_BISECT = 110  # bisection steps: brackets are < 2^60 wide in log space, so this reaches ulps


# ---------------------------------------------------------------------------- 1-d supremum
def _bisect(fun, lo, hi, iters=_BISECT):
    """Vectorised bisection for a root of ``fun`` on [lo, hi] with ``fun(lo) >= 0 >= fun(hi)``
    or the reverse (decided per entry from the signs at the ends)."""
    lo = np.array(lo, dtype=float)
    hi = np.array(hi, dtype=float)
    f_lo = fun(lo)
    up = f_lo < 0  # fun increases across the root
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if np.all((mid == lo) | (mid == hi)):  # every bracket is down to adjacent floats
            break
        fm = fun(mid)
        go_right = np.where(up, fm < 0, fm > 0)
        lo = np.where(go_right, mid, lo)
        hi = np.where(go_right, hi, mid)
    return 0.5 * (lo + hi)


def inner_sup(m, log_c, p: float):
    """Per-pair supremum ``phi = sup_{delta >= 0} softplus(delta - m) - c delta^p`` and its argmax.

    Parameters
    ----------
    m : ndarray, shape (n,)
        Oriented scaled margins.
    log_c : ndarray or float
        ``log c`` with ``c = eta / (beta a)^p > 0`` (``+inf`` means no move is possible).
    p : float > 1

    Returns
    -------
    phi : ndarray (n,)
        The supremum (nats).
    delta : ndarray (n,)
        The maximising margin shift (the largest one on ties).
    cand_delta, cand_val : ndarray (n, 4)
        Every candidate (the up-to-three stationary points, NaN where absent, and 0) with its
        objective value; used to build primal worst cases when maximisers tie.
    """
    m = np.asarray(m, dtype=float)
    n = m.shape[0]
    log_c = np.broadcast_to(np.asarray(log_c, dtype=float), m.shape)
    cand_d = np.full((n, 4), np.nan)
    cand_d[:, 3] = 0.0
    frozen = ~np.isfinite(log_c)  # c = inf: the adversary cannot move
    act = ~frozen
    if act.any():
        ma, L = m[act], log_c[act] + math.log(p)
        q = p - 1.0
        # roots of h lie in [u_min, u_max] (u = log delta): h(u_min) >= 0 >= h(u_max)
        u_min = (log_expit(-ma) - L) / q
        u_max = -L / q
        # widen by a relative 1e-6: then h(u_min) >= q eps > 0 > -q eps >= h(u_max) strictly,
        # far above the rounding error of h
        u_min = u_min - 1e-6 * (1.0 + np.abs(u_min))
        u_max = u_max + 1e-6 * (1.0 + np.abs(u_max))

        def h(u, mm=ma, LL=L):
            return log_expit(np.exp(u) - mm) - LL - q * u

        # critical points: k(delta) = delta sigmoid(m - delta) = p - 1; k is unimodal with its
        # peak at delta0 solving delta sigmoid(delta - m) = 1, delta0 in (1, max(m, 0) + 2)
        mp = np.maximum(ma, 0.0)
        d0 = _bisect(lambda d: np.log(d) + log_expit(d - ma), np.ones_like(ma), mp + 2.0)
        two = np.log(d0) + log_expit(ma - d0) > math.log(q)
        ua = np.full_like(ma, np.inf)
        ub = np.full_like(ma, np.inf)
        if two.any():
            m2, d2 = ma[two], d0[two]

            def kk(d, mm=m2):
                return np.log(d) + log_expit(mm - d) - math.log(q)

            lo_a = np.full_like(m2, q)  # k(q) < q
            da = _bisect(kk, np.minimum(lo_a, d2), d2)
            hi_b = d2 + np.maximum(m2, 0.0) + 60.0 + abs(math.log(q))
            db = _bisect(kk, d2, hi_b)
            ua[two], ub[two] = np.log(da), np.log(db)
        ua = np.clip(ua, u_min, u_max)
        ub = np.clip(ub, u_min, u_max)
        edges = np.stack([u_min, ua, ub, u_max], axis=1)  # three monotone pieces of h
        roots = np.full((ma.shape[0], 3), np.nan)
        for j in range(3):
            lo, hi = edges[:, j], edges[:, j + 1]
            h_lo, h_hi = h(lo), h(hi)
            ok = (hi > lo) & (np.sign(h_lo) * np.sign(h_hi) <= 0)
            if ok.any():
                r = _bisect(lambda u, mm=ma[ok], LL=L[ok]: h(u, mm, LL), lo[ok], hi[ok])
                roots[ok, j] = r
        cand_d[act, :3] = np.exp(roots)
    lc = log_c[:, None]
    with np.errstate(over="ignore", invalid="ignore"):
        pen = np.where(cand_d > 0, np.exp(lc + p * np.log(np.where(cand_d > 0, cand_d, 1.0))), 0.0)
        val = dpo_loss(m[:, None] - cand_d) - pen
    val = np.where(np.isnan(cand_d), -np.inf, val)
    best = np.max(val, axis=1)
    # among (numerically) tied maximisers take the largest delta
    tie = val >= best[:, None] - 1e-12 * np.maximum(1.0, np.abs(best[:, None]))
    delta = np.max(np.where(tie, np.nan_to_num(cand_d, nan=-1.0), -1.0), axis=1)
    return best, delta, cand_d, val


# ---------------------------------------------------------------------------- dual pieces
class _Problem:
    """Data, margins and the dual ``G(theta, eta) = eta rho^p + sum_i p_i phi_i``."""

    def __init__(self, data: PreferenceData, rho, p, beta, theta_ref):
        keep = data.weights > 0
        self.X = data.X[keep]
        self.sy = data.signed_labels[keep]
        self.w = data.weights[keep] / data.weights[keep].sum()
        self.rho, self.p, self.beta, self.tref = rho, p, beta, theta_ref
        self.rp = rho**p

    def parts(self, theta, eta):
        diff = theta - self.tref
        a = float(np.linalg.norm(diff))
        m = self.sy * self.beta * (self.X @ diff)
        if a == 0.0:
            log_c = np.inf
        elif eta <= 0.0:
            return m, a, None
        else:
            log_c = math.log(eta) - self.p * math.log(self.beta * a)
        return m, a, inner_sup(m, log_c, self.p)

    def value_grad(self, theta, eta):
        m, a, sol = self.parts(theta, eta)
        if sol is None:
            return np.inf, None, None
        phi, delta = sol[0], sol[1]
        G = eta * self.rp + float(self.w @ phi)
        s = expit(delta - m)
        g_th = -(self.w * s * self.sy * self.beta) @ self.X
        if a > 0:
            g_th = g_th + float(self.w @ (s * delta)) * (theta - self.tref) / a**2
            g_eta = self.rp - float(self.w @ (delta / (self.beta * a)) ** self.p)
        else:
            g_eta = self.rp
        return G, g_th, g_eta

    def transport(self, delta, a):
        """``sum_i p_i (delta_i / (beta a))^p``: the cost of shifting margins by delta."""
        if a == 0.0:
            return 0.0
        return float(self.w @ (delta / (self.beta * a)) ** self.p)

    def best_eta(self, theta):
        """``(V(theta), eta*)``: exact 1-d minimisation of the convex ``G(theta, .)``.

        ``dG/deta = rho^p - transport(delta(eta))`` is non-decreasing; bisection in log eta.
        """
        diff = theta - self.tref
        a = float(np.linalg.norm(diff))
        if a == 0.0:
            return LOG2, 0.0
        m = self.sy * self.beta * (self.X @ diff)
        lb = math.log(self.beta * a)

        def slope(log_eta):
            d = inner_sup(m, log_eta - self.p * lb, self.p)[1]
            return self.rp - self.transport(d, a)

        lo, hi = -5.0, 5.0
        while slope(lo) > 0 and lo > -700:
            lo -= 10.0
        while slope(hi) < 0 and hi < 700:
            hi += 10.0
        for _ in range(90):
            mid = 0.5 * (lo + hi)
            if mid == lo or mid == hi:  # the bracket is down to adjacent floats
                break
            if slope(mid) < 0:
                lo = mid
            else:
                hi = mid
        # G is convex and piecewise smooth in eta: evaluate both ends of the final bracket
        best = None
        for le in (lo, hi):
            eta = math.exp(le)
            G = eta * self.rp + float(self.w @ inner_sup(m, le - self.p * lb, self.p)[0])
            if best is None or G < best[0]:
                best = (G, eta)
        return best

    def lower_bound(self, theta, d_lo, d_hi, t, radius) -> tuple[float, dict]:
        """Weak-duality lower bound of ``min_theta V`` (``docs/theory.md#optimality-gap``).

        The worst case of :meth:`primal` moves ``x_i`` to
        ``x_i - sy_i delta_i (theta - theta_ref) / (beta a^2)`` (shifting margin i by
        ``delta_i`` at cost ``(delta_i / (beta a))^p``), mixing the shifts ``d_lo`` and
        ``d_hi`` with weights ``1 - t`` and ``t``; that law Q is in the ball whatever theta
        is, so ``min_theta E_Q l(theta) <= min_theta V``, and the left side is a weighted
        logistic regression bounded below by :func:`.optimality.logistic_lower_bound`."""
        diff = theta - self.tref
        a2 = float(diff @ diff)
        base = (self.sy * self.beta)[:, None] * self.X
        rows = [base - (d[:, None] / a2) * diff[None, :] for d in (d_lo, d_hi)]
        w = np.concatenate([(1.0 - t) * self.w, t * self.w])
        return logistic_lower_bound(np.vstack(rows), w, theta, theta_ref=self.tref, radius=radius)

    def primal(self, theta, eta):
        """A feasible worst case at (theta, eta) and its expected loss (a lower bound on the
        supremum). Tied maximisers are mixed so the transport budget is met exactly."""
        diff = theta - self.tref
        a = float(np.linalg.norm(diff))
        m = self.sy * self.beta * (self.X @ diff)
        if a == 0.0:
            return LOG2, np.zeros_like(m), np.zeros_like(m), 0.0
        _, d_hi, cd, cv = inner_sup(m, math.log(eta) - self.p * math.log(self.beta * a), self.p)
        best = cv.max(axis=1, keepdims=True)
        tie = cv >= best - 1e-7 * np.maximum(1.0, np.abs(best))
        d_lo = np.min(np.where(tie, np.nan_to_num(cd, nan=np.inf), np.inf), axis=1)
        c_lo, c_hi = self.transport(d_lo, a), self.transport(d_hi, a)
        if c_lo <= self.rp <= c_hi and c_hi > c_lo:
            t = (self.rp - c_lo) / (c_hi - c_lo)
            val = float(self.w @ ((1 - t) * dpo_loss(m - d_lo) + t * dpo_loss(m - d_hi)))
            return val, d_lo, d_hi, t
        d = d_hi if c_hi < self.rp else d_lo
        c = self.transport(d, a)
        s = (self.rp / c) ** (1.0 / self.p) if c > 0 else 1.0
        if c == 0:
            d = np.full_like(m, self.rho * self.beta * a)  # move every pair by rho
            s = 1.0
        return float(self.w @ dpo_loss(m - s * d)), s * d, s * d, 0.0


#: The order of the continuous W_p solver: a float > 1 (p = 1 has its own program).
ORDER_ABOVE_1 = [Interval(float, 1, None, closed="neither")]


@declare({"rho": NONNEGATIVE, "p": ORDER_ABOVE_1, "beta": POSITIVE})
def robust_value(theta, data, *, rho, p, beta, theta_ref=None) -> tuple[float, float]:
    """The exact robust objective at a fixed theta and its dual multiplier.

    ``V(theta) = sup_{P: W_p(P, P_n) <= rho} E_P l(z; theta)`` over continuous features with
    cost ``||x - x'||_2^p`` and fixed labels, computed as ``min_eta G(theta, eta)``.

    Parameters
    ----------
    theta : array_like (d,)
    data : PreferenceData (or X with y via ``as_data``)
    rho : float >= 0
        Wasserstein radius (units of x).
    p : float > 1
    beta : float > 0
    theta_ref : array_like (d,), optional (default 0)

    Returns
    -------
    (value, eta) : (float, float)
        ``V(theta)`` in nats and the minimising ``eta``.
    """
    data = as_data(data)
    rho, p, beta = float(rho), float(p), float(beta)
    tref = V.as_theta(theta_ref, data.d)
    theta = V.as_vector(theta, "theta", length=data.d)
    if rho == 0.0:
        from ..losses import dpo_risk

        return dpo_risk(theta, data, beta=beta, theta_ref=tref), 0.0
    return _Problem(data, rho, p, beta, tref).best_eta(theta)


@declare(
    {
        "rho": NONNEGATIVE,
        "p": ORDER_ABOVE_1,
        "beta": POSITIVE,
        "radius": RADIUS,
        "gtol": POSITIVE,
        "max_iter": POSITIVE_INT,
    }
)
def wdpo_continuous_p(
    data,
    *,
    rho: float,
    p: float,
    beta: float,
    theta_ref=None,
    radius=None,
    theta0=None,
    gtol: float = 1e-9,
    max_iter: int = 2000,
) -> ExactResult:
    """Exact WDPO with W_p (p > 1) over continuous features, labels fixed.

    Solves ``min_{theta, eta >= 0} eta rho^p + sum_i p_i phi_i(theta, eta)`` (module docstring)
    subject to ``||theta||_2 <= radius`` when a radius is given.

    Parameters
    ----------
    data : PreferenceData
        Pairs x_i (n, d), labels, weights p_i.
    rho : float >= 0
        Wasserstein radius in units of x (``rho = 0`` is DPO).
    p : float > 1
        Order of the Wasserstein distance (``p = 1`` has its own closed-form program).
    beta : float > 0
    theta_ref : array_like (d,), optional (default 0)
    radius : float, optional
        Parameter bound B.
    theta0 : array_like (d,), optional
        Starting point (default: a small step from ``theta_ref`` along ``sum_i p_i sy_i x_i``).
    gtol, max_iter
        BFGS tolerances.

    Returns
    -------
    ExactResult
        ``value`` = V(theta*) (nats), ``dual`` = eta*, ``regime`` = ``"shift"``
        (``"collapse"`` when theta* = theta_ref, ``"dpo"`` at rho = 0); the worst case moves
        each pair's x against its label: ``margin_shift`` (n,) = the drop delta_i of the pair's
        margin (nats of log-odds; x moves by ``delta_i / (beta ||theta - theta_ref||)`` in
        feature-norm units) and ``worst_case`` (n,) = its mass, the nominal weights. When tied
        maximisers must be mixed to meet the budget both have shape (2n,) (point j is pair
        ``j mod n``; see :func:`_worst_case_law`). ``gap`` = V(theta*) minus the expected
        loss of an explicit feasible worst case (>= 0 by weak duality), ``info["grad_norm"]``
        = the first-order residual at theta*.

    Raises
    ------
    InputError
        Malformed arguments (p <= 1, negative rho, ...).
    SolverError
        The optimiser did not reach a certified optimum, or the minimiser is at infinity
        (separable data with a small radius; pass ``radius=``).
    """
    data = as_data(data)
    rho, p, beta = float(rho), float(p), float(beta)
    if radius is not None and not math.isfinite(radius):
        radius = None
    tref = V.as_theta(theta_ref, data.d)
    t0 = time.perf_counter()
    method = f"wdpo-continuous-p{p:g}"
    if rho == 0.0:
        from .dpo import dpo as exact_dpo

        res = exact_dpo(data, beta=beta, theta_ref=tref, radius=radius)
        res.method, res.dual, res.regime = method, 0.0, REGIME_DPO
        res.worst_case, res.margin_shift = data.weights.copy(), np.zeros(data.n)
        A = data.signed_labels[:, None] * beta * data.X
        lower, oinfo = logistic_lower_bound(
            A, data.weights, res.theta, theta_ref=tref, radius=radius
        )
        res.optimality_gap = certify_optimal(res.value, lower, what=WHAT)
        res.info["optimality"] = oinfo
        return res
    from .problem import Problem, Scale

    sc = Scale.of(Problem(data, beta, tref, radius), WHAT)
    th0 = None if theta0 is None else V.as_vector(theta0, "theta0", length=data.d) * sc.S
    P = sc.problem
    res = _solve_unit(P.data, rho / sc.s, p, P.tref, P.radius, th0, gtol, max_iter, t0)
    res.theta = sc.theta(res.theta)
    res.dual = res.dual / sc.s**p
    res.method = method
    if "transport_budget_used" in res.info:
        res.info["transport_budget_used"] *= sc.s**p
    res.info["scale"] = {"x": sc.s, "theta": sc.S}
    return res


def _solve_unit(data, rho, p, tref, radius, theta0, gtol, max_iter, t0) -> ExactResult:
    """:func:`wdpo_continuous_p` at unit scale (``beta = 1``, ``max |x|`` about 1)."""
    beta = 1.0
    bounded = radius is not None
    prob = _Problem(data, rho, p, beta, tref)
    g = (prob.w * prob.sy) @ prob.X
    info = {
        "p": p,
        "rho": rho,
        "solver": "fast",
        "algorithm": "BFGS on (theta, log eta), Danskin gradients",
        "collapse": False,
    }
    if rho >= np.linalg.norm(g) and (not bounded or np.linalg.norm(tref) <= radius):
        info.update(collapse=True, seconds=time.perf_counter() - t0, grad_norm=0.0)
        info["algorithm"] = "closed form (rho >= ||sum_i p_i sy_i x_i||)"
        # the law moving every x_i by -sy_i g costs ||g||^p <= rho^p and balances the
        # margins at theta_ref: min_theta of its expected loss is log 2 (weak duality)
        moved = data.signed_labels[:, None] * data.X - g[None, :]
        lower, oinfo = logistic_lower_bound(
            moved, data.weights, tref, theta_ref=tref, radius=radius
        )
        info["optimality"] = oinfo
        return ExactResult(
            theta=tref.copy(),
            value=LOG2,
            status=STATUS_OPTIMAL,
            method="wdpo-continuous-p",
            dual=0.0,
            worst_case=data.weights.copy(),
            gap=0.0,
            optimality_gap=certify_optimal(LOG2, lower, what=WHAT),
            info=info,
            regime=REGIME_COLLAPSE,
            margin_shift=np.zeros(data.n),
        )
    d = data.d
    if theta0 is None:
        theta0 = tref + 0.5 * g / (beta * max(np.linalg.norm(g), 1e-12))
    th = V.as_vector(theta0, "theta0", length=d)
    _, eta0 = prob.best_eta(th)

    # BFGS in (theta, zeta = log eta): smooth and unconstrained. A stationary point has
    # eta > 0 and zero gradient in (theta, eta), hence is the global minimum of the jointly
    # convex G (eta -> 0 sends G to +inf whenever theta != theta_ref).
    def fun(z):
        eta = math.exp(min(z[d], 700.0))
        with np.errstate(over="ignore", invalid="ignore"):
            G, gt, ge = prob.value_grad(z[:d], eta)
        if gt is None or not np.isfinite(G) or not np.all(np.isfinite(gt)) or not np.isfinite(ge):
            return 1e300, np.zeros(d + 1)
        return G, np.append(gt, ge * eta)

    def run(z_start):
        if not bounded:
            return minimize(
                fun, z_start, jac=True, method="BFGS", options={"maxiter": max_iter, "gtol": gtol}
            )
        cons = [
            {
                "type": "ineq",
                "fun": lambda z: (
                    (radius - np.linalg.norm(z[:d])) * (radius + np.linalg.norm(z[:d]))
                ),
                "jac": lambda z: np.append(-2 * z[:d], 0.0),
            }
        ]
        return minimize(
            fun,
            z_start,
            jac=True,
            method="SLSQP",
            constraints=cons,
            options={"maxiter": max_iter, "ftol": 1e-16},
        )

    th = project_ball(th, radius)
    z = np.append(th, math.log(max(eta0, 1e-300)))
    for _restart in range(4):  # restarts from the re-optimised eta polish the answer
        opt = run(z)
        z = opt.x.copy()
        z[:d] = project_ball(z[:d], radius)
        if not np.all(np.isfinite(z)) or np.linalg.norm(z[:d] - tref) > 1e6:
            break
        _, eta_z = prob.best_eta(z[:d])
        z[d] = math.log(max(eta_z, 1e-300))
        _, gt, _ = prob.value_grad(z[:d], eta_z)
        if on_boundary(z[:d], radius):
            u = z[:d] / np.linalg.norm(z[:d])
            gt = gt - min(float(gt @ u), 0.0) * u
        if np.linalg.norm(gt) <= 1e-7:
            break
    theta = z[:d]
    if not np.all(np.isfinite(theta)) or np.linalg.norm(theta - tref) > 1e6:
        raise SolverError(
            "continuous W_p WDPO: the iterates diverge; the minimiser is at infinity.",
            status="unbounded",
            hint="pass a finite radius= (the parameter bound B).",
        )
    value, eta = prob.best_eta(theta)
    _, gt, _ = prob.value_grad(theta, eta)
    at_bound = on_boundary(theta, radius)
    if at_bound:  # KKT residual: the gradient's part not along -theta
        u = theta / np.linalg.norm(theta)
        resid = gt - min(float(gt @ u), 0.0) * u
    else:
        resid = gt
    grad_norm = float(np.linalg.norm(resid))
    primal, d_lo, d_hi, t = prob.primal(theta, eta)
    gap = value - primal
    scale = max(1.0, abs(value))
    info.update(
        seconds=time.perf_counter() - t0,
        grad_norm=grad_norm,
        iterations=int(opt.nit),
        on_boundary=at_bound,
        primal_value=primal,
        transport_budget_used=(1 - t) * prob.transport(d_lo, float(np.linalg.norm(theta - tref)))
        + t * prob.transport(d_hi, float(np.linalg.norm(theta - tref))),
    )
    lower, oinfo = prob.lower_bound(theta, d_lo, d_hi, t, radius)
    info["optimality"] = oinfo
    if gap > 1e-6 * scale or gap < -1e-9 * scale or not value - lower <= OPT_TOL * (1 + value):
        raise SolverError(
            f"{WHAT}: not certified (inner duality gap {gap:.2e}, optimality gap "
            f"{value - lower:.2e}, first-order residual {grad_norm:.2e}; optimiser said "
            f"{opt.message!s}).",
            status="uncertified",
            hint="try another theta0=, or a finite radius=.",
        )
    worst_case, shift = _worst_case_law(data.weights, d_lo, d_hi, t)
    return ExactResult(
        theta=theta,
        value=float(value),
        status=STATUS_OPTIMAL,
        method="wdpo-continuous-p",
        dual=float(eta),
        worst_case=worst_case,
        gap=float(gap),
        optimality_gap=certify_optimal(value, lower, what=WHAT),
        info=info,
        regime=REGIME_SHIFT,
        margin_shift=shift,
    )


def _worst_case_law(weights, d_lo, d_hi, t) -> tuple[np.ndarray, np.ndarray]:
    """The primal worst case as ``(worst_case, margin_shift)``: support point j is pair
    ``j mod n`` with its margin lowered by ``margin_shift[j]``, carrying mass
    ``worst_case[j]``. Without a split (t = 0 or d_lo = d_hi) the support is the n shifted
    pairs with the nominal weights; otherwise each pair is split, mass (1 - t) p_i at shift
    d_lo_i and t p_i at d_hi_i (2n points)."""
    pos = weights > 0
    n = weights.shape[0]
    lo, hi = np.zeros(n), np.zeros(n)
    lo[pos], hi[pos] = d_lo, d_hi
    if t <= 0.0 or np.array_equal(lo, hi):
        return weights.copy(), hi
    if t >= 1.0:
        return weights.copy(), hi
    return np.concatenate([(1 - t) * weights, t * weights]), np.concatenate([lo, hi])
