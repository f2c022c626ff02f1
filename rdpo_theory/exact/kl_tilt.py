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


def kl_lambda_for_theta(
    l, p, rho, *, p0: float = 0.0, lam_max: float | None = None, hint: float | None = None
) -> float:
    """The optimal multiplier at fixed losses: the root of ``KL(q_lam || p) = rho``, where
    ``q_lam ∝ p exp(l / lam)``; 0 when ``rho >= -log P(argmax l)`` (the max-loss regime).
    ``hint``: a nearby multiplier (e.g. the solver's), where the search starts; the root is
    the same to float64 resolution, found in fewer evaluations."""
    pos = p > 0
    ll = np.concatenate([l[pos], [LOG2]]) if p0 > 0 else l[pos]
    pp = np.concatenate([p[pos], [p0]]) if p0 > 0 else p[pos]
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
