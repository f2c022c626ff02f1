"""Baseline preference losses in torch, on per-sequence log-probabilities (THEORY.md section 6).

Same conventions as :mod:`rdpo_theory.torch.losses`: each ``*_loss`` takes the four per-pair
log-prob tensors of TRL's ``DPOTrainer`` (``policy_chosen_logps, policy_rejected_logps,
reference_chosen_logps, reference_rejected_logps``, each (B,)), forms the scaled margin
``m = beta * ((pc - rc) - (pr - rr))`` and returns a :class:`LossOutput`. The per-pair and
aggregate formulas are the numpy ones of :mod:`rdpo_theory.losses` (tests check they agree):

* cDPO ``(1 - eps) softplus(-m) + eps softplus(m)``;
* rDPO ``((1 - eps) softplus(-m) - eps softplus(m)) / (1 - 2 eps)``, ``eps < 1/2``;
* IPO ``(m / beta - 1 / (2 beta))^2``;
* Dr. DPO ``-beta' log mean_i exp(-l_i / beta')`` (gradient flows through the soft-min);
* group-robust DPO ``max_g L_g`` or ``sum_g alpha_g L_g`` with online group weights;
* chi-square and CVaR DPO: best-response weights of the ball around the batch's empirical law,
  held constant (no gradient through them), loss ``sum_i q_i l_i``. By Danskin's theorem its
  gradient is the gradient of the robust objective. The weights are computed on the local
  batch by the exact numpy routines (one source of truth; B scalars per step).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import losses as npl
from ..errors import InputError
from .losses import LossOutput, _margin_stats, _positive, dpo_margins, dpo_pair_losses


# ---------------------------------------------------------------------------- per-pair losses
def cdpo_pair_losses(margins: torch.Tensor, *, eps: float) -> torch.Tensor:
    """cDPO per-pair loss ``(1 - eps) softplus(-m) + eps softplus(m)`` (nats)."""
    eps = npl.check_eps(eps, method="cdpo")
    return (1.0 - eps) * F.softplus(-margins) + eps * F.softplus(margins)


def rdpo_pair_losses(margins: torch.Tensor, *, eps: float) -> torch.Tensor:
    """rDPO per-pair loss ``((1 - eps) softplus(-m) - eps softplus(m)) / (1 - 2 eps)``,
    computed as the identical ``softplus(-m) - eps m / (1 - 2 eps)`` (no cancellation)."""
    eps = npl.check_eps(eps, method="rdpo")
    return F.softplus(-margins) - eps * margins / (1.0 - 2.0 * eps)


def ipo_pair_losses(margins: torch.Tensor, *, beta: float) -> torch.Tensor:
    """IPO per-pair loss ``(m / beta - 1 / (2 beta))^2`` with ``m / beta`` the log-ratio margin."""
    beta = _positive(beta, "beta")
    return (margins / beta - 0.5 / beta) ** 2


# ---------------------------------------------------------------------------- aggregates
def drdpo_objective(
    per_pair: torch.Tensor, *, beta_prime: float, base_weights=None
) -> torch.Tensor:
    """Dr. DPO ``-beta' log sum_i p_i exp(-l_i / beta')`` with ``p = base_weights`` (default
    ``1/B``); differentiable (its gradient weights are ``softmax_i(log p_i - l_i / beta')``)."""
    bp = _positive(beta_prime, "beta_prime")
    logp = _log_base(per_pair, base_weights)
    return -bp * torch.logsumexp(logp - per_pair / bp, dim=0)


def _log_base(per_pair: torch.Tensor, base_weights) -> torch.Tensor:
    B = per_pair.shape[0]
    if base_weights is None:
        return per_pair.new_full((B,), -float(np.log(B)))
    w = torch.as_tensor(base_weights, dtype=per_pair.dtype, device=per_pair.device).detach()
    if w.shape != (B,) or torch.any(w < 0) or abs(float(w.sum()) - 1.0) > 1e-6:
        raise InputError(f"base_weights must be non-negative, shape ({B},), summing to 1")
    return torch.log(w)


def _group_index(groups, B: int, device) -> tuple[torch.Tensor, int]:
    g = groups.detach().cpu().numpy() if isinstance(groups, torch.Tensor) else np.asarray(groups)
    _, idx = npl.group_indices(g, B)
    return torch.as_tensor(idx, device=device), int(idx.max()) + 1


def group_means(per_pair: torch.Tensor, groups) -> torch.Tensor:
    """Mean loss of each group present in the batch, ordered by sorted group label, (G,)."""
    idx, G = _group_index(groups, per_pair.shape[0], per_pair.device)
    tot = torch.zeros(G, dtype=per_pair.dtype, device=per_pair.device).index_add(0, idx, per_pair)
    cnt = torch.bincount(idx, minlength=G).to(per_pair.dtype)
    return tot / cnt


def group_robust_objective(per_pair: torch.Tensor, groups, *, group_weights=None) -> torch.Tensor:
    """Group-robust DPO on a batch: ``max_g L_g`` (``group_weights=None``) or
    ``sum_g alpha_g L_g`` for given weights ``alpha`` (G,) over the groups present in the batch
    (the online form of Ramesh et al. 2024, with alpha updated by :func:`update_group_weights`).
    """
    L = group_means(per_pair, groups)
    if group_weights is None:
        return L.max()
    a = torch.as_tensor(group_weights, dtype=per_pair.dtype, device=per_pair.device)
    if a.shape != L.shape:
        raise InputError(f"group_weights must have shape {tuple(L.shape)}, got {tuple(a.shape)}")
    if torch.any(a < 0) or abs(float(a.sum()) - 1.0) > 1e-6:
        raise InputError("group_weights must be non-negative and sum to 1")
    return (a * L).sum()


def update_group_weights(group_weights, group_losses, *, step: float) -> torch.Tensor:
    """Exponentiated-gradient ascent ``alpha_g <- alpha_g exp(step L_g) / Z`` (Ramesh et al.)."""
    step = _positive(step, "step", allow_zero=True)
    a = torch.as_tensor(group_weights, dtype=torch.float64)
    L = torch.as_tensor(group_losses, dtype=torch.float64).detach()
    z = torch.log(a) + step * L
    return torch.softmax(z, dim=0)


def _np_weights(per_pair: torch.Tensor, fn, base_weights, **kw) -> torch.Tensor:
    p = None if base_weights is None else torch.exp(_log_base(per_pair, base_weights))
    q = fn(
        per_pair.detach().to(torch.float64).cpu().numpy(),
        weights=None if p is None else p.detach().to(torch.float64).cpu().numpy(),
        **kw,
    )
    return torch.as_tensor(q, dtype=per_pair.dtype, device=per_pair.device)


def chi2_objective(
    per_pair: torch.Tensor, *, rho: float, base_weights=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, q)``: chi-square DRO best response on the batch, ``loss = sum_i q_i l_i`` with
    ``q`` the worst case of ``{q : 1/2 sum_i p_i (q_i / p_i - 1)^2 <= rho}`` (held constant),
    ``p = base_weights`` (default ``1/B``)."""
    q = _np_weights(per_pair, npl.chi2_weights, base_weights, rho=rho)
    return (q * per_pair).sum(), q


def cvar_objective(
    per_pair: torch.Tensor, *, level: float, base_weights=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, q)``: CVaR at tail fraction ``level`` on the batch, ``loss = sum_i q_i l_i`` with
    ``q_i <= p_i / level`` on the largest losses (held constant), ``p = base_weights``
    (default ``1/B``)."""
    q = _np_weights(per_pair, npl.cvar_weights, base_weights, level=level)
    return (q * per_pair).sum(), q


# ---------------------------------------------------------------------------- full losses
def cdpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
    eps: float,
) -> LossOutput:
    """cDPO: ``mean_i cdpo(m_i)``."""
    m = dpo_margins(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    per = cdpo_pair_losses(m, eps=eps)
    return LossOutput(per.mean(), per, m, stats=_margin_stats(m))


def rdpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
    eps: float,
) -> LossOutput:
    """rDPO (known flip rate ``eps < 1/2``): ``mean_i rdpo(m_i)``."""
    m = dpo_margins(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    per = rdpo_pair_losses(m, eps=eps)
    return LossOutput(per.mean(), per, m, stats=_margin_stats(m))


def ipo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
) -> LossOutput:
    """IPO: ``mean_i (h_i - 1 / (2 beta))^2``."""
    m = dpo_margins(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    per = ipo_pair_losses(m, beta=beta)
    return LossOutput(per.mean(), per, m, stats=_margin_stats(m))


def drdpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
    beta_prime: float,
) -> LossOutput:
    """Dr. DPO on DPO per-pair losses."""
    m = dpo_margins(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    per = dpo_pair_losses(m)
    bp = _positive(beta_prime, "beta_prime")
    w = torch.softmax(-per.detach() / bp, dim=0)
    return LossOutput(
        drdpo_objective(per, beta_prime=bp), per, m, weights=w, stats=_margin_stats(m)
    )


def group_dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
    groups,
    group_weights=None,
) -> LossOutput:
    """Group-robust DPO on DPO per-pair losses; ``groups`` (B,) labels each pair's group."""
    m = dpo_margins(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    per = dpo_pair_losses(m)
    loss = group_robust_objective(per, groups, group_weights=group_weights)
    stats = _margin_stats(m)
    stats["worst_group_loss"] = float(group_means(per.detach(), groups).max())
    return LossOutput(loss, per, m, stats=stats)


def chi2dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
    rho: float,
) -> LossOutput:
    """chi-square DPO: best-response reweighting of DPO per-pair losses."""
    m = dpo_margins(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    per = dpo_pair_losses(m)
    loss, q = chi2_objective(per, rho=rho)
    return LossOutput(loss, per, m, weights=q, stats=_margin_stats(m))


def cvardpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
    level: float,
) -> LossOutput:
    """CVaR DPO: best-response reweighting of DPO per-pair losses."""
    m = dpo_margins(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    per = dpo_pair_losses(m)
    loss, q = cvar_objective(per, level=level)
    return LossOutput(loss, per, m, weights=q, stats=_margin_stats(m))
