"""The exact robust risk at a fixed theta: one function that every study calls.

``robust_risk(theta, data, method=..., rho=...)`` is the worst-case expected DPO loss (nats)

    V(theta) = sup_{Q in ball(P_n, rho)} E_Q l(z; theta),   l = softplus(-m),

for the ball of each robust objective, each computed by its ambiguity set
(:meth:`rdpo_theory.divergences.AmbiguitySet.robust_risk`; docs/theory.md#ambiguity-sets):

* ``"dpo"``: no ball, ``E_P l`` (``rho`` must be 0 or omitted);
* ``"kldpo"`` (or ``"kl"``): ``KL(Q || P) <= rho``; the tilted worst case ``q ∝ p exp(l / lam)``
  with ``KL(q || p) = rho``, or the argmax set in the max-loss regime, by a scalar root find
  (:class:`rdpo_theory.divergences.KL`; docs/theory.md#kl-dual);
* ``"chi2"``, ``"cvar"`` (``rho`` = the level) and every other divergence ball of
  :mod:`rdpo_theory.divergences`: its exact supremum at the losses;
* ``"wdpo"`` over continuous x with fixed labels (order ``p``): ``p = 1`` has the closed form
  ``E_P l + rho beta ||theta - theta_ref||_2`` (docs/theory.md#w1-continuous); ``p > 1`` is
  ``min_eta G(theta, eta)`` (:func:`rdpo_theory.exact.wasserstein_p.robust_value`;
  docs/theory.md#wp-continuous);
* ``"wdpo"`` with ``candidates`` (finite Z): the transport LP over plans from the support to
  the candidates with cost ``d^p <= rho^p`` (:class:`rdpo_theory.divergences.Wasserstein`,
  HiGHS; docs/theory.md#finite-candidates).

``method`` is a method id, a trainer loss name or a family id of :mod:`rdpo_theory.methods`
(``"kldpo-exact"``, ``"kldpo"`` and ``"kl"`` all name the KL ball).
"""

from __future__ import annotations

import math

from .. import _validate as V
from .. import divergences as D
from .. import methods as M
from ..data import PreferenceData, as_data
from ..errors import InputError
from ..losses import check_beta, dpo_risk
from ..options import NONNEGATIVE, POSITIVE, Interval, declare

#: The objectives ``robust_risk`` accepts by their trainer loss name (any method id or family
#: id with an ambiguity set in :mod:`rdpo_theory.methods` is accepted too).
RISK_METHODS = M.listed("risk")


@declare(
    {
        "rho": NONNEGATIVE,
        "beta": POSITIVE,
        "p": [Interval(float, 1, None, closed="left")],
        "kappa": [Interval(float, 0, None, closed="left", allow_inf=True)],
    }
)
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
    method : {"dpo", "kldpo", "wdpo"} or a method / family id with a ball
        Which ball (see the module docstring).
    rho : float >= 0
        Ball size: nats for ``kldpo``, units of x for ``wdpo``, the level for CVaR; must be 0
        for ``dpo``.
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
    fam = M.ambiguity_family(method, p=p)
    if fam is None and M.family(method) != "dpo":
        raise InputError(f"method must be one of {RISK_METHODS}, got {method!r}")
    data = as_data(data)
    beta = check_beta(beta)
    theta = V.as_vector(theta, "theta", length=data.d)
    kw = {"beta": beta, "theta_ref": theta_ref}
    if fam is None:
        rho = V.positive(rho, "rho", allow_zero=True)
        if rho != 0:
            raise InputError(f"rho must be 0 for method 'dpo' (no ball), got {rho}")
        return dpo_risk(theta, data, **kw)
    ball = D.get(fam)
    rho = ball.check(rho, "rho")
    where = {"candidates": candidates, "cost": cost, "kappa": kappa}  # Wasserstein only
    return ball.robust_risk(theta, data, rho=rho, **kw, **where)


__all__ = ["RISK_METHODS", "robust_risk"]
