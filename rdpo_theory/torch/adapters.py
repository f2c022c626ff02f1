"""LoRA (and other PEFT adapters) for preference training: wrap the policy, use the same base
model with its adapters disabled as the reference (no second copy in memory), and checkpoint
only the trainable (adapter) weights.

``peft`` is an optional dependency (extra ``rdpo-theory[lora]``); it is imported only when an
adapter configuration is given or a model is inspected.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

from ..errors import InputError
from .lm import unwrap_model

__all__ = [
    "adapters_disabled",
    "apply_peft",
    "is_peft_model",
    "load_adapter_checkpoint",
    "register_adapter_checkpointing",
    "trainable_names",
]


def is_peft_model(model) -> bool:
    """Whether ``model`` (possibly wrapped by DDP/accelerate) is a ``peft.PeftModel``."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(unwrap_model(model), PeftModel)


def apply_peft(model, peft_config):
    """``peft.get_peft_model(model, peft_config)``: base weights frozen, adapters trainable.

    Raises InputError when ``peft`` is missing or ``model`` already carries adapters."""
    try:
        from peft import get_peft_model
    except ImportError:  # pragma: no cover - peft ships with the lora extra
        raise InputError(
            "peft_config needs the 'peft' package: pip install 'rdpo-theory[lora]'"
        ) from None
    if is_peft_model(model):
        raise InputError(
            "peft_config was given but the model already has adapters (a PeftModel); pass the "
            "base model, or the PeftModel with peft_config=None"
        )
    # a copy: peft expands the config in place ("all-linear" -> module names), and the run's
    # recorded configuration must stay the one the user gave
    return get_peft_model(model, copy.deepcopy(peft_config))


@contextlib.contextmanager
def adapters_disabled(model):
    """The base model: adapters off and eval mode (no dropout) inside the block, restored after.
    This is the reference of a LoRA run (``docs/theory.md#dpo-loss``: ``pi_ref`` is the model
    before training, which the base weights are, since they never change)."""
    inner = unwrap_model(model)
    was_training = inner.training
    inner.eval()
    try:
        with inner.disable_adapter():
            yield model
    finally:
        inner.train(was_training)


def trainable_names(model) -> set[str]:
    """State-dict names of the parameters that require grad (the adapters of a PEFT model)."""
    return {n for n, p in model.named_parameters() if p.requires_grad}


def register_adapter_checkpointing(accelerator) -> None:
    """Make ``accelerator.save_state`` write only the trainable weights of PEFT models (the
    adapters; the frozen base is the pretrained model the run starts from), so a LoRA
    checkpoint costs megabytes, not a copy of the base model. Load with
    :func:`load_adapter_checkpoint`."""

    def hook(models, weights, output_dir):
        for i, m in enumerate(models):
            if is_peft_model(m):
                keep = trainable_names(m)
                weights[i] = {k: v for k, v in weights[i].items() if k in keep}

    accelerator.register_save_state_pre_hook(hook)


def load_adapter_checkpoint(accelerator, model, path) -> None:
    """``accelerator.load_state(path)`` for a PEFT model checkpointed by
    :func:`register_adapter_checkpointing`: the model file must hold exactly the trainable
    weights (checked, so a partial or foreign checkpoint is an error, not a silent skip)."""
    from safetensors import safe_open

    path = Path(path)
    f = path / "model.safetensors"
    if not f.exists():
        raise InputError(f"checkpoint {path} has no model.safetensors")
    with safe_open(str(f), framework="pt") as h:
        keys = set(h.keys())
    want = trainable_names(model)
    if keys != want:
        missing, extra = sorted(want - keys)[:3], sorted(keys - want)[:3]
        raise InputError(
            f"checkpoint {path} does not hold this model's adapters: missing {missing}, "
            f"unexpected {extra} (was it written by a run with another peft_config?)"
        )
    accelerator.load_state(str(path), strict=False)
