"""Exact KLDPO for log-linear policies (docs/theory.md#kl-dro).

    min_{||theta|| <= B}  sup_{KL(q || p) <= rho}  sum_i q_i l_i(theta)
  = min_{theta, lam >= 0}  lam rho + lam log sum_i p_i exp(l_i(theta) / lam),

with ``l_i = softplus(-sy_i beta (theta - theta_ref) . x_i)``. Two paths solve it:

* ``solver="cvxpy"``: the exponential-cone program with the support weights ``p_i``
  (``sum_i p_i v_i <= lam``; the count form ``sum_i v_i <= n lam`` makes Clarabel fail), rows with
  x = 0 aggregated into one atom of loss log 2 (they stay in the log-sum-exp), then Newton-polished
  on the smooth dual (:mod:`.fast`);
* ``solver="fast"``: damped Newton on the dual in ``(theta, lam)`` directly, warm-started on a
  subsample when n is large.

Regimes. When ``rho >= -log P(argmax loss)`` at the optimum, lam* = 0 and the objective is the
maximal loss; interior-point solvers then end inaccurate. Both paths detect this, solve the
limiting problem ``min_theta max_{i: p_i > 0} l_i`` explicitly (a max-margin SOCP, since
``l = softplus(-m)`` is decreasing in the margin), and certify it with a saddle point: the
minimum-KL distribution ``mu`` supported on the argmax set that makes theta stationary; the
regime holds exactly when ``KL(mu || p) <= rho``. With non-separable data this limit is
theta = theta_ref, where every loss is log 2: the collapse of KL-DRO at large rho. It is reported
in ``info["collapsed_to_theta_ref"]`` and is correct behaviour, not an error.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from ..divergences.kl import LOG2, kl_lambda_for_theta, kl_small_radius_bounds, with_zero_atom
from ..errors import SolverError
from ..lazy import cvxpy as cp
from ..losses import dpo_loss
from ..options import NONNEGATIVE, Options, declare
from . import certificates as cert
from . import fast
from ._common import check_solver, raise_if_separable
from .ball import on_boundary, project_ball
from .dpo import (
    SCALE_RANGE,
    dpo,
    margin_scale,
)
from .passes import as_rows, pinned_blas
from .problem import SOLVE_CONSTRAINTS, Problem, Scale, prepare
from .result import OPTIMALITY_TOL, ExactResult, certify_optimal, solve_problem
from .status import (
    REGIME_COLLAPSE,
    REGIME_DPO,
    REGIME_INTERIOR,
    REGIME_MAX_LOSS,
    STATUS_OPTIMAL,
)

#: Below SMALL_LAM * (1 + loss scale) a multiplier triggers the lam* = 0 (max-loss) check.
SMALL_LAM = 1e-6

#: Radii below this are under the Newton path's float64 resolution (the worst case's KL is a
#: difference of numbers of order one): they take the small-radius path (``_small_radius``).
TINY_RHO = 1e-13


@declare(
    {
        **SOLVE_CONSTRAINTS,
        "rho": NONNEGATIVE,
        "certificate": [Options(("auto", "cvxpy", "root"))],
    }
)
@pinned_blas
def kldpo(
    X,
    y=None,
    *,
    rho: float,
    beta: float,
    weights=None,
    theta_ref=None,
    radius=None,
    solver: str = "auto",
    cvxpy_solver: str = "CLARABEL",
    certificate: str = "auto",
) -> ExactResult:
    """Solve KLDPO exactly: ``min_theta max_{KL(q||p) <= rho} sum_i q_i l_i(theta)``.

    Parameters
    ----------
    X : array_like (n, d) or PreferenceData
        Pair feature differences (then ``y`` and ``weights`` come with it).
    y : array_like (n,), labels in {0, 1}
    rho : float >= 0
        KL radius (nats). ``rho = 0`` is DPO. Below ``TINY_RHO`` (1e-13) the small-radius
        path answers: theta is the DPO optimum (within O(sqrt(rho)) of the KLDPO one), the
        value and worst case come from centred expansions, certified to O(rho), and
        ``info["path"] == "small radius"`` (docs/theory.md#kl-small-radius).
    beta : float > 0
    weights : array_like (n,), optional
        The nominal law p (probabilities; default uniform). A world's population weights give
        the population robust optimum.
    theta_ref : array_like (d,), optional (default 0)
    radius : float > 0, optional
        Parameter bound ``||theta||_2 <= radius``. Needed when the data are separable.
    solver : {"auto", "cvxpy", "fast"}
        The solution path: the conic program, or damped Newton on the dual. ``"auto"``
        (default): ``"cvxpy"``, or ``"fast"`` for features left in their storage.
    cvxpy_solver : str, keyword-only
        Conic backend of the cvxpy path, one of ``cvxpy.installed_solvers()`` (default
        Clarabel); checked whatever the path.
    certificate : {"auto", "cvxpy", "root"}
        How the independent primal supremum is computed (see
        :func:`certificates.kl_primal_certificate`): ``"auto"`` uses the conic program
        (``cp.rel_entr``) cross-checked by the exact tilted distribution and falls back to the
        latter when the conic solve is inaccurate; ``info["certificate"]`` records which.

    Returns
    -------
    ExactResult
        ``theta`` (d,); ``value`` = the dual objective ``lam* rho + lam* log E_p exp(l / lam*)``
        at theta (max loss when lam* = 0), nats; ``dual`` = lam* (inf at rho = 0, 0 in the
        max-loss regime); ``worst_case`` = q (n,) summing to 1; ``gap`` = value minus the
        independent primal supremum at theta; ``regime`` in {"dpo", "interior",
        "max-loss", "collapse"} ("collapse" when theta* = theta_ref); ``status`` =
        "optimal"; ``info`` holds timings, iterations, ``collapsed_to_theta_ref`` and,
        in the limit regime, ``rho_threshold`` (the KL of the saddle distribution).

    Raises
    ------
    InputError
        Malformed input (also rho < 0, unknown solver).
    SolverError
        The data are separable and no radius is given, or no certified optimum was found.
    """
    solver, cvxpy_solver = check_solver(solver, cvxpy_solver, method="kldpo", X=X)
    prob = prepare(
        X, y, weights, beta=beta, theta_ref=theta_ref, radius=radius, in_place=solver == "fast"
    )
    rho = float(rho)
    scale = margin_scale(None, prob.beta, top=prob.x_abs_max)
    if scale > 0 and not (SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]):
        # solve at unit scale (same margins, losses, value, lam, q)
        sc = Scale.of(prob, "exact KLDPO")
        P = sc.problem
        res = kldpo(
            P.data,
            rho=rho,
            beta=P.beta,
            theta_ref=P.tref,
            radius=P.radius,
            solver=solver,
            cvxpy_solver=cvxpy_solver,
            certificate=certificate,
        )
        res.theta = sc.theta(res.theta, "exact KLDPO")
        res.info["rescaled_by"] = sc.S
        return res
    t0 = time.perf_counter()
    if rho == 0:
        return _rho_zero(prob, solver, cvxpy_solver, t0)
    if rho < TINY_RHO:
        return _small_radius(prob, rho, solver, cvxpy_solver, t0)
    if _tiny_ball(prob):
        return _finish(
            prob, rho, *_tiny_ball_point(prob, rho, solver, cvxpy_solver), certificate, t0
        )
    collapsed, ray = _collapse(prob, rho)
    if collapsed is not None:
        return _finish(prob, rho, *collapsed, solver, certificate, t0)
    if prob.radius is None:
        # separable data (after the collapse test, which covers a max-loss regime that
        # theta_ref attains): the dual keeps decreasing along a ray, the infimum is not
        # attained. Both paths refuse here, before either runs (the fast path's Newton would
        # otherwise stop far out, where the gradient underflows, and report a finite theta).
        take, n_rows = prob.informative_rows_source()
        raise_if_separable(take, "exact KLDPO", n=n_rows)
    # the requested path first; when it ends uncertified, the other path (the cvxpy path only
    # up to cert.KL_CVXPY_MAX_ROWS rows), then an error naming both reasons
    paths = [solver]
    other = "fast" if solver == "cvxpy" else "cvxpy"
    if other == "fast" or prob.data.n <= cert.KL_CVXPY_MAX_ROWS:
        paths.append(other)
    failures = []
    for path in paths:
        try:
            if path == "cvxpy":
                theta, lam, mu, info = _solve_cvxpy(prob, rho, cvxpy_solver, ray)
            else:
                theta, lam, mu, info = _solve_fast(prob, rho, ray)
            res = _finish(prob, rho, theta, lam, mu, info, path, certificate, t0)
        except SolverError as exc:
            if exc.status == "unbounded":  # separable data without a radius: no path helps
                raise
            failures.append((path, exc))
            continue
        if failures:
            res.info["fallback_from"] = f"solver={solver!r}: {failures[0][1]}"
        return res
    reasons = "; ".join(f"solver={path!r}: {exc}" for path, exc in failures)
    hint = "pass a finite radius= or rescale beta and X to moderate margins."
    raise SolverError(
        f"exact KLDPO: no path certified the minimax optimum ({reasons}).",
        status=failures[-1][1].status,
        hint=hint,
    )


# ---------------------------------------------------------------------------- helpers
#: A parameter ball whose diameter moves every margin by less than this (nats of log-odds)
#: makes every feasible theta optimal to within it: the tiny-ball path answers.
TINY_BALL = 1e-9


def _tiny_ball(prob: Problem) -> bool:
    """Whether the ball ``||theta|| <= radius`` is so small that every margin varies by less
    than :data:`TINY_BALL` over it (``2 radius beta max|x| < TINY_BALL``): the robust value,
    1-Lipschitz in the sup norm of the losses, then varies by less too, so any feasible theta
    is optimal to that accuracy, far inside the certificate's tolerance. Newton on the dual
    cannot resolve such a problem (the worst case's multiplier is of the order of the margins,
    e.g. 1e-14 for ``radius=1e-14``)."""
    return prob.radius is not None and 2.0 * prob.radius * prob.beta * prob.x_abs_max < TINY_BALL


def _tiny_ball_point(prob: Problem, rho, solver, cvxpy_solver):
    """``(theta, lam, mu, info, path)`` of the tiny-ball path: theta is the DPO optimum over
    the ball (or theta_ref projected, if that solve fails), lam the exact multiplier at theta
    (:func:`.kl_tilt.kl_lambda_for_theta`), mu the worst case when lam = 0; the answer is then
    certified by :func:`_finish` like any other."""
    try:
        theta, info = _dpo_point(prob, solver, cvxpy_solver)
    except SolverError:
        theta, info = prob.feasible_ref(), {}
    theta = project_ball(theta, prob.radius)
    l = dpo_loss(prob.margins(theta))
    p = prob.data.weights
    lam = kl_lambda_for_theta(l, p, rho)
    mu = None
    if lam == 0:
        top = (p > 0) & (l >= l[p > 0].max() - 1e-14 * max(1.0, float(np.abs(l).max())))
        mu = np.where(top, p, 0.0) / p[top].sum()
    info.update(
        path="tiny ball",
        note=(
            f"the ball radius {prob.radius:.3g} moves every margin by less than {TINY_BALL:g}: "
            "every feasible theta is optimal to that accuracy; theta is the DPO optimum over "
            "the ball."
        ),
    )
    return theta, lam, mu, info, solver


def _split(prob: Problem):
    """Informative rows ``(X_k, c_k, p_k)`` and the mass ``p0`` of rows with x = 0."""
    keep, pk, p0 = _informative(prob)
    return keep, prob.dense_rows(keep), prob.c[keep], pk, p0


def _informative(prob: Problem):
    """``(keep, p_k, p0)``: the informative-row mask, their weights, and the mass of rows with
    x = 0 (no copy of X)."""
    w = prob.data.weights
    keep = prob.informative
    return keep, w[keep], float(w[(w > 0) & ~keep].sum())


def _at_reference(prob, theta) -> bool:
    """Whether ``theta`` is ``theta_ref`` (to 1e-9 relative): the collapse regime."""
    return bool(np.linalg.norm(theta - prob.tref) <= 1e-9 * (1 + np.linalg.norm(prob.tref)))


def _dpo_point(prob, solver, cvxpy_solver):
    """``(theta, info)``: the DPO optimum (rho = 0) by the requested path."""
    if solver == "cvxpy":
        res = dpo(
            prob.data,
            beta=prob.beta,
            theta_ref=prob.tref,
            radius=prob.radius,
            cvxpy_solver=cvxpy_solver,
        )
        return res.theta, dict(res.info)
    from .wasserstein import w1_newton

    return w1_newton(prob, 0.0)


def _rho_zero(prob, solver, cvxpy_solver, t0) -> ExactResult:
    theta, info = _dpo_point(prob, solver, cvxpy_solver)
    m = prob.margins(theta)
    value = float(prob.data.weights @ dpo_loss(m))
    A = prob.rows.scaled(prob.c)  # rows c_i x_i, not materialised
    lower = cert.dpo_lower_bound(
        A, prob.data.weights, theta, theta_ref=prob.tref, radius=prob.radius, margins=m
    )
    opt_gap = certify_optimal(value, lower, tol=OPTIMALITY_TOL, what="exact KLDPO (rho = 0)")
    info.update(
        seconds=time.perf_counter() - t0, solver=solver, lower_bound=lower, passes=prob.rows.passes
    )
    return ExactResult(
        theta=theta,
        value=value,
        status=STATUS_OPTIMAL,
        method="kldpo",
        dual=float("inf"),
        worst_case=prob.data.weights.copy(),
        gap=0.0,  # the KL ball of radius 0 is {p}: the primal value is E_p l = value
        optimality_gap=opt_gap,
        info=info,
        regime=REGIME_DPO,
    )


def _small_radius(prob, rho, solver, cvxpy_solver, t0) -> ExactResult:
    """KLDPO for ``0 < rho < TINY_RHO`` (docs/theory.md#kl-small-radius): theta is the DPO
    optimum, the value and the worst case come from the centred expansions of
    :func:`rdpo_theory.divergences.kl.kl_small_radius_bounds`, and the optimality gap is
    certified against the weak-duality bound ``min_theta E_q l`` at that feasible worst case
    ``q``."""
    theta, info = _dpo_point(prob, solver, cvxpy_solver)
    w = prob.data.weights
    m = prob.margins(theta)
    l = dpo_loss(m)
    keep, pk, p0 = _informative(prob)
    zero = (w > 0) & ~keep  # rows with x = 0 (loss log 2): one atom of mass p0
    ll, pp = with_zero_atom(l[keep], pk, p0)
    b = kl_small_radius_bounds(ll, pp / pp.sum(), rho)
    q = np.zeros_like(w)
    q[keep] = b["q"][: int(keep.sum())]
    if p0 > 0:
        q[zero] = b["q"][-1] * w[zero] / p0
    A = prob.rows.scaled(prob.c)
    lower = cert.dpo_lower_bound(A, q, theta, theta_ref=prob.tref, radius=prob.radius, margins=m)
    value = b["dual"]
    opt_gap = certify_optimal(
        value, lower, tol=OPTIMALITY_TOL, what=f"exact KLDPO ({solver}, small radius)"
    )
    collapsed = _at_reference(prob, theta)
    info.update(
        seconds=time.perf_counter() - t0,
        solver=solver,
        path="small radius",
        certificate=cert.SMALL,
        lower_bound=lower,
        primal_value=b["primal"],
        passes=prob.rows.passes,
        collapsed_to_theta_ref=collapsed,
        on_boundary=on_boundary(theta, prob.radius),
        kl_worst_case=b["kl"],
        note=(
            f"rho = {rho:.3g} is below the Newton path's float64 resolution ({TINY_RHO:g}): "
            "theta is the DPO optimum (within O(sqrt(rho)) of the KLDPO one), value and "
            "worst case are the centred small-radius expansions (docs/theory.md#kl-small-radius)."
        ),
    )
    return ExactResult(
        theta=theta,
        value=value,
        status=STATUS_OPTIMAL,
        method="kldpo",
        dual=b["lam"],
        worst_case=q / q.sum(),
        gap=value - b["primal"],
        optimality_gap=opt_gap,
        info=info,
        regime=REGIME_COLLAPSE if collapsed else REGIME_INTERIOR,
    )


def _newton(
    prob, Xk, ck, pk, p0, rho, theta0, lam0, *, floor_rel=1e-10, hessian=None, keep_hessian=False
):
    m0 = ck * as_rows(Xk).matvec(theta0 - prob.tref)
    scale = 1.0 + float(np.max(dpo_loss(m0)))
    obj = fast.KLDual(Xk, ck, pk, rho, prob.tref, p0=p0, lam_floor=floor_rel * scale)
    th, ex, st, info = fast.damped_newton(
        obj,
        theta0,
        [lam0],
        radius=prob.radius,
        hessian=hessian,
        state=obj.state(theta0, [lam0], m=m0),
        keep_hessian=keep_hessian,
    )
    info["hit_lam_floor"] = bool(ex[0] <= obj.lam_floor)
    info["scale"] = scale
    return th, float(ex[0]), info


def _start_lambda(prob, Xk, ck, pk, p0, rho, theta) -> float:
    l = dpo_loss(ck * as_rows(Xk).matvec(theta - prob.tref))
    lam = kl_lambda_for_theta(l, pk, rho, p0=p0)
    return lam if lam > 0 else max(1e-3, float(np.ptp(l)) + 1e-3)


def _descent_start(prob, Xk, ck, pk) -> np.ndarray:
    """A point near theta_ref along the DPO descent direction with margins of order one."""
    g = as_rows(Xk).rmatvec(pk * ck * -0.5)  # DPO gradient at theta_ref
    ng = float(np.linalg.norm(g))
    th = prob.feasible_ref()
    if ng == 0:
        return th
    u = -g / ng
    s = float(np.sqrt(pk @ (ck * as_rows(Xk).matvec(u)) ** 2))
    th = th + (1.0 / s if s > 0 else 1.0) * u
    return project_ball(th, prob.radius)


def _ray_start(prob, X, c, p, rho, w, p0=0.0):
    """``(theta, lam, F)`` minimising the KL dual along the ray ``(theta_ref - 2 s w, s)``,
    ``s > 0``, out of the degenerate corner ``(theta_ref, 0)`` (see
    :func:`.fast.kl_collapse_threshold`), or None. Starting there keeps Newton in the sublevel
    set ``F < log 2``, away from the corner, where Newton steps degenerate along rays towards
    it (the dual is a perspective, linear along rays through the corner)."""
    if w is None or not np.any(w):
        return None
    v = -2.0 * np.asarray(w, dtype=float)
    base = prob.tref
    mv = c * as_rows(X).matvec(v)
    pos = p > 0
    logp = np.log(p[pos])
    mv = mv[pos]
    if p0 > 0:  # the aggregated x = 0 rows: one atom of constant loss log 2
        logp, mv = np.append(logp, np.log(p0)), np.append(mv, 0.0)

    def F(s):
        if not s > 0:
            return LOG2
        a = dpo_loss(s * mv) / s + logp
        M = float(a.max())
        return s * rho + s * (M + float(np.log(np.exp(a - M).sum())))

    s = fast.convex_line_min(F, fast.ray_limit(base, v, prob.radius), s0=0.25, xtol=1e-6)
    if not s > 0:
        return None
    return base + s * v, s, F(s)


def _starts(prob, X, c, p, rho, ray, p0=0.0):
    """Newton starts ``(theta, lam, which)``, the lower dual value first: the descent start
    and, when the collapse test gave a ray, the ray start (with the multiplier that is optimal
    at its theta: the ray's own lam, its length, can be tiny when it meets the ball early)."""
    th0 = _descent_start(prob, X, c, p)
    lam0 = _start_lambda(prob, X, c, p, p0, rho, th0)
    obj = fast.KLDual(X, c, p, rho, prob.tref, p0=p0)
    out = [(obj.state(th0, [lam0]).f, th0, lam0, "descent")]
    alt = _ray_start(prob, X, c, p, rho, ray, p0)
    if alt is not None:
        lam_r = _start_lambda(prob, X, c, p, p0, rho, alt[0])
        f_r = min(alt[2], obj.state(alt[0], [lam_r]).f)
        out.append((f_r, alt[0], lam_r, "ray"))
    out.sort(key=lambda s: s[0])
    return [s[1:] for s in out]


def _best_start(prob, X, c, p, rho, ray, p0=0.0):
    """The lower of the descent start and the ray start: ``(theta, lam, which)``."""
    return _starts(prob, X, c, p, rho, ray, p0)[0]


def _collapse(prob: Problem, rho: float):
    """``((theta_ref, 0, q, info), None)`` when theta_ref is certified optimal, else
    ``(None, w)`` with ``w`` the ray direction of :func:`_ray_start` (None if not computed)."""
    inside = prob.radius is None or np.linalg.norm(prob.tref) < prob.radius * (1 - 1e-9)
    if not inside:
        return None, None
    data = prob.data
    ok, bound, q, w = fast.kl_collapse_threshold(
        prob.rows, prob.c, data.weights, rho=rho, direction=True
    )
    if not ok:
        return None, w
    info = {"collapse_certified": True, "rho_threshold": bound, "solver": "collapse test"}
    return (prob.tref.copy(), 0.0, q, info), None


# ---------------------------------------------------------------------------- cvxpy path
def _solve_cvxpy(prob: Problem, rho: float, cvxpy_solver: str, ray=None):
    keep, Xk, ck, pk, p0 = _split(prob)
    info: dict = {"solver": "cvxpy", "cvxpy_solver": cvxpy_solver}
    if not keep.any():
        return _all_constant(prob, info)
    A = ck[:, None] * Xk  # separable data without a radius were refused by kldpo
    d = prob.data.d
    # theta = phi / rs with rs the largest row norm: margins are O(1) in phi whatever the
    # scales of X and beta (Clarabel's tolerances are absolute)
    rs = float(np.linalg.norm(A, axis=1).max())
    phi = cp.Variable(d, name="phi")
    lam = cp.Variable(nonneg=True, name="lam")
    t = cp.Variable(name="t")
    u = cp.Variable(Xk.shape[0], name="u")
    v = cp.Variable(Xk.shape[0], name="v")
    m = (A / rs) @ phi - A @ prob.tref
    cons = [u >= cp.logistic(-m), cp.constraints.ExpCone(u - t, lam * np.ones(Xk.shape[0]), v)]
    budget = pk @ v
    if p0 > 0:
        v0 = cp.Variable(name="v0")
        cons.append(cp.constraints.ExpCone(np.log(2.0) - t, lam, v0))
        budget = budget + p0 * v0
    cons.append(budget <= lam)
    if prob.radius is not None:
        cons.append(cp.norm(phi, 2) <= prob.radius * rs)
    conic_error = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # 'inaccurate' is handled below
            status = solve_problem(
                cp.Problem(cp.Minimize(t + rho * lam), cons),
                what="exact KLDPO (exponential cone)",
                cvxpy_solver=cvxpy_solver,
            )
        info["conic_status"] = status
    except SolverError as exc:
        conic_error = exc
        info["conic_status"] = exc.status
    scale = (
        1.0
        + float(np.log(2.0))
        + float(np.abs(A).sum(axis=1).max()) * (2 * (prob.radius or 0) + np.linalg.norm(prob.tref))
    )
    theta_value = None if phi.value is None else np.asarray(phi.value, dtype=float) / rs
    if conic_error is None and lam.value is not None and float(lam.value) > 1e-6 * scale:
        th0 = project_ball(theta_value, prob.radius)
        th, lm, ninfo = _newton(prob, Xk, ck, pk, p0, rho, th0, float(lam.value))
        info["newton"] = ninfo
        if ninfo["converged"] and lm > SMALL_LAM * scale:
            return th, lm, None, info
    limit = _max_loss_limit(prob, Xk, ck, pk, p0, rho, cvxpy_solver)
    info.update(limit["info"])
    if limit["holds"]:
        return limit["theta"], 0.0, limit["mu"], info
    # lam* is small but positive: Newton from the best available point
    starts = []
    if theta_value is not None and np.all(np.isfinite(theta_value)):
        th0 = project_ball(theta_value, prob.radius)
        starts.append((th0, _start_lambda(prob, Xk, ck, pk, p0, rho, th0), "conic"))
    starts.extend(_starts(prob, Xk, ck, pk, rho, ray, p0))
    for th0, lam0, which in starts:
        th, lm, ninfo = _newton(prob, Xk, ck, pk, p0, rho, th0, lam0, floor_rel=0.0)
        info["newton"], info["newton_start"] = ninfo, which
        if ninfo["converged"] and lm > 0:
            return th, lm, None, info
    raise SolverError(
        "exact KLDPO: neither the conic program nor Newton certified an optimum.",
        status=str(info.get("conic_status")),
        hint="pass a finite radius=, rescale beta, or try solver='fast'.",
    )


def _all_constant(prob, info):
    """Every loss is log 2 whatever theta: theta_ref (projected) is optimal, value log 2."""
    th = prob.feasible_ref()
    mu = prob.data.weights.copy()
    info.update(all_losses_constant=True, rho_threshold=0.0)
    return th, 0.0, mu, info


# ---------------------------------------------------------------------------- fast path
def _solve_fast(prob: Problem, rho: float, ray=None):
    data = prob.data
    X, c, p = prob.rows, prob.c, data.weights
    info: dict = {"solver": "fast"}
    if not np.any(p[np.flatnonzero(p > 0)] > 0):  # pragma: no cover - weights sum to 1
        raise SolverError("no positive weights", status="invalid")
    sub = fast.warm_start_subsample(data.n, data.d)
    H0 = None
    if sub is not None:
        ps = p[sub] / p[sub].sum() if p[sub].sum() > 0 else np.full(sub.shape[0], 1 / sub.size)
        Xs, cs = X.subset(sub), c[sub]
        th0, lam0, which = _best_start(prob, Xs, cs, ps, rho, ray)
        th0, lam0, winfo = _newton(prob, Xs, cs, ps, 0.0, rho, th0, lam0, keep_hessian=True)
        H_sub = winfo.pop("hessian")
        info["warm_start"] = {
            "rows": int(sub.size),
            "iterations": winfo["iterations"],
            "start": which,
        }
        if not lam0 > 0 or winfo["hit_lam_floor"]:
            lam0 = _start_lambda(prob, X, c, p, 0.0, rho, th0)
        elif fast.hessian_free(prob.data.d, prob.radius):
            pass  # Newton-CG on the full data: no d x d Hessian to reuse
        elif winfo["converged"] and H_sub is not None:
            # the subsample's last exact Hessian (at its last iterate, next to its optimum:
            # the final steps are tiny) drives chord steps on the full data, no extra pass
            H0 = H_sub
        else:
            sobj = fast.KLDual(Xs, cs, ps, rho, prob.tref)
            H0 = sobj.derivs(sobj.state(th0, [lam0]))[1]
        starts = [(th0, lam0, "subsample")]
    else:
        starts = _starts(prob, X, c, p, rho, ray)
    runs = []
    for th0, lam0, which in starts:
        th, lm, ninfo = _newton(prob, X, c, p, 0.0, rho, th0, lam0, hessian=H0)
        info["newton"], info["start"] = ninfo, which
        if ninfo["converged"] and lm > SMALL_LAM * ninfo["scale"]:
            return th, lm, None, info
        runs.append((th, lm, ninfo, which))
    # no run converged with a clearly positive lam: prefer a converged one for the end game
    th, lm, ninfo, which = next((r for r in runs if r[2]["converged"]), runs[0])
    info["newton"], info["start"] = ninfo, which
    keep, Xk, ck, pk, p0 = _split(prob)
    if not keep.any():
        return _all_constant(prob, info)
    limit = _max_loss_limit(prob, Xk, ck, pk, p0, rho, "CLARABEL")
    info.update(limit["info"])
    if limit["holds"]:
        return limit["theta"], 0.0, limit["mu"], info
    if ninfo["converged"] and lm > 0:
        return th, lm, None, info
    fast.require_converged(ninfo, "exact KLDPO (fast)")
    raise SolverError(
        "exact KLDPO (fast): the multiplier went to 0 but the max-loss limit does not hold.",
        status="lam_to_zero",
        hint="use solver='cvxpy'.",
    )


# ---------------------------------------------------------------------------- lam* = 0
def _max_loss_limit(prob, Xk, ck, pk, p0, rho, cvxpy_solver) -> dict:
    """Solve ``min_theta max_i l_i`` and test the saddle condition ``KL(mu || p) <= rho``.

    ``max_i l_i = softplus(-min_i m_i)``, so the limit is the max-margin program
    ``max t`` s.t. ``m_i(theta) >= t`` (and ``t <= 0`` when x = 0 rows carry mass), solved with
    rows scaled to unit norm (every tolerance below is then relative to the data's scale). The
    saddle distribution minimises ``KL(mu || p)`` over distributions on the active set with
    ``sum_i mu_i a_i`` parallel to ``theta`` (``nu >= 0``, only when the ball constraint is
    active; zero inside the ball): the stationarity of ``theta`` for ``E_mu l``.

    The returned ``theta`` is only accurate to the conic solver's tolerance, so exact
    stationarity at it can be infeasible when fewer than d rows are active. The active set is
    therefore the rows within a relative tolerance of the minimal margin together with the rows
    that carry the max-margin program's own multipliers, and the stationarity holds up to the
    residual those multipliers attain (a feasible point of the saddle program by construction).
    The answer is certified afterwards by the optimality gap, not by this test.
    """
    A = ck[:, None] * Xk
    scale = float(np.linalg.norm(A, axis=1).max())
    As = A / scale
    d = prob.data.d
    tref = prob.tref
    ref_ok = prob.radius is None or np.linalg.norm(tref) <= prob.radius
    # theta = M phi with M the parameter's own scale, so that the program is O(1) whatever
    # the scales of X, beta and the radius
    M = max(prob.radius or 0.0, float(np.linalg.norm(tref)))
    M = M if M > 0 and np.isfinite(M) else 1.0
    phi = cp.Variable(d)
    t = cp.Variable()
    margin = As @ phi - As @ (tref / M) >= t
    cons = [margin]
    if p0 > 0:
        cons.append(t <= 0)
    if prob.radius is not None:
        ball = cp.norm(phi, 2) <= prob.radius / M
        cons.append(ball)
    solve_problem(
        cp.Problem(cp.Maximize(t), cons), what="KLDPO max-loss limit", cvxpy_solver=cvxpy_solver
    )
    th = M * np.asarray(phi.value, dtype=float)
    size = M * 3.0  # the margins' scale (unit rows): M (1 + radius / M + ||theta_ref|| / M)
    dual = None
    boundary = False
    if ref_ok and M * float(t.value) <= 1e-9 * size:
        th = tref.copy()  # theta_ref attains margin 0 for every row
    else:
        if margin.dual_value is not None:
            dual = np.clip(np.asarray(margin.dual_value, dtype=float), 0.0, None)
        if prob.radius is not None:
            # the ball is active when its multiplier is positive (the interior-point iterate
            # may stop a relative 1e-6 inside the sphere): put theta on the sphere
            ball_dual = (
                float(np.asarray(ball.dual_value).ravel()[0])
                if ball.dual_value is not None
                else 0.0
            )
            boundary = on_boundary(th, prob.radius) or ball_dual > 1e-9
            if boundary:
                th = th * (prob.radius / np.linalg.norm(th))
    th = project_ball(th, prob.radius)
    m = As @ (th - tref)
    tstar = min(float(m.min()), 0.0) if p0 > 0 else float(m.min())
    tol = 1e-7 * size
    S = m <= tstar + tol
    if dual is not None and dual.sum() > 0:
        S |= dual > 1e-6 * dual.sum()
    use0 = p0 > 0 and tstar >= -tol
    boundary = boundary or on_boundary(th, prob.radius)
    u = th / np.linalg.norm(th) if boundary else np.zeros(d)
    # the stationarity residual the max-margin multipliers attain on S (a feasible point)
    eps = 1e-9
    if dual is not None and dual[S].sum() > 0:
        md = dual[S] / dual[S].sum()
        g = As[S].T @ md
        eps = max(eps, 2.0 * float(np.linalg.norm(g - max(float(g @ u), 0.0) * u)))
    mu = cp.Variable(int(S.sum()), nonneg=True)
    kl = cp.sum(cp.rel_entr(mu, pk[S]))
    total = cp.sum(mu)
    if use0:
        mu0 = cp.Variable(nonneg=True)
        kl = kl + cp.rel_entr(mu0, p0)
        total = total + mu0
    stat = As[S].T @ mu
    mcons = [total == 1]
    if boundary:
        nu = cp.Variable(nonneg=True)
        mcons.append(cp.norm(stat - nu * u, 2) <= eps)
    else:
        mcons.append(cp.norm(stat, 2) <= eps)
    kp = cp.Problem(cp.Minimize(kl), mcons)
    info = {"max_margin": tstar * scale, "argmax_rows": int(S.sum()) + int(use0)}
    try:
        solve_problem(kp, what="KLDPO saddle distribution", cvxpy_solver=cvxpy_solver)
    except SolverError as exc:
        info["saddle_status"] = exc.status
        return {"holds": False, "info": info}
    kl_min = float(kp.value)
    info["rho_threshold"] = kl_min
    if kl_min > rho * (1 + 1e-9) + 1e-12:
        return {"holds": False, "info": info}
    full = np.zeros(prob.data.n)
    keep = prob.informative
    mk = np.zeros(Xk.shape[0])
    mk[S] = np.clip(np.asarray(mu.value, dtype=float), 0.0, None)
    full[keep] = mk
    if use0:
        zero = (prob.data.weights > 0) & ~keep
        full[zero] = float(mu0.value) * prob.data.weights[zero] / p0
    full /= full.sum()
    return {"holds": True, "theta": th, "mu": full, "info": info}


# ---------------------------------------------------------------------------- result
def _finish(prob, rho, theta, lam, mu, info, solver, certificate, t0) -> ExactResult:
    data = prob.data
    p = data.weights
    m = prob.margins(theta)
    l = dpo_loss(m)
    pos = p > 0
    if lam > 0:
        obj = fast.KLDual(prob.rows, prob.c, p, rho, prob.tref)
        st = obj.state(theta, [lam], m=m)
        value = float(st.f)
        q = np.where(pos, st.q, 0.0)
        regime = REGIME_INTERIOR
    else:
        value = float(l[pos].max())
        q = mu
        regime = REGIME_MAX_LOSS
    keep, pk, p0 = _informative(prob)
    primal, cinfo = cert.kl_primal_certificate(
        l[keep], pk, rho, p0=p0, method=certificate, hint=lam if lam > 0 else None
    )
    info.update(cinfo)
    # optimality: value (an upper bound of the robust objective at theta, hence of the minimax
    # value) minus a weak-duality lower bound of the minimax value (docs/theory.md#optimality-gap)
    lower = cert.kl_minimax_lower_bound(
        prob.rows.scaled(prob.c),
        p,
        rho,
        theta,
        [q / q.sum()],
        theta_ref=prob.tref,
        radius=prob.radius,
        margins=m,
        enough=value - 1e-3 * OPTIMALITY_TOL * (1.0 + abs(value)),
        hint=lam if lam > 0 else None,
    )
    opt_gap = certify_optimal(value, lower, tol=OPTIMALITY_TOL, what=f"exact KLDPO ({solver})")
    info["lower_bound"] = lower
    collapsed = _at_reference(prob, theta)
    info.update(
        seconds=time.perf_counter() - t0,
        passes=prob.rows.passes,
        primal_value=primal,
        collapsed_to_theta_ref=collapsed,
        on_boundary=on_boundary(theta, prob.radius),
        kl_worst_case=cert.kl_divergence(q / q.sum(), p),
    )
    if collapsed:
        regime = REGIME_COLLAPSE
        info["note"] = (
            "theta = theta_ref: every loss is log 2 there, so the adversary gains nothing "
            "(the KL-DRO collapse at large rho; correct, not a failure)."
        )
    return ExactResult(
        theta=theta,
        value=value,
        status=STATUS_OPTIMAL,
        method="kldpo",
        dual=float(lam),
        worst_case=q / q.sum(),
        gap=value - primal,
        optimality_gap=opt_gap,
        info=info,
        regime=regime,
    )
