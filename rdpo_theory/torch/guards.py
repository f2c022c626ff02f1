"""Finiteness guards for the torch losses and the trainer.

Two layers, both documented in ``docs/reliability.md``:

* **Losses** (:mod:`rdpo_theory.torch.losses`, :mod:`rdpo_theory.torch.baselines`) check
  shapes and arguments on every call, but by default *propagate* non-finite values in the
  log-prob tensors (NaN in, NaN out), because checking a tensor's values costs a
  host-device synchronisation. With the debug flag on -- :func:`set_debug` or the environment
  variable ``RDPO_DEBUG=1`` -- every loss refuses non-finite log-probs with an
  :class:`~rdpo_theory.errors.InputError` naming the tensor and the first bad index. The check
  runs once per loss call, never inside a loop.
* **The trainer** (:func:`rdpo_theory.torch.train.train_preference`) checks the loss of every
  micro-batch and the global gradient norm of every optimizer step (one synchronisation per
  step) and, with ``TrainConfig(on_nonfinite="raise")``, stops with a
  :class:`~rdpo_theory.errors.NonFiniteError` naming the step and the first non-finite
  quantity, or with ``"skip"`` drops that update and counts it. It never saves a model with
  non-finite parameters (:func:`check_finite_parameters`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from ..errors import InputError, NonFiniteError

_DEBUG: bool | None = None  # None: read RDPO_DEBUG


def set_debug(flag: bool | None = True) -> None:
    """Turn the losses' value checks on (``True``) or off (``False``) for this process;
    ``None`` goes back to the environment variable ``RDPO_DEBUG``, which ``True``/``False``
    override. With the flag on, every torch loss
    raises :class:`~rdpo_theory.errors.InputError` on NaN or inf log-probs (one
    synchronisation per call); with it off (the default) non-finite inputs propagate to the
    outputs, and the trainer's own guards catch them.
    """
    global _DEBUG
    _DEBUG = None if flag is None else bool(flag)


def debug_enabled() -> bool:
    """Whether the losses check their inputs' values (:func:`set_debug` or ``RDPO_DEBUG``)."""
    if _DEBUG is not None:
        return _DEBUG
    return os.environ.get("RDPO_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The description of the first tensor in ``named`` holding NaN or inf (name, count and
    first flat index), or None when all are finite. One synchronisation per tensor."""
    for name, t in named:
        if t is None or not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        bad = ~torch.isfinite(t.detach())
        if bool(bad.any()):
            flat = bad.reshape(-1)
            idx = int(flat.nonzero()[0, 0])
            value = float(t.detach().reshape(-1)[idx])
            return (
                f"{name} ({int(flat.sum())} of {flat.numel()} values non-finite; "
                f"first at index {idx}: {value})"
            )
    return None


def check_finite_inputs(named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Raise :class:`InputError` naming the first non-finite tensor, when the debug flag is on
    (:func:`debug_enabled`); do nothing otherwise."""
    if not debug_enabled():
        return
    bad = first_nonfinite(named)
    if bad is not None:
        raise InputError(f"{bad}; the losses need finite log-probs (debug check, RDPO_DEBUG)")


def all_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor: every tensor in ``tensors`` is finite (no synchronisation)."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors]
    if not flags:
        return torch.tensor(True)
    return torch.stack([f.to(flags[0].device) for f in flags]).all()


def check_finite_parameters(model, *, what: str) -> None:
    """Raise :class:`NonFiniteError` when a parameter of ``model`` holds NaN or inf, naming
    the first such tensor; ``what`` says what was about to happen (e.g. ``"save final/"``)."""
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        raise NonFiniteError(
            f"refusing to {what}: {len(bad)} parameter tensors hold NaN or inf (first: {bad[0]})",
            quantity=bad[0],
        )


__all__ = [
    "all_finite",
    "check_finite_inputs",
    "check_finite_parameters",
    "debug_enabled",
    "first_nonfinite",
    "set_debug",
]
