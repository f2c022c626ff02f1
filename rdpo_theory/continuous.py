"""Continuous-feature preference worlds with exact population objectives
(docs/theory.md#continuous-worlds).

The pair feature difference is a scalar ``x`` (d = 1), so every margin ``theta x`` is
one-dimensional, drawn from a symmetric law of unit variance: Gaussian, Laplace
(sub-exponential tails), Student-t with 5 or 3 degrees of freedom (polynomial tails). Labels
follow Bradley-Terry with the realizable reward ``beta theta* x`` (``theta_ref = 0``):
``P(y = 1 | x) = sigmoid(beta theta* x)``.

The loss sees a pair only through its oriented feature ``u = s_y x``. For a symmetric density
``f`` the law of ``u`` has the density

    g(u) = 2 f(u) sigmoid(beta theta* u),

so every population quantity is a one-dimensional integral against ``g``, computed by
double-exponential quadrature (:func:`de_integral`; exp-sinh on half-lines, tanh-sinh on
finite pieces, split at the density's kink at 0 and at the tilt's peak), to near float64
precision, never by Monte Carlo:

* the DPO risk ``R(theta) = E_g softplus(-beta theta u)`` and its derivatives;
* the KL dual ``lam rho + lam log E_g exp(l / lam)``, which is **infinite** whenever the tilt
  does not integrate: for every ``theta != 0`` under Student-t features (polynomial tails),
  and for ``beta |theta| / lam >= sqrt 2`` under the unit-variance Laplace law;
* the W1 penalty form ``R(theta) + rho beta |theta|``;
* the optimal parameters, as roots of the first-order conditions (Brent, ``xtol`` 1e-14).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import optimize, stats
from scipy.special import expit, log_expit

from .data import PreferenceData
from .errors import InputError
from .options import POSITIVE_INT, check
from .rng import make_rng

#: Feature laws, each scaled to unit variance.
LAWS = ("gaussian", "laplace", "t5", "t3")


#: Step and half-width in t of the double-exponential rules (``h = 1/32`` on ``|t| <= 5``: 321
#: nodes per piece; the error of an analytic integrand decays like ``exp(-c / h)``).
DE_STEP, DE_SPAN = 1.0 / 32.0, 5.0


@cache
def _de_rules():
    t = np.arange(-DE_SPAN, DE_SPAN + DE_STEP / 2, DE_STEP)
    s = 0.5 * np.pi * np.sinh(t)
    c = 0.5 * np.pi * np.cosh(t)
    half = (np.exp(s), DE_STEP * c * np.exp(s))  # exp-sinh on (0, inf)
    th = np.tanh(s)
    finite = (th, DE_STEP * c / np.cosh(s) ** 2)  # tanh-sinh on (-1, 1)
    return half, finite


def de_integral(fn, a: float, b: float) -> float:
    """``int_a^b fn(u) du`` by double-exponential quadrature (Takahasi-Mori): exp-sinh for a
    half-line (``a`` or ``b`` infinite), tanh-sinh for a finite interval. ``fn`` is
    vectorised. Accurate to near float64 precision for integrands analytic inside the piece
    (split at kinks), with exponential or algebraic tails."""
    (x_h, w_h), (x_f, w_f) = _de_rules()
    if np.isinf(a) and np.isinf(b):
        raise InputError("de_integral: split the real line at a finite point")
    if np.isinf(b):
        return float(w_h @ fn(a + x_h))
    if np.isinf(a):
        return float(w_h @ fn(b - x_h))
    if b <= a:
        return 0.0
    mid, half = 0.5 * (a + b), 0.5 * (b - a)
    return float(half * (w_f @ fn(mid + half * x_f)))


def _softplus(t):
    return -log_expit(-np.asarray(t, dtype=np.float64))


@dataclass(frozen=True)
class ContinuousWorld:
    """A one-dimensional continuous preference world.

    Parameters
    ----------
    law : {"gaussian", "laplace", "t5", "t3"}
        Law of the feature difference x, scaled to unit variance.
    theta_star : float
        Realizing parameter (the population DPO optimum).
    beta : float > 0
    B : float > 0
        Parameter bound used by the empirical solvers (``|theta| <= B``).
    """

    law: str = "gaussian"
    theta_star: float = 1.5
    beta: float = 1.0
    B: float = 10.0

    def __post_init__(self):
        if self.law not in LAWS:
            raise InputError(
                f"The 'law' parameter must be one of {LAWS}. Got {self.law!r} instead."
            )
        for name in ("beta", "B"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InputError(f"The '{name}' parameter must be a float > 0. Got {v!r} instead.")

    # ------------------------------------------------------------------ the feature law
    @property
    def dist(self):
        """The frozen scipy law of x (unit variance)."""
        if self.law == "gaussian":
            return stats.norm()
        if self.law == "laplace":
            return stats.laplace(scale=1 / math.sqrt(2))
        nu = 5.0 if self.law == "t5" else 3.0
        return stats.t(nu, scale=math.sqrt((nu - 2) / nu))

    @property
    def name(self) -> str:
        return f"continuous-{self.law}"

    @property
    def dim(self) -> int:
        return 1

    @property
    def theta_ref(self) -> np.ndarray:
        return np.zeros(1)

    def tilt_finite(self, slope: float) -> bool:
        """Whether ``E exp(slope |x|)`` is finite: always for the Gaussian, for
        ``slope < sqrt 2`` for the Laplace law, only at ``slope = 0`` for Student-t."""
        if slope <= 0 or self.law == "gaussian":
            return True
        if self.law == "laplace":
            return slope < math.sqrt(2.0)
        return False

    # ------------------------------------------------------------------ integrals
    def _log_density(self, u):
        """``log g(u) = log 2 + log f(u) + log sigmoid(beta theta* u)``."""
        return math.log(2.0) + self.dist.logpdf(u) + log_expit(self.beta * self.theta_star * u)

    def expect(self, fn, *, points=(), log_weight=None) -> float:
        """``E_g fn(u)`` for the oriented feature's density
        ``g(u) = 2 f(u) sigmoid(beta theta* u)``, by double-exponential quadrature
        (:func:`de_integral`) on the half-lines and pieces cut at 0 and at the break
        ``points``. ``log_weight(u)`` is added to ``log g`` before the exponential (a tilt), so
        that a large exponent meets the density's decay in log space. ``fn`` and
        ``log_weight`` take and return arrays."""

        def integrand(u):
            lw = self._log_density(u)
            if log_weight is not None:
                lw = lw + log_weight(u)
            with np.errstate(over="ignore", invalid="ignore", under="ignore"):
                out = np.exp(lw) * fn(u)
            return np.where(np.isfinite(out), out, 0.0)

        cuts = sorted({0.0, *(float(t) for t in points)})
        edges = [-np.inf, *cuts, np.inf]
        return float(sum(de_integral(integrand, lo, hi) for lo, hi in zip(edges[:-1], edges[1:])))

    def risk(self, theta: float) -> float:
        """Population DPO risk ``E softplus(-beta theta u)`` (nats)."""
        b = self.beta * float(theta)
        return self.expect(lambda u: _softplus(-b * u))

    def risk_grad(self, theta: float) -> float:
        """``dR/dtheta = -beta E[u sigmoid(-beta theta u)]``."""
        b = self.beta * float(theta)
        return -self.beta * self.expect(lambda u: u * expit(-b * u))

    def _tilt(self, theta: float, lam: float):
        """``(log Z, peak, shift)`` of the tilt ``g exp(l / lam)``: ``log Z = log E exp(l / lam)``
        computed with the exponent shifted by ``shift``, the largest ``l / lam + log g`` on a
        grid around the peak (about ``u = -k``, ``k = beta |theta| / lam``, for the Gaussian;
        0 otherwise), so that nothing overflows."""
        b = self.beta * float(theta)
        k = abs(b) / lam
        peak = -math.copysign(k, b) if self.law == "gaussian" else 0.0
        grid = np.linspace(-abs(peak) - 10.0, abs(peak) + 10.0, 401)
        shift = float(np.max(_softplus(-b * grid) / lam + self._log_density(grid)))
        val = self.expect(
            np.ones_like, log_weight=lambda u: _softplus(-b * u) / lam - shift, points=(peak,)
        )
        return shift + math.log(val), peak, shift

    def log_tilt(self, theta: float, lam: float) -> float:
        """``log E exp(l / lam)``; inf when the tilt does not integrate (:meth:`tilt_finite`)."""
        if not self.tilt_finite(abs(self.beta * float(theta)) / lam):
            return math.inf
        return self._tilt(theta, lam)[0]

    def kl_dual(self, theta: float, lam: float, rho: float) -> float:
        """The KL dual ``lam rho + lam log E exp(l / lam)`` (nats; inf when not integrable)."""
        return lam * rho + lam * self.log_tilt(theta, lam)

    def kl_value(self, theta: float, rho: float) -> tuple[float, float]:
        """``(sup_{KL(Q || P0) <= rho} E_Q l(theta), lam*)``: the dual minimised over
        ``lam > floor`` (Brent in ``log(lam - floor)``; floor = ``beta |theta| / sqrt 2`` for
        Laplace, 0 otherwise); ``(inf, nan)`` when the tilt is infinite for every lam
        (Student-t features, theta != 0)."""
        b = abs(self.beta * float(theta))
        if b == 0:
            return math.log(2.0), math.inf
        if self.law in ("t5", "t3"):
            return math.inf, math.nan
        lo = b / math.sqrt(2.0) if self.law == "laplace" else 0.0
        r = optimize.minimize_scalar(
            lambda s: self.kl_dual(theta, lo + math.exp(s), rho),
            bounds=(math.log(1e-3 * (b + 1e-3)), math.log(1e3 * (b + 1.0))),
            method="bounded",
            options={"xatol": 1e-11},
        )
        return float(r.fun), lo + math.exp(float(r.x))

    def kl_grad(self, theta: float, rho: float) -> float:
        """``d/dtheta`` of the KL robust value by the envelope theorem: ``E_q dl/dtheta`` under
        the tilt ``q ∝ g exp(l / lam*)``."""
        _, lam = self.kl_value(theta, rho)
        b = self.beta * float(theta)
        logZ, peak, _ = self._tilt(theta, lam)
        return self.expect(
            lambda u: -self.beta * u * expit(-b * u),
            log_weight=lambda u: _softplus(-b * u) / lam - logZ,
            points=(peak,),
        )

    def w1_value(self, theta: float, rho: float) -> float:
        """The W1 robust risk with labels fixed: ``R(theta) + rho beta |theta|`` (nats)."""
        return self.risk(theta) + rho * self.beta * abs(float(theta))

    # ------------------------------------------------------------------ optima
    def optimum(self, method: str, rho: float = 0.0) -> dict:
        """Population optimum of ``method`` in {"dpo", "kldpo", "wdpo"} at radius ``rho``, as
        the root of its first-order condition (Brent, xtol 1e-13).

        Returns
        -------
        dict
            ``theta`` (float), ``value`` (nats), ``finite`` (bool: False where the population
            KL objective is infinite at every theta != theta_ref, so theta_ref = 0 is the
            optimum by default).
        """
        hi = 2 * abs(self.theta_star) + 1
        if method == "dpo" or rho == 0:
            th = optimize.brentq(self.risk_grad, 0.0, hi, xtol=1e-14, rtol=1e-15)
            return {"theta": th, "value": self.risk(th), "finite": True}
        if method == "wdpo":
            pen = rho * self.beta
            if self.risk_grad(0.0) + pen >= 0:
                return {"theta": 0.0, "value": math.log(2.0), "finite": True}
            th = optimize.brentq(lambda t: self.risk_grad(t) + pen, 0.0, hi, xtol=1e-14, rtol=1e-15)
            return {"theta": th, "value": self.w1_value(th, rho), "finite": True}
        if method == "kldpo":
            if self.law in ("t5", "t3"):
                return {"theta": 0.0, "value": math.log(2.0), "finite": False}
            eps = 1e-9
            if self.kl_grad(eps, rho) >= 0:
                return {"theta": 0.0, "value": math.log(2.0), "finite": True}
            top = abs(self.theta_star)
            th = optimize.brentq(lambda t: self.kl_grad(t, rho), eps, top, xtol=1e-13, rtol=1e-14)
            return {"theta": th, "value": self.kl_value(th, rho)[0], "finite": True}
        raise InputError(
            "The 'method' parameter must be one of ('dpo', 'kldpo', 'wdpo'). "
            f"Got {method!r} instead."
        )

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, seed=0) -> PreferenceData:
        """``n`` i.i.d. pairs: x from the law, y by Bradley-Terry (X has shape (n, 1))."""
        check("n", n, POSITIVE_INT, owner="sample")
        rng = make_rng(seed)
        x = self.dist.rvs(size=int(n), random_state=rng)
        y = (rng.random(int(n)) < expit(self.beta * self.theta_star * x)).astype(float)
        return PreferenceData(x[:, None], y)

    def empirical(self, n: int, seed=0) -> PreferenceData:
        """Same as :meth:`sample` (continuous draws do not repeat, so nothing aggregates);
        the name matches :meth:`rdpo_theory.worlds.World.empirical` so studies take either."""
        return self.sample(n, seed)


def continuous_world(law: str, **kw) -> ContinuousWorld:
    """A :class:`ContinuousWorld` with the given feature law."""
    return ContinuousWorld(law=law, **kw)
