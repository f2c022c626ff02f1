"""Per-pair preference losses and their gradients (numpy).

Notation (THEORY.md sections 1, 2, 6): for a log-linear policy the implicit reward margin of
pair i is ``h_i = (theta - theta_ref) . x_i``; with signed label ``sy_i = 2 y_i - 1`` the
oriented, scaled margin is

    m_i = sy_i * beta * h_i,

and the DPO loss is ``l_i = softplus(-m_i) = -log sigmoid(m_i)`` (nats). Every loss here is a
function of the margin ``m`` alone, so the same formula serves log-linear data and language
models, where ``beta * h`` comes from log-probabilities. The torch mirror is
``rdpo_theory.torch.losses``; tests check the two agree.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, log_expit

from . import _validate as V
from .data import PreferenceData, as_data
from .errors import InputError


# ---------------------------------------------------------------------------- margins
def margins(theta, X, y, *, beta: float, theta_ref=None) -> np.ndarray:
    """Oriented scaled margins ``m_i = (2 y_i - 1) * beta * (theta - theta_ref) . x_i``.

    Parameters
    ----------
    theta : array_like, shape (d,)
    X : array_like, shape (n, d)
    y : array_like, shape (n,), labels in {0, 1}
    beta : float > 0
    theta_ref : array_like, shape (d,), optional (default 0)

    Returns
    -------
    ndarray, shape (n,)
    """
    X = np.asarray(X, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    delta = theta if theta_ref is None else theta - np.asarray(theta_ref, dtype=np.float64)
    sy = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
    return sy * beta * (X @ delta)


# ---------------------------------------------------------------------------- DPO
def dpo_loss(m) -> np.ndarray:
    """DPO per-pair loss ``l(m) = softplus(-m) = -log sigmoid(m)``, elementwise, stable."""
    return -log_expit(np.asarray(m, dtype=np.float64))


def dpo_loss_grad(m) -> np.ndarray:
    """Derivative ``dl/dm = -sigmoid(-m)``, elementwise."""
    return -expit(-np.asarray(m, dtype=np.float64))


def dpo_losses(theta, data: PreferenceData, *, beta: float, theta_ref=None) -> np.ndarray:
    """Per-pair DPO losses ``l_i(theta)``, shape (n,)."""
    data = as_data(data)
    return dpo_loss(margins(theta, data.X, data.y, beta=beta, theta_ref=theta_ref))


def dpo_risk(theta, data: PreferenceData, *, beta: float, theta_ref=None) -> float:
    """Weighted mean DPO loss ``L(theta) = sum_i p_i l_i(theta)`` (nats)."""
    data = as_data(data)
    return float(data.weights @ dpo_losses(theta, data, beta=beta, theta_ref=theta_ref))


def dpo_risk_grad(theta, data: PreferenceData, *, beta: float, theta_ref=None) -> np.ndarray:
    """Gradient of :func:`dpo_risk` in theta:
    ``sum_i p_i * (-sigmoid(-m_i)) * sy_i * beta * x_i``, shape (d,)."""
    data = as_data(data)
    m = margins(theta, data.X, data.y, beta=beta, theta_ref=theta_ref)
    coef = data.weights * dpo_loss_grad(m) * data.signed_labels * beta
    return data.X.T @ coef


def dpo_risk_hessian(theta, data: PreferenceData, *, beta: float, theta_ref=None) -> np.ndarray:
    """Hessian ``sum_i p_i beta^2 sigmoid(m_i) sigmoid(-m_i) x_i x_i^T``, shape (d, d)."""
    data = as_data(data)
    m = margins(theta, data.X, data.y, beta=beta, theta_ref=theta_ref)
    c = data.weights * beta**2 * expit(m) * expit(-m)
    return (data.X * c[:, None]).T @ data.X


def check_beta(beta) -> float:
    """Validate the DPO temperature ``beta > 0``."""
    return V.positive(beta, "beta")


# ---------------------------------------------------------------------------- KLDPO / WDPO
# numpy mirrors of rdpo_theory.torch.losses (THEORY.md section 4); tests check they agree.
def kl_weights(l, *, tau: float, variant: str = "normalized", clip: float = 10.0) -> np.ndarray:
    """KLDPO weights of per-pair losses ``l`` (n,), no gradient through them.

    ``normalized`` (Algorithm 2): ``w_i = n softmax_i((l_i - mean l) / tau)`` (mean 1);
    ``clipped`` (the paper's code): ``w_i = min(exp((l_i - mean l) / tau), clip)``.
    The KLDPO loss is ``mean_i w_i l_i``.
    """
    from scipy.special import softmax

    tau = V.positive(tau, "tau")
    l = V.as_vector(l, "l")
    z = (l - l.mean()) / tau
    if variant == "normalized":
        return l.shape[0] * softmax(z)
    if variant == "clipped":
        return np.minimum(np.exp(z), V.positive(clip, "clip"))
    raise InputError(f"variant must be 'normalized' or 'clipped', got {variant!r}")


def kl_tilted_value(l, *, tau: float) -> float:
    """``tau * log mean_i exp(l_i / tau)``: the KL dual at a fixed multiplier ``lam = tau``,
    whose gradient normalized KLDPO follows."""
    from scipy.special import logsumexp

    tau = V.positive(tau, "tau")
    l = V.as_vector(l, "l")
    return float(tau * (logsumexp(l / tau) - np.log(l.shape[0])))


def wdpo_input_grad_sq_norms(theta, X, y, *, beta: float, theta_ref=None) -> np.ndarray:
    """``||grad_x l_i||_2^2 = beta^2 ||theta - theta_ref||^2 sigmoid(-m_i)^2`` for log-linear
    pairs (``grad_x l = -sy beta (theta - theta_ref) sigmoid(-m)``), shape (n,)."""
    theta = np.asarray(theta, dtype=np.float64)
    delta = theta if theta_ref is None else theta - np.asarray(theta_ref, dtype=np.float64)
    m = margins(theta, X, y, beta=beta, theta_ref=theta_ref)
    return beta**2 * float(delta @ delta) * expit(-m) ** 2


def wdpo_objective(l, sq_norms, *, rho0: float, variant: str = "sqrt-mean") -> float:
    """WDPO objective from per-pair losses and squared input-gradient norms, both (n,).

    ``sqrt-mean`` (Algorithm 1): ``mean l + rho0 sqrt(mean sq)``;
    ``per-pair`` (the paper's code): ``mean (l + rho0 sq)``.
    """
    rho0 = V.positive(rho0, "rho0", allow_zero=True)
    l = V.as_vector(l, "l")
    sq = V.as_vector(sq_norms, "sq_norms", length=l.shape[0])
    if variant == "sqrt-mean":
        return float(l.mean() + rho0 * np.sqrt(sq.mean()))
    if variant == "per-pair":
        return float(np.mean(l + rho0 * sq))
    raise InputError(f"variant must be 'sqrt-mean' or 'per-pair', got {variant!r}")
