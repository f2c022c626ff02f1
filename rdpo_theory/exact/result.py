"""The result object and the status handling shared by every exact solver."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import cvxpy as cp
import numpy as np

from ..errors import SolverError

#: cvxpy statuses accepted as a certified answer.
OK_STATUSES = (cp.OPTIMAL,)


@dataclass
class ExactResult:
    """Answer of an exact solver.

    Attributes
    ----------
    theta : ndarray, shape (d,)
        The minimiser.
    value : float
        The objective at ``theta`` (nats): the weighted mean loss for DPO, the robust
        (worst-case) loss for KLDPO and WDPO.
    status : str
        ``"optimal"`` or a regime note such as ``"optimal (max-loss limit)"``. Inaccurate or
        infeasible solves raise :class:`~rdpo_theory.errors.SolverError` instead.
    method : str
    dual : float or None
        The optimal dual multiplier (lam* for KL, eta* for Wasserstein).
    worst_case : ndarray or None
        The adversary's distribution at ``theta``.
    gap : float or None
        Certificate: dual value minus an independently computed primal value.
    info : dict
        Solver name, timings and method-specific extras.
    transport_plan : ndarray or None
        WDPO with finite candidates: the optimal transport plan (n, K) at ``theta``; its column
        sums are ``worst_case``.
    regime : str or None
        Robust solvers: ``"dpo"`` (rho = 0), ``"interior"`` (lam* > 0) or ``"max-loss limit"``
        (KL, lam* = 0), ``"collapse"``/``"penalty"``/``"finite"`` for WDPO.
    """

    theta: np.ndarray
    value: float
    status: str
    method: str = "dpo"
    dual: float | None = None
    worst_case: np.ndarray | None = None
    gap: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    transport_plan: np.ndarray | None = None
    regime: str | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly dict of the scalar fields and theta."""
        out = {
            "method": self.method,
            "status": self.status,
            "value": self.value,
            "theta": [float(t) for t in self.theta],
            "dual": self.dual,
            "gap": self.gap,
        }
        if self.regime is not None:
            out["regime"] = self.regime
        for k, v in self.info.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                out[k] = v
        return out


def solve_problem(
    problem: cp.Problem, *, what: str, solver: str = "CLARABEL", hint: str = "", **kwargs
) -> str:
    """Solve ``problem`` and return its status, raising SolverError unless it is optimal."""
    try:
        with warnings.catch_warnings():
            # the status is checked below and an inaccurate solve raises; cvxpy's own
            # "Solution may be inaccurate" warning would only add noise to progress bars
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            problem.solve(solver=solver, **kwargs)
    except cp.SolverError as exc:
        raise SolverError(
            f"{what}: solver {solver} failed ({exc}).",
            status="solver_error",
            hint=hint or "rescale the data or try solver='SCS'.",
        ) from exc
    status = problem.status
    if status not in OK_STATUSES:
        default = {
            cp.UNBOUNDED: "the objective is unbounded below: the data are separable; pass a "
            "finite radius=.",
            cp.UNBOUNDED_INACCURATE: "the objective looks unbounded: the data may be "
            "separable; pass a finite radius=.",
            cp.INFEASIBLE: "the constraints are infeasible; check radius and the inputs.",
        }.get(status, "pass a finite radius=, rescale beta, or try another solver.")
        raise SolverError(
            f"{what}: solver {solver} ended with status {status!r}.",
            status=str(status),
            hint=hint or default,
        )
    return str(status)
