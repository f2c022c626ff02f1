"""The result object and the status handling shared by every exact solver."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import SolverError
from ..lazy import cvxpy as cp

#: cvxpy statuses accepted as a certified answer.
OK_STATUSES = ("optimal",)  # cp.OPTIMAL, without importing cvxpy


@runtime_checkable
class Result(Protocol):
    """What every fitted parameter result offers, exact or approximate (:class:`ExactResult`,
    :class:`rdpo_theory.approx.ApproxResult`), so studies read them alike, without probing
    for attributes.

    Attributes
    ----------
    theta : ndarray (d,)
        The fitted parameter.
    status : str
        How the fit ended: ``"optimal"`` (certified; every exact solver) or, for approximate
        training, ``"converged"`` (its stopping rule fired) or ``"max_steps"``.
    info : dict
        Solver or training details (timings, iterations, paths).
    value : float or None
        The objective at theta where one is computed and certified (nats), else None.
    optimality_gap : float or None
        A certified upper bound on ``value - min`` (nats, >= 0) where one exists, else None.
    """

    theta: np.ndarray
    status: str
    info: dict
    value: float | None
    optimality_gap: float | None


@dataclass
class ExactResult:
    """Answer of an exact solver (a :class:`Result`).

    Attributes
    ----------
    theta : ndarray, shape (d,)
        The minimiser.
    value : float
        The objective at ``theta`` (nats): the weighted mean loss for DPO, the robust
        (worst-case) loss for KLDPO and WDPO.
    status : str
        ``"optimal"`` (:data:`.status.STATUS_OPTIMAL`) from every solver of a convex problem:
        the answer is certified. Inaccurate, infeasible or unbounded solves raise
        :class:`~rdpo_theory.errors.SolverError` instead. Which case of the problem the
        answer is in goes in ``regime``. The solvers of problems that are not convex
        minimisations (``exact.chipo``, ``exact.winsor_dpo``) return ``"local"``
        (:data:`.status.STATUS_LOCAL`, regime ``"local"``, ``optimality_gap`` None): a local
        answer, never certified.
    method : str
    dual : float or None
        The optimal dual multiplier (lam* for KL, eta* for Wasserstein).
    worst_case : ndarray or None
        The adversary's distribution at ``theta``: a probability vector (entries >= 0, sum 1)
        over the returned support: the data pairs (KL, chi-square, CVaR, group DRO, rho = 0),
        the candidates (finite WDPO), or the shifted pairs described by ``margin_shift``
        (continuous W_p, p > 1). None when the supremum is not attained (continuous W1: mass
        escapes to infinity) and for the non-robust objectives (DPO, IPO, cDPO, rDPO).
    gap : float or None
        Certificate of the inner supremum: dual value minus an independently computed primal
        value of the adversary's problem at ``theta`` (``docs/theory.md#certificates``).
    optimality_gap : float or None
        Certificate of the minimax optimum (nats): a certified upper bound on
        ``value(theta) - min_theta max_Q E_Q l(theta)``, the certified robust value at
        ``theta`` minus a weak-duality lower bound on the minimax value
        (``docs/theory.md#optimality-gap``). ``status == "optimal"`` only when it is at most
        ``tol * (1 + |value|)`` (see :func:`certify_optimal`). ``None`` where a solver does not
        compute one.
    info : dict
        Solver name, timings and method-specific extras.
    transport_plan : ndarray or None
        WDPO with finite candidates: the optimal transport plan (n, K) at ``theta``; its column
        sums are ``worst_case``.
    regime : str
        Which case the answer is in, one of :data:`.status.REGIMES`
        (docs/theory.md#kl-regimes):

        * ``"nominal"``: DPO, IPO, cDPO, rDPO (no adversary);
        * ``"dpo"``: a robust method at rho = 0;
        * ``"interior"``: KL with lam* > 0; chi-square, CVaR, group DRO with theta away from
          theta_ref;
        * ``"max-loss"``: KL with lam* = 0 (all adversarial mass on the maximal losses);
        * ``"collapse"``: theta = theta_ref is optimal (every loss log 2);
        * ``"penalty"``: continuous W1 WDPO (DPO plus a norm penalty);
        * ``"finite"``: WDPO over finite candidates;
        * ``"shift"``: continuous W_p WDPO, p > 1 (see ``margin_shift``).
        * ``"local"``: an answer with status ``"local"`` (chi-PO, winsorised DPO).
    margin_shift : ndarray or None
        Continuous W_p WDPO with p > 1 only: the drop of each support point's margin under the
        worst case (nats of log-odds, >= 0), shape (n,) (or (2n,) when tied maximisers are
        mixed; point j is pair ``j mod n``). The pair's x moves by
        ``margin_shift / (beta ||theta - theta_ref||)`` in feature-norm units.
    """

    theta: np.ndarray
    value: float
    status: str
    method: str = "dpo"
    dual: float | None = None
    worst_case: np.ndarray | None = None
    gap: float | None = None
    optimality_gap: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    transport_plan: np.ndarray | None = None
    regime: str | None = None
    margin_shift: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly dict of the scalar fields and theta."""
        out = {
            "method": self.method,
            "status": self.status,
            "value": self.value,
            "theta": [float(t) for t in self.theta],
            "dual": self.dual,
            "gap": self.gap,
            "optimality_gap": self.optimality_gap,
        }
        if self.regime is not None:
            out["regime"] = self.regime
        for k, v in self.info.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                out[k] = v
        return out


#: Default relative tolerance of :func:`certify_optimal`.
OPTIMALITY_TOL = 1e-6


def certify_optimal(
    value: float, lower_bound: float, *, tol: float = OPTIMALITY_TOL, what: str
) -> float:
    """Certify that ``value`` is within ``tol * (1 + |value|)`` of the minimax optimum.

    ``value`` must be the certified robust objective at the returned theta (an upper bound of
    the minimax value) and ``lower_bound`` a weak-duality lower bound of the minimax value
    ``min_theta max_Q E_Q l(theta)`` (``docs/theory.md#optimality-gap``). The optimality gap
    ``value - lower_bound`` (nats) then bounds the suboptimality of theta from above.

    Parameters
    ----------
    value, lower_bound : float
        Upper and lower bounds of the minimax value (nats).
    tol : float
        Relative tolerance.
    what : str
        The solver, for the error message.

    Returns
    -------
    float
        The optimality gap ``max(value - lower_bound, 0)``: never negative. A lower bound
        slightly above the value (within the tolerance) is the float64 rounding of two
        certified numbers computed by different sums, not a better-than-optimal point, so the
        certified gap is 0 then (docs/certificates.md#rounding).

    Raises
    ------
    SolverError
        When either bound is not finite, or the gap exceeds ``tol * (1 + |value|)`` (the
        answer is not certified optimal), or the lower bound exceeds the value by more than
        the tolerance (one of the two certificates is wrong).
    """
    value, lower_bound = float(value), float(lower_bound)
    if not (np.isfinite(value) and np.isfinite(lower_bound)):
        raise SolverError(
            f"{what}: the optimality certificate is not finite (value {value!r}, lower "
            f"bound {lower_bound!r}).",
            status="uncertified",
            hint="rescale beta or X, or try the other solver.",
        )
    gap = value - lower_bound
    allowed = tol * (1.0 + abs(value))
    if gap > allowed:
        raise SolverError(
            f"{what}: not certified optimal: the value {value:.10g} exceeds the weak-duality "
            f"lower bound {lower_bound:.10g} of the minimax value by {gap:.3g} > "
            f"{allowed:.3g} (tol {tol:g} relative).",
            status="uncertified",
            hint="try the other solver= path, or a larger tolerance.",
        )
    if gap < -allowed:
        raise SolverError(
            f"{what}: inconsistent certificates: the lower bound {lower_bound:.10g} of the "
            f"minimax value exceeds the certified value {value:.10g} by {-gap:.3g}.",
            status="uncertified",
            hint="try the other solver= path.",
        )
    return max(gap, 0.0)


def solve_problem(
    problem: cp.Problem, *, what: str, cvxpy_solver: str = "CLARABEL", hint: str = "", **kwargs
) -> str:
    """Solve ``problem`` and return its status, raising SolverError unless it is optimal."""
    try:
        with warnings.catch_warnings():
            # the status is checked below and an inaccurate solve raises; cvxpy's own
            # "Solution may be inaccurate" warning would only add noise to progress bars
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            problem.solve(solver=cvxpy_solver, **kwargs)
    except cp.SolverError as exc:
        raise SolverError(
            f"{what}: cvxpy solver {cvxpy_solver} failed ({exc}).",
            status="solver_error",
            hint=hint or "rescale the data or try cvxpy_solver='SCS'.",
        ) from exc
    status = problem.status
    if status not in OK_STATUSES:
        default = {
            cp.UNBOUNDED: "the objective is unbounded below: the data are separable; pass a "
            "finite radius=.",
            cp.UNBOUNDED_INACCURATE: "the objective looks unbounded: the data may be "
            "separable; pass a finite radius=.",
            cp.INFEASIBLE: "the constraints are infeasible; check radius and the inputs.",
        }.get(status, "pass a finite radius=, rescale beta, or try another cvxpy_solver=.")
        raise SolverError(
            f"{what}: cvxpy solver {cvxpy_solver} ended with status {status!r}.",
            status=str(status),
            hint=hint or default,
        )
    return str(status)
