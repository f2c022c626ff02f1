"""The paper's scalable algorithms on log-linear data (docs/theory.md#algorithm-1-wdpo,
docs/theory.md#algorithm-2-kldpo).

Log-linear pairs have the oriented scaled margin ``m_i = sy_i * beta * (theta - theta_ref) . x_i``
and the DPO per-pair loss ``l_i = softplus(-m_i)`` (nats). The robust algorithms only change
how per-pair losses are aggregated, and they do it with the same torch functions that serve
language models (:mod:`rdpo_theory.torch.losses`, one implementation):

* :func:`wdpo` -- Algorithm 1, the WDPO gradient regulariser. ``variant="sqrt-mean"``:
  ``sum_i p_i l_i + rho0 * sqrt(sum_i p_i ||grad_x l_i||^2)``; ``variant="per-pair"`` (the
  paper's LLM code): ``sum_i p_i (l_i + rho0 ||grad_x l_i||^2)``. The penalty's gradient needs
  a double backward (``penalty="autograd"``); for log-linear data the closed form
  ``||grad_x l_i|| = beta * sigmoid(-m_i) * ||theta - theta_ref||`` gives the same objective
  with one backward (``penalty="closed-form"``, tested equal).
* :func:`kldpo` -- Algorithm 2, KL reweighting. ``variant="normalized"``:
  ``q_i ∝ p_i exp(l_i / tau)`` held constant, loss ``sum_i q_i l_i``, whose gradient is that of
  ``tau * log sum_i p_i exp(l_i / tau)``: the KL dual at the fixed multiplier ``lam = tau``.
  ``variant="clipped"`` (the paper's code): ``w_i = min(exp((l_i - mean l) / tau), 10)``.
* :func:`dpo` -- plain DPO with the same trainer (the baseline of every comparison).

All run through :func:`fit`: full-batch or minibatch training in float64 with Adam or SGD, a
step-size schedule, a stopping rule on the gradient norm and a seeded sampler. Data weights p
(e.g. an empirical law aggregated over a finite world's Z) are honoured: full-batch objectives
are weighted and minibatches draw rows with probability ``p_i``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import _validate as V
from . import options as O
from .data import PreferenceData, as_data
from .errors import InputError, SolverError
from .losses import kl_divergence
from .rng import make_rng

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "linear", "inverse-sqrt")
PENALTIES = ("autograd", "closed-form")


@dataclass
class ApproxResult:
    """Outcome of a training run.

    Attributes
    ----------
    theta : ndarray, shape (d,)
        Final parameter: the last iterate in full batch; with minibatches the Polyak-Ruppert
        tail average of the iterates over the last ``FitOptions.average_tail`` fraction of
        the steps (default the last half; ``extras["average_from"]`` is the first averaged
        step).
    trace : pandas.DataFrame
        One row per recorded step: ``step``, ``lr``, ``loss`` (the training objective on the
        step's batch, nats), ``grad_norm`` (its gradient norm in theta), ``full_grad_norm``
        (full-batch gradient norm; NaN at steps where it was not computed), ``theta_norm``,
        and ``theta0..theta{d-1}`` when ``record_theta`` was set.
    converged : bool
        True when the stopping rule (full-batch gradient norm <= gtol) fired.
    steps : int
        Optimiser steps taken.
    method : str
        ``"dpo"``, ``"wdpo"``, ``"kldpo"`` or ``"custom"``.
    variant : str or None
    hyper : dict
        The method's hyperparameters (``rho0``, ``tau``, ``beta``...).
    implied_rho : float or None
        KLDPO only: ``KL(q || p)`` (nats) of the final full-batch worst-case weights q from the
        data weights p, i.e. the radius whose exact KLDPO optimum the normalized variant targets.
    weights : ndarray or None
        KLDPO only: the final full-batch distribution q (n,), summing to 1.
    extras : dict
        ``seconds`` (wall time of the training loop), ``cpu_seconds`` (CPU time of the
        calling thread in it: unaffected by time-slicing on a busy machine),
        ``final_grad_norm``, ``optimizer``, ``schedule``, ``batch_size``, ...
    """

    theta: np.ndarray
    trace: pd.DataFrame
    converged: bool
    steps: int
    method: str = "custom"
    variant: str | None = None
    hyper: dict[str, Any] = field(default_factory=dict)
    implied_rho: float | None = None
    weights: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    theta_last: np.ndarray | None = None
    """The last iterate (d,) (equal to ``theta`` in full batch)."""

    # the shared result protocol (rdpo_theory.exact.result.Result): no certified value or gap
    value = None
    optimality_gap = None

    @property
    def status(self) -> str:
        """``"converged"`` when the stopping rule fired, else ``"max_steps"``."""
        return "converged" if self.converged else "max_steps"

    @property
    def info(self) -> dict[str, Any]:
        """The training details (:attr:`extras`), under the shared protocol's name."""
        return self.extras


# ---------------------------------------------------------------------------- helpers
def _data(X, y, weights) -> PreferenceData:
    if isinstance(X, PreferenceData) and y is None and weights is None:
        return X
    return as_data(X, y, weights)


def _schedule_factor(schedule: str, t: int, T: int) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(t, T) / T))
    if schedule == "linear":
        return max(0.0, 1.0 - t / T)
    return 1.0 / math.sqrt(1.0 + t)  # inverse-sqrt


def _is_uniform(p: np.ndarray) -> bool:
    return bool(np.allclose(p, 1.0 / p.shape[0], rtol=0, atol=1e-15))


def _uniform_batches(data: PreferenceData, options: FitOptions) -> bool:
    """True when every batch :func:`fit` forms has uniform weights: minibatches (rows drawn
    with probability p, each weighted 1/B) or uniform data weights. Objectives then use
    ``mean_i`` in place of the identical ``sum_i w_i`` (one tensor operation fewer)."""
    return options.batch_size is not None or _is_uniform(data.weights)


def batch_sampler(p: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Yield index batches: reshuffled epochs without replacement for uniform p, otherwise
    i.i.d. draws with probability p (inverse-CDF sampling)."""
    n = p.shape[0]
    if _is_uniform(p):
        while True:
            perm = rng.permutation(n)
            for lo in range(0, n - batch_size + 1, batch_size):
                yield perm[lo : lo + batch_size]
            if n < batch_size:
                yield rng.integers(0, n, size=batch_size)
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    while True:
        yield np.minimum(np.searchsorted(cdf, rng.random(batch_size), side="right"), n - 1)


class _SGD:
    """SGD with heavy-ball momentum on one tensor, as ``torch.optim.SGD`` (``dampening=0``,
    no Nesterov): ``b = mu b + g; theta -= lr b``. Written by hand because the first step of a
    ``torch.optim`` optimiser imports ``torch._dynamo`` (about 6-10 s, once per process) for a
    d-dimensional parameter that needs two tensor operations."""

    def __init__(self, theta, lr: float, momentum: float = 0.0):
        self.theta, self.lr, self.momentum, self.buf = theta, lr, momentum, None

    def step(self):
        import torch

        with torch.no_grad():
            g = self.theta.grad
            if self.momentum:
                self.buf = g.clone() if self.buf is None else self.buf.mul_(self.momentum).add_(g)
                g = self.buf
            self.theta.sub_(self.lr * g)


class _Adam(_SGD):
    """Adam on one tensor, the update of ``torch.optim.Adam`` (betas 0.9, 0.999, eps 1e-8, no
    weight decay; tested equal to it): ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``theta -= lr m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps)``."""

    def __init__(self, theta, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        import torch

        super().__init__(theta, lr)
        self.b1, self.b2, self.eps, self.t = betas[0], betas[1], eps, 0
        self.m, self.v = torch.zeros_like(theta), torch.zeros_like(theta)

    def step(self):
        import torch

        with torch.no_grad():
            g = self.theta.grad
            self.t += 1
            self.m.mul_(self.b1).add_(g, alpha=1 - self.b1)
            self.v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = (self.v / (1 - self.b2**self.t)).sqrt_().add_(self.eps)
            self.theta.addcdiv_(self.m, denom, value=-self.lr / (1 - self.b1**self.t))


# ---------------------------------------------------------------------------- options
def _help(text: str, default, **kw):
    return field(default=default, metadata={"help": text}, **kw)


@dataclass
class FitOptions:
    """Training options of :func:`fit` and of every front end (:func:`dpo`, :func:`kldpo`,
    :func:`wdpo`, :mod:`rdpo_theory.approx_reweight`).

    The front ends take these fields as keyword arguments (``learning_rate=`` or its alias
    ``lr=``) or a whole ``options=FitOptions(...)``; unknown keywords are refused with the
    list of valid ones. Names follow :class:`rdpo_theory.torch.train.TrainConfig`
    (``learning_rate``, ``schedule``, ``batch_size``, ``max_steps``, ``seed``). Each field's
    help text is in ``dataclasses.fields(FitOptions)[i].metadata["help"]``; values are checked
    at construction (:class:`~rdpo_theory.errors.InputError` naming the field).

    Attributes
    ----------
    optimizer : {"adam", "sgd"}
    learning_rate : float > 0
        Peak step size.
    momentum : float in [0, 1)
        Heavy-ball momentum of ``sgd``.
    schedule : {"constant", "cosine", "linear", "inverse-sqrt"}
        Step size ``learning_rate * f(t)``; cosine and linear decay to 0 at ``max_steps``
        (``constant`` and ``linear`` as in ``TrainConfig``, without warmup).
    batch_size : int or None
        Minibatch size; ``None`` trains full batch.
    max_steps : int
        Optimiser steps at most.
    gtol : float >= 0
        Stop when the full-batch gradient norm of the objective in theta is <= gtol; checked
        every step in full batch, every ``check_every`` steps with minibatches (``gtol=0``
        disables the minibatch check: pure training, e.g. for timing).
    check_every : int or None
        Minibatch steps between full-batch checks (default: one pass over the n rows).
    seed : int or SeedSequence
        Minibatch sampler seed.
    theta0 : array_like (d,) or None
        Start (default ``theta_ref``, the reference policy).
    record_every : int
        Keep every ``record_every``-th step in the trace (plus the last).
    record_theta : bool
        Add the iterates ``theta0..theta{d-1}`` to the trace.
    progress : bool
        Show a tqdm bar.
    average_tail : float in [0, 1)
        Minibatch fits return as ``theta`` the average of the iterates of the last
        ``average_tail`` fraction of the steps (Polyak-Ruppert tail averaging; 0.5 averages
        the second half) and the last iterate as ``theta_last``; 0 returns the last iterate.
    """

    optimizer: str = _help("Optimiser: 'adam' or 'sgd'.", "adam")
    learning_rate: float = _help("Peak step size (> 0).", 0.05)
    momentum: float = _help("Heavy-ball momentum of 'sgd', in [0, 1).", 0.0)
    schedule: str = _help(
        "Step-size schedule: 'constant', 'cosine', 'linear' or 'inverse-sqrt'.", "constant"
    )
    batch_size: int | None = _help("Minibatch size; None trains full batch.", None)
    max_steps: int = _help("Optimiser steps at most.", 2000)
    gtol: float = _help("Stop when the full-batch gradient norm is <= gtol (>= 0).", 1e-6)
    check_every: int | None = _help(
        "Minibatch steps between full-batch checks (default: one pass over the rows).", None
    )
    seed: Any = _help("Minibatch sampler seed (int or numpy SeedSequence).", 0)
    theta0: Any = _help("Start parameter (d,); default theta_ref.", None)
    record_every: int = _help("Keep every record_every-th step in the trace.", 1)
    record_theta: bool = _help("Add the iterates theta0..theta{d-1} to the trace.", False)
    progress: bool = _help("Show a tqdm progress bar.", False)
    average_tail: float = _help(
        "Minibatch fits: average the iterates of this last fraction of the steps, in [0, 1).",
        0.5,
    )

    #: Accepted spellings of field names (alias -> field).
    ALIASES = {"lr": "learning_rate"}

    def __post_init__(self):
        O.check("optimizer", self.optimizer, [O.Options(OPTIMIZERS)], owner="FitOptions")
        O.check("schedule", self.schedule, [O.Options(SCHEDULES)], owner="FitOptions")
        O.check("learning_rate", self.learning_rate, O.POSITIVE, owner="FitOptions")
        O.check(
            "momentum", self.momentum, [O.Interval(float, 0, 1, closed="left")], owner="FitOptions"
        )
        for name in ("max_steps", "record_every"):
            O.check(name, getattr(self, name), O.POSITIVE_INT, owner="FitOptions")
        for name in ("batch_size", "check_every"):
            O.check(name, getattr(self, name), [*O.POSITIVE_INT, O.NONE], owner="FitOptions")
        O.check("gtol", self.gtol, O.NONNEGATIVE, owner="FitOptions")
        O.check(
            "average_tail",
            self.average_tail,
            [O.Interval(float, 0, 1, closed="left")],
            owner="FitOptions",
        )
        self.learning_rate, self.momentum = float(self.learning_rate), float(self.momentum)
        self.gtol, self.average_tail = float(self.gtol), float(self.average_tail)
        for name in ("max_steps", "record_every", "batch_size", "check_every"):
            if getattr(self, name) is not None:
                setattr(self, name, int(getattr(self, name)))

    @classmethod
    def names(cls) -> list[str]:
        """Field names and their aliases: every keyword a front end accepts as an option."""
        return [f.name for f in dataclasses.fields(cls)] + list(cls.ALIASES)

    @classmethod
    def build(cls, options=None, *, where: str = "fit", **kwargs) -> FitOptions:
        """``options`` (a :class:`FitOptions`, or None for the defaults) with the fields in
        ``kwargs`` replaced. ``lr`` is an alias of ``learning_rate``; unknown keywords are
        refused with an :class:`InputError` listing the valid ones (``where`` names the
        caller)."""
        V.unknown_keywords(kwargs, cls.names(), where)
        for alias, name in cls.ALIASES.items():
            if alias in kwargs:
                if name in kwargs:
                    raise InputError(f"{where} got both {alias!r} and {name!r}; pass {name!r}")
                kwargs[name] = kwargs.pop(alias)
        if options is None:
            return cls(**kwargs)
        if not isinstance(options, cls):
            raise InputError(f"options must be a FitOptions, got {type(options).__name__}")
        return dataclasses.replace(options, **kwargs) if kwargs else options


# ---------------------------------------------------------------------------- the trainer
@O.declare({"beta": O.POSITIVE, "objective": [O.Callable_()]})
def fit(
    X,
    y=None,
    *,
    beta: float,
    objective: Callable,
    weights=None,
    theta_ref=None,
    options: FitOptions | None = None,
    input_grad: bool = True,
    pass_delta: bool = False,
    pass_training: bool = False,
    method: str = "custom",
    variant: str | None = None,
    hyper: dict | None = None,
    sampler: Callable | None = None,
    **option_kwargs,
) -> ApproxResult:
    """Train a log-linear policy on ``objective(per_pair_losses, x, batch_weights)``.

    Each step forms the batch's margins ``m_i = sy_i beta (theta - theta_ref) . x_i`` and
    per-pair DPO losses ``l_i = softplus(-m_i)`` (torch :func:`~rdpo_theory.torch.losses.
    dpo_pair_losses`), calls ``objective`` and takes an optimiser step on its gradient.

    Parameters
    ----------
    X : array_like (n, d) or PreferenceData
        Pair feature differences; with a PreferenceData, ``y`` and ``weights`` come with it.
    y : array_like (n,), labels in {0, 1}
    beta : float > 0
    objective : callable
        ``objective(per_pair (B,), x (B, d), batch_weights (B,)) -> scalar tensor``. ``x``
        requires grad when ``input_grad`` (WDPO's penalty differentiates through it);
        ``batch_weights`` sum to 1: the data weights p on the full batch, ``1/B`` on a
        minibatch drawn with probability p. With ``pass_delta`` it is also called with the
        keyword ``delta = theta - theta_ref`` (d,) (closed-form penalties). With
        ``pass_training`` it is also called with ``training=True`` on the batches of
        optimiser steps and ``training=False`` on full-batch checks, so stateful objectives
        (running normalisers) update their statistics on training batches only.
    weights : array_like (n,), optional
        Data weights p (default uniform).
    theta_ref : array_like (d,), optional (default 0)
    options : FitOptions, optional
        Training options (optimiser, learning rate, schedule, batch size, stopping rule,
        seed, start, trace); default ``FitOptions()``.
    input_grad, pass_delta, pass_training : bool
        What ``objective`` needs: ``x`` with gradient; the ``delta`` and ``training``
        keywords.
    method, variant, hyper
        Labels of the result.
    sampler : callable, optional
        ``sampler(p, batch_size, rng)`` -> an iterator of index arrays (the minibatches, of
        any length); default :func:`batch_sampler` (the multilevel estimator of
        :func:`kldpo` draws batches of random size).
    **option_kwargs
        Fields of :class:`FitOptions` overriding ``options`` (``lr`` is an alias of
        ``learning_rate``); unknown names are refused.

    Returns
    -------
    ApproxResult

    Raises
    ------
    InputError
        Malformed arguments or unknown option names.
    SolverError
        The objective became NaN or infinite (status ``"diverged"``): lower the learning rate.
    """
    opts = FitOptions.build(options, where="fit", **option_kwargs)
    optimizer, lr, momentum, schedule = (
        opts.optimizer,
        opts.learning_rate,
        opts.momentum,
        opts.schedule,
    )
    batch_size, max_steps, gtol, check_every = (
        opts.batch_size,
        opts.max_steps,
        opts.gtol,
        opts.check_every,
    )
    seed, theta0 = opts.seed, opts.theta0
    record_every, record_theta, progress = opts.record_every, opts.record_theta, opts.progress
    import torch

    from .torch.losses import dpo_pair_losses

    data = _data(X, y, weights)
    beta = float(beta)  # declared: checked once, before the body
    n, d = data.n, data.d
    if check_every is None:
        check_every = 1 if batch_size is None else max(1, math.ceil(n / batch_size))
    tref_np = V.as_theta(theta_ref, d)
    th0 = tref_np.copy() if theta0 is None else V.as_vector(theta0, "theta0", length=d)

    dt = torch.float64
    Xt = torch.tensor(data.X, dtype=dt)
    syt = torch.tensor(data.signed_labels, dtype=dt)
    sybeta = syt * beta  # the margin is (sy_i * beta) * (x_i . delta), as written below
    pt = torch.tensor(data.weights, dtype=dt)
    tref = torch.tensor(tref_np, dtype=dt)
    theta = torch.tensor(th0, dtype=dt, requires_grad=True)
    # full-batch input leaf for penalties in x; its own gradient is never formed (the update
    # differentiates in theta only)
    Xg = Xt.detach().requires_grad_(True) if input_grad else Xt
    opt = _Adam(theta, lr) if optimizer == "adam" else _SGD(theta, lr, momentum)

    w_batch = None if batch_size is None else torch.full((batch_size,), 1.0 / batch_size, dtype=dt)

    def evaluate(idx):
        if idx is None:
            xb, syb, wb = (Xg if input_grad else Xt), sybeta, pt
        else:
            it = torch.from_numpy(idx)
            # index_select gathers rows ~4x faster than advanced indexing; a fresh tensor, so
            # safe to mark as requiring grad
            xb, syb = Xt.index_select(0, it), sybeta.index_select(0, it)
            wb = (
                w_batch
                if len(idx) == batch_size
                else torch.full((len(idx),), 1.0 / len(idx), dtype=dt)
            )
            if input_grad:
                xb.requires_grad_(True)
        delta = theta - tref
        per = dpo_pair_losses(syb * (xb @ delta))
        kw = {"delta": delta} if pass_delta else {}
        if pass_training:
            kw["training"] = idx is not None or sampler is None
        loss = objective(per, xb, wb, **kw)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise InputError("objective must return a scalar tensor")
        return loss

    def full_grad_norm() -> float:
        (g,) = torch.autograd.grad(evaluate(None), theta)
        return float(g.norm())

    draw = batch_sampler if sampler is None else sampler
    sampler = None if batch_size is None else draw(data.weights, batch_size, make_rng(seed))
    rows: dict[str, list] = {k: [] for k in ("step", "lr", "loss", "grad_norm", "full_grad_norm")}
    rows["theta_norm"] = []
    thetas: list[np.ndarray] = []
    iterates: list[np.ndarray] = []  # minibatch iterates, for the tail average
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, desc=f"{method}{'-' + variant if variant else ''}")
    t0, c0 = time.perf_counter(), time.thread_time()
    converged = False
    step = 0
    fg = float("nan")
    while True:
        factor = _schedule_factor(schedule, step, max_steps)
        opt.lr = lr * factor
        loss = evaluate(None if sampler is None else next(sampler))
        (theta.grad,) = torch.autograd.grad(loss, theta)  # only d/dtheta, never d/dx
        gnorm = float(theta.grad.norm())
        lval = float(loss.detach())
        if not (math.isfinite(lval) and math.isfinite(gnorm)):
            raise SolverError(
                f"{method} training diverged at step {step} (objective {lval}).",
                status="diverged",
                hint="lower learning_rate or use schedule='cosine'.",
            )
        if sampler is None:
            fg = gnorm
        elif gtol > 0 and (step % check_every == 0 or step == max_steps):
            fg = full_grad_norm()
        else:
            fg = float("nan")
        if step % record_every == 0 or step == max_steps or (fg <= gtol):
            rows["step"].append(step)
            rows["lr"].append(lr * factor)
            rows["loss"].append(lval)
            rows["grad_norm"].append(gnorm)
            rows["full_grad_norm"].append(fg)
            rows["theta_norm"].append(float(theta.detach().norm()))
            if record_theta:
                thetas.append(theta.detach().numpy().copy())
        if fg <= gtol:
            converged = True
            break
        if step >= max_steps:
            break
        opt.step()
        step += 1
        if sampler is not None and opts.average_tail > 0:
            iterates.append(theta.detach().numpy().copy())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds, cpu_seconds = time.perf_counter() - t0, time.thread_time() - c0
    final_fg = fg if math.isfinite(fg) else full_grad_norm()
    theta_last = theta.detach().numpy().copy()
    theta_out, average_from = theta_last, step
    if iterates:  # iterates[k] is the iterate after step k + 1
        average_from = max(1, step - int(opts.average_tail * step))
        theta_out = np.mean(np.asarray(iterates[average_from - 1 :]), axis=0)
    trace = pd.DataFrame(rows)
    if record_theta:
        T = np.array(thetas)
        for j in range(d):
            trace[f"theta{j}"] = T[:, j]
    return ApproxResult(
        theta=theta_out,
        theta_last=theta_last,
        trace=trace,
        converged=converged,
        steps=step,
        method=method,
        variant=variant,
        hyper=dict(hyper or {}, beta=beta),
        extras={
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "final_grad_norm": final_fg,
            "optimizer": optimizer,
            "schedule": schedule,
            "learning_rate": lr,
            "batch_size": batch_size,
            "average_from": average_from,
            "n": n,
        },
    )


#: Normalisers of :func:`kldpo` and :func:`wdpo` (the vocabulary of
#: :data:`rdpo_theory.minibatch.NORMALIZERS`; ``"micro-batch"`` is a deprecated alias of
#: ``"batch"``, and ``"accumulated"`` equals ``"batch"`` here: one micro-batch per step).
APPROX_NORMALIZERS = ("batch", "accumulated", "running", "mlmc")


def _normalizer(normalizer: str, variant: str, method: str) -> str:
    """The normaliser in the one vocabulary (alias translated with a DeprecationWarning),
    refused where it does not apply: ``running`` needs KLDPO ``normalized`` or WDPO
    ``sqrt-mean``, ``mlmc`` KLDPO ``normalized``."""
    from .minibatch import normalizer_name

    nz = normalizer_name(normalizer, owner=method, allowed=APPROX_NORMALIZERS)
    if nz == "accumulated":
        nz = "batch"
    if nz == "running" and variant not in ("normalized", "sqrt-mean"):
        raise InputError(
            f"normalizer='running' applies to variant 'normalized' (KLDPO) or 'sqrt-mean' "
            f"(WDPO), got variant {variant!r}"
        )
    if nz == "mlmc" and not (
        method == "chi2dpo" or (method == "kldpo" and variant == "normalized")
    ):
        raise InputError(
            f"normalizer='mlmc' applies to KLDPO variant 'normalized' and to chi2dpo, got "
            f"{method} {variant!r}"
        )
    return nz


def mlmc_sampler(levels: int):
    """``sampler(p, B, rng)`` of :func:`fit` for the multilevel estimator: each batch is
    ``2^(J + 1) B`` i.i.d. draws from p, with ``P(J = j) = 2^-j / sum_{k <= levels} 2^-k``
    (docs/theory.md#minibatch-objective)."""
    pj = 0.5 ** np.arange(levels + 1)
    pj /= pj.sum()

    def sampler(p, batch_size, rng):
        cdf = np.cumsum(p)
        cdf /= cdf[-1]
        while True:
            j = int(rng.choice(levels + 1, p=pj))
            size = batch_size * 2 ** (j + 1)
            yield np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(p) - 1)

    return sampler


def mlmc_objective(per, batch_loss: Callable, batch_size: int, levels: int):
    """The multilevel Monte Carlo surrogate of one draw (Levy, Carmon, Duchi, Sidford 2020,
    after Blanchet and Glynn): ``per`` holds ``2 m = 2^(J + 1) B`` per-pair losses and

    ``L = L_B(per[:B]) + (L_2m(per) - (L_m(per[:m]) + L_m(per[m:])) / 2) / P(J)``

    whose gradient has expectation ``E grad L_B + sum_j (E grad L_{2^(j+1) B} -
    E grad L_{2^j B}) = E grad L_{2^(levels+1) B}`` (docs/theory.md#minibatch-objective)."""
    m = per.shape[0] // 2
    j = int(round(math.log2(m / batch_size)))
    pj = 0.5**j / (2.0 - 0.5**levels)
    corr = batch_loss(per) - 0.5 * (batch_loss(per[:m]) + batch_loss(per[m:]))
    return batch_loss(per[:batch_size]) + corr / pj


# ---------------------------------------------------------------------------- front ends
def dpo(
    X,
    y=None,
    *,
    beta: float,
    weights=None,
    theta_ref=None,
    options: FitOptions | None = None,
    **option_kwargs,
) -> ApproxResult:
    """Plain DPO, ``sum_i p_i l_i``, with the same trainer as the robust variants.

    Parameters
    ----------
    X, y, weights, theta_ref, beta
        As in :func:`fit`.
    options : FitOptions, optional
    **option_kwargs
        Fields of :class:`FitOptions` (``learning_rate`` or ``lr``, ``optimizer``,
        ``schedule``, ``batch_size``, ``max_steps``, ``gtol``, ``seed``, ``theta0``, ...);
        unknown names are refused.
    """
    data = _data(X, y, weights)
    opts = FitOptions.build(options, where="approx.dpo", **option_kwargs)
    if _uniform_batches(data, opts):

        def objective(per, x, w):
            return per.mean()

    else:

        def objective(per, x, w):
            return (w * per).sum()

    return fit(
        data,
        beta=beta,
        objective=objective,
        theta_ref=theta_ref,
        options=opts,
        input_grad=False,
        method="dpo",
    )


@O.declare(
    {
        "rho0": O.NONNEGATIVE,
        "variant": [O.Options(("sqrt-mean", "per-pair"))],
        "penalty": [O.Options(PENALTIES)],
        "normalizer": [O.Options(APPROX_NORMALIZERS, deprecated={"micro-batch": "batch"})],
        "decay": [O.Interval(float, 0, 1, closed="right")],
    }
)
def wdpo(
    X,
    y=None,
    *,
    rho0: float,
    beta: float,
    variant: str = "sqrt-mean",
    penalty: str = "autograd",
    normalizer: str = "batch",
    decay: float = 0.01,
    weights=None,
    theta_ref=None,
    options: FitOptions | None = None,
    **option_kwargs,
) -> ApproxResult:
    """WDPO by the gradient regulariser (Algorithm 1 and the paper's per-pair code;
    docs/theory.md#algorithm-1-wdpo).

    ``sqrt-mean``: ``L = sum_i p_i l_i + rho0 sqrt(sum_i p_i ||grad_x l_i||^2)``;
    ``per-pair``: ``L = sum_i p_i (l_i + rho0 ||grad_x l_i||^2)``, with the batch weights in
    place of p on minibatches (:func:`rdpo_theory.torch.losses.wdpo_objective`).

    Parameters
    ----------
    X, y, weights, theta_ref, beta
        As in :func:`fit`.
    rho0 : float >= 0
        Penalty strength (for ``sqrt-mean`` the first-order W_2 radius).
    variant : {"sqrt-mean", "per-pair"}
    penalty : {"autograd", "closed-form"}
        ``autograd`` differentiates ``l_i`` in x (double backward, what language models need);
        ``closed-form`` uses ``||grad_x l_i||^2 = beta^2 sigmoid(-m_i)^2 ||theta - theta_ref||^2``
        (log-linear only; identical objective, one backward).
    normalizer : {"batch", "running"}
        ``sqrt-mean`` only. ``batch``: the minibatch's own ``mean_b ||grad_x l_i||^2`` inside
        the square root (Algorithm 1 as written; its fixed point moves with the batch size).
        ``running``: an exponential moving average ``S_t`` of it over training batches
        (:mod:`rdpo_theory.torch.normalizers`), whose expected gradient is the full-batch one
        (docs/theory.md#minibatch-fixed-point). Full batch, both are the same objective.
    decay : float in (0, 1]
        EMA weight ``a`` of ``normalizer="running"`` (memory about ``1 / a`` steps).
    options, **option_kwargs
        Training options, as in :func:`dpo`.
    """
    import torch

    from .torch.losses import wdpo_objective
    from .torch.normalizers import RunningStatistic, running_wdpo_objective

    # declared: rho0, variant, penalty, decay and the normaliser are checked before the body
    rho0, decay = float(rho0), float(decay)
    normalizer = _normalizer(normalizer, variant, "wdpo")
    # beta is checked once, by fit's declaration; the closures below only run inside fit
    try:
        beta_sq = float(beta) ** 2
    except (TypeError, ValueError):
        beta_sq = math.nan  # fit refuses such a beta before any step
    data = _data(X, y, weights)
    opts = FitOptions.build(options, where="approx.wdpo", **option_kwargs)
    uniform = _uniform_batches(data, opts)
    running = normalizer == "running" and opts.batch_size is not None
    stat = RunningStatistic(decay) if running else None

    if running:
        from .torch.losses import input_grad_sq_norms

        def objective(per, x, w, *, training, delta=None):
            if penalty == "autograd":
                sq = input_grad_sq_norms(per, x)
            else:
                sq = torch.expm1(-per).square() * (beta_sq * (delta @ delta))
            if not training:  # full-data check: the exact sqrt-mean objective
                return wdpo_objective(
                    per, None, rho0=rho0, variant=variant, weights=w, sq_norms=sq, check=False
                )[0]
            s = stat.update(sq.detach().mean())
            return running_wdpo_objective(per, sq, rho0=rho0, mean_sq=s)

    # torch.losses.wdpo_objective with its per-step argument checks hoisted out of the loop
    elif penalty == "autograd":

        def objective(per, x, w):
            wts = None if uniform else w
            return wdpo_objective(per, x, rho0=rho0, variant=variant, weights=wts, check=False)[0]

    else:

        def objective(per, x, w, *, delta):
            # ||grad_x l_i||^2 = beta^2 sigmoid(-m_i)^2 ||delta||^2, and
            # sigmoid(-m) = 1 - exp(-l) = -expm1(-l) since l = -log sigmoid(m)
            sq = torch.expm1(-per).square() * (beta_sq * (delta @ delta))
            wts = None if uniform else w
            return wdpo_objective(
                per, None, rho0=rho0, variant=variant, weights=wts, sq_norms=sq, check=False
            )[0]

    return fit(
        data,
        beta=beta,
        objective=objective,
        theta_ref=theta_ref,
        options=opts,
        input_grad=penalty == "autograd",
        pass_delta=penalty == "closed-form",
        pass_training=running,
        method="wdpo",
        variant=variant,
        hyper={"rho0": rho0, "penalty": penalty, "normalizer": normalizer, "decay": decay},
    )


@O.declare(
    {
        "tau": O.POSITIVE,
        "variant": [O.Options(("normalized", "clipped"))],
        "clip": O.POSITIVE,
        "normalizer": [O.Options(APPROX_NORMALIZERS, deprecated={"micro-batch": "batch"})],
        "decay": [O.Interval(float, 0, 1, closed="right")],
        "levels": O.NONNEGATIVE_INT,
    }
)
def kldpo(
    X,
    y=None,
    *,
    tau: float,
    beta: float,
    variant: str = "normalized",
    clip: float = 10.0,
    normalizer: str = "batch",
    decay: float = 0.01,
    levels: int = 6,
    weights=None,
    theta_ref=None,
    options: FitOptions | None = None,
    **option_kwargs,
) -> ApproxResult:
    """KLDPO by reweighting (Algorithm 2 and the paper's clipped code;
    docs/theory.md#algorithm-2-kldpo).

    ``normalized``: weights ``q_i ∝ p_i exp(l_i / tau)`` over the batch, held constant; loss
    ``sum_i q_i l_i`` (gradient of ``tau log sum_i p_i exp(l_i / tau)``). ``clipped``:
    ``w_i = min(exp((l_i - sum_j p_j l_j) / tau), clip)``, loss ``sum_i p_i w_i l_i``. Both are
    :func:`rdpo_theory.torch.losses.kldpo_objective` with ``weights`` = batch weights.

    Parameters
    ----------
    tau : float > 0
        Temperature (the fixed KL multiplier ``lam``).
    variant : {"normalized", "clipped"}
    clip : float > 0
        Weight cap of ``clipped``.
    normalizer : {"batch", "running"}
        ``normalized`` only. ``batch``: the minibatch's own partition sum
        ``mean_b exp(l_i / tau)`` (Algorithm 2 as written; its fixed point moves with the batch
        size). ``running``: an exponential moving average ``Z_t`` of it over training batches
        (kept in log space; :mod:`rdpo_theory.torch.normalizers`); weights
        ``exp(l_i / tau) / Z_t``, whose expected gradient is the full-batch one, so the fixed
        point is exact KLDPO at ``tau = lam*`` for every batch size
        (docs/theory.md#minibatch-fixed-point). ``mlmc``: the multilevel Monte Carlo
        estimator of Levy, Carmon, Duchi and Sidford (2020) (:func:`mlmc_sampler`,
        docs/theory.md#minibatch-objective): each step draws a level ``J`` with probability
        ``2^-J`` (normalised over ``0..levels``) and ``2 m = 2^(J+1) B`` i.i.d. pairs, and
        uses ``grad G_B(first B) + (grad G_2m(all) - (grad G_m(half 1) + grad G_m(half 2)) / 2)
        / P(J)``, whose expectation is the batch gradient at ``B 2^(levels+1)`` exactly (the
        fixed point of the batch normaliser at that group size), at an expected cost of about
        ``B (levels + 2)`` pairs per step. ``accumulated`` is ``batch`` here (one micro-batch
        per step); ``micro-batch`` is its deprecated alias. Full batch, all are the same
        objective.
    decay : float in (0, 1]
        EMA weight ``a`` of ``normalizer="running"`` (memory about ``1 / a`` steps).
    levels : int >= 0
        Deepest level of ``normalizer="mlmc"``.
    X, y, weights, theta_ref, beta
        As in :func:`fit`.
    options, **option_kwargs
        Training options, as in :func:`dpo`.

    Returns
    -------
    ApproxResult
        With ``implied_rho = KL(q || p)`` (nats) and ``weights = q`` (n,), the normalised final
        full-batch weights (``q ∝ p_i w_i``).
    """

    from .torch.losses import kldpo_objective
    from .torch.normalizers import (
        RunningStatistic,
        batch_log_partition,
        running_kldpo_objective,
    )

    # declared: tau, clip, decay, levels and the normaliser are checked once, before the body
    tau, clip, decay = float(tau), float(clip), float(decay)
    normalizer = _normalizer(normalizer, variant, "kldpo")
    data = _data(X, y, weights)
    opts = FitOptions.build(options, where="approx.kldpo", **option_kwargs)
    uniform = _uniform_batches(data, opts)
    running = normalizer == "running" and opts.batch_size is not None
    mlmc = normalizer == "mlmc" and opts.batch_size is not None
    stat = RunningStatistic(decay, log_space=True) if running else None
    sampler = mlmc_sampler(levels) if mlmc else None

    def batch_loss(per):
        return kldpo_objective(per, tau=tau, variant="normalized", check=False)[0]

    def objective(per, x, w, training=False):
        if training and mlmc:
            return mlmc_objective(per, batch_loss, opts.batch_size, levels)
        if training:  # running normaliser on a training minibatch
            log_z = stat.update(batch_log_partition(per, tau))
            return running_kldpo_objective(per, tau=tau, log_partition=log_z)[0]
        wts = None if uniform else w
        return kldpo_objective(per, tau=tau, variant=variant, clip=clip, weights=wts, check=False)[
            0
        ]

    res = fit(
        data,
        beta=beta,
        objective=objective,
        theta_ref=theta_ref,
        options=opts,
        input_grad=False,
        pass_training=running or mlmc,
        method="kldpo",
        variant=variant,
        hyper={"tau": tau, "clip": clip, "normalizer": normalizer, "decay": decay},
        sampler=sampler,
    )
    res.weights, res.implied_rho = kl_implied(
        res.theta, data, tau=tau, beta=beta, variant=variant, clip=clip, theta_ref=theta_ref
    )
    return res


#: Normalisers of :func:`chi2dpo`: the batch's own best response, or the multilevel estimator.
CHI2_NORMALIZERS = ("batch", "accumulated", "mlmc")


@O.declare(
    {
        "rho": O.NONNEGATIVE,
        "normalizer": [O.Options(CHI2_NORMALIZERS, deprecated={"micro-batch": "batch"})],
        "levels": O.NONNEGATIVE_INT,
    }
)
def chi2dpo(
    X,
    y=None,
    *,
    rho: float,
    beta: float,
    normalizer: str = "batch",
    levels: int = 6,
    weights=None,
    theta_ref=None,
    options: FitOptions | None = None,
    **option_kwargs,
) -> ApproxResult:
    """Chi-square DPO by reweighting: each step holds the batch's worst case ``q`` fixed and
    descends ``sum_i q_i l_i`` (Danskin's gradient of the batch's robust loss
    ``L_b(theta) = sup {sum_i q_i l_i : 1/2 sum_i p_i (q_i / p_i - 1)^2 <= rho}``, ``p`` the
    batch weights; docs/theory.md#baselines, docs/theory.md#minibatch-objective).

    Full batch this is exact chi-square DPO (:func:`rdpo_theory.exact.chi2dpo`). On
    minibatches of B pairs the expected step is the gradient of ``E_b L_b``, which, like
    KLDPO's ``G_B``, lies below the full-data robust loss: with the dual
    ``L_b = min_eta eta + sqrt(1 + 2 rho) sqrt(mean_b (l - eta)_+^2)``,
    ``E_b min_eta <= min_eta E_b`` and the square root is concave. So a small batch optimises a
    less robust objective than asked, and its minimiser moves with B.

    Parameters
    ----------
    rho : float >= 0
        Ball size of the chi-square divergence (the project's convention with the 1/2).
    normalizer : {"batch", "mlmc"}
        ``batch``: each minibatch's own worst case. ``mlmc``: the multilevel Monte Carlo
        estimator of Levy, Carmon, Duchi and Sidford (2020), as in :func:`kldpo`: its expected
        gradient is the batch gradient at groups of ``B 2^(levels+1)`` pairs exactly, at an
        expected cost of about ``B (levels + 2)`` pairs per step. ``accumulated`` is
        ``batch`` here (one micro-batch per step).
    levels : int >= 0
        Deepest level of ``normalizer="mlmc"``.
    X, y, weights, theta_ref, beta
        As in :func:`fit`.
    options, **option_kwargs
        Training options, as in :func:`dpo`.

    Returns
    -------
    ApproxResult
        With ``weights = q`` (n,), the full-data worst case at the final theta, and
        ``implied_rho`` its chi-square divergence from p (``rho`` when the ball binds).
    """
    from .divergences import chi2 as C
    from .losses import dpo_losses
    from .torch.baselines import chi2_objective

    rho = float(rho)
    normalizer = _normalizer(normalizer, "chi2", "chi2dpo")
    data = _data(X, y, weights)
    opts = FitOptions.build(options, where="approx.chi2dpo", **option_kwargs)
    uniform = _uniform_batches(data, opts)
    mlmc = normalizer == "mlmc" and opts.batch_size is not None
    sampler = mlmc_sampler(levels) if mlmc else None

    def batch_loss(per):
        return chi2_objective(per, rho=rho)[0]

    def objective(per, x, w, training=False):
        if training and mlmc:
            return mlmc_objective(per, batch_loss, opts.batch_size, levels)
        return chi2_objective(per, rho=rho, weights=None if uniform else w)[0]

    res = fit(
        data,
        beta=beta,
        objective=objective,
        theta_ref=theta_ref,
        options=opts,
        input_grad=False,
        pass_training=mlmc,
        method="chi2dpo",
        hyper={"rho": rho, "normalizer": normalizer},
        sampler=sampler,
    )
    lo = dpo_losses(res.theta, data, beta=beta, theta_ref=theta_ref)
    q = C.chi2_weights(lo, rho=rho, weights=data.weights)
    res.weights, res.implied_rho = q, C.chi2_divergence(q, data.weights)
    return res


def kl_implied(
    theta,
    data: PreferenceData,
    *,
    tau: float,
    beta: float,
    variant="normalized",
    clip=10.0,
    theta_ref=None,
) -> tuple[np.ndarray, float]:
    """``(q, KL(q || p))``: the full-data KLDPO weights at ``theta`` as a law
    ``q ∝ p_i w_i(theta)`` (n,) and its KL divergence from the data law p (nats), the radius
    whose exact KLDPO optimum the ``normalized`` variant at ``tau`` targets
    (docs/theory.md#algorithm-2-kldpo)."""
    import torch

    from .losses import dpo_losses
    from .torch.losses import kl_weights

    l = dpo_losses(theta, data, beta=beta, theta_ref=theta_ref)
    p = torch.tensor(data.weights, dtype=torch.float64)
    w = kl_weights(
        torch.as_tensor(l, dtype=torch.float64), tau=tau, variant=variant, clip=clip, weights=p
    ).numpy()
    q = data.weights * w
    q = q / q.sum()
    return q, kl_divergence(q, data.weights)
