"""Inference for the exact robust DPO estimators (docs/theory.md#inference): sandwich
standard errors and Wald intervals, a nonparametric bootstrap (percentile, BCa) through the
sweep backends, and empirical-likelihood bounds from the robust value."""

from .api import ConfidenceResult, confidence
from .el import el_bound, el_radius
from .fit import fit_exact
from .sandwich import influence, sandwich_covariance, smoothness

__all__ = [
    "ConfidenceResult",
    "confidence",
    "el_bound",
    "el_radius",
    "fit_exact",
    "influence",
    "sandwich_covariance",
    "smoothness",
]
