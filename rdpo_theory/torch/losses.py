"""Preference losses in torch, on per-sequence log-probabilities (docs/theory.md#dpo-loss,
docs/theory.md#code-variants, docs/theory.md#baselines).

Every loss takes the four per-pair log-prob tensors of TRL's ``DPOTrainer`` convention, each of
shape (B,) and in nats:

    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps

and forms the scaled margin ``m = beta * ((pc - rc) - (pr - rr))`` (for log-linear policies,
``m = sy * beta * (theta - theta_ref) . x``). The DPO per-pair loss is ``softplus(-m)`` in nats.
Robust methods aggregate the per-pair losses:

* KLDPO ``normalized`` (Algorithm 2): weights ``w_i = N softmax_i((l_i - mean l) / tau)`` over
  the (global) batch of N pairs, held constant; loss ``mean_i w_i l_i``. Its gradient is that of
  ``tau * log mean_i exp(l_i / tau)``, the KL dual at the fixed multiplier ``lam = tau``.
* KLDPO ``clipped`` (the paper's code): ``w_i = min(exp((l_i - mean l) / tau), clip)``, held
  constant, loss ``mean_i w_i l_i`` over the local batch; the mean inside is global.
* WDPO ``sqrt-mean`` (Algorithm 1): ``mean_i l_i + rho0 * sqrt(mean_i ||grad_z l_i||^2)``.
* WDPO ``per-pair`` (the paper's code): ``mean_i (l_i + rho0 * ||grad_z l_i||^2)``.

Both KLDPO forms take their batch statistics over all workers of a ``torch.distributed`` group
(all_gather), so N workers give the same weights as one worker on the concatenated batch; with
equal local batch sizes the data-parallel average of the local gradients is then the one-worker
gradient. The numpy mirror of each formula is in :mod:`rdpo_theory.losses`; tests check they
agree.

Each ``*_loss`` is written as a function of the margins and turned into this four-tensor form
by :func:`logp_loss` (one wrapper for every loss): call it as
``dpo_loss(pc, pr, rc, rr, beta=0.1)``, ``kldpo_loss(pc, pr, rc, rr, beta=0.1, tau=1.0)``;
``inspect.signature`` shows the four tensors and the keyword-only parameters.

Diagnostics go in ``LossOutput.stats`` as detached 0-d tensors, so computing a loss never forces
a host-device synchronisation; call ``float()`` on them when logging.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import _validate as V
from ..errors import InputError
from .guards import check_finite_inputs

KL_VARIANTS = ("normalized", "clipped")
WDPO_VARIANTS = ("sqrt-mean", "per-pair")

LOGP_NAMES = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "reference_chosen_logps",
    "reference_rejected_logps",
)


@dataclass
class LossOutput:
    """What every loss returns.

    Attributes
    ----------
    loss : Tensor, shape ()
        The scalar to backpropagate.
    per_pair : Tensor, shape (B,)
        Per-pair DPO losses ``l_i`` (nats), with gradient.
    margins : Tensor, shape (B,)
        Scaled margins ``m_i``, with gradient.
    weights : Tensor, shape (B,), optional
        KLDPO weights of the local pairs (detached).
    penalty : Tensor, shape (B,), optional
        WDPO squared input-gradient norms ``||grad_z l_i||^2`` (with gradient).
    stats : dict[str, Tensor]
        Detached 0-d diagnostics (``margin_mean``, ``accuracy``, and per method
        ``weight_entropy``, ``weight_max``, ``kl_radius``, ``penalty``, ``grad_rms``).
    """

    loss: torch.Tensor
    per_pair: torch.Tensor
    margins: torch.Tensor
    weights: torch.Tensor | None = None
    penalty: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    group_weights: torch.Tensor | None = None


# ---------------------------------------------------------------------------- checks
def _check_logps(*tensors: torch.Tensor) -> None:
    shape = None
    for name, t in zip(LOGP_NAMES, tensors):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 1:
            raise InputError(f"{name} must have shape (B,), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise InputError(f"{name} must be a floating tensor, got dtype {t.dtype}")
        if shape is None:
            shape = t.shape
            if t.numel() == 0:
                raise InputError(f"{name} is empty: B = 0 pairs")
        elif t.shape != shape:
            raise InputError(
                f"{name} has shape {tuple(t.shape)}; expected {tuple(shape)} "
                "like policy_chosen_logps"
            )
    check_finite_inputs(zip(LOGP_NAMES, tensors))  # only under set_debug / RDPO_DEBUG


def _check_per_pair(per_pair) -> None:
    if not isinstance(per_pair, torch.Tensor) or per_pair.ndim != 1 or per_pair.numel() == 0:
        shape = tuple(per_pair.shape) if isinstance(per_pair, torch.Tensor) else type(per_pair)
        raise InputError(f"per_pair must be a non-empty tensor of shape (B,), got {shape}")
    check_finite_inputs([("per_pair", per_pair)])


def accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float32 for half precisions, the tensor's own dtype otherwise."""
    return torch.promote_types(t.dtype, torch.float32)


# ---------------------------------------------------------------------------- DPO
def dpo_margins(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
) -> torch.Tensor:
    """Scaled implicit-reward margins ``m = beta * ((pc - rc) - (pr - rr))``, shape (B,).

    A log-probability is never ``+inf`` or NaN: a pair with such a value in any of the four
    tensors gets a NaN margin, so every loss built on the margins is NaN, never a finite
    number (``+inf`` in the policy's chosen log-prob would otherwise give the finite DPO loss
    0). This costs no host-device synchronisation; the trainer's ``on_nonfinite`` rule then
    stops (or skips) the step naming the tensor, and with the debug flag
    (:func:`rdpo_theory.torch.guards.set_debug`, ``RDPO_DEBUG=1``) the call raises
    :class:`~rdpo_theory.errors.InputError` naming it. ``-inf`` (probability 0) is a
    log-probability and is left to the arithmetic.

    Parameters
    ----------
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
        Tensors of shape (B,): summed log-probabilities (nats) of each completion.
    beta : float > 0
        DPO temperature.
    """
    logps = (
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
    )
    _check_logps(*logps)
    beta = V.positive(beta, "beta")
    m = beta * (
        (policy_chosen_logps - reference_chosen_logps)
        - (policy_rejected_logps - reference_rejected_logps)
    )
    impossible = torch.zeros_like(m, dtype=torch.bool)
    for t in logps:
        impossible = impossible | torch.isposinf(t) | torch.isnan(t)
    return torch.where(impossible, torch.full_like(m, float("nan")), m)


def dpo_pair_losses(margins: torch.Tensor) -> torch.Tensor:
    """DPO per-pair loss ``l = softplus(-m) = -log sigmoid(m)`` (nats), elementwise.

    The numpy mirror is :func:`rdpo_theory.losses.dpo_loss`."""
    return F.softplus(-margins)


def margin_stats(m: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached 0-d diagnostics of margins ``m`` (B,): ``margin_mean`` and ``accuracy`` (the
    fraction of pairs with ``m > 0``)."""
    m = m.detach()
    return {"margin_mean": m.mean(), "accuracy": (m > 0).float().mean()}


def logp_loss(margin_loss):
    """Turn a loss of the margins into a loss of TRL's four log-prob tensors.

    ``margin_loss(margins, *, beta, **params) -> LossOutput`` receives the scaled margins
    ``m = beta * ((pc - rc) - (pr - rr))`` (B,) of :func:`dpo_margins` (which validates the four
    tensors and ``beta``). The returned function is

        loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps, *, beta, **params) -> LossOutput

    with ``margin_loss``'s name, docstring and keyword-only parameters, so
    ``inspect.signature`` lists exactly what the loss takes (the trainer validates
    ``TrainConfig.loss_kwargs`` against it). ``stats`` gets ``margin_mean`` and ``accuracy``
    (:func:`margin_stats`) unless ``margin_loss`` set them.
    """
    sig = inspect.signature(margin_loss)
    params = [p for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if "beta" not in {p.name for p in params}:
        raise TypeError(f"{margin_loss.__name__} must take a keyword-only 'beta'")

    @functools.wraps(margin_loss)
    def loss(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        *,
        beta: float,
        **kwargs,
    ) -> LossOutput:
        m = dpo_margins(
            policy_chosen_logps,
            policy_rejected_logps,
            reference_chosen_logps,
            reference_rejected_logps,
            beta=beta,
        )
        out = margin_loss(m, beta=beta, **kwargs)
        for k, v in margin_stats(m).items():
            out.stats.setdefault(k, v)
        return out

    logps = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in LOGP_NAMES
    ]
    loss.__signature__ = sig.replace(parameters=logps + params)
    return loss


def loss_parameters(loss) -> dict[str, inspect.Parameter]:
    """The keyword-only parameters of a four-log-prob loss (``beta`` and the method's own),
    by name, from its signature."""
    return {
        name: p
        for name, p in inspect.signature(loss).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


@logp_loss
def dpo_loss(
    margins: torch.Tensor, *, beta: float, weights: torch.Tensor | None = None, group=None
) -> LossOutput:
    """Plain DPO: ``mean_i softplus(-m_i)`` (docs/theory.md#dpo-loss).

    ``weights`` (B,), optional: non-negative per-pair data weights ``w_i``; the objective is
    the weighted mean ``sum_i w_i l_i / sum_i w_i`` over the global batch (every worker of
    ``group``), see :func:`weighted_mean`; a pair of weight k counts as k copies of it.
    """
    per = dpo_pair_losses(margins)
    return LossOutput(weighted_mean(per, weights, group=group), per, margins)


# ---------------------------------------------------------------------------- KLDPO
def _world_size(group=None) -> int:
    """Workers in ``group``; 1 outside ``torch.distributed``."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def gather_pairs(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate a detached (B,) tensor over the workers of ``group`` in rank order
    (identity outside ``torch.distributed``). Local sizes may differ between workers."""
    x = x.detach()
    world = _world_size(group)
    if world == 1:
        return x
    n = torch.tensor([x.numel()], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    counts = [int(s.item()) for s in sizes]
    padded = x.new_zeros(max(counts))
    padded[: x.numel()] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def gather_batch(x: torch.Tensor, group=None) -> tuple[torch.Tensor, int]:
    """``(global, start)``: the detached (B,) tensor ``x`` concatenated over the workers of
    ``group`` in rank order, and the position of this worker's first entry in it."""
    glob = gather_pairs(x, group)
    world = _world_size(group)
    if world == 1:
        return glob, 0
    n = torch.tensor([x.numel()], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    rank = dist.get_rank(group)
    return glob, int(sum(int(t.item()) for t in sizes[:rank]))


def check_pair_weights(weights, per_pair: torch.Tensor) -> torch.Tensor:
    """Validate per-pair data weights (raw, not normalised): a tensor of shape (B,), finite
    and >= 0; returned detached in the losses' accumulation dtype."""
    if not isinstance(weights, torch.Tensor) or weights.shape != per_pair.shape:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights)
        raise InputError(f"weights must be a tensor of shape {tuple(per_pair.shape)}, got {shape}")
    w = weights.detach().to(device=per_pair.device, dtype=accumulation_dtype(per_pair))
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise InputError("weights must be finite and >= 0")
    return w


def batch_probabilities(weights, per_pair: torch.Tensor, group=None) -> tuple[torch.Tensor, int]:
    """``(p, N)``: this worker's data weights normalised over the global batch,
    ``p_i = w_i / sum_{global} w`` (detached), and the global number of pairs N."""
    w = check_pair_weights(weights, per_pair)
    glob = gather_pairs(w, group)
    if not float(glob.sum()) > 0:
        raise InputError("weights are all 0 in this batch: at least one pair needs weight > 0")
    return w / glob.sum(), glob.numel()


def weighted_mean(per_pair: torch.Tensor, weights=None, *, group=None) -> torch.Tensor:
    """The local share of the global weighted mean ``sum_i w_i l_i / sum_i w_i``.

    Computed as ``(N / B) sum_{i local} p_i l_i`` with ``p`` from :func:`batch_probabilities`,
    so that the data-parallel average of the workers' gradients (equal local batches B) is the
    gradient of the global weighted mean; without ``weights`` it is ``mean_i l_i``.
    """
    if weights is None:
        return per_pair.mean()
    p, N = batch_probabilities(weights, per_pair, group)
    return (p.to(per_pair.dtype) * per_pair).sum() * (N / per_pair.numel())


def check_kl_args(tau, variant, clip) -> tuple[float, float]:
    """Validated ``(tau, clip)`` of KLDPO: ``tau > 0``, ``variant`` in :data:`KL_VARIANTS`,
    ``clip > 0`` for ``clipped``; :class:`InputError` naming the argument otherwise."""
    tau = V.positive(tau, "tau")
    if variant not in KL_VARIANTS:
        raise InputError(f"variant must be one of {KL_VARIANTS}, got {variant!r}")
    if variant == "clipped":
        clip = V.positive(clip, "clip")
    return tau, clip


def _check_kl_inputs(per_pair, tau, variant, clip, weights) -> tuple[float, float]:
    tau, clip = check_kl_args(tau, variant, clip)
    _check_per_pair(per_pair)
    check_prob_weights(weights, per_pair, "weights")
    return tau, clip


def check_prob_weights(weights, like: torch.Tensor, name: str, *, group=None) -> None:
    """``weights`` is None or a finite, non-negative tensor shaped like ``like`` that sums to
    1 (checked outside ``torch.distributed``, where the sum runs over the global batch).
    One synchronisation per call; :class:`InputError` naming ``name`` otherwise."""
    if weights is None:
        return
    if not isinstance(weights, torch.Tensor) or weights.shape != like.shape:
        got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise InputError(f"{name} must be a tensor of shape {tuple(like.shape)}, got {got}")
    w = weights.detach()
    lo, total = (float(v) for v in torch.stack([w.min(), w.sum()]).to(torch.float64))
    if not math.isfinite(total):
        raise InputError(f"{name} contains NaN or inf")
    if lo < 0:
        raise InputError(f"{name} must be non-negative; min is {lo:.3g}")
    if _world_size(group) == 1 and abs(total - 1.0) > 1e-4 * max(1.0, w.numel() ** 0.5):
        raise InputError(f"{name} must sum to 1 over the batch; they sum to {total:.8g}")


def _kl_weights_local_global(per_pair, tau, variant, clip, group, weights=None):
    tau, clip = _check_kl_inputs(per_pair, tau, variant, clip, weights)
    return _kl_weights_unchecked(per_pair, tau, variant, clip, group, weights)


def _kl_weights_unchecked(per_pair, tau, variant, clip, group, weights):
    """``(local, global)`` KLDPO weights from already-validated arguments (see
    :func:`_kl_parts`)."""
    return _kl_parts(per_pair, tau, variant, clip, group, weights)[:2]


def _kl_parts(per_pair, tau, variant, clip, group, weights):
    """``(local, global, statistic)``: the KLDPO weights of the local and of the global batch
    and the batch statistic that normalises them (:func:`kl_statistic`: ``log Z`` for
    ``normalized``, the centre ``c`` for ``clipped``), from already-validated arguments.

    Outside ``torch.distributed`` the global batch is the local one and the weights are
    computed once (the same tensor is returned twice). Every tensor here is detached, so no
    autograd graph is built. ``normalized`` drops the centring
    ``mean l``: the softmax is shift-invariant, so ``softmax((l - c) / tau)`` is the same for
    every c (and ``softmax``/``logsumexp`` subtract the maximum internally for stability).
    """
    local = per_pair.detach().to(accumulation_dtype(per_pair))  # float64 stays exact
    single = _world_size(group) == 1
    glob = local if single else gather_pairs(local, group)
    p = None if weights is None else gather_pairs(weights, group).to(glob.dtype)
    if variant == "normalized":
        # centre at the max so that a tiny tau gives the max-loss limit, not inf - inf = NaN
        top = glob.max()
        z = (glob - top) / tau
        if p is None:
            log_norm = torch.logsumexp(z, dim=0) - math.log(glob.numel())
        else:  # w_i = q_i / p_i with q ∝ p exp(l / tau)
            log_norm = torch.logsumexp(torch.log(p) + z, dim=0)
        log_z = top / tau + log_norm
        if p is None and single:  # w = N softmax(l / tau): one fused kernel
            w = torch.softmax(z, dim=0).mul_(glob.numel())
            return w, w, log_z
        w_glob = (z - log_norm).exp_()
        return (w_glob if single else ((local - top) / tau - log_norm).exp_()), w_glob, log_z
    centre = glob.mean() if p is None else torch.dot(p, glob)
    w_glob = (glob - centre).div_(tau).exp_().clamp_(max=clip)
    if single:
        return w_glob, w_glob, centre
    return (local - centre).div_(tau).exp_().clamp_(max=clip), w_glob, centre


def kl_statistic(per_pair: torch.Tensor, *, tau: float, variant: str = "normalized"):
    """The batch statistic that normalises KLDPO's weights, detached 0-d (float64 for float64
    losses, else float32), over the pairs of ``per_pair`` (B,) (docs/theory.md#code-variants):
    ``normalized``: ``log Z = log mean_i exp(l_i / tau)`` (nats / tau);
    ``clipped``: the centre ``c = mean_i l_i`` (nats)."""
    local = per_pair.detach().to(accumulation_dtype(per_pair))
    if variant == "normalized":
        return torch.logsumexp(local / tau, dim=0) - math.log(local.numel())
    return local.mean()


def kl_weights_at(
    per_pair: torch.Tensor, *, tau: float, variant: str, clip: float, statistic
) -> torch.Tensor:
    """KLDPO weights (B,), detached, at a given normalising ``statistic`` of
    :func:`kl_statistic` (from a larger batch, or a running estimate) instead of the batch's
    own: ``normalized``: ``w_i = exp(l_i / tau - log Z)``; ``clipped``:
    ``w_i = min(exp((l_i - c) / tau), clip)``. With the batch's own statistic these are the
    weights of :func:`kl_weights`. Computed in float64, returned in ``per_pair``'s dtype."""
    z = per_pair.detach().to(torch.float64)
    stat = torch.as_tensor(statistic, dtype=torch.float64, device=z.device)
    if variant == "normalized":
        w = (z / tau - stat).exp()
    else:
        w = ((z - stat) / tau).exp().clamp(max=clip)
    return w.to(per_pair.dtype)


def kl_weight_diagnostics(
    global_weights: torch.Tensor,
    *,
    statistic,
    variant: str = "normalized",
    clip: float = 10.0,
    mass: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-step diagnostics of the KLDPO weights of a normalisation group, detached 0-d:
    :func:`weight_stats` of the normalised weights (``weight_entropy``, ``weight_max`` (largest
    normalised mass), ``kl_radius``, ``ess`` (effective sample size ``1 / sum_i q_i^2``,
    pairs)), ``weight_mean`` (mean of the weights themselves: 1 for ``normalized`` with the
    group's own normaliser), ``normalizer`` (the :func:`kl_statistic` used) and, for
    ``clipped``, ``clip_fraction`` (fraction of pairs whose weight was clipped at ``clip``).
    ``mass``: the masses ``p_i w_i`` to normalise instead of ``w`` (weighted data)."""
    w = global_weights.detach()
    stats = weight_stats(w if mass is None else mass.detach())
    stats["weight_mean"] = w.mean()
    stats["normalizer"] = torch.as_tensor(statistic).detach()
    if variant == "clipped":
        stats["clip_fraction"] = (w >= clip).to(w.dtype).mean()
    return stats


def _kldpo_objective(per_pair, tau, variant, clip, group, weights):
    w = _kl_weights_unchecked(per_pair, tau, variant, clip, group, weights)[0]
    wd = w.to(per_pair.dtype)
    if weights is not None:
        return (weights * wd * per_pair).sum(), w  # sum_i p_i w_i l_i
    return per_pair @ wd.div(per_pair.numel()), w  # mean_i w_i l_i, one autograd node


@V.renamed_keyword("base_weights", "weights")
def kl_weights(
    per_pair: torch.Tensor,
    *,
    tau: float,
    variant: str = "normalized",
    clip: float = 10.0,
    group=None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """KLDPO weights of the local pairs, detached, shape (B,), from global-batch statistics.

    The weights are float32, or float64 for float64 losses.

    ``normalized`` (Algorithm 2): ``w_i = N * softmax_i((l_i - mean l) / tau)`` over the global
    batch of N pairs, so the weights average to 1 globally and ``mean_i w_i l_i`` over all pairs
    equals ``sum_i softmax_i l_i``. ``clipped`` (the paper's code):
    ``w_i = min(exp((l_i - mean l) / tau), clip)``. ``mean l`` and the softmax normaliser are
    taken over every worker of ``group`` when ``torch.distributed`` is initialised.
    The numpy mirror is :func:`rdpo_theory.losses.kl_weights`.

    ``weights`` (B,), optional: a base measure p (summing to 1 over the global batch), for
    weighted data such as an aggregated empirical law. The weights are then likelihood ratios
    ``w_i = q_i / p_i`` with ``q_i ∝ p_i exp(l_i / tau)`` (``normalized``), the centre is
    ``sum_i p_i l_i``, and the loss is ``sum_i p_i w_i l_i``; uniform p gives the case above.
    Float64 losses give float64 weights.
    """
    return _kl_weights_local_global(per_pair, tau, variant, clip, group, weights)[0]


@V.renamed_keyword("base_weights", "weights")
def kldpo_objective(
    per_pair: torch.Tensor,
    *,
    tau: float,
    variant: str = "normalized",
    clip: float = 10.0,
    group=None,
    weights: torch.Tensor | None = None,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, weights)`` with ``loss = mean_i w_i l_i`` over the local batch and ``w`` from
    :func:`kl_weights` (no gradient through ``w``); with data ``weights`` p,
    ``loss = sum_i p_i w_i l_i``.

    ``check=False`` skips the argument checks (for trainer inner loops that validated
    ``tau``, ``variant`` and ``clip`` once with :func:`check_kl_args`)."""
    if check:
        tau, clip = _check_kl_inputs(per_pair, tau, variant, clip, weights)
    return _kldpo_objective(per_pair, tau, variant, clip, group, weights)


def weight_stats(global_weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Entropy (nats), largest mass, ``KL(q || uniform) = log N - H(q)``
    (docs/theory.md#algorithm-2-kldpo: the radius ``rho(tau)`` of a batch) and effective
    sample size ``ess = 1 / sum_i q_i^2``
    (pairs; ``(sum w)^2 / sum w^2``) of the normalised weights ``q = w / sum w``."""
    q = global_weights / global_weights.sum()
    ent = -(q * torch.log(q.clamp_min(1e-30))).sum()
    return {
        "weight_entropy": ent,
        "weight_max": q.max(),
        "kl_radius": math.log(q.numel()) - ent,
        "ess": 1.0 / (q * q).sum(),
    }


@logp_loss
def kldpo_loss(
    margins: torch.Tensor,
    *,
    beta: float,
    tau: float,
    variant: str = "normalized",
    clip: float = 10.0,
    group=None,
    weights: torch.Tensor | None = None,
) -> LossOutput:
    """KLDPO (Algorithm 2, or the paper's clipped code) on DPO per-pair losses
    (docs/theory.md#algorithm-2-kldpo): ``mean_i w_i l_i`` with ``w`` from :func:`kl_weights`.

    ``stats`` holds the global batch's :func:`kl_weight_diagnostics` (``weight_entropy``,
    ``weight_max``, ``kl_radius``, ``ess``, ``weight_mean``, ``normalizer`` and, for
    ``clipped``, ``clip_fraction``), identical on every worker.

    ``weights`` (B,), optional: non-negative per-pair data weights. The base measure is then
    ``p_i = w_i / sum_{global} w`` (:func:`batch_probabilities`), the KL weights are the
    likelihood ratios r of :func:`kl_weights` with that base measure and the objective is
    ``sum_i p_i r_i l_i`` over the global batch (``LossOutput.weights`` holds r); a pair of
    weight k counts as k copies of it.
    """
    per = dpo_pair_losses(margins)
    tau, clip = _check_kl_inputs(per, tau, variant, clip, None)
    diag = dict(statistic=None, variant=variant, clip=clip)
    if weights is None:
        w, w_glob, diag["statistic"] = _kl_parts(per, tau, variant, clip, group, None)
        loss = (w.to(per.dtype) * per).mean()
        stats = kl_weight_diagnostics(w_glob, **diag)
        return LossOutput(loss, per, margins, weights=w, stats=stats)
    p, N = batch_probabilities(weights, per, group)
    check_prob_weights(p, per, "weights")
    w, w_glob, diag["statistic"] = _kl_parts(per, tau, variant, clip, group, p)
    loss = ((p * w).to(per.dtype) * per).sum() * (N / per.numel())
    mass = gather_pairs(p, group).to(w_glob.dtype) * w_glob
    stats = kl_weight_diagnostics(w_glob, mass=mass, **diag)
    return LossOutput(loss, per, margins, weights=w, stats=stats)


# ---------------------------------------------------------------------------- WDPO
def _as_inputs(inputs) -> tuple[torch.Tensor, ...]:
    if inputs is None:
        raise InputError(
            "inputs is required for WDPO: the input embeddings (or x for log-linear data) "
            "with requires_grad=True; got None"
        )
    tup = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not tup:
        raise InputError("inputs is empty: WDPO needs at least one input tensor")
    for t in tup:
        if not isinstance(t, torch.Tensor) or not t.requires_grad:
            raise InputError(
                "every tensor in inputs must be a torch.Tensor with "
                "requires_grad=True (the loss must depend on it)"
            )
    return tup


def input_grad_sq_norms(
    per_pair: torch.Tensor, inputs, *, create_graph: bool = True
) -> torch.Tensor:
    """``||grad_z l_i||_2^2`` for each pair, shape (B,), differentiable (double backward).

    ``inputs`` is a tensor or tuple of tensors whose leading dimension is the batch; pair i's
    loss must depend only on row i of each (true for per-sequence language-model losses when
    chosen and rejected embeddings are passed as two tensors). The squared norms over all
    tensors in ``inputs`` are added. Cost: one extra backward with ``create_graph=True``.
    ``create_graph=False`` gives the values only (detached; a first-order backward).
    """
    _check_per_pair(per_pair)
    tup = _as_inputs(inputs)
    B = per_pair.shape[0]
    for t in tup:
        if t.ndim == 0 or t.shape[0] != B:
            raise InputError(f"inputs must have leading dimension B = {B}, got {tuple(t.shape)}")
    grads = torch.autograd.grad(per_pair.sum(), tup, create_graph=create_graph, allow_unused=True)
    if all(g is None for g in grads):
        raise InputError("per_pair does not depend on inputs: pass the tensors the loss used")
    sq = None
    for g in grads:
        if g is not None:
            part = g.to(accumulation_dtype(g)).pow(2).reshape(B, -1).sum(dim=1).to(per_pair.dtype)
            sq = part if sq is None else sq + part
    return sq


def global_mean_sq(sq: torch.Tensor, weights=None, group=None) -> torch.Tensor:
    """``S = sum_{global} p_i ||g_i||^2``, detached 0-d: the mean squared input-gradient norm of
    the global micro-batch (every worker of ``group``), from this worker's ``sq`` (B,) and its
    local share ``weights`` a_i = (N / B) p_i of the global mean (``None``: a_i = 1 / B, i.e.
    p_i = 1 / N). One all_reduce of two numbers; this worker's ``avg sq`` outside
    ``torch.distributed``."""
    wide = accumulation_dtype(sq)
    x = sq.detach().to(wide)
    a = torch.full_like(x, 1.0 / x.numel()) if weights is None else weights.detach().to(wide)
    B = x.numel()
    both = torch.stack([torch.tensor(float(B), dtype=wide, device=x.device), B * (a * x).sum()])
    if _world_size(group) > 1:
        dist.all_reduce(both, group=group)
    return both[1] / both[0]


def sqrt_mean_tangent(avg_sq: torch.Tensor, mean_sq: torch.Tensor, rho0: float) -> torch.Tensor:
    """``rho0 (avg_sq + S) / (2 sqrt(S))`` with ``S = mean_sq`` held constant (detached): the
    tangent of ``rho0 sqrt(.)`` at ``S``, evaluated at ``avg_sq``. Where ``avg_sq = S`` its value
    and gradient are those of WDPO ``sqrt-mean``'s penalty ``rho0 sqrt(avg_sq)``; the running,
    accumulated and multi-worker normalisers fix ``S`` this way
    (docs/theory.md#minibatch-fixed-point)."""
    s = mean_sq.detach().to(avg_sq.dtype).clamp_min(1e-30)
    return rho0 * (avg_sq + s) / (2.0 * s.sqrt())


def wdpo_combine(per_pair, sq, rho0, variant, weights=None, group=None):
    """``(objective, penalty)`` of WDPO from per-pair losses ``l`` (B,) and squared input-gradient
    norms ``sq`` (B,), arguments already validated: ``sqrt-mean``
    ``avg l + rho0 sqrt(avg sq)``, ``per-pair`` ``avg l + rho0 avg sq``, where ``avg`` is
    ``mean_i`` or ``sum_i a_i`` with ``weights`` a (the local share of the global weighted mean,
    :func:`wdpo_penalty_weights`).

    Under ``torch.distributed`` with more than one worker in ``group``, ``sqrt-mean``'s ``S`` is
    the global micro-batch's (:func:`global_mean_sq`), as KLDPO's normaliser is, and the penalty
    is :func:`sqrt_mean_tangent` at ``S``: its gradient is ``rho0 / (2 sqrt S) grad avg sq``, so
    the data-parallel mean of the workers' values and gradients (equal local batches) is
    ``rho0 sqrt(S)`` and its gradient on the whole global micro-batch
    (docs/theory.md#algorithm-1-wdpo)."""

    def avg(t):  # mean_i, or sum_i a_i t_i for weighted data
        return t.mean() if weights is None else (weights * t).sum()

    if variant == "sqrt-mean" and _world_size(group) > 1:
        pen = sqrt_mean_tangent(avg(sq), global_mean_sq(sq, weights, group), rho0)
        return avg(per_pair) + pen, pen
    if variant == "sqrt-mean":
        # sqrt has an infinite slope at 0; the clamp only matters when every gradient vanishes
        pen = rho0 * torch.sqrt(avg(sq).clamp_min(1e-30))
        return avg(per_pair) + pen, pen
    pen = rho0 * avg(sq)
    return avg(per_pair) + pen, pen


def wdpo_penalty_weights(
    weights, per_pair: torch.Tensor, *, variant: str = "sqrt-mean", group=None
) -> torch.Tensor:
    """The weights ``a_i`` of the penalty's mean ``sum_i a_i ||g_i||^2`` for weighted data, for
    either ``variant``: ``(N / B) w_i / sum_{global} w``, the local share of the global weighted
    mean (``w_i / sum w`` in one process). Detached, in ``per_pair``'s dtype."""
    if variant not in WDPO_VARIANTS:
        raise InputError(f"variant must be one of {WDPO_VARIANTS}, got {variant!r}")
    p, N = batch_probabilities(weights, per_pair, group)
    return (p * (N / per_pair.numel())).to(per_pair.dtype)


def check_wdpo_args(rho0, variant) -> float:
    """Validated ``rho0 >= 0`` of WDPO, with ``variant`` in :data:`WDPO_VARIANTS`."""
    rho0 = V.positive(rho0, "rho0", allow_zero=True)
    if variant not in WDPO_VARIANTS:
        raise InputError(f"variant must be one of {WDPO_VARIANTS}, got {variant!r}")
    return rho0


def wdpo_penalty_coefficients(
    sq_norms: torch.Tensor,
    *,
    rho0: float,
    variant: str = "sqrt-mean",
    weights: torch.Tensor | None = None,
    group=None,
) -> torch.Tensor:
    """``c_i = d penalty / d ||g_i||^2``, shape (B,), detached: the chain-rule factors that turn
    per-pair gradients of ``||g_i||^2`` into the gradient of the WDPO penalty,
    ``grad_theta penalty = sum_i c_i grad_theta ||g_i||^2``.

    ``per-pair``: ``c_i = rho0 / B`` (``rho0 p_i`` with ``weights``); ``sqrt-mean``:
    ``c_i = rho0 / (2 B sqrt(S))`` with ``S = mean_i ||g_i||^2`` (of the global micro-batch under
    ``torch.distributed``, :func:`wdpo_combine`). Computed by differentiating the
    same penalty formula that :func:`wdpo_objective` uses, so the two cannot disagree. Used by the
    finite-difference Hessian-vector product of the trainer
    (``TrainConfig(wdpo_hvp="finite-difference")``).
    """
    rho0 = check_wdpo_args(rho0, variant)
    _check_per_pair(sq_norms)
    check_prob_weights(weights, sq_norms, "weights", group=group)
    sq = sq_norms.detach().to(accumulation_dtype(sq_norms)).requires_grad_(True)
    w = None if weights is None else weights.detach().to(sq.dtype)
    with torch.enable_grad():
        pen = wdpo_combine(torch.zeros_like(sq), sq, rho0, variant, w, group)[1]
        (c,) = torch.autograd.grad(pen, sq)
    return c.detach()


def wdpo_objective(
    per_pair: torch.Tensor,
    inputs,
    *,
    rho0: float,
    variant: str = "sqrt-mean",
    weights: torch.Tensor | None = None,
    sq_norms: torch.Tensor | None = None,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, sq_norms)``. ``sqrt-mean``: ``mean l + rho0 sqrt(mean ||g_i||^2)``;
    ``per-pair``: ``mean (l_i + rho0 ||g_i||^2)``, with ``g_i = grad_z l_i``. Differentiable
    through the penalty. The numpy mirror is :func:`rdpo_theory.losses.wdpo_objective`.

    ``weights`` (B,), optional: probability weights p_i; every ``mean_i`` becomes
    ``sum_i p_i`` (weighted data). ``sq_norms`` (B,), optional: precomputed differentiable
    ``||g_i||^2`` (e.g. the log-linear closed form); ``inputs`` is then not used.
    ``check=False`` skips the checks of ``rho0``, ``variant`` and ``weights`` (inner loops
    that ran :func:`check_wdpo_args` once)."""
    if check:
        rho0 = check_wdpo_args(rho0, variant)
        check_prob_weights(weights, per_pair, "weights")
    sq = input_grad_sq_norms(per_pair, inputs) if sq_norms is None else sq_norms
    return wdpo_combine(per_pair, sq, rho0, variant, weights)[0], sq


@logp_loss
def wdpo_loss(
    margins: torch.Tensor,
    *,
    beta: float,
    rho0: float,
    inputs,
    variant: str = "sqrt-mean",
    weights: torch.Tensor | None = None,
    group=None,
) -> LossOutput:
    """WDPO gradient-regularised DPO (Algorithm 1, or the paper's per-pair code;
    docs/theory.md#algorithm-1-wdpo).

    ``weights`` (B,), optional: non-negative per-pair data weights. The mean loss becomes the
    global weighted mean (:func:`weighted_mean`) and the penalty's mean uses the weights of
    :func:`wdpo_penalty_weights`. Under ``torch.distributed`` every mean is over the global
    micro-batch (all workers of ``group``): ``sqrt-mean``'s ``S = mean_i ||g_i||^2`` is
    all-reduced (:func:`wdpo_combine`), so 2 workers train as 1 worker on their union.

    ``inputs``: the policy's input-embedding tensors (requires_grad) that produced the chosen
    and rejected log-probs, each with leading dimension B (e.g. ``(emb_chosen, emb_rejected)``,
    each (B, T, H)). ``stats["penalty"]`` is the penalty term added to the mean loss and
    ``stats["grad_rms"] = sqrt(mean ||g_i||^2)``.
    """
    _as_inputs(inputs)
    rho0 = check_wdpo_args(rho0, variant)
    per = dpo_pair_losses(margins)
    sq = input_grad_sq_norms(per, inputs)
    pw = None if weights is None else wdpo_penalty_weights(weights, per, group=group)
    pen = wdpo_combine(per, sq, rho0, variant, pw, group)[1]
    loss = weighted_mean(per, weights, group=group) + pen
    S = global_mean_sq(sq, pw, group)
    stats = {"penalty": pen.detach(), "grad_rms": S.sqrt()}
    if variant == "sqrt-mean":  # the batch normaliser S = mean_i ||g_i||^2 of the micro-batch
        stats["normalizer"] = S
    return LossOutput(loss, per, margins, penalty=sq, stats=stats)
