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

:func:`linear_selective_log_softmax` goes one step further, like a fused linear cross-entropy:
it takes the head's input and weight instead of the logits and forms ``h W^T + b`` one row chunk
at a time, in the forward and in every backward (first order, and the chunked second-order
node for double backward), so no vocabulary-sized tensor outlives a chunk and WDPO's double
backward keeps none at all. ``lm.sequence_logps(..., fused_head=True)`` uses it.
"""

from __future__ import annotations

import contextlib

import torch
from torch.amp.autocast_mode import is_autocast_available

__all__ = [
    "CHUNK_BYTES",
    "head_compute_dtype",
    "linear_selective_log_softmax",
    "naive_log_softmax",
    "selective_log_softmax",
]

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
        p = _softmax_rows_(src[sl].to(acc, copy=True), lse[sl])
        dst[sl] = _grad_from_softmax_(p, tgt[sl], g[sl]).to(dst.dtype)
    return out


def _softmax_rows_(z, lse):
    """``softmax(z)`` of a chunk of rows in place: ``z`` (c, V) in the accumulation dtype,
    ``lse`` (c,) its rows' log-normalisers."""
    return z.sub_(lse.unsqueeze(-1)).exp_()


def _grad_from_softmax_(p, tgt, g):
    """``g (onehot(tgt) - p)`` in place of the softmax chunk ``p`` (c, V); ``tgt``, ``g`` (c,)."""
    p.mul_(-g.unsqueeze(-1))
    return p.scatter_add_(-1, tgt.unsqueeze(-1), g.unsqueeze(-1))


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
            p = _softmax_rows_(src[sl].to(acc, copy=True), lse[sl])
            uc = u[sl].to(acc)  # uc may alias U: never written
            dg[sl] = _softmax_grad_vjp_(p, uc, tgt[sl], g[sl], dz is not None)
            if dz is not None:
                dz.view(-1, V)[sl] = p.to(dz.dtype)
        return dz, None, None, dg.view(grad.shape).to(grad.dtype)


def _softmax_grad_vjp_(p, u, tgt, g, with_dz: bool):
    """The vector-Jacobian product of ``G(z, g) = g (onehot(y) - softmax(z))`` for one chunk of
    rows: with ``p = softmax(z)`` (c, V), the incoming ``u`` (c, V) and ``s = <u, p>`` per row,
    returns ``dL/dg = u_y - s`` (c,) and, with ``with_dz``, overwrites ``p`` with
    ``dL/dz = -g p (u - s)`` (``u`` is only read)."""
    s = (u * p).sum(-1, keepdim=True)
    dg = u.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - s.squeeze(-1)
    if with_dz:
        p.mul_(u - s).mul_(-g.unsqueeze(-1))
    return dg


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


def _itemsize(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def _no_autocast(device: torch.device):
    """Autocast off on ``device``: the fused head's kernels choose their dtypes themselves."""
    if is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


_AUTOCASTABLE = (torch.float16, torch.bfloat16, torch.float32)


def head_compute_dtype(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> torch.dtype:
    """The dtype :func:`linear_selective_log_softmax` runs its head matmuls in.

    ``compute_dtype`` when given; else, under autocast on the hidden states' device (CUDA or
    CPU) with float16/bfloat16/float32 inputs, the autocast dtype -- what ``nn.Linear`` would
    use there; else the inputs' common dtype (a mismatch is refused, as ``nn.Linear`` refuses
    it outside autocast).
    """
    if compute_dtype is not None:
        if not compute_dtype.is_floating_point:
            raise ValueError(f"compute_dtype must be a floating dtype, got {compute_dtype}")
        return compute_dtype
    tensors = [t for t in (hidden, weight, bias) if t is not None]
    dev = hidden.device.type
    if (
        is_autocast_available(dev)
        and torch.is_autocast_enabled(dev)
        and all(t.dtype in _AUTOCASTABLE for t in tensors)
    ):
        return torch.get_autocast_dtype(dev)
    if len({t.dtype for t in tensors}) > 1:
        raise ValueError(
            f"hidden ({hidden.dtype}), weight ({weight.dtype})"
            + ("" if bias is None else f" and bias ({bias.dtype})")
            + " must share a dtype outside autocast (or pass compute_dtype)"
        )
    return hidden.dtype


def _head_operands(hidden, weight, bias, cd):
    """Flattened hidden states (n, D) and the head in the compute dtype (one cast each)."""
    return (
        hidden.reshape(-1, weight.shape[1]),
        weight.to(cd),
        None if bias is None else bias.to(cd),
    )


def _chunk_logits(h, Wc, bc, sl, cd, acc):
    """``z = h[sl] W^T + b`` (c, V): the matmul in ``cd``, returned as a new ``acc`` tensor."""
    z = torch.nn.functional.linear(h[sl].to(cd), Wc, bc)
    return z if z.dtype == acc else z.to(acc)


def _head_grads(hidden, weight, bias, targets, lse, grad, cd, needs):
    """``(dh, dW, db)`` of ``sum_n grad_n out_n`` for the fused head, row chunk by row chunk:
    ``G_c = g_c (onehot(y_c) - softmax(z_c))``, ``dh_c = G_c W``, ``dW = sum_c G_c^T h_c``,
    ``db = sum_c 1^T G_c`` (``dW`` and ``db`` accumulated in the accumulation dtype, then cast
    to the parameters' dtypes). ``needs`` (3 bools) selects the outputs; the others are None."""
    acc = lse.dtype
    h, Wc, bc = _head_operands(hidden, weight, bias, cd)
    y, g = targets.reshape(-1), grad.reshape(-1).to(acc)
    (n, D), V = h.shape, weight.shape[0]
    dev = hidden.device
    dh = torch.empty(hidden.shape, dtype=hidden.dtype, device=dev) if needs[0] else None
    dW = torch.zeros((V, D), dtype=acc, device=dev) if needs[1] else None
    db = torch.zeros(V, dtype=acc, device=dev) if needs[2] else None
    step = _chunk_rows(V, 2 * _itemsize(acc))  # the chunk's logits (then G) and a cast
    with _no_autocast(dev):
        for lo in range(0, n, step):
            sl = slice(lo, lo + step)
            G = _chunk_logits(h, Wc, bc, sl, cd, acc)
            G = _grad_from_softmax_(_softmax_rows_(G, lse[sl]), y[sl], g[sl])
            if dh is not None:
                dh.view(-1, D)[sl] = (G.to(cd) @ Wc).to(dh.dtype)
            if dW is not None:
                dW.addmm_(G.T, h[sl].to(acc))
            if db is not None:
                db += G.sum(0)
    return (
        dh,
        None if dW is None else dW.to(weight.dtype),
        None if db is None else db.to(bias.dtype),
    )


class _LinearSelectiveLogSoftmax(torch.autograd.Function):
    """``out_n = z_n[y_n] - logsumexp(z_n)`` with ``z_n = h_n W^T + b``, by row chunks; saves
    only ``hidden``, ``weight``, ``bias``, ``targets`` and the per-row log-normalisers."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, cd):
        acc = _acc_dtype(cd)
        h, Wc, bc = _head_operands(hidden, weight, bias, cd)
        y = targets.reshape(-1)
        n, V = h.shape[0], weight.shape[0]
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        picked = torch.empty_like(lse)
        step = _chunk_rows(V, 2 * _itemsize(acc))  # the chunk's logits and logsumexp's exp
        with _no_autocast(hidden.device):
            for lo in range(0, n, step):
                sl = slice(lo, lo + step)
                z = _chunk_logits(h, Wc, bc, sl, cd, acc)
                picked[sl] = z.gather(-1, y[sl].unsqueeze(-1)).squeeze(-1)
                lse[sl] = torch.logsumexp(z, dim=-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.cd = cd
        return (picked - lse).view(targets.shape)

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        if torch.is_grad_enabled():  # create_graph (double backward): a differentiable node
            grads = _LinearHeadGrad.apply(hidden, weight, bias, targets, lse, grad, ctx.cd, needs)
        else:
            grads = _head_grads(hidden, weight, bias, targets, lse, grad, ctx.cd, needs)
        return *grads, None, None


class _LinearHeadGrad(torch.autograd.Function):
    """``(dh, dW, db)`` of the fused head (:func:`_head_grads`) as a differentiable function of
    ``(h, W, b, g)``, for double backward. With ``P = softmax(z)``, ``G = diag(g) (Y - P)``
    (``Y`` the one-hot targets) and incoming ``(Uh, UW, Ub)``, per row chunk:
    ``M = Uh W^T + h UW^T + 1 Ub^T``, ``s_i = <M_i, P_i>``, ``Dz = -diag(g) P (M - s)``, and

    * ``dL/dg_i = M_{i, y_i} - s_i``,
    * ``dL/dh = G UW + Dz W``, ``dL/dW = G^T Uh + Dz^T h``, ``dL/db = sum_i Dz_i``

    (``G UW`` and ``G^T Uh`` differentiate ``dW = G^T h`` and ``dh = G W`` at fixed ``G``; the
    rest runs through ``G``'s dependence on ``z = h W^T + b`` and ``g``). Three chunk
    temporaries (``P``, ``M``, ``G``); nothing vocabulary-sized is kept between chunks."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, lse, grad, cd, needs):
        ctx.save_for_backward(hidden, weight, bias, targets, lse, grad)
        ctx.cd = cd
        ctx.set_materialize_grads(False)  # an unused output (e.g. dW in WDPO) gets None
        return _head_grads(hidden, weight, bias, targets, lse, grad, cd, needs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, Uh, UW, Ub):
        hidden, weight, bias, targets, lse, grad = ctx.saved_tensors
        cd, acc = ctx.cd, lse.dtype
        need_h, need_W, need_b, _, _, need_g = ctx.needs_input_grad[:6]
        h, Wc, bc = _head_operands(hidden, weight, bias, cd)
        y, g = targets.reshape(-1), grad.reshape(-1).to(acc)
        (n, D), V = h.shape, weight.shape[0]
        dev = hidden.device
        uh = None if Uh is None else Uh.reshape(-1, D)
        uw = None if UW is None else UW.to(acc)
        ub = None if Ub is None else Ub.to(acc)
        dh = torch.zeros((n, D), dtype=acc, device=dev) if need_h else None
        dW = torch.zeros((V, D), dtype=acc, device=dev) if need_W else None
        db = torch.zeros(V, dtype=acc, device=dev) if need_b else None
        dg = torch.zeros(n, dtype=acc, device=dev) if need_g else None
        step = _chunk_rows(V, 3 * _itemsize(acc))  # P, M and G
        with _no_autocast(dev):
            for lo in range(0, n, step):
                sl = slice(lo, lo + step)
                P = _softmax_rows_(_chunk_logits(h, Wc, bc, sl, cd, acc), lse[sl])
                hc = h[sl].to(acc)
                # terms at fixed G: d<UW, G^T h>/dh = G UW, d<Uh, G W>/dW = G^T Uh
                if (dh is not None and uw is not None) or (dW is not None and uh is not None):
                    G = _grad_from_softmax_(P.clone(), y[sl], g[sl])
                    if dh is not None and uw is not None:
                        dh[sl] += G @ uw
                    if dW is not None and uh is not None:
                        dW.addmm_(G.T, uh[sl].to(acc))
                    del G
                M = None  # dL/dG on the chunk
                if uh is not None:
                    M = _chunk_logits(uh, Wc, None, sl, cd, acc)
                if uw is not None:
                    M = hc @ uw.T if M is None else M.addmm_(hc, uw.T)
                if ub is not None:
                    M = ub.expand(P.shape).clone() if M is None else M.add_(ub)
                if M is None:
                    continue  # no incoming gradient: every derivative is 0
                dgc = _softmax_grad_vjp_(P, M, y[sl], g[sl], need_h or need_W or need_b)
                if dg is not None:
                    dg[sl] = dgc
                if dh is not None:  # Dz W
                    dh[sl] += (P.to(cd) @ Wc).to(acc)
                if dW is not None:  # Dz^T h
                    dW.addmm_(P.T, hc)
                if db is not None:
                    db += P.sum(0)
        return (
            None if dh is None else dh.view(hidden.shape).to(hidden.dtype),
            None if dW is None else dW.to(weight.dtype),
            None if db is None else db.to(bias.dtype),
            None,
            None,
            None if dg is None else dg.view(grad.shape).to(grad.dtype),
            None,
            None,
        )


def linear_selective_log_softmax(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Log-probabilities of ``targets`` under a linear head, without the logits ("fused linear
    head", as in fused linear cross-entropy), shape ``targets.shape``.

    ``out[n] = z_n[y_n] - logsumexp_v z_n[v]`` with ``z_n = h_n W^T + b`` (nats). Rows are
    processed in chunks whose float32 temporaries fit :data:`CHUNK_BYTES`: each chunk's logits
    are computed, reduced and dropped, so no (rows, V) tensor ever exists, in the forward or in
    any backward. Saved for backward: ``hidden``, ``weight``, ``bias``, ``targets`` and one
    log-normaliser per row. The backward recomputes each chunk's logits (one more head matmul)
    and gives ``dh = G W``, ``dW = G^T h``, ``db = 1^T G`` with
    ``G = diag(g) (onehot(y) - softmax(z))``, ``dW``/``db`` accumulated in float32 over chunks
    and computed only for inputs that require grad (a frozen or LoRA-wrapped base head costs
    no ``dW``). A ``create_graph=True`` backward (WDPO's double backward) builds ``(dh, dW, db)``
    as one differentiable node whose own backward is chunked too; third derivatives raise.
    A head weight tied to the input embedding is just a weight that also receives the
    embedding's gradient.

    Dtypes: the head matmuls run in :func:`head_compute_dtype` -- the autocast dtype under
    (CUDA or CPU) autocast, else the inputs' dtype, or ``compute_dtype`` -- exactly where
    ``nn.Linear`` would run them, so the rounded logits are the model's; reductions
    (logsumexp, softmax, the gradients' sums) run in float32, or float64 for float64 inputs.
    ``dh`` is ``G`` rounded to the compute dtype times ``W`` (as ``nn.Linear``'s backward);
    ``dW`` and ``db`` are accumulated in float32 and cast to the parameters' dtypes. The
    computation does not depend on the autocast state at backward time.

    Parameters
    ----------
    hidden : Tensor (..., D)
        The head's input (the final hidden states).
    weight : Tensor (V, D)
        The head's weight (``nn.Linear(D, V).weight``).
    targets : LongTensor (...)
        Token ids in ``[0, V)``.
    bias : Tensor (V,) or None
    compute_dtype : torch.dtype or None
        Force the matmuls' dtype (default: see above).

    Returns
    -------
    Tensor (...) in float32 (float64 for a float64 compute dtype). Equal to
    ``naive_log_softmax(linear(hidden, weight, bias), targets)`` up to float rounding, with
    the same first and second derivatives.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be (V, D), got shape {tuple(weight.shape)}")
    V, D = weight.shape
    if hidden.shape[-1:] != (D,):
        raise ValueError(f"hidden {tuple(hidden.shape)} must end in D = {D} (weight is (V, D))")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree"
        )
    if targets.dtype != torch.long:
        raise ValueError(f"targets must be int64 token ids, got {targets.dtype}")
    if bias is not None and bias.shape != (V,):
        raise ValueError(f"bias must have shape ({V},), got {tuple(bias.shape)}")
    cd = head_compute_dtype(hidden, weight, bias, compute_dtype)
    tensors = [t for t in (hidden, weight, bias) if t is not None]
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        with torch.no_grad():  # no graph: the forward alone (chunked), nothing saved
            return _LinearSelectiveLogSoftmax.forward(_NoCtx(), hidden, weight, bias, targets, cd)
    return _LinearSelectiveLogSoftmax.apply(hidden, weight, bias, targets, cd)


class _NoCtx:
    def save_for_backward(self, *a):
        pass
