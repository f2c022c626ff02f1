"""The robust losses inside TRL: a ``DPOTrainer`` whose loss is DPO, KLDPO, WDPO or a baseline.

TRL's ``DPOTrainer`` (tested with trl 1.16.x; the extra ``rdpo-theory[trl]`` pins that range)
has no public per-loss hook: its ``_compute_loss`` is one monolithic method. This subclass
overrides ``compute_loss`` and relies only on TRL's batch format, ``input_ids``,
``attention_mask`` and ``completion_mask`` of shape (2B, T) with the B chosen rows first (and
``ref_chosen_logps``/``ref_rejected_logps`` when ``precompute_ref_log_probs=True``). Log-probs
come from :mod:`rdpo_theory.torch.lm`, the loss from :mod:`rdpo_theory.torch.losses`. If a TRL
release changes that batch format, this class breaks: that is why the range is pinned.

Example
-------
>>> from trl import DPOConfig
>>> from rdpo_theory.torch.trl import RobustDPOTrainer
>>> trainer = RobustDPOTrainer(model=model, ref_model=ref, args=DPOConfig(output_dir="out"),
...                            train_dataset=ds, processing_class=tokenizer,
...                            robust_method="kldpo", robust_kwargs={"tau": 1.0})
>>> trainer.train()
"""

from __future__ import annotations

import torch
from trl import DPOTrainer

from ..errors import InputError
from .lm import pair_logps
from .train import check_loss_kwargs, resolve_loss

__all__ = ["RobustDPOTrainer"]


class RobustDPOTrainer(DPOTrainer):
    """``trl.DPOTrainer`` with the loss of ``robust_method`` (``dpo``, ``kldpo``, ``wdpo`` or a
    baseline name) and its parameters ``robust_kwargs`` (e.g. ``{"tau": 1.0}`` or
    ``{"rho0": 50.0, "variant": "per-pair"}``); ``beta`` is ``args.beta``.

    A ``weight`` column in the dataset (numbers >= 0) is honoured by every loss: a pair of
    weight k counts as k copies of it (``weights`` of :mod:`rdpo_theory.torch.losses`).

    Logged metrics (TRL's log): ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
    ``rewards/accuracies`` and the loss's own stats under ``robust/<name>`` (e.g.
    ``robust/weight_entropy``, ``robust/penalty``). A reference model (or
    ``precompute_ref_log_probs=True``) is required; PEFT adapter-as-reference is not supported.
    """

    def __init__(
        self, *args, robust_method: str = "dpo", robust_kwargs: dict | None = None, **kwargs
    ):
        self.robust_kwargs = check_loss_kwargs(
            robust_method, dict(robust_kwargs or {}), name="robust_kwargs"
        )
        self.robust_method = robust_method
        train = kwargs.get("train_dataset", args[2] if len(args) > 2 else None)
        self.has_weights = _check_weight_column(train)
        targs = kwargs.get("args", args[1] if len(args) > 1 else None)
        if robust_method == "wdpo" and getattr(targs, "gradient_checkpointing", False):
            raise InputError(
                "robust_method 'wdpo' needs args.gradient_checkpointing=False: the WDPO penalty "
                "differentiates an input gradient (double backward), which activation "
                "checkpointing's recomputation does not support (TRL's DPOConfig turns it on "
                "by default)"
            )
        super().__init__(*args, **kwargs)
        if self.ref_model is None and not self.precompute_ref_logps:
            raise InputError(
                "RobustDPOTrainer needs ref_model or args.precompute_ref_log_probs=True"
            )
        if self.has_weights:  # pass the weight column through TRL's collator
            self.data_collator = _WithWeights(self.data_collator)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.has_weights and "weight" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "weight"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        batch = {k: inputs[k] for k in ("input_ids", "attention_mask", "completion_mask")}
        wdpo = self.robust_method == "wdpo"
        pc, pr, emb = pair_logps(model, batch, with_embeddings=wdpo)
        if self.precompute_ref_logps:
            rc, rr = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            with torch.no_grad():
                rc, rr, _ = pair_logps(self.ref_model, batch)
        kw = dict(self.robust_kwargs)
        if wdpo:
            kw["inputs"] = emb
        if "weight" in inputs:
            kw["weights"] = inputs["weight"].to(device=pc.device, dtype=pc.dtype)
        rc, rr = rc.to(pc.dtype), rr.to(pc.dtype)
        out = resolve_loss(self.robust_method)(pc, pr, rc, rr, beta=self.args.beta, **kw)
        beta = self.args.beta
        ch, rj = beta * (pc - rc).detach(), beta * (pr - rr).detach()
        g = self.accelerator.gather
        met = self._metrics[mode]
        met["rewards/chosen"].append(g(ch).mean().item())
        met["rewards/rejected"].append(g(rj).mean().item())
        met["rewards/margins"].append(g(ch - rj).mean().item())
        met["rewards/accuracies"].append(g((ch > rj).float()).mean().item())
        for k, v in out.stats.items():
            if k not in ("margin_mean", "accuracy"):
                met[f"robust/{k}"].append(float(v))
        if return_outputs:
            return out.loss, {"per_pair": out.per_pair.detach()}
        return out.loss


def _check_weight_column(dataset) -> bool:
    """Whether ``dataset`` has a ``weight`` column; its values must be finite and >= 0."""
    import numpy as np

    names = getattr(dataset, "column_names", None) or []
    if "weight" not in names:
        return False
    w = np.asarray(dataset["weight"], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        raise InputError(
            f"train_dataset row {int(bad[0])}: weight must be a finite number >= 0, "
            f"got {w[bad[0]]!r}"
        )
    if not w.sum() > 0:
        raise InputError("train_dataset: every weight is 0; at least one row needs weight > 0")
    return True


class _WithWeights:
    """TRL's collator plus a ``weight`` tensor (B,) from the examples."""

    def __init__(self, base):
        self.base = base

    def __call__(self, examples):
        out = self.base(examples)
        out["weight"] = torch.tensor([float(e["weight"]) for e in examples], dtype=torch.float64)
        return out
