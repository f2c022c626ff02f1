"""The KL ball: its tilt at fixed losses, the radius root and the set object
(docs/theory.md#kl-dual, docs/theory.md#ambiguity-sets).

For per-pair losses ``l`` (n,) (nats) and a base law ``p`` (n,), the KL ball's worst case at a
fixed multiplier ``lam > 0`` is the tilted law ``q_lam ∝ p exp(l / lam)``; the optimal
multiplier for radius ``rho`` solves ``KL(q_lam || p) = rho`` (0 in the max-loss regime
``rho >= -log P(argmax l)``).

These one-dimensional functions are deliberately apart from the fast solver
(:mod:`rdpo_theory.exact.fast`): the KL certificates (:mod:`rdpo_theory.exact.certificates`),
the exact robust risk and the audit (:mod:`rdpo_theory.audit`) recompute the worst case at a
returned theta through them, independently of the Newton iteration on ``(theta, lam)`` that
produced it. Pure numpy (scipy on first use): no torch, no cvxpy.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import SolverError
from .base import AmbiguitySet, Supremum, argmax_set, check_alpha, losses_weights

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


def kl_root_value(l, p, rho: float, *, p0: float = 0.0, hint: float | None = None) -> float:
    """``sup { E_q l : KL(q || p) <= rho }`` (nats) from the tilted law whose KL is ``rho``
    (the KKT point of the primal, so ``E_q l`` is the supremum), or ``max l`` in the max-loss
    regime. ``p0``: mass of an extra atom of loss log 2 (:func:`with_zero_atom`); ``hint``: a
    nearby multiplier (:func:`kl_lambda_for_theta`). Raises :class:`~rdpo_theory.SolverError`
    when the tilt's KL misses ``rho`` (losses spread beyond float64)."""
    pos = p > 0
    ll, pp = with_zero_atom(l[pos], p[pos], p0)
    lam = kl_lambda_for_theta(l, p, rho, p0=p0, hint=hint)
    if lam == 0.0:  # rho >= -log P(argmax): the adversary puts all mass on the argmax set
        return float(ll.max())
    q, kl, value = kl_tilt(ll, pp, lam)
    if not abs(kl - rho) <= 1e-9 * max(rho, 1e-12) + 1e-14:
        raise SolverError(
            f"KL certificate: the tilted distribution has KL {kl!r}, not rho = {rho!r}.",
            status="root_inaccurate",
            hint="rescale beta (the losses' spread is at the limit of float64).",
        )
    return value


def kl_worst_case(lo: np.ndarray, p: np.ndarray, rho: float) -> tuple[np.ndarray, float]:
    """``(q, lam)``: the law (n,) attaining ``sup { E_q l : KL(q || p) <= rho }`` and its
    multiplier (0 in the max-loss regime, inf at ``rho = 0`` or below :data:`SMALL_RHO`, where
    ``q`` is the centred feasible point of :func:`kl_small_radius_bounds`). Raises
    :class:`~rdpo_theory.SolverError` when the root does not reproduce the radius."""
    if rho == 0:
        return p.copy(), math.inf
    pos = p > 0
    if rho < SMALL_RHO:  # under the root's resolution: the centred feasible point
        q = np.zeros_like(p)  # (docs/theory.md#kl-small-radius)
        q[pos] = kl_small_radius_bounds(lo[pos], p[pos] / p[pos].sum(), rho)["q"]
        return q, math.inf
    lam = kl_lambda_for_theta(lo, p, rho)
    q = np.zeros_like(p)
    if lam == 0.0:  # max-loss regime (or constant losses): p restricted to the argmax set
        top = argmax_set(lo, p)
        if -math.log(p[top].sum()) > rho * (1 + 1e-9) + 1e-14:
            raise SolverError(
                f"KL worst case: no multiplier reproduces radius {rho!r} "
                "(the losses' spread is at the limit of float64).",
                status="root_failed",
                hint="rescale the losses (e.g. a smaller beta).",
            )
        q[top] = p[top] / p[top].sum()
        return q, 0.0
    qp, kl, _ = kl_tilt(lo[pos], p[pos], lam)
    if not abs(kl - rho) <= 1e-9 * max(rho, 1e-12) + 1e-14:
        raise SolverError(
            f"KL worst case: the tilted distribution has KL {kl!r}, not the radius {rho!r}.",
            status="root_inaccurate",
            hint="rescale the losses (e.g. a smaller beta).",
        )
    q[pos] = qp
    return q, lam


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


def kl_divergence(q, p) -> float:
    """``KL(q || p) = sum_i q_i log(q_i / p_i)`` in nats (0 log 0 = 0; inf if q charges p = 0)."""
    from scipy.special import rel_entr

    q = np.asarray(q, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    return float(np.sum(rel_entr(q, p)))


def kl_dual_value(l, p, rho: float, lam: float) -> float:
    """The KL dual ``lam rho + lam log E_p exp(l / lam)`` (nats) at ``lam > 0``, computed around
    ``max l``; ``max l`` over the support at ``lam = 0``. ``>= sup { E_q l : KL(q||p) <= rho }``
    for every ``lam >= 0`` (docs/theory.md#kl-dual)."""
    pos = p > 0
    ll, pp = l[pos], p[pos]
    top = float(ll.max())
    if lam == 0:
        return top
    if not np.isfinite(lam):
        return float(pp @ ll) if rho == 0 else math.inf
    from scipy.special import logsumexp

    return top + lam * rho + lam * float(logsumexp((ll - top) / lam, b=pp))


class KL(AmbiguitySet):
    """The KL ball ``{q : KL(q || p) = sum_i q_i log(q_i / p_i) <= rho}`` (rho in nats).

    Worst case: the tilt ``q ∝ p exp(l / lam)`` with ``KL(q || p) = rho``, or ``p`` on the
    argmax set when ``rho >= -log P(argmax l)``; dual ``{"lam": lam}`` of
    ``inf_{lam >= 0} lam rho + lam log E_p exp(l / lam)``. The scalable algorithm (Algorithm 2)
    fixes the multiplier: :meth:`pair_weights` takes ``tau = lam`` and returns the tilt
    ``softmax(log p + l / tau)``. Covers a subpopulation of share alpha at ``log(1 / alpha)``.
    """

    family = "kl"
    title = "KL"
    weight_parameter = "tau"
    anchor = "docs/theory.md#kl-dual"

    def divergence(self, q, p) -> float:
        """``KL(q || p)`` in nats (:func:`kl_divergence`)."""
        return kl_divergence(q, p)

    def radius_for_subpopulation(self, alpha: float) -> float:
        """``log(1 / alpha)``."""
        return float(math.log(1.0 / check_alpha(alpha)))

    def supremum(self, losses, weights=None, *, rho: float) -> Supremum:
        lo, p = losses_weights(losses, weights)
        rho = self.check(rho)
        q, lam = kl_worst_case(lo, p, rho)
        pos = p > 0
        if rho == 0:
            return Supremum(float(p[pos] @ lo[pos]), q, {"lam": lam}, "nominal")
        if lam == 0.0:
            return Supremum(float(lo[pos].max()), q, {"lam": 0.0}, "max-loss")
        if not np.isfinite(lam):  # tiny radius: the centred feasible point, within O(rho)
            b = kl_small_radius_bounds(lo[pos], p[pos] / p[pos].sum(), rho)
            return Supremum(b["primal"], q, {"lam": b["lam"]}, "interior")
        return Supremum(kl_tilt(lo[pos], p[pos], lam)[2], q, {"lam": lam}, "interior")

    def best_response(self, losses, weights, rho: float) -> np.ndarray:
        """:func:`kl_worst_case` of validated arrays ``losses`` and ``weights`` (both (n,))."""
        lo = np.asarray(losses, dtype=np.float64)
        return kl_worst_case(lo, np.asarray(weights, dtype=np.float64), self.check(rho))[0]

    def dual_value(self, losses, weights=None, *, rho: float, lam: float) -> float:
        lo, p = losses_weights(losses, weights)
        return kl_dual_value(lo, p, self.check(rho), float(lam))

    def pair_weights(self, losses, param: float, *, weights=None) -> np.ndarray:
        """The tilt ``q ∝ p exp(l / tau)`` at the fixed multiplier ``tau = param`` (Algorithm
        2's weights divided by n; :func:`rdpo_theory.losses.kl_weights` gives the ratios
        ``q / p``)."""
        from ..losses import kl_weights

        lo, p = losses_weights(losses, weights)
        return p * kl_weights(lo, tau=param, weights=p)

    def torch_pair_weights(self, per_pair, param: float, *, weights=None):
        """The tilt of :meth:`pair_weights` in torch, from
        :func:`rdpo_theory.torch.losses.kl_weights` (the trainer's kernel), divided by the
        batch size or times ``p``: one process (under ``torch.distributed`` the trainer's
        weights use global-batch statistics; use :func:`~rdpo_theory.torch.losses.kl_weights`
        there)."""
        from ..torch.losses import kl_weights

        w = kl_weights(per_pair, tau=param, weights=weights)
        return w / w.numel() if weights is None else w * weights.detach().to(w.dtype)


__all__ = [
    "KL",
    "LOG2",
    "SMALL_RHO",
    "kl_divergence",
    "kl_dual_value",
    "kl_lambda_for_theta",
    "kl_root_value",
    "kl_small_radius_bounds",
    "kl_tilt",
    "kl_worst_case",
    "with_zero_atom",
]
