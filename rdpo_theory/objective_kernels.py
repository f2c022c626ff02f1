"""Numpy kernels of the newer robust preference objectives that the exact solvers and the
torch losses share: winsorised DPO's frozen weights (docs/theory.md#winsor-dpo),
DRO-REBEL's relative-reward regression (docs/theory.md#dro-rebel) and DPO-PRO's label ball
(docs/theory.md#dpo-pro).

This module imports neither cvxpy nor torch, so :mod:`rdpo_theory.torch.objectives` can call
it on detached values (one copy of each kernel).

Winsorised DPO (Liu et al., arXiv 2603.07211; the authors' code, ``trainers_wDPO.py`` of the
repository ``liujilong0116/CompassDPO``) acts on a batch of ``B`` pairs with scaled margins
``z_i = beta * ((pc - rc) - (pr - rr))``:

* a **flip budget**: ``pi = clip(rho_f B sparsemax(max(-z, 0) / tau_select), 0, 1)`` (mass
  clipped at 1 is handed back to the other selected pairs), the probability with which each
  pair's label is treated as flipped (:func:`flip_probabilities`);
* the flipped loss ``l_i = (1 - pi_i) softplus(-z_i) + pi_i softplus(z_i)``;
* a **winsorisation budget** ``rho_w = rho_floor + (rho_w_max - rho_floor) mean_i
  sigmoid(-z_i / mean_j |z_j|)`` (:func:`winsor_budget`), a threshold ``T`` = the
  ``base_q``-quantile of ``l`` and caps ``r_i = clip(rho_w B s_i / sum_j s_j, 0, 1)`` on the
  tail ``l_i > T`` with severities ``s_i = (l_i - T)^gamma`` (:func:`winsor_caps`);
* the per-pair loss ``(1 - r_i) l_i + r_i T`` (:func:`winsor_pair_losses`).

``pi``, ``rho_w``, ``T`` and ``r`` are computed from detached values: the training update is
``mean_i (1 - r_i) grad l_i`` with the weights frozen at the current parameters.

REBEL's per-pair loss is the squared residual ``e_i^2``, ``e_i = m_i / eta - dr_i``, where
``m_i = (log pi(a1) - log pi(a2)) - (log pi_ref(a1) - log pi_ref(a2))`` (nats) and
``dr_i = r(a1) - r(a2)`` a reward difference (:func:`rebel_residuals`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from .losses import dpo_loss


# ---------------------------------------------------------------------------- winsorised DPO
def sparsemax(v) -> np.ndarray:
    """Euclidean projection of ``v`` (n,) onto the probability simplex (sparsemax): ``(v -
    tau)_+`` with ``tau`` chosen so the entries sum to 1."""
    v = np.asarray(v, dtype=float)
    v = v - v.max()
    s = np.sort(v)[::-1]
    cs = np.cumsum(s)
    k = np.arange(1, len(v) + 1)
    kz = max(int(np.sum(1.0 + k * s > cs)), 1)
    tau = (cs[kz - 1] - 1.0) / kz
    return np.maximum(v - tau, 0.0)


def flip_probabilities(z, *, rho_f: float, tau_select: float = 1.0) -> np.ndarray:
    """wDPO's budgeted flip probabilities ``pi`` (B,), entries in [0, 1] summing to at most
    ``rho_f B``: the sparsemax of the flip gains ``softplus(-z) - softplus(z) = -z`` (kept
    where positive) over ``tau_select``, scaled by the budget and clipped at 1, the clipped
    mass handed back once in proportion to the sparsemax weights of the pairs below 1. Only
    the sparsemax support can be flipped, so the sum is less than the budget when the
    support is small (docs/theory.md#winsor-dpo)."""
    z = np.asarray(z, dtype=float)
    scores = np.maximum(-z, 0.0) / max(float(tau_select), 1e-6)
    if not np.any(scores > 0):
        return np.zeros_like(z)
    a = sparsemax(scores)
    budget = float(rho_f) * len(z)
    pi = np.clip(budget * a, 0.0, 1.0)
    if pi.sum() + 1e-6 < budget:
        free = pi < 1.0
        if free.any():
            share = a[free] / max(a[free].sum(), 1e-12)
            pi[free] = np.clip(pi[free] + (budget - pi.sum()) * share, 0.0, 1.0)
    return pi


def winsor_budget(z, *, rho_w_max: float, rho_floor: float = 0.02) -> float:
    """wDPO's adaptive winsorisation budget ``rho_floor + (rho_w_max - rho_floor)
    mean sigmoid(-z / mean |z|)``, clipped between the two."""
    z = np.asarray(z, dtype=float)
    s = max(float(np.mean(np.abs(z))), 1e-12)
    rho = rho_floor + (rho_w_max - rho_floor) * float(np.mean(expit(-z / s)))
    return float(np.clip(rho, min(rho_floor, rho_w_max), max(rho_floor, rho_w_max)))


def winsor_caps(losses, *, rho_w: float, base_q: float, gamma: float = 1.0):
    """``(r, T)``: the threshold ``T`` (the ``base_q``-quantile of ``losses``, linear
    interpolation) and the caps ``r`` (B,) in [0, 1], positive only on the tail
    ``losses > T``: ``r_i = clip(rho_w B s_i / sum_tail s, 0, 1)``, ``s_i = (l_i - T)^gamma``."""
    x = np.asarray(losses, dtype=float)
    T = float(np.quantile(x, min(max(float(base_q), 0.0), 1.0)))
    tail = x > T
    r = np.zeros_like(x)
    budget = float(rho_w) * len(x)
    if tail.any() and budget > 0:
        s = np.maximum(x - T, 0.0) ** gamma
        r[tail] = np.clip(budget * s[tail] / max(s[tail].sum(), 1e-12), 0.0, 1.0)
    return r, T


def winsor_weights(
    z, *, rho_f=0.15, rho_w_max=0.5, base_q=0.7, tau_select=1.0, rho_floor=0.02, gamma=1.0
):
    """The frozen weights of wDPO at margins ``z`` (B,): ``(pi, r, T, rho_w)`` (defaults: the
    authors' settings)."""
    z = np.asarray(z, dtype=float)
    pi = flip_probabilities(z, rho_f=rho_f, tau_select=tau_select)
    mixed = (1.0 - pi) * dpo_loss(z) + pi * dpo_loss(-z)
    rho_w = winsor_budget(z, rho_w_max=rho_w_max, rho_floor=rho_floor)
    r, T = winsor_caps(mixed, rho_w=rho_w, base_q=base_q, gamma=gamma)
    return pi, r, T, rho_w


def winsor_pair_losses(z, pi, r, T) -> np.ndarray:
    """wDPO per-pair loss ``(1 - r) [(1 - pi) softplus(-z) + pi softplus(z)] + r T`` (nats)."""
    z = np.asarray(z, dtype=float)
    return (1.0 - r) * ((1.0 - pi) * dpo_loss(z) + pi * dpo_loss(-z)) + r * T


# ---------------------------------------------------------------------------- DPO-PRO
def label_interval(q, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """DPO-PRO's label ball ``{pi : (pi - q)^2 <= rho q (1 - q)} ∩ [0, 1]`` as ``(lo, hi)``
    (docs/theory.md#dpo-pro)."""
    q = np.asarray(q, dtype=float)
    delta = np.sqrt(rho * q * (1.0 - q))
    return np.clip(q - delta, 0.0, 1.0), np.clip(q + delta, 0.0, 1.0)


# ---------------------------------------------------------------------------- DRO-REBEL
def rebel_residuals(m, dr, *, eta: float) -> np.ndarray:
    """REBEL residuals ``m / eta - dr`` from log-ratio differences ``m`` (nats) and reward
    differences ``dr``."""
    return np.asarray(m, dtype=float) / float(eta) - np.asarray(dr, dtype=float)


def w2_rebel_value(e, p, shift_norm: float, rho: float) -> float:
    """The type-2 Wasserstein worst case of REBEL's squared loss with the pairs' features
    moved and the rewards fixed: ``(sqrt(sum_i p_i e_i^2) + rho * shift_norm)^2``, with
    ``shift_norm = ||theta - theta_ref|| / eta`` the residual's change per unit of feature
    (docs/theory.md#dro-rebel)."""
    e = np.asarray(e, dtype=float)
    return float((np.sqrt(np.asarray(p, dtype=float) @ e**2) + rho * shift_norm) ** 2)


__all__ = [
    "flip_probabilities",
    "label_interval",
    "rebel_residuals",
    "sparsemax",
    "w2_rebel_value",
    "winsor_budget",
    "winsor_caps",
    "winsor_pair_losses",
    "winsor_weights",
]
