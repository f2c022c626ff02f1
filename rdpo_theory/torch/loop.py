"""The training loop of :func:`train_preference` (docs/theory.md#code-variants): rows and data
order, the run's setup (recorded configuration, reference, optimizer, resume), one optimizer
step over its micro-batches, logging, checkpoints and the final model.

One micro-batch's loss and backward pass are in :mod:`rdpo_theory.torch.steps`, checkpoints and
the metrics log in :mod:`rdpo_theory.torch.checkpoints`, the non-finite rule in
:mod:`rdpo_theory.torch.nonfinite` and the options in :mod:`rdpo_theory.torch.config`.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import _validate as V
from ..errors import InputError
from ..rng import make_rng, stream_seed
from .adapters import apply_peft, is_peft_model, register_adapter_checkpointing
from .checkpoints import (
    append_metrics,
    group_state,
    latest_checkpoint,
    restore_group_weights,
    resume_state,
    save_checkpoint,
    write_metrics,
)
from .config import TrainConfig
from .guards import check_finite_parameters
from .lm import effective_max_length, encode_pairs
from .nonfinite import diagnose_nonfinite, nonfinite_step, raise_nonfinite
from .normalizers import RunningStatistic, resolve_trainer_normalizer
from .reference import BATCH_REF_KEYS, row_reference_values, with_reference_logps
from .run_config import CONFIG_FILE, check_output_dir, run_record
from .steps import accumulated_statistic, loss_and_backward

ROW_TEXT_KEYS = ("prompt", "chosen", "rejected")


@dataclass
class TrainResult:
    """``model`` (the unwrapped trained policy), ``metrics`` (one dict per logged step),
    ``output_dir``, ``steps`` (optimizer steps done, including resumed ones), for
    ``group_dpo``, ``group_weights`` (``{group label: alpha}`` at the end) and
    ``robust_normalizer``, the normaliser the run used (``"auto"`` resolved; also in
    ``config.json`` under ``run.robust_normalizer``)."""

    model: torch.nn.Module
    metrics: list[dict]
    output_dir: Path | None
    steps: int
    group_weights: dict | None = None
    robust_normalizer: str = "batch"


def check_rows(rows) -> list[dict]:
    """Validate preference rows ``{"prompt", "chosen", "rejected"}`` (strings, not all three
    empty: such a row has nothing to score). Errors name the row (0-based)."""
    rows = list(rows)
    if not rows:
        raise InputError("dataset is empty: need preference rows")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise InputError(f"dataset row {i} must be a dict, got {type(r).__name__}")
        for k in ROW_TEXT_KEYS:
            if not isinstance(r.get(k), str):
                raise InputError(f"dataset row {i} needs a string {k!r}; got keys {sorted(r)}")
        if not any(r[k] for k in ROW_TEXT_KEYS):
            raise InputError(
                f"dataset row {i}: prompt, chosen and rejected are all empty strings (nothing "
                "to train on); remove the row"
            )
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


def lr_lambda(cfg: TrainConfig):
    """The learning-rate multiplier of step ``s``: linear warmup over ``warmup_steps``, then
    1 (``constant``) or a linear decay to 0 at ``max_steps`` (``linear``)."""

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


def disable_dropout(model) -> None:
    """Set every ``nn.Dropout`` probability of ``model`` to 0."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


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


@dataclass
class _Run:
    """Everything one training run carries from step to step."""

    cfg: TrainConfig
    acc: object
    model: object
    ref_model: object
    tokenizer: object
    rows: list
    ref_values: object
    max_length: int | None
    out_dir: Path | None
    opt: object = None
    sched: object = None
    row_w: object = None
    labels: list | None = None
    row_gi: object = None
    alpha: torch.Tensor | None = None  # group_dpo's group weights
    normalizer: RunningStatistic | None = None  # robust_normalizer="running"
    #: the resolved ``cfg.robust_normalizer`` ("auto" resolved against the rows)
    normalizer_mode: str = "batch"
    start: int = 0
    metrics: list = field(default_factory=list)
    running: dict = field(default_factory=lambda: {"skipped_total": 0, "truncated_total": 0})
    enc_stats: dict = field(default_factory=lambda: {"truncated": 0, "sequences": 0})


def _row_data(rows, cfg: TrainConfig) -> dict:
    """Weights, group labels and group indices of the rows, checked against ``cfg``."""
    row_w, row_g = V.row_weights_groups(rows)
    labels = sorted(set(row_g)) if row_g is not None else None
    if cfg.method == "group_dpo" and labels is None:
        raise InputError("method 'group_dpo' needs a 'group' on every dataset row")
    if row_w is not None and cfg.robust_normalizer not in ("auto", "batch"):
        raise InputError(
            f"rows with a 'weight' column cannot be trained with "
            f"robust_normalizer={cfg.robust_normalizer!r}; use robust_normalizer='batch'"
        )
    mode = resolve_trainer_normalizer(
        cfg.robust_normalizer,
        cfg.method,
        cfg.loss_kwargs,
        wdpo_hvp=cfg.wdpo_hvp,
        weighted=row_w is not None,
    )
    row_gi = None
    if labels is not None:
        pos = {g: i for i, g in enumerate(labels)}
        row_gi = np.array([pos[g] for g in row_g])
    alpha = None
    if cfg.method == "group_dpo":
        alpha = torch.full((len(labels),), 1.0 / len(labels), dtype=torch.float64)
    return dict(row_w=row_w, labels=labels, row_gi=row_gi, alpha=alpha, normalizer_mode=mode)


def _setup(model, tokenizer, rows, cfg: TrainConfig, ref_model, acc) -> _Run:
    """Check the output folder against the recorded run, build the reference, the optimizer
    and the schedule, prepare them with ``acc`` and restore a checkpoint on resume."""
    data = _row_data(rows, cfg)
    out_dir = Path(cfg.output_dir) if cfg.output_dir is not None else None
    ckpt = record = None
    if out_dir is not None:  # refuse to mix runs before anything is written or loaded
        # the reference is ref_model, or derived from model (a copy, its base, or precomputed);
        # the hashes are those of the weights as given: the weights the run starts from
        ref_id = ref_model if ref_model is not None else model
        record = run_record(
            cfg,
            rows,
            model,
            ref_id,
            num_processes=acc.num_processes,
            tokenizer=tokenizer,
            normalizer=data["normalizer_mode"],
        )
        ckpt = latest_checkpoint(out_dir) if out_dir.is_dir() else None
        check_output_dir(out_dir, record, resume=cfg.resume, has_checkpoint=ckpt is not None)
    max_length = effective_max_length(model, cfg.max_length)
    model, ref_model, rows, ref_values = setup_reference(
        model, tokenizer, rows, cfg, ref_model, acc, max_length=max_length
    )
    run = _Run(cfg, acc, model, ref_model, tokenizer, rows, ref_values, max_length, out_dir, **data)
    if cfg.disable_dropout:
        disable_dropout(run.model)
    if run.ref_model is not None:
        run.ref_model.eval().requires_grad_(False).to(acc.device)
    opt = torch.optim.AdamW(
        [p for p in run.model.parameters() if p.requires_grad],
        lr=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
    )
    peft = is_peft_model(run.model)
    if peft:
        register_adapter_checkpointing(acc)
    run.model, run.opt = acc.prepare(run.model, opt)
    run.sched = torch.optim.lr_scheduler.LambdaLR(run.opt, lr_lambda(cfg))
    acc.register_for_checkpointing(run.sched)
    run.model.train()
    if out_dir is not None and cfg.resume and ckpt is not None:
        run.start, saved, run.metrics = resume_state(acc, run.model, ckpt, out_dir, peft=peft)
        run.running.update(saved)
        if run.alpha is not None:
            run.alpha = restore_group_weights(run.running, run.labels, ckpt)
    if run.normalizer_mode == "running":
        run.normalizer = RunningStatistic(cfg.robust_decay, log_space=cfg.method == "kldpo")
        if run.running.get("normalizer") is not None:
            run.normalizer.load_state_dict(run.running["normalizer"])
    if out_dir is not None and acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_metrics(out_dir, run.metrics)
        (out_dir / CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str))
    return run


def _plan_step(run: _Run, step: int) -> list[tuple[dict, dict]]:
    """The step's micro-batches on this process: ``(encoded batch on the device, extra loss
    arguments)`` each (row weights; group indices for ``group_dpo``)."""
    cfg, acc = run.cfg, run.acc
    gbatch = cfg.batch_size * acc.num_processes
    rank = acc.process_index
    plan = []
    for a in range(cfg.grad_accum):
        idx = micro_batch_indices(len(run.rows), gbatch, step * cfg.grad_accum + a, cfg.seed)
        sel = idx[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
        mine = [run.rows[i] for i in sel]
        extra = {}
        if run.row_w is not None:
            extra["weights"] = torch.as_tensor(run.row_w[sel], device=acc.device)
        if run.alpha is not None:
            extra.update(
                groups=torch.as_tensor(run.row_gi[sel], device=acc.device),
                n_groups=len(run.labels),
            )
        batch = encode_pairs(
            run.tokenizer,
            *([r[k] for r in mine] for k in ROW_TEXT_KEYS),
            max_length=run.max_length,
            add_eos=cfg.add_eos,
            stats=run.enc_stats,
        )
        if run.ref_values is not None:
            for j, k in enumerate(BATCH_REF_KEYS):
                batch[k] = torch.as_tensor(run.ref_values[sel, j], dtype=torch.float64)
        plan.append(({k: v.to(acc.device) for k, v in batch.items()}, extra))
    return plan


def _update(run: _Run, step: int, losses: list, batches: list, sums: dict, alpha_start) -> int:
    """The synchronising micro-batch's update: clip the gradient, apply the non-finite rule
    (raise, or skip the update), step the optimizer. Returns 1 if the update was skipped."""
    cfg, acc = run.cfg, run.acc
    clip = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
    gn = acc.clip_grad_norm_(run.model.parameters(), clip)
    gn = None if gn is None else torch.as_tensor(gn, dtype=torch.float32)
    if gn is not None:
        sums["grad_norm"] = gn.detach()
    # fp16 loss scaling: inf gradients are the scaler's business
    check_gn = gn is not None and getattr(acc, "scaler", None) is None
    skipped = 0
    if nonfinite_step(acc, losses, gn if check_gn else None):
        what = diagnose_nonfinite(cfg, run.model, run.ref_model, batches, losses, acc)
        if cfg.on_nonfinite == "raise":
            raise_nonfinite(step + 1, what)
        skipped = 1
        run.running["skipped_total"] += 1
        run.alpha = alpha_start  # a skipped step leaves the group weights too
    else:
        run.opt.step()
    run.opt.zero_grad()
    return skipped


def _train_step(run: _Run, step: int) -> tuple[dict, int]:
    """One optimizer step: its micro-batches' losses and backward passes (with the
    ``accumulated`` first pass), then the update. Returns the step's mean statistics and
    whether the update was skipped."""
    cfg, acc = run.cfg, run.acc
    sums: dict[str, torch.Tensor] = {}
    losses, skipped, alpha_start = [], 0, run.alpha
    plan = _plan_step(run, step)
    batches = [b for b, _ in plan]
    step_norm, kept = run.normalizer, None
    # a skipped step leaves the running normaliser as it was, like the weights
    norm_start = run.normalizer.state_dict() if run.normalizer is not None else None
    for a, (batch, extra) in enumerate(plan):
        if run.alpha is not None:
            extra["group_weights"] = run.alpha  # updated by the previous micro-batch
        with acc.accumulate(run.model):
            if a == 0 and run.normalizer_mode == "accumulated":
                # first pass: the whole step's statistic (micro-batch 0's forward is kept)
                step_norm, kept = accumulated_statistic(
                    cfg, run.model, run.ref_model, batches, accelerator=acc, keep_first=True
                )
            more = {"extra": extra} if extra else {}  # weights / group-robust state
            if a == 0 and kept is not None:
                more["policy_logps"] = kept
            out = loss_and_backward(
                cfg, run.model, run.ref_model, batch, accelerator=acc, normalizer=step_norm, **more
            )
            kept = None
            losses.append(out.loss.detach())
            if out.group_weights is not None:
                run.alpha = out.group_weights.detach().cpu()
            if acc.sync_gradients:
                skipped = _update(run, step, losses, batches, sums, alpha_start)
            else:
                run.opt.step()  # accelerate defers the update to the synchronising micro-batch
                run.opt.zero_grad()
        for k, v in {"loss": out.loss.detach(), **out.stats}.items():
            v = torch.as_tensor(v, dtype=torch.float32, device=acc.device)
            sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
    if skipped and norm_start is not None:
        run.normalizer.load_state_dict(norm_start)
    run.sched.step()
    return sums, skipped


def _count_truncation(run: _Run, done: int) -> None:
    """Add the step's truncated sequences to the counters; warn the first time."""
    st = run.enc_stats
    run.running["truncated_total"] += st["truncated"]
    if st["truncated"] and not run.running.get("warned_truncation"):
        warnings.warn(
            f"{st['truncated']} of {st['sequences']} sequences at step {done} were longer than "
            f"max_length={run.max_length} tokens and were truncated (the prompt's end and the "
            "completion's start are kept); metrics count them in 'truncated_total'",
            stacklevel=3,
        )
        run.running["warned_truncation"] = 1
    st.update(truncated=0, sequences=0)


def _log_step(run: _Run, done: int, sums: dict, skipped: int, seconds: float) -> dict:
    """The metrics row of a logged step (averaged over processes), appended to the log."""
    acc = run.acc
    row = {"step": done, "method": run.cfg.method}
    for k, v in sums.items():
        v = torch.as_tensor(v, dtype=torch.float32, device=acc.device)
        row[k] = float(acc.reduce(v, reduction="mean")) if acc.num_processes > 1 else float(v)
    row["reward_margin"] = row["reward_chosen"] - row["reward_rejected"]
    row["lr"] = float(run.sched.get_last_lr()[0])
    row["step_seconds"] = seconds
    row["skipped"] = skipped
    row["skipped_total"] = run.running["skipped_total"]
    row["truncated_total"] = run.running["truncated_total"]
    run.metrics.append(row)
    if run.out_dir is not None and acc.is_main_process:
        append_metrics(run.out_dir, row)
    return row


def _checkpoint(run: _Run, done: int) -> None:
    """Save the step-``done`` checkpoint with the running statistics (finite weights only)."""
    model = run.acc.unwrap_model(run.model)
    check_finite_parameters(model, what=f"save the step-{done} checkpoint")
    if run.normalizer is not None:
        run.running["normalizer"] = run.normalizer.state_dict()
    run.running.update(group_state(run.alpha, run.labels))
    save_checkpoint(run.acc, run.out_dir, done, running=run.running)


def _finish(run: _Run) -> TrainResult:
    """Save ``final/`` (finite weights only) and build the result."""
    cfg, acc = run.cfg, run.acc
    unwrapped = acc.unwrap_model(run.model)
    if run.out_dir is not None and cfg.save_final_model:
        check_finite_parameters(unwrapped, what="save the final model")
        acc.wait_for_everyone()
        unwrapped.save_pretrained(
            run.out_dir / "final", is_main_process=acc.is_main_process, save_function=acc.save
        )
        if acc.is_main_process:
            run.tokenizer.save_pretrained(run.out_dir / "final")
    gw = None if run.alpha is None else dict(zip(run.labels, run.alpha.tolist()))
    steps = max(run.start, cfg.max_steps)
    return TrainResult(unwrapped, run.metrics, run.out_dir, steps, gw, run.normalizer_mode)


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
        The policy (a causal LM); trained in place. On resume, the model the run started from
        (its weight hash must match the recorded one; the trained weights come from the
        checkpoint).
    tokenizer : transformers.PreTrainedTokenizerBase
    rows : iterable of dict
        ``{"prompt": str, "chosen": str, "rejected": str}`` (not all three empty), optionally
        ``"weight"`` (a number >= 0, on every row or none) and ``"group"`` (a non-empty string,
        on every row or none; required by ``method="group_dpo"``).
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
    from accelerate.utils import set_seed  # the llm extra

    cfg = config
    if not isinstance(cfg, TrainConfig):
        raise InputError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    rows = check_rows(rows)
    acc = accelerator if accelerator is not None else make_accelerator(cfg)
    set_seed(cfg.seed)
    run = _setup(model, tokenizer, rows, cfg, ref_model, acc)
    bar = tqdm(
        total=cfg.max_steps,
        initial=run.start,
        desc=f"{cfg.method}",
        disable=not (cfg.progress and acc.is_local_main_process),
        leave=False,
    )
    for step in range(run.start, cfg.max_steps):
        t0 = time.perf_counter()
        sums, skipped = _train_step(run, step)
        done = step + 1
        _count_truncation(run, done)
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            row = _log_step(run, done, sums, skipped, time.perf_counter() - t0)
            bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.2f}")
        bar.update(1)
        if run.out_dir is not None and (
            (cfg.save_every and done % cfg.save_every == 0) or done == cfg.max_steps
        ):
            _checkpoint(run, done)
    bar.close()
    return _finish(run)


__all__ = [
    "TrainResult",
    "check_rows",
    "disable_dropout",
    "lr_lambda",
    "make_accelerator",
    "micro_batch_indices",
    "setup_reference",
    "train_preference",
]
