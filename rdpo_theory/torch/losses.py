"""Preference losses in torch, on per-sequence log-probabilities (THEORY.md sections 1, 4, 6).

Every loss takes the four per-pair log-prob tensors of TRL's ``DPOTrainer`` convention, each of
shape (B,):

    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps

and forms the scaled margin ``m = beta * ((pc - rc) - (pr - rr))`` (for log-linear policies,
``m = sy * beta * (theta - theta_ref) . x``). The DPO per-pair loss is ``softplus(-m)`` in nats.
Robust methods aggregate the per-pair losses:

* KLDPO ``normalized`` (Algorithm 2): weights ``w_i = softmax_i((l_i - mean l) / tau)`` over the
  (global) batch, held constant; loss ``sum_i w_i l_i``. Its gradient is that of
  ``tau * log mean_i exp(l_i / tau)``.
* KLDPO ``clipped`` (the paper's code): ``w_i = min(exp((l_i - mean l) / tau), clip)``, held
  constant, loss ``mean_i w_i l_i`` over the local batch; the mean inside is global.
* WDPO ``sqrt-mean`` (Algorithm 1): ``mean_i l_i + rho0 * sqrt(mean_i ||grad_z l_i||^2)``.
* WDPO ``per-pair`` (the paper's code): ``mean_i (l_i + rho0 * ||grad_z l_i||^2)``.

Both KLDPO forms take their batch statistics over all workers of a ``torch.distributed`` group,
so N workers give the same weights as one worker on the concatenated batch. The numpy
mirror of each formula is in :mod:`rdpo_theory.losses`; tests check they agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import InputError

KL_VARIANTS = ("normalized", "clipped")
WDPO_VARIANTS = ("sqrt-mean", "per-pair")


@dataclass
class LossOutput:
    """A scalar ``loss`` to backpropagate plus per-pair diagnostics (all shape (B,))."""

    loss: torch.Tensor
    per_pair: torch.Tensor
    margins: torch.Tensor
    weights: torch.Tensor | None = None
    penalty: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------- checks
def _check_logps(*tensors: torch.Tensor) -> None:
    names = (
        "policy_chosen_logps",
        "policy_rejected_logps",
        "reference_chosen_logps",
        "reference_rejected_logps",
    )
    shape = None
    for name, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 1:
            raise InputError(f"{name} must have shape (B,), got {tuple(t.shape)}")
        if shape is None:
            shape = t.shape
        elif t.shape != shape:
            raise InputError(
                f"{name} has shape {tuple(t.shape)}; expected {tuple(shape)} "
                "like policy_chosen_logps"
            )


def _positive(x: float, name: str, *, allow_zero: bool = False) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {x!r}") from None
    if v != v or v in (float("inf"), float("-inf")) or v < 0 or (v == 0 and not allow_zero):
        raise InputError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {x}")
    return v


# ---------------------------------------------------------------------------- DPO
def dpo_margins(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
) -> torch.Tensor:
    """``m = beta * ((pc - rc) - (pr - rr))``, shape (B,)."""
    _check_logps(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    beta = _positive(beta, "beta")
    return beta * (
        (policy_chosen_logps - reference_chosen_logps)
        - (policy_rejected_logps - reference_rejected_logps)
    )


def dpo_pair_losses(margins: torch.Tensor) -> torch.Tensor:
    """DPO per-pair loss ``softplus(-m) = -log sigmoid(m)`` (nats), elementwise."""
    return F.softplus(-margins)


def dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
) -> LossOutput:
    """Plain DPO: ``mean_i softplus(-m_i)``."""
    m = dpo_margins(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    per = dpo_pair_losses(m)
    return LossOutput(per.mean(), per, m, stats=_margin_stats(m))


def _margin_stats(m: torch.Tensor) -> dict[str, float]:
    m = m.detach()
    return {"margin_mean": float(m.mean()), "accuracy": float((m > 0).float().mean())}


# ---------------------------------------------------------------------------- KLDPO
def _gather(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate a detached (B,) tensor over the workers of ``group`` (identity without one)."""
    x = x.detach()
    if not (dist.is_available() and dist.is_initialized()):
        return x
    world = dist.get_world_size(group)
    if world == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.numel()], device=x.device), group=group)
    n_max = int(max(s.item() for s in sizes))
    padded = torch.zeros(n_max, dtype=x.dtype, device=x.device)
    padded[: x.numel()] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def kl_weights(
    per_pair: torch.Tensor,
    *,
    tau: float,
    variant: str = "normalized",
    clip: float = 10.0,
    group=None,
) -> torch.Tensor:
    """KLDPO weights for the local pairs, detached, shape (B,), with global-batch statistics.

    ``normalized``: ``w_i = N * softmax_i((l_i - mean l) / tau)`` over the global batch of N
    pairs (so the weights average to 1 globally and ``mean_i w_i l_i`` over all pairs equals
    ``sum_i softmax_i l_i``). ``clipped``: ``w_i = min(exp((l_i - mean l) / tau), clip)``.
    """
    tau = _positive(tau, "tau")
    if variant not in KL_VARIANTS:
        raise InputError(f"variant must be one of {KL_VARIANTS}, got {variant!r}")
    local = per_pair.detach()
    glob = _gather(local, group)
    centre = glob.mean()
    if variant == "normalized":
        log_norm = torch.logsumexp((glob - centre) / tau, dim=0) - torch.log(
            torch.tensor(float(glob.numel()), dtype=glob.dtype, device=glob.device)
        )
        return torch.exp((local - centre) / tau - log_norm)
    clip = _positive(clip, "clip")
    return torch.clamp(torch.exp((local - centre) / tau), max=clip)


def kldpo_objective(
    per_pair: torch.Tensor,
    *,
    tau: float,
    variant: str = "normalized",
    clip: float = 10.0,
    group=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, weights)`` with ``loss = mean_i w_i l_i`` over the local batch and ``w`` from
    :func:`kl_weights` (no gradient through ``w``)."""
    w = kl_weights(per_pair, tau=tau, variant=variant, clip=clip, group=group)
    return (w * per_pair).mean(), w


def kldpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
    tau: float,
    variant: str = "normalized",
    clip: float = 10.0,
    group=None,
) -> LossOutput:
    """KLDPO (Algorithm 2 or the paper's clipped code) on DPO per-pair losses."""
    m = dpo_margins(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    per = dpo_pair_losses(m)
    loss, w = kldpo_objective(per, tau=tau, variant=variant, clip=clip, group=group)
    q = w / w.sum()
    stats = _margin_stats(m)
    stats.update(
        weight_entropy=float(-(q * torch.log(q.clamp_min(1e-30))).sum()), weight_max=float(q.max())
    )
    return LossOutput(loss, per, m, weights=w, stats=stats)


# ---------------------------------------------------------------------------- WDPO
def _as_inputs(inputs) -> tuple[torch.Tensor, ...]:
    if inputs is None:
        raise InputError(
            "WDPO needs inputs (the input embeddings, or x for log-linear data) "
            "with requires_grad=True; got None"
        )
    tup = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not tup:
        raise InputError("inputs is empty")
    for t in tup:
        if not isinstance(t, torch.Tensor) or not t.requires_grad:
            raise InputError(
                "every tensor in inputs must be a torch.Tensor with "
                "requires_grad=True (the loss must depend on it)"
            )
    return tup


def input_grad_sq_norms(per_pair: torch.Tensor, inputs) -> torch.Tensor:
    """``||grad_z l_i||_2^2`` for each pair, shape (B,), differentiable (double backward).

    ``inputs`` is a tensor or tuple of tensors whose leading dimension is the batch; pair i's
    loss must depend only on row i of each (true for per-sequence language-model losses). The
    squared norms of all tensors in ``inputs`` are added (e.g. chosen and rejected embeddings).
    """
    tup = _as_inputs(inputs)
    B = per_pair.shape[0]
    for t in tup:
        if t.shape[0] != B:
            raise InputError(f"inputs must have leading dimension B = {B}, got {tuple(t.shape)}")
    grads = torch.autograd.grad(per_pair.sum(), tup, create_graph=True, allow_unused=True)
    sq = per_pair.new_zeros(B)
    for g in grads:
        if g is not None:
            sq = sq + g.pow(2).reshape(B, -1).sum(dim=1)
    return sq


def wdpo_objective(
    per_pair: torch.Tensor, inputs, *, rho0: float, variant: str = "sqrt-mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, sq_norms)``: ``sqrt-mean``: ``mean l + rho0 sqrt(mean ||g_i||^2)``;
    ``per-pair``: ``mean (l_i + rho0 ||g_i||^2)``. Differentiable through the penalty."""
    rho0 = _positive(rho0, "rho0", allow_zero=True)
    if variant not in WDPO_VARIANTS:
        raise InputError(f"variant must be one of {WDPO_VARIANTS}, got {variant!r}")
    sq = input_grad_sq_norms(per_pair, inputs)
    if variant == "sqrt-mean":
        # sqrt has an infinite slope at 0; the clamp only matters when every gradient vanishes
        loss = per_pair.mean() + rho0 * torch.sqrt(sq.mean().clamp_min(1e-30))
    else:
        loss = (per_pair + rho0 * sq).mean()
    return loss, sq


def wdpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
    rho0: float,
    inputs,
    variant: str = "sqrt-mean",
) -> LossOutput:
    """WDPO gradient-regularised DPO (Algorithm 1 or the paper's per-pair code).

    ``inputs``: the policy's input-embedding tensors (requires_grad) that produced the chosen
    and rejected log-probs, each with leading dimension B.
    """
    _as_inputs(inputs)
    m = dpo_margins(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    per = dpo_pair_losses(m)
    loss, sq = wdpo_objective(per, inputs, rho0=rho0, variant=variant)
    stats = _margin_stats(m)
    stats.update(penalty=float(sq.detach().mean().sqrt()), variant_per_pair=variant == "per-pair")
    return LossOutput(loss, per, m, penalty=sq, stats=stats)
