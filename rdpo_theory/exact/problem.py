"""The one setup object of the exact solvers: validated data, beta, theta_ref and radius."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _validate as V
from ..data import PreferenceData, as_data
from ..losses import check_beta
from .ball import project_ball


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

    def margins(self, theta) -> np.ndarray:
        return self.c * (self.data.X @ (np.asarray(theta, dtype=float) - self.tref))

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
