"""The minibatch fixed point of Algorithms 1 and 2, computed deterministically
(docs/theory.md#minibatch-fixed-point).

A robust minibatch loss normalises over its normalisation group of B pairs (the KLDPO softmax,
the clipped weights' centre, the WDPO ``sqrt-mean`` square root), so its expected gradient

    F_B(theta) = E_{b ~ p^B} [ grad_theta L_b(theta) ]

is not the gradient of the full-data objective, and SGD converges (with iterate averaging) to
the root ``theta_B`` of ``F_B``, not to the full-batch answer. For KLDPO ``normalized`` the
frozen softmax step on a group is the gradient of the group's log-mean-exp, so ``F_B`` is the
gradient of the convex minibatch objective ``G_B(theta) = E_b[tau log mean_b exp(l / tau)]``
and ``theta_B`` is its minimiser (docs/theory.md#minibatch-objective): :func:`batch_objective`,
:func:`minimize_objective` and :func:`certify` (a strong-convexity certificate). The law of a
group can be enumerated exactly when small (:func:`batch_law`, :func:`exact_fixed_point`), and
the ``clipped`` variant has a closed form for i.i.d. groups (:func:`clipped_closed_form`).

:func:`fixed_point` computes ``theta_B`` by sample-average approximation: ``M`` fixed batches
(common random numbers, so ``F_B^M`` is a deterministic smooth function of theta), every batch
evaluated at once with ``torch.func.vmap`` over the batch axis of the one implementation of
each loss (:func:`rdpo_theory.torch.losses.kldpo_objective`,
:func:`~rdpo_theory.torch.losses.wdpo_objective`, and for ``normalizer="running"`` the
objectives of :mod:`rdpo_theory.torch.normalizers`), in float64, and solved by a Newton-type
root finder (``scipy.optimize.root``, Powell's hybrid method) for the estimators without a
convex objective, and by damped Newton on the sample-average ``G_B`` for ``normalized``. A
control variate of known expectation removes most of the Monte Carlo noise without changing
the expectation (:func:`control_coefficients` for ``normalized``; none for ``clipped``).
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
from . import options as O
from .data import PreferenceData
from .errors import InputError, SolverError
from .losses import check_beta
from .options import Instance, declare
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
    probs: np.ndarray | None = None,
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
    difference is 0 and ``F_B`` is the full-batch gradient exactly).

    ``probs`` (M,): probabilities of the batches (the exact law of :func:`batch_law`) in place
    of the plain mean; only with the batch normaliser and without the control variate."""
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
            pw = None if probs is None else torch.as_tensor(np.asarray(probs), dtype=dt)

            def mean_objective(th):
                vals = batch_obj(th, Xb, Sb)
                return vals.mean() if pw is None else (pw * vals).sum()

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
    Broyden updates), with Levenberg-Marquardt as a second chance: for the estimators without a
    convex objective (``clipped``, whose Jacobian is not symmetric; WDPO; running)."""
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


# ---------------------------------------------------------------------------- exact batches
#: Most multisets :func:`batch_law` enumerates (about 10^7: B <= 4 on up to ~100 distinct
#: pairs, B <= 3 on ~400, B = 2 on ~4500).
MAX_MULTISETS = 10_000_000


def distinct_pairs(data: PreferenceData) -> tuple[PreferenceData, np.ndarray]:
    """``(distinct, counts)``: the distinct rows ``(x_i, y_i)`` of ``data`` with their summed
    data weights, and how many rows of ``data`` each stands for (n_distinct,)."""
    key = np.column_stack([data.X, data.y.astype(float)])
    _, first, inv, counts = np.unique(
        key, axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    inv = inv.ravel()
    p = np.bincount(inv, weights=data.weights, minlength=first.size)
    return PreferenceData(data.X[first], data.y[first], p / p.sum()), counts


def multisets(n: int, size: int) -> np.ndarray:
    """Every multiset of ``size`` indices from ``range(n)`` as a non-decreasing row, shape
    (C(n + size - 1, size), size), built column by column with ``np.repeat`` (no Python loop
    over multisets)."""
    rows = np.arange(n, dtype=np.int64)[:, None]
    for _ in range(size - 1):
        last = rows[:, -1]
        reps = n - last
        starts = np.repeat(np.cumsum(reps) - reps, reps)
        col = np.repeat(last, reps) + (np.arange(starts.size) - starts)
        rows = np.column_stack([np.repeat(rows, reps, axis=0), col])
    return rows


def _run_position(rows: np.ndarray) -> np.ndarray:
    """For sorted rows, the position of each entry within its run of equal indices (1, 2,
    ...): ``prod_j r_j`` over a row is ``prod_k c_k!`` for the multiplicities c_k."""
    r = np.ones(rows.shape, dtype=np.int64)
    for j in range(1, rows.shape[1]):
        r[:, j] = np.where(rows[:, j] == rows[:, j - 1], r[:, j - 1] + 1, 1)
    return r


def batch_law(
    data: PreferenceData, batch_size: int, *, replace: bool | None = None, limit=MAX_MULTISETS
) -> tuple[PreferenceData, np.ndarray, np.ndarray]:
    """The exact law of one normalisation group (docs/theory.md#minibatch-objective):
    ``(distinct, batches, prob)`` with ``batches`` (K, B) every multiset of B distinct pairs
    and ``prob`` (K,) its probability, summing to 1.

    i.i.d. draws from p (``replace=True``, the default for non-uniform p) give the multinomial
    law ``B! / prod_k c_k! prod_k p_k^{c_k}``; uniform B-subsets of the n rows
    (``replace=False``, default for uniform p, as :func:`draw_batches`) the multivariate
    hypergeometric law ``prod_k C(N_k, c_k) / C(n, B)`` over distinct pairs of multiplicity
    N_k. Raises :class:`InputError` when there are more than ``limit`` multisets."""
    n_rows = data.n
    uniform = bool(np.allclose(data.weights, 1.0 / n_rows, rtol=0, atol=1e-15))
    replace = (not uniform) if replace is None else bool(replace)
    if not replace and not uniform:
        raise InputError("replace=False needs uniform data weights (each row one draw)")
    if not replace and batch_size > n_rows:
        raise InputError(f"batch_size {batch_size} > n = {n_rows} without replacement")
    distinct, counts = distinct_pairs(data)
    n = distinct.n
    K = math.comb(n + batch_size - 1, batch_size)
    if K > limit:
        raise InputError(
            f"{K} multisets of {batch_size} of {n} distinct pairs exceed the enumeration limit "
            f"{limit}; use fixed_point (sampled batches)"
        )
    rows = multisets(n, batch_size)
    r = _run_position(rows)
    if replace:
        logp = np.log(distinct.weights)[rows].sum(axis=1) + math.lgamma(batch_size + 1)
        logp -= np.log(r).sum(axis=1)
    else:
        N = counts[rows]
        ok = (r <= N).all(axis=1)
        rows, r, N = rows[ok], r[ok], N[ok]
        logp = np.log((N - r + 1) / r).sum(axis=1) - (
            math.lgamma(n_rows + 1)
            - math.lgamma(batch_size + 1)
            - math.lgamma(n_rows - batch_size + 1)
        )
    prob = np.exp(logp)
    return distinct, rows, prob / prob.sum()


# ---------------------------------------------------------------------------- the objective
@dataclass
class Objective:
    """The minibatch objective of KLDPO ``normalized`` with the batch normaliser and its
    derivatives at one theta (docs/theory.md#minibatch-objective):
    ``value = G_B = sum_b P(b) tau log mean_{i in b} exp(l_i / tau)`` (nats), ``grad`` (d,),
    ``hess`` (d, d), ``pair_weight`` (n,) ``W_i = sum_b P(b) softmax_b(l / tau)_i`` (the
    weight of pair i in ``grad = sum_i W_i grad l_i``; sums to 1)."""

    value: float
    grad: np.ndarray
    hess: np.ndarray
    pair_weight: np.ndarray


def _pairs(theta, X, sb, tref):
    """Margin directions ``a_i = sy_i beta x_i`` (n, d), margins, losses ``softplus(-z)``,
    ``s = sigmoid(-z)`` (so ``grad l_i = -s_i a_i``, ``hess l_i = s_i (1 - s_i) a_i a_i^T``)."""
    from scipy.special import expit

    A = X * sb[:, None]
    z = A @ (np.asarray(theta, dtype=float) - tref)
    return A, z, np.logaddexp(0.0, -z), expit(-z)


def batch_objective(
    theta, X, sb, batches, prob, *, tau: float, tref=None, chunk: int = 1 << 21
) -> Objective:
    """:class:`Objective` of the batches (K, B) with probabilities ``prob`` (K,) on the pairs
    ``X`` (n, d) with signed scaled labels ``sb = sy beta`` (n,): one vectorised pass,
    ``chunk`` batch entries at a time.

    ``hess = sum_i W_i s_i (1 - s_i) a_i a_i^T + (1 / tau) (sum_i W_i g_i g_i^T -
    sum_b P(b) m_b m_b^T)`` with ``m_b = sum_{i in b} softmax_b_i g_i``: the expected
    curvature of the losses plus the expected within-batch covariance of their gradients."""
    n, d = X.shape
    tref = np.zeros(d) if tref is None else tref
    A, z, l, s = _pairs(theta, X, sb, tref)
    g = -s[:, None] * A
    W = np.zeros(n)
    M2 = np.zeros((d, d))
    value = 0.0
    B = batches.shape[1]
    step = max(1, chunk // B)
    for lo in range(0, batches.shape[0], step):
        ib, pb = batches[lo : lo + step], prob[lo : lo + step]
        L = l[ib] / tau
        mx = L.max(axis=1, keepdims=True)
        E = np.exp(L - mx)
        S = E.sum(axis=1, keepdims=True)
        pi = E / S
        value += float(pb @ (tau * (mx[:, 0] + np.log(S[:, 0] / B))))
        wp = pi * pb[:, None]
        W += np.bincount(ib.ravel(), weights=wp.ravel(), minlength=n)
        m = np.einsum("kb,kbd->kd", pi, g[ib])
        M2 += (m * pb[:, None]).T @ m
    grad = W @ g
    hess = (A.T * (W * s * (1 - s))) @ A + ((g.T * W) @ g - M2) / tau
    return Objective(value, grad, 0.5 * (hess + hess.T), W)


def strong_convexity_bound(theta, X, sb, pair_weight, radius: float, *, tau, tref=None) -> float:
    """A lower bound on the smallest eigenvalue of the Hessian of ``G_B`` on the ball of
    ``radius`` around ``theta`` (docs/theory.md#minibatch-objective): the covariance term is
    PSD, each loss moves by at most ``||a_i|| r`` (softplus is 1-Lipschitz), so each softmax
    weight shrinks by at most ``exp(-2 A r / tau)`` (A the largest ``||a_i||`` of a weighted
    pair) and each curvature ``s (1 - s)`` is at least its value at ``|z_i| + ||a_i|| r``."""
    from scipy.special import expit

    d = X.shape[1]
    tref = np.zeros(d) if tref is None else tref
    A, z, _, _ = _pairs(theta, X, sb, tref)
    norms = np.linalg.norm(A, axis=1)
    zz = np.abs(z) + norms * radius
    c = expit(zz) * expit(-zz)
    amax = float(norms[pair_weight > 0].max(initial=0.0))
    H = (A.T * (pair_weight * c)) @ A
    return float(np.exp(-2.0 * amax * radius / tau) * max(np.linalg.eigvalsh(H)[0], 0.0))


def minimize_objective(fn, theta0, *, gtol: float = 1e-11, max_iter: int = 100):
    """Damped Newton on a convex ``fn(theta) -> Objective`` (backtracking on the value):
    ``(theta, Objective)`` at ``||grad|| <= gtol`` (relative to ``max(1, ||grad(theta0)||)``).
    """
    th = np.asarray(theta0, dtype=float).copy()
    ob = fn(th)
    tol = gtol * max(1.0, float(np.linalg.norm(ob.grad)))
    for _ in range(max_iter):
        if np.linalg.norm(ob.grad) <= tol:
            break
        try:
            step = -np.linalg.solve(ob.hess, ob.grad)
        except np.linalg.LinAlgError:
            step = -ob.grad
        t = 1.0
        while True:
            new = fn(th + t * step)
            if np.isfinite(new.value) and new.value <= ob.value + 1e-4 * t * (ob.grad @ step):
                break
            # at rounding level of the value, a step that shrinks the gradient is progress
            if abs(new.value - ob.value) <= 1e-13 * max(1.0, abs(ob.value)) and np.linalg.norm(
                new.grad
            ) < np.linalg.norm(ob.grad):
                break
            if t < 1e-10:  # at rounding level: accept the plain step
                new = fn(th + t * step)
                break
            t *= 0.5
        th, ob = th + t * step, new
    if not np.linalg.norm(ob.grad) <= max(tol, 1e-9):
        raise SolverError(
            f"minibatch objective: Newton ended with ||grad|| = {np.linalg.norm(ob.grad):.3g}",
            status="inaccurate",
        )
    return th, ob


def certify(theta, ob: Objective, X, sb, *, tau, tref=None) -> float:
    """Certified bound on ``||theta - theta_B||`` from strong convexity: with ``mu(r)`` of
    :func:`strong_convexity_bound` on the ball of radius r, ``||grad|| < mu(r) r`` puts the
    minimiser in the ball and within ``||grad|| / mu(r)`` of theta (r is tried from just above
    ``||grad|| / mu(0)`` upwards, the smallest feasible one being the tightest). ``inf`` if no
    tried radius certifies (far from the minimiser)."""
    gn = float(np.linalg.norm(ob.grad))
    if gn == 0.0:
        return 0.0
    mu0 = strong_convexity_bound(theta, X, sb, ob.pair_weight, 0.0, tau=tau, tref=tref)
    if mu0 <= 0:
        return math.inf
    for factor in (1.0001, 1.001, 1.01, 1.1, 1.5, 2.0, 4.0, 8.0):  # smallest r: tightest
        r = factor * gn / mu0
        mu = strong_convexity_bound(theta, X, sb, ob.pair_weight, r, tau=tau, tref=tref)
        if gn < mu * r:
            return gn / mu
    return math.inf


def _linear_objective(theta, X, sb, coef, tref) -> Objective:
    """``sum_i coef_i l_i(theta)`` with its gradient and Hessian (a fixed-weight sum of DPO
    losses: the control-variate correction of :func:`sampled_objective_fixed_point`)."""
    A, _, l, s = _pairs(theta, X, sb, tref)
    g = -s[:, None] * A
    return Objective(
        float(coef @ l), coef @ g, (A.T * (coef * s * (1 - s))) @ A, np.zeros(X.shape[0])
    )


def _add(a: Objective, b: Objective) -> Objective:
    return Objective(a.value + b.value, a.grad + b.grad, a.hess + b.hess, a.pair_weight)


def control_coefficients(theta, X, sb, p, batches, *, tau, tref) -> tuple[np.ndarray, np.ndarray]:
    """``(omega, c)``: per-pair weights ``omega_i = c_1 + c_2 w_i`` of the linear control
    variate of the sampled minibatch objective (docs/theory.md#minibatch-objective), with
    ``w_i = exp(l_i / tau) / E_p exp(l / tau)`` the full-data KL weights at theta and ``c``
    the least-squares coefficients of the batch gradients ``g_b = sum softmax_b g_i`` on the
    two linear controls ``mean_b grad l_i`` and ``mean_b w_i grad l_i`` over the batches.
    At B = 1 the batch gradient *is* the first control, so ``c = (1, 0)`` and the corrected
    objective is the DPO objective exactly."""
    A, _, l, s = _pairs(theta, X, sb, tref)
    g = -s[:, None] * A
    L = l[batches] / tau
    pi = np.exp(L - L.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    gb = np.einsum("kb,kbd->kd", pi, g[batches])
    lt = l / tau
    w = np.exp(lt - np.log(p @ np.exp(lt - lt.max())) - lt.max())
    h1 = g[batches].mean(axis=1)
    h2 = (w[batches][..., None] * g[batches]).mean(axis=1)
    Hc = np.stack([h1 - h1.mean(0), h2 - h2.mean(0)], axis=-1).reshape(-1, 2)
    c = np.linalg.lstsq(Hc, (gb - gb.mean(0)).ravel(), rcond=None)[0]
    return c[0] + c[1] * w, c


def sampled_objective_fixed_point(
    X, sb, p, batches, *, tau, tref, theta0, control_variate=True, replace=True
) -> tuple[np.ndarray, dict]:
    """``(theta, info)``: the minimiser of the sample-average minibatch objective
    ``G_B^M = (1/M) sum_m tau log mean_{i in b_m} exp(l_i / tau)`` over the index batches
    (M, B), certified by :func:`certify` (``info["certificate"]``), then, with
    ``control_variate``, the minimiser of ``G_B^M + sum_i (p_i - f_i) omega_i l_i`` where
    ``f_i`` is pair i's frequency among the M B batch entries and ``omega`` the
    least-squares weights of :func:`control_coefficients`: the correction has expectation 0
    for every theta, and it is the gradient of a fixed function, so the corrected problem
    is a minimisation started at the certified minimiser."""
    M, B = batches.shape
    prob = np.full(M, 1.0 / M)
    n = X.shape[0]

    def fn(th):
        return batch_objective(th, X, sb, batches, prob, tau=tau, tref=tref)

    th, ob = minimize_objective(fn, theta0)
    info = {"certificate": certify(th, ob, X, sb, tau=tau, tref=tref), "cv_coefficients": None}
    if not control_variate:
        return th, info
    omega, c = control_coefficients(th, X, sb, p, batches, tau=tau, tref=tref)
    f = np.bincount(batches.ravel(), minlength=n) / (M * B)
    coef = (p - f) * omega

    def fn_cv(t):
        return _add(fn(t), _linear_objective(t, X, sb, coef, tref))

    try:
        th_cv, ob_cv = minimize_objective(fn_cv, th)
    except SolverError:  # the corrected objective need not be convex far from th
        info["cv_failed"] = True
        return th, info
    info.update(cv_coefficients=c.tolist(), cv_gradient=float(np.linalg.norm(ob_cv.grad)))
    return th_cv, info


@declare(
    {
        "data": [Instance(PreferenceData)],
        "est": [Instance(Estimator)],
        "beta": O.POSITIVE,
        "batch_size": [*O.POSITIVE_INT, O.NONE],
        "batches": O.POSITIVE_INT,
        "sets": O.POSITIVE_INT,
        "xtol": O.POSITIVE,
        "control_variate": ["boolean"],
    }
)
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
    """The minibatch fixed point ``theta_B`` by sample-average approximation over ``batches``
    fixed batches, for ``sets`` independent batch sets (docs/theory.md#minibatch-objective).

    KLDPO ``normalized`` with the batch normaliser has an objective, ``G_B``: each set's
    ``theta_B`` is the minimiser of its sample average (damped Newton on a convex function,
    certified by strong convexity: ``info["certificate"]`` bounds the distance to that
    minimiser), then corrected by the linear control variate of
    :func:`sampled_objective_fixed_point`, itself a minimisation. The other estimators
    (``clipped``, WDPO, the running normaliser) have no objective: their root of the
    sample-average ``F_B`` is found by Powell's hybrid method (:func:`expected_gradient_fn`).
    Where the batch law can be enumerated, :func:`exact_fixed_point` has no Monte Carlo error.

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
        Reference (default 0) and start (default: the full-batch root, found from the exact
        DPO optimum).
    xtol : float
        Relative step tolerance of the root finder.
    control_variate : bool
        Reduce the Monte Carlo error with a control variate of the same expectation (for the
        normalised batch objective the least-squares one of :func:`control_coefficients`,
        which is exact at B = 1; for WDPO ``sqrt-mean`` and the running normaliser the linear
        estimator at the full-data statistic of :func:`expected_gradient_fn`, and a set whose
        root it removes is solved without it; none for ``clipped``, where it enlarged the
        error against enumeration: ``info["control_variate"]`` lists what each set used).

    Returns
    -------
    FixedPoint

    Raises
    ------
    SolverError
        The root finder did not reach ``||F|| <= 1e-7`` (or Newton ``||grad G|| <= 1e-9``).
    """
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
    objective = has_objective(est)
    burn = int(math.ceil(5.0 / est.decay)) if est.normalizer == "running" else 0
    roots, resid, cvs, certs = [], 0.0, [], []
    tref = V.as_theta(theta_ref, d)
    sb = data.signed_labels * beta
    for ss in spawn_seeds(seed, sets):
        idx = draw_batches(
            data.weights, int(batch_size), burn + batches, make_rng(ss), replace=replace
        )
        if objective:
            th, inf = sampled_objective_fixed_point(
                data.X,
                sb,
                data.weights,
                idx,
                tau=est.hyper,
                tref=tref,
                theta0=x0,
                control_variate=control_variate,
            )
            roots.append(th)
            certs.append(inf["certificate"])
            cvs.append(control_variate and not inf.get("cv_failed", False))
            resid = max(resid, inf.get("cv_gradient", 0.0))
            continue
        used = []
        # the clipped weights' linear control (at the full-data centre) correlates poorly with
        # the batch gradient and was measured to enlarge the error against enumeration: off
        use_cv = control_variate and est.variant != "clipped"
        for cv in (True, False) if use_cv else (False,):
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
    info = {
        "batches": batches,
        "sets": sets,
        "replace": replace,
        "burn_in": burn,
        "control_variate": cvs,
        "method": "minimise" if objective else "root",
    }
    if objective:
        info["certificate"] = max(certs)
    return FixedPoint(T.mean(axis=0), se, T, resid, int(batch_size), est, info)


def has_objective(est: Estimator) -> bool:
    """True for KLDPO ``normalized`` with the batch normaliser: its expected minibatch
    gradient is the gradient of the convex ``G_B`` (docs/theory.md#minibatch-objective), so
    ``theta_B`` is a minimiser. ``clipped``, WDPO ``sqrt-mean`` and the running normaliser
    have none; WDPO ``per-pair`` is the full-batch objective at every B."""
    return est.method == "kldpo" and est.variant == "normalized" and est.normalizer == "batch"


def clipped_closed_form(
    data: PreferenceData, est: Estimator, *, beta: float, batch_size: int, theta_ref=None
) -> FixedPoint | None:
    """``theta_B`` of KLDPO ``clipped`` in closed form, for i.i.d. groups when the clip cannot
    bind (docs/theory.md#minibatch-objective): with ``w_i = exp((l_i - mean_b l) / tau)``,

        F_B = E[exp((1 - 1/B) l_i / tau) grad l_i] (E exp(-l / (B tau)))^(B - 1),

    a positive multiple of the full-batch normalised gradient at ``tau' = tau B / (B - 1)``, so
    ``theta_B`` is exact KLDPO at that temperature (DPO at B = 1). Valid while
    ``exp((1 - 1/B)(max l - min l) / tau) <= clip`` at the answer (checked; ``None`` if not,
    or if the data weights are uniform, which :func:`draw_batches` samples without
    replacement)."""
    if est.method != "kldpo" or est.variant != "clipped" or est.normalizer != "batch":
        raise InputError("clipped_closed_form needs KLDPO 'clipped' with the batch normaliser")
    from .exact import dpo as exact_dpo
    from .losses import dpo_losses

    n = data.n
    if bool(np.allclose(data.weights, 1.0 / n, rtol=0, atol=1e-15)):
        return None
    if batch_size == 1:
        th = exact_dpo(data, beta=beta, theta_ref=theta_ref, solver="fast").theta
    else:
        tau2 = est.hyper * batch_size / (batch_size - 1)
        th = fixed_point(
            data,
            Estimator("kldpo", "normalized", tau2),
            beta=beta,
            batch_size=None,
            theta_ref=theta_ref,
        ).theta
    l = dpo_losses(th, data, beta=beta, theta_ref=theta_ref)
    if (1 - 1 / batch_size) * (l.max() - l.min()) / est.hyper > math.log(est.clip):
        return None
    d = data.d
    info = {"exact": True, "closed_form": True, "sets": 1}
    return FixedPoint(th, np.zeros(d), th[None, :].copy(), 0.0, int(batch_size), est, info)


@declare(
    {
        "data": [Instance(PreferenceData)],
        "est": [Instance(Estimator)],
        "beta": O.POSITIVE,
        "batch_size": O.POSITIVE_INT,
        "limit": O.POSITIVE_INT,
    }
)
def exact_fixed_point(
    data: PreferenceData,
    est: Estimator,
    *,
    beta: float,
    batch_size: int,
    replace: bool | None = None,
    theta_ref=None,
    theta0=None,
    limit: int = MAX_MULTISETS,
) -> FixedPoint:
    """``theta_B`` with no Monte Carlo error: the expectation over every multiset of B pairs
    with its exact probability (:func:`batch_law`; docs/theory.md#minibatch-objective).

    KLDPO ``normalized`` (batch normaliser): the minimiser of ``G_B``, by damped Newton, with
    ``info["certificate"]`` a certified bound on the distance to the true minimiser (strong
    convexity on a ball, :func:`certify`). ``clipped`` and WDPO: the root of the exact ``F_B``
    (Powell's hybrid method, ``residual``). The running normaliser depends on the order of
    the batches and is not enumerable (:class:`InputError`).
    """
    if est.normalizer != "batch":
        raise InputError("exact_fixed_point needs the batch normaliser (est.normalizer)")
    distinct, rows, prob = batch_law(data, int(batch_size), replace=replace, limit=limit)
    d = data.d
    tref = V.as_theta(theta_ref, d)
    if theta0 is None:
        from .exact import dpo as exact_dpo

        x0 = exact_dpo(distinct, beta=beta, theta_ref=tref, solver="fast").theta
    else:
        x0 = V.as_vector(theta0, "theta0", length=d)
    info = {"exact": True, "multisets": int(rows.shape[0]), "sets": 1}
    if has_objective(est):
        sb = distinct.signed_labels * beta
        th, ob = minimize_objective(
            lambda t: batch_objective(t, distinct.X, sb, rows, prob, tau=est.hyper, tref=tref),
            x0,
        )
        info["certificate"] = certify(th, ob, distinct.X, sb, tau=est.hyper, tref=tref)
        info["objective"] = ob.value
        res = float(np.linalg.norm(ob.grad))
    else:
        F = expected_gradient_fn(
            distinct, est, rows, beta=beta, theta_ref=tref, control_variate=False, probs=prob
        )
        th, res = _root(F, x0, xtol=1e-12, what=f"exact minibatch root (B = {batch_size})")
    return FixedPoint(th, np.zeros(d), th[None, :].copy(), res, int(batch_size), est, info)


# ---------------------------------------------------------------------------- layouts
#: The normalisers of the toolkit's one vocabulary (:mod:`rdpo_theory.approx`, the layouts,
#: the trainer): ``"batch"`` (each forward pass normalises over its own group),
#: ``"accumulated"`` (over every micro-batch of the optimiser step), ``"running"`` (an
#: exponential moving average over steps) and ``"mlmc"`` (multilevel Monte Carlo,
#: :func:`rdpo_theory.approx.kldpo`). ``"micro-batch"`` is a deprecated alias of ``"batch"``.
NORMALIZERS = ("batch", "accumulated", "running", "mlmc")
DEPRECATED_NORMALIZERS = {"micro-batch": "batch"}


def normalizer_name(value, *, owner: str, allowed=NORMALIZERS) -> str:
    """``value`` checked against ``allowed`` (:mod:`rdpo_theory.options` message shape), with
    the deprecated alias ``"micro-batch"`` translated to ``"batch"`` (DeprecationWarning)."""
    import warnings

    O.check(
        "normalizer", value, [O.Options(allowed, deprecated=DEPRECATED_NORMALIZERS)], owner=owner
    )
    if value in DEPRECATED_NORMALIZERS:
        new = DEPRECATED_NORMALIZERS[value]
        warnings.warn(
            f"normalizer={value!r} is deprecated; use {new!r}", DeprecationWarning, stacklevel=3
        )
        return new
    return value


@dataclass(frozen=True)
class Layout:
    """A data-parallel training layout and the normalisation group it implies.

    ``workers`` K, ``micro_batch`` b pairs per worker per forward pass, ``accumulation`` A
    micro-batches per optimiser step. ``gather``: batch statistics all-gathered over the
    workers (the toolkit's torch losses and the paper's KLDPO code) or per worker.
    ``normalizer``: ``"batch"`` (each forward pass normalises on its own; the paper's code;
    ``"micro-batch"`` is its deprecated alias), ``"accumulated"`` (over all micro-batches of
    the optimiser step) or ``"running"`` (no group: the fixed point does not depend on it).
    """

    name: str
    workers: int = 1
    micro_batch: int = 1
    accumulation: int = 1
    gather: bool = True
    normalizer: str = "batch"

    def __post_init__(self):
        object.__setattr__(
            self,
            "normalizer",
            normalizer_name(
                self.normalizer, owner="Layout", allowed=("batch", "accumulated", "running")
            ),
        )
        for name in ("workers", "micro_batch", "accumulation"):
            O.check(name, getattr(self, name), O.POSITIVE_INT, owner="Layout")

    @property
    def normalize(self) -> str:
        """Deprecated name of :attr:`normalizer`."""
        return self.normalizer

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
        return g * (self.accumulation if self.normalizer == "accumulated" else 1)


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
