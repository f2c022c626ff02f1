"""Argument checks and conic-solve helpers shared by the robust exact solvers (KLDPO, WDPO);
the setup object itself is :class:`.problem.Problem`."""

from __future__ import annotations

from .. import _validate as V
from ..errors import SolverError
from .dpo import recession_direction
from .result import solve_problem

SOLVERS = V.SOLVER_PATHS


def check_solver(
    solver, cvxpy_solver, *, method: str, valid=SOLVERS, why: str = "", X=None
) -> tuple[str, str]:
    """Validate the path switch ``solver`` (one of ``valid`` for ``method``) and the conic backend
    ``cvxpy_solver`` (an installed cvxpy solver) before anything runs; see
    :func:`rdpo_theory._validate.solver_path`. Returns ``(solver, cvxpy_solver)``."""
    backend = V.cvxpy_solver(cvxpy_solver, method=method)
    return V.solver_path(solver, method=method, valid=valid, why=why, X=X), backend


def separable(A, *, tol: float = 1e-9, n: int | None = None) -> bool:
    """Whether some ``v`` with ``||v||_inf <= 1`` has ``A v >= 0`` and ``sum(A v) > 0``
    (see :func:`.dpo.recession_direction`; ``A`` an array or a row callable with ``n``)."""
    return recession_direction(A, tol=tol, n=n) is not None


def raise_if_separable(A, what: str, *, n: int | None = None) -> None:
    """Raise SolverError when rows ``A`` (``sy_i beta x_i``; an array, or a callable
    ``take(idx)`` with ``n`` rows) are (quasi-)separable: the robust objective then decreases
    along a ray and its infimum is not attained."""
    if separable(A, n=n):
        raise SolverError(
            f"{what}: the data are separable, so the objective keeps decreasing along a ray and "
            "its infimum is not attained.",
            status="unbounded",
            hint="pass a finite radius= (the parameter bound B).",
        )


#: Clarabel settings tried in turn when a program stalls (degenerate ties are common in
#: transport programs; these variants break the stall without loosening any tolerance).
CLARABEL_RETRIES = (
    {},
    {"max_step_fraction": 0.9},
    {"static_regularization_enable": False},
    {"equilibrate_enable": False},
    {"iterative_refinement_reltol": 1e-16, "iterative_refinement_abstol": 1e-16},
)


def solve_with_retries(problem, *, what: str, cvxpy_solver: str = "CLARABEL") -> str:
    """:func:`solve_problem`, retrying Clarabel with the settings in ``CLARABEL_RETRIES``.

    Only an ``optimal`` status is accepted; the last failure is raised."""
    import warnings

    attempts = CLARABEL_RETRIES if cvxpy_solver.upper() == "CLARABEL" else ({},)
    last = None
    for kw in attempts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return solve_problem(problem, what=what, cvxpy_solver=cvxpy_solver, **kw)
        except SolverError as exc:
            last = exc
    raise last
