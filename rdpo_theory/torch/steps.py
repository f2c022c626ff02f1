"""One micro-batch of the trainer: the loss and its backward pass
(docs/theory.md#code-variants).

:func:`compute_loss` (policy and reference log-probs, then the method's loss),
:func:`loss_and_backward` (the loss and its gradient accumulated into ``.grad``),
:func:`wdpo_fd_backward` (WDPO's penalty gradient by a central-difference Hessian-vector
product, no double backward) and :func:`accumulated_statistic` (the first pass of
``robust_normalizer="accumulated"``). Used by :mod:`rdpo_theory.torch.loop` and by the
benchmarks, which time one step.
"""

from __future__ import annotations

import contextlib

import torch

from . import losses as TL
from .config import TrainConfig, resolve_loss
from .lm import check_batch, embed_tokens, pair_logps, sequence_logps, unwrap_model
from .normalizers import normalized_loss, step_statistic
from .reference import BATCH_REF_KEYS, reference_logps


def compute_loss(
    cfg: TrainConfig,
    model,
    ref_model,
    batch: dict,
    *,
    accelerator=None,
    normalizer=None,
    extra=None,
    policy_logps=None,
) -> TL.LossOutput:
    """Policy and reference log-probs of ``batch`` and ``cfg.method``'s loss on them.

    ``policy_logps``: ``(chosen (B,), rejected (B,), embeddings or None)`` of this batch already
    computed with gradient (the first micro-batch of ``robust_normalizer="accumulated"``, see
    :func:`accumulated_statistic`), used instead of a new policy forward.

    ``normalizer``: the running statistic of ``robust_normalizer="running"`` (updated here) or
    the step statistic of ``"accumulated"``
    (:func:`rdpo_theory.torch.normalizers.normalized_loss`). ``extra``: loss arguments the trainer
    supplies (``weights`` (B,) for weighted rows; ``groups``, ``group_weights``, ``n_groups``
    for ``group_dpo``)."""
    wdpo = cfg.method == "wdpo"
    fused = cfg.fused_head
    rc, rr = reference_logps(ref_model, model, batch, accelerator=accelerator, fused_head=fused)
    if policy_logps is None:
        pc, pr, emb = pair_logps(model, batch, with_embeddings=wdpo, fused_head=fused)
    else:
        pc, pr, emb = policy_logps
    rc, rr = rc.to(pc.dtype), rr.to(pc.dtype)
    kw = dict(cfg.loss_kwargs, **(extra or {}))
    if wdpo:
        kw["inputs"] = emb
    if normalizer is not None:
        out = normalized_loss(cfg.method, normalizer, pc, pr, rc, rr, beta=cfg.beta, **kw)
    else:
        out = resolve_loss(cfg.method)(pc, pr, rc, rr, beta=cfg.beta, **kw)
    out.stats["reward_chosen"] = cfg.beta * (pc - rc).detach().mean()
    out.stats["reward_rejected"] = cfg.beta * (pr - rr).detach().mean()
    return out


def loss_and_backward(
    cfg: TrainConfig,
    model,
    ref_model,
    batch: dict,
    *,
    accelerator=None,
    normalizer=None,
    extra=None,
    policy_logps=None,
) -> TL.LossOutput:
    """One micro-batch: the loss of ``cfg.method`` and its gradient accumulated into the
    parameters' ``.grad`` (through ``accelerator.backward`` when given, which divides by the
    accumulation steps). WDPO with ``cfg.wdpo_hvp == "finite-difference"`` runs
    :func:`wdpo_fd_backward`; every other case is :func:`compute_loss` then backward.
    The returned ``loss`` is the objective's value (detached on the finite-difference path).
    ``extra``, ``policy_logps``: see :func:`compute_loss`."""
    if cfg.method == "wdpo" and cfg.wdpo_hvp == "finite-difference":
        w = (extra or {}).get("weights")
        return wdpo_fd_backward(cfg, model, ref_model, batch, accelerator=accelerator, weights=w)
    out = compute_loss(
        cfg,
        model,
        ref_model,
        batch,
        accelerator=accelerator,
        normalizer=normalizer,
        extra=extra,
        policy_logps=policy_logps,
    )
    if accelerator is not None:
        accelerator.backward(out.loss)
    else:
        out.loss.backward()
    return out


class FullPrecision:
    """Autocast off, including the autocast wrapper ``accelerate`` puts on a prepared model's
    ``forward`` (restored on exit)."""

    def __init__(self, model):
        self.inner = unwrap_model(model)
        self.device = next(self.inner.parameters()).device.type

    def __enter__(self):
        self.swapped = "_original_forward" in vars(self.inner) and "forward" in vars(self.inner)
        if self.swapped:
            self.saved = self.inner.forward
            self.inner.forward = self.inner._original_forward
        self.ctx = torch.autocast(self.device, enabled=False)
        self.ctx.__enter__()
        return self

    def __exit__(self, *a):
        self.ctx.__exit__(*a)
        if self.swapped:
            self.inner.forward = self.saved
        return False


def wdpo_fd_backward(
    cfg: TrainConfig, model, ref_model, batch: dict, *, accelerator=None, weights=None
) -> TL.LossOutput:
    """WDPO's gradient by a central-difference Hessian-vector product (no double backward).

    With per-pair losses ``l_i(theta, e_i)``, ``g_i = grad_{e_i} l_i`` and
    ``c_i = d penalty / d ||g_i||^2`` (:func:`~rdpo_theory.torch.losses.wdpo_penalty_coefficients`)
    the penalty gradient is ``sum_i c_i grad_theta ||g_i||^2 = grad_theta sum_i u_i . g_i`` with
    ``u_i = 2 c_i g_i`` held constant, and

        grad_theta sum_i u_i . g_i
            = (grad_theta sum_i l_i(e + h u) - grad_theta sum_i l_i(e - h u)) / (2 h) + O(h^2)

    (mixed partials commute; ``e = E[ids]`` keeps its dependence on the embedding table).
    Passes: (1) forward + first-order backward of ``mean_i l_i`` at ``e``, which gives the
    parameter gradient of the mean loss and ``g`` (``B * accumulation * e.grad``); (2, 3)
    forward + backward of ``+-sum_i l_i(e +- h u) / (2 h)``. The reference log-probs are computed
    once. ``h = cfg.wdpo_fd_eps * ||e|| / ||u||``. Every backward is first order, so the default
    scaled-dot-product attention (flash / memory-efficient) is used. Returns a
    :class:`~rdpo_theory.torch.losses.LossOutput` whose ``loss`` is the detached WDPO objective
    and whose ``stats`` add ``fd_step`` (h) to the WDPO ones.

    With ``weights`` (B,) pass 1 differentiates the weighted mean
    (:func:`~rdpo_theory.torch.losses.weighted_mean`), ``g_i`` is recovered by dividing by the
    pair's coefficient (0 for zero-weight pairs, whose penalty coefficient is 0 too) and the
    penalty uses :func:`~rdpo_theory.torch.losses.wdpo_penalty_weights`, as ``wdpo_loss`` does.
    """
    kw = dict(cfg.loss_kwargs)
    rho0, variant = kw["rho0"], kw.get("variant", "sqrt-mean")
    B = check_batch(batch)
    ids, att, cm = (batch[k] for k in ("input_ids", "attention_mask", "completion_mask"))
    acc = accelerator
    rc, rr = reference_logps(ref_model, model, batch, accelerator=acc, fused_head=cfg.fused_head)

    def pair_losses(emb):
        lp = sequence_logps(model, ids, att, cm, inputs_embeds=emb, fused_head=cfg.fused_head)
        m = TL.dpo_margins(lp[:B], lp[B:], rc.to(lp.dtype), rr.to(lp.dtype), beta=cfg.beta)
        return TL.dpo_pair_losses(m), m, lp

    def backward(loss):
        if acc is not None:
            acc.backward(loss)
        else:
            loss.backward()

    # pass 1: mean loss at e, first order; g from the embeddings' .grad
    emb = embed_tokens(model, ids)  # (2B, T, H): chosen rows, then rejected rows
    if not emb.is_leaf:
        emb.retain_grad()
    per, m, lp = pair_losses(emb)
    accum = acc.gradient_accumulation_steps if acc is not None else 1
    if weights is None:
        backward(per.mean())
        g = emb.grad.detach() * (B * accum)
        pw = None
    else:
        p, N = TL.batch_probabilities(weights, per)
        coef = (p * (N / B)).to(per.dtype)  # d(weighted mean) / d l_i
        backward(TL.weighted_mean(per, weights))
        inv = torch.where(coef > 0, accum / coef.clamp_min(1e-300), torch.zeros_like(coef))
        g = emb.grad.detach() * inv.repeat(2).view(-1, 1, 1).to(emb.grad.dtype)
        pw = TL.wdpo_penalty_weights(weights, per)
    wide = TL.accumulation_dtype(g)  # float32, or float64 for float64 models
    e_norm = torch.linalg.vector_norm(emb.detach().to(wide))
    del emb
    sq = (g[:B].to(wide).pow(2).sum((1, 2)) + g[B:].to(wide).pow(2).sum((1, 2))).to(per.dtype)
    c = TL.wdpo_penalty_coefficients(sq, rho0=rho0, variant=variant, weights=pw)
    c = c.to(g.dtype)  # with the global micro-batch's S under torch.distributed
    u = g.mul_((2 * c).repeat(2).view(-1, 1, 1))  # u_i = 2 c_i g_i, in place of g
    u_norm = torch.linalg.vector_norm(u.to(wide))
    h = torch.zeros((), dtype=wide, device=u.device)
    if float(u_norm) > 0:  # rho0 = 0 or vanishing gradients: no penalty gradient
        h = cfg.wdpo_fd_eps * e_norm / u_norm
        prec = (
            FullPrecision(model) if cfg.wdpo_fd_precision == "float32" else contextlib.nullcontext()
        )
        for sign in (1.0, -1.0):
            with prec:
                e_s = embed_tokens(model, ids) + (sign * h).to(u.dtype) * u
                per_s = pair_losses(e_s)[0]
            backward(per_s.sum() * (sign / (2 * h)).to(per_s.dtype))
    pen = TL.wdpo_combine(per.detach(), sq, rho0, variant, pw)[1]
    loss = TL.weighted_mean(per.detach(), weights) + pen
    stats = TL.margin_stats(m)
    S = TL.global_mean_sq(sq, pw)
    stats.update(penalty=pen.detach(), grad_rms=S.sqrt(), fd_step=h.detach())
    if variant == "sqrt-mean":
        stats["normalizer"] = S
    pc, pr = lp[:B].detach(), lp[B:].detach()
    stats["reward_chosen"] = cfg.beta * (pc - rc).mean()
    stats["reward_rejected"] = cfg.beta * (pr - rr).mean()
    return TL.LossOutput(loss.detach(), per.detach(), m.detach(), penalty=sq, stats=stats)


def accumulated_statistic(
    cfg: TrainConfig, model, ref_model, batches, *, accelerator=None, keep_first: bool = False
):
    """First pass of ``robust_normalizer="accumulated"``: the normalising statistic of one
    optimiser step (:class:`~rdpo_theory.torch.normalizers.StepStatistic`) over its micro-batches
    ``batches`` on every worker (docs/theory.md#minibatch-fixed-point). Returns
    ``(statistic, kept)``.

    Per micro-batch: the reference log-probs (stored in the batch under
    ``ref_chosen_logps``/``ref_rejected_logps``, so the second pass does not recompute them),
    then KLDPO: a no-grad policy forward giving the per-pair losses ``l_i``; WDPO
    ``sqrt-mean``: a policy forward through the embeddings and a first-order backward to them,
    giving ``||grad_z l_i||^2`` (no parameter gradients; run on the unwrapped model, outside
    DDP's gradient hooks). The values are then gathered over the workers
    (:func:`~rdpo_theory.torch.normalizers.step_statistic`).

    ``keep_first`` (KLDPO): micro-batch 0's policy forward runs last and with gradient, and its
    log-probs are returned as ``kept`` for :func:`loss_and_backward` (``policy_logps``), so that
    micro-batch is not forwarded twice; call it inside micro-batch 0's
    ``accelerator.accumulate`` context. The extra cost of the step is then ``A - 1`` no-grad
    policy forwards for ``A`` micro-batches (none for ``A = 1``), and no extra memory: when the
    kept graph is built no other graph is alive. Otherwise ``kept`` is None and the extra cost
    is one policy forward (KLDPO) or one forward plus an input-gradient backward (WDPO) per
    micro-batch."""
    kw = cfg.loss_kwargs
    keep = keep_first and cfg.method == "kldpo"
    values, kept = [None] * len(batches), None
    fused = cfg.fused_head
    for a in [*range(1, len(batches)), 0] if keep else range(len(batches)):
        batch = batches[a]
        rc, rr = reference_logps(ref_model, model, batch, accelerator=accelerator, fused_head=fused)
        batch[BATCH_REF_KEYS[0]], batch[BATCH_REF_KEYS[1]] = rc, rr
        if keep and a == 0:
            pc, pr, _ = pair_logps(model, batch, fused_head=fused)
            kept = (pc, pr, None)
        elif cfg.method == "kldpo":
            with torch.no_grad():
                pc, pr, _ = pair_logps(model, batch, fused_head=fused)
        else:
            pc, pr, emb = pair_logps(
                unwrap_model(model), batch, with_embeddings=True, fused_head=fused
            )
        m = TL.dpo_margins(pc, pr, rc.to(pc.dtype), rr.to(pc.dtype), beta=cfg.beta)
        per = TL.dpo_pair_losses(m)
        if cfg.method == "wdpo":
            per = TL.input_grad_sq_norms(per, emb, create_graph=False)
        values[a] = per.detach()
    stat = step_statistic(
        cfg.method,
        torch.cat(values),
        tau=kw.get("tau"),
        variant=kw.get("variant"),
        clip=kw.get("clip", 10.0),
    )
    return stat, kept


__all__ = [
    "FullPrecision",
    "accumulated_statistic",
    "compute_loss",
    "loss_and_backward",
    "wdpo_fd_backward",
]
