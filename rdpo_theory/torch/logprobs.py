"""Token log-probabilities from logits without a float32 copy of the logits ("selective
log-softmax").

``log p_t = logits[t, y_t] - logsumexp(logits[t, :])`` needs one vocabulary entry per token and
one normaliser per token. The naive ``logits.float().log_softmax(-1).gather(...)`` builds two
vocabulary-sized float32 tensors (the cast and the log-softmax) and keeps them for backward; with
bf16 logits that is four times the logits' own size. :func:`selective_log_softmax` instead walks
over chunks of rows: each chunk is cast to the accumulation dtype (float32, or float64 for
float64 logits), reduced and dropped, so the only vocabulary-sized tensor that lives through the
step is the logits tensor itself, in the model's dtype. Its backward writes the gradient
``g_t (onehot(y_t) - softmax(logits_t))`` chunk by chunk, in place into that logits buffer when
nothing else in the graph needs the logits (a linear head), else into one new tensor of the
logits' dtype. Double backward (WDPO's exact penalty gradient, ``create_graph=True``) builds
that gradient as one differentiable node (:class:`_LogitGrad`) that keeps only the logits and
per-row scalars and recomputes the softmax chunk by chunk in its own backward, so the
second-order graph holds no float32 softmax either: its vocabulary-sized tensors are the logits
and the gradient the head keeps, both in the logits' dtype. Third derivatives are not supported
(PyTorch raises).
"""

from __future__ import annotations

import torch

__all__ = ["CHUNK_BYTES", "naive_log_softmax", "selective_log_softmax"]

#: Budget of the per-chunk float32 temporaries (bytes); chunks hold at least one row.
CHUNK_BYTES = 64 * 2**20

# autograd nodes that do not keep their output for their own backward: overwriting that output
# in place (with the gradient) is then safe. A head ending in tanh (soft-capping) or another
# output-saving op gets a fresh gradient tensor instead.
_INPLACE_SAFE = {
    "MmBackward0",
    "AddmmBackward0",
    "BmmBackward0",
    "MatmulBackward0",
    "LinearBackward0",
    "UnsafeViewBackward0",
    "ViewBackward0",
    "ReshapeAliasBackward0",
    "MulBackward0",
    "DivBackward0",
    "ToCopyBackward0",
}


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _chunk_rows(vocab: int, itemsize: int) -> int:
    return max(1, CHUNK_BYTES // max(1, vocab * itemsize))


def naive_log_softmax(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., targets]`` by a full float32 (or wider) log-normaliser: the
    straightforward formula, kept as the reference :func:`selective_log_softmax` is tested and
    benchmarked against. Shapes as in :func:`selective_log_softmax`."""
    x = logits.to(_acc_dtype(logits.dtype))
    return x.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, dim=-1)


def _new_like(t: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``t``'s shape, dtype and device."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _write_logit_grad(logits, targets, lse, grad, out):
    """``out = grad (onehot(targets) - softmax(logits))`` row chunk by row chunk (``out`` may be
    ``logits`` itself: each chunk is read before it is written). Shapes: ``logits``/``out``
    (..., V), ``targets``/``grad`` (...), ``lse`` the flattened log-normalisers."""
    V = logits.shape[-1]
    acc = lse.dtype
    src, dst = logits.reshape(-1, V), out.view(-1, V)
    tgt, g = targets.reshape(-1), grad.reshape(-1).to(acc)
    step = _chunk_rows(V, torch.finfo(acc).bits // 8)
    for lo in range(0, src.shape[0], step):
        sl = slice(lo, lo + step)
        p = torch.exp(src[sl].to(acc) - lse[sl].unsqueeze(-1))  # softmax of the chunk
        p.mul_(-g[sl].unsqueeze(-1))
        p.scatter_add_(-1, tgt[sl].unsqueeze(-1), g[sl].unsqueeze(-1))
        dst[sl] = p.to(dst.dtype)
    return out


class _SelectiveLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets):
        acc = _acc_dtype(logits.dtype)
        V = logits.shape[-1]
        flat = logits.reshape(-1, V)
        tgt = targets.reshape(-1)
        lse = torch.empty(flat.shape[0], dtype=acc, device=logits.device)
        picked = flat.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).to(acc)
        step = _chunk_rows(V, torch.finfo(acc).bits // 8)
        for lo in range(0, flat.shape[0], step):
            lse[lo : lo + step] = torch.logsumexp(flat[lo : lo + step].to(acc), dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        node = logits.grad_fn
        ctx.inplace = (
            node is not None
            and type(node).__name__ in _INPLACE_SAFE
            and logits.is_contiguous()
            # the tensor spans its whole storage: not a slice of a larger (saved) tensor
            and logits.untyped_storage().nbytes() == logits.numel() * logits.element_size()
        )
        return (picked - lse).view(targets.shape)

    @staticmethod
    def backward(ctx, grad):
        logits, targets, lse = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph (double backward): a differentiable node
            ctx.inplace = False  # that node keeps the logits; a later backward must not overwrite
            return _LogitGrad.apply(logits, targets, lse, grad), None
        out = logits if ctx.inplace else _new_like(logits)
        return _write_logit_grad(logits, targets, lse, grad, out), None


class _LogitGrad(torch.autograd.Function):
    """``G(z, g) = g (onehot(y) - softmax(z))``, the gradient of the selective log-softmax, as a
    differentiable node for double backward. It keeps only the logits ``z`` (already alive), the
    log-normalisers and ``g``; its own backward recomputes the softmax chunk by chunk:
    for an incoming ``U`` (..., V) with ``s = <U, softmax(z)>`` per row,
    ``dL/dz = -g softmax(z) (U - s)`` and ``dL/dg = U_y - s``."""

    @staticmethod
    def forward(ctx, logits, targets, lse, grad):
        ctx.save_for_backward(logits, targets, lse, grad)
        return _write_logit_grad(logits, targets, lse, grad, _new_like(logits))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, U):
        logits, targets, lse, grad = ctx.saved_tensors
        V = logits.shape[-1]
        acc = lse.dtype
        src, u = logits.reshape(-1, V), U.reshape(-1, V)
        tgt, g = targets.reshape(-1), grad.reshape(-1).to(acc)
        dz = _new_like(logits) if ctx.needs_input_grad[0] else None
        dg = torch.empty(src.shape[0], dtype=acc, device=logits.device)
        step = _chunk_rows(V, 2 * torch.finfo(acc).bits // 8)  # two chunk temporaries
        for lo in range(0, src.shape[0], step):
            sl = slice(lo, lo + step)
            p = torch.exp(src[sl].to(acc) - lse[sl].unsqueeze(-1))
            uc = u[sl].to(acc)
            s = (uc * p).sum(-1, keepdim=True)  # uc may alias U: never written
            dg[sl] = uc.gather(-1, tgt[sl].unsqueeze(-1)).squeeze(-1) - s.squeeze(-1)
            if dz is not None:
                p.mul_(uc - s).mul_(-g[sl].unsqueeze(-1))
                dz.view(-1, V)[sl] = p.to(dz.dtype)
        return dz, None, None, dg.view(grad.shape).to(grad.dtype)


def selective_log_softmax(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of ``targets`` under ``softmax(logits)``, shape ``targets.shape``.

    ``out[..., t] = logits[..., t, y_t] - logsumexp_v logits[..., t, v]`` (nats), computed in
    float32 (float64 for float64 logits) over row chunks of at most :data:`CHUNK_BYTES` of
    temporaries, without casting the whole logits tensor. Equal to :func:`naive_log_softmax`
    up to float rounding, with the same gradient.

    Parameters
    ----------
    logits : Tensor (..., V)
        Any floating dtype (bf16, fp16, float32, float64); not modified in the forward pass.
        In backward, when the logits come straight from a linear head (nothing else saved them)
        and are contiguous, the gradient is written into their storage (they are dead by then);
        a second backward through the same graph then raises PyTorch's in-place error.
        A ``create_graph=True`` backward (double backward) switches that off for the graph.
    targets : LongTensor (...)
        Token ids in ``[0, V)``.

    Returns
    -------
    Tensor (...) in float32 (or float64).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree"
        )
    if not (torch.is_grad_enabled() and logits.requires_grad):
        # no graph: the forward alone (chunked), no saved tensors
        with torch.no_grad():
            return _SelectiveLogSoftmax.forward(_NoCtx(), logits, targets)
    return _SelectiveLogSoftmax.apply(logits, targets)


class _NoCtx:
    def save_for_backward(self, *a):
        pass
