"""Exact WDPO for log-linear policies (docs/theory.md#wasserstein-dro).

    min_{||theta|| <= B}  sup_{W_p(P, P0) <= rho}  E_P l(z; theta)

Three cases, one model each:

* **Continuous x, p = 1** (``candidates=None``), cost ``||x - x'||_2 + kappa |y - y'|``: the
  Shafieezadeh-Abadeh, Mohajerin Esfahani and Kuhn (2015) program

      min lam rho + sum_i p_i s_i  s.t.  s_i >= l(x_i, y_i),  s_i >= l(x_i, 1 - y_i) - lam kappa,
                                        beta ||theta - theta_ref||_2 <= lam.

  The loss depends on x only through ``(theta - theta_ref) . x``, so its Lipschitz constant in
  x is ``beta ||theta - theta_ref||`` (the paper writes ``||theta||``, i.e. theta_ref = 0;
  docs/theory.md#w1-continuous). With
  kappa = inf the program is exactly ``E_p l + rho beta ||theta - theta_ref||_2``: the supremum
  moves a vanishing share of mass to infinity and is not attained, so ``worst_case`` is None
  there. ``solver="fast"`` solves this kappa = inf case by Newton (:mod:`.fast`).
* **Continuous x, p > 1**: delegated to :func:`.wasserstein_p.wdpo_continuous_p`.
* **Finite candidates** ``{z'_k}`` (a world's Z): the exact convex program

      min_{theta, eta >= 0, s}  eta rho^p + sum_i p_i s_i
      s.t.  s_i >= l(z'_k; theta) - eta C_ik   for every allowed (i, k),  C = d^p,

  whose worst case is the optimal plan of the transport LP (:mod:`.certificates`).
"""

from __future__ import annotations

import time

import numpy as np

from .. import _validate as V
from ..data import PreferenceData
from ..divergences.wasserstein import default_cost  # noqa: F401  (re-exported)
from ..errors import InputError, SolverError
from ..lazy import cvxpy as cp
from ..losses import dpo_loss
from ..options import NONNEGATIVE, POSITIVE_OR_INF, Interval, declare
from . import certificates as cert
from . import fast
from ._common import check_solver, raise_if_separable, solve_with_retries
from .ball import on_boundary, project_ball
from .dpo import dpo, informative_rows
from .optimality import logistic_lower_bound
from .passes import pinned_blas
from .problem import SOLVE_CONSTRAINTS, Problem, Scale, prepare
from .result import ExactResult, certify_optimal
from .status import (
    REGIME_COLLAPSE,
    REGIME_DPO,
    REGIME_FINITE,
    REGIME_PENALTY,
    STATUS_OPTIMAL,
)

#: The order p of the Wasserstein distance: a float >= 1.
ORDER = [Interval(float, 1, None, closed="left")]


@declare({**SOLVE_CONSTRAINTS, "rho": NONNEGATIVE, "p": ORDER, "kappa": POSITIVE_OR_INF})
@pinned_blas
def wdpo(
    X,
    y=None,
    *,
    rho: float,
    beta: float,
    p: float = 1,
    kappa: float = np.inf,
    weights=None,
    theta_ref=None,
    radius=None,
    candidates=None,
    cost=None,
    solver: str = "auto",
    cvxpy_solver: str = "CLARABEL",
) -> ExactResult:
    """Solve WDPO exactly: ``min_theta sup_{W_p(P, P0) <= rho} E_P l``.

    Parameters
    ----------
    X : array_like (n, d) or PreferenceData
    y : array_like (n,), labels in {0, 1}
    rho : float >= 0
        Wasserstein radius, in the units of the cost d (feature-norm units by default).
    beta : float > 0
    p : float >= 1
        Order of the Wasserstein distance; the programs use ``d**p`` and ``rho**p``.
    kappa : float > 0 or inf
        Cost of flipping a label in the default cost; inf forbids flips.
    weights : array_like (n,), optional
        The nominal law P0 (default uniform).
    theta_ref : array_like (d,), optional (default 0)
    radius : float > 0, optional
        Parameter bound ``||theta|| <= radius``.
    candidates : (Xc, yc) or PreferenceData, optional
        Support the adversary may move mass to (K points); for a world, ``world.candidates()``
        (all of Z). Include the data points to let mass stay where it is.
    cost : array_like (n, K), optional
        Distances ``d(z_i, z'_k) >= 0``; ``inf`` forbids a move. Default
        ``||x_i - x'_k||_2 + kappa [y_i != y'_k]``.
    solver : {"auto", "cvxpy", "fast"}
        The solution path. Both for ``candidates=None, p=1, kappa=inf``; only ``"cvxpy"`` with
        candidates or a finite kappa; only ``"fast"`` for continuous p > 1 (which has no conic
        program). ``"auto"`` (default) picks a path the problem has (``"cvxpy"`` where both
        exist, ``"fast"`` for features left in their storage), so ``wdpo(X, y, rho=..,
        beta=.., p=2)`` works as written; naming a path the problem lacks raises InputError
        listing the valid choices.
    cvxpy_solver : str, keyword-only
        Conic backend of the cvxpy path, one of ``cvxpy.installed_solvers()`` (default
        Clarabel); checked whatever the path.

    Returns
    -------
    ExactResult
        ``theta``; ``value`` = dual objective at theta (nats); ``dual`` = eta* (lam* in the
        continuous p = 1 case, equal to ``beta ||theta - theta_ref||`` when kappa = inf);
        ``worst_case`` = adversarial distribution over the candidates (K,) (finite case; None in
        the continuous case, where ``info["flip_fraction"]`` (n,) says which labels flip);
        ``transport_plan`` (n, K) (finite case); ``gap`` = value minus the independent primal
        supremum at theta.

    Raises
    ------
    InputError
        rho < 0, p < 1, kappa <= 0, a cost of the wrong shape or with negative/NaN entries, an
        empty candidate set, a budget too small to reach the candidates, malformed data.
    SolverError
        Separable data without a radius, or no certified optimum.
    """
    p, kappa = float(p), float(kappa)
    solver, cvxpy_solver = check_solver(
        solver, cvxpy_solver, method="wdpo", X=X, **_paths(candidates, p, kappa)
    )
    in_place = solver == "fast" and candidates is None and p == 1
    prob = prepare(X, y, weights, beta=beta, theta_ref=theta_ref, radius=radius, in_place=in_place)
    rho = float(rho)
    t0 = time.perf_counter()
    if candidates is None:
        if cost is not None:
            raise InputError("cost needs candidates: pass candidates=(Xc, yc) with cost (n, K)")
        if p > 1:
            if np.isfinite(kappa):
                raise InputError(
                    "kappa must be inf for continuous WDPO with p > 1 (labels are fixed there); "
                    "use candidates= for label flips"
                )
            from .wasserstein_p import wdpo_continuous_p

            return wdpo_continuous_p(
                prob.data, rho=rho, p=p, beta=prob.beta, theta_ref=prob.tref, radius=prob.radius
            )
        return _continuous_p1(prob, rho, kappa, solver, cvxpy_solver, t0)
    Xc, yc = _check_candidates(candidates, prob.data.d)
    C = _check_cost(cost, prob.data, Xc, yc, kappa)
    return _finite(prob, rho, p, Xc, yc, C, cvxpy_solver, t0)


# ---------------------------------------------------------------------------- inputs
def _paths(candidates, p: float, kappa: float) -> dict:
    """The solution paths WDPO has for this problem (keywords of :func:`check_solver`)."""
    if candidates is not None:
        return {"valid": ("cvxpy",), "why": " with finite candidates (a transport program)"}
    if p > 1:
        return {
            "valid": ("fast",),
            "why": " for continuous W_p with p > 1 (no conic program; the fast path is a "
            "certified quasi-Newton solve of the dual)",
        }
    if np.isfinite(kappa):
        return {"valid": ("cvxpy",), "why": " for continuous WDPO with label flips (finite kappa)"}
    return {}


def _check_candidates(candidates, d: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(candidates, PreferenceData):
        Xc, yc = candidates.X, candidates.y
    else:
        try:
            Xc, yc = candidates
        except (TypeError, ValueError):
            raise InputError("candidates must be a pair (Xc, yc) or a PreferenceData") from None
        Xc = V.as_matrix(Xc, "candidates", allow_empty=True)
        if Xc.shape[0] == 0:
            raise InputError("candidates is empty: the adversary needs at least one point")
        yc = V.as_labels(yc, Xc.shape[0], "candidates labels")
    if Xc.shape[1] != d:
        raise InputError(f"candidates must have d = {d} columns, got {Xc.shape[1]}")
    return Xc, yc


def _check_cost(cost, data: PreferenceData, Xc, yc, kappa) -> np.ndarray:
    if cost is None:
        return default_cost(data.X, data.y, Xc, yc, kappa)
    try:
        C = np.asarray(cost, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("cost must be a numeric (n, K) matrix") from None
    if C.shape != (data.n, Xc.shape[0]):
        raise InputError(f"cost must have shape (n, K) = {(data.n, Xc.shape[0])}, got {C.shape}")
    if np.isnan(C).any():
        raise InputError("cost contains NaN (use inf to forbid a move)")
    if (C < 0).any():
        raise InputError(f"cost must be non-negative; min is {C.min():.3g}")
    return C


# ---------------------------------------------------------------------------- continuous, p = 1
def w1_newton(prob: Problem, rho: float):
    """Fast exact path for ``min E_p l + rho beta ||theta - theta_ref||`` over the ball of
    ``prob`` (rho = 0: plain DPO), by damped Newton; returns ``(theta, info)``. Shared by
    :func:`wdpo` and the KLDPO rho = 0 case (docs/theory.md#w1-continuous)."""
    data = prob.data
    X, c, p = prob.rows, prob.c, data.weights  # every pass over X through prob.rows
    info: dict = {"solver": "fast"}
    ref = prob.feasible_ref()
    collapse = w1_collapse(prob, rho)
    if collapse is not None:
        info.update(collapse)
        info["newton"] = {"iterations": 0, "converged": True, "newton_decrement": 0.0}
        return prob.tref.copy(), info
    g_ref = X.rmatvec(p * c * -0.5)  # gradient of E_p l at theta_ref
    ng = float(np.linalg.norm(g_ref))
    if rho > 0:
        info["rho_threshold"] = ng / prob.beta
    th0 = ref
    if ng > 0:
        u = -g_ref / ng
        s = float(np.sqrt(p @ (c * X.matvec(u)) ** 2))
        th0 = project_ball(ref + (1.0 / s if s > 0 else 1.0) * u, prob.radius)
        if rho > 0:
            # the ray out of the kink at theta_ref along -grad: its minimiser has a value below
            # f(theta_ref) (directional derivative rho beta - ||grad|| < 0), so descent from
            # there never comes back to the kink, where Newton models of the norm break down
            rs = fast.subsample(data.n, fast.warm_start_rows(data.d))  # a 1-D search
            Xr, cr, pr = (X, c, p) if rs is None else (X.subset(rs), c[rs], p[rs] / p[rs].sum())
            mu = cr * Xr.matvec(u)
            m0 = cr * Xr.matvec(ref - prob.tref)
            rb = rho * prob.beta

            def f_ray(t):
                return float(pr @ dpo_loss(m0 + t * mu)) + rb * float(
                    np.linalg.norm(ref + t * u - prob.tref)
                )

            t_star = fast.convex_line_min(
                f_ray, fast.ray_limit(ref, u, prob.radius), s0=0.25, xtol=1e-6
            )
            if t_star > 0:
                th0 = ref + t_star * u
    sub = fast.warm_start_subsample(data.n, data.d)
    H0 = None
    if sub is not None:
        ps = p[sub] / p[sub].sum()
        sobj = fast.W1Penalty(X.subset(sub), c[sub], ps, rho, prob.beta, prob.tref)
        th0, _, sst, winfo = fast.damped_newton(
            sobj, th0, [], radius=prob.radius, keep_hessian=True
        )
        info["warm_start"] = {"rows": int(sub.size), "iterations": winfo["iterations"]}
        H0 = winfo.pop("hessian")  # the subsample's last exact Hessian, no extra pass
        if H0 is None and not fast.hessian_free(data.d, prob.radius):
            H0 = sobj.derivs(sst)[1]
    obj = fast.W1Penalty(X, c, p, rho, prob.beta, prob.tref)
    th, _, _, ninfo = fast.damped_newton(obj, th0, [], radius=prob.radius, hessian=H0)
    info["newton"] = ninfo
    if prob.radius is None and rho == 0:
        # Separable data have no minimiser, yet f -> 0 along a ray, so every stopping test
        # fires far out: the separability LP decides. (A negative margin at the returned theta
        # proves nothing: quasi-separable data, A v >= 0 with some A v = 0, keep negative
        # margins on the rows that v leaves at 0.)
        take, n_rows = prob.informative_rows_source()
        raise_if_separable(take, "DPO (fast)", n=n_rows)
    if not ninfo["converged"]:
        fast.require_converged(ninfo, "exact WDPO (fast)")
    return th, info


def w1_collapse(prob: Problem, rho: float) -> dict | None:
    """Certified collapse of continuous WDPO-1 with kappa = inf: ``theta = theta_ref`` is optimal.

    The objective ``f(theta) = E_p l + rho beta ||theta - theta_ref||`` is convex with
    subdifferential ``grad E_p l(theta_ref) + rho beta {v : ||v|| <= 1}`` at theta_ref, and
    ``grad E_p l(theta_ref) = -(1/2) sum_i p_i sy_i beta x_i`` (every margin is 0 there). So, for
    theta_ref in the parameter ball, ``0`` is a subgradient (theta_ref optimal) iff
    ``rho beta >= ||grad E_p l(theta_ref)||``, i.e. ``rho >= rho_threshold =
    ||sum_i p_i sy_i x_i|| / 2``. (On the sphere this is sufficient; the normal cone could only
    enlarge the set.) Returns the info entries when collapsed, else None.
    """
    if rho <= 0:
        return None
    data = prob.data
    inside = prob.radius is None or np.linalg.norm(prob.tref) <= prob.radius
    if not inside:
        return None
    g_ref = prob.rows.rmatvec(data.weights * prob.c * -0.5)
    ng = float(np.linalg.norm(g_ref))
    if ng > rho * prob.beta:
        return None
    return {
        "collapse_certified": True,
        "rho_threshold": ng / prob.beta,
        "collapse_test": "rho * beta >= ||grad of E_p l at theta_ref|| (subgradient condition)",
    }


def _continuous_p1(prob: Problem, rho, kappa, solver, cvxpy_solver, t0) -> ExactResult:
    """Continuous W1 at unit scale (:class:`._common.Scale`), answer in the caller's units.

    A transport radius and a flip cost are in units of x, so they scale with ``1 / s``; the
    multiplier lam (loss per unit of x) with ``1 / s`` too."""
    sc = Scale.of(prob, "exact WDPO (Wasserstein-1)", in_place=solver == "fast")
    res = _continuous_p1_unit(sc.problem, rho / sc.s, kappa / sc.s, solver, cvxpy_solver, t0)
    res.theta = sc.theta(res.theta)
    res.dual = res.dual / sc.s
    info = res.info
    info["lipschitz"] = info["lipschitz"] / sc.s
    if "rho_threshold" in info:
        info["rho_threshold"] = info["rho_threshold"] * sc.s
    info["scale"] = {"x": sc.s, "theta": sc.S}
    return res


def _continuous_p1_unit(prob: Problem, rho, kappa, solver, cvxpy_solver, t0) -> ExactResult:
    data = prob.data
    info: dict = {"solver": solver}
    if rho == 0:
        if solver == "cvxpy":
            res = dpo(
                data,
                beta=prob.beta,
                theta_ref=prob.tref,
                radius=prob.radius,
                cvxpy_solver=cvxpy_solver,
            )
            theta = res.theta
            info.update(res.info)
        else:
            theta, ninfo = w1_newton(prob, 0.0)
            info.update(ninfo)
    elif solver == "fast":
        theta, ninfo = w1_newton(prob, rho)
        info.update(ninfo)
    else:
        theta = _sa_program(prob, rho, kappa, cvxpy_solver, info)
    return _finish_continuous(prob, rho, kappa, theta, info, t0)


def _sa_program(prob: Problem, rho, kappa, cvxpy_solver, info) -> np.ndarray:
    data = prob.data
    keep = informative_rows(data.X, data.weights)
    pk = data.weights[keep]
    p0 = float(data.weights[(data.weights > 0) & ~keep].sum())
    if not keep.any():
        info["all_losses_constant"] = True
        return prob.feasible_ref()
    A = prob.c[keep, None] * data.X[keep]
    ref_inside = prob.radius is None or np.linalg.norm(prob.tref) <= prob.radius
    if np.isfinite(kappa) and ref_inside:
        flips = _sa_collapse(A, pk, prob.beta, rho, kappa)
        if flips is not None:
            info["collapse_certified"] = True
            f = np.zeros(data.n)
            f[keep] = flips
            info["collapse_flip_fraction"] = f
            return prob.tref.copy()
    if not np.isfinite(kappa):
        collapse = w1_collapse(prob, rho)
        if collapse is not None:
            info.update(collapse)
            return prob.tref.copy()
        info["rho_threshold"] = float(
            np.linalg.norm(data.X.T @ (data.weights * prob.c * -0.5)) / prob.beta
        )
    theta = cp.Variable(data.d, name="theta")
    m = A @ theta - A @ prob.tref
    norm = prob.beta * cp.norm(theta - prob.tref, 2)
    cons = [cp.norm(theta, 2) <= prob.radius] if prob.radius is not None else []
    if np.isfinite(kappa):
        lam = cp.Variable(nonneg=True, name="lam")
        s = cp.Variable(A.shape[0], name="s")
        flip_con = s >= cp.logistic(m) - lam * kappa
        cons += [s >= cp.logistic(-m), flip_con, norm <= lam]
        objective = lam * rho + pk @ s + p0 * np.log(2.0)
    else:
        objective = pk @ cp.logistic(-m) + p0 * np.log(2.0) + rho * norm
    status = solve_with_retries(
        cp.Problem(cp.Minimize(objective), cons),
        what="exact WDPO (Wasserstein-1 program)",
        cvxpy_solver=cvxpy_solver,
    )
    info["conic_status"] = status
    th = project_ball(np.asarray(theta.value, dtype=float), prob.radius)
    if np.isfinite(kappa) and flip_con.dual_value is not None:
        # the saddle flip fractions: the multipliers of the flip constraints over p_i
        f = np.zeros(data.n)
        f[keep] = np.clip(np.asarray(flip_con.dual_value, dtype=float) / pk, 0.0, 1.0)
        info["saddle_flip_fraction"] = f
    if not np.isfinite(kappa):  # smooth away from theta_ref: polish with Newton
        obj = fast.W1Penalty(data.X[keep], prob.c[keep], pk, rho, prob.beta, prob.tref)
        f0 = obj.state(th, []).f
        th1, _, st, ninfo = fast.damped_newton(obj, th, [], radius=prob.radius)
        info["newton"] = ninfo
        if ninfo["converged"] and st.f <= f0 + 1e-12:
            th = th1
    return th


def _sa_collapse(A, pk, beta, rho, kappa) -> np.ndarray | None:
    """Is ``theta = theta_ref`` optimal for the Wasserstein-1 program with label flips?

    At theta_ref every loss is log 2. The one-sided derivative of the robust objective along a
    unit direction u is ``max_f [beta ||u|| (rho - kappa sum_i p_i f_i) + u . g(f)]`` over flip
    fractions ``f in [0, 1]^n`` with ``kappa sum_i p_i f_i <= rho``, where
    ``g(f) = sum_i p_i (f_i - 1/2) sy_i beta x_i``. By minimax it is >= 0 for every u exactly
    when some feasible f has ``||g(f)|| <= beta (rho - kappa sum_i p_i f_i)``: an SOCP.
    Returns those flip fractions (n,), or None when theta_ref is not optimal. (The test is
    a screen: the optimality certificate of the result checks the returned f exactly.)
    """
    f = cp.Variable(A.shape[0])
    g = A.T @ cp.multiply(pk, f - 0.5)
    slack = cp.norm(g, 2) - beta * (rho - kappa * (pk @ f))
    prob = cp.Problem(cp.Minimize(slack), [f >= 0, f <= 1, kappa * (pk @ f) <= rho])
    solve_with_retries(prob, what="WDPO collapse test")
    if not float(prob.value) <= 1e-9 * (1.0 + beta * rho):
        return None
    return np.clip(np.asarray(f.value, dtype=float), 0.0, 1.0)


def _finish_continuous(prob, rho, kappa, theta, info, t0) -> ExactResult:
    data = prob.data
    m = prob.margins(theta)
    l, lf = dpo_loss(m), dpo_loss(-m)
    lip = prob.beta * float(np.linalg.norm(theta - prob.tref))
    value, lam = cert.w1_dual_min(l, lf, data.weights, lip, rho, kappa)
    primal, frac = cert.w1_primal_sup(l, lf, data.weights, lip, rho, kappa)
    collapsed = bool(np.all(theta == prob.tref))
    if "collapse_flip_fraction" in info:
        frac = info.pop("collapse_flip_fraction")
    lower, oinfo = w1_lower_bound(prob, rho, kappa, theta, frac, margins=m)
    if "saddle_flip_fraction" in info:  # the knapsack at theta may split ties wrongly
        f_dual = info.pop("saddle_flip_fraction")
        if kappa * float(data.weights @ f_dual) > rho:  # back inside the budget
            f_dual = f_dual * (rho / (kappa * float(data.weights @ f_dual)))
        lower2, oinfo2 = w1_lower_bound(prob, rho, kappa, theta, f_dual, margins=m)
        if lower2 > lower:
            lower, oinfo = lower2, oinfo2 | {"flips": "conic multipliers"}
    what = "exact WDPO (Wasserstein-1)"
    opt_gap = certify_optimal(value, lower, what=what)
    info.update(
        seconds=time.perf_counter() - t0,
        passes=prob.rows.passes,
        primal_value=primal,
        lipschitz=lip,
        flip_fraction=frac,
        collapsed_to_theta_ref=collapsed,
        on_boundary=on_boundary(theta, prob.radius),
        worst_case_note="not attained: a vanishing share of mass moves to infinity at rate "
        "beta ||theta - theta_ref|| per unit of transport",
    )
    return ExactResult(
        theta=theta,
        value=value,
        status=STATUS_OPTIMAL,
        method="wdpo",
        dual=lam,
        worst_case=None,
        gap=value - primal,
        optimality_gap=opt_gap,
        info=info | {"optimality": oinfo},
        regime=REGIME_DPO if rho == 0 else (REGIME_COLLAPSE if collapsed else REGIME_PENALTY),
    )


def w1_lower_bound(prob: Problem, rho, kappa, theta, flip, *, margins=None) -> tuple[float, dict]:
    """Weak-duality lower bound of the continuous W1 minimax value
    (``docs/theory.md#optimality-gap``).

    For flip fractions ``f in [0, 1]^n`` with ``kappa sum_i p_i f_i <= rho`` and a unit vector
    ``u``, the adversary can flip a share ``f_i`` of pair i and spend the rest of the budget,
    ``r = rho - kappa sum_i p_i f_i``, moving a vanishing mass far along ``-sy_i u``; its gain
    tends to ``r beta |u . (theta - theta_ref)|``. So for every theta

        R(theta) >= sum_i p_i [(1 - f_i) l_i(theta) + f_i l_i^flip(theta)]
                    + r beta u . (theta - theta_ref),

    and the minimum over the parameter ball of the right side (a logistic objective plus a
    linear term, bounded below by :func:`.optimality.logistic_lower_bound`) is a lower bound
    of ``min R``. At the returned theta, ``f`` is the adversary's knapsack and ``u`` the
    direction of ``theta - theta_ref`` (projected on the span of the data without a radius),
    or, at ``theta = theta_ref``, ``u = -grad / max(||grad||, r beta)`` with ``grad`` the
    gradient there of the flipped mixture, so that the right side is stationary.
    """
    data = prob.data
    p = data.weights
    f = np.zeros(data.n) if flip is None else np.asarray(flip, dtype=float)
    rem = rho if not np.isfinite(kappa) else max(0.0, rho - kappa * float(p @ f))
    delta = theta - prob.tref
    nd = float(np.linalg.norm(delta))
    if not np.any(f > 0):
        # no flips (kappa = inf, the fast path): rows c_i x_i read in passes, no copy; without
        # a radius u is projected onto the range of the Hessian (the span of the rows), which
        # keeps ||u|| <= 1
        R = prob.rows.scaled(prob.c)
        if rem == 0.0:
            u = np.zeros(data.d)
        elif nd > 0:
            u = delta / nd
        else:
            g = -0.5 * R.rmatvec(p)
            ng = float(np.linalg.norm(g))
            u = -g / max(ng, rem * prob.beta) if ng > 0 else np.zeros(data.d)
        if data.d >= fast.HESSIAN_FREE_D:
            # high dimension: the Fenchel dual point of the logistic part, corrected by a
            # conjugate-gradient Newton step so that its gradient matches the linear term
            # (no d x d matrix; docs/theory.md#optimality-gap)
            lower = cert.dpo_lower_bound(
                R,
                p,
                theta,
                theta_ref=prob.tref,
                radius=prob.radius,
                margins=margins,
                linear=rem * prob.beta * u,
            )
            return lower, {"bound": "Fenchel dual (conjugate-gradient correction)"}
        return logistic_lower_bound(
            R,
            p,
            theta,
            theta_ref=prob.tref,
            radius=prob.radius,
            linear=rem * prob.beta * u,
            margins=margins,
            linear_in_range=prob.radius is None and nd > 0,
        )
    X = prob.in_memory().data.X
    A = prob.c[:, None] * X
    rows = np.vstack([A, -A])
    w = np.concatenate([p * (1.0 - f), p * f])
    if rem == 0.0:
        u = np.zeros(data.d)
    elif nd > 0:
        u = delta / nd
        if prob.radius is None:  # keep u in the span of the rows (else unbounded below)
            keep = informative_rows(X, p)
            if keep.any():
                coef, *_ = np.linalg.lstsq(A[keep].T, u, rcond=None)
                u = A[keep].T @ coef
                nu_ = float(np.linalg.norm(u))
                u = u / nu_ if nu_ > 1.0 else u
            else:
                u = np.zeros(data.d)
    else:
        g = -0.5 * (rows.T @ w)
        ng = float(np.linalg.norm(g))
        u = -g / max(ng, rem * prob.beta) if ng > 0 else np.zeros(data.d)
    return logistic_lower_bound(
        rows, w, theta, theta_ref=prob.tref, radius=prob.radius, linear=rem * prob.beta * u
    )


# ---------------------------------------------------------------------------- finite candidates
def _finite(prob: Problem, rho, p, Xc, yc, C, cvxpy_solver, t0) -> ExactResult:
    data = prob.data
    w = data.weights
    rows = np.flatnonzero(w > 0)
    with np.errstate(over="ignore"):
        Cp = C**p
    budget = rho**p
    Cr = Cp[rows]
    reach = np.isfinite(Cr)
    if not reach.any(axis=1).all():
        bad = rows[~reach.any(axis=1)][0]
        raise InputError(f"cost: row {bad} cannot move to any candidate (all costs are inf)")
    need = float(w[rows] @ np.where(reach, Cr, np.inf).min(axis=1))
    if need > budget * (1 + 1e-12) + 1e-15:
        raise InputError(
            f"rho = {rho:g} is too small: moving every point to its nearest candidate already "
            f"costs {need:.6g} > rho^p = {budget:.6g}; include the data points among the "
            "candidates or raise rho"
        )
    allowed = reach & (Cr <= 0) if rho == 0 else reach
    if rho == 0 and _stays_put(data, rows, allowed, Xc, yc):
        # every zero-cost move is to a copy of the point itself: the ball is {P0}, DPO exactly
        res = dpo(
            data,
            beta=prob.beta,
            theta_ref=prob.tref,
            radius=prob.radius,
            cvxpy_solver=cvxpy_solver,
        )
        Cm = np.where(_allowed_full(Cp, rows, allowed), Cp, np.inf)
        info = {"solver": "cvxpy", "rho_zero": "dpo", "candidates": int(Xc.shape[0])}
        return _finite_result(prob, rho, Xc, yc, Cm, budget, res.theta, None, info, t0)
    ii, kk = np.nonzero(allowed)
    used = np.unique(kk)
    cc = 2.0 * yc - 1.0
    Ac = (cc * prob.beta)[:, None] * Xc
    info: dict = {"solver": "cvxpy", "cvxpy_solver": cvxpy_solver, "candidates": int(Xc.shape[0])}
    if prob.radius is None:
        keep = informative_rows(data.X, w)
        A = np.vstack([prob.c[keep, None] * data.X[keep], Ac[used][np.any(Xc[used] != 0, 1)]])
        raise_if_separable(A, "exact WDPO")
    Cm = np.where(_allowed_full(Cp, rows, allowed), Cp, np.inf)
    ref_inside = prob.radius is None or np.linalg.norm(prob.tref) <= prob.radius
    plan0 = cert.collapse_plan(Ac, w, Cm, budget) if ref_inside and rho > 0 else None
    if plan0 is not None:
        info["collapse_certified_by_lp"] = True
        info["collapse_plan"] = plan0
        return _finite_result(prob, rho, Xc, yc, Cm, budget, prob.tref.copy(), None, info, t0)
    th, eta_val, status, iters, dual = _cutting_planes(
        prob, rho, rows, allowed, Cr, Ac, Xc, budget, cvxpy_solver
    )
    info.update(conic_status=status, cutting_plane_rounds=iters)
    master = np.zeros(Cm.shape)
    master[rows] = dual
    info["master_plan"] = _feasible_plan(master, w, Cm, budget)
    return _finite_result(prob, rho, Xc, yc, Cm, budget, th, eta_val, info, t0)


def _stays_put(data, rows, allowed, Xc, yc) -> bool:
    ii, kk = np.nonzero(allowed)
    r = rows[ii]
    same = np.all(data.X[r] == Xc[kk], axis=1) & (data.y[r] == yc[kk])
    return bool(same.all())


def _cutting_planes(prob, rho, rows, allowed, Cr, Ac, Xc, budget, cvxpy_solver, *, per_row=3):
    """Solve the finite-candidate program by constraint generation.

    The full program has one constraint ``s_i >= L_k - eta C_ik`` per allowed pair (i, k); most
    are slack and many are tied, which makes interior-point solvers stall (on a 1600-point grid
    in d = 2 Clarabel failed outright: thousands of exponential cones, nearly all degenerate).
    The master keeps a small active set (each row's zero-cost moves and cheapest move), with
    one loss epigraph ``u_k >= l_k(theta)`` per candidate in the set and linear pair
    constraints, is solved exactly, and every pair is then checked at the master's solution;
    the ``per_row`` most violated pairs of each row join the set. Without a radius the master
    may be unbounded (a subset of candidates can be separable), so it carries an artificial
    bound ``||theta - theta_ref|| <= R``, multiplied by 10 whenever the master's solution
    touches it. The master is a relaxation, so when nothing is violated (to 1e-10) and the
    artificial bound is slack (then it does not change the master's KKT conditions), its
    solution is optimal for the full program.
    """
    w = prob.weights if hasattr(prob, "weights") else prob.data.weights
    d = prob.data.d
    nr, K = Cr.shape
    Cfin = np.where(allowed, Cr, np.inf)
    act = allowed & (Cfin <= 0)
    act[np.arange(nr), Cfin.argmin(axis=1)] = True
    cc = Ac  # rows sy'_k beta x'_k
    informative = np.any(Xc != 0, axis=1)
    tol = 1e-10
    art = None if prob.radius is not None else 10.0 * (1.0 + float(np.linalg.norm(prob.tref)))
    for it in range(1, 201):
        ii, kk = np.nonzero(act)
        theta = cp.Variable(d, name="theta")
        s = cp.Variable(nr, name="s")
        eta = cp.Variable(nonneg=True, name="eta") if rho > 0 else None
        lhs = s[ii] + cp.multiply(Cr[ii, kk], eta) if rho > 0 else s[ii]
        # one epigraph variable per distinct candidate, u_k >= l_k(theta) (two exponential
        # cones each), shared by every pair (i, k): the pair constraints are then linear,
        # instead of one pair of cones per pair, which left Clarabel with thousands of
        # near-tied conic constraints on dense grids
        ks, kpos = np.unique(kk, return_inverse=True)
        u = cp.Variable(ks.shape[0], name="u")
        inf_u = informative[ks]
        pair_con = lhs >= u[kpos]
        cons = [pair_con]
        if inf_u.any():
            Ak = cc[ks[inf_u]]
            cons.append(u[np.flatnonzero(inf_u)] >= cp.logistic(-(Ak @ theta - Ak @ prob.tref)))
        if (~inf_u).any():
            cons.append(u[np.flatnonzero(~inf_u)] >= np.log(2.0))
        objective = w[rows] @ s + (eta * budget if rho > 0 else 0.0)
        if prob.radius is not None:
            cons.append(cp.norm(theta, 2) <= prob.radius)
        else:
            cons.append(cp.norm(theta - prob.tref, 2) <= art)
        status = solve_with_retries(
            cp.Problem(cp.Minimize(objective), cons),
            what="exact WDPO (finite candidates)",
            cvxpy_solver=cvxpy_solver,
        )
        th = np.asarray(theta.value, dtype=float)
        ev = float(eta.value) if eta is not None else 0.0
        L = dpo_loss(cc @ (th - prob.tref))
        with np.errstate(invalid="ignore"):
            viol = np.where(allowed, L[None, :] - ev * Cfin, -np.inf) - np.asarray(s.value)[:, None]
        new = (viol > tol * (1.0 + np.abs(L).max())) & ~act
        at_bound = art is not None and np.linalg.norm(th - prob.tref) >= art * (1 - 1e-6)
        if at_bound:
            art *= 10.0
        if not new.any() and not at_bound:
            # the pair constraints' multipliers are the saddle transport plan (rows x K)
            dual = np.zeros((nr, K))
            if pair_con.dual_value is not None:
                dual[ii, kk] = np.clip(np.asarray(pair_con.dual_value, dtype=float), 0.0, None)
            th_out = project_ball(th, prob.radius)
            return th_out, (ev if eta is not None else None), status, it, dual
        vv = np.where(new, viol, -np.inf)
        top = np.argsort(-vv, axis=1)[:, :per_row]
        r_idx = np.repeat(np.arange(nr), top.shape[1])
        k_idx = top.ravel()
        ok = new[r_idx, k_idx]
        act[r_idx[ok], k_idx[ok]] = True
    raise SolverError(  # pragma: no cover - each round adds a pair, finitely many pairs
        "exact WDPO (finite candidates): constraint generation did not terminate.",
        status="not_converged",
        hint="reduce the candidate set.",
    )


def _finite_result(prob, rho, Xc, yc, Cm, budget, th, eta_solver, info, t0) -> ExactResult:
    w = prob.data.weights
    Lc = dpo_loss(((2.0 * yc - 1.0) * prob.beta) * (Xc @ (th - prob.tref)))
    primal, plan, eta_lp = cert.transport_primal_sup(Lc, w, Cm, budget)
    eta_val = eta_solver if eta_solver is not None else eta_lp
    value = cert.transport_dual_value(Lc, w, Cm, budget, eta_val)
    # weak duality: a feasible plan's candidate law Q does not depend on theta, so
    # min_theta E_Q l(theta) <= the minimax value (docs/theory.md#optimality-gap)
    Ac = ((2.0 * yc - 1.0) * prob.beta)[:, None] * Xc
    lower, oinfo = -np.inf, {}
    for pl in (plan, info.pop("collapse_plan", None), info.pop("master_plan", None)):
        # solvers meet the budget and row sums only to their tolerance: weak duality needs
        # an exactly feasible plan
        pl = None if pl is None else _feasible_plan(pl, w, Cm, budget)
        if pl is not None:
            lo, oi = logistic_lower_bound(
                Ac, pl.sum(axis=0), th, theta_ref=prob.tref, radius=prob.radius
            )
            if lo > lower:
                lower, oinfo = lo, oi
    info["optimality"] = oinfo
    opt_gap = certify_optimal(value, lower, what="exact WDPO (finite candidates)")
    info.update(
        seconds=time.perf_counter() - t0,
        primal_value=primal,
        eta_lp=eta_lp,
        on_boundary=on_boundary(th, prob.radius),
        transport_cost=float(np.sum(plan * np.where(np.isfinite(Cm), Cm, 0.0))),
        collapsed_to_theta_ref=bool(
            np.linalg.norm(th - prob.tref) <= 1e-7 * (1 + np.linalg.norm(prob.tref))
        ),
    )
    return ExactResult(
        theta=th,
        value=value,
        status=STATUS_OPTIMAL,
        method="wdpo",
        dual=eta_val,
        worst_case=plan.sum(axis=0),
        gap=value - primal,
        optimality_gap=opt_gap,
        info=info,
        transport_plan=plan,
        regime=REGIME_DPO
        if rho == 0
        else (REGIME_COLLAPSE if info["collapsed_to_theta_ref"] else REGIME_FINITE),
    )


def _feasible_plan(plan, w, Cm, budget) -> np.ndarray | None:
    """A solver's plan made exactly feasible: each row rescaled to its mass ``w_i``, then
    mixed with the cheapest plan (every row to its cheapest candidate) just enough to meet
    the budget. None when a row of the plan is empty."""
    rows = w > 0
    mass = plan.sum(axis=1)
    if np.any(mass[rows] <= 0):
        return None
    out = np.zeros_like(plan)
    out[rows] = plan[rows] * (w[rows] / mass[rows])[:, None]
    C0 = np.where(np.isfinite(Cm), Cm, 0.0)
    cost = float(np.sum(out * C0))
    cheap = np.zeros_like(plan)
    k = np.argmin(np.where(np.isfinite(Cm), Cm, np.inf), axis=1)
    cheap[np.flatnonzero(rows), k[rows]] = w[rows]
    need = float(np.sum(cheap * C0))
    if cost > budget:
        t = 1.0 if cost <= need else min(1.0, (cost - budget) / (cost - need))
        out = (1.0 - t) * out + t * cheap
    out[~np.isfinite(Cm)] = 0.0
    return out


def _allowed_full(Cp, rows, allowed) -> np.ndarray:
    """Boolean (n, K) mask of the moves the program allows (rows with p_i = 0: none)."""
    out = np.zeros(Cp.shape, dtype=bool)
    out[rows] = allowed
    return out
