"""Exact convex programs for the baseline preference objectives (docs/theory.md#baselines).

Log-linear policies: ``m_i = sy_i beta (theta - theta_ref) . x_i`` is linear in theta, so a
loss that is convex in m gives a convex program in theta. Which baselines are convex:

* cDPO ``(1 - eps) softplus(-m) + eps softplus(m)``: convex (positive sum of convex).
* rDPO ``((1 - eps) softplus(-m) - eps softplus(m)) / (1 - 2 eps)``: although it has a negative
  coefficient, ``softplus(m) = softplus(-m) + m`` turns it into ``softplus(-m) - eps m/(1-2 eps)``,
  DPO minus a linear term, hence convex with DPO's curvature. It is unbounded below when the
  linear term wins along some direction; :func:`rdpo` detects this with an LP on the recession
  function and asks for a radius.
* IPO ``(h - 1/(2 beta))^2``: a least-squares QP.
* Group-robust DPO ``max_g L_g(theta)``: a maximum of convex functions (epigraph program).
* chi-square DRO ``min_eta eta + sqrt(1 + 2 rho) ||(l - eta)_+||_{2,p}`` and CVaR
  ``min_eta eta + E_p (l - eta)_+ / level``: jointly convex in (theta, eta).
* Dr. DPO ``-beta' log E_p exp(-l / beta')`` is a soft minimum of convex losses and is not
  convex; it has no exact program here (see ``rdpo_theory.approx_reweight.drdpo``).

Every solver drops rows with ``x = 0`` from the conic program (their losses are constants)
and adds their mass back, returns :class:`ExactResult` with ``value`` recomputed in numpy at
the returned theta, and raises :class:`SolverError` unless the solver certifies optimality.
Each takes ``solver="cvxpy"`` (the only path here; ``"fast"`` is refused with InputError) and
``cvxpy_solver=`` (the conic backend, checked before anything runs). ``regime`` is
``"nominal"`` for cDPO, rDPO and IPO, ``"interior"`` or ``"collapse"`` for the robust ones.
"""

from __future__ import annotations

import time

import numpy as np

from .. import _validate as V
from .. import divergences as D
from .. import losses as L
from ..data import as_data
from ..errors import InputError, SolverError
from ..lazy import cvxpy as cp
from ..options import NONNEGATIVE, POSITIVE, declare
from ._common import CLARABEL_RETRIES
from .ball import project_ball
from .certificates import TIGHT
from .dpo import informative_rows, recession_direction
from .optimality import logistic_lower_bound
from .problem import SOLVE_CONSTRAINTS, prepare
from .result import OPTIMALITY_TOL, ExactResult, certify_optimal, solve_problem
from .status import (
    REGIME_COLLAPSE,
    REGIME_DPO,
    REGIME_INTERIOR,
    REGIME_NOMINAL,
    STATUS_OPTIMAL,
)

LOG2 = float(np.log(2.0))
NO_FAST = " (the baselines are solved as conic programs only; there is no fast path)"


class _Setup:
    """The conic layer over the shared :class:`.problem.Problem` (validated data, beta,
    theta_ref, radius): informative rows, their margin matrix and the cvxpy variable."""

    def __init__(self, X, y, weights, beta, theta_ref, radius, solver, cvxpy_solver, method):
        # every baseline here is a conic program: "cvxpy" is its only path
        V.solver_path(solver, method=method, valid=("cvxpy",), why=NO_FAST)
        self.cvxpy_solver = V.cvxpy_solver(cvxpy_solver, method=method)
        prob = prepare(X, y, weights, beta=beta, theta_ref=theta_ref, radius=radius)
        self.problem = prob
        self.data, self.beta, self.tref, self.radius = prob.data, prob.beta, prob.tref, prob.radius
        self.bounded = prob.bounded
        d = self.data
        self.keep = informative_rows(d.X, d.weights)
        self.A = d.signed_labels[self.keep, None] * self.beta * d.X[self.keep]  # rows sy beta x
        self.p = d.weights[self.keep]
        self.tie_mass = float(d.weights[~self.keep].sum())
        # unit scale: rows A / s (s a power of two, exact), variable theta_u = s theta, so
        # Clarabel's absolute tolerances mean the same at every scale of beta and X
        amax = float(np.abs(self.A).max()) if self.A.size else 0.0
        self.s = 1.0 if not amax > 0 else float(2.0 ** np.round(np.log2(amax)))
        self.Au = self.A / self.s
        self.tref_u = self.tref * self.s
        self.radius_u = self.radius * self.s if self.bounded else None
        if not (np.all(np.isfinite(self.Au)) and np.all(np.isfinite(self.tref_u))) or (
            self.bounded and not 0 < self.radius_u < np.inf
        ):
            raise SolverError(
                f"exact baselines: the problem's scale is outside the range float64 can "
                f"represent (beta * max|x| = {amax:.3g}, ||theta_ref|| = "
                f"{float(np.linalg.norm(self.tref)):.3g}, radius = {self.radius}).",
                status="scale_out_of_range",
                hint="rescale X or beta so that beta * max|x| lies within about 1e-300..1e300.",
            )
        self.theta = cp.Variable(d.d, name="theta")  # theta_u = s theta
        self.m = self.Au @ self.theta - self.Au @ self.tref_u

    def constraints(self):
        return [cp.norm(self.theta, 2) <= self.radius_u] if self.bounded else []

    def lower_bound(self, q, *, linear=None, flipped=None, tie_loss=LOG2):
        """Certified lower bound of ``min_theta E_q l(theta) [+ linear term]`` at the last
        solution (``docs/theory.md#optimality-gap``): rows ``A`` weighted by ``q`` (over
        the informative rows), ``flipped`` weights on rows ``-A`` (label-smoothed losses),
        the tie rows' constant mass, bounded by :func:`.optimality.logistic_lower_bound`
        at unit scale. ``q`` sums to the informative rows' share; the tie rows carry
        ``1 - sum(q) - sum(flipped)``."""
        rows, w = self.Au, np.asarray(q, dtype=float)
        if flipped is not None:
            rows, w = np.vstack([self.Au, -self.Au]), np.concatenate([w, flipped])
        tie = max(0.0, 1.0 - float(w.sum()))
        b = None if linear is None else np.asarray(linear, dtype=float) / self.s
        return logistic_lower_bound(
            rows,
            w,
            self.theta_u_hat,
            theta_ref=self.tref_u,
            radius=self.radius_u,
            linear=b,
            constant=tie * tie_loss,
        )

    def margins(self, theta) -> np.ndarray:
        d = self.data
        return L.margins(theta, d.X, d.y, beta=self.beta, theta_ref=self.tref)

    def trivial(self) -> bool:
        return not self.keep.any()

    def ref_theta(self) -> np.ndarray:
        return project_ball(self.tref, self.radius)

    def set_theta(self, th) -> None:
        """Record a solution found outside :meth:`solve` (for :meth:`lower_bound`)."""
        self.theta_u_hat = np.asarray(th, dtype=float) * self.s

    def check_separable(self, what):
        if not self.bounded and recession_direction(self.A) is not None:
            raise SolverError(
                f"{what}: the data are separable, so the unconstrained minimiser is at infinity.",
                status="unbounded",
                hint="pass a finite radius= (the parameter bound B).",
            )

    def solve(self, problem, what, **options):
        t0 = time.perf_counter()
        solve_problem(problem, what=what, cvxpy_solver=self.cvxpy_solver, **options)
        thu = np.asarray(self.theta.value, dtype=float)
        if self.bounded and np.linalg.norm(thu) > self.radius_u:
            thu = thu * (self.radius_u / np.linalg.norm(thu))
        self.theta_u_hat = thu
        th = thu / self.s
        return (
            th,
            STATUS_OPTIMAL,
            {
                "solver": "cvxpy",
                "cvxpy_solver": self.cvxpy_solver,
                "seconds": time.perf_counter() - t0,
                "solver_value": float(problem.value),
            },
        )


def _trivial_result(s: _Setup, method: str, value: float, regime: str) -> ExactResult:
    return ExactResult(
        theta=s.ref_theta(),
        value=value,
        status=STATUS_OPTIMAL,
        method=method,
        info={"solver": "none (all losses constant)", "seconds": 0.0},
        regime=regime,
    )


def _robust_regime(s: _Setup, theta) -> str:
    """``"collapse"`` when ``theta = theta_ref`` (every loss log 2), else ``"interior"``."""
    tref = s.tref
    at_ref = np.linalg.norm(theta - tref) <= 1e-7 * (1 + np.linalg.norm(tref))
    return REGIME_COLLAPSE if at_ref else REGIME_INTERIOR


# ---------------------------------------------------------------------------- cDPO
@declare({**SOLVE_CONSTRAINTS, "eps": L.CDPO_EPS})
def cdpo(
    X,
    y=None,
    *,
    eps: float,
    beta: float,
    weights=None,
    theta_ref=None,
    radius=None,
    solver: str = "auto",
    cvxpy_solver: str = "CLARABEL",
) -> ExactResult:
    """Exact conservative DPO:
    ``min_theta sum_i p_i [(1 - eps) softplus(-m_i) + eps softplus(m_i)]``,
    ``||theta||_2 <= radius`` when given.

    Parameters
    ----------
    X : array_like (n, d) or PreferenceData
    y : array_like (n,), labels in {0, 1}
    eps : float in [0, 1/2]
        Label smoothing.
    beta : float > 0
    weights : array_like (n,), optional
    theta_ref : array_like (d,), optional
    radius : float, optional
    solver : {"auto", "cvxpy"}
        The solution path; the baselines have only the conic program, which ``"auto"``
        (default) picks (``"fast"`` raises InputError).
    cvxpy_solver : str, keyword-only
        Conic backend, one of ``cvxpy.installed_solvers()`` (default Clarabel).

    Returns
    -------
    ExactResult
        ``value`` = the weighted cDPO risk at theta (nats).
    """
    eps = float(eps)
    s = _Setup(X, y, weights, beta, theta_ref, radius, solver, cvxpy_solver, "cdpo")
    if s.trivial():
        return _trivial_result(s, "cdpo", LOG2, REGIME_NOMINAL)
    if eps == 0:
        s.check_separable("exact cDPO")
    obj = s.p @ ((1 - eps) * cp.logistic(-s.m) + eps * cp.logistic(s.m)) + s.tie_mass * LOG2
    th, status, info = s.solve(cp.Problem(cp.Minimize(obj), s.constraints()), "exact cDPO")
    value = float(s.data.weights @ L.cdpo_loss(s.margins(th), eps=eps))
    lower, info["optimality"] = s.lower_bound((1 - eps) * s.p, flipped=eps * s.p)
    return ExactResult(
        theta=th,
        value=value,
        status=status,
        method="cdpo",
        optimality_gap=certify_optimal(value, lower, what="exact cDPO"),
        info=info,
        regime=REGIME_NOMINAL,
    )


# ---------------------------------------------------------------------------- rDPO
def rdpo_recession(A: np.ndarray, p: np.ndarray, eps: float) -> tuple[float, np.ndarray]:
    """``min_v sum_i p_i [max(-a_i . v, 0) - c a_i . v]`` over ``||v||_inf <= 1``, with
    ``c = eps / (1 - 2 eps)``: the rDPO risk's recession function. A negative minimum means the
    risk is unbounded below along ``v``. Returns ``(value, v)``; solved as an LP by HiGHS."""
    from scipy.optimize import linprog

    # variables (v, s) with s_i >= max(-a_i . v, 0); scipy's HiGHS prints no banner on stdout
    c = eps / (1.0 - 2.0 * eps)
    n, d = A.shape
    cost = np.concatenate([-c * (p @ A), p])
    A_ub = np.hstack([-A, -np.eye(n)])
    bounds = [(-1.0, 1.0)] * d + [(0.0, None)] * n
    res = linprog(cost, A_ub=A_ub, b_ub=np.zeros(n), bounds=bounds, method="highs")
    if res.status != 0:  # pragma: no cover - a bounded feasible LP
        raise SolverError("rDPO recession LP failed", status=f"linprog status {res.status}")
    return float(res.fun), np.asarray(res.x[:d])


@declare({**SOLVE_CONSTRAINTS, "eps": L.RDPO_EPS})
def rdpo(
    X,
    y=None,
    *,
    eps: float,
    beta: float,
    weights=None,
    theta_ref=None,
    radius=None,
    solver: str = "auto",
    cvxpy_solver: str = "CLARABEL",
) -> ExactResult:
    """Exact rDPO (known flip rate ``eps < 1/2``):
    ``min_theta sum_i p_i [softplus(-m_i) - eps m_i / (1 - 2 eps)]`` (the same function as
    ``((1 - eps) softplus(-m) - eps softplus(m)) / (1 - 2 eps)``), convex in theta.

    Raises
    ------
    SolverError
        Without a radius when the risk is unbounded below (the recession LP of
        :func:`rdpo_recession` is negative): then the unconstrained rDPO minimiser does not
        exist, which happens when the assumed flip rate exceeds what the data support.
    """
    eps = float(eps)
    s = _Setup(X, y, weights, beta, theta_ref, radius, solver, cvxpy_solver, "rdpo")
    if s.trivial():
        return _trivial_result(s, "rdpo", LOG2, REGIME_NOMINAL)
    if not s.bounded:
        rec, _ = rdpo_recession(s.A, s.p, eps)
        scale = float(s.p @ np.abs(s.A).sum(axis=1))
        if rec < -1e-9 * max(scale, 1.0):
            raise SolverError(
                "exact rDPO: the risk is unbounded below without a radius: "
                f"its recession function reaches {rec:.3g} along some direction.",
                status="unbounded",
                hint="pass a finite radius= (the parameter bound B) or a smaller eps.",
            )
    c = eps / (1.0 - 2.0 * eps)
    obj = s.p @ (cp.logistic(-s.m) - c * s.m) + s.tie_mass * LOG2
    th, status, info = s.solve(cp.Problem(cp.Minimize(obj), s.constraints()), "exact rDPO")
    value = float(s.data.weights @ L.rdpo_loss(s.margins(th), eps=eps))
    # the linear part -c sum_i p_i m_i = -c (A^T p) . (theta - theta_ref)
    lower, info["optimality"] = s.lower_bound(s.p, linear=-c * (s.A.T @ s.p))
    return ExactResult(
        theta=th,
        value=value,
        status=status,
        method="rdpo",
        optimality_gap=certify_optimal(value, lower, what="exact rDPO"),
        info=info,
        regime=REGIME_NOMINAL,
    )


# ---------------------------------------------------------------------------- IPO
@declare(SOLVE_CONSTRAINTS)
def ipo(
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
    """Exact IPO: ``min_theta sum_i p_i (h_i - 1 / (2 beta))^2`` with
    ``h_i = sy_i (theta - theta_ref) . x_i`` (a QP; weighted least squares without a radius).

    ``value`` is the weighted IPO risk (squared log-ratio units). When the informative ``x_i``
    do not span R^d the minimiser is not unique; the solver returns one of them.
    """
    s = _Setup(X, y, weights, beta, theta_ref, radius, solver, cvxpy_solver, "ipo")
    const = s.tie_mass * (0.5 / s.beta) ** 2
    if s.trivial():
        return _trivial_result(s, "ipo", const, REGIME_NOMINAL)
    h = s.m / s.beta
    obj = cp.sum_squares(cp.multiply(np.sqrt(s.p), h - 0.5 / s.beta)) + const
    th, status, info = s.solve(cp.Problem(cp.Minimize(obj), s.constraints()), "exact IPO")
    value = float(s.data.weights @ L.ipo_loss(s.margins(th), beta=s.beta))
    return ExactResult(
        theta=th, value=value, status=status, method="ipo", info=info, regime=REGIME_NOMINAL
    )


# ---------------------------------------------------------------------------- group DRO
@declare(SOLVE_CONSTRAINTS)
def group_dpo(
    X,
    y=None,
    groups=None,
    *,
    beta: float,
    weights=None,
    theta_ref=None,
    radius=None,
    solver: str = "auto",
    cvxpy_solver: str = "CLARABEL",
) -> ExactResult:
    """Exact group-robust DPO (Ramesh et al. 2024) in epigraph form:

        min_{theta, t} t  s.t.  L_g(theta) = sum_{i in g} p_i softplus(-m_i) / P_g <= t  (all g).

    Parameters
    ----------
    X, y, weights, theta_ref, radius : as in :func:`rdpo_theory.exact.dpo`
    solver, cvxpy_solver : as in :func:`cdpo` (``"cvxpy"`` only)
    groups : array_like, shape (n,)
        A group label per pair (any sortable values). Every group needs positive weight.
    beta : float > 0

    Returns
    -------
    ExactResult
        ``value`` = ``max_g L_g(theta)`` recomputed in numpy; ``info["group_weights"]`` = the
        optimal adversarial group weights alpha (G,) (the constraints' duals, summing to 1),
        ``info["group_labels"]``, ``info["group_losses"]`` (G,); ``worst_case`` = the pair law
        ``q_i = alpha_g(i) p_i / P_g(i)``; ``gap`` = ``value - sum_g alpha_g L_g(theta)`` (0 at
        the saddle point).
    """
    if groups is None:
        raise InputError("groups is required: one group label per pair")
    s = _Setup(X, y, weights, beta, theta_ref, radius, solver, cvxpy_solver, "group_dpo")
    d = s.data
    labels, idx = L.group_indices(groups, d.n)
    G = labels.shape[0]
    mass = np.bincount(idx, weights=d.weights, minlength=G)
    if np.any(mass <= 0):
        raise InputError(f"groups {labels[mass <= 0].tolist()} have zero weight")
    tie = np.bincount(idx[~s.keep], weights=d.weights[~s.keep], minlength=G) / mass * LOG2
    if not s.bounded:  # every group loss then tends to 0 along a ray: no minimiser
        s.check_separable("exact group-robust DPO")
    t = cp.Variable(name="t")
    cons = s.constraints()
    if s.keep.any():
        M = np.zeros((G, int(s.keep.sum())))
        M[idx[s.keep], np.arange(M.shape[1])] = s.p / mass[idx[s.keep]]
        group_con = M @ cp.logistic(-s.m) + tie <= t
        th, status, info = s.solve(
            cp.Problem(cp.Minimize(t), cons + [group_con]), "exact group-robust DPO"
        )
        alpha = np.maximum(np.asarray(group_con.dual_value, dtype=float), 0.0)
        alpha = alpha / alpha.sum()
    else:
        th, status, info = s.ref_theta(), STATUS_OPTIMAL, {"solver": "none (all losses constant)"}
        alpha = np.full(G, 1.0 / G)
        s.set_theta(th)
    per = L.dpo_loss(s.margins(th))
    _, Lg = L.group_losses(per, idx, weights=d.weights)
    value = float(Lg.max())
    q = alpha[idx] * d.weights / mass[idx]
    info.update(group_weights=alpha, group_labels=labels, group_losses=Lg)
    # weak duality: the group mixture alpha is an adversary's choice, so
    # min_theta sum_g alpha_g L_g(theta) <= min_theta max_g L_g(theta)
    lower, info["optimality"] = s.lower_bound(q[s.keep])
    opt_gap = certify_optimal(value, lower, what="exact group-robust DPO")
    return ExactResult(
        theta=th,
        value=value,
        status=status,
        method="gdpo",
        worst_case=q,
        gap=value - float(alpha @ Lg),
        optimality_gap=opt_gap,
        info=info,
        regime=_robust_regime(s, th),
    )


# ---------------------------------------------------------------------------- divergence balls
@declare({"param": NONNEGATIVE, "beta": POSITIVE})
def collapse_certificate(X, y=None, *, kind, param: float, beta: float, weights=None) -> float:
    """Is ``theta = theta_ref`` optimal for the exact DRO-DPO over a ball: chi-square
    (``kind="chi2"``, ``param = rho``), CVaR (``kind="cvar"``, ``param = level``) or any
    :class:`~rdpo_theory.divergences.AmbiguitySet` with a collapse certificate?

    At ``theta_ref`` every loss is log 2 and the robust objective's directional derivative along
    v is ``(1/2) sup_q E_q[-a . v]`` with ``a_i = sy_i beta x_i``. By minimax it is >= 0 for every
    v exactly when some q in the ball has ``sum_i q_i a_i = 0``. This returns the smallest ball
    size reaching such a q (:meth:`~rdpo_theory.divergences.AmbiguitySet.balancing_law`):
    ``min D(q || p)`` (chi2) or ``1 / min max_i q_i / p_i`` (CVaR, a level), so theta_ref is
    optimal iff the set :meth:`~rdpo_theory.divergences.AmbiguitySet.contains` it (``<= rho``
    for chi2, ``>= level`` for CVaR). Returns inf (chi2) or 0 (CVaR) when no law on the support
    balances the margins.
    """
    d = as_data(X) if y is None and weights is None else as_data(X, y, weights)
    beta = float(beta)
    ball = _dpo_ball(kind, "kind")
    keep = d.weights > 0
    return ball.balancing_law(d.signed_labels[keep, None] * beta * d.X[keep], d.weights[keep])[0]


def _dpo_ball(divergence, name: str = "divergence") -> D.AmbiguitySet:
    """The ambiguity set of a family id or set object, refused unless it has a joint program."""
    try:
        ball = D.get(divergence)
    except (InputError, TypeError):
        ball = None
    if ball is None or not ball.dpo_method:
        raise InputError(
            f"The '{name}' parameter must be a divergence ball with an exact (theta, eta) "
            f"program ('chi2', 'cvar', ...). Got {divergence!r} instead."
        )
    return ball


def _dual_program(s: _Setup, ball: D.AmbiguitySet, param: float, what: str):
    """Solve ``min eta + penalty(v)`` with ``v >= l(theta) - eta, v >= 0``. Returns
    ``(theta, status, info, eta, q_dual)``, ``q_dual`` the multipliers of the constraints
    ``v >= u - eta`` (the saddle law on the informative rows)."""
    u = cp.Variable(s.A.shape[0], name="u")
    eta = cp.Variable(name="eta")
    v = cp.Variable(s.A.shape[0], nonneg=True, name="v")
    vt = cp.pos(LOG2 - eta)  # the aggregated tie rows (constant loss log 2)
    obj = eta + ball.dual_penalty(v, vt, s.p, s.tie_mass, param)
    tail = v >= u - eta
    cons = s.constraints() + [u >= cp.logistic(-s.m), tail]
    problem = cp.Problem(cp.Minimize(obj), cons)
    # tight tolerances first (the optimality certificate asks ~1e-6 of the value), then
    # Clarabel's defaults and the settings that break degenerate stalls
    clarabel = s.cvxpy_solver.upper() == "CLARABEL"
    attempts = (TIGHT, *CLARABEL_RETRIES) if clarabel else ({},)
    for k, options in enumerate(attempts):
        try:
            th, status, info = s.solve(problem, what, **options)
            break
        except SolverError:
            if k == len(attempts) - 1:
                raise
    qd = None if tail.dual_value is None else np.asarray(tail.dual_value, dtype=float)
    return th, status, info, float(eta.value), qd


@declare({**SOLVE_CONSTRAINTS, "rho": NONNEGATIVE})
def chi2dpo(
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
) -> ExactResult:
    """Exact chi-square DPO via the Cressie-Read dual (Duchi and Namkoong 2021):

        min_{theta, eta}  eta + sqrt(1 + 2 rho) * sqrt( sum_i p_i (l_i(theta) - eta)_+^2 )

    which equals ``min_theta sup { E_q l : 1/2 sum_i p_i (q_i/p_i - 1)^2 <= rho }``.
    Written with ``u_i >= l_i``, ``v_i >= u_i - eta``, ``v >= 0`` and a second-order cone.

    When the solver cannot finish because ``theta_ref`` is optimal (every loss log 2, the
    adversary balances the margins: the collapse of docs/theory.md#kl-regimes, here for
    chi-square) this is
    certified by :func:`collapse_certificate` and returned with status ``"optimal"`` and
    regime ``"collapse"`` (``info["collapse_certified"]``).

    Returns
    -------
    ExactResult
        ``value`` = the robust loss at theta computed by the exact numpy worst case
        (:func:`rdpo_theory.losses.chi2_objective`), ``dual`` = eta*, ``worst_case`` = q (n,),
        ``gap`` = solver objective minus ``value`` (>= 0 up to solver tolerance).
    """
    rho = float(rho)
    s = _Setup(X, y, weights, beta, theta_ref, radius, solver, cvxpy_solver, "chi2dpo")
    return _ball_dpo(s, D.ChiSquare(), rho)


@declare({**SOLVE_CONSTRAINTS, "level": L.CVAR_LEVEL})
def cvardpo(
    X,
    y=None,
    *,
    level: float,
    beta: float,
    weights=None,
    theta_ref=None,
    radius=None,
    solver: str = "auto",
    cvxpy_solver: str = "CLARABEL",
) -> ExactResult:
    """Exact CVaR DPO (Rockafellar-Uryasev):

        min_{theta, eta}  eta + (1 / level) sum_i p_i (l_i(theta) - eta)_+

    which equals ``min_theta sup { E_q l : q_i <= p_i / level }`` (the mean of the worst
    ``level`` fraction of the loss distribution). The collapse to ``theta_ref`` is certified as
    in :func:`chi2dpo`.

    Returns
    -------
    ExactResult
        ``value`` = CVaR at theta from :func:`rdpo_theory.losses.cvar_objective`, ``dual`` =
        eta* (the value at risk), ``worst_case`` = q (n,), ``gap`` = solver objective - value.
    """
    level = float(level)
    s = _Setup(X, y, weights, beta, theta_ref, radius, solver, cvxpy_solver, "cvardpo")
    return _ball_dpo(s, D.CVaR(), level)


def ball_dpo(
    X,
    y=None,
    *,
    divergence,
    rho: float,
    beta: float,
    weights=None,
    theta_ref=None,
    radius=None,
    solver: str = "cvxpy",
    cvxpy_solver: str = "CLARABEL",
) -> ExactResult:
    """Exact DRO-DPO over a divergence ball (docs/theory.md#ambiguity-sets):

        min_theta sup { E_q l(theta) : q in ball(p, rho) } = min_{theta, eta} eta + pen(l - eta)

    with the set's joint program (:meth:`~rdpo_theory.divergences.AmbiguitySet.dual_penalty`):
    chi-square (:func:`chi2dpo`), CVaR (:func:`cvardpo`, ``rho`` = the level) or any set of
    :mod:`rdpo_theory.divergences` that has one. Certified exactly as :func:`chi2dpo`.

    Parameters
    ----------
    divergence : str or AmbiguitySet
        A family id (``"chi2"``, ``"cvar"``, ...) or a set object.
    rho : float
        The ball size (the set's ``parameter``).
    beta, weights, theta_ref, radius, solver, cvxpy_solver
        As in :func:`chi2dpo`.

    Returns
    -------
    ExactResult
        As :func:`chi2dpo`; ``method`` is the set's ``dpo_method``.
    """
    ball = _dpo_ball(divergence)
    rho = ball.check(rho)
    s = _Setup(X, y, weights, beta, theta_ref, radius, solver, cvxpy_solver, ball.dpo_method)
    return _ball_dpo(s, ball, rho)


def _ball_dpo(s: _Setup, ball: D.AmbiguitySet, param: float):
    """Shared body of :func:`ball_dpo`, :func:`chi2dpo` and :func:`cvardpo`: solve the dual
    program, take the
    value and worst case ``q`` from the exact numpy best response at the returned theta, and
    certify the minimax value (``docs/theory.md#optimality-gap``) by weak duality:
    ``min_theta E_q l(theta) <= min_theta sup_ball E_Q l`` for any q in the ball (the best
    response, or the program's multipliers, the saddle law, when the best response splits
    ties differently). When the program fails or is not certified, the collapse
    ``theta = theta_ref`` is tested (the set's ``balancing_law``) and certified the same way."""
    d = s.data
    method, what = ball.dpo_method, f"exact {ball.title} DPO"
    if s.trivial():
        r = _trivial_result(s, method, LOG2, REGIME_COLLAPSE)
        r.worst_case = d.weights.copy()
        r.optimality_gap = 0.0
        return r
    if not s.bounded:
        s.check_separable(what)
    if param == ball.nominal:  # the ball is {p}: DPO exactly
        from .dpo import dpo

        res = dpo(d, beta=s.beta, theta_ref=s.tref, radius=s.radius, cvxpy_solver=s.cvxpy_solver)
        s.set_theta(res.theta)
        lower, oinfo = s.lower_bound(s.p)
        res.info["optimality"] = oinfo
        res.method, res.worst_case, res.regime, res.gap = method, d.weights.copy(), REGIME_DPO, 0.0
        res.optimality_gap = certify_optimal(res.value, lower, what=what)
        return res

    def best_response(th):
        per = L.dpo_loss(s.margins(th))
        return per, ball.best_response(per, d.weights, param)

    def certify(th, laws):
        """The best lower bound over candidate laws q (n,), and the value at th."""
        per, q = best_response(th)
        value = float(q @ per)
        best = (-np.inf, {})
        for law in [q, *laws]:
            if law is None:
                continue
            lower, oinfo = s.lower_bound(ball.into_ball(law, d.weights, param)[s.keep])
            if lower > best[0]:
                best = (lower, oinfo)
        return value, q, best

    error = found = None
    try:
        th, status, info, eta, qd = _dual_program(s, ball, param, what)
        laws = []
        if qd is not None:
            full = np.zeros(d.n)
            full[s.keep] = np.clip(qd, 0.0, None)
            full[~s.keep] = (
                d.weights[~s.keep] * max(0.0, 1.0 - full.sum()) / max(s.tie_mass, 1e-300)
            )
            laws.append(full if full.sum() > 0 else None)
        value, q, (lower, oinfo) = certify(th, laws)
        near_collapse = value >= LOG2 - OPTIMALITY_TOL * (1.0 + LOG2)
        if value - lower <= OPTIMALITY_TOL * (1.0 + abs(value)) and not near_collapse:
            info["optimality"] = oinfo
            return ExactResult(
                theta=th,
                value=value,
                status=STATUS_OPTIMAL,
                method=method,
                dual=eta,
                worst_case=q,
                gap=info["solver_value"] - value,
                optimality_gap=certify_optimal(value, lower, what=what),
                info=info,
                regime=REGIME_INTERIOR,
            )
        error = SolverError(
            f"{what}: not certified optimal (optimality gap {value - lower:.3g}).",
            status="uncertified",
            hint="rescale beta or pass a finite radius=.",
        )
        if value - lower <= OPTIMALITY_TOL * (1.0 + abs(value)):
            # certified, but within the tolerance of log 2: prefer the exact collapse below
            # when it is certified; otherwise this answer stands
            error = None
            found = ExactResult(
                theta=th,
                value=value,
                status=STATUS_OPTIMAL,
                method=method,
                dual=eta,
                worst_case=q,
                gap=info["solver_value"] - value,
                optimality_gap=certify_optimal(value, lower, what=what),
                info=info | {"optimality": oinfo},
                regime=REGIME_INTERIOR,
            )
    except SolverError as err:
        error = err
    # switch path: is theta_ref optimal (the collapse)?
    inside = not s.bounded or np.linalg.norm(s.tref) <= s.radius
    if inside:
        pos = d.weights > 0
        size, qb = ball.balancing_law(d.signed_labels[pos, None] * d.X[pos], d.weights[pos])
        if ball.contains(size, param) and qb is not None:
            th = s.tref.copy()
            s.set_theta(th)
            full = np.zeros(d.n)
            full[pos] = qb
            value, q, (lower, oinfo) = certify(th, [full])
            info = {
                "solver": "cvxpy",
                "cvxpy_solver": s.cvxpy_solver,
                "collapse_ball_size": size,
                "collapse_certified": True,
                "optimality": oinfo,
            }
            if error is not None:
                info["program_error"] = str(error)
            return ExactResult(
                theta=th,
                value=value,
                status=STATUS_OPTIMAL,
                method=method,
                dual=LOG2,
                worst_case=q,
                gap=0.0,
                optimality_gap=certify_optimal(value, lower, what=what),
                info=info,
                regime=REGIME_COLLAPSE,
            )
    if found is not None:
        return found
    raise error
