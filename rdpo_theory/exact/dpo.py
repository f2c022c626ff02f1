"""Exact DPO for log-linear policies: weighted logistic regression, solved by cvxpy."""

from __future__ import annotations

import time
import warnings

import cvxpy as cp
import numpy as np

from .. import _validate as V
from ..data import as_data
from ..errors import SolverError
from ..losses import check_beta, dpo_risk, dpo_risk_grad, dpo_risk_hessian
from .result import ExactResult, solve_problem


def informative_rows(X: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mask of rows that move the loss: positive weight and ``x != 0``.

    Rows with ``x = 0`` (ties, a1 = a2) have the constant loss log 2; leaving them in the conic
    program makes Clarabel end 'optimal_inaccurate' on ordinary data, so solvers drop them and
    add their mass back to the value.
    """
    return (weights > 0) & np.any(X != 0, axis=1)


def recession_direction(A: np.ndarray, *, tol: float = 1e-9) -> np.ndarray | None:
    """A direction ``v`` (``||v||_inf <= 1``) with ``A v >= 0`` and ``sum(A v) > 0``, or None.

    ``A`` has rows ``sy_i x_i``. Such a ``v`` exists exactly when the data are (quasi-)
    separable, i.e. the unconstrained logistic minimum is not attained (it is at infinity).
    Solved as an LP with scipy's HiGHS (cvxpy's HiGHS interface prints a banner on stdout,
    which would corrupt ``rdpo solve --json``).
    """
    if A.shape[0] == 0:
        return None
    from scipy.optimize import linprog

    res = linprog(
        -A.sum(axis=0),
        A_ub=-A,
        b_ub=np.zeros(A.shape[0]),
        bounds=[(-1, 1)] * A.shape[1],
        method="highs",
    )
    if res.status != 0:  # pragma: no cover - the LP is always feasible and bounded
        raise SolverError("separability check failed", status=f"linprog status {res.status}")
    if -float(res.fun) > tol * max(1.0, float(np.abs(A).sum())):
        return np.asarray(res.x)
    return None


def newton_polish(
    theta, data, *, beta, theta_ref, radius=None, steps: int = 20, gtol: float = 1e-13
) -> tuple[np.ndarray, bool]:
    """Refine an interior solution by Newton steps on the smooth objective.

    Interior-point solvers stop at ~1e-8 in value, i.e. ~1e-4 in theta on flat problems. A few
    Newton steps from there converge quadratically. Steps are kept only while they lower the
    objective and stay inside the ball; a boundary solution is returned unchanged.
    Returns ``(theta, polished)``.
    """
    if radius is not None and np.isfinite(radius) and np.linalg.norm(theta) >= radius * (1 - 1e-6):
        return theta, False
    f = dpo_risk(theta, data, beta=beta, theta_ref=theta_ref)
    polished = False
    for _ in range(steps):
        g = dpo_risk_grad(theta, data, beta=beta, theta_ref=theta_ref)
        if np.linalg.norm(g) <= gtol:
            break
        H = dpo_risk_hessian(theta, data, beta=beta, theta_ref=theta_ref)
        try:
            step = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            break
        cand = theta - step
        if radius is not None and np.isfinite(radius) and np.linalg.norm(cand) > radius:
            break
        fc = dpo_risk(cand, data, beta=beta, theta_ref=theta_ref)
        if not fc <= f + 1e-15:
            break
        theta, f, polished = cand, fc, True
    return theta, polished


def dpo(
    X, y=None, *, beta: float, weights=None, theta_ref=None, radius=None, solver: str = "CLARABEL"
) -> ExactResult:
    """Solve ``min_theta sum_i p_i softplus(-sy_i beta (theta - theta_ref) . x_i)``
    subject to ``||theta||_2 <= radius`` when a radius is given.

    Parameters
    ----------
    X : array_like, shape (n, d), or PreferenceData
        Pair feature differences (then ``y`` and ``weights`` come with it).
    y : array_like, shape (n,), labels in {0, 1}
    beta : float > 0
    weights : array_like, shape (n,), optional
        Probability weights summing to 1 (default uniform).
    theta_ref : array_like, shape (d,), optional (default 0)
    radius : float > 0, optional
        Bound B of the parameter set.
    solver : str
        cvxpy solver name (default Clarabel).

    Returns
    -------
    ExactResult
        ``theta`` (d,), ``value`` = weighted mean loss at theta (nats), ``status``.

    Raises
    ------
    InputError
        Malformed input.
    SolverError
        The solver did not certify optimality (e.g. separable data without a radius).
    """
    data = as_data(X, y, weights) if y is not None or weights is not None else as_data(X)
    beta = check_beta(beta)
    radius = V.radius(radius)
    tref = V.as_theta(theta_ref, data.d)
    bounded = radius is not None and np.isfinite(radius)
    keep = informative_rows(data.X, data.weights)
    coef = data.signed_labels[keep, None] * beta * data.X[keep]  # rows: sy_i beta x_i
    t0 = time.perf_counter()
    if not bounded and recession_direction(coef) is not None:
        raise SolverError(
            "exact DPO: the data are separable, so the unconstrained minimiser is at infinity.",
            status="unbounded",
            hint="pass a finite radius= (the parameter bound B).",
        )
    if not keep.any():  # every loss is log 2 whatever theta is: theta_ref is a minimiser
        th = (
            tref
            if not bounded or np.linalg.norm(tref) <= radius
            else tref * radius / np.linalg.norm(tref)
        )
        return ExactResult(
            theta=th,
            value=float(np.log(2.0)),
            status="optimal",
            method="dpo",
            info={"solver": "none (all losses constant)", "seconds": 0.0},
        )
    theta = cp.Variable(data.d, name="theta")
    m = coef @ theta - coef @ tref
    objective = cp.Minimize(data.weights[keep] @ cp.logistic(-m))
    cons = [cp.norm(theta, 2) <= radius] if bounded else []
    info: dict = {"solver": solver}
    rad = radius if bounded else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # 'inaccurate' is handled below
            status = solve_problem(cp.Problem(objective, cons), what="exact DPO", solver=solver)
        th = np.asarray(theta.value, dtype=float)
        th, polished = newton_polish(th, data, beta=beta, theta_ref=tref, radius=radius)
        info["newton_polished"] = polished
    except SolverError as exc:
        # Clarabel stalls ('optimal_inaccurate') on a few % of ordinary problems: the exp-cone
        # KKT system is ill-conditioned at the last iterations. Projected Newton on the smooth
        # objective (exact Hessian, trust-region step over the ball) is the certified fallback.
        start = None if theta.value is None else np.asarray(theta.value, dtype=float)
        th = _newton_fallback(data, keep, beta, tref, rad, start, exc)
        status = "optimal"
        info.update(fallback="newton (KKT-certified)", conic_status=exc.status)
    resid, tol = kkt_certificate(th, data, beta=beta, theta_ref=tref, radius=rad)
    if not resid <= tol and "fallback" not in info:
        # interior-point accuracy (~1e-8 in value) leaves a visible KKT residual on the sphere,
        # where newton_polish does not apply: refine by projected Newton
        th_n = _newton_fallback(data, keep, beta, tref, rad, th, None)
        r_n, _ = kkt_certificate(th_n, data, beta=beta, theta_ref=tref, radius=rad)
        if r_n < resid:
            th, resid = th_n, r_n
            info["refined"] = "projected newton (KKT residual above tolerance)"
    if not resid <= tol:
        raise SolverError(
            f"exact DPO: the KKT residual {resid:.3g} at the returned theta exceeds {tol:.3g}.",
            status="kkt_residual",
            hint="rescale beta or pass a finite radius=.",
        )
    value = dpo_risk(th, data, beta=beta, theta_ref=tref)
    info.update(
        seconds=time.perf_counter() - t0,
        kkt_residual=resid,
        kkt_tolerance=tol,
        on_boundary=bool(
            radius is not None and np.isfinite(radius) and np.linalg.norm(th) >= radius * (1 - 1e-6)
        ),
    )
    return ExactResult(theta=th, value=value, status=status, method="dpo", info=info)


def kkt_certificate(theta, data, *, beta, theta_ref, radius=None) -> tuple[float, float]:
    """``(residual, tolerance)`` of the KKT conditions of exact DPO at ``theta``.

    With ``g`` the gradient of the weighted mean loss: inside the ball the residual is
    ``||g||``; on the sphere ``||theta|| = radius`` it is ``||g + nu theta||`` with the multiplier
    ``nu = max(0, -g.theta / ||theta||^2)`` (stationarity with ``nu >= 0`` and complementary
    slackness). By convexity ``f(theta) - f* <= residual * ||theta - theta*||``. The tolerance is
    ``1e-9 * G``, ``G = sum_i p_i beta ||x_i||`` (a bound on the gradient's size), plus the
    float64 rounding error of the gradient's sums.
    """
    from .fast import kkt_residual, sum_noise

    g = dpo_risk_grad(theta, data, beta=beta, theta_ref=theta_ref)
    r = kkt_residual(g, np.asarray(theta, dtype=float), radius)
    G = float(data.weights @ np.linalg.norm(data.X, axis=1)) * beta
    return float(np.linalg.norm(r)), 1e-9 * G + sum_noise(G, data.n) * np.sqrt(data.d)


def _newton_fallback(data, keep, beta, tref, radius, start, exc) -> np.ndarray:
    """Projected damped Newton on ``sum_i p_i softplus(-m_i)`` over the ball (rows ``keep``)."""
    from .fast import W1Penalty, damped_newton

    c = data.signed_labels[keep] * beta
    obj = W1Penalty(data.X[keep], c, data.weights[keep], 0.0, beta, tref)
    th0 = tref.copy() if start is None or not np.all(np.isfinite(start)) else start
    if radius is not None and np.linalg.norm(th0) > radius:
        th0 = th0 * (radius / np.linalg.norm(th0))
    th, _, _, info = damped_newton(obj, th0, [], radius=radius)
    if exc is None:
        return th
    if not info["converged"]:
        raise SolverError(
            f"exact DPO: the conic solver ended {exc.status!r} and the Newton fallback did not "
            f"converge ({info['iterations']} iterations).",
            status=exc.status,
            hint=exc.hint,
        ) from exc
    return th
