"""The minibatch fixed point of Algorithms 1 and 2, computed deterministically
(docs/theory.md#minibatch-fixed-point).

A robust minibatch loss normalises over its normalisation group of B pairs (the KLDPO softmax,
the clipped weights' centre, the WDPO ``sqrt-mean`` square root), so its expected gradient

    F_B(theta) = E_{b ~ p^B} [ grad_theta L_b(theta) ]

is not the gradient of the full-data objective, and SGD converges (with iterate averaging) to
the root ``theta_B`` of ``F_B``, not to the full-batch answer. For KLDPO the weights are held
constant inside ``L_b`` (Algorithm 2), so ``F_B`` is the expectation of that gradient, not the
gradient of an expectation, and its Jacobian is not symmetric.

:func:`fixed_point` computes ``theta_B`` by sample-average approximation: ``M`` fixed batches
(common random numbers, so ``F_B^M`` is a deterministic smooth function of theta), every batch
evaluated at once with ``torch.func.vmap`` over the batch axis of the one implementation of
each loss (:func:`rdpo_theory.torch.losses.kldpo_objective`,
:func:`~rdpo_theory.torch.losses.wdpo_objective`, and for ``normalizer="running"`` the
objectives of :mod:`rdpo_theory.torch.normalizers`), in float64, and solved by a Newton-type
root finder (``scipy.optimize.root``, Powell's hybrid method). A control variate (the same
batches under the linear estimator at the full-data statistic, whose expectation is known
exactly) removes most of the Monte Carlo noise without changing the expectation.
``sets`` independent batch sets give independent roots; their spread is the Monte Carlo error.

Batches are drawn as :func:`rdpo_theory.approx.fit` draws them: without replacement (uniform
random B-subsets) for uniform data weights, i.i.d. with probability ``p`` otherwise. At
``B = n`` without replacement every batch is the full data and ``theta_B`` is the full-batch
answer; ``batch_size=None`` solves the full-batch objective itself.

``normalizer="running"`` replaces the batch statistic by its exponential moving average along
a stationary sequence of batches (decay ``a``, a burn-in of ``ceil(5 / a)`` batches, then the
``M`` averaged ones), which is what SGD with the running normaliser sees when theta moves slowly
compared with ``1 / a`` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import _validate as V
from .data import PreferenceData
from .errors import InputError, SolverError
from .losses import check_beta
from .rng import make_rng, spawn_seeds

METHODS = ("kldpo", "wdpo")


@dataclass(frozen=True)
class Estimator:
    """One minibatch estimator: the method, its variant, hyperparameter and normaliser.

    Attributes
    ----------
    method : {"kldpo", "wdpo"}
    variant : str
        ``normalized``/``clipped`` (KLDPO) or ``sqrt-mean``/``per-pair`` (WDPO).
    hyper : float
        ``tau`` (KLDPO temperature) or ``rho0`` (WDPO penalty strength).
    normalizer : {"batch", "running"}
    clip : float
        Weight cap of ``clipped``.
    decay : float
        EMA weight of ``running``.
    """

    method: str
    variant: str
    hyper: float
    normalizer: str = "batch"
    clip: float = 10.0
    decay: float = 0.01

    def __post_init__(self):
        from .torch.losses import check_kl_args, check_wdpo_args
        from .torch.normalizers import check_decay, check_normalizer

        if self.method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method == "kldpo":
            check_kl_args(self.hyper, self.variant, self.clip)
        else:
            check_wdpo_args(self.hyper, self.variant)
        check_normalizer(self.normalizer, self.variant)
        check_decay(self.decay)


@dataclass
class FixedPoint:
    """Roots of the sample-average expected minibatch gradient.

    Attributes
    ----------
    theta : ndarray (d,)
        Mean of the roots over the batch sets.
    theta_se : ndarray (d,)
        Monte Carlo standard error of ``theta`` (std over sets / sqrt(sets); 0 for one set or
        full batch).
    thetas : ndarray (sets, d)
        The root of each set.
    residual : float
        Largest ``||F^M(theta_r)||`` over the sets at their roots.
    batch_size : int or None
    estimator : Estimator
    info : dict
        ``batches`` (M), ``sets``, ``replace``, ``burn_in``.
    """

    theta: np.ndarray
    theta_se: np.ndarray
    thetas: np.ndarray
    residual: float
    batch_size: int | None
    estimator: Estimator
    info: dict = field(default_factory=dict)


def draw_batches(
    p: np.ndarray, batch_size: int, count: int, rng: np.random.Generator, *, replace=None
) -> np.ndarray:
    """``count`` index batches (count, batch_size): uniform B-subsets without replacement when
    ``replace`` is False (default for uniform ``p``), i.i.d. draws with probability ``p``
    otherwise (as :func:`rdpo_theory.approx.fit` samples)."""
    n = p.shape[0]
    uniform = bool(np.allclose(p, 1.0 / n, rtol=0, atol=1e-15))
    if replace is None:
        replace = not uniform
    if not replace:
        if not uniform:
            raise InputError("replace=False needs uniform data weights (each row one draw)")
        if batch_size > n:
            raise InputError(f"batch_size {batch_size} > n = {n} without replacement")
        return np.argsort(rng.random((count, n)), axis=1)[:, :batch_size]
    return rng.choice(n, size=(count, batch_size), p=p)


class _Problem:
    """Torch tensors and per-batch objectives of one data set and estimator."""

    def __init__(self, data: PreferenceData, est: Estimator, beta: float, theta_ref):
        import torch

        self.torch = torch
        dt = torch.float64
        self.est = est
        self.beta = beta
        self.X = torch.tensor(data.X, dtype=dt)
        self.sb = torch.tensor(data.signed_labels * beta, dtype=dt)
        self.p = torch.tensor(data.weights, dtype=dt)
        self.tref = torch.tensor(V.as_theta(theta_ref, data.d), dtype=dt)

    def per_sq(self, theta, xb, sb):
        """Per-pair losses and closed-form ``||grad_x l_i||^2`` (log-linear pairs)."""
        from .torch.losses import dpo_pair_losses

        delta = theta - self.tref
        per = dpo_pair_losses(sb * (xb @ delta))
        sq = self.torch.expm1(-per).square() * (self.beta**2 * (delta @ delta))
        return per, sq

    def objective(self, theta, xb, sb, stat=None, weights=None):
        """The batch loss of the estimator (``stat``: the running log Z or S)."""
        from .torch.losses import kldpo_objective, wdpo_objective
        from .torch.normalizers import running_kldpo_objective, running_wdpo_objective

        e = self.est
        per, sq = self.per_sq(theta, xb, sb)
        if e.method == "kldpo":
            if stat is not None:
                return running_kldpo_objective(per, tau=e.hyper, log_partition=stat)[0]
            return kldpo_objective(
                per, tau=e.hyper, variant=e.variant, clip=e.clip, weights=weights, check=False
            )[0]
        if stat is not None:
            return running_wdpo_objective(per, sq, rho0=e.hyper, mean_sq=stat)
        return wdpo_objective(
            per, None, rho0=e.hyper, variant=e.variant, weights=weights, sq_norms=sq, check=False
        )[0]

    def batch_stat(self, theta, xb, sb):
        """The batch statistic the running normaliser averages: ``log mean_b exp(l / tau)``
        (KLDPO) or ``mean_b ||grad_x l||^2`` (WDPO)."""
        from .torch.normalizers import batch_log_partition

        per, sq = self.per_sq(theta, xb, sb)
        if self.est.method == "kldpo":
            return batch_log_partition(per, self.est.hyper)
        return sq.detach().mean()


def _ema(values: np.ndarray, a: float, *, log_space: bool) -> np.ndarray:
    """``s_t = (1 - a) s_{t-1} + a x_t`` with ``s_0 = x_0`` (of ``exp(values)`` in log space,
    returning logs), as :class:`rdpo_theory.torch.normalizers.RunningStatistic` updates."""
    from scipy.signal import lfilter

    if log_space:
        c = float(values.max())
        u = np.exp(values - c)
        return np.log(lfilter([a], [1.0, -(1.0 - a)], u, zi=[(1.0 - a) * u[0]])[0]) + c
    return lfilter([a], [1.0, -(1.0 - a)], values, zi=[(1.0 - a) * values[0]])[0]


def expected_gradient_fn(
    data: PreferenceData,
    est: Estimator,
    batches: np.ndarray | None,
    *,
    beta,
    theta_ref=None,
    burn_in: int = 0,
    control_variate: bool = True,
):
    """``F(theta) -> (d,)``: the sample-average expected minibatch gradient over the fixed index
    ``batches`` (M, B) (``None``: the full-batch gradient with data weights p). numpy in and out.

    For ``normalizer="running"`` the rows of ``batches`` are one sequence: the statistic is
    averaged along it and the first ``burn_in`` batches are not averaged into F.

    ``control_variate``: subtract from each batch gradient the gradient of the same batch
    under the *linear* estimator that uses the full-data statistic at theta (the partition sum
    ``E_p exp(l / tau)``, the centre ``E_p l`` of ``clipped``, ``E_p ||grad_x l||^2``), and add
    back its exact expectation, the full-batch gradient. The expectation is unchanged; the Monte
    Carlo error drops by the correlation of the two (for ``per-pair``, linear in the batch, the
    difference is 0 and ``F_B`` is the full-batch gradient exactly)."""
    import torch
    from torch.func import vmap

    from .torch.normalizers import running_kldpo_objective, running_wdpo_objective

    beta = check_beta(beta)
    P = _Problem(data, est, beta, theta_ref)
    dt = torch.float64

    def full_objective(th):
        return P.objective(th, P.X, P.sb, weights=P.p)

    def full_stat(th):  # the full-data statistic at th (detached): log Z, centre or S
        per, sq = P.per_sq(th.detach(), P.X, P.sb)
        if est.method == "wdpo":
            return (P.p * sq).sum()
        if est.variant == "clipped":
            return (P.p * per).sum()
        return torch.logsumexp(torch.log(P.p) + per / est.hyper, dim=0)

    def control(th, xb, sb, stat):  # the linear estimator at the full-data statistic
        per, sq = P.per_sq(th, xb, sb)
        if est.method == "wdpo":
            return running_wdpo_objective(per, sq, rho0=est.hyper, mean_sq=stat)
        if est.variant == "clipped":
            w = ((per.detach() - stat) / est.hyper).exp().clamp(max=est.clip)
            return (w * per).mean()
        return running_kldpo_objective(per, tau=est.hyper, log_partition=stat)[0]

    # F is the gradient of one scalar: the mean over the M batches of each batch's objective
    # (its weights and statistics detached, as in the trainer), evaluated for all batches at
    # once by vmap; one backward pass then gives the mean of the per-batch gradients.
    if batches is None:
        surrogate = full_objective
    else:
        idx = torch.as_tensor(np.asarray(batches), dtype=torch.long)
        Xb, Sb = P.X[idx], P.sb[idx]  # (M, B, d), (M, B)
        linear = est.variant == "per-pair"
        batch_obj = vmap(P.objective, in_dims=(None, 0, 0))
        ctl_obj = vmap(control, in_dims=(None, 0, 0, None))
        if est.normalizer == "batch":

            def mean_objective(th):
                return batch_obj(th, Xb, Sb).mean()

            cv_rows = (Xb, Sb)
        else:
            stat_batch = vmap(P.batch_stat, in_dims=(None, 0, 0))
            run_obj = vmap(P.objective, in_dims=(None, 0, 0, 0))
            log_space = est.method == "kldpo"

            def mean_objective(th):
                with torch.no_grad():
                    s = stat_batch(th, Xb, Sb).numpy()
                run = torch.as_tensor(_ema(s, est.decay, log_space=log_space), dtype=dt)
                return run_obj(th, Xb[burn_in:], Sb[burn_in:], run[burn_in:]).mean()

            cv_rows = (Xb[burn_in:], Sb[burn_in:])

        def surrogate(th):
            if not control_variate:
                return mean_objective(th)
            if linear:  # the batch loss minus the control is 0: F_B is the full gradient
                return full_objective(th)
            ctl = ctl_obj(th, *cv_rows, full_stat(th)).mean()
            return mean_objective(th) - ctl + full_objective(th)

    def F_t(th):
        th = th.detach().clone().requires_grad_(True)
        return torch.autograd.grad(surrogate(th), th)[0]

    def F(theta):
        return F_t(torch.as_tensor(theta, dtype=dt)).numpy()

    return F


def _root(F, x0, *, xtol: float, what: str) -> tuple[np.ndarray, float]:
    """Powell's hybrid method (a quasi-Newton root finder; forward-difference Jacobian, then
    Broyden updates), with Levenberg-Marquardt as a second chance: the KLDPO Jacobian is not
    symmetric, so no minimisation is implied."""
    from scipy.optimize import root

    scale = max(1.0, float(np.linalg.norm(F(np.asarray(x0)))))
    sol = root(F, x0, method="hybr", options={"xtol": xtol})
    res = float(np.linalg.norm(F(sol.x)))
    if not np.all(np.isfinite(sol.x)) or res > 1e-7 * scale:  # Levenberg-Marquardt fallback
        sol = root(
            F, sol.x if np.all(np.isfinite(sol.x)) else x0, method="lm", options={"xtol": xtol}
        )
        res = float(np.linalg.norm(F(sol.x)))
    if not np.all(np.isfinite(sol.x)) or res > 1e-7 * scale:
        raise SolverError(
            f"{what}: the root finder ended with ||F|| = {res:.3g} ({sol.message})",
            status="inaccurate",
            hint="start closer (theta0=) or use more batches.",
        )
    return sol.x, res


def fixed_point(
    data: PreferenceData,
    est: Estimator,
    *,
    beta: float,
    batch_size: int | None,
    batches: int = 2000,
    sets: int = 4,
    replace: bool | None = None,
    seed=0,
    theta_ref=None,
    theta0=None,
    xtol: float = 1e-12,
    control_variate: bool = True,
) -> FixedPoint:
    """The root ``theta_B`` of the expected minibatch gradient ``F_B``, by sample-average
    approximation over ``batches`` fixed batches, for ``sets`` independent batch sets.

    Parameters
    ----------
    data : PreferenceData
        Pairs (n, d) with data weights p.
    est : Estimator
    beta : float > 0
    batch_size : int or None
        B, the normalisation group size; ``None`` solves the full-batch objective.
    batches : int
        M, batches per set (after the running normaliser's burn-in of ``ceil(5 / decay)``).
    sets : int
        Independent batch sets (Monte Carlo error from their spread).
    replace : bool or None
        Sampling with replacement; default as :func:`rdpo_theory.approx.fit` (without for
        uniform p, i.i.d. from p otherwise).
    seed : int or SeedSequence
    theta_ref, theta0 : array_like (d,), optional
        Reference (default 0) and root-finder start (default: the full-batch root, found
        from the exact DPO optimum).
    xtol : float
        Relative step tolerance of the root finder.
    control_variate : bool
        Reduce the Monte Carlo error with the linear control variate of
        :func:`expected_gradient_fn` (same expectation). A set whose root cannot be found with
        it (the control variate adds theta-dependent noise when it correlates poorly, e.g.
        B = 1 at a small tau) is solved without it; ``info["control_variate"]`` lists which.

    Returns
    -------
    FixedPoint

    Raises
    ------
    SolverError
        The root finder did not reach ``||F|| <= 1e-7``.
    """
    if not isinstance(data, PreferenceData):
        raise InputError(f"data must be a PreferenceData, got {type(data).__name__}")
    if not isinstance(est, Estimator):
        raise InputError(f"est must be an Estimator, got {type(est).__name__}")
    for name, v in (("batches", batches), ("sets", sets)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"The '{name}' parameter must be a positive integer. Got {v!r}.")
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise InputError(
            f"The 'batch_size' parameter must be a positive integer or None. Got {batch_size!r}."
        )
    d = data.d
    if theta0 is None:
        full = expected_gradient_fn(data, est, None, beta=beta, theta_ref=theta_ref)
        from .exact import dpo as exact_dpo

        start = exact_dpo(data, beta=beta, theta_ref=theta_ref, solver="fast").theta
        x0 = _root(full, start, xtol=xtol, what="full-batch root")[0]
    else:
        x0 = V.as_vector(theta0, "theta0", length=d)
    if batch_size is None:
        return FixedPoint(
            x0, np.zeros(d), x0[None, :].copy(), 0.0, None, est, {"batches": 0, "sets": 1}
        )
    burn = int(math.ceil(5.0 / est.decay)) if est.normalizer == "running" else 0
    roots, resid, cvs = [], 0.0, []
    for ss in spawn_seeds(seed, sets):
        idx = draw_batches(
            data.weights, int(batch_size), burn + batches, make_rng(ss), replace=replace
        )
        used = []
        for cv in (True, False) if control_variate else (False,):
            F = expected_gradient_fn(
                data, est, idx, beta=beta, theta_ref=theta_ref, burn_in=burn, control_variate=cv
            )
            try:
                th, r = _root(F, x0, xtol=xtol, what=f"minibatch root (B = {batch_size})")
            except SolverError:
                if not cv:
                    raise
                continue  # the control variate can remove the root when it correlates poorly
            used.append(cv)
            break
        cvs.extend(used)
        roots.append(th)
        resid = max(resid, r)
    T = np.asarray(roots)
    se = T.std(axis=0, ddof=1) / math.sqrt(sets) if sets > 1 else np.zeros(d)
    return FixedPoint(
        T.mean(axis=0),
        se,
        T,
        resid,
        int(batch_size),
        est,
        {
            "batches": batches,
            "sets": sets,
            "replace": replace,
            "burn_in": burn,
            "control_variate": cvs,
        },
    )


# ---------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Layout:
    """A data-parallel training layout and the normalisation group it implies.

    ``workers`` K, ``micro_batch`` b pairs per worker per forward pass, ``accumulation`` A
    micro-batches per optimiser step. ``gather``: batch statistics all-gathered over the
    workers (the toolkit's torch losses and the paper's KLDPO code) or per worker.
    ``normalize``: ``"micro-batch"`` (each forward pass normalises on its own; the paper's
    code) or ``"accumulated"`` (over all micro-batches of the optimiser step).
    """

    name: str
    workers: int = 1
    micro_batch: int = 1
    accumulation: int = 1
    gather: bool = True
    normalize: str = "micro-batch"

    @property
    def global_batch(self) -> int:
        """Pairs per optimiser step, K b A."""
        return self.workers * self.micro_batch * self.accumulation

    @property
    def group_size(self) -> int:
        """Pairs in one normalisation group: b, times K when gathered, times A when
        normalised over the accumulated step. The optimiser step averages the gradients of
        ``global_batch / group_size`` independent groups, so its expectation is ``F_B`` at
        ``B = group_size`` whatever the global batch."""
        g = self.micro_batch * (self.workers if self.gather else 1)
        return g * (self.accumulation if self.normalize == "accumulated" else 1)


#: The layouts of the study, each with a global batch of 128. ``paper`` is the paper's KLDPO
#: code: micro-batch 4 per GPU on 8 GPUs, gathered, accumulated (A = 4) to a global batch of
#: 128 and normalised per micro-batch (group 32). ``1 GPU x 1`` is the paper's WDPO setting
#: (micro-batch 1).
LAYOUTS = (
    Layout("paper: 8 GPUs x 4, gathered, A=4", 8, 4, 4, True),
    Layout("8 GPUs x 4, per GPU, A=4", 8, 4, 4, False),
    Layout("8 GPUs x 4, accumulated, A=4", 8, 4, 4, True, "accumulated"),
    Layout("1 GPU x 4, A=32", 1, 4, 32, True),
    Layout("1 GPU x 1, A=128", 1, 1, 128, True),
)
