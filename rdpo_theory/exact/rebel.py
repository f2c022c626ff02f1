"""DRO-REBEL (Sahu and Wells, arXiv 2509.19104) on log-linear policies: REBEL's relative-reward
regression inside a KL, chi-square or type-2 Wasserstein ball, exact and certified
(docs/theory.md#dro-rebel).

REBEL regresses the policy's log-ratio difference onto a reward difference: for a pair
``(s, a1, a2)`` with feature difference ``x = psi(s, a1) - psi(s, a2)`` and reward difference
``dr = r(s, a1) - r(s, a2)`` the per-pair loss is ``e^2``, ``e = (theta - theta_ref) . x / eta
- dr`` (the log-partition cancels in the difference, so ``e`` is affine in theta and ``e^2``
convex). The robust objectives (``ball``):

* ``"none"``: REBEL, ``sum_i p_i e_i^2``;
* ``"kl"``: ``sup {E_Q e^2 : KL(Q || P) <= rho}`` = ``inf_{lam > 0} lam rho + lam log E_P
  exp(e^2 / lam)`` (exponential-cone program);
* ``"chi2"``: ``sup {E_Q e^2 : 1/2 E_P (dQ/dP - 1)^2 <= rho}`` = ``inf_eta eta + sqrt(1 + 2
  rho) ||(e^2 - eta)_+||_{2,P}`` (second-order cone program);
* ``"w2"``: the features move (rewards fixed) within type-2 Wasserstein distance ``rho``:
  ``(||e||_{2,P} + rho ||theta - theta_ref|| / eta)^2`` in closed form (a Cauchy-Schwarz
  bound attained by moving every x along theta - theta_ref in proportion to its residual).

Certificates (docs/theory.md#optimality-gap): for KL and chi-square the worst-case law ``q``
at the returned theta gives the weak-duality bound ``min_{||theta|| <= B} sum_i q_i e_i^2``, a
weighted least-squares problem bounded below by its Lagrangian dual (:func:`ls_lower_bound`);
for W2 the pair of unit vectors that attains the two norms at theta gives an affine minorant
of ``||e||_{2,P} + rho ||theta - theta_ref|| / eta`` whose minimum over the ball is closed
form. The value is the certified worst case at theta (the KL dual at the optimal multiplier,
the chi-square sup by :func:`rdpo_theory.losses.chi2_objective`, the W2 closed form).
"""

from __future__ import annotations

import time

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from .. import losses as L
from .. import options as O
from ..divergences.kl import kl_lambda_for_theta, kl_tilt
from ..errors import InputError, SolverError
from ..lazy import cvxpy as cp
from ..objective_kernels import rebel_residuals, w2_rebel_value
from ._common import solve_with_retries
from .certificates import kl_into_ball
from .result import ExactResult, certify_optimal
from .status import REGIME_INTERIOR, REGIME_NOMINAL, REGIME_SHIFT, STATUS_OPTIMAL

BALLS = ("none", "kl", "chi2", "w2")


def ls_lower_bound(A, b, q, radius=None) -> float:
    """A certified lower bound of ``min_{||theta|| <= radius} sum_i q_i (A_i . theta - b_i)^2``
    (the exact minimum when ``radius`` is None): the best Lagrangian dual value
    ``max_{mu >= 0} min_theta f(theta) + mu (||theta||^2 - radius^2)`` over a bounded search
    of ``mu`` (each candidate is a valid bound; ridge in closed form)."""
    A, b, q = (np.asarray(v, dtype=float) for v in (A, b, q))
    sq = np.sqrt(q)
    Aw, bw = A * sq[:, None], b * sq
    theta0, *_ = np.linalg.lstsq(Aw, bw, rcond=None)
    f0 = float(np.sum((Aw @ theta0 - bw) ** 2))
    if radius is None or np.linalg.norm(theta0) <= radius:
        return f0
    H, g = Aw.T @ Aw, Aw.T @ bw
    eye = np.eye(A.shape[1])

    def dual(mu):
        th = np.linalg.solve(H + mu * eye, g)
        return float(np.sum((Aw @ th - bw) ** 2) + mu * (th @ th - radius**2))

    hi = float(np.linalg.norm(g) / radius) + 1.0
    res = minimize_scalar(lambda m: -dual(m), bounds=(0.0, hi), method="bounded",
                          options={"xatol": 1e-14 * hi})  # fmt: skip
    return max(dual(float(res.x)), 0.0)


def _into_ball(q, p, rho, ball):
    """The solver's saddle law (the multipliers of ``s >= e^2``) made a feasible point of the
    ball: clipped, normalised, then mixed with ``p`` as far as needed (both divergences are
    convex in q). The minimax's worst case need not be the best response at theta (the
    max-loss regime), so the certificate also tries this law."""
    q = np.clip(np.asarray(q, dtype=float).ravel(), 0.0, None) * (p > 0)
    if not np.isfinite(q).all() or q.sum() <= 0:
        return p
    q = q / q.sum()
    if ball == "kl":
        return kl_into_ball(q, p, rho)
    div = L.chi2_divergence(q, p)
    if div <= rho:
        return q
    e = 1.0 - np.sqrt(rho / div) * (1.0 - 1e-12)  # D((1-e) q + e p || p) = (1-e)^2 D(q || p)
    return (1.0 - e) * q + e * p


def _kl_sup(ell, p, rho):
    """Certified ``sup_{KL(q||p) <= rho} q . ell``: the dual at the root multiplier (an upper
    bound), with the tilted law ``q`` (feasible) for the lower certificate."""
    lam = kl_lambda_for_theta(ell, p, rho)
    if lam == 0.0:  # max-loss regime: the point mass on the argmax set is in the ball
        top = ell >= ell.max() - 1e-14 * max(1.0, abs(ell.max()))
        q = np.where(top, p, 0.0)
        return float(ell.max()), q / q.sum()
    q, _, _ = kl_tilt(ell, p, lam)
    m = ell.max()
    dual = lam * rho + m + lam * np.log(p @ np.exp((ell - m) / lam))
    return float(dual), q


def _w2_h(theta, A, b, p, c, tref):
    """``||A theta - b||_{2,P} + c ||theta - tref||`` with its gradient and Hessian."""
    sq = np.sqrt(p)
    r = sq * (A @ theta - b)
    dt = theta - tref
    nr, nd = float(np.linalg.norm(r)), float(np.linalg.norm(dt))
    As = A * sq[:, None]
    g1 = As.T @ r
    H = (As.T @ As) / nr - np.outer(g1, g1) / nr**3
    H = H + c * (np.eye(len(theta)) / nd - np.outer(dt, dt) / nd**3)
    return nr + c * nd, g1 / nr + c * dt / nd, H


def _w2_polish(theta, A, b, p, c, tref, radius, steps: int = 30):
    """Damped Newton steps on the W2 objective from the conic solution while the minimiser
    is interior (the objective is smooth away from theta = tref and zero residual): brings
    the gradient to rounding level so the affine-minorant certificate is tight."""
    if radius is not None and np.linalg.norm(theta) >= radius * (1 - 1e-6):
        # the ball is active: SLSQP on the smooth objective with the ball constraint
        res = minimize(lambda t: _w2_h(t, A, b, p, c, tref)[:2], theta, jac=True,
                       method="SLSQP", options={"ftol": 1e-16, "maxiter": 200},
                       constraints=[{"type": "ineq", "fun": lambda t: radius**2 - t @ t,
                                     "jac": lambda t: -2.0 * t}])  # fmt: skip
        cand = np.asarray(res.x, dtype=float)
        if np.linalg.norm(cand) > radius:
            cand *= radius / np.linalg.norm(cand)
        better = _w2_h(cand, A, b, p, c, tref)[0] <= _w2_h(theta, A, b, p, c, tref)[0]
        return cand if better else theta
    for _ in range(steps):
        if np.linalg.norm(theta - tref) < 1e-12:
            return theta
        h, g, H = _w2_h(theta, A, b, p, c, tref)
        if not np.isfinite(h) or np.linalg.norm(g) < 1e-15:
            return theta
        try:
            step = np.linalg.solve(H + 1e-15 * np.eye(len(g)), -g)
        except np.linalg.LinAlgError:
            return theta
        t = 1.0
        while t > 1e-6:
            cand = theta + t * step
            ok = radius is None or np.linalg.norm(cand) <= radius
            if ok and _w2_h(cand, A, b, p, c, tref)[0] <= h:
                theta = cand
                break
            t /= 2
        else:
            return theta
    return theta


@O.declare({"eta": O.POSITIVE, "rho": O.NONNEGATIVE}, owner="dro_rebel")
def dro_rebel(
    X,
    dr,
    *,
    eta: float,
    ball: str = "none",
    rho: float = 0.0,
    weights=None,
    theta_ref=None,
    radius=None,
    cvxpy_solver: str = "CLARABEL",
) -> ExactResult:
    """Exact DRO-REBEL for log-linear policies (docs/theory.md#dro-rebel).

    Parameters
    ----------
    X : array_like (n, d)
        Pair feature differences ``psi(s, a1) - psi(s, a2)``.
    dr : array_like (n,)
        Reward differences ``r(s, a1) - r(s, a2)`` (the regression targets).
    eta : float > 0
        REBEL's step size: the policy's log-ratio difference is regressed as ``m / eta``.
    ball : {"none", "kl", "chi2", "w2"}
    rho : float >= 0
        Radius: nats (KL), the halved chi-square divergence (chi2), units of x (w2).
    weights : array_like (n,), optional
        The law P of the pairs (default uniform).
    theta_ref : array_like (d,), optional
    radius : float, optional
        Parameter bound B (required for ``ball="w2"`` with rho > 0, whose certificate needs
        a bounded set).
    cvxpy_solver : str

    Returns
    -------
    ExactResult
        ``value`` = the certified worst-case mean squared residual at theta, ``status`` =
        ``"optimal"`` with a certified ``optimality_gap``; ``worst_case`` = the adversary's
        law over the pairs (KL, chi2; P for ``"none"``; None for W2, whose worst case moves
        the features by ``info["feature_shift"]`` (n, d)), ``dual`` = the KL multiplier or
        the chi-square threshold.
    """
    if ball not in BALLS:
        raise InputError(f"ball must be one of {BALLS}, got {ball!r}")
    X = np.atleast_2d(np.asarray(X, dtype=float))
    n, d = X.shape
    dr = np.asarray(dr, dtype=float)
    p = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=float)
    if dr.shape != (n,) or p.shape != (n,) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise InputError(f"dr and weights must have shape ({n},); weights a probability law")
    tref = np.zeros(d) if theta_ref is None else np.asarray(theta_ref, dtype=float)
    if ball == "w2" and rho > 0 and radius is None:
        raise InputError("dro_rebel with ball='w2' needs a finite radius= for its certificate")
    if rho == 0:
        ball = "none"
    A = X / eta
    b = dr + A @ tref  # e = A theta - b
    t0 = time.perf_counter()
    th = cp.Variable(d)
    e = A @ th - b
    cons = [cp.norm(th, 2) <= radius] if radius is not None else []
    extra = {}
    if ball == "none":
        obj = p @ cp.square(e)
    elif ball == "w2":
        obj = cp.norm(cp.multiply(np.sqrt(p), e), 2) + rho / eta * cp.norm(th - tref, 2)
    elif ball == "chi2":
        t, s = cp.Variable(), cp.Variable(n)
        cons += [s >= cp.square(e)]
        obj = t + np.sqrt(1 + 2 * rho) * cp.norm(cp.multiply(np.sqrt(p), cp.pos(s - t)))
    else:  # kl
        lam, t, u, s = cp.Variable(nonneg=True), cp.Variable(), cp.Variable(n), cp.Variable(n)
        cons += [s >= cp.square(e), cp.constraints.ExpCone(s - t, lam * np.ones(n), u),
                 p @ u <= lam]  # fmt: skip
        obj = lam * rho + t
        extra["lam"] = lam
    problem = cp.Problem(cp.Minimize(obj), cons)
    solve_with_retries(problem, what=f"exact DRO-REBEL ({ball})", cvxpy_solver=cvxpy_solver)
    theta = np.asarray(th.value, dtype=float)
    if radius is not None and np.linalg.norm(theta) > radius:
        theta *= radius / np.linalg.norm(theta)
    res = rebel_residuals(X @ (theta - tref), dr, eta=eta)
    ell = res**2
    worst, dual, info = None, None, {}
    if ball == "none":
        value, worst = float(p @ ell), p
        lower = ls_lower_bound(A, b, p, radius)
    elif ball == "chi2":
        worst = L.chi2_weights(ell, rho=rho, weights=p)
        value = L.chi2_objective(ell, rho=rho, weights=p)
        saddle = _into_ball(cons[-1].dual_value, p, rho, "chi2")
        lower = max(ls_lower_bound(A, b, q, radius) for q in (worst, saddle))
        dual = float(t.value)
    elif ball == "kl":
        value, worst = _kl_sup(ell, p, rho)
        saddle = _into_ball(cons[-3].dual_value, p, rho, "kl")
        lower = max(ls_lower_bound(A, b, q, radius) for q in (worst, saddle))
        dual = float(extra["lam"].value)
    else:  # w2
        c = rho / eta
        theta = _w2_polish(theta, A, b, p, c, tref, radius)
        res = A @ theta - b
        dtheta = theta - tref
        value = w2_rebel_value(res, p, float(np.linalg.norm(dtheta)) / eta, rho)
        sq = np.sqrt(p)
        nr = float(np.linalg.norm(sq * res))
        nd = float(np.linalg.norm(dtheta))
        As = A * sq[:, None]
        lower = 0.0
        # ||e||_P + c ||dtheta|| >= u.(sq (A theta - b)) + c v.(theta - tref) for ||u||, ||v||
        # <= 1; its minimum over the ball is closed form. Candidates for u: the normalised
        # residual, and (at a zero residual, a kink) the least-norm u cancelling c v.
        us = [sq * res / nr] if nr > 0 else []
        for u in us + [None]:
            if u is None:
                if nd == 0:
                    continue
                u, *_ = np.linalg.lstsq(As.T, -c * dtheta / nd, rcond=None)
                u = u / max(1.0, float(np.linalg.norm(u)))
            au = As.T @ u
            # v: the tangent of ||theta - tref|| at theta (at theta = tref, the best vector)
            v = dtheta / nd if nd > 0 else -au / max(float(np.linalg.norm(au)), c, 1e-300)
            g = au + c * v
            h_low = -u @ (sq * b) - c * v @ tref - radius * float(np.linalg.norm(g))
            lower = max(lower, max(h_low, 0.0) ** 2)
        step = dtheta / nd if nd > 0 else np.zeros(d)
        info["feature_shift"] = np.outer(rho * res / max(nr, 1e-300), step)
    if not np.isfinite(lower):
        raise SolverError(f"exact DRO-REBEL ({ball}): no finite lower bound", status="unbounded")
    gap = certify_optimal(value, lower, what=f"exact DRO-REBEL ({ball})")
    info.update(solver="cvxpy", cvxpy_solver=cvxpy_solver, ball=ball, rho=rho,
                solver_value=float(problem.value), seconds=time.perf_counter() - t0)  # fmt: skip
    return ExactResult(
        theta=theta,
        value=value,
        status=STATUS_OPTIMAL,
        method="rebel" if ball == "none" else f"{ball}-rebel",
        dual=dual,
        worst_case=worst,
        optimality_gap=gap,
        info=info,
        regime={"none": REGIME_NOMINAL, "w2": REGIME_SHIFT}.get(ball, REGIME_INTERIOR),
    )


__all__ = ["BALLS", "dro_rebel", "ls_lower_bound"]
