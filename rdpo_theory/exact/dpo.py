"""Exact DPO for log-linear policies: weighted logistic regression, solved by cvxpy."""

from __future__ import annotations

import time
import warnings

import numpy as np

from .. import _validate as V
from ..errors import InputError, SolverError
from ..lazy import cvxpy as cp
from ..losses import dpo_risk, dpo_risk_grad, dpo_risk_hessian
from ..options import declare
from .ball import on_boundary, project_ball
from .fast import require_converged
from .problem import SOLVE_CONSTRAINTS, Problem, Scale, prepare, x_abs_max
from .result import OPTIMALITY_TOL, ExactResult, certify_optimal, solve_problem
from .status import REGIME_NOMINAL, STATUS_OPTIMAL


def informative_rows(X: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mask of rows that move the loss: positive weight and ``x != 0``.

    Rows with ``x = 0`` (ties, a1 = a2) have the constant loss log 2; leaving them in the conic
    program makes Clarabel end 'optimal_inaccurate' on ordinary data, so solvers drop them and
    add their mass back to the value.
    """
    return (weights > 0) & np.any(X != 0, axis=1)


#: Rows of the subset that :func:`recession_direction` tries first (evenly spaced; at least
#: ``SUBSET_ROWS_PER_DIM * d``): a subset that is provably not separable settles the question
#: for every superset, so the LP over all n rows (and their dense copy) is needed only when the
#: subset cannot prove it.
SUBSET_ROWS = 256
SUBSET_ROWS_PER_DIM = 32


def _unit_rows(A: np.ndarray) -> np.ndarray:
    """Rows of ``A`` scaled to max-abs 1 by a power of two (exact), zero rows dropped.

    Positive row scales change neither the sign pattern of ``A v`` nor, hence, separability,
    and the LP is then well scaled at any scale of beta and X (HiGHS fails on rows of 1e20)."""
    amax = np.abs(A).max(axis=1)
    A = A[amax > 0]
    if A.shape[0] == 0:
        return A
    with np.errstate(divide="ignore"):
        A = A / (2.0 ** np.round(np.log2(amax[amax > 0])))[:, None]
    if not np.all(np.isfinite(A)):
        raise SolverError(
            "separability check: the rows sy_i beta x_i are outside the range float64 can "
            "represent.",
            status="scale_out_of_range",
            hint="rescale X or beta so that beta * max|x| lies within about 1e-300..1e300.",
        )
    return A


def _separability_lp(B: np.ndarray):
    """``max 1' B v`` over ``B v >= 0``, ``||v||_inf <= 1`` (HiGHS through scipy)."""
    from scipy.optimize import linprog

    res = linprog(
        -B.sum(axis=0),
        A_ub=-B,
        b_ub=np.zeros(B.shape[0]),
        bounds=[(-1, 1)] * B.shape[1],
        method="highs",
    )
    if res.status != 0:  # pragma: no cover - the LP is always feasible and bounded
        raise SolverError(
            f"separability check failed: HiGHS ended with {res.message!r} on rows scaled to "
            "unit size.",
            status=f"linprog status {res.status}",
        )
    return res


def subset_proves_nonseparable(B: np.ndarray, *, tol: float = 1e-9) -> bool:
    """Whether unit-scaled rows ``B`` (m, d) prove that no set of unit-scaled rows containing
    them is separable in the sense of :func:`recession_direction`.

    Any ``mu >= 0`` bounds the LP ``max 1' B v`` over ``B v >= 0``, ``||v||_inf <= 1``:
    ``1' B v <= (1 + mu)' B v <= U = ||B' (1 + mu)||_1`` (weak duality; ``mu`` is HiGHS's dual,
    the bound is computed here, so it holds whatever the LP's accuracy). A ``v`` feasible for
    a superset is feasible here, so ``||B v||_2 <= U`` and ``||v||_2 <= U / s_min(B)``; every
    unit-scaled row ``b`` has ``||b||_2 <= sqrt(2 d)``, so the superset's objective is at most
    ``n sqrt(2 d) U / s_min`` while its threshold is ``tol max(1, sum |B_all|) >= tol n /
    sqrt(2)``. Hence ``2 sqrt(d) U / s_min(B) <= tol`` proves the answer None for every
    superset (docs/certificates.md#separable-data)."""
    m, d = B.shape
    if m < d:
        return False
    s_min = float(np.linalg.svd(B, compute_uv=False)[-1])
    if not s_min > 0:
        return False
    res = _separability_lp(B)
    mu = np.maximum(-np.asarray(res.ineqlin.marginals, dtype=float), 0.0)
    bound = float(np.abs(B.T @ (1.0 + mu)).sum())
    return 2.0 * np.sqrt(d) * bound / s_min <= tol


def recession_direction(A, *, tol: float = 1e-9, n: int | None = None) -> np.ndarray | None:
    """A direction ``v`` (``||v||_inf <= 1``) with ``A v >= 0`` and ``sum(A v) > 0``, or None.

    ``A`` has rows ``sy_i x_i``: an array (n, d), or a callable ``take(idx)`` returning the rows
    ``idx`` (sorted indices) as an array, with ``n`` rows in all (rows streamed from storage
    are then densified only if the subset test below cannot decide). Such a ``v`` exists
    exactly when the data are (quasi-)separable, i.e. the unconstrained logistic minimum is not
    attained (it is at infinity). Solved as an LP with scipy's HiGHS (cvxpy's HiGHS interface
    prints a banner on stdout, which would corrupt ``rdpo solve --json``), after rows are scaled
    to max-abs 1. Large sets try an evenly spaced subset of rows first
    (:func:`subset_proves_nonseparable`): when its dual bound proves the answer None, the LP
    over all rows is skipped.
    """
    take = A if callable(A) else (lambda idx: A[idx])
    n = int(A.shape[0]) if not callable(A) else int(n)
    if n == 0:
        return None
    first = take(np.arange(min(n, 1)))
    m = max(SUBSET_ROWS, SUBSET_ROWS_PER_DIM * first.shape[1])
    if n > 2 * m:
        B = _unit_rows(np.asarray(take(np.unique(np.linspace(0, n - 1, m).astype(int)))))
        if subset_proves_nonseparable(B, tol=tol):
            return None
    B = _unit_rows(np.asarray(take(np.arange(n)) if callable(A) else A))
    if B.shape[0] == 0:
        return None
    res = _separability_lp(B)
    if -float(res.fun) > tol * max(1.0, float(np.abs(B).sum())):
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
    if on_boundary(theta, radius):
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


@declare(SOLVE_CONSTRAINTS)
def dpo(
    X,
    y=None,
    *,
    beta: float,
    weights=None,
    theta_ref=None,
    radius=None,
    solver: str = "auto",
    cvxpy_solver: str = "CLARABEL",
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
    solver : {"auto", "cvxpy", "fast"}
        The solution path (docs/theory.md#exact-programs): ``"cvxpy"`` solves the exponential-
        cone program (then polishes it by Newton); ``"fast"`` runs projected damped Newton on
        the smooth objective directly (exact Hessian, trust-region steps over the ball).
        Both end with the same KKT certificate (:func:`kkt_certificate`). ``"auto"``
        (default): ``"cvxpy"``, or ``"fast"`` for features left in their storage (memmap,
        torch, dask).
    cvxpy_solver : str, keyword-only
        Conic backend of the cvxpy path, one of ``cvxpy.installed_solvers()`` (default
        Clarabel); checked whatever the path.

    Returns
    -------
    ExactResult
        ``theta`` (d,), ``value`` = weighted mean loss at theta (nats), ``status`` =
        ``"optimal"``, ``regime`` = ``"nominal"``, ``worst_case`` = None (no adversary).

    Raises
    ------
    InputError
        Malformed input.
    SolverError
        The solver did not certify optimality (e.g. separable data without a radius).
    """
    solver = V.solver_path(solver, method="dpo", X=X)
    cvxpy_solver = V.cvxpy_solver(cvxpy_solver, method="dpo")
    prob = prepare(X, y, weights, beta=beta, theta_ref=theta_ref, radius=radius)
    data, beta, tref, radius = prob.data, prob.beta, prob.tref, prob.radius
    scale = margin_scale(data.X, beta)
    if scale > 0 and not (SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]):
        return _rescaled(prob, solver, cvxpy_solver)
    bounded = prob.bounded
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
        th = project_ball(tref, radius)
        return ExactResult(
            theta=th,
            value=float(np.log(2.0)),
            status=STATUS_OPTIMAL,
            method="dpo",
            optimality_gap=0.0,  # every theta attains log 2
            info={"solver": "none (all losses constant)", "seconds": 0.0},
            regime=REGIME_NOMINAL,
        )
    rad = radius if bounded else None
    if solver == "fast":
        th, ninfo = _newton(data, keep, beta, tref, rad, _tiny_ball_start(prob))
        require_converged(ninfo, "exact DPO (fast path)")
        info: dict = {"solver": "fast", "newton_iterations": ninfo["iterations"]}
    else:
        th, info = _solve_cvxpy(data, keep, coef, tref, radius, rad, beta, cvxpy_solver)
    resid, tol = kkt_certificate(th, data, beta=beta, theta_ref=tref, radius=rad)
    if not resid <= tol and "fallback" not in info:
        # interior-point accuracy (~1e-8 in value) leaves a visible KKT residual on the sphere,
        # where newton_polish does not apply: refine by projected Newton
        th_n = _newton_fallback(data, keep, beta, tref, rad, th, None)
        r_n, _ = kkt_certificate(th_n, data, beta=beta, theta_ref=tref, radius=rad)
        if r_n < resid:
            th, resid = th_n, r_n
            info["refined"] = "projected newton (KKT residual above tolerance)"
    if not resid <= tol and on_boundary(th, rad):
        th_s = sphere_polish(th, data, beta=beta, theta_ref=tref, radius=rad)
        r_s, _ = kkt_certificate(th_s, data, beta=beta, theta_ref=tref, radius=rad)
        if r_s < resid:
            th, resid = th_s, r_s
            info["refined"] = "Newton on the KKT system on the sphere"
    if not resid <= tol:
        raise SolverError(
            f"exact DPO: the KKT residual {resid:.3g} at the returned theta exceeds {tol:.3g}.",
            status="kkt_residual",
            hint="rescale beta or pass a finite radius=.",
        )
    value = dpo_risk(th, data, beta=beta, theta_ref=tref)
    # the Fenchel dual bound of the weighted logistic objective at theta
    # (docs/theory.md#optimality-gap): a certified lower bound of the minimum
    from .certificates import dpo_lower_bound

    A = (data.signed_labels * beta)[:, None] * data.X
    lower = dpo_lower_bound(A, data.weights, th, theta_ref=tref, radius=rad)
    opt_gap = certify_optimal(value, lower, tol=OPTIMALITY_TOL, what="exact DPO")
    info.update(
        seconds=time.perf_counter() - t0,
        kkt_residual=resid,
        kkt_tolerance=tol,
        on_boundary=on_boundary(th, radius),
        lower_bound=lower,
    )
    return ExactResult(
        theta=th,
        value=value,
        status=STATUS_OPTIMAL,
        method="dpo",
        optimality_gap=opt_gap,
        info=info,
        regime=REGIME_NOMINAL,
    )


#: A ball whose diameter moves every margin by less than this is "tiny": the loss is linear on
#: it to float64 precision, and Newton's trust region cannot resolve the curvature.
TINY_BALL = 1e-9


def _tiny_ball_start(prob: Problem):
    """For a tiny ball (``2 radius beta max|x| <`` :data:`TINY_BALL`), the minimiser of the
    linearised loss over the ball, ``theta_ref`` projected minus ``radius`` along the gradient
    direction (to first order the exact minimiser; Newton then only polishes it). None
    otherwise (Newton starts from theta_ref)."""
    if prob.radius is None or not 2.0 * prob.radius * prob.beta * prob.x_abs_max < TINY_BALL:
        return None
    data = prob.data
    base = project_ball(prob.tref, prob.radius)
    g = dpo_risk_grad(base, data, beta=prob.beta, theta_ref=prob.tref)
    ng = float(np.linalg.norm(g))
    if ng == 0:
        return base
    return project_ball(base - 2.0 * prob.radius * g / ng, prob.radius)


def _solve_cvxpy(data, keep, coef, tref, radius, rad, beta, cvxpy_solver):
    """The exponential-cone program, Newton-polished; projected Newton if the backend stalls."""
    theta = cp.Variable(data.d, name="theta")
    m = coef @ theta - coef @ tref
    objective = cp.Minimize(data.weights[keep] @ cp.logistic(-m))
    cons = [cp.norm(theta, 2) <= rad] if rad is not None else []
    info: dict = {"solver": "cvxpy", "cvxpy_solver": cvxpy_solver}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # 'inaccurate' is handled below
            solve_problem(cp.Problem(objective, cons), what="exact DPO", cvxpy_solver=cvxpy_solver)
        th = np.asarray(theta.value, dtype=float)
        th, polished = newton_polish(th, data, beta=beta, theta_ref=tref, radius=radius)
        info["newton_polished"] = polished
    except SolverError as exc:
        # Clarabel stalls ('optimal_inaccurate') on a few % of ordinary problems: the exp-cone
        # KKT system is ill-conditioned at the last iterations. Projected Newton on the smooth
        # objective (exact Hessian, trust-region step over the ball) is the certified fallback.
        # The backend name was validated up front, so this never hides a mistyped solver.
        start = None if theta.value is None else np.asarray(theta.value, dtype=float)
        th = _newton_fallback(data, keep, beta, tref, rad, start, exc)
        info.update(fallback="newton (KKT-certified)", conic_status=exc.status)
    return th, info


def sphere_polish(theta, data, *, beta, theta_ref, radius, steps: int = 10) -> np.ndarray:
    """Refine a solution on the sphere ``||theta|| = radius`` by Newton on its KKT system
    ``g(theta) + nu theta = 0``, ``(||theta||^2 - radius^2) / 2 = 0`` in ``(theta, nu)``.

    Projected Newton's decrement test can stop a few 1e-9 short on the sphere; this system is
    smooth there and converges quadratically. Steps are kept only while the KKT residual of
    :func:`kkt_certificate` decreases; ``nu`` is re-estimated (least squares, >= 0) each step.
    """
    th = np.asarray(theta, dtype=float) * (radius / np.linalg.norm(theta))
    d = th.shape[0]
    best, _ = kkt_certificate(th, data, beta=beta, theta_ref=theta_ref, radius=radius)
    for _ in range(steps):
        g = dpo_risk_grad(th, data, beta=beta, theta_ref=theta_ref)
        H = dpo_risk_hessian(th, data, beta=beta, theta_ref=theta_ref)
        nt = float(np.linalg.norm(th))  # on the sphere: radius (no radius**2, which overflows)
        nu = max(0.0, -float(g @ th) / (nt * nt))
        J = np.block([[H + nu * np.eye(d), th[:, None]], [th[None, :], np.zeros((1, 1))]])
        F = np.append(g + nu * th, 0.5 * (nt - radius) * (nt + radius))
        try:
            step = np.linalg.solve(J, -F)
        except np.linalg.LinAlgError:
            break
        cand = th + step[:d]
        cand *= radius / np.linalg.norm(cand)
        r, _ = kkt_certificate(cand, data, beta=beta, theta_ref=theta_ref, radius=radius)
        if not r < best:
            break
        th, best = cand, r
    return th


#: Outside this range of ``beta * max|X|`` exact DPO solves the equivalent problem in units
#: where the margins' scale is 1 (conic solvers' tolerances are absolute).
SCALE_RANGE = (1e-2, 1e2)


def margin_scale(X, beta: float, *, top: float | None = None) -> float:
    """``beta * max_ij |X_ij|``: the margins' scale per unit of ``theta``; 0 for X = 0. ``X``
    is an array, a PreferenceData or a :class:`.problem.RowsData` (no pass: its validation
    pass kept the maximum); ``top``: ``max |X_ij|`` when already known.

    Raises InputError when it overflows float64 (inf)."""
    if top is None:
        top = x_abs_max(X) if hasattr(X, "weights") else float(np.abs(X).max(initial=0.0))
    scale = beta * top
    if not np.isfinite(scale):
        raise InputError(
            f"beta * max|X| = {beta!r} * {top!r} overflows float64: the scale of the problem is "
            "outside floating-point range. Rescale beta or X."
        )
    return scale


def _rescaled(prob: Problem, solver, cvxpy_solver) -> ExactResult:
    """Exact DPO solved at unit scale (:class:`.problem.Scale`: the same margins, so the same
    minimum)."""
    sc = Scale.of(prob, "exact DPO")
    P = sc.problem
    res = dpo(
        P.data,
        beta=P.beta,
        theta_ref=P.tref,
        radius=P.radius,
        solver=solver,
        cvxpy_solver=cvxpy_solver,
    )
    theta = sc.theta(res.theta, "exact DPO")
    info = dict(res.info, rescaled_by=sc.S)
    value = dpo_risk(theta, prob.data, beta=prob.beta, theta_ref=prob.tref)
    return ExactResult(
        theta=theta,
        value=value,
        status=res.status,
        method="dpo",
        optimality_gap=res.optimality_gap,
        info=info,
        regime=res.regime,
    )


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


def _newton(data, keep, beta, tref, radius, start) -> tuple[np.ndarray, dict]:
    """Projected damped Newton on ``sum_i p_i softplus(-m_i)`` over the ball (rows ``keep``):
    the smooth DPO objective (:class:`.fast.W1Penalty` with rho = 0), exact Hessian,
    trust-region steps over ``||theta|| <= radius``. Returns ``(theta, info)``."""
    from .fast import W1Penalty, damped_newton

    c = data.signed_labels[keep] * beta
    obj = W1Penalty(data.X[keep], c, data.weights[keep], 0.0, beta, tref)
    th0 = tref.copy() if start is None or not np.all(np.isfinite(start)) else start
    th0 = project_ball(th0, radius)
    th, _, _, info = damped_newton(obj, th0, [], radius=radius)
    return th, info


def _newton_fallback(data, keep, beta, tref, radius, start, exc) -> np.ndarray:
    """:func:`_newton` from ``start``; raises (chained to ``exc``) unless it converged."""
    th, info = _newton(data, keep, beta, tref, radius, start)
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
