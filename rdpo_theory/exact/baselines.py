"""Exact convex programs for the baseline preference objectives (THEORY.md section 6).

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

import cvxpy as cp
import numpy as np

from .. import _validate as V
from .. import losses as L
from ..data import as_data
from ..errors import InputError, SolverError
from .ball import project_ball
from .dpo import informative_rows, recession_direction
from .problem import prepare
from .result import ExactResult, solve_problem
from .status import (
    REGIME_COLLAPSE,
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
        self.theta = cp.Variable(d.d, name="theta")
        self.m = self.A @ self.theta - self.A @ self.tref

    def constraints(self):
        return [cp.norm(self.theta, 2) <= self.radius] if self.bounded else []

    def margins(self, theta) -> np.ndarray:
        d = self.data
        return L.margins(theta, d.X, d.y, beta=self.beta, theta_ref=self.tref)

    def trivial(self) -> bool:
        return not self.keep.any()

    def ref_theta(self) -> np.ndarray:
        return project_ball(self.tref, self.radius)

    def check_separable(self, what):
        if not self.bounded and recession_direction(self.A) is not None:
            raise SolverError(
                f"{what}: the data are separable, so the unconstrained minimiser is at infinity.",
                status="unbounded",
                hint="pass a finite radius= (the parameter bound B).",
            )

    def solve(self, problem, what):
        t0 = time.perf_counter()
        solve_problem(problem, what=what, cvxpy_solver=self.cvxpy_solver)
        th = np.asarray(self.theta.value, dtype=float)
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
def cdpo(
    X,
    y=None,
    *,
    eps: float,
    beta: float,
    weights=None,
    theta_ref=None,
    radius=None,
    solver: str = "cvxpy",
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
    solver : {"cvxpy"}
        The solution path; the baselines have only the conic program (``"fast"`` raises
        InputError).
    cvxpy_solver : str, keyword-only
        Conic backend, one of ``cvxpy.installed_solvers()`` (default Clarabel).

    Returns
    -------
    ExactResult
        ``value`` = the weighted cDPO risk at theta (nats).
    """
    eps = L.check_eps(eps, method="cdpo")
    s = _Setup(X, y, weights, beta, theta_ref, radius, solver, cvxpy_solver, "cdpo")
    if s.trivial():
        return _trivial_result(s, "cdpo", LOG2, REGIME_NOMINAL)
    if eps == 0:
        s.check_separable("exact cDPO")
    obj = s.p @ ((1 - eps) * cp.logistic(-s.m) + eps * cp.logistic(s.m)) + s.tie_mass * LOG2
    th, status, info = s.solve(cp.Problem(cp.Minimize(obj), s.constraints()), "exact cDPO")
    value = float(s.data.weights @ L.cdpo_loss(s.margins(th), eps=eps))
    return ExactResult(
        theta=th, value=value, status=status, method="cdpo", info=info, regime=REGIME_NOMINAL
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


def rdpo(
    X,
    y=None,
    *,
    eps: float,
    beta: float,
    weights=None,
    theta_ref=None,
    radius=None,
    solver: str = "cvxpy",
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
    eps = L.check_eps(eps, method="rdpo")
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
    return ExactResult(
        theta=th, value=value, status=status, method="rdpo", info=info, regime=REGIME_NOMINAL
    )


# ---------------------------------------------------------------------------- IPO
def ipo(
    X,
    y=None,
    *,
    beta: float,
    weights=None,
    theta_ref=None,
    radius=None,
    solver: str = "cvxpy",
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
def group_dpo(
    X,
    y=None,
    groups=None,
    *,
    beta: float,
    weights=None,
    theta_ref=None,
    radius=None,
    solver: str = "cvxpy",
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
    per = L.dpo_loss(s.margins(th))
    _, Lg = L.group_losses(per, idx, weights=d.weights)
    value = float(Lg.max())
    q = alpha[idx] * d.weights / mass[idx]
    info.update(group_weights=alpha, group_labels=labels, group_losses=Lg)
    return ExactResult(
        theta=th,
        value=value,
        status=status,
        method="gdpo",
        worst_case=q,
        gap=value - float(alpha @ Lg),
        info=info,
        regime=_robust_regime(s, th),
    )


# ---------------------------------------------------------------------------- chi2 / CVaR
def collapse_certificate(X, y=None, *, kind: str, param: float, beta: float, weights=None) -> float:
    """Is ``theta = theta_ref`` optimal for chi-square (``kind="chi2"``, ``param = rho``) or CVaR
    (``kind="cvar"``, ``param = level``) DPO?

    At ``theta_ref`` every loss is log 2 and the robust objective's directional derivative along
    v is ``(1/2) sup_q E_q[-a . v]`` with ``a_i = sy_i beta x_i``. By minimax it is >= 0 for every
    v exactly when some q in the ball has ``sum_i q_i a_i = 0``. This returns the smallest ball
    size reaching such a q: ``min D(q || p)`` (chi2) or ``1 / min max_i q_i / p_i`` (CVaR, a level),
    so theta_ref is optimal iff the return value is ``<= rho`` (chi2) or ``>= level`` (CVaR).
    Returns inf (chi2) or 0 (CVaR) when no law on the support balances the margins.
    """
    d = as_data(X) if y is None and weights is None else as_data(X, y, weights)
    beta = L.check_beta(beta)
    keep = d.weights > 0
    A = d.signed_labels[keep, None] * beta * d.X[keep]
    p = d.weights[keep]
    q = cp.Variable(p.shape[0], nonneg=True)
    cons = [cp.sum(q) == 1, A.T @ q == 0]
    if kind == "chi2":
        prob = cp.Problem(cp.Minimize(0.5 * cp.sum(cp.multiply(1 / p, cp.square(q - p)))), cons)
    elif kind == "cvar":
        t = cp.Variable()
        prob = cp.Problem(cp.Minimize(t), cons + [q <= t * p])
    else:
        raise InputError(f"kind must be 'chi2' or 'cvar', got {kind!r}")
    prob.solve(solver="CLARABEL")
    if prob.status == cp.INFEASIBLE:
        return float("inf") if kind == "chi2" else 0.0
    if prob.status != cp.OPTIMAL:
        raise SolverError("collapse certificate: solver did not finish", status=str(prob.status))
    return float(prob.value) if kind == "chi2" else 1.0 / float(prob.value)


def _dual_program(s: _Setup, kind: str, param: float, what: str):
    """Solve ``min eta + penalty(v)`` with ``v >= l(theta) - eta, v >= 0``; on an inaccurate
    solve check whether theta_ref is certified optimal (the collapse regime)."""
    u = cp.Variable(s.A.shape[0], name="u")
    eta = cp.Variable(name="eta")
    v = cp.Variable(s.A.shape[0], nonneg=True, name="v")
    vt = cp.pos(LOG2 - eta)  # the aggregated tie rows (constant loss log 2)
    if kind == "chi2":
        pen = cp.norm(cp.hstack([cp.multiply(np.sqrt(s.p), v), np.sqrt(s.tie_mass) * vt]), 2)
        obj = eta + np.sqrt(1 + 2 * param) * pen
    else:
        obj = eta + (s.p @ v + s.tie_mass * vt) / param
    cons = s.constraints() + [u >= cp.logistic(-s.m), v >= u - eta]
    try:
        th, status, info = s.solve(cp.Problem(cp.Minimize(obj), cons), what)
        return th, status, info, float(eta.value)
    except SolverError as err:
        inside = not s.bounded or np.linalg.norm(s.tref) <= s.radius
        size = collapse_certificate(s.data, kind=kind, param=param, beta=s.beta)
        if inside and (size <= param * (1 + 1e-9) if kind == "chi2" else size >= param):
            info = {
                "solver": "cvxpy",
                "cvxpy_solver": s.cvxpy_solver,
                "solver_value": LOG2,
                "collapse_ball_size": size,
                "collapse_certified": True,
            }
            return s.tref.copy(), STATUS_OPTIMAL, info, LOG2
        raise err


def chi2dpo(
    X,
    y=None,
    *,
    rho: float,
    beta: float,
    weights=None,
    theta_ref=None,
    radius=None,
    solver: str = "cvxpy",
    cvxpy_solver: str = "CLARABEL",
) -> ExactResult:
    """Exact chi-square DPO via the Cressie-Read dual (Duchi and Namkoong 2021):

        min_{theta, eta}  eta + sqrt(1 + 2 rho) * sqrt( sum_i p_i (l_i(theta) - eta)_+^2 )

    which equals ``min_theta sup { E_q l : 1/2 sum_i p_i (q_i/p_i - 1)^2 <= rho }``.
    Written with ``u_i >= l_i``, ``v_i >= u_i - eta``, ``v >= 0`` and a second-order cone.

    When the solver cannot finish because ``theta_ref`` is optimal (every loss log 2, the
    adversary balances the margins: THEORY.md 3.1's collapse, here for chi-square) this is
    certified by :func:`collapse_certificate` and returned with status ``"optimal"`` and
    regime ``"collapse"`` (``info["collapse_certified"]``).

    Returns
    -------
    ExactResult
        ``value`` = the robust loss at theta computed by the exact numpy worst case
        (:func:`rdpo_theory.losses.chi2_objective`), ``dual`` = eta*, ``worst_case`` = q (n,),
        ``gap`` = solver objective minus ``value`` (>= 0 up to solver tolerance).
    """
    rho = V.positive(rho, "rho", allow_zero=True)
    s = _Setup(X, y, weights, beta, theta_ref, radius, solver, cvxpy_solver, "chi2dpo")
    return _ball_dpo(s, "chi2", rho, "chi2dpo", "exact chi-square DPO")


def cvardpo(
    X,
    y=None,
    *,
    level: float,
    beta: float,
    weights=None,
    theta_ref=None,
    radius=None,
    solver: str = "cvxpy",
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
    level = V.positive(level, "level")
    if level > 1:
        raise InputError(f"level must lie in (0, 1], got {level}")
    s = _Setup(X, y, weights, beta, theta_ref, radius, solver, cvxpy_solver, "cvardpo")
    return _ball_dpo(s, "cvar", level, "cvardpo", "exact CVaR DPO")


def _ball_dpo(s: _Setup, kind: str, param: float, method: str, what: str):
    """Shared body of :func:`chi2dpo` and :func:`cvardpo`: solve the dual program, then take
    the value and worst case ``q`` from the exact numpy best response at the returned theta."""
    if s.trivial():
        r = _trivial_result(s, method, LOG2, REGIME_COLLAPSE)
        r.worst_case = s.data.weights.copy()
        return r
    if not s.bounded:
        s.check_separable(what)
    th, status, info, eta = _dual_program(s, kind, param, what)
    per = L.dpo_loss(s.margins(th))
    if kind == "chi2":
        q = L.chi2_weights(per, rho=param, weights=s.data.weights)
    else:
        q = L.cvar_weights(per, level=param, weights=s.data.weights)
    value = float(q @ per)
    return ExactResult(
        theta=th,
        value=value,
        status=status,
        method=method,
        dual=eta,
        worst_case=q,
        gap=info["solver_value"] - value,
        info=info,
        regime=_robust_regime(s, th),
    )
