"""Per-pair log-probabilities of a causal LM on a preference set, for audits.

:func:`score_pairs` runs the trainer's log-prob code (:func:`rdpo_theory.torch.lm.pair_logps`)
without gradients in parameters and returns one row per pair with the four log-prob columns of
the TRL convention (nats). With ``beta`` it also returns ``grad_sq_norm``, the squared norm of
the gradient of the pair's DPO loss with respect to the policy's input embeddings (chosen and
rejected tokens together), the quantity in WDPO's first-order penalty
(docs/theory.md#algorithm-1-wdpo).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from ..audit import LOGP_COLUMNS
from ..errors import InputError
from ..options import POSITIVE_INT, check


def score_pairs(
    model,
    tokenizer,
    rows: Sequence[dict],
    *,
    ref_model=None,
    beta: float | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    device=None,
    progress: bool = False,
) -> pd.DataFrame:
    """Sequence log-probs of ``rows`` ({prompt, chosen, rejected}) under a policy and reference.

    Parameters
    ----------
    model, ref_model : causal LMs (``ref_model=None``: reference log-probs are 0, so the margin
        is ``beta`` times the policy's log-likelihood ratio of chosen over rejected).
    tokenizer : the policy's tokenizer (both models must share it).
    rows : sequence of dicts with string ``prompt``, ``chosen``, ``rejected``.
    beta : float > 0, optional
        With it, the column ``grad_sq_norm = ||grad_e l_i||^2`` of the DPO loss
        ``l_i = softplus(-beta ((pc - rc) - (pr - rr)))`` in the policy's input embeddings e.
    batch_size : int
        Pairs per forward pass.
    max_length : int, optional
        Truncation (see :func:`rdpo_theory.torch.lm.encode_pairs`).

    Returns
    -------
    DataFrame, one row per pair: :data:`LOGP_COLUMNS` (float64, nats) and, with ``beta``,
    ``grad_sq_norm``.
    """
    check("batch_size", batch_size, POSITIVE_INT, owner="score_pairs")
    if not rows:
        raise InputError("rows is empty: need at least one preference pair")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = {k: [] for k in LOGP_COLUMNS}
    if beta is not None:
        out["grad_sq_norm"] = []
    model.eval()
    if ref_model is not None:
        ref_model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # gradients are taken in the input embeddings only
        p.requires_grad_(False)
    try:
        _score(
            model, ref_model, tokenizer, rows, beta, batch_size, max_length, device, out, progress
        )
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return pd.DataFrame({k: torch.cat(v).numpy() for k, v in out.items()})


def _score(model, ref_model, tokenizer, rows, beta, batch_size, max_length, device, out, progress):
    from tqdm.auto import tqdm

    from .lm import encode_pairs, pair_logps
    from .losses import dpo_margins, dpo_pair_losses, input_grad_sq_norms

    starts = range(0, len(rows), batch_size)
    for lo in tqdm(starts, desc="scoring pairs", disable=not progress):
        part = rows[lo : lo + batch_size]
        b = encode_pairs(
            tokenizer,
            [r["prompt"] for r in part],
            [r["chosen"] for r in part],
            [r["rejected"] for r in part],
            max_length=max_length,
        )
        b = {k: v.to(device) for k, v in b.items()}
        with torch.no_grad():
            if ref_model is not None:
                rc, rr, _ = pair_logps(ref_model, b)
            else:
                rc = rr = torch.zeros(len(part), device=device)
        if beta is None:
            with torch.no_grad():
                pc, pr, _ = pair_logps(model, b)
        else:
            pc, pr, emb = pair_logps(model, b, with_embeddings=True)
            per = dpo_pair_losses(dpo_margins(pc, pr, rc, rr, beta=beta))
            out["grad_sq_norm"].append(input_grad_sq_norms(per, emb).detach().double().cpu())
        for k, v in zip(LOGP_COLUMNS, (pc, pr, rc, rr)):
            out[k].append(v.detach().double().cpu())
