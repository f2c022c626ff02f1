"""One exact fit of DPO, KLDPO or WDPO (p = 1), as the inference routines call it."""

from __future__ import annotations

import math

from ..errors import InputError, SolverError

METHODS = ("dpo", "kldpo", "wdpo")


def fit_exact(
    data,
    *,
    method: str,
    rho: float,
    beta: float,
    theta_ref=None,
    radius=None,
    candidates=None,
    solver: str = "fast",
):
    """The exact estimate (an ``ExactResult``) on ``data``: ``exact.dpo``, ``exact.kldpo`` or
    ``exact.wdpo`` with p = 1 and fixed labels (continuous x, or ``candidates``). The fast path
    falls back to the conic one when it cannot certify its answer."""
    from ..exact import dpo, kldpo, wdpo

    kw = {"beta": beta, "theta_ref": theta_ref, "radius": radius}
    if method == "dpo":
        call = lambda s: dpo(data, solver=s, **kw)  # noqa: E731
    elif method == "kldpo":
        call = lambda s: kldpo(  # noqa: E731
            data, rho=rho, solver=s, **({"certificate": "root"} if s == "fast" else {}), **kw
        )
    elif method == "wdpo":
        if candidates is not None:
            return wdpo(data, rho=rho, p=1, kappa=math.inf, candidates=candidates, **kw)
        call = lambda s: wdpo(data, rho=rho, p=1, kappa=math.inf, solver=s, **kw)  # noqa: E731
    else:
        raise InputError(
            f"The 'method' parameter must be one of {METHODS}. Got {method!r} instead."
        )
    if solver == "fast":
        try:
            return call("fast")
        except SolverError:
            return call("cvxpy")
    return call(solver)
