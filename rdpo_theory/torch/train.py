"""Preference training of Hugging Face causal LMs with DPO, KLDPO, WDPO (and the baselines),
built on ``accelerate`` (docs/theory.md#code-variants).

:func:`train_preference` trains a policy against a frozen reference on rows
``{"prompt", "chosen", "rejected"}``:

* sequence log-probs with prompt masking and padding awareness (:mod:`rdpo_theory.torch.lm`);
  WDPO forwards through ``inputs_embeds`` to penalise the embedding gradient, either by double
  backward (exact; math attention kernel) or, with ``wdpo_hvp="finite-difference"``, by a
  central-difference Hessian-vector product (three first-order passes; fused attention stays on);
* ``accelerate`` places the model, runs bf16 autocast when a bf16-capable GPU is present
  (``mixed_precision="auto"``), accumulates gradients and, under ``accelerate launch``, runs
  data-parallel (DDP, FSDP or DeepSpeed from the user's accelerate config). Each process takes
  its own slice of every global micro-batch; KLDPO's weights use the global batch (all_gather);
* AdamW, grad-norm clipping, linear warmup then constant or linear decay;
* checkpoints (``accelerator.save_state`` plus ``trainer_state.json``) every ``save_every`` steps
  and at the end, and exact resume (data order is a pure function of seed and step);
* rows may carry a ``weight`` (>= 0; a pair of weight k counts as k copies of it in every
  loss) and a ``group`` (string); ``method="group_dpo"`` trains group-robust DPO with online
  exponentiated-gradient group weights, all-reduced across workers and saved in checkpoints;
* a tqdm bar and a JSON-lines metrics log (``metrics.jsonl``): loss, reward margins and
  accuracy, KLDPO weight entropy / max weight / batch radius, WDPO penalty and gradient RMS,
  grad norm, learning rate, seconds per step.

This module is the public face of the trainer; the work is done by modules of one job each:
:mod:`~rdpo_theory.torch.config` (:class:`TrainConfig`, the method registry),
:mod:`~rdpo_theory.torch.loop` (the loop), :mod:`~rdpo_theory.torch.steps` (one micro-batch's
loss and backward), :mod:`~rdpo_theory.torch.checkpoints` (checkpoints, metrics log),
:mod:`~rdpo_theory.torch.nonfinite` (the non-finite rule) and
:mod:`~rdpo_theory.torch.run_config` (the recorded configuration that resume checks).
"""

from __future__ import annotations

from .checkpoints import METRICS_FILE, STATE_FILE, latest_checkpoint, read_metrics, save_checkpoint
from .config import (
    CORE_METHODS,
    FD_PRECISIONS,
    ON_NONFINITE,
    PER_PAIR_KEYWORDS,
    TRAINER_KEYWORDS,
    WDPO_HVP,
    TrainConfig,
    check_loss_kwargs,
    check_run_fields,
    loss_methods,
    resolve_loss,
)
from .loop import (
    TrainResult,
    check_rows,
    make_accelerator,
    micro_batch_indices,
    setup_reference,
    train_preference,
)
from .steps import accumulated_statistic, compute_loss, loss_and_backward, wdpo_fd_backward

__all__ = [
    "CORE_METHODS",
    "FD_PRECISIONS",
    "METRICS_FILE",
    "ON_NONFINITE",
    "PER_PAIR_KEYWORDS",
    "STATE_FILE",
    "TRAINER_KEYWORDS",
    "WDPO_HVP",
    "TrainConfig",
    "check_loss_kwargs",
    "check_run_fields",
    "loss_methods",
    "TrainResult",
    "accumulated_statistic",
    "check_rows",
    "compute_loss",
    "latest_checkpoint",
    "loss_and_backward",
    "make_accelerator",
    "micro_batch_indices",
    "read_metrics",
    "resolve_loss",
    "save_checkpoint",
    "setup_reference",
    "train_preference",
    "wdpo_fd_backward",
]
