"""The trainer's options, declared once: :class:`TrainConfig` (docs/theory.md#code-variants).

Every field is built with :func:`rdpo_theory.options.option`: its help text, allowed values
and constraints live in the field's metadata, ``__post_init__`` checks them with
:func:`rdpo_theory.options.validate_fields` (one message shape, naming the field), and
``rdpo llm`` generates its command-line flags from the fields
(:func:`rdpo_theory.options.add_arguments`; the field name is the flag, the old flags
``--lr``, ``--steps``, ``--warmup`` are aliases). Also here: the method registry of the
trainer (:func:`resolve_loss`, :func:`loss_methods`) and the check of ``loss_kwargs``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .. import _validate as V
from ..errors import InputError
from ..options import (
    NONE,
    NONNEGATIVE,
    NONNEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    SEED,
    Instance,
    Interval,
    Options,
    option,
    validate_fields,
)
from . import baselines
from . import losses as TL
from .normalizers import (
    DECAY,
    DEFAULT_DECAY,
    DEFAULT_TRAINER_NORMALIZER,
    DEPRECATED_NORMALIZERS,
    TRAINER_NORMALIZERS,
    check_trainer_normalizer,
)

CORE_METHODS = ("dpo", "kldpo", "wdpo")
WDPO_HVP = ("double-backward", "finite-difference")
FD_PRECISIONS = ("float32", "autocast")
ON_NONFINITE = ("raise", "skip")
SCHEDULES = ("constant", "linear")
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")
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

_BOOL = ["boolean"]
_PATH = [Instance(str, Path, name="str or Path"), NONE]


def loss_methods() -> list[str]:
    """Every method name :func:`resolve_loss` knows: the core methods, then each ``NAME`` with
    a ``NAME_loss`` in :mod:`rdpo_theory.torch.baselines`."""
    return list(CORE_METHODS) + [m for m in sorted(_baseline_losses()) if m not in CORE_METHODS]


def _baseline_losses() -> dict:
    """``{NAME: NAME_loss}`` for the losses *defined* in :mod:`rdpo_theory.torch.baselines`
    (not helpers it imports, such as the ``logp_loss`` decorator)."""
    return {
        n[: -len("_loss")]: fn
        for n, fn in vars(baselines).items()
        if n.endswith("_loss") and getattr(fn, "__module__", None) == baselines.__name__
    }


def resolve_loss(method: str):
    """The loss function of ``method``: ``dpo``, ``kldpo``, ``wdpo`` from
    :mod:`rdpo_theory.torch.losses`, or ``NAME`` with ``NAME_loss`` in
    :mod:`rdpo_theory.torch.baselines` (``cdpo``, ``rdpo``, ``ipo``, ...)."""
    if method in CORE_METHODS:
        return getattr(TL, f"{method}_loss")
    fn = _baseline_losses().get(method) if isinstance(method, str) else None
    if fn is None:
        raise InputError(f"method must be one of {loss_methods()}, got {method!r}")
    return fn


def check_loss_kwargs(method: str, loss_kwargs, *, name: str = "loss_kwargs") -> dict:
    """Validate ``loss_kwargs`` for the trainer against the signature of ``method``'s loss.

    Refuses, with :class:`InputError`: an unknown method; a keyword the loss does not take
    (listing those it does); a keyword the trainer supplies itself (``beta``, ``inputs``); a
    required keyword left out; and methods whose loss needs per-pair data the trainer's rows
    do not carry. ``name`` is the argument's name in messages. Returns a copy of
    ``loss_kwargs``.
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
    """Options of :func:`rdpo_theory.torch.train.train_preference`, declared once.

    Each field's help text (``dataclasses.fields(TrainConfig)[i].metadata["help"]``, or
    :func:`rdpo_theory.options.field_help`) is the reference; ``rdpo llm --help`` prints the
    same text. Longer notes on some fields:

    loss_kwargs
        The method's parameters, passed to its loss: KLDPO ``tau``, ``variant``
        (``normalized``/``clipped``), ``clip``; WDPO ``rho0``, ``variant``
        (``sqrt-mean``/``per-pair``); baselines e.g. ``eps``. Checked at construction against
        the loss's signature (:func:`check_loss_kwargs`) and by calling the loss once on a
        two-pair dummy batch, so a bad value (``tau=0``) is refused here, not at the first step.
    resume
        The directory's recorded configuration (``config.json``: these fields plus the data
        hash, the models' identity and weight hashes, the tokenizer's vocabulary hash, the
        number of processes and the versions; see :mod:`rdpo_theory.torch.run_config`) must
        match this run except for ``max_steps``, ``log_every``, ``save_every``,
        ``save_final_model``, ``progress`` and ``fused_head``; otherwise
        :class:`~rdpo_theory.errors.InputError` names every differing field. Without ``resume``
        a directory that already holds checkpoints is refused.
    wdpo_hvp
        ``double-backward`` (exact: ``create_graph`` backward through the network on the math
        attention kernel) or ``finite-difference``: pass 1 is a first-order forward + backward
        at the embeddings ``e``, giving ``g_i = grad_{e_i} l_i``; then forward + backward of
        ``sum_i l_i`` at ``e + h u`` and ``e - h u`` with ``u_i = 2 c_i g_i`` held constant and
        ``c_i`` from :func:`rdpo_theory.torch.losses.wdpo_penalty_coefficients`, weighted
        ``+-1 / (2 h)``: the penalty gradient by central differences, error ``O(h^2)``, with
        fused attention (:func:`rdpo_theory.torch.steps.wdpo_fd_backward`). Single process and
        DDP; not DeepSpeed or fp16.
    wdpo_fd_precision
        ``float32``: the two differenced passes run with autocast off. ``autocast``: under the
        trainer's mixed precision (faster; bf16 rounds activations to ~4e-3, so use
        ``wdpo_fd_eps=1e-2``). Measured on a 4-layer GPT-2 in bf16 (CPU autocast), relative
        error of the penalty gradient against the float32 exact one (mean of 5 seeds,
        ``experiments/wdpo_fd/fd_accuracy.csv``): float32 passes, eps 1e-3: 0.21%; autocast,
        eps 1e-2: 2.8% (1e-3: 17%, 3e-2: 16%); bf16 double backward: 14%.
    robust_normalizer
        Which pairs normalise the robust weights (docs/theory.md#minibatch-fixed-point,
        ``docs/trainer-normalizers.md``):

        * ``"batch"`` (every method): each forward pass's own statistic -- KLDPO's ``log Z``
          or centre over the global micro-batch (``batch_size`` x processes, all_gather) and
          WDPO ``sqrt-mean``'s ``S = mean ||grad_z l||^2`` over the same global micro-batch. No
          extra cost, but the fixed point moves with the micro-batch size. ``"micro-batch"``
          is its deprecated old name (a DeprecationWarning, same behaviour).
        * ``"accumulated"`` (KLDPO ``normalized``/``clipped``, WDPO ``sqrt-mean``): the
          statistic of the whole optimiser step (``batch_size`` x processes x ``grad_accum``
          pairs), so A x K x b trains exactly like one micro-batch of A K b pairs. Cost
          (:func:`rdpo_theory.torch.steps.accumulated_statistic`): KLDPO A - 1 extra no-grad
          policy forwards per step; WDPO one extra forward plus a first-order backward to the
          embeddings per micro-batch.
        * ``"running"`` (KLDPO ``normalized``, WDPO ``sqrt-mean``): an exponential moving
          average of the statistic (:mod:`rdpo_theory.torch.normalizers`), all-reduced, saved
          in checkpoints and restored on resume.

        * ``"auto"`` (the default,
          :data:`rdpo_theory.torch.normalizers.DEFAULT_TRAINER_NORMALIZER`): ``"running"`` for
          KLDPO ``normalized`` and WDPO ``sqrt-mean`` by double backward on unweighted rows,
          ``"batch"`` otherwise (:func:`rdpo_theory.torch.normalizers.resolve_trainer_normalizer`;
          the run logs which one it used). Until this release the default was ``"batch"``;
          pass it to reproduce the paper's code.

        Rows with a ``weight`` column need ``"batch"`` (``"auto"`` picks it).
    fused_head
        Compute every sequence log-prob with a fused linear head
        (:func:`rdpo_theory.torch.lm.sequence_logps`): the logits (2B, T, V) are never formed,
        in forward and in every backward, WDPO's double backward included
        (``docs/one-gpu-recipe.md``). Needs a plain ``nn.Linear`` output head.
    """

    method: str = option(
        "dpo",
        help="dpo, kldpo, wdpo or a baseline name (see loss_methods()); refused at construction "
        "if the trainer cannot run it",
        cli=False,
    )
    beta: float = option(0.1, help="DPO temperature (> 0)", constraints=POSITIVE)
    loss_kwargs: dict = option(
        help="the method's parameters, passed to its loss (KLDPO tau, variant, clip; WDPO rho0, "
        "variant; baselines e.g. eps)",
        default_factory=dict,
        constraints=[Instance(dict)],
        cli=False,
    )
    learning_rate: float = option(
        1e-5, help="AdamW learning rate", constraints=POSITIVE, aliases=("--lr",)
    )
    weight_decay: float = option(0.0, help="AdamW weight decay", constraints=NONNEGATIVE)
    batch_size: int = option(8, help="pairs per micro-batch per process", constraints=POSITIVE_INT)
    grad_accum: int = option(1, help="micro-batches per optimizer step", constraints=POSITIVE_INT)
    max_steps: int = option(
        100, help="optimizer steps to train for", constraints=POSITIVE_INT, aliases=("--steps",)
    )
    warmup_steps: int = option(
        0,
        help="linear warmup steps, then `schedule`",
        constraints=NONNEGATIVE_INT,
        aliases=("--warmup",),
    )
    schedule: str = option(
        "constant",
        help="learning rate after warmup: constant, or linear decay to 0 at max_steps",
        choices=SCHEDULES,
    )
    max_grad_norm: float | None = option(
        1.0, help="global grad-norm clip (none: no clipping)", constraints=[*POSITIVE, NONE]
    )
    seed: int = option(0, help="seed of the data order and of training", constraints=SEED[:1])
    mixed_precision: str = option(
        "auto",
        help="auto (bf16 on a bf16-capable GPU, else fp32), no, bf16 or fp16",
        choices=MIXED_PRECISIONS,
    )
    max_length: int | None = option(
        None,
        help="token budget per row, prompt + completion (the prompt is left-truncated first; "
        "capped at the model's positions; none: the model's positions)",
        constraints=[Interval(int, 2, None, closed="left"), NONE],
    )
    add_eos: bool = option(
        True, help="append the eos token to every completion before scoring it", constraints=_BOOL
    )
    disable_dropout: bool = option(
        True, help="set every dropout probability of the policy to 0", constraints=_BOOL
    )
    log_every: int = option(1, help="log metrics every this many steps", constraints=POSITIVE_INT)
    save_every: int = option(
        0, help="checkpoint every this many steps (0: only at the end)", constraints=NONNEGATIVE_INT
    )
    output_dir: str | Path | None = option(
        None,
        help="where metrics.jsonl, config.json, checkpoints and the final model go (none: "
        "nothing written)",
        constraints=_PATH,
        cli=False,
    )
    resume: bool = option(
        False,
        help="continue from the latest checkpoint in the output folder; its recorded "
        "configuration, data, model, weight and tokenizer hashes must match",
        constraints=_BOOL,
    )
    save_final_model: bool = option(
        True, help="save the trained model (and tokenizer) under final/", constraints=_BOOL
    )
    progress: bool = option(True, help="show a tqdm progress bar of the steps", constraints=_BOOL)
    wdpo_hvp: str = option(
        "double-backward",
        help="how WDPO differentiates its penalty: double-backward (exact, math attention) or "
        "finite-difference (central-difference Hessian-vector product, fused attention)",
        choices=WDPO_HVP,
    )
    wdpo_fd_eps: float = option(
        1e-3,
        help="finite-difference WDPO: relative step h = eps ||e|| / ||u|| (the perturbation is "
        "eps of the embeddings' size)",
        constraints=POSITIVE,
    )
    wdpo_fd_precision: str = option(
        "float32",
        help="finite-difference WDPO: run the two differenced passes in float32 (autocast off) "
        "or under the trainer's autocast",
        choices=FD_PRECISIONS,
    )
    on_nonfinite: str = option(
        "raise",
        help="a step whose loss or gradient norm is NaN/inf stops the run naming the first "
        "non-finite quantity (raise) or is dropped and counted in the metrics (skip)",
        choices=ON_NONFINITE,
    )
    robust_normalizer: str = option(
        DEFAULT_TRAINER_NORMALIZER,
        help="which pairs normalise the KLDPO/WDPO robust weights: each micro-batch (batch, the "
        "paper's code), the whole optimiser step (accumulated) or a running average (running); "
        "auto: running where it applies (KLDPO normalized, WDPO sqrt-mean by double backward, "
        "unweighted rows), else batch; docs/trainer-normalizers.md ('micro-batch' is a "
        "deprecated alias of batch)",
        constraints=[
            Options(TRAINER_NORMALIZERS, deprecated=dict.fromkeys(DEPRECATED_NORMALIZERS, "batch"))
        ],
        metavar="{" + ",".join(TRAINER_NORMALIZERS) + "}",
    )
    robust_decay: float = option(
        DEFAULT_DECAY,
        help="EMA weight a of the running normaliser, in (0, 1]: the average spans about 1/a "
        "micro-batches",
        constraints=DECAY,
    )
    peft_config: object | None = option(
        None,
        help="e.g. peft.LoraConfig(r=16, target_modules='all-linear'): train adapters only; the "
        "reference is the base model with adapters disabled (ref_model must not be given)",
        cli=False,
    )
    precompute_ref: bool = option(
        False,
        help="compute the reference log-probs of every row once before training (cached) and "
        "train without a reference model in memory",
        constraints=_BOOL,
    )
    ref_cache_dir: str | Path | None = option(
        None,
        help="with precompute_ref: folder of the cache file ref_logps-<hash>.json (none: the "
        "output folder)",
        constraints=_PATH,
    )
    fused_head: bool = option(
        False,
        help="score sequences with a fused linear head that never forms the logits (batch x "
        "tokens x vocabulary), forward and every backward; same log-probs up to rounding, for a "
        "plain nn.Linear head (docs/one-gpu-recipe.md)",
        constraints=_BOOL,
    )

    def __post_init__(self):
        resolve_loss(self.method)  # an unknown method is named first
        validate_fields(self)
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
        self.loss_kwargs = check_loss_kwargs(self.method, self.loss_kwargs)
        self.robust_normalizer = check_trainer_normalizer(
            self.robust_normalizer, self.method, self.loss_kwargs
        )
        if self.robust_normalizer not in ("auto", "batch") and self.wdpo_hvp != "double-backward":
            raise InputError(
                f"robust_normalizer={self.robust_normalizer!r} needs wdpo_hvp='double-backward'"
            )
        if self.method == "group_dpo" and "group_step" not in self.loss_kwargs:
            raise InputError(
                "loss_kwargs must give group_step (the exponentiated-gradient step of the group "
                "weights) for method 'group_dpo'"
            )
        probe_loss_kwargs(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["output_dir"] = None if self.output_dir is None else str(self.output_dir)
        d["ref_cache_dir"] = None if self.ref_cache_dir is None else str(self.ref_cache_dir)
        if self.peft_config is not None:  # sets and enums -> JSON-able
            pc = self.peft_config
            pc = pc.to_dict() if hasattr(pc, "to_dict") else dict(pc)
            d["peft_config"] = json.loads(json.dumps(pc, default=_jsonable))
        return d


def probe_loss_kwargs(cfg: TrainConfig) -> None:
    """Check the values in ``cfg.loss_kwargs`` by calling the method's loss once on a two-pair
    dummy batch, so the loss's own checks name the bad parameter (e.g. ``tau``)."""
    if dist.is_available() and dist.is_initialized():
        return  # the probe would run collectives (KLDPO's all_gather); names were checked
    if not all(isinstance(v, int | float | str | None) for v in cfg.loss_kwargs.values()):
        return  # per-batch tensors (e.g. groups) are checked by the loss at the first step
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    kw = dict(cfg.loss_kwargs)
    if cfg.method == "wdpo":
        kw["inputs"] = x
    try:
        resolve_loss(cfg.method)(x * 1.0, x * 0.0, x * 0.0, x * 0.0, beta=cfg.beta, **kw)
    except InputError as exc:
        raise InputError(f"loss_kwargs for method {cfg.method!r}: {exc}") from None
    except TypeError:
        return  # a per-batch argument the probe cannot supply: checked at the first step


#: Kept for callers of the old name.
check_run_fields = probe_loss_kwargs


def _jsonable(v):
    return sorted(v) if isinstance(v, set | frozenset) else str(v)


__all__ = [
    "CORE_METHODS",
    "FD_PRECISIONS",
    "ON_NONFINITE",
    "PER_PAIR_KEYWORDS",
    "TRAINER_KEYWORDS",
    "TrainConfig",
    "WDPO_HVP",
    "check_loss_kwargs",
    "loss_methods",
    "probe_loss_kwargs",
    "resolve_loss",
]
