"""The newer robust preference objectives in torch, on TRL's four log-prob tensors
(docs/theory.md#dpo-pro, docs/theory.md#chipo, docs/theory.md#winsor-dpo,
docs/theory.md#dro-rebel).

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
* winsorised DPO ``(1 - r) [(1 - pi) softplus(-m) + pi softplus(m)] + r T`` with the flip
  probabilities ``pi``, caps ``r`` and threshold ``T`` of the batch computed on detached
  margins by :mod:`rdpo_theory.objective_kernels` (numpy; one copy of the kernel).
* DRO-REBEL ``e^2``, ``e = ((pc - rc) - (pr - rr)) / eta - reward_diff``, averaged plainly
  (REBEL), over the batch's chi-square worst case (exact, held constant) or with the
  KL-penalised weights ``softmax(e^2 / tau)`` (held constant: the gradient of ``tau log mean
  exp(e^2 / tau)``), as in the authors' code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import losses as npl
from .. import options as O
from ..errors import InputError
from ..objective_kernels import label_interval, winsor_weights
from .baselines import chi2_objective
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
    lo, hi = (
        torch.as_tensor(a, dtype=margins.dtype, device=margins.device)
        for a in label_interval(qt.to(torch.float64).cpu().numpy(), rho)
    )
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


@logp_loss
def winsor_dpo_loss(
    margins: torch.Tensor,
    *,
    beta: float,
    rho_f: float = 0.15,
    rho_w_max: float = 0.5,
    base_q: float = 0.7,
    tau_select: float = 1.0,
    rho_floor: float = 0.02,
    gamma: float = 1.0,
    warmup: bool = False,
    rho_w_warmup: float = 0.15,
) -> LossOutput:
    """Winsorised DPO (docs/theory.md#winsor-dpo): the batch mean of ``(1 - r) [(1 - pi)
    softplus(-m) + pi softplus(m)] + r T``, the flip probabilities ``pi``, caps ``r`` and
    threshold ``T`` computed from the detached margins (no gradient through them). With
    ``warmup=True`` (the authors' first 30% of steps) no pair is flipped and the
    winsorisation budget is the constant ``rho_w_warmup``. The statistics are the local
    batch's (each data-parallel worker winsorises its own batch, as the authors' code does).
    """
    for k, v, c in (("rho_f", rho_f, O.PROBABILITY), ("rho_w_max", rho_w_max, O.PROBABILITY),
                    ("base_q", base_q, O.PROBABILITY), ("tau_select", tau_select, O.POSITIVE),
                    ("rho_floor", rho_floor, O.PROBABILITY), ("gamma", gamma, O.POSITIVE),
                    ("rho_w_warmup", rho_w_warmup, O.PROBABILITY)):  # fmt: skip
        O.check(k, v, c, owner="winsor_dpo_loss")
    z = margins.detach().to(torch.float64).cpu().numpy()
    if warmup:
        kw = dict(rho_f=0.0, rho_w_max=rho_w_warmup, rho_floor=rho_w_warmup)
    else:
        kw = dict(rho_f=rho_f, rho_w_max=rho_w_max, rho_floor=rho_floor)
    pi, r, T, rho_w = winsor_weights(z, base_q=base_q, tau_select=tau_select, gamma=gamma, **kw)
    pi_t, r_t = (torch.as_tensor(a, dtype=margins.dtype, device=margins.device) for a in (pi, r))
    mixed = (1.0 - pi_t) * F.softplus(-margins) + pi_t * F.softplus(margins)
    per = (1.0 - r_t) * mixed + r_t * T
    out = LossOutput(per.mean(), per, margins, weights=(1.0 - r_t).detach())
    out.stats.update(flip_mass=pi_t.sum() / len(pi), capped_fraction=(r_t > 0).float().mean(),
                     threshold=torch.tensor(T), rho_w=torch.tensor(rho_w))  # fmt: skip
    return out


REBEL_BALLS = ("none", "chi2", "kl")


def rebel_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    reward_diff,
    eta: float,
    ball: str = "none",
    rho: float = 0.0,
    tau: float = 1.0,
) -> LossOutput:
    """REBEL and DRO-REBEL (docs/theory.md#dro-rebel) on the four log-probs (the "chosen"
    response is REBEL's ``a1``): per-pair ``e^2`` with ``e = ((pc - rc) - (pr - rr)) / eta
    - reward_diff`` (``reward_diff`` (B,) = ``r(a1) - r(a2)``), and

    * ``ball="none"``: the batch mean (REBEL);
    * ``ball="chi2"``: ``sum_i q_i e_i^2`` with ``q`` the exact worst case of the batch's
      chi-square ball of radius ``rho`` (held constant);
    * ``ball="kl"``: ``sum_i q_i e_i^2`` with ``q = softmax(e^2 / tau)`` held constant,
      whose gradient is that of the KL-penalised value ``tau log mean exp(e^2 / tau)`` (the
      authors' KL-REBEL; ``stats["kl_value"]`` reports that value).

    ``margins`` in the output are the unscaled log-ratio differences; ``per_pair`` the
    squared residuals."""
    if ball not in REBEL_BALLS:
        raise InputError(f"ball must be one of {REBEL_BALLS}, got {ball!r}")
    m = dpo_margins(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=1.0,
    )
    eta = O.check("eta", eta, O.POSITIVE, owner="rebel_loss")
    dr = torch.as_tensor(reward_diff, dtype=m.dtype, device=m.device).detach()
    if dr.shape != m.shape:
        raise InputError(f"reward_diff must have shape {tuple(m.shape)}, got {tuple(dr.shape)}")
    per = (m / eta - dr) ** 2
    weights = None
    if ball == "none":
        loss = per.mean()
    elif ball == "chi2":
        rho = O.check("rho", rho, O.NONNEGATIVE, owner="rebel_loss")
        loss, weights = chi2_objective(per, rho=rho)
    else:
        tau = O.check("tau", tau, O.POSITIVE, owner="rebel_loss")
        w = npl.kl_weights(per.detach().to(torch.float64).cpu().numpy(), tau=tau)
        weights = torch.as_tensor(w / len(w), dtype=per.dtype, device=per.device)
        loss = (weights * per).sum()
    out = LossOutput(loss, per, m, weights=None if weights is None else weights.detach())
    if ball == "kl":
        kl_value = npl.kl_tilted_value(per.detach().cpu().numpy(), tau=tau)
        out.stats["kl_value"] = torch.tensor(kl_value, dtype=per.dtype)
    return out


__all__ = [
    "REBEL_BALLS",
    "chipo_loss",
    "dpo_pro_loss",
    "dpo_pro_pair_losses",
    "rebel_loss",
    "winsor_dpo_loss",
]
