"""The parameter ball ``Theta = {theta : ||theta||_2 <= radius}`` (docs/theory.md#exact-programs):
the one projection onto it and the boundary test every exact solver uses."""

from __future__ import annotations

import math

import numpy as np

#: Relative slack of :func:`on_boundary`.
BOUNDARY_RTOL = 1e-6


def project_ball(theta, radius) -> np.ndarray:
    """Euclidean projection of ``theta`` (d,) onto ``||theta||_2 <= radius`` (a new array).

    ``radius`` None or inf means no constraint."""
    theta = np.asarray(theta, dtype=float)
    if radius is None or not math.isfinite(radius):
        return theta.copy()
    nrm = float(np.linalg.norm(theta))
    return theta.copy() if nrm <= radius else theta * (radius / nrm)


def on_boundary(theta, radius) -> bool:
    """Whether ``theta`` lies on the sphere ``||theta|| = radius`` (up to ``BOUNDARY_RTOL``)."""
    if radius is None or not math.isfinite(radius):
        return False
    return float(np.linalg.norm(theta)) >= radius * (1 - BOUNDARY_RTOL)
