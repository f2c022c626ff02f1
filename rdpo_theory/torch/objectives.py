"""The newer robust preference objectives in torch, on TRL's four log-prob tensors
(docs/theory.md#dpo-pro, docs/theory.md#chipo).

Same conventions as :mod:`rdpo_theory.torch.losses`: each loss takes
``policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
reference_rejected_logps`` (each (B,), nats) and keyword-only parameters, and returns a
:class:`~rdpo_theory.torch.losses.LossOutput` whose ``loss`` is the (weighted) batch mean of
the per-pair losses. The numpy mirrors are :func:`rdpo_theory.exact.dpo_pro.dpo_pro_loss` and
:func:`rdpo_theory.exact.chipo.chipo_loss` (tests check they agree). This module imports no
cvxpy.

* DPO-PRO ``softplus(m) + max(-lo m, -hi m)`` with ``[lo, hi]`` the chi-square ball of radius
  ``rho`` around the pair's soft label ``q`` (the probability that the recorded preference is
  right; 1 for hard labels, where DPO-PRO is DPO).
* chi-PO ``softplus(-clip_{2 r_max}[beta (phi(r_w) - phi(r_l))])`` with ``phi(r) = r + log r``
  and ``log r`` the policy/reference log-ratio of each response.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import options as O
from ..errors import InputError
from .losses import LossOutput, dpo_margins, dpo_pair_losses, logp_loss, weighted_mean


def _soft_labels(q, like: torch.Tensor) -> torch.Tensor:
    qt = torch.as_tensor(q, dtype=like.dtype, device=like.device).detach()
    if qt.ndim == 0:
        qt = qt.expand_as(like)
    if qt.shape != like.shape or bool(torch.any((qt < 0) | (qt > 1))):
        raise InputError(f"q must be a scalar or shape {tuple(like.shape)} with entries in [0, 1]")
    return qt


def dpo_pro_pair_losses(margins: torch.Tensor, q, *, rho: float) -> torch.Tensor:
    """DPO-PRO per-pair loss (nats): ``softplus(m) + max(-lo m, -hi m)``, with
    ``lo, hi = clip(q -+ sqrt(rho q (1 - q)), 0, 1)`` (docs/theory.md#dpo-pro)."""
    rho = O.check("rho", rho, O.NONNEGATIVE, owner="dpo_pro_loss")
    qt = _soft_labels(q, margins)
    delta = torch.sqrt(rho * qt * (1.0 - qt))
    lo, hi = (qt - delta).clamp(0.0, 1.0), (qt + delta).clamp(0.0, 1.0)
    return F.softplus(margins) + torch.maximum(-lo * margins, -hi * margins)


@logp_loss
def dpo_pro_loss(
    margins: torch.Tensor,
    *,
    beta: float,
    rho: float,
    q=1.0,
    weights: torch.Tensor | None = None,
    group=None,
) -> LossOutput:
    """DPO-PRO (label-only chi-square ambiguity; docs/theory.md#dpo-pro): the weighted mean of
    :func:`dpo_pro_pair_losses`. ``q`` (scalar or (B,)): the probability that each recorded
    preference is right (soft labels); with ``q = 1`` the loss is DPO's."""
    per = dpo_pro_pair_losses(margins, q, rho=rho)
    out = LossOutput(weighted_mean(per, weights, group=group), dpo_pair_losses(margins), margins)
    out.stats["pro_penalty"] = (per - F.softplus(-margins)).detach().mean()
    return out


def chipo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
    r_max: float,
    weights: torch.Tensor | None = None,
    group=None,
) -> LossOutput:
    """chi-PO (docs/theory.md#chipo): ``mean_i softplus(-clip(beta (phi(r_w) - phi(r_l)),
    -2 r_max, 2 r_max))`` with ``phi(r) = r + log r`` and ``log r = policy - reference``
    log-probs of each response. ``margins`` in the output are DPO's (for diagnostics);
    ``per_pair`` are the chi-PO losses."""
    m = dpo_margins(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    r_max = O.check("r_max", r_max, O.POSITIVE, owner="chipo_loss")
    lw = policy_chosen_logps - reference_chosen_logps
    ll = policy_rejected_logps - reference_rejected_logps
    raw = beta * ((torch.exp(lw) + lw) - (torch.exp(ll) + ll))
    per = F.softplus(-raw.clamp(-2.0 * r_max, 2.0 * r_max))
    out = LossOutput(weighted_mean(per, weights, group=group), per, m)
    out.stats["clipped_fraction"] = (raw.detach().abs() >= 2.0 * r_max).float().mean()
    return out


__all__ = ["chipo_loss", "dpo_pro_loss", "dpo_pro_pair_losses"]
