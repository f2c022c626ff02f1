"""Validated preference data for log-linear policies.

A data set holds, for each pair i, the feature difference ``x_i = psi(s, a1) - psi(s, a2)``,
the label ``y_i`` (1 when a1 is preferred) and a probability weight ``p_i``. Weights make an
empirical law and an exact population law (a finite world's Z) the same object.

Files are read and written by :mod:`rdpo_theory.io` (:func:`~rdpo_theory.io.read_preference_data`,
:func:`~rdpo_theory.io.write_preference_data`), which depends on this module, never the other
way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _validate as V
from .errors import InputError


@dataclass(frozen=True)
class PreferenceData:
    """Pairs (x_i, y_i) with probability weights p_i.

    Parameters
    ----------
    X : array_like, shape (n, d)
        Pair feature differences ``psi(s, a1) - psi(s, a2)``. Finite, n >= 1.
    y : array_like, shape (n,)
        Labels in {0, 1}; 1 means the first response is preferred.
    weights : array_like, shape (n,), optional
        Non-negative, summing to 1. Default uniform ``1/n``.

    Raises
    ------
    InputError (a ValueError)
        On wrong shapes, NaN or inf, labels outside {0, 1}, negative weights, weights not
        summing to 1, or n = 0. The message names the argument.
    """

    X: np.ndarray
    y: np.ndarray
    weights: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        X = V.as_matrix(self.X, "X")
        n = X.shape[0]
        y = V.as_labels(self.y, n, "y")
        w = V.as_weights(self.weights, n, "weights")
        for name, arr in (("X", X), ("y", y), ("weights", w)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    # ------------------------------------------------------------------ basic views
    @property
    def n(self) -> int:
        """Number of rows (support points)."""
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        """Feature dimension."""
        return int(self.X.shape[1])

    @property
    def signed_labels(self) -> np.ndarray:
        """``sy = 2y - 1`` in {-1, +1}, shape (n,)."""
        return 2.0 * self.y - 1.0

    def second_moment(self) -> np.ndarray:
        """``Sigma = sum_i p_i x_i x_i^T``, shape (d, d)."""
        return (self.X * self.weights[:, None]).T @ self.X

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.X, self.y, self.weights


def as_data(X, y=None, weights=None) -> PreferenceData:
    """Accept a PreferenceData or raw arrays and return a validated PreferenceData."""
    if isinstance(X, PreferenceData):
        if y is not None or weights is not None:
            raise InputError("pass either a PreferenceData or arrays X, y, weights, not both")
        return X
    if y is None:
        raise InputError("y is required when X is an array")
    return PreferenceData(X, y, weights)
