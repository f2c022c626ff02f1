"""The CVaR ball ``{q : q_i <= p_i / level}`` (docs/theory.md#baselines,
docs/theory.md#ambiguity-sets). Pure numpy.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _validate as V
from ..errors import InputError, SolverError
from .base import AmbiguitySet, Supremum, check_alpha, losses_weights, unit_rows


def cvar_weights(losses, *, level: float, weights=None) -> np.ndarray:
    """Worst case of the CVaR ball ``{q : q_i <= p_i / level}``: the top ``level`` fraction of
    the loss distribution, reweighted by ``1 / level`` (partial weight at the boundary).

    Parameters
    ----------
    losses : array_like, shape (n,)
    level : float in (0, 1]
        Tail fraction; ``level = 1`` gives ``q = p`` (the mean), ``level -> 0`` the max.
    weights : array_like, shape (n,), optional

    Returns
    -------
    ndarray, shape (n,), summing to 1.
    """
    lo, p = losses_weights(losses, weights)
    level = V.positive(level, "level")
    if level > 1:
        raise InputError(f"level must lie in (0, 1], got {level}")
    order = np.argsort(-lo, kind="stable")
    cap = p[order] / level
    before = np.concatenate([[0.0], np.cumsum(cap)[:-1]])
    q_sorted = np.clip(1.0 - before, 0.0, cap)
    q = np.empty_like(lo)
    q[order] = q_sorted
    return q / q.sum()


def cvar_objective(losses, *, level: float, weights=None) -> float:
    """``CVaR_level(l) = min_eta eta + E_p (l - eta)_+ / level = sup_{q <= p/level} E_q l``."""
    lo, p = losses_weights(losses, weights)
    return float(cvar_weights(lo, level=level, weights=p) @ lo)


def cvar_dual_value(lo: np.ndarray, p: np.ndarray, level: float, eta: float) -> float:
    """Rockafellar-Uryasev: ``eta + E_p (l - eta)_+ / level`` (nats), ``>= CVaR_level(l)`` for
    every real ``eta``."""
    return float(eta + float(p @ np.maximum(lo - eta, 0.0)) / level)


class CVaR(AmbiguitySet):
    """The CVaR ball ``{q : q_i <= p_i / level}``, ``level`` in (0, 1] (smaller is more
    adversarial; ``level = 1`` is ``{p}``).

    Worst case: the top ``level`` share of the loss law reweighted by ``1 / level``
    (:func:`cvar_weights`); dual ``{"eta": eta*}`` (the value at risk) of
    ``inf_eta eta + E_p (l - eta)_+ / level``. Its ball size is a level, so
    :meth:`divergence` returns ``1 / max_i q_i / p_i`` and larger sizes are smaller balls.
    Covers a subpopulation of share alpha at level alpha.
    """

    family = "cvar"
    parameter = "level"
    weight_parameter = "level"
    anchor = "docs/theory.md#cvar-ball"
    nominal = 1.0
    dpo_method = "cvardpo"
    title = "CVaR"

    def check(self, rho, name: str | None = None) -> float:
        """A level in (0, 1]."""
        a = V.positive(rho, name or "level")
        if a > 1:
            raise InputError(f"level must lie in (0, 1], got {a}")
        return a

    def divergence(self, q, p) -> float:
        """The largest level whose ball holds ``q``: ``1 / max_i q_i / p_i`` (0 when ``q``
        charges a point where ``p = 0``)."""
        q = np.asarray(q, dtype=np.float64)
        p = np.asarray(p, dtype=np.float64)
        if np.any((p == 0) & (q > 0)):
            return 0.0
        k = p > 0
        return float(1.0 / np.max(q[k] / p[k]))

    def contains(self, size: float, rho: float, *, rtol: float = 1e-9) -> bool:
        """A level-``rho`` ball holds a law of largest level ``size`` when ``size >= rho``."""
        return size >= rho * (1 - rtol)

    def into_ball(self, q, p, rho: float) -> np.ndarray:
        """``(1 - t) q + t p`` with ``max_i ((1 - t) q_i + t p_i) / p_i <= 1 / level``."""
        q = np.clip(np.asarray(q, dtype=float), 0.0, None)
        q = q / q.sum()
        pos = p > 0
        r = float(np.max(q[pos] / p[pos])) if pos.any() else 0.0
        # max_i ((1 - t) q_i + t p_i) / p_i <= (1 - t) r + t <= 1 / level
        t = 0.0 if r <= 1.0 / rho else (r - 1.0 / rho) / (r - 1.0)
        return (1.0 - t) * q + t * p

    def radius_for_subpopulation(self, alpha: float) -> float:
        """The level alpha itself (``p 1_S / alpha <= p / alpha``)."""
        return float(check_alpha(alpha))

    def supremum(self, losses, weights=None, *, rho: float) -> Supremum:
        lo, p = losses_weights(losses, weights)
        level = self.check(rho)
        q = cvar_weights(lo, level=level, weights=p)
        if level == 1.0:
            return Supremum(float(q @ lo), q, {"eta": float(lo[p > 0].min())}, "nominal")
        # the value at risk: the smallest loss the worst case still charges
        eta = float(lo[q > 0].min()) if np.any(q > 0) else math.nan
        regime = "max-loss" if q @ lo >= lo[p > 0].max() else "interior"
        return Supremum(float(q @ lo), q, {"eta": eta}, regime)

    def best_response(self, losses, weights, rho: float) -> np.ndarray:
        """:func:`cvar_weights` (which validates its input)."""
        return cvar_weights(losses, level=rho, weights=weights)

    def dual_value(self, losses, weights=None, *, rho: float, eta: float) -> float:
        lo, p = losses_weights(losses, weights)
        return cvar_dual_value(lo, p, self.check(rho), float(eta))

    def dual_penalty(self, v, vt, p, tie_mass: float, rho: float):
        """``(sum_i p_i v_i + tie_mass vt) / level`` (linear)."""
        return (p @ v + tie_mass * vt) / rho

    def balancing_law(self, A: np.ndarray, p: np.ndarray):
        """The largest level ``1 / min max_i q_i / p_i`` s.t. ``A^T q = 0``: an LP (HiGHS) in
        ``(q, t)``: ``min t``, ``q <= t p``, ``sum q = 1``; ``(0, None)`` if infeasible."""
        from scipy.optimize import linprog

        Au = unit_rows(A)
        n, dd = Au.shape
        res = linprog(
            np.r_[np.zeros(n), 1.0],
            A_ub=np.hstack([np.eye(n), -p[:, None]]),
            b_ub=np.zeros(n),
            A_eq=np.vstack([np.r_[np.ones(n), 0.0], np.hstack([Au.T, np.zeros((dd, 1))])]),
            b_eq=np.r_[1.0, np.zeros(dd)],
            bounds=[(0, None)] * (n + 1),
            method="highs",
        )
        if res.status == 2:
            return 0.0, None
        if res.status != 0:
            raise SolverError("collapse certificate (LP) failed", status=f"highs_{res.status}")
        q = np.clip(res.x[:n], 0.0, None)
        return 1.0 / max(float(np.max(q / p)), 1e-300), q / q.sum()


__all__ = ["CVaR", "cvar_dual_value", "cvar_objective", "cvar_weights"]
