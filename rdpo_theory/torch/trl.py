"""The robust losses inside TRL: a ``DPOTrainer`` whose loss is DPO, KLDPO, WDPO or a baseline.

TRL's ``DPOTrainer`` (tested with trl 1.16.x; the extra ``rdpo-theory[trl]`` pins that range)
computes per-token log-probs with a fused LM head (``model(..., labels=labels,
fused_lm_head=True).log_probs``, chunked, no full logits) inside one monolithic
``_compute_loss``. This subclass overrides ``compute_loss`` and keeps everything else of TRL:

* the policy's chosen/rejected log-probs come from TRL's own fused forward, exactly as TRL
  computes them for its ``sigmoid`` loss (the B chosen rows of the (2B, T) batch first);
* the reference log-probs come from TRL: the batch's ``ref_chosen_logps``/``ref_rejected_logps``
  under ``precompute_ref_log_probs=True``, else :meth:`DPOTrainer.compute_ref_log_probs` (a
  reference model, or a PEFT policy with its adapters disabled);
* WDPO needs the gradient of its input-gradient penalty (a double backward), which TRL's fused
  LM-head kernel does not provide; its policy forward therefore goes through ``inputs_embeds``
  and the model's logits with :func:`rdpo_theory.torch.lm.pair_logps` (selective
  log-softmax, double-backward capable). Its reference log-probs still come from TRL.

DPOConfig options: ``beta``; ``precompute_ref_log_probs``; ``label_smoothing`` is the flip rate
``eps`` of ``cdpo`` (conservative DPO) and ``rdpo`` (robust DPO, TRL's ``robust``);
``use_weighting`` (WPO weights) multiplies the per-pair losses of the methods whose loss is a
mean of per-pair losses (``dpo``, ``cdpo``, ``rdpo``, ``ipo``); MoE auxiliary losses are added
as TRL does. ``padding_free`` is switched off by TRL 1.16 itself. Options that change the loss
itself (``loss_type`` other than ``sigmoid``, ``loss_weights``, ``f_divergence_type``,
``ld_alpha``) or that do not combine with a robust loss are refused with an error.

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
from .lm import BATCH_KEYS, pair_logps
from .train import check_loss_kwargs, resolve_loss

__all__ = ["WEIGHTABLE_METHODS", "RobustDPOTrainer"]

#: Methods whose loss is the mean of per-pair losses, so WPO's per-pair weights apply.
WEIGHTABLE_METHODS = ("dpo", "cdpo", "rdpo", "ipo")
_NON_MODEL_KEYS = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps", "weight")


def _check_args(method: str, kwargs: dict, args) -> dict:
    """Refuse DPOConfig options a robust loss cannot honour; return the loss kwargs with
    ``eps`` taken from ``label_smoothing`` for cDPO/rDPO."""
    kw = dict(kwargs)
    if args is None:
        return kw
    loss_type = list(getattr(args, "loss_type", ["sigmoid"]) or ["sigmoid"])
    if loss_type != ["sigmoid"]:
        raise InputError(
            f"RobustDPOTrainer replaces TRL's loss: args.loss_type must be ['sigmoid'] (the "
            f"default), got {loss_type}; choose the loss with robust_method"
        )
    weights = getattr(args, "loss_weights", None)
    if weights not in (None, [1.0]):
        raise InputError(f"args.loss_weights must be None with RobustDPOTrainer, got {weights}")
    fdiv = getattr(args, "f_divergence_type", "reverse_kl")
    if str(getattr(fdiv, "value", fdiv)) != "reverse_kl":
        raise InputError(
            f"args.f_divergence_type must be 'reverse_kl' with RobustDPOTrainer (the robust "
            f"losses are defined on log-ratio margins), got {fdiv!r}"
        )
    if getattr(args, "ld_alpha", None) is not None:
        raise InputError(
            "args.ld_alpha (LD-DPO length weighting) is not supported by RobustDPOTrainer"
        )
    ls = float(getattr(args, "label_smoothing", 0.0) or 0.0)
    if ls > 0:
        if method not in ("cdpo", "rdpo"):
            raise InputError(
                f"args.label_smoothing={ls} is a label-flip rate: use robust_method='cdpo' "
                f"(conservative DPO) or 'rdpo' (robust DPO), not {method!r}"
            )
        if "eps" in kw and kw["eps"] != ls:
            raise InputError(
                f"robust_kwargs eps={kw['eps']} disagrees with args.label_smoothing={ls}"
            )
        kw["eps"] = ls
    if getattr(args, "use_weighting", False) and method not in WEIGHTABLE_METHODS:
        raise InputError(
            f"args.use_weighting (WPO per-pair weights) applies to a mean of per-pair losses "
            f"{WEIGHTABLE_METHODS}, not to {method!r}, whose objective reweights pairs itself"
        )
    if method == "wdpo" and getattr(args, "gradient_checkpointing", False):
        raise InputError(
            "robust_method 'wdpo' needs args.gradient_checkpointing=False: the WDPO penalty "
            "differentiates an input gradient (double backward), which activation "
            "checkpointing's recomputation does not support (TRL's DPOConfig turns it on "
            "by default)"
        )
    return kw


class RobustDPOTrainer(DPOTrainer):
    """``trl.DPOTrainer`` with the loss of ``robust_method`` (``dpo``, ``kldpo``, ``wdpo`` or a
    baseline name) and its parameters ``robust_kwargs`` (e.g. ``{"tau": 1.0}`` or
    ``{"rho0": 50.0, "variant": "per-pair"}``); ``beta`` is ``args.beta``. See the module
    docstring for which DPOConfig options apply.

    A ``weight`` column in the dataset (numbers >= 0) is honoured by every loss: a pair of
    weight k counts as k copies of it (``weights`` of :mod:`rdpo_theory.torch.losses`).

    Logged metrics (TRL's log): ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
    ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected`` and the loss's own stats under
    ``robust/<name>`` (e.g. ``robust/weight_entropy``, ``robust/penalty``).
    """

    def __init__(
        self, *args, robust_method: str = "dpo", robust_kwargs: dict | None = None, **kwargs
    ):
        resolve_loss(robust_method)
        self.robust_method = robust_method
        train = kwargs.get("train_dataset", args[2] if len(args) > 2 else None)
        self.has_weights = _check_weight_column(train)
        targs = kwargs.get("args", args[1] if len(args) > 1 else None)
        kw = _check_args(robust_method, dict(robust_kwargs or {}), targs)  # eps from smoothing
        self.robust_kwargs = check_loss_kwargs(robust_method, kw, name="robust_kwargs")
        super().__init__(*args, **kwargs)
        if self.padding_free:  # pragma: no cover - TRL 1.16 switches padding_free off itself
            raise InputError(
                "padding_free batches are not supported by RobustDPOTrainer: the robust losses "
                "need the (2B, T) chosen/rejected layout"
            )
        if self.has_weights:  # pass the weight column through TRL's collator
            self.data_collator = _WithWeights(self.data_collator)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.has_weights and "weight" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "weight"]

    def _policy_logps(self, model, inputs):
        """TRL's own fused forward: ``(chosen_logps (B,), rejected_logps (B,), outputs,
        per_token_logps (2B, T-1))``, summed over completion tokens as TRL sums them."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = completion_mask.shape[1] - 1
        per_token = outputs.log_probs[:, -seq_len:]
        pc, pr = per_token.sum(dim=1).chunk(2, dim=0)
        return pc, pr, outputs, per_token

    def _reference_logps(self, model, inputs):
        if self.precompute_ref_logps:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        ref = self.ref_model if self.ref_model is not None else model
        return self.compute_ref_log_probs(ref, inputs)

    def _wpo_weights(self, outputs, per_token, inputs) -> torch.Tensor:
        """WPO's per-pair weights (TRL's ``use_weighting``): the product over the chosen and
        rejected completion of ``exp(mean_t (log p_t - log sum_v p_v^2))``, without gradient."""
        mask = inputs["completion_mask"][:, 1:]
        seq_len = mask.shape[1]
        with torch.no_grad():
            aligned = (per_token - outputs.log_sum_sq_probs[:, -seq_len:]) * mask
            w = torch.exp(aligned.sum(dim=1) / mask.sum(dim=1).clamp_min(1))
        wc, wr = w.chunk(2, dim=0)
        return wc * wr

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        kw = dict(self.robust_kwargs)
        outputs = None
        if self.robust_method == "wdpo":  # double backward: through the logits, not the kernel
            batch = {k: inputs[k] for k in BATCH_KEYS}
            pc, pr, emb = pair_logps(model, batch, with_embeddings=True)
            kw["inputs"] = emb
        else:
            pc, pr, outputs, per_token = self._policy_logps(model, inputs)
        rc, rr = self._reference_logps(model, inputs)
        if "weight" in inputs:
            kw["weights"] = inputs["weight"].to(device=pc.device, dtype=pc.dtype)
        rc, rr = rc.to(pc.dtype), rr.to(pc.dtype)
        beta = self.args.beta
        out = resolve_loss(self.robust_method)(pc, pr, rc, rr, beta=beta, **kw)
        loss = out.loss
        if self.use_weighting:
            w = self._wpo_weights(outputs, per_token, inputs).to(out.per_pair.dtype)
            loss = (out.per_pair * w).mean()
        if self.aux_loss_enabled and outputs is not None:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        ch, rj = beta * (pc - rc).detach(), beta * (pr - rr).detach()
        g = self.accelerator.gather
        met = self._metrics[mode]
        met["rewards/chosen"].append(g(ch).mean().item())
        met["rewards/rejected"].append(g(rj).mean().item())
        met["rewards/margins"].append(g(ch - rj).mean().item())
        met["rewards/accuracies"].append(g((ch > rj).float()).mean().item())
        met["logps/chosen"].append(g(pc.detach()).mean().item())
        met["logps/rejected"].append(g(pr.detach()).mean().item())
        for k, v in out.stats.items():
            if k not in ("margin_mean", "accuracy"):
                met[f"robust/{k}"].append(float(v))
        if return_outputs:
            return loss, {"per_pair": out.per_pair.detach()}
        return loss


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
