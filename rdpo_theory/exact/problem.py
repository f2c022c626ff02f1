"""The one setup object of the exact solvers: validated data, beta, theta_ref and radius."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .. import _validate as V
from ..data import PreferenceData, as_data
from ..errors import SolverError
from ..losses import check_beta
from .ball import project_ball
from .passes import Rows


@dataclass(frozen=True)
class Problem:
    """Validated common inputs of an exact solve (docs/theory.md#log-linear-policies).

    ``c = sy * beta`` (n,) multiplies ``x_i . (theta - theta_ref)`` into the margin
    ``m_i = c_i x_i . (theta - theta_ref)``; ``radius`` is None when unconstrained (an
    infinite radius is stored as None).
    """

    data: PreferenceData
    beta: float
    tref: np.ndarray
    radius: float | None

    @property
    def c(self) -> np.ndarray:
        return self.data.signed_labels * self.beta

    @property
    def bounded(self) -> bool:
        """Whether ``||theta|| <= radius`` constrains the solve."""
        return self.radius is not None

    @cached_property
    def rows(self) -> Rows:
        """The data ``X`` as :class:`.passes.Rows`: one pass counter for the whole solve."""
        return Rows(self.data.X)

    @cached_property
    def informative(self) -> np.ndarray:
        """Mask (n,) of rows that move the loss: positive weight and ``x != 0`` (one pass)."""
        self.rows.counter[0] += 1
        return (self.data.weights > 0) & np.any(self.data.X != 0, axis=1)

    def margins(self, theta) -> np.ndarray:
        return self.c * self.rows.matvec(np.asarray(theta, dtype=float) - self.tref)

    def feasible_ref(self) -> np.ndarray:
        """``theta_ref`` projected onto the parameter ball."""
        return project_ball(self.tref, self.radius)


def prepare(X, y, weights, *, beta, theta_ref, radius) -> Problem:
    """Validate the inputs every exact solver shares into a :class:`Problem`."""
    data = as_data(X, y, weights) if y is not None or weights is not None else as_data(X)
    r = V.radius(radius)
    if r is not None and not np.isfinite(r):
        r = None
    return Problem(data, check_beta(beta), V.as_theta(theta_ref, data.d), r)


@dataclass(frozen=True)
class Scale:
    """Exact change of units that puts a continuous robust problem at unit scale.

    The losses see ``beta x_i . (theta - theta_ref)`` only, so with ``s = 2^k`` the power of
    two nearest ``max_ij |x_ij|`` (division by it is exact) and ``S = beta s``:
    ``x' = x / s``, ``beta' = 1``, ``theta' = S theta``, ``theta_ref' = S theta_ref``,
    ``radius' = S radius``, and a transport radius in units of x becomes ``rho / s``. Every
    loss, margin and robust value is unchanged, so tolerances written for unit-scale
    problems hold from 1e-300 to 1e300. Scales whose images are not finite in float64
    raise :class:`SolverError` saying so.
    """

    s: float
    S: float
    problem: Problem

    @classmethod
    def of(cls, prob: Problem, what: str) -> Scale:
        X = prob.data.X
        xmax = float(np.abs(X).max()) if X.size else 0.0
        s = 1.0 if xmax == 0.0 else float(2.0 ** np.round(np.log2(xmax)))
        S = prob.beta * s
        with np.errstate(over="ignore", invalid="ignore"):
            tref = prob.tref * S
        radius = None if prob.radius is None else prob.radius * S
        ok = np.isfinite(S) and S > 0 and np.all(np.isfinite(tref))
        ok = ok and (radius is None or (np.isfinite(radius) and radius > 0))
        if not ok:
            raise SolverError(
                f"{what}: the problem's scale is outside the range float64 can represent "
                f"(beta = {prob.beta:.3g}, max |x| = {xmax:.3g}, ||theta_ref|| = "
                f"{float(np.linalg.norm(prob.tref)):.3g}, radius = {prob.radius}): theta "
                "would be scaled by beta * max|x|, which over- or underflows.",
                status="scale_out_of_range",
                hint="rescale X or beta so that beta * max|x| lies within about 1e-300..1e300.",
            )
        data = PreferenceData(X / s, prob.data.y, prob.data.weights)
        return cls(s, S, Problem(data, 1.0, tref, radius))

    def theta(self, theta_scaled) -> np.ndarray:
        """Back to the caller's units: ``theta = theta' / S``."""
        out = np.asarray(theta_scaled, dtype=float) / self.S
        if not np.all(np.isfinite(out)):  # pragma: no cover - guarded by Scale.of
            raise SolverError("theta is not representable at this scale", status="scale")
        return out
