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

``robust_normalizer`` (``"auto"``, the default, ``"batch"``, ``"accumulated"`` or
``"running"``; ``"micro-batch"`` is a deprecated alias of ``"batch"``; ``"auto"`` is
``"running"`` for KLDPO ``normalized`` and WDPO ``sqrt-mean`` without per-pair weights and
``"batch"`` otherwise, and ``trainer.robust_normalizer`` holds the resolved value) and
``robust_decay`` mean what they mean in :class:`rdpo_theory.torch.train.TrainConfig`
(docs/theory.md#minibatch-fixed-point): ``"accumulated"`` normalises KLDPO's weights (or WDPO
``sqrt-mean``'s S) over every micro-batch of one optimiser step (``per_device_train_batch_size``
x processes x ``gradient_accumulation_steps`` pairs) by a first pass over the step's micro-batches
(:meth:`RobustDPOTrainer.get_batch_samples`: the reference log-probs, kept for the second pass,
and a no-grad policy forward); ``"running"`` keeps an all-reduced moving average, saved in each
checkpoint folder (``robust_normalizer.json``) and restored by
``trainer.train(resume_from_checkpoint=...)``. Evaluation always uses the ``"batch"`` normaliser.

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

import json
import os

import torch
from trl import DPOTrainer

from ..errors import InputError, NonFiniteError
from . import losses as TL
from .config import check_loss_kwargs, resolve_loss
from .guards import first_nonfinite
from .lm import BATCH_KEYS, pair_logps
from .normalizers import (
    DEFAULT_DECAY,
    DEFAULT_TRAINER_NORMALIZER,
    RunningStatistic,
    check_decay,
    check_trainer_normalizer,
    normalized_loss,
    resolve_trainer_normalizer,
    step_statistic,
)

__all__ = ["NORMALIZER_FILE", "WEIGHTABLE_METHODS", "RobustDPOTrainer"]

#: Methods whose loss is the mean of per-pair losses, so WPO's per-pair weights apply.
WEIGHTABLE_METHODS = ("dpo", "cdpo", "rdpo", "ipo")
_NON_MODEL_KEYS = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps", "weight")
#: The running normaliser's file in each checkpoint folder.
NORMALIZER_FILE = "robust_normalizer.json"


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

    ``robust_normalizer`` and ``robust_decay``: which pairs normalise KLDPO's weights and WDPO
    ``sqrt-mean``'s penalty, as in :class:`rdpo_theory.torch.train.TrainConfig` (see the module
    docstring); ``"accumulated"`` and ``"running"`` refuse a ``weight`` column and
    ``use_weighting``.

    Logged metrics (TRL's log): ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
    ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected`` and the loss's own stats under
    ``robust/<name>`` (e.g. ``robust/weight_entropy``, ``robust/ess``, ``robust/weight_max``,
    ``robust/normalizer``, ``robust/clip_fraction``, ``robust/penalty``).
    """

    def __init__(
        self,
        *args,
        robust_method: str = "dpo",
        robust_kwargs: dict | None = None,
        robust_normalizer: str = DEFAULT_TRAINER_NORMALIZER,
        robust_decay: float = DEFAULT_DECAY,
        **kwargs,
    ):
        resolve_loss(robust_method)
        self.robust_method = robust_method
        train = kwargs.get("train_dataset", args[2] if len(args) > 2 else None)
        self.has_weights = _check_weight_column(train)
        targs = kwargs.get("args", args[1] if len(args) > 1 else None)
        kw = _check_args(robust_method, dict(robust_kwargs or {}), targs)  # eps from smoothing
        self.robust_kwargs = check_loss_kwargs(robust_method, kw, name="robust_kwargs")
        self.robust_normalizer = check_trainer_normalizer(
            robust_normalizer, robust_method, self.robust_kwargs
        )
        self.robust_decay = check_decay(robust_decay, "robust_decay", owner="RobustDPOTrainer")
        weighted = self.has_weights or getattr(targs, "use_weighting", False)
        if self.robust_normalizer not in ("auto", "batch") and weighted:
            raise InputError(
                f"robust_normalizer={self.robust_normalizer!r} does not take per-pair weights (a "
                "'weight' column or args.use_weighting); use robust_normalizer='batch'"
            )
        # "auto": running where it applies, else batch (the TRL path differentiates WDPO's
        # penalty by double backward only)
        robust_normalizer = resolve_trainer_normalizer(
            self.robust_normalizer, robust_method, self.robust_kwargs, weighted=weighted
        )
        self.robust_normalizer = robust_normalizer
        self._running = None
        if robust_normalizer == "running":
            self._running = RunningStatistic(robust_decay, log_space=robust_method == "kldpo")
        self._step_statistic = None  # robust_normalizer="accumulated": set per optimiser step
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
        if self.precompute_ref_logps or "ref_chosen_logps" in inputs:  # or the first pass's
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
        norm = None
        if mode == "train":
            norm = self._running if self._running is not None else self._step_statistic
        if norm is not None:
            out = normalized_loss(self.robust_method, norm, pc, pr, rc, rr, beta=beta, **kw)
        else:
            out = resolve_loss(self.robust_method)(pc, pr, rc, rr, beta=beta, **kw)
        loss = out.loss
        if self.use_weighting:
            w = self._wpo_weights(outputs, per_token, inputs).to(out.per_pair.dtype)
            loss = (out.per_pair * w).mean()
        if self.aux_loss_enabled and outputs is not None:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        if mode == "train" and not bool(torch.isfinite(loss.detach())):
            self._raise_nonfinite(loss, pc, pr, rc, rr)
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

    def _raise_nonfinite(self, loss, pc, pr, rc, rr):
        """A non-finite training loss stops the run before its backward pass, naming the first
        non-finite log-prob (or the loss): TRL itself would go on with NaN weights."""
        names = ("policy_chosen_logps", "policy_rejected_logps")
        names += ("reference_chosen_logps", "reference_rejected_logps")
        what = first_nonfinite(zip(names, (pc, pr, rc, rr))) or f"loss (value {float(loss)})"
        step = self.state.global_step + 1
        raise NonFiniteError(
            f"RobustDPOTrainer step {step}: non-finite {what}; training stopped before the "
            "backward pass",
            step=step,
            quantity=what.split(" ")[0],
        )

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """TRL's micro-batches of one optimiser step; with ``robust_normalizer="accumulated"``
        also the first pass over them: the reference log-probs (stored in each micro-batch as
        ``ref_chosen_logps``/``ref_rejected_logps``, so they are not computed again) and, without
        gradients, the policy's per-pair losses (KLDPO) or, with a first-order backward to the
        embeddings, ``||grad_z l_i||^2`` (WDPO), gathered over processes into the step's
        :class:`~rdpo_theory.torch.normalizers.StepStatistic`. Extra cost: one policy forward
        per micro-batch (KLDPO)."""
        batches, n_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.robust_normalizer == "accumulated" and batches:
            self._step_statistic = self._accumulated_statistic(batches)
        return batches, n_items

    def _accumulated_statistic(self, batches):
        model, kw, values = self.model, self.robust_kwargs, []
        for raw in batches:
            inputs = self._prepare_inputs(raw)
            with self.compute_loss_context_manager():
                with torch.no_grad():
                    rc, rr = self._reference_logps(model, inputs)
                    if self.robust_method == "kldpo":
                        pc, pr = self._policy_logps(model, inputs)[:2]
                if self.robust_method == "wdpo":
                    batch = {k: inputs[k] for k in BATCH_KEYS}
                    pc, pr, emb = pair_logps(model, batch, with_embeddings=True)
            raw["ref_chosen_logps"], raw["ref_rejected_logps"] = rc.detach(), rr.detach()
            m = TL.dpo_margins(pc, pr, rc.to(pc.dtype), rr.to(pc.dtype), beta=self.args.beta)
            per = TL.dpo_pair_losses(m)
            if self.robust_method == "wdpo":
                per = TL.input_grad_sq_norms(per, emb, create_graph=False)
            values.append(per.detach())
        return step_statistic(
            self.robust_method,
            torch.cat(values),
            tau=kw.get("tau"),
            variant=kw.get("variant"),
            clip=kw.get("clip", 10.0),
        )

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self._running is not None and self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = os.path.join(
                self._get_output_dir(trial=trial),
                f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}",
            )
            with open(os.path.join(folder, NORMALIZER_FILE), "w") as f:
                json.dump(self._running.state_dict(), f)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self._running is not None and checkpoint is not None:
            path = os.path.join(checkpoint, NORMALIZER_FILE)
            if not os.path.isfile(path):
                raise InputError(
                    f"checkpoint {checkpoint} has no {NORMALIZER_FILE}: it was not written by a "
                    "RobustDPOTrainer with robust_normalizer='running'"
                )
            with open(path) as f:
                self._running.load_state_dict(json.load(f))


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
