"""Sequence log-probabilities of Hugging Face causal LMs for preference losses.

A preference batch stacks the chosen and rejected sequences of B pairs as 2B rows
``[chosen_0 .. chosen_{B-1}, rejected_0 .. rejected_{B-1}]``, each row ``prompt + completion``,
right-padded:

* ``input_ids`` (2B, T) int64, ``attention_mask`` (2B, T) in {0, 1} (0 on padding),
* ``completion_mask`` (2B, T) in {0, 1}: 1 on completion tokens only (prompt masking).

The sequence log-prob of row r is ``sum_t completion_mask[r, t] * log p(ids[r, t] | ids[r, <t])``
in nats. Position ids are computed from the attention mask, so left padding works too.
When WDPO needs the gradient with respect to the input embeddings, the forward pass goes through
``inputs_embeds`` with the chosen and rejected embeddings as two separate tensors (pair i's loss
depends on row i of each), as :func:`rdpo_theory.torch.losses.input_grad_sq_norms` requires.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def _math_attention():
        return sdpa_kernel(SDPBackend.MATH)

except ImportError:  # pragma: no cover - older torch: the CPU/GPU default may lack 2nd order
    from contextlib import nullcontext as _math_attention

from ..errors import InputError
from ..options import POSITIVE_INT, check
from .logprobs import head_compute_dtype, linear_selective_log_softmax, selective_log_softmax

BATCH_KEYS = ("input_ids", "attention_mask", "completion_mask")


def unwrap_model(model):
    """The underlying model of a DDP/accelerate-wrapped one (a ``PreTrainedModel``, or a
    ``PeftModel`` for LoRA runs)."""
    while hasattr(model, "module"):
        model = model.module
    return model


_unwrap = unwrap_model  # the former private name


def _pad_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    if pid is None:
        pid = tokenizer.eos_token_id
    if pid is None:
        raise InputError("tokenizer has neither a pad token nor an eos token to pad with")
    return int(pid)


def encode_pairs(
    tokenizer,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    *,
    max_length: int | None = None,
    add_eos: bool = True,
    stats: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenize B preference pairs into a right-padded batch of 2B rows (see module docstring).

    Prompt and completion are tokenized separately (so the prompt/completion boundary is exact)
    and concatenated; ``add_eos`` appends the tokenizer's eos token to each completion.

    Truncation rule (``docs/reliability.md``): a row longer than ``max_length`` keeps the
    *end* of its prompt and the *start* of its completion. Prompt tokens are dropped from the
    left first, down to one prompt token; then completion tokens are dropped from the right.
    Truncated rows are counted: into ``stats["truncated"]`` (and all rows into
    ``stats["sequences"]``) when a ``stats`` dict is given, else in a warning.
    To stay within a model's positions use :func:`effective_max_length`.
    """
    B = len(prompts)
    if B == 0:
        raise InputError("prompts is empty: need at least one pair")
    if len(chosen) != B or len(rejected) != B:
        raise InputError(
            f"prompts, chosen and rejected must have equal lengths, got {B}, {len(chosen)}, "
            f"{len(rejected)}"
        )
    if max_length is not None and max_length < 2:
        raise InputError(f"max_length must be >= 2, got {max_length}")
    eos = tokenizer.eos_token_id if add_eos else None
    rows, comp = [], []
    n_cut = 0
    p_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for completions in (chosen, rejected):
        for p, c in zip(p_ids, completions):
            c_ids = tokenizer(c, add_special_tokens=False)["input_ids"]
            if eos is not None:
                c_ids = c_ids + [eos]
            if not c_ids:
                raise InputError("a completion tokenizes to zero tokens; nothing to score")
            p_cur = list(p)
            if max_length is not None and len(p_cur) + len(c_ids) > max_length:
                n_cut += 1
                keep_p = max(1, max_length - len(c_ids))
                p_cur = p_cur[-keep_p:] if p_cur else []
                c_ids = c_ids[: max_length - len(p_cur)]
            rows.append(p_cur + c_ids)
            comp.append([0] * len(p_cur) + [1] * len(c_ids))
    if stats is not None:
        stats["truncated"] = stats.get("truncated", 0) + n_cut
        stats["sequences"] = stats.get("sequences", 0) + 2 * B
    elif n_cut:
        import warnings

        warnings.warn(
            f"{n_cut} of {2 * B} sequences were longer than max_length={max_length} tokens and "
            "were truncated (the prompt's end and the completion's start are kept)",
            stacklevel=2,
        )
    T = max(len(r) for r in rows)
    pad = _pad_id(tokenizer)
    ids = torch.full((2 * B, T), pad, dtype=torch.long)
    att = torch.zeros((2 * B, T), dtype=torch.long)
    cm = torch.zeros((2 * B, T), dtype=torch.long)
    for r, (row, cmask) in enumerate(zip(rows, comp)):
        ids[r, : len(row)] = torch.tensor(row)
        att[r, : len(row)] = 1
        cm[r, : len(row)] = torch.tensor(cmask)
    return {"input_ids": ids, "attention_mask": att, "completion_mask": cm}


def max_positions(model) -> int | None:
    """The number of positions ``model`` can embed (``n_positions``,
    ``max_position_embeddings`` or ``n_ctx`` of its config), or None when it has no such
    limit (e.g. rotary embeddings without a declared maximum)."""
    conf = getattr(unwrap_model(model), "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(conf, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def effective_max_length(model, max_length: int | None) -> int | None:
    """``max_length`` capped at the model's positions (:func:`max_positions`), so that no
    sequence can index past them. ``None`` means the model's limit. A ``max_length`` above
    the limit is lowered with a warning."""
    limit = max_positions(model)
    if limit is None:
        return max_length
    if max_length is None:
        return limit
    if max_length > limit:
        import warnings

        warnings.warn(
            f"max_length={max_length} exceeds the model's {limit} positions; using {limit}",
            stacklevel=2,
        )
        return limit
    return max_length


def check_batch(batch) -> int:
    """Validate a preference batch; return the number of pairs B."""
    for k in BATCH_KEYS:
        if k not in batch:
            raise InputError(f"batch is missing {k!r}; it needs {BATCH_KEYS}")
    shape = batch["input_ids"].shape
    if len(shape) != 2 or shape[0] % 2:
        raise InputError(f"input_ids must have shape (2B, T), got {tuple(shape)}")
    for k in BATCH_KEYS[1:]:
        if batch[k].shape != shape:
            raise InputError(f"{k} has shape {tuple(batch[k].shape)}; expected {tuple(shape)}")
    return shape[0] // 2


def embed_tokens(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Token-embedding output ``E[input_ids]`` (N, T, H) of ``model``, with requires_grad."""
    emb = unwrap_model(model).get_input_embeddings()(input_ids)
    if not emb.requires_grad:  # frozen embedding table: still differentiate w.r.t. its output
        emb = emb.detach().requires_grad_(True)
    return emb


def sequence_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    inputs_embeds: torch.Tensor | None = None,
    fused_head: bool = False,
) -> torch.Tensor:
    """Summed completion log-probs (nats) of each row, shape (N,), float32 or wider.

    ``log p(row) = sum_{t >= 1} m_t log softmax(logits_{t-1})[ids_t]`` with
    ``m_t = completion_mask_t * attention_mask_t``. Padding and prompt tokens contribute 0.
    With ``inputs_embeds`` (N, T, H) the model is called on embeddings instead of ids.
    Token log-probs come from :func:`~rdpo_theory.torch.logprobs.selective_log_softmax`: no
    float32 copy of the logits, which stay the only vocabulary-sized tensor of the step.

    ``fused_head=True`` never forms the logits (N, T, V): the model runs with
    ``output_hidden_states=[-1]`` (the last hidden state only) and ``logits_to_keep=1``, and
    the token log-probs come from its final hidden states and output head by
    :func:`~rdpo_theory.torch.logprobs.linear_selective_log_softmax` (row chunks, in the dtype
    the model's head ran in, autocast included). The head must be a plain ``nn.Linear`` whose
    output is the model's logits (see :func:`output_head`); the one position the model still
    scores is checked against the fused computation (:func:`check_fused_head`). Same values and
    gradients up to float rounding; the only vocabulary-sized tensors of a step are then
    chunk temporaries, also in WDPO's double backward.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    kwargs = dict(attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    if inputs_embeds is None:
        kwargs["input_ids"] = input_ids
    else:
        kwargs["inputs_embeds"] = inputs_embeds
    target = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)  # last column: unused
    if fused_head:
        tok = _fused_token_logps(model, kwargs, target)[:, :-1]
    else:
        out = model(**kwargs)
        logits = out.logits  # (N, T, V), model dtype; scored whole (a [:, :-1] slice would copy)
        del out
        tok = selective_log_softmax(logits, target)[:, :-1]
        del logits
    mask = (completion_mask[:, 1:] * attention_mask[:, 1:]).to(tok.dtype)
    return (tok * mask).sum(-1)


#: Config attributes of Hugging Face models that transform the logits after the output head
#: (Gemma 2/3 soft-capping, Cohere's ``logit_scale``, Granite's ``logits_scaling``), with the
#: value that means "no transform".
LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": 1, "logits_scaling": 1}


def output_head(model) -> torch.nn.Linear:
    """The output head of ``model`` (unwrapped: DDP, accelerate, PEFT) for ``fused_head``.

    It must be a plain ``torch.nn.Linear`` (``get_output_embeddings()``), and the model's
    config must declare no logit transform after it (:data:`LOGIT_TRANSFORMS`); otherwise
    :class:`~rdpo_theory.errors.InputError` (a LoRA-wrapped or quantised head, soft-capping).
    Sharded parameters (FSDP, DeepSpeed ZeRO-3) are refused too: the fused head reads the
    weight outside the model's forward, where those engines hold only a shard of it.
    """
    wrappers, m = [type(model).__name__], model
    while hasattr(m, "module"):
        m = m.module
        wrappers.append(type(m).__name__)
    inner = unwrap_model(model)
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if type(head) is not torch.nn.Linear:
        raise InputError(
            "fused_head=True needs the model's output head (get_output_embeddings()) to be a "
            f"plain torch.nn.Linear, got {type(head).__name__} (e.g. a LoRA-wrapped or "
            "quantised head); use fused_head=False"
        )
    w = head.weight
    if (
        "FullyShardedDataParallel" in wrappers
        or hasattr(w, "ds_id")  # DeepSpeed ZeRO-3
        or type(w).__name__ == "DTensor"  # FSDP2
    ):
        raise InputError(
            "fused_head=True needs the output head's whole weight outside the forward pass; "
            "FSDP and DeepSpeed ZeRO-3 shard it (single process and DDP work); use "
            "fused_head=False"
        )
    conf = getattr(inner, "config", None)
    for key, neutral in LOGIT_TRANSFORMS.items():
        v = getattr(conf, key, None)
        if v is not None and v != neutral:
            raise InputError(
                f"fused_head=True cannot be used: the model transforms its logits after the "
                f"head (config.{key} = {v!r}); use fused_head=False"
            )
    return head


def check_fused_head(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    logits: torch.Tensor,
    compute_dtype: torch.dtype,
) -> None:
    """Refuse ``fused_head`` for a model whose logits are not ``head(hidden_states[-1])``.

    ``hidden`` (N, D): the final hidden states at one position; ``logits`` (N, V): the model's
    own logits there. They must agree with ``hidden W^T + b`` computed in ``compute_dtype``
    (the dtype the head ran in) to ``|diff| <= eps (4 max|z| + sqrt(D) max||h|| max||W_v||)``
    (``eps`` of ``compute_dtype``: rounding and summation order); otherwise the model
    transforms its logits after the head or its last hidden state is not the head's input,
    and :class:`~rdpo_theory.errors.InputError` names ``fused_head``.
    """
    with torch.no_grad():
        cd = compute_dtype
        b = None if head.bias is None else head.bias.to(cd)
        z = torch.nn.functional.linear(hidden.to(cd), head.weight.to(cd), b).double()
        ref = logits.double()
        diff = float((z - ref).abs().max()) if z.numel() else 0.0
        D = head.weight.shape[1]
        bound = float(hidden.double().norm(dim=-1).max()) if z.numel() else 0.0
        # the largest row norm of W in its own dtype (the reduction accumulates in float32),
        # 1% over for that rounding: no float64 copy of the (V, D) weight on every call
        bound *= 1.01 * float(head.weight.norm(dim=-1).max()) * D**0.5
        tol = torch.finfo(cd).eps * (4 * max(1.0, float(ref.abs().max())) + bound)
    if not diff <= tol:
        raise InputError(
            f"fused_head=True cannot be used for this model: its logits differ from "
            f"hidden_states[-1] @ head.weight^T + head.bias by {diff:.3g} (tolerance "
            f"{tol:.3g} in {cd}), so it transforms its logits after the output head or its last "
            "hidden state is not the head's input; use fused_head=False"
        )


def _fused_token_logps(model, kwargs: dict, target: torch.Tensor) -> torch.Tensor:
    """Token log-probs (N, T) of ``target`` through the fused head (see :func:`sequence_logps`).
    A forward hook on the head records the dtype it ran in (autocast, e.g. inside an
    accelerate-prepared forward), which the fused computation then uses."""
    head = output_head(model)
    seen = []

    def record(mod, args, output):
        seen.append(head_compute_dtype(args[0], mod.weight, mod.bias))

    inner = unwrap_model(model)
    base = inner.get_base_model() if callable(getattr(inner, "get_base_model", None)) else inner
    params = inspect.signature(base.forward).parameters
    if "logits_to_keep" not in params and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    ):
        raise InputError(
            f"fused_head=True needs a model whose forward takes logits_to_keep "
            f"({type(base).__name__}'s does not; recent transformers versions have it); use "
            "fused_head=False"
        )
    handle = head.register_forward_hook(record)
    try:
        # only the last hidden state is kept (transformers >= 5 selects it by index; older
        # versions read the list as True and return them all)
        out = model(**kwargs, output_hidden_states=[-1], logits_to_keep=1)
    finally:
        handle.remove()
    hs = getattr(out, "hidden_states", None)
    logits = getattr(out, "logits", None)
    if not hs or hs[-1] is None or logits is None or len(seen) != 1 or logits.shape[1] != 1:
        raise InputError(
            "fused_head=True needs a causal LM that returns hidden_states "
            "(output_hidden_states), honours logits_to_keep=1 and calls its output head "
            f"once (got hidden_states={'yes' if hs else 'no'}, logits of shape "
            f"{None if logits is None else tuple(logits.shape)}, {len(seen)} head call(s)); "
            "use fused_head=False"
        )
    hidden = hs[-1]  # (N, T, D): the head's input
    del out, hs
    check_fused_head(hidden[:, -1], head, logits[:, -1], seen[0])
    del logits
    return linear_selective_log_softmax(
        hidden, head.weight, target, head.bias, compute_dtype=seen[0]
    )


def pair_logps(
    model,
    batch: dict[str, torch.Tensor],
    *,
    with_embeddings: bool = False,
    fused_head: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """``(chosen_logps (B,), rejected_logps (B,), embeddings)`` of a preference batch.

    With ``with_embeddings`` the forward goes through ``inputs_embeds`` and ``embeddings`` is
    ``(emb_chosen, emb_rejected)``, each (B, T, H) with requires_grad, for WDPO; else None.
    That forward runs scaled-dot-product attention on its math backend, the only one with a
    double backward (WDPO differentiates the embedding gradient). ``fused_head``: see
    :func:`sequence_logps`.
    """
    B = check_batch(batch)
    ids, att, cm = (batch[k] for k in BATCH_KEYS)
    if with_embeddings:
        emb_c, emb_r = embed_tokens(model, ids[:B]), embed_tokens(model, ids[B:])
        # fused SDPA kernels (flash, memory-efficient) have no double backward: use the math one
        with _math_attention():
            lp = sequence_logps(
                model, ids, att, cm, inputs_embeds=torch.cat([emb_c, emb_r]), fused_head=fused_head
            )
        return lp[:B], lp[B:], (emb_c, emb_r)
    lp = sequence_logps(model, ids, att, cm, fused_head=fused_head)
    return lp[:B], lp[B:], None


@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    batch_size: int = 256,
) -> list[str]:
    """Sample one completion per prompt (text after the prompt), reproducibly from ``seed``.

    Prompts are left-padded for generation; the completion stops at eos or ``max_new_tokens``.
    """
    check("max_new_tokens", max_new_tokens, POSITIVE_INT, owner="sample_completions")
    m = unwrap_model(model)
    was_training = m.training
    m.eval()
    device = next(m.parameters()).device
    pad = _pad_id(tokenizer)
    out: list[str] = []
    torch.manual_seed(int(seed))
    for lo in range(0, len(prompts), batch_size):
        enc = [
            tokenizer(p, add_special_tokens=False)["input_ids"]
            for p in prompts[lo : lo + batch_size]
        ]
        T = max(len(e) for e in enc)
        ids = torch.full((len(enc), T), pad, dtype=torch.long)
        att = torch.zeros_like(ids)
        for r, e in enumerate(enc):
            ids[r, T - len(e) :] = torch.tensor(e, dtype=torch.long)
            att[r, T - len(e) :] = 1
        gen = m.generate(
            input_ids=ids.to(device),
            attention_mask=att.to(device),
            do_sample=True,
            temperature=temperature,
            top_k=top_k if top_k is not None else 0,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        out.extend(tokenizer.batch_decode(gen[:, T:], skip_special_tokens=True))
    m.train(was_training)
    return out
