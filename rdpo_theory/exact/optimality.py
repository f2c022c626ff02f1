"""Certified lower bounds for the optimality gap of exact robust solvers
(``docs/theory.md#optimality-gap``).

Every robust objective here is ``R(theta) = sup_{Q in U} E_Q l(theta)``. For any law ``Q`` in
the ambiguity set ``U`` (for example the adversary's worst case at the returned theta), weak
duality gives

    min_{theta in Theta} E_Q l(theta)  <=  min_{theta in Theta} R(theta),

so a certified *lower* bound on the left side, together with the certified value
``R(theta_hat)`` (the independent inner certificate), bounds the suboptimality of
``theta_hat``: ``R(theta_hat) - min R <= R(theta_hat) - lower``.

The left sides met by the solvers are all of one form, a weighted logistic objective plus a
linear term over the parameter ball ``Theta = {||theta||_2 <= B}`` (or R^d)::

    F(theta) = sum_j w_j softplus(-a_j . (theta - theta_ref)) + b . (theta - theta_ref).

:func:`logistic_lower_bound` bounds ``min_Theta F`` from below at any point ``theta_hat``,
without solving anything, by two rigorous arguments, and returns the larger bound:

* **Self-concordance** (Bach 2010): ``softplus'' (z + s) >= softplus''(z) e^{-|s|}``, so for
  every step ``v``, with ``T = max_j |a_j . v|``,
  ``F(theta + v) >= F(theta) + g . v + rho(T) v' H v``, ``rho(t) = (t - 1 + e^{-t}) / t^2``.
  With ``r = ||v||_H``, ``lambda = ||g||_{H^-1}`` (the Newton decrement) and
  ``kappa = max_j ||a_j||_{H^-1}`` (so ``T <= kappa r``), ``F`` exceeds ``F(theta)`` on the
  ellipsoid ``||v||_H = r*`` where ``r* rho(kappa r*) = lambda`` (it exists iff
  ``lambda kappa < 1``); by convexity the minimiser lies inside and
  ``min F >= F(theta) - lambda r*`` (about ``F - 2 lambda^2`` near the optimum). With a ball,
  the constraint enters through a Lagrange multiplier ``nu >= 0``
  (``min_ball F >= min_{R^d} F + nu/2 (||theta||^2 - B^2)``), which also makes ``H + nu I``
  invertible.
* **Linearisation** (ball only): ``min_ball F >= F(theta) + min_ball g . (theta' - theta)
  = F(theta) - g . theta - B ||g||`` (the Frank-Wolfe gap).

A float64 rounding allowance for ``F`` is subtracted, so the bound is honest to the last bit
that matters for a relative tolerance.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from ..losses import dpo_loss
from .fast import gram, sum_noise
from .passes import Rows

#: Eigenvalues of the (regularised) Hessian below this fraction of the largest are treated as
#: exact zeros (directions the logistic part does not see).
NULL_EIG = 1e-13


def _rho_inverse(c: float) -> float:
    """The ``t > 0`` with ``(t - 1 + e^{-t}) / t = c`` for ``c`` in [0, 1) (increasing in t)."""
    from scipy.optimize import brentq

    if c <= 0.0:
        return 0.0

    def fn(t):
        # (t - 1 + e^{-t}) / t, by its series for small t (no cancellation)
        val = t / 2 - t * t / 6 + t**3 / 24 if t < 1e-3 else (t + np.expm1(-t)) / t
        return val - c

    hi = 2.0 * c + 1.0
    while fn(hi) < 0:
        hi *= 2.0
    return float(brentq(fn, 0.0, hi, xtol=1e-300, rtol=1e-15))


def logistic_lower_bound(
    A,
    w,
    theta,
    *,
    theta_ref,
    radius=None,
    linear=None,
    constant: float = 0.0,
    margins=None,
    linear_in_range: bool = False,
) -> tuple[float, dict]:
    """A certified lower bound of ``min_{||theta|| <= radius} F(theta)`` (module docstring).

    Parameters
    ----------
    A : ndarray (m, d) or :class:`.passes.Rows`
        Rows ``a_j`` (e.g. ``sy_i beta x_i``; a flipped label is ``-a_j``). A Rows (e.g.
        ``Rows(X, scale=c)``) is read in passes, never copied: the bound then costs one
        gradient pass, one Gram pass, one pass of row norms and one of ``max |a_ij|`` (plus
        the margins unless ``margins`` is given), and ``kappa`` is bounded by
        ``max_j ||a_j|| / sqrt(e_min)`` (``e_min`` the least eigenvalue of ``H`` on its range),
        or computed exactly in one more pass when that bound is too loose.
    w : ndarray (m,)
        Non-negative weights of the rows.
    theta : ndarray (d,)
        The point at which the bound is built (the solver's answer).
    theta_ref : ndarray (d,)
    radius : float or None
        The parameter bound B (None: R^d).
    linear : ndarray (d,), optional
        The vector ``b`` of the linear term (default 0).
    constant : float
        Added to ``F`` (e.g. the constant losses of rows with x = 0).
    margins : ndarray (m,), optional
        ``A (theta - theta_ref)`` when already known (saves a pass).
    linear_in_range : bool
        Project ``b`` onto the range of the Hessian of the logistic part before bounding (the
        caller states that the bound stays valid for the projected ``b``, e.g. ``b = r u`` for
        any ``||u|| <= 1``); without a radius this keeps ``F`` bounded below.

    Returns
    -------
    (lower, info)
        ``lower`` (nats; ``-inf`` when neither argument applies, e.g. unbounded directions
        without a radius) and ``info`` with ``F`` at theta, the Newton decrement ``lambda``,
        ``kappa`` and which bound won.
    """
    w = np.asarray(w, dtype=float)
    theta = np.asarray(theta, dtype=float)
    tref = np.asarray(theta_ref, dtype=float)
    d = theta.shape[0]
    b = np.zeros(d) if linear is None else np.asarray(linear, dtype=float)
    delta = theta - tref
    if isinstance(A, Rows):
        R = A
        m = R.matvec(delta) if margins is None else np.asarray(margins, dtype=float)
        sig = expit(-m)
        ga = -R.rmatvec(w * sig)
        H = R.gram(w * sig * (1.0 - sig))
        norms = np.sqrt(R.gram_diag_rows()[w > 0])
        nmax = float(norms.max(initial=0.0))
        gscale = d * R.abs_max() * float(np.sum(w * sig))
        nrows = int(np.count_nonzero(w > 0))

        def kappa_of(Vr, er, lam):
            cheap = nmax / float(np.sqrt(er.min()))
            if lam * cheap < 0.5:  # loose but rigorous: a . H^+ a <= ||a||^2 / e_min
                return cheap
            q = R.row_quadratic((Vr / er) @ Vr.T)  # exact, one more pass
            return float(np.sqrt(np.max(q[w > 0], initial=0.0)))

    else:
        A = np.asarray(A, dtype=float)
        keep = w > 0
        A, w = A[keep], w[keep]
        m = A @ delta if margins is None else np.asarray(margins, dtype=float)[keep]
        sig = expit(-m)
        ga = -(A.T @ (w * sig))
        H = gram(A, w * sig * (1.0 - sig)) if A.shape[0] else np.zeros((d, d))
        gscale = float(np.sum(np.abs(A).T @ (w * sig)))
        nrows = len(w)

        def kappa_of(Vr, er, lam):
            if not A.shape[0]:
                return 0.0
            return float(np.sqrt(np.max(np.sum((A @ Vr) ** 2 / er, axis=1))))

    if linear_in_range and np.any(b):
        e, V = np.linalg.eigh(H)
        emax = float(max(e.max(), 0.0)) if e.size else 0.0
        Vr = V[:, e > NULL_EIG * emax] if emax > 0 else V[:, :0]
        b = Vr @ (Vr.T @ b)
    losses = dpo_loss(m)
    F = float(w @ losses) + float(b @ delta) + constant
    g = ga + b
    gscale += float(np.abs(b).sum())
    noise = sum_noise(float(w @ np.abs(losses)) + abs(float(b @ delta)) + abs(constant), nrows)
    info = {"F": F, "rounding": noise}
    bounded = radius is not None and np.isfinite(radius)
    best, how = -np.inf, None
    # --- linearisation over the ball
    if bounded:
        lin = F - float(g @ theta) - radius * float(np.linalg.norm(g))
        if lin > best:
            best, how = lin, "linearisation (Frank-Wolfe gap)"
    # --- self-concordance, without multiplier and with the ball's KKT multiplier
    nus = [0.0]
    nt = float(theta @ theta)
    if bounded and nt > 0 and -float(g @ theta) > 0:
        nus.append(-float(g @ theta) / nt)
    for nu in nus:
        # nt - radius^2 as a product of two differences: radius^2 overflows float64 beyond
        # 1e154 (a radius rescaled by beta = 1e200), the product only when the bound is void
        with np.errstate(over="ignore", invalid="ignore"):
            slack = (np.sqrt(nt) - radius) * (np.sqrt(nt) + radius) if nu > 0 else 0.0
            Fnu = F + (0.5 * nu * slack if nu > 0 else 0.0)
        if not np.isfinite(Fnu):
            continue
        sc, lam, kappa = _self_concordant_bound(
            Fnu, g + nu * theta, H + nu * np.eye(d), kappa_of, sum_noise(gscale, nrows + d)
        )
        if sc > best:
            best, how = sc, "self-concordance (Newton decrement)"
            info.update(newton_decrement=lam, kappa=kappa, multiplier=nu)
    info["bound"] = how
    return float(best - noise), info


def _self_concordant_bound(F, g, H, kappa_of, tol_null) -> tuple[float, float, float]:
    """``(bound, lambda, kappa)``: ``min F >= F - lambda r*`` over R^d (module docstring), for
    the gradient ``g`` and Hessian ``H`` of a logistic objective (plus a quadratic, which only
    helps); ``kappa_of(Vr, er, lambda)`` bounds ``max_j ||a_j||_{H^+}`` from above given the
    eigenpairs of ``H`` on its range. Directions ``H`` does not see (eigenvalues below
    ``NULL_EIG`` of the largest) must carry no slope (``|g . v| <= tol_null``), else the
    bound is ``-inf`` (the objective may be unbounded along them)."""
    e, V = np.linalg.eigh(H)
    emax = float(max(e.max(), 0.0)) if e.size else 0.0
    rng = e > NULL_EIG * emax if emax > 0 else np.zeros(e.shape[0], dtype=bool)
    gt = V.T @ g
    if (~rng).any() and not np.all(np.abs(gt[~rng]) <= tol_null):
        return -np.inf, np.inf, np.inf
    if not rng.any():  # F is flat: constant up to rounding
        return F, 0.0, 0.0
    er, Vr = e[rng], V[:, rng]
    lam = float(np.sqrt(np.sum(gt[rng] ** 2 / er)))
    kappa = kappa_of(Vr, er, lam)
    if lam == 0.0:
        return F, lam, kappa
    if kappa == 0.0 or not lam * kappa < 1.0 - 1e-12:
        return -np.inf, lam, kappa
    r = _rho_inverse(lam * kappa) / kappa * (1.0 + 1e-9)
    return F - lam * r, lam, kappa


def objective_gap(
    value: float, A, w, theta, *, theta_ref, radius=None, linear=None, constant=0.0
) -> tuple[float, dict]:
    """``(value - lower, info)`` with ``lower`` from :func:`logistic_lower_bound`."""
    lower, info = logistic_lower_bound(
        A, w, theta, theta_ref=theta_ref, radius=radius, linear=linear, constant=constant
    )
    info["lower_bound"] = lower
    return float(value) - lower, info
