"""The trainer's non-finite step rule (``TrainConfig.on_nonfinite``): detect a NaN/inf loss or
gradient norm on any process (one synchronisation per step), name the first non-finite
quantity (only on failure), and raise or skip. See ``docs/reliability.md``."""

from __future__ import annotations

import torch

from ..errors import NonFiniteError
from .guards import all_finite, first_nonfinite
from .lm import pair_logps, unwrap_model
from .reference import reference_logps


def nonfinite_step(acc, losses: list, grad_norm) -> bool:
    """Whether any micro-batch loss (or the gradient norm) of this step is non-finite, on any
    process. One synchronisation."""
    ok = all_finite(losses + ([grad_norm] if grad_norm is not None else []))
    bad = (~ok).to(device=acc.device, dtype=torch.float32)
    if acc.num_processes > 1:
        bad = acc.reduce(bad, reduction="sum")
    return bool(bad > 0)


@torch.no_grad()
def diagnose_nonfinite(cfg, model, ref_model, batches, losses, acc) -> str:
    """Name the first non-finite quantity of a failed step (runs only on failure): the
    log-probs of the first micro-batch whose loss is non-finite, else that loss, else the
    first parameter with a non-finite gradient."""
    for a, (batch, loss) in enumerate(zip(batches, losses)):
        if bool(torch.isfinite(loss)):
            continue
        with acc.autocast():
            pc, pr, _ = pair_logps(model, batch, fused_head=cfg.fused_head)
        rc, rr = reference_logps(
            ref_model, model, batch, accelerator=acc, fused_head=cfg.fused_head
        )
        names = ("policy_chosen_logps", "policy_rejected_logps")
        names += ("reference_chosen_logps", "reference_rejected_logps")
        bad = first_nonfinite(zip(names, (pc, pr, rc, rr)))
        where = f" in micro-batch {a}" if len(batches) > 1 else ""
        return f"{bad}{where}" if bad else f"loss{where} (value {float(loss)})"
    for name, p in unwrap_model(model).named_parameters():
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return f"grad_norm (first non-finite gradient: {name})"
    return "grad_norm"


def raise_nonfinite(step: int, what: str):
    """The error of ``on_nonfinite="raise"`` for optimizer step ``step`` (1-based)."""
    raise NonFiniteError(
        f"step {step}: non-finite {what}; training stopped before the optimizer step, the "
        "weights are unchanged (use TrainConfig(on_nonfinite='skip') to drop such steps)",
        step=step,
        quantity=what.split(" ")[0],
    )


__all__ = ["diagnose_nonfinite", "nonfinite_step", "raise_nonfinite"]
