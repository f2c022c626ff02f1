"""Constants and estimation-error bounds of the robust-DPO theory (docs/theory.md#bounds).

Every bound is a plain function of its constants so a study can evaluate it on a grid of n.
Items docs/theory.md#bounds marks *(reconstructed)* (Proposition 1, Theorems 1 and 2) are
rebuilt from
the proofs of Xu et al. (arXiv 2502.01930), not copied from a statement: their docstrings say
so, and a measured error above one of them is first evidence against the reconstruction.

Coverage (Assumption 2) needs ``lam0 <= lambda_min(Sigma_P)`` for every P in the uncertainty
set, ``Sigma_P = E_P[x x^T]``. :func:`coverage_p0` gives ``lambda_min(Sigma_P0)`` exactly.
The infimum over a ball is the minimum of a concave function of P (``lambda_min`` of a linear
map of P) over a convex set, which is *not* a convex program, so :func:`coverage_kl` and
:func:`coverage_wasserstein` return a bracket ``lower <= inf <= upper``:

* ``lower`` is **certified** (a proof-backed inequality, documented per function);
* ``upper`` is **attained**: ``lambda_min(Sigma_Q)`` of an explicit distribution Q in the
  ball, found by alternating minimisation from several starts (a local search: the true
  infimum may be lower, never higher). When the two meet the value is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq, minimize_scalar
from scipy.special import expit, log_expit, logsumexp

from . import _validate as V
from .data import PreferenceData, as_data
from .errors import InputError
from .options import (
    NONNEGATIVE,
    OPEN_UNIT,
    POSITIVE,
    POSITIVE_INT,
    POSITIVE_OR_INF,
    SEED,
    Interval,
    Options,
    check,
    declare,
)
from .rng import make_rng

#: The order p of a Wasserstein distance: a float >= 1.
ORDER = [Interval(float, 1, None, closed="left")]


# ---------------------------------------------------------------------------- argument checks
def _n(n) -> float:
    """Sample size(s) n >= 2 (a scalar or an array)."""
    a = np.asarray(n, dtype=np.float64)
    if a.size == 0:
        raise InputError("n is empty")
    if not np.all(np.isfinite(a)) or np.any(a < 2):
        raise InputError(f"n must be >= 2 (and finite), got {n!r}")
    return a if a.ndim else float(a)


def check_delta(delta) -> float:
    """The confidence level ``delta`` in (0, 1) of the bounds as a float, checked by
    :func:`rdpo_theory.options.check` (for callers outside a declared function)."""
    return float(check("delta", delta, OPEN_UNIT))


# ---------------------------------------------------------------------------- constants
@declare({"beta": POSITIVE, "B": POSITIVE})
def gamma(beta: float, B: float) -> float:
    """Strong-convexity constant of the DPO loss on ``Theta = {||theta|| <= B}``.

    The Hessian of l is ``beta^2 sigmoid(beta h) sigmoid(-beta h) x x^T`` and ``|h| <= 4B``, so

        gamma = beta^2 e^{4 beta B} / (1 + e^{4 beta B})^2
              = beta^2 sigmoid(4 beta B) sigmoid(-4 beta B)      (computed this way: stable).

    Units: per squared parameter unit. docs/theory.md#bounds (not reconstructed).
    """
    t = 4.0 * beta * B
    return float(beta**2 * expit(t) * expit(-t))


@declare({"beta": POSITIVE, "B": POSITIVE})
def K(beta: float, B: float) -> float:
    """Loss bound ``K = |log sigmoid(-4 beta B)| = log(1 + e^{4 beta B})`` (nats).

    The largest DPO loss on Theta (|h| <= 4B). It is also the loss bound ``L`` of Theorem 2.
    docs/theory.md#bounds, Theorem 1 (reconstructed).
    """
    return float(-log_expit(-4.0 * beta * B))


@declare({"rho": POSITIVE, "beta": POSITIVE, "B": POSITIVE})
def kl_multiplier_upper(rho: float, beta: float, B: float) -> float:
    """A certified upper bound ``lam_hi = K / rho`` on the KLDPO dual multiplier lam*.

    Proof: with losses in [0, K], the dual value ``lam rho + lam log E exp(l / lam)`` is at least
    ``lam rho + E l >= lam rho`` (Jensen), and the robust value is at most ``max l <= K``; so
    ``lam* rho <= K``.
    """
    return K(beta, B) / rho


# ---------------------------------------------------------------------------- bounds
@declare(
    {
        "d": POSITIVE_INT,
        "delta": OPEN_UNIT,
        "beta": POSITIVE,
        "B": POSITIVE,
        "lam0": POSITIVE,
        "lam": [*POSITIVE, None],
    }
)
def proposition1(n, d: int, delta: float, beta: float, B: float, lam0: float, *, lam=None):
    """Proposition 1 (DPO, reconstructed): with probability ``1 - delta``,

        ||theta_n - theta*||_{Sigma_D + lam I}
            <= sqrt( 16 beta^2 (d + log(1/delta)) / (gamma^2 n) + 8 lam B^2 ),

    with ``Sigma_D`` the empirical second moment ``(1/n) sum x_i x_i^T``, ``gamma`` from
    :func:`gamma` and ``lam = lam0`` as docs/theory.md#bounds states it. The proof's argument
    holds for any
    fixed ``lam > 0`` (pass ``lam``). With a fixed ``lam`` the bound has the floor
    ``sqrt(8 lam B^2)``: its n^-1/2 part is the first term. Reconstructed from the paper's
    proof (docs/theory.md#bounds); compare it with the ``Sigma_D + lam I`` norm of the error.

    Parameters
    ----------
    n : float or array, >= 2
    d : int >= 1
    delta : float in (0, 1)
    beta, B, lam0 : float > 0
    lam : float > 0, optional (default lam0)

    Returns
    -------
    float or ndarray (like n)
    """
    n = _n(n)
    lam = lam0 if lam is None else lam
    g = gamma(beta, B)
    return np.sqrt(16 * beta**2 * (d + math.log(1 / delta)) / (g**2 * n) + 8 * lam * B**2)


@declare(
    {"delta": OPEN_UNIT, "beta": POSITIVE, "B": POSITIVE, "lam0": POSITIVE, "squared": ["boolean"]}
)
def theorem1(n, delta: float, beta: float, B: float, lam0: float, *, squared: bool = False):
    """Theorem 1 (WDPO, reconstructed): with probability ``1 - delta``,

        ||theta^W_n - theta^W||_2^2 <= (4 K / (gamma lam0)) sqrt( log(2/delta) / (2 n) ),

    ``K`` from :func:`K`, ``gamma`` from :func:`gamma`, ``lam0`` the coverage constant over the
    Wasserstein ball (:func:`coverage_wasserstein`). Returns the bound on the norm (rate
    n^-1/4), or on the squared norm with ``squared=True``. Reconstructed (docs/theory.md#bounds).
    """
    n = _n(n)
    sq = 4 * K(beta, B) / (gamma(beta, B) * lam0) * np.sqrt(math.log(2 / delta) / (2 * n))
    return sq if squared else np.sqrt(sq)


@declare(
    {
        "delta": OPEN_UNIT,
        "beta": POSITIVE,
        "B": POSITIVE,
        "lam0": POSITIVE,
        "lam_lo": POSITIVE,
        "lam_hi": POSITIVE,
        "L": [*POSITIVE, None],
        "squared": ["boolean"],
    }
)
def theorem2(
    n,
    delta: float,
    beta: float,
    B: float,
    lam0: float,
    lam_lo: float,
    lam_hi: float,
    *,
    L: float | None = None,
    squared: bool = False,
):
    """Theorem 2 (KLDPO, reconstructed): with probability ``1 - delta``,

        ||theta^KL_n - theta^KL||_2^2
            <= (4 lam_hi e^{L / lam_lo} / (gamma lam0)) sqrt( log(2/delta) / (2 n) ),

    where ``[lam_lo, lam_hi]`` contains the dual multipliers, ``L`` bounds the loss (default
    :func:`K`) and ``lam0`` is the coverage constant over the KL ball (:func:`coverage_kl`).
    ``lam_hi = K / rho`` is certified (:func:`kl_multiplier_upper`); ``lam_lo`` has no a-priori
    value. Computed in log space; ``inf`` when the constant overflows a float (the bound is
    then vacuous). Returns the norm bound (rate n^-1/4), or its square with ``squared=True``.
    Reconstructed (docs/theory.md#bounds).
    """
    n = _n(n)
    if lam_lo > lam_hi:
        raise InputError(f"lam_lo must be <= lam_hi, got {lam_lo} > {lam_hi}")
    L = K(beta, B) if L is None else L
    log_sq = (
        math.log(4 * lam_hi)
        + L / lam_lo
        - math.log(gamma(beta, B) * lam0)
        + 0.5 * np.log(math.log(2 / delta) / (2 * n))
    )
    with np.errstate(over="ignore"):
        sq = np.exp(log_sq)
        return sq if squared else np.exp(0.5 * log_sq)


@declare({"kind": [Options(("dpo", "wdpo", "kldpo"))]})
def fitted_rate(kind: str) -> float:
    """The rate exponent a bound proves: -1/2 for ``"dpo"``, -1/4 for ``"wdpo"``/``"kldpo"``."""
    rates = {"dpo": -0.5, "wdpo": -0.25, "kldpo": -0.25}
    return rates[kind]


# ---------------------------------------------------------------------------- coverage
@dataclass(frozen=True)
class CoverageBound:
    """Bracket on ``inf_{P in ball} lambda_min(Sigma_P)``.

    Attributes
    ----------
    p0 : float
        ``lambda_min(Sigma_P0)`` (exact).
    lower : float
        Certified lower bound on the infimum (``>= 0``).
    upper : float
        ``lambda_min(Sigma_Q)`` of an explicit Q in the ball: the infimum is at most this.
    lower_method, upper_method : str
        How each side was obtained.
    worst : ndarray or None
        The attaining Q's weights on the candidates (finite case) or None.
    info : dict
    """

    p0: float
    lower: float
    upper: float
    lower_method: str
    upper_method: str
    worst: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        """True when the bracket has closed (to 1e-9 relative)."""
        return self.upper - self.lower <= 1e-9 * max(1.0, abs(self.upper))


def _data(data) -> PreferenceData:
    from .worlds import World

    if isinstance(data, World):
        return data.population.data
    return as_data(data)


def _lmin(X, w) -> tuple[float, np.ndarray]:
    vals, vecs = np.linalg.eigh((X * w[:, None]).T @ X)
    return float(vals[0]), vecs[:, 0]


def coverage_p0(data) -> float:
    """``lambda_min(Sigma_P0)``, ``Sigma_P0 = sum_i p_i x_i x_i^T``, for a World or data."""
    d = _data(data)
    return _lmin(d.X, d.weights)[0]


def _kl_bin(q, p):
    """Binary KL(q || p) in nats (elementwise, 0 log 0 = 0)."""
    q = np.asarray(q, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(q > 0, q * np.log(q / p), 0.0)
        b = np.where(q < 1, (1 - q) * np.log((1 - q) / (1 - p)), 0.0)
    return a + b


def _kl_mass_floor(p: np.ndarray, rho: float) -> np.ndarray:
    """Smallest ``Q({i})`` allowed by ``KL(Q || P) <= rho`` for a point of P-mass ``p``
    (data processing onto the event {i}): the root in [0, p] of ``kl_bin(q || p) = rho``."""
    out = np.zeros_like(p)
    for j, pj in enumerate(p):
        if pj <= 0 or pj >= 1:
            out[j] = pj
            continue
        if -math.log1p(-pj) <= rho:  # kl_bin(0 || p) <= rho: the point can vanish
            continue
        out[j] = brentq(lambda q, pj=pj: float(_kl_bin(q, pj)) - rho, 0.0, pj, xtol=1e-15)
    return out


def _kl_tilt(f: np.ndarray, p: np.ndarray, rho: float) -> np.ndarray:
    """``argmin_{KL(q||p) <= rho} E_q f``: ``q ∝ p exp(-f / lam)`` with ``KL(q||p) = rho``, or p
    restricted to argmin f when that is within the ball."""
    fmin = f.min()
    at_min = f <= fmin + 1e-14 * max(1.0, abs(fmin))
    pm = p[at_min].sum()
    if -math.log(pm) <= rho:
        q = np.where(at_min, p, 0.0)
        return q / q.sum()

    def q_of(loglam):
        z = np.log(np.maximum(p, 1e-300)) - (f - fmin) / math.exp(loglam)
        z = np.where(p > 0, z, -np.inf)
        return np.exp(z - logsumexp(z))

    def kl(loglam):
        q = q_of(loglam)
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.sum(np.where(q > 0, q * np.log(q / p), 0.0))) - rho

    lo, hi = -30.0, 30.0
    if kl(hi) >= 0:  # rho tinier than float resolution: q = p
        return p.copy()
    return q_of(brentq(kl, lo, hi, xtol=1e-13))


@declare({"rho": NONNEGATIVE, "restarts": POSITIVE_INT, "iters": POSITIVE_INT, "seed": SEED})
def coverage_kl(data, rho: float, *, restarts: int = 8, iters: int = 50, seed=0) -> CoverageBound:
    """Bracket ``inf { lambda_min(Sigma_Q) : KL(Q || P0) <= rho }`` for a finite P0.

    ``lower`` (certified) is the larger of two bounds, both valid for every Q in the ball:

    * chord bound: for ``f = (u.x)^2 in [0, M]`` (``M = max ||x_i||^2``) and any ``lam > 0``,
      ``E_Q f >= -lam rho - lam log E_P0 e^{-f/lam}`` (Donsker-Varadhan), and convexity of
      ``e^{-t}`` on ``[0, M/lam]`` gives ``E_P0 e^{-f/lam} <= 1 - (1 - e^{-M/lam}) lambda0 / M``
      with ``lambda0 = lambda_min(Sigma_P0)``; maximised over lam (tight as rho -> 0);
    * mass floors: ``Q({i}) >= q_i`` where ``kl_bin(q_i || p_i) = rho`` (data processing), so
      ``Sigma_Q >= sum_i q_i x_i x_i^T``.

    ``upper`` alternates ``u <- argmin eigenvector of Sigma_Q`` and ``Q <- argmin_{ball} E_Q
    (u.x)^2`` (an exponential tilt of P0, exact), from ``restarts`` random directions and the
    P0 eigenvector; each step cannot increase ``lambda_min(Sigma_Q)``.

    Parameters
    ----------
    data : World or PreferenceData
        The finite nominal law P0 (support rows and weights).
    rho : float >= 0
        KL radius (nats).

    Returns
    -------
    CoverageBound
    """
    d = _data(data)
    keep = d.weights > 0
    X, p = d.X[keep], d.weights[keep]
    lam0, v0 = _lmin(X, p)
    if rho == 0:
        return CoverageBound(lam0, lam0, lam0, "exact (rho = 0)", "exact (rho = 0)", p)
    M = float(np.max(np.sum(X**2, axis=1)))
    # chord bound, maximised over log lam
    c = min(lam0 / M, 1.0) if M > 0 else 0.0

    def neg_chord(loglam):
        lam = math.exp(loglam)
        inner = 1.0 - c * (-math.expm1(-M / lam))
        return lam * rho + lam * math.log(max(inner, 1e-300))

    best = minimize_scalar(
        neg_chord, bounds=(-25.0, 25.0), method="bounded", options={"xatol": 1e-10}
    )
    chord = max(0.0, -float(best.fun))
    floor = _lmin(X, _kl_mass_floor(p, rho))[0]
    lower = max(chord, floor, 0.0)
    # upper: alternating minimisation from several directions
    rng = make_rng(seed)
    starts = [v0] + [u / np.linalg.norm(u) for u in rng.standard_normal((restarts, d.d))]
    upper, worst = math.inf, p
    for u in starts:
        val, qbest = math.inf, p
        for _ in range(iters):
            q = _kl_tilt((X @ u) ** 2, p, rho)
            new, u_new = _lmin(X, q)
            if new >= val - 1e-13:
                break
            val, qbest, u = new, q, u_new
        if val < upper:
            upper, worst = val, qbest
    upper = max(upper, lower)  # rounding can put the attained value a hair below
    full = np.zeros(d.n)
    full[keep] = worst
    return CoverageBound(
        lam0,
        lower,
        upper,
        "certified: max(chord bound, KL mass floors)",
        "attained: alternating minimisation (local)",
        full,
        {"chord": chord, "mass_floor": floor, "M": M},
    )


def _min_transport(f, p, C, budget):
    """``min sum_ik pi_ik f_k`` over plans with row sums p and ``sum pi_ik C_ik <= budget``:
    the exact solvers' transport LP (HiGHS) with losses ``-f``. Returns the target weights
    ``sum_i pi_ik`` (K,)."""
    from .exact.certificates import transport_primal_sup

    plan = transport_primal_sup(-np.asarray(f, float), p, C, budget)[1]
    return plan.sum(axis=0)


@declare(
    {
        "rho": NONNEGATIVE,
        "p": ORDER,
        "kappa": POSITIVE_OR_INF,
        "restarts": POSITIVE_INT,
        "iters": POSITIVE_INT,
        "seed": SEED,
    }
)
def coverage_wasserstein(
    data,
    rho: float,
    *,
    p: float = 1.0,
    kappa: float = math.inf,
    candidates=None,
    cost=None,
    restarts: int = 4,
    iters: int = 30,
    seed=0,
) -> CoverageBound:
    """Bracket ``inf { lambda_min(Sigma_Q) : W_p(Q, P0) <= rho }`` for a finite P0.

    The ground cost is ``d(z, z') = ||x - x'||_2 + kappa 1[y != y']``
    (docs/theory.md#wasserstein-dro) or a
    user matrix ``cost`` (|support| x |candidates|, the distance d, not d^p). Q lives on
    ``candidates`` (rows of a PreferenceData or ``(Xc, yc)``), or on all of R^d when
    ``candidates`` is None (continuous case; then only the default cost is allowed).

    ``lower`` (certified): for unit u, ``(u.x)^2 - (u.x')^2 <= 2 R ||x - x'||`` with
    ``R = max ||x_i||`` over P0's support, and ``W_1`` in the x-metric is at most
    ``W_p <= rho`` divided by ``a = min d(z, z') / ||x - x'||`` (a = 1 for the default cost),
    so ``lambda_min(Sigma_Q) >= lambda0 - 2 R rho / a``.

    ``upper`` (attained): alternating minimisation as in :func:`coverage_kl`; for fixed u the
    cheapest way to lower ``E (u.x)^2`` is an LP over transport plans onto the candidates
    (HiGHS), or, in the continuous case with p = 1, water-filling: shrink each ``|u.x_i|`` to
    ``min(|u.x_i|, t)`` with ``sum p_i (|u.x_i| - t)_+ = rho``.
    """
    d = _data(data)
    rho, p, kappa = float(rho), float(p), float(kappa)
    keep = d.weights > 0
    X, y, w = d.X[keep], d.y[keep], d.weights[keep]
    lam0, v0 = _lmin(X, w)
    R = float(np.max(np.linalg.norm(X, axis=1)))
    if candidates is None:
        if cost is not None:
            raise InputError("cost needs candidates (a finite target set)")
        if p != 1:
            raise InputError("the continuous (candidates=None) coverage supports p = 1 only")
        Xc = None
        a = 1.0
    else:
        cd = candidates if isinstance(candidates, PreferenceData) else None
        Xc, yc = (cd.X, cd.y) if cd is not None else map(np.asarray, candidates)
        Xc = V.as_matrix(Xc, "candidates X")
        if Xc.shape[1] != d.d:
            raise InputError(f"candidates must have d = {d.d} columns, got {Xc.shape[1]}")
        dx = np.linalg.norm(X[:, None, :] - Xc[None, :, :], axis=-1)
        if cost is None:
            from .exact.wasserstein import default_cost

            D = default_cost(X, y, Xc, np.asarray(yc, float), kappa)
            a = 1.0
        else:
            D = np.asarray(cost, dtype=np.float64)
            if D.shape != (d.n, Xc.shape[0]):
                raise InputError(f"cost must have shape {(d.n, Xc.shape[0])}, got {D.shape}")
            if np.any(D < 0) or np.any(np.isnan(D)):
                raise InputError("cost must be non-negative")
            D = D[keep]
            moved = dx > 1e-12
            a = float(np.min(D[moved] / dx[moved])) if moved.any() else math.inf
        C = np.where(np.isfinite(D), D**p, np.inf)
    lower = max(0.0, lam0 - (2 * R * rho / a if a > 0 else math.inf))
    if rho == 0:
        return CoverageBound(lam0, lam0, lam0, "exact (rho = 0)", "exact (rho = 0)")
    rng = make_rng(seed)
    starts = [v0] + [u / np.linalg.norm(u) for u in rng.standard_normal((restarts, d.d))]
    upper, worst = math.inf, None
    for u in starts:
        val, q = math.inf, None
        for _ in range(iters):
            if Xc is None:
                s = np.abs(X @ u)
                t = _water_level(s, w, rho)
                Xq = X - np.outer(np.sign(X @ u) * np.maximum(s - t, 0.0), u)
                new, u_new = _lmin(Xq, w)
                q_now = None
            else:
                q_now = _min_transport((Xc @ u) ** 2, w, C, rho**p)
                new, u_new = _lmin(Xc, q_now)
            if new >= val - 1e-13:
                break
            val, q, u = new, q_now, u_new
        if val < upper:
            upper, worst = val, q
    upper = max(upper, lower)
    return CoverageBound(
        lam0,
        lower,
        upper,
        f"certified: lambda0 - 2 R rho / a (R = {R:.4g}, a = {a:.4g})",
        "attained: alternating minimisation (local)",
        worst,
        {"R": R, "a": a},
    )


def _water_level(s: np.ndarray, w: np.ndarray, rho: float) -> float:
    """``t >= 0`` with ``sum_i w_i (s_i - t)_+ = rho`` (0 when the budget removes everything)."""
    if float(w @ s) <= rho:
        return 0.0
    return brentq(
        lambda t: float(w @ np.maximum(s - t, 0.0)) - rho, 0.0, float(s.max()), xtol=1e-15
    )
