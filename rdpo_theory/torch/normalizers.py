"""Running normalisers: batch-size-independent KLDPO and WDPO ``sqrt-mean`` losses
(docs/theory.md#minibatch-fixed-point).

A minibatch KLDPO loss normalises its weights by the batch's own partition sum
``Z_b = mean_b exp(l_i / tau)``, and WDPO ``sqrt-mean`` divides by the batch's own
``sqrt(S_b)``, ``S_b = mean_b ||grad_z l_i||^2``. Both are nonlinear in the batch, so the
expected minibatch gradient is not the full-data gradient and the fixed point moves with the
batch size. The running normalisers replace the batch statistic by an exponential moving
average over training batches, the moving-average inner estimate of stochastic compositional
gradient methods:

* KLDPO: ``Z_t = (1 - a) Z_{t-1} + a Z_b`` (kept in log space, ``log Z_t`` by ``logaddexp``,
  so ``exp(l / tau)`` never overflows); weights ``w_i = exp(l_i / tau) / Z_t`` held constant,
  loss ``mean_b w_i l_i``. With ``Z_t`` equal to the full-data ``E_p exp(l / tau)`` the expected
  gradient is exactly the full-batch gradient of ``tau log E_p exp(l / tau)`` for every B.
* WDPO ``sqrt-mean``: ``S_t = (1 - a) S_{t-1} + a S_b``; loss
  ``mean_b l_i + rho0 (mean_b ||g_i||^2 + S_t) / (2 sqrt(S_t))``, whose gradient
  ``grad mean l + rho0 grad mean ||g||^2 / (2 sqrt(S_t))`` is, at ``S_t = E_p ||g||^2``, an
  unbiased estimate of the gradient of ``E l + rho0 sqrt(E ||g||^2)``; its value is the
  ``sqrt-mean`` objective when ``S_b = S_t`` (the tangent majoriser of the square root).

The statistic is updated with the current batch before it is used (so the first step uses the
batch statistic) and initialised from the first batch. ``decay`` is ``a``: the average spans
about ``1 / a`` steps, i.e. ``B / a`` pairs. Its finite-``a`` bias on the fixed point is
``O(a)``: the relative bias of ``1 / Z_t`` is about ``a / (2 - a) * Var(Z_b) / Z^2``.

Each statistic has ``state_dict`` / ``load_state_dict`` for checkpoints, and an optional
``torch.distributed`` all-reduce of the batch statistic so every worker holds the same value.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist

from ..errors import InputError
from ..options import Interval, check
from . import losses as TL

NORMALIZERS = ("batch", "running")
#: Default EMA weight ``a`` of the running normalisers (about 100 steps of memory).
DEFAULT_DECAY = 0.01


def check_normalizer(normalizer: str, variant: str) -> str:
    """Validated ``normalizer``: ``"batch"`` for every variant, ``"running"`` only for KLDPO
    ``normalized`` and WDPO ``sqrt-mean`` (``clipped`` and ``per-pair`` have no batch
    normaliser to replace)."""
    if normalizer not in NORMALIZERS:
        raise InputError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
    if normalizer == "running" and variant not in ("normalized", "sqrt-mean"):
        raise InputError(
            f"normalizer='running' applies to variant 'normalized' (KLDPO) or 'sqrt-mean' "
            f"(WDPO), got variant {variant!r}"
        )
    return normalizer


#: The declared constraint of a running normaliser's decay: a float in (0, 1].
DECAY = [Interval(float, 0, 1, closed="right")]


def check_decay(decay, name: str = "decay", *, owner: str | None = None) -> float:
    """``decay`` in (0, 1] (:data:`DECAY`); :class:`InputError` naming ``name`` otherwise."""
    return float(check(name, decay, DECAY, owner=owner))


def _all_reduce_mean(x: torch.Tensor, group=None) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return x
    y = x.clone()
    dist.all_reduce(y, group=group)
    return y / dist.get_world_size(group)


class RunningStatistic:
    """An exponential moving average ``s_t = (1 - a) s_{t-1} + a x_t`` of a positive scalar,
    stored as ``log s_t`` (``log_space=True``, updated with ``logaddexp``) or as ``s_t``.

    Parameters
    ----------
    decay : float in (0, 1]
        ``a``; ``1`` reproduces the batch statistic.
    log_space : bool
        Take and return logarithms (the KLDPO partition sum).
    group : torch.distributed group, optional
        Workers whose batch statistics are averaged before the update (equal local batch
        sizes give the global batch's statistic), so every worker holds the same value.
    """

    def __init__(self, decay: float = DEFAULT_DECAY, *, log_space: bool = False, group=None):
        self.decay = check_decay(decay)
        self.log_space = bool(log_space)
        self.group = group
        self.value: torch.Tensor | None = None  # float64 0-d tensor
        self.steps = 0

    def update(self, batch_value: torch.Tensor) -> torch.Tensor:
        """Fold one batch's statistic (log of it in log space; detached 0-d) into the average
        and return the new value (detached, float64). A non-finite batch value is not folded
        in and NaN is returned, so the loss built on it is non-finite."""
        x = batch_value.detach().to(torch.float64)
        if self.group is not None or (dist.is_available() and dist.is_initialized()):
            if self.log_space:  # average Z over workers, in log space
                x = _all_reduce_mean(x.exp(), self.group).log() if x.isfinite() else x
            else:
                x = _all_reduce_mean(x, self.group)
        if not bool(torch.isfinite(x)):
            # not folded in (one NaN would poison every later step): the caller's loss becomes
            # non-finite and the trainer's non-finite rule (raise, or skip the step) applies
            return torch.full((), math.nan, dtype=torch.float64)
        if self.value is None or self.decay == 1.0:
            self.value = x
        elif self.log_space:
            a = self.decay
            self.value = torch.logaddexp(self.value + math.log1p(-a), x + math.log(a))
        else:
            self.value = (1.0 - self.decay) * self.value + self.decay * x
        self.steps += 1
        return self.value

    def state_dict(self) -> dict:
        """JSON-friendly state (``value`` a float64 number: its repr round-trips exactly)."""
        return {
            "decay": self.decay,
            "log_space": self.log_space,
            "value": None if self.value is None else float(self.value),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        if bool(state["log_space"]) != self.log_space:
            raise InputError("load_state_dict: log_space of the saved statistic differs")
        self.decay = check_decay(state["decay"])
        v = state["value"]
        self.value = None if v is None else torch.as_tensor(v, dtype=torch.float64).clone()
        self.steps = int(state["steps"])


def batch_log_partition(per_pair: torch.Tensor, tau: float) -> torch.Tensor:
    """``log mean_b exp(l_i / tau)``, detached 0-d float64: the batch's log partition sum
    (:func:`rdpo_theory.torch.losses.kl_statistic` in float64)."""
    return TL.kl_statistic(per_pair.detach().to(torch.float64), tau=tau)


def running_kldpo_objective(
    per_pair: torch.Tensor, *, tau: float, log_partition: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, w)``: ``w_i = exp(l_i / tau - log Z)`` (detached) and ``loss = mean_b w_i l_i``.

    ``log_partition`` is ``log Z``, e.g. a :class:`RunningStatistic` in log space. With
    ``log Z`` the batch's own :func:`batch_log_partition` this is KLDPO ``normalized``
    (:func:`rdpo_theory.torch.losses.kldpo_objective`)."""
    w = TL.kl_weights_at(per_pair, tau=tau, variant="normalized", clip=1.0, statistic=log_partition)
    return (w * per_pair).mean(), w


def running_wdpo_objective(
    per_pair: torch.Tensor, sq_norms: torch.Tensor, *, rho0: float, mean_sq: torch.Tensor
) -> torch.Tensor:
    """``mean_b l_i + rho0 (mean_b ||g_i||^2 + S) / (2 sqrt(S))`` with ``S = mean_sq``
    (detached): the linearised WDPO ``sqrt-mean`` loss at the running ``S``. With ``S`` the
    batch's own ``mean_b ||g_i||^2`` its value and gradient are those of ``sqrt-mean``."""
    return per_pair.mean() + TL.sqrt_mean_tangent(sq_norms.mean(), mean_sq, rho0)


# ---------------------------------------------------------------------------- the trainer
#: ``TrainConfig.robust_normalizer`` values implemented by the trainer (and by
#: ``RobustDPOTrainer`` and ``rdpo llm``): the same words as ``normalizer`` above and
#: :mod:`rdpo_theory.approx`, plus ``"auto"`` (:func:`resolve_trainer_normalizer`).
TRAINER_NORMALIZERS = ("auto", "batch", "accumulated", "running")
#: Old spellings still accepted, with a DeprecationWarning, for ``"batch"``.
DEPRECATED_NORMALIZERS = ("micro-batch",)
#: The default ``robust_normalizer`` of the trainer, the TRL subclass and ``rdpo llm``:
#: ``"auto"``, which is ``"running"`` wherever the running normaliser applies and ``"batch"``
#: elsewhere (:func:`resolve_trainer_normalizer`; docs/minibatch.md#a-rule-across-worlds gives
#: the evidence: at groups of 4 the batch normaliser optimises 0.56-0.95 of the radius, the
#: running one 0.99-1.00).
DEFAULT_TRAINER_NORMALIZER = "auto"


def check_trainer_normalizer(normalizer: str, method: str, loss_kwargs: dict) -> str:
    """Validated ``TrainConfig.robust_normalizer``, returned in its current spelling:

    * ``"auto"`` (every method, the default): resolved when the data is known by
      :func:`resolve_trainer_normalizer`;
    * ``"batch"`` (every method): the statistics of each forward pass (KLDPO's gathered over
      workers); ``"micro-batch"`` is a deprecated alias (DeprecationWarning);
    * ``"accumulated"``: KLDPO (``normalized`` and ``clipped``) and WDPO ``sqrt-mean``;
    * ``"running"``: KLDPO ``normalized`` and WDPO ``sqrt-mean``.
    """
    if isinstance(normalizer, str) and normalizer in DEPRECATED_NORMALIZERS:
        warnings.warn(
            f"robust_normalizer={normalizer!r} is deprecated; use 'batch' (same behaviour)",
            DeprecationWarning,
            stacklevel=3,
        )
        normalizer = "batch"
    if normalizer not in TRAINER_NORMALIZERS:
        raise InputError(
            f"The 'robust_normalizer' parameter must be one of {TRAINER_NORMALIZERS}. "
            f"Got {normalizer!r} instead."
        )
    if normalizer in ("auto", "batch"):
        return normalizer
    if method not in ("kldpo", "wdpo"):
        raise InputError(
            f"robust_normalizer={normalizer!r} applies to kldpo and wdpo, not {method!r}"
        )
    variant = _variant(method, loss_kwargs.get("variant"))
    if normalizer == "running":
        check_normalizer("running", variant)
    elif variant == "per-pair":
        raise InputError(
            "robust_normalizer='accumulated' applies to KLDPO and to WDPO 'sqrt-mean'; WDPO "
            "'per-pair' has no batch normaliser (its penalty is a mean over pairs)"
        )
    return normalizer


def resolve_trainer_normalizer(
    normalizer: str,
    method: str,
    loss_kwargs: dict,
    *,
    wdpo_hvp: str = "double-backward",
    weighted: bool = False,
) -> str:
    """The normaliser a run uses: ``normalizer`` itself unless it is ``"auto"``, which is

    * ``"running"`` for KLDPO ``normalized`` and WDPO ``sqrt-mean`` (with double-backward
      Hessian-vector products) on unweighted rows: the robust losses whose minibatch fixed
      point otherwise moves with the micro-batch size (docs/theory.md#minibatch-objective);
    * ``"batch"`` for everything else: DPO and the baselines (no normaliser), KLDPO
      ``clipped`` and WDPO ``per-pair`` (no running form), WDPO by finite differences and rows
      with a ``weight`` column (the running statistic takes neither).

    ``normalizer`` has been through :func:`check_trainer_normalizer`. Returns one of
    ``"batch"``, ``"accumulated"``, ``"running"``."""
    if normalizer != "auto":
        return normalizer
    if method not in ("kldpo", "wdpo") or weighted:
        return "batch"
    if method == "wdpo" and wdpo_hvp != "double-backward":
        return "batch"
    variant = _variant(method, loss_kwargs.get("variant"))
    return "running" if variant in ("normalized", "sqrt-mean") else "batch"


def _variant(method: str, variant: str | None) -> str:
    if variant is not None:
        return variant
    return "normalized" if method == "kldpo" else "sqrt-mean"


class StepStatistic:
    """``robust_normalizer="accumulated"``: the normalising statistic of one optimiser step's
    whole global batch (every micro-batch of the step on every worker), fixed while the step's
    micro-batches run their backward passes.

    ``value``: KLDPO ``log Z`` (``normalized``) or the centre ``c`` (``clipped``) of
    :func:`rdpo_theory.torch.losses.kl_statistic`; WDPO ``S = mean ||grad_z l_i||^2``.
    ``stats``: the step's diagnostics, logged once per step."""

    def __init__(self, value: torch.Tensor, stats: dict):
        self.value = value.detach()
        self.stats = stats


def step_statistic(
    method: str,
    values: torch.Tensor,
    *,
    tau: float | None = None,
    variant: str | None = None,
    clip: float = 10.0,
    group=None,
) -> StepStatistic:
    """The :class:`StepStatistic` of one optimiser step from this worker's ``values`` (all its
    micro-batches of the step, concatenated): KLDPO per-pair losses ``l_i`` or WDPO squared
    input-gradient norms ``||grad_z l_i||^2``. The values are gathered over the workers of
    ``group`` (``torch.distributed``; one ``all_gather`` of the step's pairs), so every worker
    holds the same statistic: the one a single worker computes on the whole global batch."""
    variant = _variant(method, variant)
    glob = TL.gather_pairs(values, group)
    if method == "kldpo":
        stat = TL.kl_statistic(glob, tau=tau, variant=variant)
        w = TL.kl_weights_at(glob, tau=tau, variant=variant, clip=clip, statistic=stat)
        return StepStatistic(
            stat, TL.kl_weight_diagnostics(w, statistic=stat, variant=variant, clip=clip)
        )
    s = glob.detach().to(TL.accumulation_dtype(glob)).mean()
    return StepStatistic(s, {"normalizer": s, "grad_rms": s.sqrt()})


def normalized_loss(
    method: str,
    normalizer: RunningStatistic | StepStatistic,
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    *,
    beta: float,
    tau: float | None = None,
    variant: str | None = None,
    clip: float = 10.0,
    rho0: float | None = None,
    inputs=None,
    weights=None,
    group=None,
):
    """KLDPO or WDPO ``sqrt-mean`` on the four log-prob tensors, normalised by ``normalizer``
    instead of the micro-batch's own statistic (docs/theory.md#minibatch-fixed-point):

    * a :class:`RunningStatistic` (``robust_normalizer="running"``): updated with this
      micro-batch's statistic (all-reduced over workers), then used;
    * a :class:`StepStatistic` (``"accumulated"``): the statistic of the whole optimiser step,
      used as it is.

    KLDPO: ``mean_b w_i l_i`` with ``w`` from :func:`rdpo_theory.torch.losses.kl_weights_at`
    (held constant). WDPO: :func:`running_wdpo_objective` at ``S``, whose gradient with ``S``
    the mean over a set of micro-batches is, summed over them, the gradient of ``sqrt-mean``
    on their union. Returns a :class:`rdpo_theory.torch.losses.LossOutput`; its ``stats`` add
    the diagnostics of :func:`rdpo_theory.torch.losses.kl_weight_diagnostics` (KLDPO; over the
    global micro-batch for ``running``, over the step for ``accumulated``) or ``normalizer``
    (S), ``penalty`` and ``grad_rms`` (WDPO). Data ``weights`` are not supported."""
    if weights is not None:
        raise InputError(
            "rows with a 'weight' column cannot be trained with robust_normalizer "
            "'accumulated' or 'running'; use robust_normalizer='batch'"
        )
    variant = _variant(method, variant)
    m = TL.dpo_margins(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    per = TL.dpo_pair_losses(m)
    stats = TL.margin_stats(m)
    running = isinstance(normalizer, RunningStatistic)
    if method == "kldpo":
        if running:
            value = normalizer.update(TL.kl_statistic(per, tau=tau, variant=variant))
        else:
            value = normalizer.value
        w = TL.kl_weights_at(per, tau=tau, variant=variant, clip=clip, statistic=value)
        loss = (w * per).mean()
        if running:
            w_glob = TL.gather_pairs(w, group)
            diag = TL.kl_weight_diagnostics(w_glob, statistic=value, variant=variant, clip=clip)
            stats.update(diag)
        else:
            stats.update(normalizer.stats)
        return TL.LossOutput(loss, per, m, weights=w.detach(), stats=stats)
    sq = TL.input_grad_sq_norms(per, inputs)
    s = normalizer.update(sq.detach().mean()) if running else normalizer.value
    loss = running_wdpo_objective(per, sq, rho0=rho0, mean_sq=s)
    s = s.detach()
    stats.update(normalizer=s, penalty=rho0 * s.sqrt(), grad_rms=sq.detach().mean().sqrt())
    return TL.LossOutput(loss, per, m, penalty=sq, stats=stats)
