"""Baseline preference losses in torch, on per-sequence log-probabilities
(docs/theory.md#baselines).

Same conventions as :mod:`rdpo_theory.torch.losses`: each ``*_loss`` takes the four per-pair
log-prob tensors of TRL's ``DPOTrainer`` (``policy_chosen_logps, policy_rejected_logps,
reference_chosen_logps, reference_rejected_logps``, each (B,)), forms the scaled margin
``m = beta * ((pc - rc) - (pr - rr))`` and returns a :class:`LossOutput` (each is written as
a function of the margins and wrapped by :func:`rdpo_theory.torch.losses.logp_loss`). The
per-pair and aggregate formulas are the numpy ones of :mod:`rdpo_theory.losses` (tests check
they agree):

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

from .. import _validate as V
from .. import losses as npl
from ..errors import InputError
from .losses import LossOutput, dpo_pair_losses, logp_loss


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
    beta = V.positive(beta, "beta")
    return (margins / beta - 0.5 / beta) ** 2


# ---------------------------------------------------------------------------- aggregates
@V.renamed_keyword("base_weights", "weights")
def drdpo_objective(per_pair: torch.Tensor, *, beta_prime: float, weights=None) -> torch.Tensor:
    """Dr. DPO ``-beta' log sum_i p_i exp(-l_i / beta')`` with ``p = weights`` (default
    ``1/B``); differentiable (its gradient weights are ``softmax_i(log p_i - l_i / beta')``)."""
    bp = V.positive(beta_prime, "beta_prime")
    logp = _log_base(per_pair, weights)
    return -bp * torch.logsumexp(logp - per_pair / bp, dim=0)


def _log_base(per_pair: torch.Tensor, weights) -> torch.Tensor:
    B = per_pair.shape[0]
    if weights is None:
        return per_pair.new_full((B,), -float(np.log(B)))
    w = torch.as_tensor(weights, dtype=per_pair.dtype, device=per_pair.device).detach()
    if w.shape != (B,) or torch.any(w < 0) or abs(float(w.sum()) - 1.0) > 1e-6:
        raise InputError(f"weights must be non-negative, shape ({B},), summing to 1")
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
    step = V.positive(step, "step", allow_zero=True)
    a = torch.as_tensor(group_weights, dtype=torch.float64)
    L = torch.as_tensor(group_losses, dtype=torch.float64).detach()
    z = torch.log(a) + step * L
    return torch.softmax(z, dim=0)


def _np_weights(per_pair: torch.Tensor, fn, weights, **kw) -> torch.Tensor:
    p = None if weights is None else torch.exp(_log_base(per_pair, weights))
    q = fn(
        per_pair.detach().to(torch.float64).cpu().numpy(),
        weights=None if p is None else p.detach().to(torch.float64).cpu().numpy(),
        **kw,
    )
    return torch.as_tensor(q, dtype=per_pair.dtype, device=per_pair.device)


@V.renamed_keyword("base_weights", "weights")
def chi2_objective(
    per_pair: torch.Tensor, *, rho: float, weights=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, q)``: chi-square DRO best response on the batch, ``loss = sum_i q_i l_i`` with
    ``q`` the worst case of ``{q : 1/2 sum_i p_i (q_i / p_i - 1)^2 <= rho}`` (held constant),
    ``p = weights`` (default ``1/B``)."""
    q = _np_weights(per_pair, npl.chi2_weights, weights, rho=rho)
    return (q * per_pair).sum(), q


@V.renamed_keyword("base_weights", "weights")
def cvar_objective(
    per_pair: torch.Tensor, *, level: float, weights=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, q)``: CVaR at tail fraction ``level`` on the batch, ``loss = sum_i q_i l_i`` with
    ``q_i <= p_i / level`` on the largest losses (held constant), ``p = weights``
    (default ``1/B``)."""
    q = _np_weights(per_pair, npl.cvar_weights, weights, level=level)
    return (q * per_pair).sum(), q


# ---------------------------------------------------------------------------- full losses
# Each is a function of the margins, turned into TRL's four-log-prob form by ``logp_loss``.
@logp_loss
def cdpo_loss(margins, *, beta: float, eps: float) -> LossOutput:
    """cDPO: ``mean_i cdpo(m_i)``."""
    per = cdpo_pair_losses(margins, eps=eps)
    return LossOutput(per.mean(), per, margins)


@logp_loss
def rdpo_loss(margins, *, beta: float, eps: float) -> LossOutput:
    """rDPO (known flip rate ``eps < 1/2``): ``mean_i rdpo(m_i)``."""
    per = rdpo_pair_losses(margins, eps=eps)
    return LossOutput(per.mean(), per, margins)


@logp_loss
def ipo_loss(margins, *, beta: float) -> LossOutput:
    """IPO: ``mean_i (h_i - 1 / (2 beta))^2``."""
    per = ipo_pair_losses(margins, beta=beta)
    return LossOutput(per.mean(), per, margins)


@logp_loss
def drdpo_loss(margins, *, beta: float, beta_prime: float) -> LossOutput:
    """Dr. DPO on DPO per-pair losses."""
    per = dpo_pair_losses(margins)
    bp = V.positive(beta_prime, "beta_prime")
    w = torch.softmax(-per.detach() / bp, dim=0)
    return LossOutput(drdpo_objective(per, beta_prime=bp), per, margins, weights=w)


@logp_loss
def group_dpo_loss(margins, *, beta: float, groups, group_weights=None) -> LossOutput:
    """Group-robust DPO on DPO per-pair losses; ``groups`` (B,) labels each pair's group."""
    per = dpo_pair_losses(margins)
    loss = group_robust_objective(per, groups, group_weights=group_weights)
    stats = {"worst_group_loss": float(group_means(per.detach(), groups).max())}
    return LossOutput(loss, per, margins, stats=stats)


@logp_loss
def chi2dpo_loss(margins, *, beta: float, rho: float) -> LossOutput:
    """chi-square DPO: best-response reweighting of DPO per-pair losses."""
    per = dpo_pair_losses(margins)
    loss, q = chi2_objective(per, rho=rho)
    return LossOutput(loss, per, margins, weights=q)


@logp_loss
def cvardpo_loss(margins, *, beta: float, level: float) -> LossOutput:
    """CVaR DPO: best-response reweighting of DPO per-pair losses."""
    per = dpo_pair_losses(margins)
    loss, q = cvar_objective(per, level=level)
    return LossOutput(loss, per, margins, weights=q)
