"""The KL tilt at fixed losses and its radius root (docs/theory.md#kl-dual).

For per-pair losses ``l`` (n,) (nats) and a base law ``p`` (n,), the KL ball's worst case at a
fixed multiplier ``lam > 0`` is the tilted law ``q_lam ∝ p exp(l / lam)``; the optimal
multiplier for radius ``rho`` solves ``KL(q_lam || p) = rho`` (0 in the max-loss regime
``rho >= -log P(argmax l)``).

This module is deliberately apart from the fast solver (:mod:`.fast`): the KL certificates
(:mod:`.certificates`) and the audit (:mod:`rdpo_theory.audit`) recompute the worst case at a
returned theta through these one-dimensional functions, independently of the Newton iteration
on ``(theta, lam)`` that produced it.
"""

from __future__ import annotations

import numpy as np

LOG2 = float(np.log(2.0))

#: Below this radius the primal supremum comes from the centred small-radius expansion
#: (:func:`kl_small_radius_bounds`, whose two ends differ by O(rho)) rather than from the
#: tilt's root: at ``lam ~ 1 / sqrt(rho)`` the root's KL is a difference of numbers of order one,
#: and its value was measured up to 3e-10 nats above a valid upper bound at rho = 1e-13.
SMALL_RHO = 1e-10


def with_zero_atom(l, p, p0: float):
    """``(l, p)`` with one more atom of loss log 2 and mass ``p0`` when ``p0 > 0``: the rows
    with x = 0, aggregated (their margin, hence their loss, does not depend on theta)."""
    if p0 > 0:
        return np.concatenate([l, [LOG2]]), np.concatenate([p, [p0]])
    return l, p


def kl_lambda_for_theta(
    l, p, rho, *, p0: float = 0.0, lam_max: float | None = None, hint: float | None = None
) -> float:
    """The optimal multiplier at fixed losses: the root of ``KL(q_lam || p) = rho``, where
    ``q_lam ∝ p exp(l / lam)``; 0 when ``rho >= -log P(argmax l)`` (the max-loss regime).
    ``hint``: a nearby multiplier (e.g. the solver's), where the search starts; the root is
    the same to float64 resolution, found in fewer evaluations."""
    pos = p > 0
    ll, pp = with_zero_atom(l[pos], p[pos], p0)
    spread = float(ll.max() - ll.min())
    if spread <= 1e-15 * max(1.0, abs(float(ll.max()))):
        return 0.0
    top = ll >= ll.max() - 1e-14 * max(1.0, abs(float(ll.max())))
    if rho >= -np.log(pp[top].sum()):
        return 0.0
    return _kl_root(ll, pp, rho, spread, hint)


def kl_tilt(ll, pp, lam):
    """``(q, KL(q || p), E_q l)`` for ``q ∝ pp exp(ll / lam)``."""
    # losses shifted by their max before dividing: at lam ~ spread << |l| the differences
    # l_i - l_j stay exact (l / lam would carry an absolute error |l| eps / lam)
    a = (ll - ll.max()) / lam + np.log(pp)
    a = a - a.max()
    e = np.exp(a)
    q = e / e.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = float(np.sum(np.where(q > 0, q * (np.log(q) - np.log(pp)), 0.0)))
    return q, kl, float(q @ ll)


def _kl_root(ll, pp, rho, spread, hint=None) -> float:
    """Solve ``KL(q_lam || p) = rho`` in ``s = log lam`` (KL decreases in lam): bracket, then
    Newton on ``KL(e^s) - rho`` with ``dKL/ds = -Var_q(l) / lam^2``, safeguarded by the
    bracket (bisection when a step leaves it), to float64 resolution; Brent as a fallback."""
    from scipy.optimize import brentq

    top = ll - ll.max()  # shifted once: each evaluation is one exp over n
    logp = np.log(pp)

    def kl_and_slope(s):
        lam = np.exp(s)
        b = top / lam
        a = b + logp
        M = float(a.max())
        e = np.exp(a - M)
        Z = float(e.sum())
        q = e / Z
        mean = float(q @ b)  # E_q l / lam, shifted
        kl = mean - M - np.log(Z)  # sum q (log q - log p)
        var = float(q @ (b - mean) ** 2)  # Var_q(l) / lam^2
        return kl - rho, -var

    f = lambda s: kl_and_slope(s)[0]  # noqa: E731
    near = hint is not None and np.isfinite(hint) and hint > 0
    s0 = float(np.log(hint)) if near else float(np.log(spread))
    width = 0.05 if near else 3.0
    lo, hi = s0 - width, s0 + width
    while f(lo) < 0:
        lo -= 5.0
        if lo < -700:
            return 0.0
    while f(hi) > 0:
        hi += 5.0
    s = s0 if near and lo < s0 < hi else 0.5 * (lo + hi)
    for _ in range(100):
        g, dg = kl_and_slope(s)
        if g > 0:
            lo = s
        elif g < 0:
            hi = s
        else:
            return float(np.exp(s))
        step = -g / dg if dg < 0 else np.nan
        nxt = s + step
        if not (lo < nxt < hi):  # Newton left the bracket: bisect
            nxt = 0.5 * (lo + hi)
        if abs(nxt - s) <= 1e-15 * max(1.0, abs(s)) or hi - lo <= 1e-15 * max(1.0, abs(s)):
            return float(np.exp(nxt))
        s = nxt
    return float(np.exp(brentq(f, lo, hi, xtol=1e-15, rtol=1e-15, maxiter=200)))


# ---------------------------------------------------------------------------- tiny radii
def _xlog1px_minus_x(x):
    """``(1 + x) log(1 + x) - x`` elementwise for ``x > -1``, without cancellation near 0
    (series for ``|x| < 1e-3``, relative error under 1e-13)."""
    x = np.asarray(x, dtype=float)
    series = x * x * (0.5 + x * (-1.0 / 6.0 + x * (1.0 / 12.0 - x / 20.0)))
    return np.where(np.abs(x) < 1e-3, series, (1.0 + x) * np.log1p(x) - x)


def _expm1_minus_x(x):
    """``exp(x) - 1 - x`` elementwise, without cancellation near 0 (series for ``|x| < 1e-3``,
    relative error under 1e-13)."""
    x = np.asarray(x, dtype=float)
    series = x * x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x / 120.0)))
    return np.where(np.abs(x) < 1e-3, series, np.expm1(x) - x)


def kl_small_radius_bounds(ll, pp, rho: float) -> dict:
    """Both ends of ``S = sup { E_q l : KL(q || p) <= rho }`` for a radius under the
    resolution of the tilt's root find (docs/theory.md#kl-small-radius).

    With ``d = l - E_p l`` and ``V = Var_p(l)``, the supremum is
    ``E_p l + sqrt(2 rho V) + O(rho)``. Every quantity is computed around ``E_p l``, so no
    difference of numbers of order one is taken:

    * **lower end** (a feasible point): ``q = p (1 + t d)`` with ``t ~ sqrt(2 rho / V)``
      shrunk until ``KL(q || p) = sum_i p_i phi(t d_i) <= rho``, with
      ``phi(x) = (1 + x) log(1 + x) - x`` by its series (exact because ``sum_i p_i d_i = 0``);
      ``E_q l = E_p l + t V``;
    * **upper end** (weak duality at any ``lam > 0``):
      ``E_p l + lam rho + lam log1p(sum_i p_i expm1(d_i / lam))``, minimised over ``lam``
      near ``sqrt(V / (2 rho))``.

    ``ll``, ``pp``: losses (nats) and a law (sums to 1) on the support, shape (n,).
    Returns ``{"q", "kl", "primal", "dual", "lam"}``; with ``V = 0`` (equal losses)
    ``q = p``, both ends are ``E_p l`` and ``lam = inf``.
    """
    from scipy.optimize import minimize_scalar

    ll = np.asarray(ll, dtype=float)
    pp = np.asarray(pp, dtype=float)
    mean = float(pp @ ll)
    d = ll - mean
    mean += float(pp @ d)  # a second pass: E_p d = 0 to the last bit
    d = ll - mean
    V = float(pp @ (d * d))
    if not V > 0 or rho <= 0:
        return dict(q=pp.copy(), kl=0.0, primal=mean, dual=mean, lam=float("inf"))
    target = rho * (1.0 - 1e-9)
    t = min(np.sqrt(2.0 * target / V), 0.5 / max(float(-d.min()), 1e-300))
    kl = float(pp @ _xlog1px_minus_x(t * d))
    for _ in range(60):  # KL(t) ~ t^2 V / 2: each rescale lands within a hair of the target
        if kl <= target:
            break
        t *= 0.999 * np.sqrt(target / kl)
        kl = float(pp @ _xlog1px_minus_x(t * d))
    else:
        t, kl = 0.0, 0.0
    q = pp * (1.0 + t * d)
    primal = mean + t * V

    def dual(s):  # s = log lam
        lam = np.exp(s)
        x = d / lam
        inner = float(pp @ _expm1_minus_x(x)) + float(pp @ x)
        return lam * rho + lam * np.log1p(inner)

    s0 = 0.5 * np.log(V / (2.0 * rho))
    opt = minimize_scalar(
        dual, bounds=(s0 - 2.0, s0 + 2.0), method="bounded", options={"xatol": 1e-10}
    )
    s = float(opt.x) if dual(float(opt.x)) <= dual(s0) else s0
    return dict(q=q / q.sum(), kl=kl, primal=primal, dual=mean + dual(s), lam=float(np.exp(s)))
