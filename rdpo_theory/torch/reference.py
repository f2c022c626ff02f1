"""Where the reference log-probs ``log pi_ref(y | x)`` of a preference batch come from
(``docs/theory.md#dpo-loss``), in order of precedence:

1. **precomputed**: the batch carries ``ref_chosen_logps`` / ``ref_rejected_logps`` (B,), built
   from rows that carry ``ref_chosen_logp`` / ``ref_rejected_logp`` -- given by the user, or
   computed once before training by :func:`with_reference_logps` and cached in a file keyed by
   a hash of the rows, the tokenizer, the model weights and the scoring settings. Training then
   needs no reference model in memory;
2. **a copy**: a frozen reference model (the default of a full fine-tune);
3. **adapters disabled**: for a PEFT (LoRA) policy, the same model with its adapters switched
   off, which is the frozen base model -- no second copy in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .adapters import adapters_disabled, is_peft_model
from .lm import encode_pairs, pair_logps, unwrap_model

__all__ = [
    "BATCH_REF_KEYS",
    "ROW_REF_KEYS",
    "precompute_reference_logps",
    "reference_cache_key",
    "reference_logps",
    "row_reference_values",
    "with_reference_logps",
]

#: Keys of precomputed reference log-probs (nats, summed over completion tokens) in a row.
ROW_REF_KEYS = ("ref_chosen_logp", "ref_rejected_logp")
#: Keys of the (B,) tensors of precomputed reference log-probs in a batch.
BATCH_REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps")
CACHE_PREFIX = "ref_logps-"


def reference_logps(ref_model, model, batch: dict, *, accelerator=None, fused_head=False):
    """``(ref_chosen_logps (B,), ref_rejected_logps (B,))`` of a preference batch, without
    gradients: the batch's precomputed values if it has them, else ``ref_model``'s log-probs,
    else (``ref_model is None`` and ``model`` a PEFT model) ``model``'s with adapters disabled.
    Forward passes run under ``accelerator.autocast()`` when an accelerator is given;
    ``fused_head``: see :func:`rdpo_theory.torch.lm.sequence_logps`."""
    if BATCH_REF_KEYS[0] in batch:
        return batch[BATCH_REF_KEYS[0]], batch[BATCH_REF_KEYS[1]]
    ctx = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        if ref_model is not None:
            rc, rr, _ = pair_logps(ref_model, batch, fused_head=fused_head)
        elif is_peft_model(model):
            with adapters_disabled(model):
                rc, rr, _ = pair_logps(model, batch, fused_head=fused_head)
        else:
            raise InputError(
                "no reference log-probs: pass ref_model, use a PEFT model (its adapters-disabled "
                "base is the reference), or give rows ref_chosen_logp/ref_rejected_logp "
                "(TrainConfig(precompute_ref=True) computes them)"
            )
    return rc, rr


def row_reference_values(rows) -> np.ndarray | None:
    """The rows' precomputed reference log-probs as an (n, 2) float64 array (chosen, rejected),
    or None when no row has them. Either every row carries both finite numbers or none does."""
    has = [any(k in r for k in ROW_REF_KEYS) for r in rows]
    if not any(has):
        return None
    out = np.empty((len(rows), 2))
    for i, r in enumerate(rows):
        for j, k in enumerate(ROW_REF_KEYS):
            v = r.get(k)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InputError(
                    f"dataset row {i} needs a finite number {k!r} (some rows carry precomputed "
                    f"reference log-probs, so all must); got {v!r}"
                )
            out[i, j] = v
    return out


def _hash_model(h, model) -> None:
    """Feed the reference weights into ``h``: every parameter and buffer of a plain model; for
    a PEFT model only the frozen (base) ones, which are the reference."""
    inner = unwrap_model(model)
    peft = is_peft_model(inner)
    h.update(type(inner).__name__.encode())
    named = list(inner.named_parameters()) + list(inner.named_buffers())
    for name, t in sorted(named, key=lambda kv: kv[0]):
        if peft and t.requires_grad:
            continue
        t = t.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def reference_cache_key(
    model, tokenizer, rows, *, max_length: int | None, add_eos: bool, precision: str = "no"
) -> str:
    """A hex digest of everything the reference log-probs depend on: the rows' text (in
    order), the tokenizer's vocabulary and special tokens, the reference weights, ``max_length``,
    ``add_eos`` and the mixed precision of the forward pass."""
    h = hashlib.blake2b(digest_size=16)
    text = [[r["prompt"], r["chosen"], r["rejected"]] for r in rows]
    h.update(json.dumps(text).encode())
    vocab = sorted(tokenizer.get_vocab().items())
    h.update(json.dumps([vocab, tokenizer.eos_token_id, tokenizer.pad_token_id]).encode())
    h.update(json.dumps([max_length, bool(add_eos), str(precision)]).encode())
    _hash_model(h, model)
    return h.hexdigest()


def precompute_reference_logps(
    model,
    tokenizer,
    rows,
    *,
    ref_model=None,
    batch_size: int = 8,
    max_length: int | None = None,
    add_eos: bool = True,
    accelerator=None,
    progress: bool = False,
    fused_head: bool = False,
) -> np.ndarray:
    """Reference log-probs of every row, (n, 2) float64 (chosen, rejected), in one pass without
    gradients: ``ref_model``'s if given, else ``model``'s with adapters disabled (PEFT), else
    ``model``'s own in eval mode (before training, the policy is the reference).
    ``fused_head``: score without the logits (:func:`rdpo_theory.torch.lm.sequence_logps`)."""
    from tqdm.auto import tqdm

    if ref_model is None and not is_peft_model(model):
        ref_model = model
    device = next(unwrap_model(model).parameters()).device
    out = np.empty((len(rows), 2))
    inner = unwrap_model(ref_model) if ref_model is not None else None
    was_training = inner.training if inner is not None else None
    if inner is not None:
        inner.eval()
    try:
        for lo in tqdm(
            range(0, len(rows), batch_size), desc="reference log-probs", disable=not progress
        ):
            part = rows[lo : lo + batch_size]
            b = encode_pairs(
                tokenizer,
                [r["prompt"] for r in part],
                [r["chosen"] for r in part],
                [r["rejected"] for r in part],
                max_length=max_length,
                add_eos=add_eos,
            )
            b = {k: v.to(device) for k, v in b.items()}
            rc, rr = reference_logps(
                ref_model, model, b, accelerator=accelerator, fused_head=fused_head
            )
            out[lo : lo + len(part), 0] = rc.double().cpu().numpy()
            out[lo : lo + len(part), 1] = rr.double().cpu().numpy()
    finally:
        if inner is not None:
            inner.train(was_training)
    if not np.isfinite(out).all():
        i = int(np.argwhere(~np.isfinite(out))[0, 0])
        raise InputError(f"the reference log-prob of dataset row {i} is not finite")
    return out


def with_reference_logps(
    model,
    tokenizer,
    rows,
    *,
    cache_dir=None,
    ref_model=None,
    batch_size: int = 8,
    max_length: int | None = None,
    add_eos: bool = True,
    accelerator=None,
    progress: bool = False,
    fused_head: bool = False,
) -> list[dict]:
    """``rows`` with ``ref_chosen_logp`` / ``ref_rejected_logp`` added (new dicts).

    Rows that already carry them are returned as they are. Otherwise the values come from
    ``cache_dir/ref_logps-<key>.json`` when that file exists (``key`` from
    :func:`reference_cache_key`), else from :func:`precompute_reference_logps`, and are then
    written there (by the main process) for the next run. ``cache_dir=None``: no file.
    ``fused_head`` (:func:`rdpo_theory.torch.lm.sequence_logps`) changes how the values are
    computed, not what they are (float rounding), so it is not part of the cache key.
    """
    rows = list(rows)
    if row_reference_values(rows) is not None:
        return rows
    prec = accelerator.mixed_precision if accelerator is not None else "no"
    ref = ref_model if ref_model is not None else model
    path = None
    if cache_dir is not None:
        key = reference_cache_key(
            ref, tokenizer, rows, max_length=max_length, add_eos=add_eos, precision=prec
        )
        path = Path(cache_dir) / f"{CACHE_PREFIX}{key}.json"
    values = None
    if path is not None and path.exists():
        data = json.loads(path.read_text())
        values = np.array([data[ROW_REF_KEYS[0]], data[ROW_REF_KEYS[1]]]).T
        if data.get("key") != key or values.shape != (len(rows), 2):
            raise InputError(f"reference cache {path} is corrupt (key or row count differs)")
    if values is None:
        values = precompute_reference_logps(
            model,
            tokenizer,
            rows,
            ref_model=ref_model,
            batch_size=batch_size,
            max_length=max_length,
            add_eos=add_eos,
            accelerator=accelerator,
            progress=progress,
            fused_head=fused_head,
        )
        if path is not None and (accelerator is None or accelerator.is_main_process):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "key": key,
                        "n_rows": len(rows),
                        ROW_REF_KEYS[0]: values[:, 0].tolist(),
                        ROW_REF_KEYS[1]: values[:, 1].tolist(),
                    }
                )
            )
            tmp.replace(path)
    return [
        {**r, ROW_REF_KEYS[0]: float(a), ROW_REF_KEYS[1]: float(b)}
        for r, (a, b) in zip(rows, values)
    ]
