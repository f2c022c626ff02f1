"""The exact robust risk at a fixed theta: one function that every study calls.

``robust_risk(theta, data, method=..., rho=...)`` is the worst-case expected DPO loss (nats)

    V(theta) = sup_{Q in ball(P_n, rho)} E_Q l(z; theta),   l = softplus(-m),

for the ball of each robust objective (docs/theory.md#kl-dro, docs/theory.md#wasserstein-dro):

* ``"dpo"``: no ball, ``E_P l`` (``rho`` must be 0 or omitted);
* ``"kldpo"``: ``KL(Q || P) <= rho``; the tilted worst case ``q ∝ p exp(l / lam)`` with
  ``KL(q || p) = rho``, or the argmax set in the max-loss regime, by a scalar root find
  (:func:`rdpo_theory.exact.certificates.kl_primal_sup`; docs/theory.md#kl-dual);
* ``"wdpo"`` over continuous x with fixed labels: ``p = 1`` has the closed form
  ``E_P l + rho beta ||theta - theta_ref||_2`` (docs/theory.md#w1-continuous); ``p > 1`` is
  ``min_eta G(theta, eta)`` (:func:`rdpo_theory.exact.wasserstein_p.robust_value`;
  docs/theory.md#wp-continuous);
* ``"wdpo"`` with ``candidates`` (finite Z): the transport LP over plans from the support to
  the candidates with cost ``d^p <= rho^p`` (:func:`~rdpo_theory.exact.certificates.
  transport_primal_sup`, HiGHS; docs/theory.md#finite-candidates).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _validate as V
from ..data import PreferenceData, as_data
from ..errors import InputError
from ..losses import check_beta, dpo_losses, dpo_risk

RISK_METHODS = ("dpo", "kldpo", "wdpo")


def robust_risk(
    theta,
    data,
    *,
    method: str,
    rho: float = 0.0,
    beta: float,
    theta_ref=None,
    p: float = 1.0,
    candidates: PreferenceData | None = None,
    cost=None,
    kappa: float = math.inf,
) -> float:
    """Exact ``sup_{Q in ball(P, rho)} E_Q l(theta)`` (nats) at a fixed ``theta``.

    Parameters
    ----------
    theta : array_like (d,)
    data : PreferenceData
        The nominal law P (its ``weights``).
    method : {"dpo", "kldpo", "wdpo"}
        Which ball (see the module docstring).
    rho : float >= 0
        Radius: nats for ``kldpo``, units of x for ``wdpo``; must be 0 for ``dpo``.
    beta : float > 0
    theta_ref : array_like (d,), optional (default 0)
    p : float >= 1
        Wasserstein order (``wdpo``).
    candidates : PreferenceData, optional
        ``wdpo`` on a finite set Z of candidate pairs (its weights are ignored); default:
        continuous x with fixed labels.
    cost : array_like (n, K), optional
        Ground distance from each support point to each candidate (default
        ``||x - x'||_2 + kappa [y != y']``, :func:`rdpo_theory.exact.wasserstein.default_cost`).
    kappa : float >= 0
        Cost of a label flip for the default candidate cost (default inf: no flips).

    Returns
    -------
    float
        The robust risk in nats.
    """
    if method not in RISK_METHODS:
        raise InputError(f"method must be one of {RISK_METHODS}, got {method!r}")
    data = as_data(data)
    beta = check_beta(beta)
    theta = V.as_vector(theta, "theta", length=data.d)
    rho = V.positive(rho, "rho", allow_zero=True)
    kw = {"beta": beta, "theta_ref": theta_ref}
    if method == "dpo":
        if rho != 0:
            raise InputError(f"rho must be 0 for method 'dpo' (no ball), got {rho}")
        return dpo_risk(theta, data, **kw)
    if method == "kldpo":
        from .certificates import kl_primal_sup

        return kl_primal_sup(dpo_losses(theta, data, **kw), data.weights, rho, method="root")
    p = V.positive(p, "p")
    if p < 1:
        raise InputError(f"p must be >= 1, got {p}")
    if candidates is not None:
        from .certificates import transport_primal_sup
        from .wasserstein import default_cost

        if cost is None:
            cost = default_cost(data.X, data.y, candidates.X, candidates.y, kappa)
        C = np.asarray(cost, dtype=np.float64)
        if C.shape != (data.n, candidates.n):
            raise InputError(f"cost must have shape ({data.n}, {candidates.n}), got {C.shape}")
        lc = dpo_losses(theta, candidates, **kw)
        return transport_primal_sup(lc, data.weights, C**p, rho**p)[0]
    if p == 1:
        delta = theta - V.as_theta(theta_ref, data.d)
        return dpo_risk(theta, data, **kw) + rho * beta * float(np.linalg.norm(delta))
    from .wasserstein_p import robust_value

    return robust_value(theta, data, rho=rho, p=p, **kw)[0]


__all__ = ["RISK_METHODS", "robust_risk"]
