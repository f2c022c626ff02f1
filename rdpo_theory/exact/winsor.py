"""Winsorised DPO (wDPO; Liu, Yang, Shao, Ma, Qin and Hong, arXiv 2603.07211) on log-linear
policies: the fixed point of its training update (docs/theory.md#winsor-dpo).

wDPO's per-pair loss on a batch of ``B`` pairs with scaled margins ``z_i`` is

    (1 - r_i) [(1 - pi_i) softplus(-z_i) + pi_i softplus(z_i)] + r_i T

with flip probabilities ``pi``, caps ``r`` and a threshold ``T`` computed from the batch's
*detached* margins (:mod:`rdpo_theory.objective_kernels`, after the authors' code). Because
the weights are stop-gradients, the training update is ``mean_i (1 - r_i(theta)) grad
l_i(theta; pi(theta))`` and wDPO minimises no stated function of theta; where training comes
to rest is a **fixed point**: a theta that minimises the frozen surrogate

    S(theta'; theta) = mean_i (1 - r_i(theta)) [(1 - pi_i(theta)) softplus(-z_i(theta'))
                                                + pi_i(theta) softplus(z_i(theta'))]

over ``||theta'|| <= B`` at ``theta' = theta``. For fixed weights S is a weighted logistic
loss (DPO on the rows and their flipped copies), convex and solved exactly with a certificate
(:func:`.dpo.dpo`); :func:`winsor_dpo` iterates ``theta <- argmin S(.; theta)`` (damped if it
cycles) from the DPO solution, the end of wDPO's warm-up. The answer is labelled
``status = "local"``: the composite objective ``F(theta) = S(theta; theta)`` is not convex
(the weights jump with the quantile and the sparsemax support) and a fixed point need not
be unique, so nothing global is certified; what is certified is the inner minimisation at
the fixed point (``info["inner_optimality_gap"]``) and the fixed-point residual
(``info["fixed_point_residual"]``).
"""

from __future__ import annotations

import time

import numpy as np

from .. import losses as L
from .. import options as O
from ..data import PreferenceData, as_data
from ..errors import InputError, SolverError
from ..objective_kernels import winsor_pair_losses, winsor_weights
from .dpo import dpo
from .result import ExactResult
from .status import REGIME_LOCAL, STATUS_LOCAL


def batch_rows(data: PreferenceData, n: int) -> PreferenceData:
    """The batch of ``n`` equally weighted pairs whose empirical law is ``data.weights``
    (which must be multiples of ``1 / n``): each row repeated ``n * weight`` times."""
    counts = np.rint(np.asarray(data.weights) * n).astype(int)
    if counts.sum() != n or not np.allclose(counts / n, data.weights, atol=1e-9):
        raise InputError(f"data.weights must be multiples of 1/{n} summing to 1")
    idx = np.repeat(np.arange(data.n), counts)
    return PreferenceData(data.X[idx], data.y[idx], np.full(n, 1.0 / n))


def _weights(theta, data, beta, tref, kw):
    z = L.margins(theta, data.X, data.y, beta=beta, theta_ref=tref)
    pi, r, T, rho_w = winsor_weights(z, **kw)
    return z, pi, r, T, rho_w


def _inner(data, pi, r, beta, tref, radius):
    """``argmin_theta S(theta; weights)``: DPO on the rows (weight ``(1-r)(1-pi)``) and their
    flipped copies (weight ``(1-r) pi``), certified by the DPO solver."""
    w = np.concatenate([(1.0 - r) * (1.0 - pi), (1.0 - r) * pi])
    keep = w > 0
    X2 = np.vstack([data.X, data.X])[keep]
    y2 = np.concatenate([data.y, 1.0 - data.y])[keep]
    return dpo(X2, y2, weights=w[keep] / w[keep].sum(), beta=beta, theta_ref=tref,
               radius=radius, solver="fast")  # fmt: skip


@O.declare(
    {
        "beta": O.POSITIVE,
        "rho_f": O.PROBABILITY,
        "rho_w_max": O.PROBABILITY,
        "base_q": O.PROBABILITY,
        "tau_select": O.POSITIVE,
        "rho_floor": O.PROBABILITY,
        "gamma": O.POSITIVE,
        "max_iter": O.POSITIVE_INT,
    },
    owner="winsor_dpo",
)
def winsor_dpo(
    X,
    y=None,
    *,
    beta: float,
    rho_f: float = 0.15,
    rho_w_max: float = 0.5,
    base_q: float = 0.7,
    tau_select: float = 1.0,
    rho_floor: float = 0.02,
    gamma: float = 1.0,
    theta_ref=None,
    radius=None,
    max_iter: int = 300,
    tol: float = 1e-9,
) -> ExactResult:
    """Winsorised DPO's fixed point on a batch of equally weighted pairs
    (docs/theory.md#winsor-dpo).

    Parameters
    ----------
    X : array_like (B, d) or PreferenceData
        The batch (every row one pair; use :func:`batch_rows` to expand an empirical law).
    y : array_like (B,), labels in {0, 1}
    beta : float > 0
    rho_f : float in [0, 1]
        Flip budget: the flip probabilities sum to ``rho_f B`` (authors' default 0.15).
    rho_w_max, rho_floor : float in [0, 1]
        Range of the adaptive winsorisation budget (defaults 0.5 and 0.02).
    base_q : float in [0, 1]
        Quantile of the tail threshold T (default 0.7).
    tau_select : float > 0
        Sparsemax temperature of the flip selection (default 1).
    gamma : float > 0
        Severity exponent of the caps (default 1).
    theta_ref : array_like (d,), optional
    radius : float, optional
        Parameter bound B.
    max_iter : int >= 1
        Fixed-point iterations per damping level (1, 1/2, 1/4).
    tol : float
        Converged when ``||argmin S(.; theta) - theta|| <= tol (1 + ||theta||)``.

    Returns
    -------
    ExactResult
        ``status = "local"``, ``regime = "local"``, ``optimality_gap`` None, ``value`` = the
        batch mean of the wDPO losses at the fixed point (nats); ``info``: the flip
        probabilities ``pi``, caps ``r``, threshold ``T``, budget ``rho_w``,
        ``fixed_point_residual``, ``inner_optimality_gap`` (the certified gap of
        ``argmin S`` at the fixed point's weights), ``iterations``, ``damping``.

    Raises
    ------
    SolverError
        status ``"not_converged"`` when no damping level reaches a fixed point.
    """
    data = as_data(X, y)
    if not np.allclose(data.weights, 1.0 / data.n):
        raise InputError(
            "winsor_dpo takes a batch of equally weighted pairs (its quantile and budgets are "
            "batch statistics); expand an empirical law with batch_rows(data, n)"
        )
    d = data.X.shape[1]
    tref = np.zeros(d) if theta_ref is None else np.asarray(theta_ref, dtype=float)
    kw = dict(rho_f=rho_f, rho_w_max=rho_w_max, base_q=base_q, tau_select=tau_select,
              rho_floor=rho_floor, gamma=gamma)  # fmt: skip
    t0 = time.perf_counter()
    start = dpo(data, beta=beta, theta_ref=tref, radius=radius, solver="fast").theta
    total = 0
    for damping in (1.0, 0.5, 0.25):
        theta = start.copy()
        for _ in range(int(max_iter)):
            _, pi, r, _, _ = _weights(theta, data, beta, tref, kw)
            nxt = _inner(data, pi, r, beta, tref, radius).theta
            step = nxt - theta
            total += 1
            if np.linalg.norm(step) <= tol * (1.0 + np.linalg.norm(theta)):
                break
            theta = theta + damping * step
        else:
            continue
        break
    else:
        raise SolverError(
            "winsorised DPO: the fixed-point iteration did not converge at damping 1, 1/2 "
            "or 1/4 (the frozen weights may cycle between supports)",
            status="not_converged",
            hint="raise max_iter, or report the batch: a fixed point exists but may be unstable",
        )
    z, pi, r, T, rho_w = _weights(theta, data, beta, tref, kw)
    inner = _inner(data, pi, r, beta, tref, radius)
    value = float(np.mean(winsor_pair_losses(z, pi, r, T)))
    return ExactResult(
        theta=theta,
        value=value,
        status=STATUS_LOCAL,
        method="winsor-dpo",
        info={
            "solver": "fixed point of the frozen-weight update (exact DPO inner solves)",
            "pi": pi,
            "r": r,
            "T": T,
            "rho_w": rho_w,
            "fixed_point_residual": float(np.linalg.norm(inner.theta - theta)),
            "inner_optimality_gap": inner.optimality_gap,
            "iterations": total,
            "damping": damping,
            "seconds": time.perf_counter() - t0,
        },
        regime=REGIME_LOCAL,
    )


def composite_objective(theta, data: PreferenceData, *, beta: float, theta_ref=None, **kw):
    """``F(theta) = S(theta; theta)``: the batch mean wDPO loss with the weights taken at
    theta itself (nats). Not what training minimises (the weights are frozen in the update);
    shown to be non-convex by the tests."""
    tref = np.zeros(data.X.shape[1]) if theta_ref is None else np.asarray(theta_ref, float)
    z, pi, r, T, _ = _weights(np.asarray(theta, float), data, beta, tref, kw)
    return float(np.mean(winsor_pair_losses(z, pi, r, T)))


__all__ = ["batch_rows", "composite_objective", "winsor_dpo"]
