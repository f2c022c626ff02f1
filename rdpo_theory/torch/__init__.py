"""Thin torch backend: the preference losses on log-prob tensors, and (in submodules) a trainer
for Hugging Face causal LMs. Importing this package imports torch but not transformers."""

from .losses import (
    LossOutput,
    dpo_loss,
    dpo_margins,
    dpo_pair_losses,
    input_grad_sq_norms,
    kl_weights,
    kldpo_loss,
    kldpo_objective,
    wdpo_loss,
    wdpo_objective,
)

__all__ = [
    "LossOutput",
    "dpo_loss",
    "dpo_margins",
    "dpo_pair_losses",
    "input_grad_sq_norms",
    "kl_weights",
    "kldpo_loss",
    "kldpo_objective",
    "wdpo_loss",
    "wdpo_objective",
]
