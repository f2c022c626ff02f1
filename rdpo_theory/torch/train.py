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
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import _validate as V
from ..errors import InputError, NonFiniteError
from ..rng import make_rng, stream_seed
from . import losses as TL
from .adapters import (
    apply_peft,
    is_peft_model,
    load_adapter_checkpoint,
    register_adapter_checkpointing,
)
from .guards import all_finite, check_finite_parameters, first_nonfinite
from .lm import (
    check_batch,
    effective_max_length,
    embed_tokens,
    encode_pairs,
    pair_logps,
    sequence_logps,
    unwrap_model,
)
from .reference import BATCH_REF_KEYS, reference_logps, row_reference_values, with_reference_logps
from .run_config import CONFIG_FILE, check_output_dir, run_record

CORE_METHODS = ("dpo", "kldpo", "wdpo")
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
WDPO_HVP = ("double-backward", "finite-difference")
FD_PRECISIONS = ("float32", "autocast")
ON_NONFINITE = ("raise", "skip")
#: Loss keywords the trainer fills in itself, and what they are.
TRAINER_KEYWORDS = {
    "beta": "TrainConfig.beta",
    "inputs": "the policy's input embeddings (WDPO)",
    "weights": "the rows' 'weight' column",
    "group": "the torch.distributed process group",
    "groups": "the rows' 'group' column (group_dpo)",
    "group_weights": "the online group weights (group_dpo)",
    "n_groups": "the number of groups in the rows (group_dpo)",
    "process_group": "the torch.distributed process group",
}
#: Loss keywords that carry per-pair data the trainer's rows do not have (rows carry
#: ``weight`` and ``group`` columns, so none today).
PER_PAIR_KEYWORDS: dict[str, str] = {}


def loss_methods() -> list[str]:
    """Every method name :func:`resolve_loss` knows: the core methods, then each ``NAME`` with
    a ``NAME_loss`` in :mod:`rdpo_theory.torch.baselines`."""
    from . import baselines

    extra = sorted(n[: -len("_loss")] for n in dir(baselines) if n.endswith("_loss"))
    return list(CORE_METHODS) + [m for m in extra if m not in CORE_METHODS]


def resolve_loss(method: str):
    """The loss function of ``method``: ``dpo``, ``kldpo``, ``wdpo`` from
    :mod:`rdpo_theory.torch.losses`, or ``NAME`` with ``NAME_loss`` in
    :mod:`rdpo_theory.torch.baselines` (``cdpo``, ``rdpo``, ``ipo``, ...)."""
    if method in CORE_METHODS:
        return getattr(TL, f"{method}_loss")
    from . import baselines

    fn = getattr(baselines, f"{method}_loss", None) if isinstance(method, str) else None
    if fn is None:
        raise InputError(f"method must be one of {loss_methods()}, got {method!r}")
    return fn


def check_loss_kwargs(method: str, loss_kwargs, *, name: str = "loss_kwargs") -> dict:
    """Validate ``loss_kwargs`` for the trainer against the signature of ``method``'s loss.

    Refuses, with :class:`InputError`: an unknown method; a keyword the loss does not take
    (listing those it does); a keyword the trainer supplies itself (``beta``, ``inputs``); a
    required keyword left out; and methods whose loss needs per-pair data the trainer's rows
    do not carry (``group_dpo``'s ``groups``). ``name`` is the argument's name in messages.
    Returns a copy of ``loss_kwargs``.
    """
    fn = resolve_loss(method)
    if not isinstance(loss_kwargs, dict):
        raise InputError(f"{name} must be a dict, got {type(loss_kwargs).__name__}")
    params = TL.loss_parameters(fn)
    per_pair = sorted(k for k in params if k in PER_PAIR_KEYWORDS)
    if per_pair:
        what = ", ".join(f"{k!r} ({PER_PAIR_KEYWORDS[k]})" for k in per_pair)
        raise InputError(
            f"method {method!r} cannot be trained by the preference trainers: {method}_loss "
            f"needs {what}, which preference rows do not carry. Call {method}_loss in your own "
            "training loop."
        )
    settable = [k for k in params if k not in TRAINER_KEYWORDS]
    for k in loss_kwargs:
        if k in TRAINER_KEYWORDS:
            raise InputError(
                f"{name} has {k!r}, which the trainer sets itself ({TRAINER_KEYWORDS[k]})"
            )
    V.unknown_keywords(loss_kwargs, settable, f"{name} of method {method!r}")
    missing = [
        k for k in settable if params[k].default is inspect.Parameter.empty and k not in loss_kwargs
    ]
    if missing:
        raise InputError(
            f"{name} must give {', '.join(map(repr, missing))} for method {method!r} "
            f"({method}_loss takes {', '.join(settable)})"
        )
    return dict(loss_kwargs)


@dataclass
class TrainConfig:
    """Options of :func:`train_preference`.

    Parameters
    ----------
    method : str
        ``dpo``, ``kldpo``, ``wdpo`` or a baseline name (see :func:`loss_methods`); refused
        at construction if the trainer cannot run it (``group_dpo`` needs per-pair groups).
    beta : float > 0
        DPO temperature.
    loss_kwargs : dict
        The method's parameters, passed to its loss: KLDPO ``tau``, ``variant``
        (``normalized``/``clipped``), ``clip``; WDPO ``rho0``, ``variant``
        (``sqrt-mean``/``per-pair``); baselines e.g. ``eps``. Checked at construction against
        the loss's signature (:func:`check_loss_kwargs`): unknown or missing keywords are
        refused there, not at the first step.
    learning_rate, weight_decay : float
        AdamW settings.
    batch_size : int
        Pairs per micro-batch per process.
    grad_accum : int
        Micro-batches per optimizer step.
    max_steps : int
        Optimizer steps.
    warmup_steps : int
        Linear warmup length; then ``schedule`` (``constant`` or ``linear`` decay to 0).
    max_grad_norm : float or None
        Global grad-norm clip (None: no clipping).
    mixed_precision : str
        ``auto`` (bf16 on a bf16-capable GPU, else fp32), ``no``, ``bf16`` or ``fp16``.
    max_length : int or None
        Token budget per row (prompt is left-truncated first).
    add_eos : bool
        Append the eos token to every completion before scoring it.
    output_dir : str or Path or None
        Where ``metrics.jsonl``, checkpoints and the final model go (None: nothing written).
    save_every : int
        Checkpoint every this many steps (0: only at the end).
    resume : bool
        Continue from the latest checkpoint in ``output_dir`` if there is one. The directory's
        recorded configuration (``config.json``: these fields plus the data hash, the models'
        identity, the number of processes and the versions; see
        :mod:`rdpo_theory.torch.run_config`) must match this run except for ``max_steps``,
        ``log_every``, ``save_every``, ``save_final_model`` and ``progress``; otherwise
        :class:`~rdpo_theory.errors.InputError` names every differing field. Without
        ``resume`` a directory that already holds checkpoints is refused.
    wdpo_hvp : str
        How WDPO differentiates its penalty (same gradient, up to the finite-difference error):
        ``double-backward`` (default, exact: ``create_graph`` backward through the network on
        the math attention kernel, which stores the attention matrices) or
        ``finite-difference`` (pass 1: first-order forward + backward at the embeddings ``e``,
        giving ``g_i = grad_{e_i} l_i``; then forward + backward of ``sum_i l_i`` at
        ``e + h u`` and ``e - h u`` with ``u_i = 2 c_i g_i`` held constant and ``c_i`` from
        :func:`rdpo_theory.torch.losses.wdpo_penalty_coefficients`, accumulated with weights
        ``+-1 / (2 h)``: ``grad_theta penalty = grad_theta sum_i u_i . g_i`` by central
        differences, error ``O(h^2)``. No double backward, so fused (flash) attention works).
        Single process and DDP; not DeepSpeed or fp16 (the embedding gradient is read
        from ``.grad`` after ``accelerator.backward``).
    wdpo_fd_eps : float > 0
        Relative finite-difference step: ``h = wdpo_fd_eps * ||e|| / ||u||`` over the micro-batch
        (the perturbation is ``wdpo_fd_eps`` of the embeddings' size). ``1e-3`` balances the
        ``O(h^2)`` truncation against float32 rounding (relative error ~ 1e-7 / 1e-3).
    wdpo_fd_precision : str
        ``float32`` (default): the two differenced passes run with autocast off, in the
        parameters' precision, whatever ``mixed_precision`` is. ``autocast``: they run under the
        trainer's mixed precision like pass 1 -- faster on a GPU, but bf16 rounds activations
        to ~4e-3 relative, coarser than a ``1e-3`` perturbation, so use ``wdpo_fd_eps=1e-2``.
        Measured on a 4-layer GPT-2 in bf16 (CPU autocast), relative error of the penalty
        gradient against the float32 exact one: float32 passes, eps 1e-3: 0.15%; autocast,
        eps 1e-2: 2.6% (1e-3: 19%, 3e-2: 15%); bf16 double backward itself: 16%.
    on_nonfinite : str
        What a step does when the loss of a micro-batch or the global gradient norm is NaN or
        inf (checked every step, one synchronisation): ``raise`` (default) stops with
        :class:`~rdpo_theory.errors.NonFiniteError` naming the step and the first non-finite
        quantity (e.g. ``reference_chosen_logps``), before the optimizer touches the weights;
        ``skip`` drops that update (gradients zeroed, the step, its data and the learning-rate
        schedule still advance) and counts it in the metrics (``skipped``,
        ``skipped_total``). Under fp16 loss scaling the gradient norm is left to the scaler.
        A model with non-finite parameters is never saved.
    peft_config : peft.PeftConfig or None
        E.g. ``peft.LoraConfig(r=16, target_modules="all-linear")``: the trainer wraps the model
        with ``peft.get_peft_model`` and trains the adapters only. The reference is the same
        model with its adapters disabled (the frozen base; no second copy in memory), so
        ``ref_model`` must not be given. Checkpoints hold the adapters (and optimizer state);
        ``final/`` holds the adapters (``PeftModel.save_pretrained``). A model that is already
        a ``PeftModel`` gets the same treatment with ``peft_config=None``. Needs ``peft``
        (extra ``rdpo-theory[lora]``).
    precompute_ref : bool
        Compute the reference log-probs of every row once, before training
        (:func:`rdpo_theory.torch.reference.with_reference_logps`), then train without a
        reference model in memory. Rows that already carry ``ref_chosen_logp`` and
        ``ref_rejected_logp`` are used as they are, with or without this flag.
    ref_cache_dir : str or Path or None
        With ``precompute_ref``: the folder of the cache file ``ref_logps-<hash>.json``, keyed by
        a hash of the rows, tokenizer, reference weights and scoring settings (None:
        ``output_dir``; no file when both are None). ``rdpo llm`` puts it beside the dataset.
    robust_normalizer : str
        Which pairs normalise the robust weights (docs/theory.md#minibatch-fixed-point):

        * ``"micro-batch"`` (default; every method): each forward pass's own statistic --
          KLDPO's ``log Z`` or centre over the global micro-batch (``batch_size`` x processes,
          all_gather) and WDPO ``sqrt-mean``'s ``S = mean ||grad_z l||^2`` over the same global
          micro-batch (one all_reduce of two numbers). No extra
          cost, but the fixed point moves with the micro-batch size.
        * ``"accumulated"`` (KLDPO ``normalized``/``clipped``, WDPO ``sqrt-mean``): the
          statistic of the whole optimiser step, ``batch_size`` x processes x ``grad_accum``
          pairs, so ``grad_accum`` A x processes K x ``batch_size`` b trains exactly like one
          micro-batch of A K b pairs. Cost (:func:`accumulated_statistic`): a first pass over
          the step's A micro-batches computes the reference log-probs (kept for the second
          pass, so not recomputed) and the policy's per-pair losses (KLDPO) or input-gradient
          norms (WDPO), then one all_gather of A b numbers per process; then the usual A
          forward + backward passes. KLDPO: A - 1 extra no-grad policy forwards per step
          (micro-batch 0's forward, run with gradient, is reused; none for A = 1), i.e. about
          (A - 1) / A x 1/4 of a DPO step with a reference model; no extra memory. WDPO: one
          extra forward plus a first-order backward to the embeddings per micro-batch.
        * ``"running"`` (KLDPO ``normalized``, WDPO ``sqrt-mean``): an exponential moving
          average of the statistic over micro-batches (:mod:`rdpo_theory.torch.normalizers`),
          all-reduced so every process holds the same value, saved in checkpoints and restored
          on resume; batch-size independent at negligible cost.

        Rows with a ``weight`` column need ``"micro-batch"``. Logged per step (KLDPO):
        ``ess``, ``weight_max``, ``weight_mean``, ``normalizer`` (``log Z``, or the centre for
        ``clipped``), ``clip_fraction`` (``clipped``); WDPO ``sqrt-mean``: ``normalizer`` (S).
        With ``grad_accum > 1`` the micro-batch and running values are averaged over the
        step's micro-batches; the accumulated values are the step's.
    robust_decay : float in (0, 1]
        The EMA weight ``a`` of ``"running"``: the average spans about ``1 / a`` micro-batches
        (1 reproduces ``"micro-batch"``).
    fused_head : bool
        Compute every sequence log-prob (policy, reference, precomputed reference, the
        finite-difference WDPO passes) with a fused linear head
        (:func:`rdpo_theory.torch.lm.sequence_logps`): the logits (2B, T, V) are never formed,
        only row chunks of them, in forward and in every backward, WDPO's double backward
        included (``docs/one-gpu-recipe.md``). Same values and gradients up to float rounding,
        one extra head matmul per backward. Needs a plain ``nn.Linear`` output head whose
        output is the model's logits (no LoRA on the head, no soft-capping or logit scaling);
        other models are refused at the first step. Default False.
    """

    method: str = "dpo"
    beta: float = 0.1
    loss_kwargs: dict = field(default_factory=dict)
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 100
    warmup_steps: int = 0
    schedule: str = "constant"
    max_grad_norm: float | None = 1.0
    seed: int = 0
    mixed_precision: str = "auto"
    max_length: int | None = None
    add_eos: bool = True
    disable_dropout: bool = True
    log_every: int = 1
    save_every: int = 0
    output_dir: str | Path | None = None
    resume: bool = False
    save_final_model: bool = True
    progress: bool = True
    wdpo_hvp: str = "double-backward"
    wdpo_fd_eps: float = 1e-3
    wdpo_fd_precision: str = "float32"
    on_nonfinite: str = "raise"
    robust_normalizer: str = "micro-batch"
    robust_decay: float = 0.01
    peft_config: object | None = None
    precompute_ref: bool = False
    ref_cache_dir: str | Path | None = None
    fused_head: bool = False

    def __post_init__(self):
        resolve_loss(self.method)  # an unknown method is named first
        V.positive(self.beta, "beta")
        V.positive(self.learning_rate, "learning_rate")
        V.positive(self.weight_decay, "weight_decay", allow_zero=True)
        for name in ("batch_size", "grad_accum", "max_steps", "log_every"):
            _positive_int(getattr(self, name), name)
        for name in ("warmup_steps", "save_every"):
            _positive_int(getattr(self, name), name, allow_zero=True)
        if self.max_grad_norm is not None:
            V.positive(self.max_grad_norm, "max_grad_norm")
        if self.schedule not in ("constant", "linear"):
            raise InputError(f"schedule must be 'constant' or 'linear', got {self.schedule!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise InputError(
                f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}"
            )
        if self.wdpo_hvp not in WDPO_HVP:
            raise InputError(f"wdpo_hvp must be one of {WDPO_HVP}, got {self.wdpo_hvp!r}")
        if self.wdpo_hvp == "finite-difference":
            if self.method != "wdpo":
                raise InputError(
                    f"wdpo_hvp='finite-difference' applies to method 'wdpo' only, not "
                    f"{self.method!r}"
                )
            if self.mixed_precision == "fp16":
                raise InputError(
                    "wdpo_hvp='finite-difference' does not support mixed_precision='fp16' "
                    "(loss scaling); use bf16 or no"
                )
        V.positive(self.wdpo_fd_eps, "wdpo_fd_eps")
        if self.wdpo_fd_precision not in FD_PRECISIONS:
            raise InputError(
                f"wdpo_fd_precision must be one of {FD_PRECISIONS}, got {self.wdpo_fd_precision!r}"
            )
        self.loss_kwargs = check_loss_kwargs(self.method, self.loss_kwargs)
        from .normalizers import check_decay, check_trainer_normalizer

        check_trainer_normalizer(self.robust_normalizer, self.method, self.loss_kwargs)
        check_decay(self.robust_decay)
        if self.robust_normalizer != "micro-batch" and self.wdpo_hvp != "double-backward":
            raise InputError(
                f"robust_normalizer={self.robust_normalizer!r} needs wdpo_hvp='double-backward'"
            )
        if self.method == "group_dpo" and "group_step" not in self.loss_kwargs:
            raise InputError(
                "loss_kwargs must give group_step (the exponentiated-gradient step of the group "
                "weights) for method 'group_dpo'"
            )
        check_run_fields(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["output_dir"] = None if self.output_dir is None else str(self.output_dir)
        d["ref_cache_dir"] = None if self.ref_cache_dir is None else str(self.ref_cache_dir)
        if self.peft_config is not None:  # sets and enums -> JSON-able
            pc = self.peft_config
            pc = pc.to_dict() if hasattr(pc, "to_dict") else dict(pc)
            d["peft_config"] = json.loads(json.dumps(pc, default=_jsonable))
        return d


def check_run_fields(cfg: TrainConfig) -> None:
    """Checks of :class:`TrainConfig` beyond the method: ``seed``, ``output_dir``,
    ``max_length``, ``on_nonfinite`` and the values in ``loss_kwargs`` (probed by calling the
    method's loss once on a two-pair dummy batch, so the loss's own checks name the bad
    parameter, e.g. ``tau``)."""
    _positive_int(cfg.seed, "seed", allow_zero=True)
    if cfg.output_dir is not None and not isinstance(cfg.output_dir, str | Path):
        raise InputError(
            f"output_dir must be a str, a Path or None, got {type(cfg.output_dir).__name__}"
        )
    if cfg.max_length is not None:
        _positive_int(cfg.max_length, "max_length")
        if cfg.max_length < 2:
            raise InputError(f"max_length must be >= 2 (prompt + completion), got {cfg.max_length}")
    if cfg.on_nonfinite not in ON_NONFINITE:
        raise InputError(f"on_nonfinite must be one of {ON_NONFINITE}, got {cfg.on_nonfinite!r}")
    for name in (
        "resume",
        "add_eos",
        "disable_dropout",
        "save_final_model",
        "progress",
        "fused_head",
    ):
        if not isinstance(getattr(cfg, name), bool):
            raise InputError(f"{name} must be True or False, got {getattr(cfg, name)!r}")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return  # the probe would run collectives (KLDPO's all_gather); names were checked above
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    kw = dict(cfg.loss_kwargs)
    if cfg.method == "wdpo":
        kw["inputs"] = x
    if not all(isinstance(v, int | float | str | None) for v in cfg.loss_kwargs.values()):
        return  # per-batch tensors (e.g. groups) are checked by the loss at the first step
    try:
        resolve_loss(cfg.method)(x * 1.0, x * 0.0, x * 0.0, x * 0.0, beta=cfg.beta, **kw)
    except InputError as exc:
        raise InputError(f"loss_kwargs for method {cfg.method!r}: {exc}") from None
    except TypeError:
        return  # a per-batch argument the probe cannot supply: checked at the first step


def _jsonable(v):
    return sorted(v) if isinstance(v, set | frozenset) else str(v)


def _positive_int(v, name, *, allow_zero=False):
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < (0 if allow_zero else 1):
        raise InputError(f"{name} must be an integer >= {0 if allow_zero else 1}, got {v!r}")


@dataclass
class TrainResult:
    """``model`` (the unwrapped trained policy), ``metrics`` (one dict per logged step),
    ``output_dir``, ``steps`` (optimizer steps done, including resumed ones) and, for
    ``group_dpo``, ``group_weights`` (``{group label: alpha}`` at the end)."""

    model: torch.nn.Module
    metrics: list[dict]
    output_dir: Path | None
    steps: int
    group_weights: dict | None = None


def check_rows(rows) -> list[dict]:
    """Validate preference rows ``{"prompt", "chosen", "rejected"}`` (strings)."""
    rows = list(rows)
    if not rows:
        raise InputError("dataset is empty: need preference rows")
    for i, r in enumerate(rows):
        for k in ("prompt", "chosen", "rejected"):
            if not isinstance(r.get(k), str):
                raise InputError(f"dataset row {i} needs a string {k!r}; got keys {sorted(r)}")
    return rows


def micro_batch_indices(n_rows: int, global_batch: int, index: int, seed: int) -> np.ndarray:
    """Row indices of global micro-batch ``index``: epochs are seeded permutations (drop-last),
    so the data order is a pure function of (seed, index) and resume is exact."""
    per_epoch = n_rows // global_batch
    if per_epoch == 0:
        raise InputError(
            f"dataset has {n_rows} rows, fewer than one global micro-batch of {global_batch} "
            "(batch_size x processes)"
        )
    epoch, pos = divmod(index, per_epoch)
    perm = make_rng(stream_seed(seed, epoch)).permutation(n_rows)
    return perm[pos * global_batch : (pos + 1) * global_batch]


def _lr_lambda(cfg: TrainConfig):
    def f(step):
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.schedule == "linear":
            span = max(1, cfg.max_steps - cfg.warmup_steps)
            return max(0.0, 1.0 - (step - cfg.warmup_steps) / span)
        return 1.0

    return f


def make_accelerator(cfg: TrainConfig):
    """An ``accelerate.Accelerator`` for ``cfg`` (bf16 on a bf16-capable GPU under ``auto``)."""
    from accelerate import Accelerator

    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=mp)


def _disable_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def latest_checkpoint(output_dir) -> Path | None:
    """The checkpoint folder with the highest step under ``output_dir/checkpoints``."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = [(int(p.name.split("-")[1]), p) for p in root.glob("step-*") if p.is_dir()]
    steps = [(s, p) for s, p in steps if (p / STATE_FILE).exists()]
    return max(steps)[1] if steps else None


def compute_loss(
    cfg: TrainConfig,
    model,
    ref_model,
    batch: dict,
    *,
    accelerator=None,
    normalizer=None,
    extra=None,
    policy_logps=None,
) -> TL.LossOutput:
    """Policy and reference log-probs of ``batch`` and ``cfg.method``'s loss on them.

    ``policy_logps``: ``(chosen (B,), rejected (B,), embeddings or None)`` of this batch already
    computed with gradient (the first micro-batch of ``robust_normalizer="accumulated"``, see
    :func:`accumulated_statistic`), used instead of a new policy forward.

    ``normalizer``: the running statistic of ``robust_normalizer="running"`` (updated here) or
    the step statistic of ``"accumulated"``
    (:func:`rdpo_theory.torch.normalizers.normalized_loss`). ``extra``: loss arguments the trainer
    supplies (``weights`` (B,) for weighted rows; ``groups``, ``group_weights``, ``n_groups``
    for ``group_dpo``)."""
    wdpo = cfg.method == "wdpo"
    fused = cfg.fused_head
    rc, rr = reference_logps(ref_model, model, batch, accelerator=accelerator, fused_head=fused)
    if policy_logps is None:
        pc, pr, emb = pair_logps(model, batch, with_embeddings=wdpo, fused_head=fused)
    else:
        pc, pr, emb = policy_logps
    rc, rr = rc.to(pc.dtype), rr.to(pc.dtype)
    kw = dict(cfg.loss_kwargs, **(extra or {}))
    if wdpo:
        kw["inputs"] = emb
    if normalizer is not None:
        from .normalizers import normalized_loss

        out = normalized_loss(cfg.method, normalizer, pc, pr, rc, rr, beta=cfg.beta, **kw)
    else:
        out = resolve_loss(cfg.method)(pc, pr, rc, rr, beta=cfg.beta, **kw)
    out.stats["reward_chosen"] = cfg.beta * (pc - rc).detach().mean()
    out.stats["reward_rejected"] = cfg.beta * (pr - rr).detach().mean()
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def loss_and_backward(
    cfg: TrainConfig,
    model,
    ref_model,
    batch: dict,
    *,
    accelerator=None,
    normalizer=None,
    extra=None,
    policy_logps=None,
) -> TL.LossOutput:
    """One micro-batch: the loss of ``cfg.method`` and its gradient accumulated into the
    parameters' ``.grad`` (through ``accelerator.backward`` when given, which divides by the
    accumulation steps). WDPO with ``cfg.wdpo_hvp == "finite-difference"`` runs
    :func:`wdpo_fd_backward`; every other case is :func:`compute_loss` then backward.
    The returned ``loss`` is the objective's value (detached on the finite-difference path).
    ``extra``, ``policy_logps``: see :func:`compute_loss`."""
    if cfg.method == "wdpo" and cfg.wdpo_hvp == "finite-difference":
        w = (extra or {}).get("weights")
        return wdpo_fd_backward(cfg, model, ref_model, batch, accelerator=accelerator, weights=w)
    out = compute_loss(
        cfg,
        model,
        ref_model,
        batch,
        accelerator=accelerator,
        normalizer=normalizer,
        extra=extra,
        policy_logps=policy_logps,
    )
    if accelerator is not None:
        accelerator.backward(out.loss)
    else:
        out.loss.backward()
    return out


class _full_precision:
    """Autocast off, including the autocast wrapper ``accelerate`` puts on a prepared model's
    ``forward`` (restored on exit)."""

    def __init__(self, model):
        self.inner = unwrap_model(model)
        self.device = next(self.inner.parameters()).device.type

    def __enter__(self):
        self.swapped = "_original_forward" in vars(self.inner) and "forward" in vars(self.inner)
        if self.swapped:
            self.saved = self.inner.forward
            self.inner.forward = self.inner._original_forward
        self.ctx = torch.autocast(self.device, enabled=False)
        self.ctx.__enter__()
        return self

    def __exit__(self, *a):
        self.ctx.__exit__(*a)
        if self.swapped:
            self.inner.forward = self.saved
        return False


def wdpo_fd_backward(
    cfg: TrainConfig, model, ref_model, batch: dict, *, accelerator=None, weights=None
) -> TL.LossOutput:
    """WDPO's gradient by a central-difference Hessian-vector product (no double backward).

    With per-pair losses ``l_i(theta, e_i)``, ``g_i = grad_{e_i} l_i`` and
    ``c_i = d penalty / d ||g_i||^2`` (:func:`~rdpo_theory.torch.losses.wdpo_penalty_coefficients`)
    the penalty gradient is ``sum_i c_i grad_theta ||g_i||^2 = grad_theta sum_i u_i . g_i`` with
    ``u_i = 2 c_i g_i`` held constant, and

        grad_theta sum_i u_i . g_i
            = (grad_theta sum_i l_i(e + h u) - grad_theta sum_i l_i(e - h u)) / (2 h) + O(h^2)

    (mixed partials commute; ``e = E[ids]`` keeps its dependence on the embedding table).
    Passes: (1) forward + first-order backward of ``mean_i l_i`` at ``e``, which gives the
    parameter gradient of the mean loss and ``g`` (``B * accumulation * e.grad``); (2, 3)
    forward + backward of ``+-sum_i l_i(e +- h u) / (2 h)``. The reference log-probs are computed
    once. ``h = cfg.wdpo_fd_eps * ||e|| / ||u||``. Every backward is first order, so the default
    scaled-dot-product attention (flash / memory-efficient) is used. Returns a
    :class:`~rdpo_theory.torch.losses.LossOutput` whose ``loss`` is the detached WDPO objective
    and whose ``stats`` add ``fd_step`` (h) to the WDPO ones.

    With ``weights`` (B,) pass 1 differentiates the weighted mean
    (:func:`~rdpo_theory.torch.losses.weighted_mean`), ``g_i`` is recovered by dividing by the
    pair's coefficient (0 for zero-weight pairs, whose penalty coefficient is 0 too) and the
    penalty uses :func:`~rdpo_theory.torch.losses.wdpo_penalty_weights`, as ``wdpo_loss`` does.
    """
    kw = dict(cfg.loss_kwargs)
    rho0, variant = kw["rho0"], kw.get("variant", "sqrt-mean")
    B = check_batch(batch)
    ids, att, cm = (batch[k] for k in ("input_ids", "attention_mask", "completion_mask"))
    acc = accelerator
    rc, rr = reference_logps(ref_model, model, batch, accelerator=acc, fused_head=cfg.fused_head)

    def pair_losses(emb):
        lp = sequence_logps(model, ids, att, cm, inputs_embeds=emb, fused_head=cfg.fused_head)
        m = TL.dpo_margins(lp[:B], lp[B:], rc.to(lp.dtype), rr.to(lp.dtype), beta=cfg.beta)
        return TL.dpo_pair_losses(m), m, lp

    def backward(loss):
        if acc is not None:
            acc.backward(loss)
        else:
            loss.backward()

    # pass 1: mean loss at e, first order; g from the embeddings' .grad
    emb = embed_tokens(model, ids)  # (2B, T, H): chosen rows, then rejected rows
    if not emb.is_leaf:
        emb.retain_grad()
    per, m, lp = pair_losses(emb)
    accum = acc.gradient_accumulation_steps if acc is not None else 1
    if weights is None:
        backward(per.mean())
        g = emb.grad.detach() * (B * accum)
        pw = None
    else:
        p, N = TL.batch_probabilities(weights, per)
        coef = (p * (N / B)).to(per.dtype)  # d(weighted mean) / d l_i
        backward(TL.weighted_mean(per, weights))
        inv = torch.where(coef > 0, accum / coef.clamp_min(1e-300), torch.zeros_like(coef))
        g = emb.grad.detach() * inv.repeat(2).view(-1, 1, 1).to(emb.grad.dtype)
        pw = TL.wdpo_penalty_weights(weights, per)
    wide = TL.accumulation_dtype(g)  # float32, or float64 for float64 models
    e_norm = torch.linalg.vector_norm(emb.detach().to(wide))
    del emb
    sq = (g[:B].to(wide).pow(2).sum((1, 2)) + g[B:].to(wide).pow(2).sum((1, 2))).to(per.dtype)
    c = TL.wdpo_penalty_coefficients(sq, rho0=rho0, variant=variant, weights=pw)
    c = c.to(g.dtype)  # with the global micro-batch's S under torch.distributed
    u = g.mul_((2 * c).repeat(2).view(-1, 1, 1))  # u_i = 2 c_i g_i, in place of g
    u_norm = torch.linalg.vector_norm(u.to(wide))
    h = torch.zeros((), dtype=wide, device=u.device)
    if float(u_norm) > 0:  # rho0 = 0 or vanishing gradients: no penalty gradient
        h = cfg.wdpo_fd_eps * e_norm / u_norm
        prec = _full_precision(model) if cfg.wdpo_fd_precision == "float32" else _null()
        for sign in (1.0, -1.0):
            with prec:
                e_s = embed_tokens(model, ids) + (sign * h).to(u.dtype) * u
                per_s = pair_losses(e_s)[0]
            backward(per_s.sum() * (sign / (2 * h)).to(per_s.dtype))
    pen = TL.wdpo_combine(per.detach(), sq, rho0, variant, pw)[1]
    loss = TL.weighted_mean(per.detach(), weights) + pen
    stats = TL.margin_stats(m)
    S = TL.global_mean_sq(sq, pw)
    stats.update(penalty=pen.detach(), grad_rms=S.sqrt(), fd_step=h.detach())
    if variant == "sqrt-mean":
        stats["normalizer"] = S
    pc, pr = lp[:B].detach(), lp[B:].detach()
    stats["reward_chosen"] = cfg.beta * (pc - rc).mean()
    stats["reward_rejected"] = cfg.beta * (pr - rr).mean()
    return TL.LossOutput(loss.detach(), per.detach(), m.detach(), penalty=sq, stats=stats)


def accumulated_statistic(
    cfg: TrainConfig, model, ref_model, batches, *, accelerator=None, keep_first: bool = False
):
    """First pass of ``robust_normalizer="accumulated"``: the normalising statistic of one
    optimiser step (:class:`~rdpo_theory.torch.normalizers.StepStatistic`) over its micro-batches
    ``batches`` on every worker (docs/theory.md#minibatch-fixed-point). Returns
    ``(statistic, kept)``.

    Per micro-batch: the reference log-probs (stored in the batch under
    ``ref_chosen_logps``/``ref_rejected_logps``, so the second pass does not recompute them),
    then KLDPO: a no-grad policy forward giving the per-pair losses ``l_i``; WDPO
    ``sqrt-mean``: a policy forward through the embeddings and a first-order backward to them,
    giving ``||grad_z l_i||^2`` (no parameter gradients; run on the unwrapped model, outside
    DDP's gradient hooks). The values are then gathered over the workers
    (:func:`~rdpo_theory.torch.normalizers.step_statistic`).

    ``keep_first`` (KLDPO): micro-batch 0's policy forward runs last and with gradient, and its
    log-probs are returned as ``kept`` for :func:`loss_and_backward` (``policy_logps``), so that
    micro-batch is not forwarded twice; call it inside micro-batch 0's
    ``accelerator.accumulate`` context. The extra cost of the step is then ``A - 1`` no-grad
    policy forwards for ``A`` micro-batches (none for ``A = 1``), and no extra memory: when the
    kept graph is built no other graph is alive. Otherwise ``kept`` is None and the extra cost
    is one policy forward (KLDPO) or one forward plus an input-gradient backward (WDPO) per
    micro-batch."""
    from .normalizers import step_statistic

    kw = cfg.loss_kwargs
    keep = keep_first and cfg.method == "kldpo"
    values, kept = [None] * len(batches), None
    fused = cfg.fused_head
    for a in [*range(1, len(batches)), 0] if keep else range(len(batches)):
        batch = batches[a]
        rc, rr = reference_logps(ref_model, model, batch, accelerator=accelerator, fused_head=fused)
        batch[BATCH_REF_KEYS[0]], batch[BATCH_REF_KEYS[1]] = rc, rr
        if keep and a == 0:
            pc, pr, _ = pair_logps(model, batch, fused_head=fused)
            kept = (pc, pr, None)
        elif cfg.method == "kldpo":
            with torch.no_grad():
                pc, pr, _ = pair_logps(model, batch, fused_head=fused)
        else:
            pc, pr, emb = pair_logps(
                unwrap_model(model), batch, with_embeddings=True, fused_head=fused
            )
        m = TL.dpo_margins(pc, pr, rc.to(pc.dtype), rr.to(pc.dtype), beta=cfg.beta)
        per = TL.dpo_pair_losses(m)
        if cfg.method == "wdpo":
            per = TL.input_grad_sq_norms(per, emb, create_graph=False)
        values[a] = per.detach()
    stat = step_statistic(
        cfg.method,
        torch.cat(values),
        tau=kw.get("tau"),
        variant=kw.get("variant"),
        clip=kw.get("clip", 10.0),
    )
    return stat, kept


def train_preference(
    model,
    tokenizer,
    rows,
    config: TrainConfig,
    *,
    ref_model=None,
    accelerator=None,
) -> TrainResult:
    """Train ``model`` on preference ``rows`` with ``config.method``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The policy (a causal LM); trained in place.
    tokenizer : transformers.PreTrainedTokenizerBase
    rows : iterable of dict
        ``{"prompt": str, "chosen": str, "rejected": str}``, optionally ``"weight"`` (a number
        >= 0, on every row or none) and ``"group"`` (a non-empty string, on every row or none;
        required by ``method="group_dpo"``).
    config : TrainConfig
    ref_model : PreTrainedModel, optional
        The frozen reference; default a copy of ``model`` taken before training -- or no
        model at all with precomputed reference log-probs (``config.precompute_ref`` or rows
        carrying them) or with adapters (``config.peft_config``; the base is the reference).
        See :func:`setup_reference`.
    accelerator : accelerate.Accelerator, optional
        Default :func:`make_accelerator`.

    Returns
    -------
    TrainResult
    """
    from tqdm.auto import tqdm

    cfg = config
    if not isinstance(cfg, TrainConfig):
        raise InputError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    rows = check_rows(rows)
    row_w, row_g = V.row_weights_groups(rows)
    labels = sorted(set(row_g)) if row_g is not None else None
    if cfg.method == "group_dpo" and labels is None:
        raise InputError("method 'group_dpo' needs a 'group' on every dataset row")
    if row_w is not None and cfg.robust_normalizer != "micro-batch":
        raise InputError(
            f"rows with a 'weight' column cannot be trained with "
            f"robust_normalizer={cfg.robust_normalizer!r}; use robust_normalizer='micro-batch'"
        )
    if labels is not None:
        pos = {g: i for i, g in enumerate(labels)}
        row_gi = np.array([pos[g] for g in row_g])
    alpha = (
        torch.full((len(labels),), 1.0 / len(labels), dtype=torch.float64)
        if cfg.method == "group_dpo"
        else None
    )
    acc = accelerator if accelerator is not None else make_accelerator(cfg)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    out_dir = Path(cfg.output_dir) if cfg.output_dir is not None else None
    ckpt = None
    if out_dir is not None:  # refuse to mix runs before anything is written
        # the reference is ref_model, or derived from model (a copy, its base, or precomputed)
        ref_id = ref_model if ref_model is not None else model
        record = run_record(cfg, rows, model, ref_id, num_processes=acc.num_processes)
        ckpt = latest_checkpoint(out_dir) if out_dir.is_dir() else None
        check_output_dir(out_dir, record, resume=cfg.resume, has_checkpoint=ckpt is not None)
    max_length = effective_max_length(model, cfg.max_length)
    model, ref_model, rows, ref_values = setup_reference(
        model, tokenizer, rows, cfg, ref_model, acc, max_length=max_length
    )
    if cfg.disable_dropout:
        _disable_dropout(model)
    if ref_model is not None:
        ref_model.eval().requires_grad_(False).to(acc.device)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
    )
    peft = is_peft_model(model)
    if peft:
        register_adapter_checkpointing(acc)
    model, opt = acc.prepare(model, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    acc.register_for_checkpointing(sched)
    model.train()

    # running statistics restored on resume (saved in every checkpoint's trainer_state.json)
    start, metrics, running = 0, [], {"skipped_total": 0, "truncated_total": 0}
    if out_dir is not None and cfg.resume and ckpt is not None:
        if peft:
            load_adapter_checkpoint(acc, model, ckpt)
        else:
            acc.load_state(str(ckpt))
        saved = json.loads((ckpt / STATE_FILE).read_text())
        start = saved["step"]
        running.update(saved.get("running", {}))
        if alpha is not None:
            alpha = _restore_group_weights(running, labels, ckpt)
        metrics = [m for m in _read_metrics(out_dir) if m["step"] <= start]
    normalizer = None  # robust_normalizer="running": the statistic, restored on resume
    if cfg.robust_normalizer == "running":
        from .normalizers import RunningStatistic

        normalizer = RunningStatistic(cfg.robust_decay, log_space=cfg.method == "kldpo")
        if running.get("normalizer") is not None:
            normalizer.load_state_dict(running["normalizer"])
    if out_dir is not None and acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_metrics(out_dir, metrics)
        (out_dir / CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str))

    world, rank = acc.num_processes, acc.process_index
    gbatch = cfg.batch_size * world
    bar = tqdm(
        total=cfg.max_steps,
        initial=start,
        desc=f"{cfg.method}",
        disable=not (cfg.progress and acc.is_local_main_process),
        leave=False,
    )
    enc_stats = {"truncated": 0, "sequences": 0}
    for step in range(start, cfg.max_steps):
        t0 = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        losses, batches, skipped = [], [], 0
        alpha_start = alpha
        plan = []  # the step's micro-batches: (encoded batch, extra loss arguments)
        for a in range(cfg.grad_accum):
            idx = micro_batch_indices(len(rows), gbatch, step * cfg.grad_accum + a, cfg.seed)
            sel = idx[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
            mine = [rows[i] for i in sel]
            extra = {}
            if row_w is not None:
                extra["weights"] = torch.as_tensor(row_w[sel], device=acc.device)
            if alpha is not None:
                extra.update(
                    groups=torch.as_tensor(row_gi[sel], device=acc.device),
                    n_groups=len(labels),
                )
            batch = encode_pairs(
                tokenizer,
                [r["prompt"] for r in mine],
                [r["chosen"] for r in mine],
                [r["rejected"] for r in mine],
                max_length=max_length,
                add_eos=cfg.add_eos,
                stats=enc_stats,
            )
            if ref_values is not None:
                for j, k in enumerate(BATCH_REF_KEYS):
                    batch[k] = torch.as_tensor(ref_values[sel, j], dtype=torch.float64)
            plan.append(({k: v.to(acc.device) for k, v in batch.items()}, extra))
        batches = [b for b, _ in plan]
        step_norm, kept = normalizer, None
        for a, (batch, extra) in enumerate(plan):
            if alpha is not None:
                extra["group_weights"] = alpha  # updated by the previous micro-batch
            with acc.accumulate(model):
                if a == 0 and cfg.robust_normalizer == "accumulated":
                    # first pass: the whole step's statistic (micro-batch 0's forward is kept)
                    step_norm, kept = accumulated_statistic(
                        cfg, model, ref_model, batches, accelerator=acc, keep_first=True
                    )
                more = {"extra": extra} if extra else {}  # weights / group-robust state
                if a == 0 and kept is not None:
                    more["policy_logps"] = kept
                out = loss_and_backward(
                    cfg, model, ref_model, batch, accelerator=acc, normalizer=step_norm, **more
                )
                kept = None
                losses.append(out.loss.detach())
                if out.group_weights is not None:
                    alpha = out.group_weights.detach().cpu()
                if acc.sync_gradients:
                    clip = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
                    gn = acc.clip_grad_norm_(model.parameters(), clip)
                    gn = None if gn is None else torch.as_tensor(gn, dtype=torch.float32)
                    if gn is not None:
                        sums["grad_norm"] = gn.detach()
                    # fp16 loss scaling: inf gradients are the scaler's business
                    check_gn = gn is not None and getattr(acc, "scaler", None) is None
                    bad = _nonfinite_step(acc, losses, gn if check_gn else None)
                    if bad:
                        what = _diagnose_nonfinite(cfg, model, ref_model, batches, losses, acc)
                        if cfg.on_nonfinite == "raise":
                            raise NonFiniteError(
                                f"step {step + 1}: non-finite {what}; training stopped before "
                                "the optimizer step, the weights are unchanged (use "
                                "TrainConfig(on_nonfinite='skip') to drop such steps)",
                                step=step + 1,
                                quantity=what.split(" ")[0],
                            )
                        skipped = 1
                        running["skipped_total"] += 1
                        alpha = alpha_start  # a skipped step leaves the group weights too
                    else:
                        opt.step()
                    opt.zero_grad()
                else:
                    opt.step()  # accelerate defers the update to the synchronising micro-batch
                    opt.zero_grad()
            stats = {"loss": out.loss.detach(), **out.stats}
            for k, v in stats.items():
                v = torch.as_tensor(v, dtype=torch.float32, device=acc.device)
                sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
        sched.step()
        done = step + 1
        running["truncated_total"] += enc_stats["truncated"]
        if enc_stats["truncated"] and not running.get("warned_truncation"):
            import warnings

            warnings.warn(
                f"{enc_stats['truncated']} of {enc_stats['sequences']} sequences at step {done} "
                f"were longer than max_length={max_length} tokens and were truncated (the "
                "prompt's end and the completion's start are kept); metrics count them in "
                "'truncated_total'",
                stacklevel=2,
            )
            running["warned_truncation"] = 1
        enc_stats.update(truncated=0, sequences=0)
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            row = {"step": done, "method": cfg.method}
            for k, v in sums.items():
                v = torch.as_tensor(v, dtype=torch.float32, device=acc.device)
                row[k] = float(acc.reduce(v, reduction="mean")) if world > 1 else float(v)
            row["reward_margin"] = row["reward_chosen"] - row["reward_rejected"]
            row["lr"] = float(sched.get_last_lr()[0])
            row["step_seconds"] = time.perf_counter() - t0
            row["skipped"] = skipped
            row["skipped_total"] = running["skipped_total"]
            row["truncated_total"] = running["truncated_total"]
            metrics.append(row)
            if out_dir is not None and acc.is_main_process:
                with open(out_dir / METRICS_FILE, "a") as f:
                    f.write(_json_line(row))
            bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.2f}")
        bar.update(1)
        if out_dir is not None and (
            (cfg.save_every and done % cfg.save_every == 0) or done == cfg.max_steps
        ):
            check_finite_parameters(
                acc.unwrap_model(model), what=f"save the step-{done} checkpoint"
            )
            if normalizer is not None:
                running["normalizer"] = normalizer.state_dict()
            running.update(_group_state(alpha, labels))
            save_checkpoint(acc, out_dir, done, running=running)
    bar.close()
    unwrapped = acc.unwrap_model(model)
    if out_dir is not None and cfg.save_final_model:
        check_finite_parameters(unwrapped, what="save the final model")
        acc.wait_for_everyone()
        unwrapped.save_pretrained(
            out_dir / "final", is_main_process=acc.is_main_process, save_function=acc.save
        )
        if acc.is_main_process:
            tokenizer.save_pretrained(out_dir / "final")
    gw = None if alpha is None else dict(zip(labels, alpha.tolist()))
    return TrainResult(unwrapped, metrics, out_dir, max(start, cfg.max_steps), gw)


def _group_state(alpha, labels) -> dict:
    if alpha is None:
        return {}
    return {"group_labels": list(labels), "group_weights": alpha.tolist()}


def _restore_group_weights(state: dict, labels, ckpt) -> torch.Tensor:
    """The group weights saved in a checkpoint's running statistics, for the same groups."""
    if state.get("group_labels") != list(labels) or "group_weights" not in state:
        raise InputError(
            f"checkpoint {ckpt} holds group weights for groups {state.get('group_labels')}, "
            f"but the dataset has groups {list(labels)}: resume with the same dataset"
        )
    return torch.tensor(state["group_weights"], dtype=torch.float64)


def _nonfinite_step(acc, losses: list, grad_norm) -> bool:
    """Whether any micro-batch loss (or the gradient norm) of this step is non-finite, on any
    process. One synchronisation."""
    ok = all_finite(losses + ([grad_norm] if grad_norm is not None else []))
    bad = (~ok).to(device=acc.device, dtype=torch.float32)
    if acc.num_processes > 1:
        bad = acc.reduce(bad, reduction="sum")
    return bool(bad > 0)


@torch.no_grad()
def _diagnose_nonfinite(cfg, model, ref_model, batches, losses, acc) -> str:
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


def _json_line(row: dict) -> str:
    """One metrics line; NaN and inf become null (JSON has no such numbers)."""
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }
    return json.dumps(clean) + "\n"


def setup_reference(
    model, tokenizer, rows, cfg: TrainConfig, ref_model=None, accelerator=None, *, max_length=None
):
    """Where the reference log-probs of a run come from; returns ``(model, ref_model, rows,
    ref_values)``.

    1. Rows carrying ``ref_chosen_logp``/``ref_rejected_logp``, or ``cfg.precompute_ref``
       (values computed now, with ``ref_model`` or else the untrained ``model`` / its base,
       cached under ``cfg.ref_cache_dir`` or ``cfg.output_dir``; rows scored with
       ``max_length``, default ``cfg.max_length``): ``ref_values`` (n, 2) and
       ``ref_model = None`` -- no reference model is kept.
    2. ``cfg.peft_config``: ``model`` is wrapped by ``peft.get_peft_model``; with a PEFT model
       and no ``ref_model`` the reference is the model with adapters disabled.
    3. Otherwise ``ref_model``, by default a deep copy of ``model``.
    """
    ref_values = row_reference_values(rows)
    if cfg.peft_config is not None and ref_model is not None:
        raise InputError(
            "ref_model must be None with peft_config: the reference is the base model with "
            "its adapters disabled (no second copy)"
        )
    if ref_values is None and cfg.precompute_ref:
        device = accelerator.device if accelerator is not None else None
        if device is not None:
            model.to(device)
            if ref_model is not None:
                ref_model.to(device)
        cache = cfg.ref_cache_dir if cfg.ref_cache_dir is not None else cfg.output_dir
        rows = with_reference_logps(
            model,
            tokenizer,
            rows,
            cache_dir=cache,
            ref_model=ref_model,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length if max_length is None else max_length,
            add_eos=cfg.add_eos,
            accelerator=accelerator,
            progress=cfg.progress,
            fused_head=cfg.fused_head,
        )
        ref_values = row_reference_values(rows)
    if ref_values is not None:
        ref_model = None
    if cfg.peft_config is not None:
        model = apply_peft(model, cfg.peft_config)
    if ref_model is None and ref_values is None and not is_peft_model(model):
        ref_model = copy.deepcopy(model)
    return model, ref_model, rows, ref_values


def save_checkpoint(acc, out_dir: Path, step: int, *, running: dict | None = None) -> Path:
    """``accelerator.save_state`` (weights, optimizer, scheduler, every RNG) to
    ``out_dir/checkpoints/step-{step}``, plus ``trainer_state.json`` holding the step count and
    the ``running`` statistics (skip and truncation counters; other running state such as group
    weights or robust normalisers belongs here too), all restored by ``resume=True``."""
    path = Path(out_dir) / "checkpoints" / f"step-{step}"
    acc.save_state(str(path))
    if acc.is_main_process:
        state = {"step": step, "running": dict(running or {})}
        (path / STATE_FILE).write_text(json.dumps(state))
    acc.wait_for_everyone()
    return path


def _read_metrics(out_dir: Path) -> list[dict]:
    from ..io import read_jsonl_objects

    p = Path(out_dir) / METRICS_FILE
    if not p.exists() or p.stat().st_size == 0:
        return []
    return [obj for _, obj in read_jsonl_objects(p, what="(one metrics row)")]


def _write_metrics(out_dir: Path, rows: list[dict]) -> None:
    with open(Path(out_dir) / METRICS_FILE, "w") as f:
        for r in rows:
            f.write(_json_line(r))


def read_metrics(out_dir) -> list[dict]:
    """The metrics log ``out_dir/metrics.jsonl`` as a list of dicts."""
    return _read_metrics(Path(out_dir))


__all__ = [
    "CORE_METHODS",
    "TrainConfig",
    "check_loss_kwargs",
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
