"""Scalable versions of the aggregate baselines for log-linear policies (docs/theory.md#baselines).

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


def _train(method, aggregate, hyper, X, y, *, beta, weights, theta_ref, options, option_kwargs):
    """:func:`~rdpo_theory.approx.fit` on ``aggregate(per_pair, weights=batch_weights,
    **hyper)`` (its first element when it returns ``(loss, q)``), labelled ``method``."""

    def objective(per, x, w):
        out = aggregate(per, weights=w, **hyper)
        return out[0] if isinstance(out, tuple) else out

    opts = FitOptions.build(options, where=f"approx_reweight.{method}", **option_kwargs)
    return fit(
        X,
        y,
        beta=beta,
        objective=objective,
        weights=weights,
        theta_ref=theta_ref,
        options=opts,
        input_grad=False,
        method=method,
        hyper=hyper,
    )


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

    return _train(
        "chi2dpo",
        chi2_objective,
        {"rho": rho},
        X,
        y,
        beta=beta,
        weights=weights,
        theta_ref=theta_ref,
        options=options,
        option_kwargs=option_kwargs,
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

    return _train(
        "cvardpo",
        cvar_objective,
        {"level": level},
        X,
        y,
        beta=beta,
        weights=weights,
        theta_ref=theta_ref,
        options=options,
        option_kwargs=option_kwargs,
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

    return _train(
        "drdpo",
        drdpo_objective,
        {"beta_prime": bp},
        X,
        y,
        beta=beta,
        weights=weights,
        theta_ref=theta_ref,
        options=options,
        option_kwargs=option_kwargs,
    )
