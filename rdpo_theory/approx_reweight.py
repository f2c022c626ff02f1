"""Scalable versions of the aggregate baselines for log-linear policies (THEORY.md section 6).

Each front end trains with :func:`rdpo_theory.approx.fit` on a torch objective from
:mod:`rdpo_theory.torch.baselines`, exactly as Algorithm 2 (KLDPO) reweights:

* :func:`chi2dpo` and :func:`cvardpo`: best-response reweighting. Each step computes the
  worst-case law ``q`` of the chi-square or CVaR ball around the batch weights ``p`` (exactly,
  by :func:`rdpo_theory.losses.chi2_weights` / :func:`~rdpo_theory.losses.cvar_weights`), holds
  it constant and descends ``sum_i q_i l_i``. By Danskin's theorem this is a (sub)gradient of
  the robust objective, so full-batch training targets the exact optimum of
  :func:`rdpo_theory.exact.chi2dpo` / :func:`~rdpo_theory.exact.cvardpo`.
* :func:`drdpo`: Dr. DPO's soft-min objective ``-beta' log sum_i p_i exp(-l_i / beta')``,
  which is not convex and has no exact program; gradient descent from ``theta_ref`` is the
  method as published.

Minibatches use the batch's own empirical law (``1/B``), as a language-model trainer would.
"""

from __future__ import annotations

from . import _validate as V
from .approx import ApproxResult, FitOptions, fit
from .errors import InputError


def chi2dpo(
    X,
    y=None,
    *,
    rho: float,
    beta: float,
    weights=None,
    theta_ref=None,
    options: FitOptions | None = None,
    **option_kwargs,
) -> ApproxResult:
    """chi-square DPO by best-response reweighting: loss ``sum_i q_i l_i`` with ``q`` the
    worst case of ``{q : 1/2 sum_i p_i (q_i/p_i - 1)^2 <= rho}`` (held constant each step).

    Parameters
    ----------
    X, y, weights, theta_ref, beta
        As in :func:`rdpo_theory.approx.fit`.
    rho : float >= 0
        Chi-square radius.
    options, **option_kwargs
        Training options: a :class:`rdpo_theory.approx.FitOptions` and/or its fields as
        keywords (``learning_rate`` or ``lr``, ``max_steps``, ``batch_size``, ...).
    """
    from .torch.baselines import chi2_objective

    rho = V.positive(rho, "rho", allow_zero=True)

    def objective(per, x, w):
        return chi2_objective(per, rho=rho, weights=w)[0]

    return fit(
        X,
        y,
        beta=beta,
        objective=objective,
        weights=weights,
        theta_ref=theta_ref,
        input_grad=False,
        method="chi2dpo",
        hyper={"rho": rho},
        options=FitOptions.build(options, where="approx_reweight.chi2dpo", **option_kwargs),
    )


def cvardpo(
    X,
    y=None,
    *,
    level: float,
    beta: float,
    weights=None,
    theta_ref=None,
    options: FitOptions | None = None,
    **option_kwargs,
) -> ApproxResult:
    """CVaR DPO by best-response reweighting: loss ``sum_i q_i l_i`` with ``q`` the worst
    ``level`` fraction of the batch's loss distribution (``q_i <= p_i / level``).

    ``level`` in (0, 1]; other parameters as in :func:`chi2dpo`.
    """
    from .torch.baselines import cvar_objective

    level = V.positive(level, "level")
    if level > 1:
        raise InputError(f"level must lie in (0, 1], got {level}")

    def objective(per, x, w):
        return cvar_objective(per, level=level, weights=w)[0]

    return fit(
        X,
        y,
        beta=beta,
        objective=objective,
        weights=weights,
        theta_ref=theta_ref,
        input_grad=False,
        method="cvardpo",
        hyper={"level": level},
        options=FitOptions.build(options, where="approx_reweight.cvardpo", **option_kwargs),
    )


def drdpo(
    X,
    y=None,
    *,
    beta_prime: float,
    beta: float,
    weights=None,
    theta_ref=None,
    options: FitOptions | None = None,
    **option_kwargs,
) -> ApproxResult:
    """Dr. DPO (Wu et al. 2025): minimise ``-beta' log sum_i p_i exp(-l_i / beta')``.

    ``beta_prime`` > 0 (large: DPO; small: fits only the easiest pairs); other parameters as in
    :func:`chi2dpo`. Not convex: the answer depends on the start (default ``theta_ref``).
    """
    from .torch.baselines import drdpo_objective

    bp = V.positive(beta_prime, "beta_prime")

    def objective(per, x, w):
        return drdpo_objective(per, beta_prime=bp, weights=w)

    return fit(
        X,
        y,
        beta=beta,
        objective=objective,
        weights=weights,
        theta_ref=theta_ref,
        input_grad=False,
        method="drdpo",
        hyper={"beta_prime": bp},
        options=FitOptions.build(options, where="approx_reweight.drdpo", **option_kwargs),
    )
