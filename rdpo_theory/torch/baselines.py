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
  gradient is the gradient of the robust objective. The weights are computed on the global
  batch (every worker's losses gathered, as KLDPO does) by the ball's own numpy kernel,
  :meth:`rdpo_theory.divergences.AmbiguitySet.pair_weights` (one source of truth; N scalars
  per step).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import _validate as V
from .. import divergences as D
from .. import losses as npl
from ..errors import InputError
from .losses import (
    LossOutput,
    batch_probabilities,
    check_pair_weights,
    dpo_pair_losses,
    gather_batch,
    logp_loss,
    weighted_mean,
)


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


def ball_objective(
    per_pair: torch.Tensor, *, divergence, rho: float, weights=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, q)``: the best response of a divergence ball on the batch (any set of
    :mod:`rdpo_theory.divergences` that reweights, by family id or object),
    ``loss = sum_i q_i l_i`` with ``q`` its worst case at ball size ``rho`` around
    ``p = weights`` (default ``1/B``), held constant."""
    p = None if weights is None else torch.exp(_log_base(per_pair, weights))
    q = D.get(divergence).torch_pair_weights(per_pair, rho, weights=p)
    return (q * per_pair).sum(), q


@V.renamed_keyword("base_weights", "weights")
def chi2_objective(
    per_pair: torch.Tensor, *, rho: float, weights=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, q)``: chi-square DRO best response on the batch, ``loss = sum_i q_i l_i`` with
    ``q`` the worst case of ``{q : 1/2 sum_i p_i (q_i / p_i - 1)^2 <= rho}`` (held constant),
    ``p = weights`` (default ``1/B``)."""
    return ball_objective(per_pair, divergence="chi2", rho=rho, weights=weights)


@V.renamed_keyword("base_weights", "weights")
def cvar_objective(
    per_pair: torch.Tensor, *, level: float, weights=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, q)``: CVaR at tail fraction ``level`` on the batch, ``loss = sum_i q_i l_i`` with
    ``q_i <= p_i / level`` on the largest losses (held constant), ``p = weights``
    (default ``1/B``)."""
    return ball_objective(per_pair, divergence="cvar", rho=level, weights=weights)


# ---------------------------------------------------------------------------- full losses
# Each is a function of the margins, turned into TRL's four-log-prob form by ``logp_loss``.
# Every one takes optional per-pair data weights ``weights`` (B,) >= 0: the mean becomes the
# global weighted mean (``torch.losses.weighted_mean``), the balls are centred at
# ``p = w / sum w``, and a pair of weight k counts as k copies of it.
@logp_loss
def cdpo_loss(margins, *, beta: float, eps: float, weights=None, group=None) -> LossOutput:
    """cDPO: ``mean_i cdpo(m_i)`` (weighted mean with ``weights``)."""
    per = cdpo_pair_losses(margins, eps=eps)
    return LossOutput(weighted_mean(per, weights, group=group), per, margins)


@logp_loss
def rdpo_loss(margins, *, beta: float, eps: float, weights=None, group=None) -> LossOutput:
    """rDPO (known flip rate ``eps < 1/2``): ``mean_i rdpo(m_i)`` (weighted with ``weights``)."""
    per = rdpo_pair_losses(margins, eps=eps)
    return LossOutput(weighted_mean(per, weights, group=group), per, margins)


@logp_loss
def ipo_loss(margins, *, beta: float, weights=None, group=None) -> LossOutput:
    """IPO: ``mean_i (h_i - 1 / (2 beta))^2`` (weighted with ``weights``)."""
    per = ipo_pair_losses(margins, beta=beta)
    return LossOutput(weighted_mean(per, weights, group=group), per, margins)


@logp_loss
def drdpo_loss(margins, *, beta: float, beta_prime: float, weights=None) -> LossOutput:
    """Dr. DPO on DPO per-pair losses, on the local batch; with ``weights`` the base measure
    is ``p = w / sum_{local} w``."""
    per = dpo_pair_losses(margins)
    bp = V.positive(beta_prime, "beta_prime")
    p = None
    if weights is not None:
        w = check_pair_weights(weights, per)
        if not float(w.sum()) > 0:
            raise InputError("weights are all 0 in this batch: at least one pair needs weight > 0")
        p = (w / w.sum()).to(per.dtype)
    q = torch.softmax(_log_base(per, p) - per.detach() / bp, dim=0)
    return LossOutput(drdpo_objective(per, beta_prime=bp, weights=p), per, margins, weights=q)


@logp_loss
def group_dpo_loss(
    margins,
    *,
    beta: float,
    groups,
    group_weights=None,
    group_step: float | None = None,
    n_groups: int | None = None,
    weights=None,
    process_group=None,
) -> LossOutput:
    """Group-robust DPO on DPO per-pair losses; ``groups`` (B,) labels each pair's group.

    Two forms:

    * batch form (``group_step=None``): ``max_g L_g`` (``group_weights=None``) or
      ``sum_g alpha_g L_g`` over the groups present in the local batch
      (:func:`group_robust_objective`);
    * online form (Ramesh et al. 2024; ``group_step`` eta given, the trainer's form):
      ``groups`` are integer indices in ``[0, n_groups)`` and ``group_weights`` alpha (G,) the
      current weights. The group losses ``L_g = sum_{i in g} w_i l_i / sum_{i in g} w_i`` are
      taken over the global batch (sums all-reduced across the workers of ``process_group``),
      the weights take one exponentiated-gradient step
      ``alpha_g <- alpha_g exp(eta L_g) / Z`` (groups absent from the batch keep their
      log-weight), and the loss is ``sum_g alpha_g L_g`` with the new alpha, scaled so that
      the data-parallel average of the gradients is its gradient. ``LossOutput.group_weights``
      holds the new alpha (identical on every worker); ``stats["worst_group_loss"]`` the
      largest ``L_g`` in the batch.
    """
    per = dpo_pair_losses(margins)
    if group_step is None:
        if weights is not None:
            raise InputError("weights need the online form of group_dpo_loss (give group_step)")
        loss = group_robust_objective(per, groups, group_weights=group_weights)
        stats = {"worst_group_loss": float(group_means(per.detach(), groups).max())}
        return LossOutput(loss, per, margins, stats=stats)
    step = V.positive(group_step, "group_step", allow_zero=True)
    if n_groups is None or group_weights is None:
        raise InputError("the online form of group_dpo_loss needs n_groups and group_weights")
    idx = torch.as_tensor(groups, device=per.device).long()
    if idx.shape != per.shape or bool((idx < 0).any()) or bool((idx >= n_groups).any()):
        raise InputError(f"groups must be {per.shape[0]} integer indices in [0, {n_groups})")
    alpha = torch.as_tensor(group_weights, dtype=torch.float64).detach()
    if alpha.shape != (n_groups,) or bool((alpha < 0).any()):
        raise InputError(f"group_weights must be {n_groups} non-negative numbers")
    w = (
        torch.ones_like(per.detach(), dtype=torch.float64)
        if weights is None
        else check_pair_weights(weights, per).to(torch.float64)
    )
    # global per-group weight mass, weighted loss sums and pair counts (one all_reduce)
    sums = torch.zeros(3, n_groups, dtype=torch.float64, device=per.device)
    sums[0].index_add_(0, idx, w)
    sums[1].index_add_(0, idx, w * per.detach().to(torch.float64))
    sums[2].index_add_(0, idx, torch.ones_like(w))
    n_all = torch.tensor([float(per.numel())], dtype=torch.float64, device=per.device)
    if _world(process_group) > 1:
        import torch.distributed as dist

        dist.all_reduce(sums, group=process_group)
        dist.all_reduce(n_all, group=process_group)
    mass, tot, _ = sums
    present = mass > 0
    L = torch.where(present, tot / mass.clamp_min(1e-300), torch.zeros_like(tot)).cpu()
    z = torch.log(alpha) + step * torch.where(present.cpu(), L, torch.zeros_like(L))
    alpha = torch.softmax(z, dim=0)
    coef = (alpha.to(per.device) / mass.clamp_min(1e-300))[idx] * w  # alpha_g w_i / W_g
    loss = (coef.to(per.dtype) * per).sum() * (float(n_all) / per.numel())
    stats = {"worst_group_loss": L[present.cpu()].max()}
    return LossOutput(loss, per, margins, stats=stats, group_weights=alpha)


def _world(process_group) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def _ball_objective(per, weights, group, ball: D.AmbiguitySet, param: float):
    """Best response of a ball around ``p`` on the global batch (gathered like KLDPO), held
    constant: the local share of ``sum_{global} q_i l_i`` and the local q."""
    glob, start = gather_batch(per.detach().to(torch.float64), group)
    p_glob = None
    if weights is not None:
        p, _ = batch_probabilities(weights, per, group)
        p_glob = gather_batch(p.to(torch.float64), group)[0].cpu().numpy()
    q = ball.pair_weights(glob.cpu().numpy(), param, weights=p_glob)
    q_loc = torch.as_tensor(q[start : start + per.numel()], dtype=per.dtype, device=per.device)
    return (q_loc * per).sum() * (glob.numel() / per.numel()), q_loc


@logp_loss
def chi2dpo_loss(margins, *, beta: float, rho: float, weights=None, group=None) -> LossOutput:
    """chi-square DPO: best-response reweighting of DPO per-pair losses over the global batch
    (every worker of ``group``), centred at ``p = w / sum w`` with ``weights``."""
    per = dpo_pair_losses(margins)
    loss, q = _ball_objective(per, weights, group, D.ChiSquare(), rho)
    return LossOutput(loss, per, margins, weights=q)


@logp_loss
def cvardpo_loss(margins, *, beta: float, level: float, weights=None, group=None) -> LossOutput:
    """CVaR DPO: best-response reweighting of DPO per-pair losses over the global batch
    (every worker of ``group``), centred at ``p = w / sum w`` with ``weights``."""
    per = dpo_pair_losses(margins)
    loss, q = _ball_objective(per, weights, group, D.CVaR(), level)
    return LossOutput(loss, per, margins, weights=q)
