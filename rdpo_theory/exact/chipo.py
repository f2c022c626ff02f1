"""chi-PO (chi-square preference optimisation) on finite log-linear worlds: a multi-start
*local* solver, because the objective is not convex (docs/theory.md#chipo; Huang, Zhan, Xie,
Lee, Sun, Krishnamurthy and Foster, arXiv 2407.13399).

chi-PO changes DPO's link: the implicit reward of a response is ``beta phi(r)`` with
``r = pi_theta(a|s) / pi_ref(a|s)`` and ``phi(r) = r + log r`` (the mixed chi-square + KL
regulariser's link) instead of ``beta log r``, and the reward difference is clipped to
``[-2 R_max, 2 R_max]``:

    l(theta; s, a_w, a_l) = softplus(-clip_{2 R_max}[beta (phi(r_w) - phi(r_l))]).

Unlike DPO's, this margin depends on each response's own ratio, not only on the feature
difference: ``log r(a) = (theta - theta_ref) . psi(s, a) - (A_theta(s) - A_ref(s))`` with
``A`` the log-partition function. So the solver needs the world (features ``psi``, the
context and both actions of every pair), and the data are weights over the world's pairs
``Z = {(s, a1, a2, y)}`` (its ``population`` order).

Convexity: ``r(a) = pi_theta(a|s) / pi_ref(a|s)`` is a softmax probability, neither convex nor
concave in theta, and the clip adds flat pieces; the objective is not convex in general (a d = 1
test exhibits a negative second difference). :func:`chipo` therefore returns the best of several
local solutions (SLSQP on the ball ``||theta|| <= B`` from theta_ref, from the DPO solution and
from random points) with ``status = "local"``: no optimality certificate exists.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_softmax, softmax

from .. import losses as L
from .. import options as O
from ..errors import InputError
from ..rng import make_rng
from .result import ExactResult
from .status import REGIME_LOCAL, STATUS_LOCAL


# ---------------------------------------------------------------------------- numpy kernel
def chipo_link(log_ratio) -> np.ndarray:
    """``phi(r) = r + log r`` at ``r = exp(log_ratio)`` (elementwise)."""
    lr = np.asarray(log_ratio, dtype=float)
    return np.exp(lr) + lr


def chipo_margins(lr_chosen, lr_rejected, *, beta: float, r_max: float) -> np.ndarray:
    """Clipped chi-PO margins ``clip(beta (phi(r_w) - phi(r_l)), -2 r_max, 2 r_max)`` from the
    log-ratios ``log pi/pi_ref`` (nats) of the chosen and rejected responses."""
    raw = beta * (chipo_link(lr_chosen) - chipo_link(lr_rejected))
    return np.clip(raw, -2.0 * r_max, 2.0 * r_max)


def chipo_loss(lr_chosen, lr_rejected, *, beta: float, r_max: float) -> np.ndarray:
    """chi-PO per-pair loss ``softplus(-clipped margin)`` (nats), elementwise
    (docs/theory.md#chipo)."""
    return L.dpo_loss(chipo_margins(lr_chosen, lr_rejected, beta=beta, r_max=r_max))


def world_log_ratios(world, theta) -> np.ndarray:
    """``log pi_theta(a|s) - log pi_ref(a|s)`` for every (s, a), shape (S, A)."""
    lp = log_softmax(world.logits(theta), axis=1)
    return lp - log_softmax(world.psi @ world.theta_ref, axis=1)


def pair_log_ratios(world, theta) -> tuple[np.ndarray, np.ndarray]:
    """Log-ratios of the chosen and rejected response of every pair of ``world.population``
    (|Z|,) each: the chosen one is ``a1`` when ``y = 1``."""
    pop = world.population
    lr = world_log_ratios(world, theta)
    y = pop.data.y > 0.5
    chosen = np.where(y, pop.a1, pop.a2)
    rejected = np.where(y, pop.a2, pop.a1)
    return lr[pop.s, chosen], lr[pop.s, rejected]


def chipo_risk(world, theta, weights, *, r_max: float) -> float:
    """``sum_z w_z l_chiPO(theta; z)`` over the world's pairs (nats)."""
    lc, lr = pair_log_ratios(world, theta)
    return float(weights @ chipo_loss(lc, lr, beta=world.beta, r_max=r_max))


def _risk_and_grad(world, theta, weights, r_max):
    """The risk and its gradient in theta (analytic; zero through clipped pairs)."""
    pop = world.population
    S, A, _ = world.psi.shape
    lr = world_log_ratios(world, theta)
    pi = softmax(world.logits(theta), axis=1)
    y = pop.data.y > 0.5
    cw = np.where(y, pop.a1, pop.a2)
    rj = np.where(y, pop.a2, pop.a1)
    lw, ll = lr[pop.s, cw], lr[pop.s, rj]
    raw = world.beta * (chipo_link(lw) - chipo_link(ll))
    m = np.clip(raw, -2.0 * r_max, 2.0 * r_max)
    value = float(weights @ L.dpo_loss(m))
    active = np.abs(raw) < 2.0 * r_max
    # d l / d m = -sigmoid(-m); d phi(e^lr) / d lr = e^lr + 1; d lr(a) / d theta = psi - E_pi psi
    coef = weights * -expit(-m) * active * world.beta
    gw, gl = coef * (np.exp(lw) + 1.0), -coef * (np.exp(ll) + 1.0)
    # accumulate the coefficients on the (s, a) table, then contract with centred features
    C = np.zeros((S, A))
    np.add.at(C, (pop.s, cw), gw)
    np.add.at(C, (pop.s, rj), gl)
    centred = world.psi - np.einsum("sa,sad->sd", pi, world.psi)[:, None, :]
    return value, np.einsum("sa,sad->d", C, centred)


@O.declare({"r_max": O.POSITIVE, "starts": O.POSITIVE_INT}, owner="chipo")
def chipo(
    world,
    weights=None,
    *,
    r_max: float,
    radius=None,
    starts: int = 8,
    seed=0,
) -> ExactResult:
    """chi-PO on a finite log-linear world, by multi-start local optimisation (not convex).

    Minimises ``sum_z w_z softplus(-clip_{2 r_max}[beta (phi(r_w) - phi(r_l))])`` over
    ``||theta||_2 <= radius`` (docs/theory.md#chipo), with the world's ``beta`` and
    ``theta_ref``.

    Parameters
    ----------
    world : World
    weights : array_like (|Z|,), optional
        A law over ``world.population`` (default its exact P0; an empirical sample's
        counts / n otherwise).
    r_max : float > 0
        The reward bound; margins are clipped to ``[-2 r_max, 2 r_max]`` (nats).
    radius : float, optional
        Parameter bound (default ``world.B``).
    starts : int >= 1
        Local solves: from theta_ref, from the DPO direction and from ``starts - 2`` random
        points of the ball.
    seed : int or SeedSequence

    Returns
    -------
    ExactResult
        ``status = "local"`` (never ``"optimal"``), ``regime = "local"``,
        ``optimality_gap = None``; ``info["local_values"]`` the value of every start.
    """
    pop = world.population
    w = pop.data.weights if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (pop.size,) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise InputError(f"weights must be a law over the world's {pop.size} pairs")
    B = float(world.B if radius is None else radius)
    t0 = time.perf_counter()
    rng = make_rng(seed)
    d = world.dim
    inits = [np.asarray(world.theta_ref, dtype=float).copy()]
    from .dpo import dpo

    try:
        inits.append(dpo(pop.data.X, pop.data.y, w, beta=world.beta, radius=B,
                         theta_ref=world.theta_ref).theta)  # fmt: skip
    except Exception:  # noqa: BLE001 - a start only; the others remain
        pass
    while len(inits) < max(int(starts), 1):
        v = rng.standard_normal(d)
        inits.append(v / np.linalg.norm(v) * B * rng.uniform() ** (1.0 / d))
    cons = [{"type": "ineq", "fun": lambda t: B * B - t @ t, "jac": lambda t: -2.0 * t}]
    best, values = None, []
    for th0 in inits:
        res = minimize(
            lambda t: _risk_and_grad(world, t, w, r_max),
            np.clip(th0, -B, B) if np.linalg.norm(th0) <= B else th0 * B / np.linalg.norm(th0),
            jac=True,
            method="SLSQP",
            constraints=cons,
            options={"maxiter": 500, "ftol": 1e-12},
        )
        th = np.asarray(res.x, dtype=float)
        if np.linalg.norm(th) > B:
            th *= B / np.linalg.norm(th)
        val = chipo_risk(world, th, w, r_max=r_max)
        values.append(val)
        if best is None or val < best[1]:
            best = (th, val)
    return ExactResult(
        theta=best[0],
        value=best[1],
        status=STATUS_LOCAL,
        method="chipo",
        info={
            "solver": "scipy SLSQP, multi-start",
            "starts": len(inits),
            "local_values": values,
            "seconds": time.perf_counter() - t0,
        },
        regime=REGIME_LOCAL,
    )


__all__ = [
    "REGIME_LOCAL",
    "STATUS_LOCAL",
    "chipo",
    "chipo_link",
    "chipo_loss",
    "chipo_margins",
    "chipo_risk",
    "pair_log_ratios",
    "world_log_ratios",
]
