"""Sandwich (M-estimation) covariances of the exact estimators (docs/theory.md#inference).

Each estimator minimises an empirical objective ``F(phi; P_n)`` whose gradient is a smooth
function of sample means. With ``H`` the Hessian of ``F`` at the estimate and ``psi(z)`` the
influence of one pair on the gradient (the derivative of ``grad F(phi; (1 - t) P_n + t
delta_z)`` at ``t = 0``), the estimate has the asymptotic covariance

    Cov(phi_hat) ~= H^-1 Cov_{P_n}(psi) H^-1 / n,

and the optimal value ``F(phi_hat; P_n)`` has the influence ``v(z)`` of ``F`` at fixed ``phi``
(the gradient term vanishes at a stationary point), so ``se(value) = sd_{P_n}(v) / sqrt(n)``.

* DPO: ``phi = theta``, ``psi = grad l(z)``, ``v = l(z) - E l``.
* KLDPO: ``phi = (theta, lam)``, with the normalised tilt ``r = q / p = exp(l / lam) /
  E_p exp(l / lam)``: ``psi = (r grad l, r (1 - (l - E_q l) / lam) - 1)``, ``v = lam (r - 1)``.
* WDPO, p = 1, continuous (penalty form ``E l + rho beta ||theta - theta_ref||``):
  ``psi = grad l - E grad l``, ``v = l - E l``; the penalty adds
  ``rho beta (I - u u^T) / ||theta - theta_ref||`` to the Hessian.

The map is smooth only away from the collapse (theta = theta_ref), the max-loss regime
(lam* = 0), an active parameter ball and WDPO over finite candidates (a maximum over
candidates); :func:`smoothness` names the case.
"""

from __future__ import annotations

import numpy as np

from ..data import PreferenceData
from ..exact.fast import KLDual
from ..losses import dpo_loss, dpo_loss_grad, dpo_risk_hessian, margins

#: A relative distance to the parameter-ball boundary below which the ball counts as active.
BOUNDARY_TOL = 1e-6


def smoothness(res, *, method: str, radius=None, theta_ref=None) -> str | None:
    """Why the estimator is not smooth at ``res`` (a short phrase), or None when it is.

    Parameters
    ----------
    res : ExactResult
        The exact solver's answer.
    method : {"dpo", "kldpo", "wdpo"}
    radius : float, optional
        The parameter bound B; an estimate on its sphere makes the ball active.
    theta_ref : array_like (d,), optional

    Returns
    -------
    str or None
        ``"collapse to theta_ref"``, ``"max-loss regime (lam* = 0)"``, ``"active parameter
        ball"``, ``"finite candidates (non-smooth maximum)"``, or None.
    """
    if res.regime == "collapse" or res.info.get("collapsed_to_theta_ref"):
        return "collapse to theta_ref"
    if method == "kldpo" and res.regime == "max-loss":
        return "max-loss regime (lam* = 0)"
    if res.regime == "finite":
        return "finite candidates (non-smooth maximum)"
    if method == "wdpo" and res.regime not in ("penalty", "dpo"):
        return f"regime {res.regime!r} has no sandwich form"
    if radius is not None and np.isfinite(radius):
        if np.linalg.norm(res.theta) >= radius * (1 - BOUNDARY_TOL):
            return "active parameter ball"
    if method == "wdpo" and res.regime == "penalty":
        tref = np.zeros_like(res.theta) if theta_ref is None else np.asarray(theta_ref, float)
        if np.linalg.norm(res.theta - tref) <= 1e-12 * (1 + np.linalg.norm(tref)):
            return "collapse to theta_ref"
    return None


def _loss_and_grads(theta, data: PreferenceData, beta, tref):
    """Per-pair losses (n,) and their gradients in theta (n, d)."""
    m = margins(theta, data.X, data.y, beta=beta, theta_ref=tref)
    g = dpo_loss_grad(m) * data.signed_labels * beta  # dl/dm * dm/dh
    return dpo_loss(m), g[:, None] * data.X


def influence(
    data: PreferenceData, theta, *, method: str, rho: float, beta: float, theta_ref=None, lam=None
) -> dict:
    """Hessian, gradient influences and value influences at a smooth estimate.

    Parameters
    ----------
    data : PreferenceData
        The empirical law (rows ``x_i``, labels, weights ``p_i``).
    theta : ndarray (d,)
    method : {"dpo", "kldpo", "wdpo"}
    rho : float
        Radius (nats for KL, feature units for W1; ignored for DPO).
    beta : float
    theta_ref : array_like (d,), optional
    lam : float, optional
        KLDPO's multiplier lam* (required for ``"kldpo"``).

    Returns
    -------
    dict
        ``H`` (k, k) Hessian of the empirical objective (k = d, or d + 1 for KLDPO with lam
        last), ``psi`` (n, k) influence of each row on the gradient, ``v`` (n,) influence of
        each row on the optimal value (nats), and ``tilt`` (n,) the likelihood ratio
        ``q / p`` of the worst case (KLDPO; ones otherwise).
    """
    d = data.d
    tref = np.zeros(d) if theta_ref is None else np.asarray(theta_ref, float)
    p = data.weights
    lo, G = _loss_and_grads(theta, data, beta, tref)
    if method == "kldpo":
        c = data.signed_labels * beta
        dual = KLDual(data.X, c, p, rho, tref)
        state = dual.state(np.asarray(theta, float), np.array([lam]))
        _, H = dual.derivs(state)
        r = np.where(p > 0, state.q / np.where(p > 0, p, 1.0), 0.0)  # normalised tilt q / p
        psi = np.column_stack([r[:, None] * G, r * (1.0 - (lo - state.lbar) / lam) - 1.0])
        v = lam * (r - 1.0)
        return {"H": H, "psi": psi, "v": v, "tilt": r}
    H = dpo_risk_hessian(theta, data, beta=beta, theta_ref=tref)
    psi = G - p @ G
    v = lo - p @ lo
    if method == "wdpo":
        delta = np.asarray(theta, float) - tref
        a = float(np.linalg.norm(delta))
        u = delta / a
        H = H + rho * beta * (np.eye(d) - np.outer(u, u)) / a
    return {"H": H, "psi": psi, "v": v, "tilt": np.ones_like(p)}


def sandwich_covariance(H, psi, p, n: int) -> np.ndarray:
    """``H^-1 Cov_p(psi) H^-1 / n`` (k, k): the M-estimation covariance of the parameters.

    ``Cov_p(psi) = sum_i p_i (psi_i - pbar)(psi_i - pbar)^T`` with ``pbar = sum_i p_i psi_i``
    (zero at an exact stationary point up to the solver's tolerance)."""
    centred = psi - p @ psi
    meat = (centred * p[:, None]).T @ centred
    Hinv = np.linalg.inv(H)
    cov = Hinv @ meat @ Hinv.T / n
    return 0.5 * (cov + cov.T)


def weighted_sd(v, p) -> float:
    """Standard deviation of ``v`` under the weights ``p``."""
    mean = p @ v
    return float(np.sqrt(max(p @ (v - mean) ** 2, 0.0)))
