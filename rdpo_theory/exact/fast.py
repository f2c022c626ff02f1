"""Fast exact paths for large n: damped (projected) Newton on smooth convex duals.

Two objectives, both over log-linear DPO margins ``m_i = c_i x_i . (theta - theta_ref)`` with
``c_i = sy_i beta`` and losses ``l_i = softplus(-m_i)`` (docs/theory.md#kl-dual,
docs/theory.md#w1-continuous):

* KL dual, jointly convex in ``(theta, lam)``, lam > 0::

      F(theta, lam) = lam rho + lam log( sum_i p_i exp(l_i / lam) + p0 exp(log 2 / lam) )

  (``p0`` is the mass of rows with x = 0 that a caller aggregated out of ``X``).
* Wasserstein-1 with labels fixed (kappa = inf)::

      W(theta) = sum_i p_i l_i + rho beta ||theta - theta_ref||_2

Newton directions use the exact Hessian; the only n x d work per iteration is one ``X @ v``,
one ``X.T @ V`` (V with two columns) and ``X^T diag(w) X`` accumulated in float64 row blocks,
so the memory beyond ``X`` is a few length-n vectors. Every one of these goes through
:class:`.passes.Rows` (numpy, memmap, torch or dask storage; passes counted).
A ball ``||theta|| <= radius`` is handled by solving the Newton model exactly over the ball
(a trust-region subproblem in theta after eliminating the other variables), followed by an
Armijo line search along the segment.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from ..divergences.kl import LOG2
from ..errors import SolverError
from ..losses import dpo_loss
from .passes import Rows, as_rows

BLOCK = 1 << 15


# ---------------------------------------------------------------------------- blocked algebra
def gram(X, w: np.ndarray) -> np.ndarray:
    """``X^T diag(w) X`` (d, d), accumulated over row blocks (no n x d temporary);
    ``X`` an array or a :class:`.passes.Rows` (see :meth:`.passes.Rows.gram`)."""
    return as_rows(X).gram(w)


# ---------------------------------------------------------------------------- Newton direction
def _trs(Hr: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """Minimise ``b.z + z^T Hr z / 2`` over ``||z|| <= radius`` (Hr symmetric PSD)."""
    e, V = np.linalg.eigh(Hr)
    e = np.maximum(e, eigen_floor(e))
    bt = V.T @ b
    z_norm = lambda nu: float(np.sqrt(np.sum((bt / (e + nu)) ** 2)))  # noqa: E731
    if z_norm(0.0) <= radius:
        return -V @ (bt / e)
    # ||z(nu)|| <= ||b|| / nu, so the root of ||z(nu)|| = radius lies below ||b|| / radius
    lo, hi = 0.0, float(np.linalg.norm(b)) / radius
    while z_norm(hi) > radius:
        hi *= 2.0
    for _ in range(200):  # bisection on the monotone secular equation, then clip to the sphere
        mid = 0.5 * (lo + hi)
        if z_norm(mid) > radius:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    z = -V @ (bt / (e + hi))
    nz = np.linalg.norm(z)
    return z * (radius / nz) if nz > radius else z


def eigen_floor(e) -> float:
    """Smallest eigenvalue kept in a Newton model: ``1e-13`` times the largest (relative, so
    the model is the same whatever the scale of X and beta); 1 for a zero matrix."""
    top = float(np.abs(e).max(initial=0.0))
    return 1e-13 * top if top > 0 else 1.0


#: From this dimension on, unconstrained fast solves never form d x d matrices: Newton-CG with
#: Hessian-vector products (two passes over X each) replaces the Gram products, and the
#: certificates solve their Newton systems the same way (docs/theory.md#exact-programs).
HESSIAN_FREE_D = 512


class HessianOperator:
    """A Hessian known only through products ``H v`` (``mv``), with a positive diagonal
    preconditioner ``diag`` (its diagonal, or an estimate of it)."""

    def __init__(self, mv, diag):
        self.mv = mv
        self.diag = np.asarray(diag, dtype=float)

    def finite(self) -> bool:
        return bool(np.all(np.isfinite(self.diag)))


def hessian_free(d: int, radius) -> bool:
    """Whether a fast solve in dimension ``d`` runs Hessian-free (:data:`HESSIAN_FREE_D`; a
    parameter ball needs the dense trust-region model)."""
    return radius is None and d >= HESSIAN_FREE_D


def conjugate_gradient(mv, b, *, diag=None, rtol: float = 1e-10, max_iter: int = 500):
    """Preconditioned CG for ``H x = b`` (H symmetric PSD, given by ``mv``); stops at
    ``||H x - b|| <= rtol ||b||``, at ``max_iter`` or at non-positive curvature. Returns
    ``(x, relative residual, iterations)``."""
    b = np.asarray(b, dtype=float)
    nb = float(np.linalg.norm(b))
    x = np.zeros_like(b)
    if nb == 0:
        return x, 0.0, 0
    M = np.ones_like(b) if diag is None else np.where(diag > 0, diag, 1.0)
    r = b.copy()
    z = r / M
    pdir = z.copy()
    rz = float(r @ z)
    it = 0
    for it in range(1, max_iter + 1):
        Hp = mv(pdir)
        curv = float(pdir @ Hp)
        if not curv > 0:
            if it == 1:
                x = z  # preconditioned gradient step
            break
        a = rz / curv
        x = x + a * pdir
        r = r - a * Hp
        if float(np.linalg.norm(r)) <= rtol * nb:
            break
        z = r / M
        rz_new = float(r @ z)
        pdir = z + (rz_new / rz) * pdir
        rz = rz_new
    return x, float(np.linalg.norm(r)) / nb, it


def newton_direction(H, g, theta, radius, k: int) -> np.ndarray:
    """Direction of the Newton model ``g.d + d^T H d / 2`` over ``(theta, extra)``.

    ``theta`` is the first ``len(theta)`` coordinates, ``k`` extra unconstrained coordinates
    follow. With a radius the model is minimised over ``||theta + d_theta|| <= radius``.
    """
    d = theta.shape[0]
    if radius is None:
        try:
            step = -np.linalg.solve(H, g)
            if np.all(np.isfinite(step)):
                return step
        except np.linalg.LinAlgError:
            pass
        e, V = np.linalg.eigh(H)
        e = np.maximum(e, eigen_floor(e))
        return -V @ ((V.T @ g) / e)
    Htt, Hte, Hee = H[:d, :d], H[:d, d:], H[d:, d:]
    gt, ge = g[:d], g[d:]
    if k:
        Hee_inv = np.linalg.pinv(Hee)
        Hr = Htt - Hte @ Hee_inv @ Hte.T
        gr = gt - Hte @ Hee_inv @ ge
    else:
        Hr, gr = Htt, gt
    Hr = 0.5 * (Hr + Hr.T)
    z = _trs(Hr, gr - Hr @ theta, radius)
    dt = z - theta
    if not k:
        return dt
    de = -Hee_inv @ (ge + Hte.T @ dt)
    return np.concatenate([dt, de])


def _safe_direction(H, g, theta, radius, k: int) -> np.ndarray:
    """:func:`newton_direction`, or a vector of NaN when the model cannot be solved (overflow
    in the eliminated block, eigen-solver failure): a non-descent direction to the caller.
    A :class:`HessianOperator` (no radius) is solved by CG to the relative residual
    ``H.rtol``."""
    if isinstance(H, HessianOperator):
        with np.errstate(all="ignore"):
            step = -conjugate_gradient(H.mv, g, diag=H.diag, rtol=H.rtol)[0]
        return step if np.all(np.isfinite(step)) else np.full(g.shape, np.nan)
    try:
        with np.errstate(all="ignore"):
            step = newton_direction(H, g, theta, radius, k)
    except np.linalg.LinAlgError:
        step = None
    if step is None or not np.all(np.isfinite(step)):
        return np.full(g.shape, np.nan)
    return step


def damped_newton(
    obj,
    theta0,
    extra0,
    *,
    radius,
    max_iter: int = 100,
    tol: float = 1e-20,
    hessian=None,
    state=None,
    keep_hessian: bool = False,
):
    """Minimise a smooth convex ``obj`` over ``(theta, extra)`` with ``||theta|| <= radius``.

    ``obj`` provides ``state(theta, extra)``, ``derivs(state) -> (g, H)``,
    ``gradient(state)``, ``direction_margins(d_theta)``,
    ``value_along(state, dm, theta, extra)``, ``max_step(extra, d_extra, theta, d_theta)``
    and ``grad_noise(state)``. Stops when the
    Newton decrement ``-g.d`` is below ``tol * max(1, |f|)``. A negative decrement (a
    non-descent direction from a numerically indefinite Hessian) is never taken as convergence:
    that iteration steps along the minimiser of the diagonal model instead.

    Convergence is scale-aware: besides the decrement test, a point whose KKT residual
    (:func:`kkt_residual`) is below the float64 rounding error of the gradient's own sums
    (``obj.grad_noise(state)``, per coordinate) is converged, since no further progress can be
    measured there. ``info["criterion"]`` says which test stopped the iteration.

    ``hessian``: an approximation of the Hessian at the solution (e.g. from a subsample's
    solve). It is reused (chord steps: one gradient pass per iteration, no ``X^T W X``) until a
    step is shortened by the line search, then replaced by exact Hessians. When chord steps
    converge slowly (a decrement above ``CHORD_RATE`` times the previous one), the Hessian is
    refreshed once at the current point (one Gram pass) and chord steps go on with it.
    ``state``: ``obj.state(theta0, extra0)`` when the caller has it (saves a pass).
    Returns ``(theta, extra, state, info)``; with ``keep_hessian``, ``info["hessian"]`` is the
    last exact Hessian (for reuse by a later solve), or None.
    """
    theta = np.array(theta0, dtype=float)
    extra = np.array(extra0, dtype=float)
    k = extra.shape[0]
    d = theta.shape[0]
    st = obj.state(theta, extra) if state is None else state
    dec = np.inf
    prev_chord = np.inf
    H_last = None
    converged = False
    criterion = None
    resid, noise = np.inf, 0.0
    it = 0
    H_fixed = None if hessian is None else np.asarray(hessian, dtype=float)
    exact_hessians = 0
    fallback_steps = 0
    hf = hessian_free(d, radius) and hasattr(obj, "derivs_operator")
    if hf:
        H_fixed = None  # no d x d matrix: Newton-CG with Hessian-vector products
    g0 = None
    while it < max_iter:
        it += 1
        if hf:
            g, H = obj.derivs_operator(st)
            ng = float(np.linalg.norm(g))
            g0 = ng if g0 is None else g0
            # forcing term: loose far away, superlinear near the solution
            H.rtol = min(0.1, max(1e-13, np.sqrt(ng / g0) if g0 > 0 else 0.0))
            if not (np.all(np.isfinite(g)) and H.finite()):
                criterion = "non-finite derivatives"
                break
        elif H_fixed is not None:
            g, H = obj.gradient(st), H_fixed
        else:
            g, H = obj.derivs(st)
            H_last = H
            exact_hessians += 1
        if not hf and not (np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
            criterion = "non-finite derivatives"  # not converged: the caller decides
            break
        step = _safe_direction(H, g, theta, radius, k)
        dec = float(-(g @ step))
        if H_fixed is not None and dec >= 0 and dec > CHORD_RATE * prev_chord:
            # slow chord steps: refresh the fixed Hessian here (the gradient comes with it)
            g, H = obj.derivs(st)
            H_fixed = H_last = H
            exact_hessians += 1
            if not (np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
                criterion = "non-finite derivatives"
                break
            step = _safe_direction(H, g, theta, radius, k)
            dec = float(-(g @ step))
        prev_chord = dec if H_fixed is not None and dec >= 0 else np.inf
        scale = max(1.0, abs(st.f))
        if not dec >= 0:
            # a non-descent "Newton" direction: H is numerically indefinite (e.g. the KL dual's
            # lam^-3 curvature near lam = 0). Never a sign of convergence by itself: step along
            # the minimiser of the model with the diagonal of H instead (a descent direction,
            # its model value at 0 being 0), with exact Hessians from here on. Only when both
            # decrements are below the float64 resolution of f is the point converged.
            diag = np.abs(H.diag if hf else np.diag(H))
            diag = np.where(diag > 0, diag, max(float(diag.max(initial=0.0)), 1.0))
            if hf:
                step = -g / diag
            else:
                step = _safe_direction(np.diag(diag), g, theta, radius, k)
            dec_newton, dec = dec, float(-(g @ step))
            fallback_steps += 1
            H_fixed = None
            if max(abs(dec_newton), abs(dec)) <= 1e-13 * scale:  # (nan compares False)
                converged, criterion = True, "newton and diagonal decrements below resolution"
                break
            if not dec >= 0:  # the rounding of a projection onto the sphere: no progress
                break
        if dec <= tol * scale:
            converged, criterion = True, "newton decrement"
            break
        r = kkt_residual(g, theta, radius)
        nz = obj.grad_noise(st)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0: an exact zero is met
            ratio = np.where(r == 0, 0.0, np.abs(r) / nz)
        resid, noise = float(np.max(ratio)), float(np.linalg.norm(nz))
        if resid <= 1.0:
            # every KKT component is below the rounding error of its own float64 sum: no
            # further progress can be measured, and the point is optimal to that precision
            converged, criterion = True, "kkt residual at float64 noise floor"
            break
        dth, dex = step[:d], step[d:]
        dm = obj.direction_margins(dth)
        t = min(1.0, obj.max_step(extra, dex, theta, dth))
        accepted = False
        if dec <= 1e-12 * scale:
            # quadratic-convergence region: f cannot resolve the decrease, take the full step
            # unless it visibly increases f
            cand = obj.value_along(st, t * dm, theta + t * dth, extra + t * dex)
            accepted = cand.f <= st.f + 1e-14 * scale
        else:
            for _ in range(40):
                cand = obj.value_along(st, t * dm, theta + t * dth, extra + t * dex)
                if cand.f <= st.f - 1e-4 * t * dec:
                    accepted = True
                    break
                t *= 0.5
        if not accepted:
            if H_fixed is not None:  # the approximate Hessian is not good enough here
                H_fixed = None
                continue
            # numerical floor: the decrease is below what float64 can resolve in f. The same
            # threshold as the full-step region above (a decrement of 6e-13 whose full step
            # rounded f upwards used to end "not converged"); optimality is certified after.
            converged = dec <= 1e-12 * scale
            criterion = "decrease below float64 resolution of f" if converged else None
            break
        if t < 1.0:
            H_fixed = None
        theta, extra, st = theta + t * dth, extra + t * dex, cand
        if radius is not None:
            nrm = np.linalg.norm(theta)
            if nrm > radius:
                theta *= radius / nrm
        if obj.stop(extra):
            break
    return (
        theta,
        extra,
        st,
        {
            "iterations": it,
            "exact_hessians": exact_hessians,
            "diagonal_fallback_steps": fallback_steps,
            "newton_decrement": dec,
            "converged": converged,
            "criterion": criterion,
            "kkt_residual_over_noise": resid,
            "gradient_noise": noise,
            "hessian_free": hf,
        }
        | ({"hessian": H_last} if keep_hessian else {}),
    )


#: Chord steps whose Newton decrement falls by less than this factor per step trigger one
#: exact Hessian at the current point (see :func:`damped_newton`).
CHORD_RATE = 1e-4


#: Rounding-error multiple used by ``grad_noise``: a float64 sum of n terms is accurate to
#: about ``eps * sqrt(n) * sum |terms|`` (random-walk accumulation); 16 is a safety factor.
NOISE_FACTOR = 16.0


def sum_noise(abs_sum: float, n: int) -> float:
    """Rounding error bound of a float64 sum of ``n`` terms whose absolute values sum to
    ``abs_sum`` (relative to ``abs_sum``, no absolute floor: it scales with the data)."""
    return NOISE_FACTOR * np.finfo(float).eps * np.sqrt(n + 1.0) * abs_sum


def kkt_residual(g, theta, radius) -> np.ndarray:
    """KKT residual of ``min f`` over ``||theta|| <= radius`` (and free extra coordinates).

    ``g`` is the gradient over ``(theta, extra)``. Inside the ball the residual is ``g``; on
    the sphere it is ``g + nu (theta, 0)`` with the multiplier ``nu = max(0, -g.theta /
    ||theta||^2)`` (least squares), so it vanishes exactly at a KKT point (stationarity,
    ``nu >= 0``, complementary slackness)."""
    r = np.array(g, dtype=float)
    d = theta.shape[0]
    if radius is not None:
        nt = float(theta @ theta)
        if nt > 0 and np.sqrt(nt) >= radius * (1 - 1e-9):
            nu = max(0.0, -float(r[:d] @ theta) / nt)
            r[:d] += nu * theta
    return r


# ---------------------------------------------------------------------------- KL dual
class _KLState:
    __slots__ = ("m", "lam", "l", "lmax", "logZs", "logZ", "q", "q0", "lbar", "f")


class KLDual:
    """The KL dual ``F(theta, lam)`` on data ``X`` (n, d), ``c`` (n,), weights ``p`` (n,)."""

    def __init__(self, X, c, p, rho, tref, *, p0: float = 0.0, lam_floor: float = 0.0):
        self.data = as_rows(X)  # X (n, d): numpy, memmap, torch, dask, or a Rows view
        self.rows = Rows(self.data, scale=c)  # diag(c) X: every pass goes through it
        self.c, self.p, self.rho, self.tref = c, p, float(rho), tref
        self.p0 = float(p0)
        self.lam_floor = lam_floor
        self.logp = np.log(np.where(p > 0, p, 1.0))
        self.pos = p > 0

    def margins(self, theta):
        return self.rows.matvec(theta - self.tref)

    def state(self, theta, extra, m=None):
        return self._eval(self.margins(theta) if m is None else m, float(extra[0]))

    def _eval(self, m, lam):
        s = _KLState()
        s.m, s.lam = m, lam
        if not lam > 0:
            s.f = np.inf
            return s
        s.l = dpo_loss(m)
        # losses shifted by their max before dividing by lam, so that the differences stay
        # exact when lam is far below |l| (the max-loss end of the interior regime)
        s.lmax = max(float(np.max(s.l[self.pos])), LOG2 if self.p0 > 0 else -np.inf)
        a = np.where(self.pos, (s.l - s.lmax) / lam + self.logp, -np.inf)
        a0 = (LOG2 - s.lmax) / lam + np.log(self.p0) if self.p0 > 0 else -np.inf
        M = max(float(a.max()), a0)
        e = np.exp(a - M)
        e0 = np.exp(a0 - M) if self.p0 > 0 else 0.0
        Z = float(e.sum()) + e0
        s.logZs = M + np.log(Z)  # log E_p exp((l - lmax) / lam)
        s.logZ = s.logZs + s.lmax / lam
        s.q, s.q0 = e / Z, e0 / Z
        s.lbar = float(s.q @ s.l) + s.q0 * LOG2
        s.f = lam * (self.rho + s.logZs) + s.lmax
        return s

    def lam_gradient(self, s) -> float:
        """``dF/dlam = rho + log E_p exp(l / lam) - E_q l / lam`` (shifted by lmax)."""
        return self.rho + s.logZs + (s.lmax - s.lbar) / s.lam

    def derivs(self, s):
        lam, q, l = s.lam, s.q, s.l
        sig_neg = expit(-s.m)
        g = -sig_neg  # dl/dm
        dev = l - s.lbar
        XtC = self.rows.rmatvec(np.stack([q * g, q * dev * g], axis=1))
        u, cov = XtC[:, 0], XtC[:, 1]
        w = q * (sig_neg * (1.0 - sig_neg) + g * g / lam)
        Htt = self.rows.gram(w) - np.outer(u, u) / lam
        var = float(q @ dev**2) + s.q0 * (LOG2 - s.lbar) ** 2
        d = u.shape[0]
        H = np.empty((d + 1, d + 1))
        H[:d, :d] = Htt
        H[:d, d] = H[d, :d] = -cov / lam**2
        H[d, d] = var / lam**3
        grad = np.concatenate([u, [self.lam_gradient(s)]])
        return grad, H

    def derivs_operator(self, s):
        """``(gradient, HessianOperator)``: the Hessian of :meth:`derivs` as products (two
        passes each), never formed; one pass for the gradient and the covariance."""
        lam, q, l = s.lam, s.q, s.l
        sig_neg = expit(-s.m)
        g = -sig_neg
        dev = l - s.lbar
        XtC = self.rows.rmatvec(np.stack([q * g, q * dev * g], axis=1))
        u, cov = XtC[:, 0], XtC[:, 1]
        w = q * (sig_neg * (1.0 - sig_neg) + g * g / lam)
        var = float(q @ dev**2) + s.q0 * (LOG2 - s.lbar) ** 2
        d = u.shape[0]
        rows = self.rows

        def mv(v):
            vt, ve = v[:d], v[d]
            top = rows.rmatvec(w * rows.matvec(vt)) - u * (float(u @ vt) / lam)
            top = top - (cov / lam**2) * ve
            return np.concatenate([top, [-float(cov @ vt) / lam**2 + var / lam**3 * ve]])

        mean_diag = (float(w @ rows.gram_diag_rows()) - float(u @ u) / lam) / d
        diag = np.concatenate([np.full(d, max(mean_diag, 1e-300)), [max(var / lam**3, 1e-300)]])
        return np.concatenate([u, [self.lam_gradient(s)]]), HessianOperator(mv, diag)

    def gradient(self, s):
        g = -expit(-s.m)
        u = self.rows.rmatvec(s.q * g)
        return np.concatenate([u, [self.lam_gradient(s)]])

    def direction_margins(self, dth):
        return self.rows.matvec(dth)

    def value_along(self, s, dm, theta, extra):
        return self._eval(s.m + dm, float(extra[0]))

    def max_step(self, extra, dex, theta=None, dth=None):
        # keep lam > 0: at most 3/4 of the way to zero
        return 0.75 * extra[0] / -dex[0] if dex[0] < 0 else 1.0

    def grad_noise(self, s):
        """Per-coordinate rounding-error bound of :meth:`gradient` (d + 1,)."""
        xmax = self.data.abs_max()
        n = self.data.n
        w = float(np.sum(s.q * expit(-s.m) * np.abs(self.c)))
        nt = sum_noise(xmax * w, n)
        dev = float(s.q @ np.abs(s.l - s.lmax)) + s.q0 * abs(LOG2 - s.lmax)
        nl = sum_noise(self.rho + abs(s.logZs) + (abs(s.lmax - s.lbar) + dev) / s.lam, n)
        return np.concatenate([np.full(self.data.d, nt), [nl]])

    def stop(self, extra):
        return extra[0] <= self.lam_floor


# ---------------------------------------------------------------------------- Wasserstein-1
class _WState:
    __slots__ = ("m", "theta", "f")


class W1Penalty:
    """``W(theta) = sum_i p_i l_i + rho beta ||theta - theta_ref||`` (no extra variables)."""

    def __init__(self, X, c, p, rho, beta, tref):
        self.data = as_rows(X)
        self.rows = Rows(self.data, scale=c)  # diag(c) X
        self.c, self.p, self.rho, self.beta, self.tref = c, p, rho, beta, tref

    def margins(self, theta):
        return self.rows.matvec(theta - self.tref)

    def state(self, theta, extra, m=None):
        return self._eval(self.margins(theta) if m is None else m, theta)

    def _eval(self, m, theta):
        s = _WState()
        s.m, s.theta = m, theta
        s.f = float(self.p @ dpo_loss(m)) + self.rho * self.beta * float(
            np.linalg.norm(theta - self.tref)
        )
        return s

    def derivs(self, s):
        sig_neg = expit(-s.m)
        grad = self.rows.rmatvec(self.p * -sig_neg)
        H = self.rows.gram(self.p * sig_neg * (1.0 - sig_neg))
        delta = s.theta - self.tref
        nd = float(np.linalg.norm(delta))
        if nd > 0:
            u = delta / nd
            grad = grad + self.rho * self.beta * u
            H = H + (self.rho * self.beta / nd) * (np.eye(len(u)) - np.outer(u, u))
        return grad, H

    def derivs_operator(self, s):
        """``(gradient, HessianOperator)``: the Hessian of :meth:`derivs` as products."""
        sig_neg = expit(-s.m)
        grad = self.rows.rmatvec(self.p * -sig_neg)
        w = self.p * sig_neg * (1.0 - sig_neg)
        delta = s.theta - self.tref
        nd = float(np.linalg.norm(delta))
        d = grad.shape[0]
        rows = self.rows
        reg = self.rho * self.beta / nd if nd > 0 else 0.0
        u = delta / nd if nd > 0 else np.zeros(d)
        if nd > 0:
            grad = grad + self.rho * self.beta * u

        def mv(v):
            out = rows.rmatvec(w * rows.matvec(v))
            return out + reg * (v - u * float(u @ v)) if reg else out

        mean_diag = float(w @ rows.gram_diag_rows()) / d + reg * (1.0 - 1.0 / d)
        return grad, HessianOperator(mv, np.full(d, max(mean_diag, 1e-300)))

    def gradient(self, s):
        grad = self.rows.rmatvec(self.p * -expit(-s.m))
        delta = s.theta - self.tref
        nd = float(np.linalg.norm(delta))
        return grad + (self.rho * self.beta / nd) * delta if nd > 0 else grad

    def direction_margins(self, dth):
        return self.rows.matvec(dth)

    def value_along(self, s, dm, theta, extra):
        return self._eval(s.m + dm, theta)

    def max_step(self, extra, dex, theta=None, dth=None):
        """Step cap: at most half of the way to the kink ``theta = theta_ref`` of the norm
        (Newton models of ``||theta - theta_ref||`` are meaningless across it)."""
        if theta is None or dth is None or self.rho == 0:
            return 1.0
        delta = theta - self.tref
        dd = float(delta @ delta)
        a = float(dth @ dth)
        b = 2.0 * float(delta @ dth)
        if dd == 0 or a == 0 or b >= 0:
            return 1.0
        disc = b * b - 3.0 * a * dd  # a t^2 + b t + 3/4 ||delta||^2 = 0: distance = ||delta||/2
        if disc <= 0:
            return 1.0
        return max((-b - np.sqrt(disc)) / (2.0 * a), 1e-12)

    def grad_noise(self, s):
        """Per-coordinate rounding-error bound of :meth:`gradient` (d,)."""
        w = float(np.sum(self.p * expit(-s.m) * np.abs(self.c)))
        reg = self.rho * self.beta
        return np.full(self.data.d, sum_noise(self.data.abs_max() * w + reg, self.data.n))

    def stop(self, extra):
        return False


def convex_line_min(f, s_max: float, s0: float = 1.0, *, xtol: float = 1e-12) -> float:
    """Minimiser of a convex function ``f`` of one variable over ``[0, s_max]``, to ``xtol``
    times the bracket (a start point needs only a loose ``xtol``). The interval is first
    bracketed by doubling from ``s0`` (up to ``s_max``, which may be inf), so a far bound
    (a radius of 1e100 in the solvers' units) does not set the resolution."""
    from scipy.optimize import minimize_scalar

    if s0 < s_max:
        hi, fhi = s0, f(s0)
        for _ in range(80):
            if not 2.0 * hi < s_max:
                break
            f2 = f(2.0 * hi)
            if not f2 < fhi:
                break
            hi, fhi = 2.0 * hi, f2
        s_max = min(2.0 * hi, s_max)
    res = minimize_scalar(f, bounds=(0.0, s_max), method="bounded", options={"xatol": xtol * s_max})
    s = float(res.x)
    return s_max if f(s_max) < f(s) else s


def ray_limit(base, u, radius) -> float:
    """Largest ``s >= 0`` with ``||base + s u|| <= radius`` (inf without a radius)."""
    if radius is None:
        return np.inf
    # in units of the radius (radius**2 overflows float64 beyond 1e154)
    base = np.asarray(base, dtype=float) / radius
    a, b, c = float(u @ u), 2.0 * float(base @ u), float(base @ base) - 1.0
    if a == 0:
        return np.inf
    return radius * max(0.0, (-b + np.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a))


def warm_start_rows(d: int) -> int:
    """Rows of the warm-start subsample: 50 000, fewer in high dimension so that its float64
    copy stays within about 200 MB (25e6 / d rows, at least 5 000)."""
    return int(min(50_000, max(5_000, 25_000_000 // max(d, 1))))


#: A warm-start subsample needs at least this many rows per dimension: with fewer, its
#: problem is ill-conditioned (d / rows near 1) and its answer overfits, so solving it costs
#: more passes than it saves (measured at d = 1024 and 4096, docs/benchmarks-exact.md).
WARM_START_ROWS_PER_DIM = 32


def warm_start_subsample(n: int, d: int) -> np.ndarray | None:
    """The warm-start subsample of the fast solvers (:func:`warm_start_rows` rows, fixed), or
    None when ``n`` is small enough to start on the full data or when the subsample would hold
    fewer than :data:`WARM_START_ROWS_PER_DIM` rows per dimension (high ``d``)."""
    size = warm_start_rows(d)
    if size < WARM_START_ROWS_PER_DIM * d:
        return None
    return subsample(n, size)


def subsample(n: int, size: int, seed: int = 0) -> np.ndarray | None:
    """Sorted row indices of a fixed random subsample (for warm starts), or None if n <= size."""
    if n <= size:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([seed, n, size]))
    return np.sort(rng.choice(n, size=size, replace=False))


def require_converged(info, what: str) -> None:
    if not info["converged"]:
        raise SolverError(
            f"{what}: Newton did not converge in {info['iterations']} iterations "
            f"(decrement {info['newton_decrement']:.3g}).",
            status="not_converged",
            hint="pass a finite radius= (the data may be separable), or use solver='cvxpy'.",
        )


# ---------------------------------------------------------------------------- KL collapse test
def kl_collapse_threshold(X, c, p, *, rho: float, max_iter: int = 100, direction: bool = False):
    """Test whether ``theta = theta_ref`` is KL-robust optimal (the collapse), for interior
    theta_ref.

    At theta_ref every loss is log 2, so every q in the KL ball is a worst case and theta_ref is
    optimal iff some q with ``KL(q || p) <= rho`` makes it stationary: ``sum_i q_i a_i = 0`` with
    ``a_i = c_i x_i``. The least such KL is, by convex duality,

        KL_min = max_w  -log sum_i p_i exp(w . a_i),   attained by q ∝ p exp(w . a),

    a smooth concave problem solved by Newton. Every iterate gives a lower bound, so the search
    stops as soon as the bound exceeds rho. Returns ``(collapsed, bound, q)``; ``q`` (n,) is the
    saddle distribution when ``collapsed``. With ``direction=True`` a fourth item ``w`` (d,)
    is returned: when not collapsed, ``theta - theta_ref = -2 s w``, ``lam = s`` is a descent
    ray of the KL dual out of its degenerate corner ``(theta_ref, 0)`` (linearising
    ``l = log 2 - m / 2`` gives ``F = log 2 + s (rho + log E_p exp(w . a)) < log 2``).
    """
    out = _kl_collapse(X, c, p, rho, max_iter)
    return out if direction else out[:3]


def _kl_collapse(X, c, p, rho, max_iter):
    rows = Rows(as_rows(X), scale=c)  # a_i = c_i x_i
    lse = lse_of(p)

    sub = warm_start_subsample(rows.n, rows.d)
    w0 = None
    if sub is not None and p[sub].sum() > 0:
        # screen on a subsample: any w gives the lower bound -log E_p exp(w . a) of KL_min, so
        # one full pass at the subsample's w certifies "not collapsed" (the usual outcome)
        ps = p[sub] / p[sub].sum()
        _, bound_s, _, w_s = _kl_collapse_newton(rows.subset(sub), ps, rho, max_iter, lse_of(ps))
        if bound_s > rho and np.any(w_s):
            # w_s itself on the full data (one pass), else its best multiple t w_s (no more
            # passes: -log E_p exp(t X w_s) is concave in t). In high dimension the subsample's
            # w overfits (large, with q concentrated on few rows): t < 1 can certify where
            # t = 1 does not, and is a far better start for the full-data Newton.
            margins = rows.matvec(w_s)
            g_val, _ = lse(margins)
            if -g_val > rho * (1 + 1e-12):
                return False, -g_val, None, w_s
            t = convex_line_min(lambda t: lse(t * margins)[0], 2.0, xtol=1e-6)
            g_val, _ = lse(t * margins)
            if -g_val > rho * (1 + 1e-12):
                return False, -g_val, None, t * w_s
            w_s = t * w_s
        w0 = w_s  # the full-data Newton starts next to its optimum (fewer Gram passes)
    return _kl_collapse_newton(rows, p, rho, max_iter, lse, w0)


def lse_of(p):
    """``s -> (log E_p exp(s), q)`` with ``q ∝ p exp(s)`` (rows with p = 0 get q = 0)."""
    pos = p > 0
    logp = np.log(np.where(pos, p, 1.0))

    def lse(s):
        a = np.where(pos, s + logp, -np.inf)
        M = float(a.max())
        e = np.exp(a - M)
        Z = float(e.sum())
        return M + np.log(Z), e / Z

    return lse


def _kl_collapse_newton(rows, p, rho, max_iter, lse, w0=None):
    """Newton on ``max_w -log E_p exp(w . a)`` over the rows ``a_i`` of ``rows``, from ``w0``
    (default 0; any start is valid: every iterate's value is a lower bound)."""
    d = rows.d
    if w0 is None or not np.all(np.isfinite(w0)) or not np.any(w0):
        w = np.zeros(d)
        s = np.zeros(rows.n)
    else:
        w = np.array(w0, dtype=float)
        s = rows.matvec(w)
    g_val, q = lse(s)
    if not np.isfinite(g_val):  # an overflowing start: from 0 instead
        w, s = np.zeros(d), np.zeros(rows.n)
        g_val, q = lse(s)
    for _ in range(max_iter):
        if -g_val > rho * (1 + 1e-12):
            return False, -g_val, None, w
        grad = rows.rmatvec(q)
        if d >= HESSIAN_FREE_D:  # Newton-CG: products with the q-covariance, two passes each

            def cov(v, q=q, grad=grad):
                return rows.rmatvec(q * rows.matvec(v)) - grad * float(grad @ v)

            gn = float(np.linalg.norm(grad))
            step = -conjugate_gradient(cov, grad, rtol=min(0.1, max(1e-12, gn)))[0]
        else:
            H = rows.gram(q) - np.outer(grad, grad)
            try:
                step = -np.linalg.solve(H + 1e-14 * np.trace(H) / d * np.eye(d), grad)
            except np.linalg.LinAlgError:
                return False, -g_val, None, w
        dec = float(-(grad @ step))
        if dec <= 1e-22:
            break
        ds = rows.matvec(step)
        t = 1.0
        while t > 1e-12:
            g_new, q_new = lse(s + t * ds)
            if g_new <= g_val - 1e-4 * t * dec:
                break
            t *= 0.5
        else:
            break
        w, s, g_val, q = w + t * step, s + t * ds, g_new, q_new
    resid = float(np.linalg.norm(rows.rmatvec(q)))
    cmax = float(np.abs(rows.scale).max()) if rows.scale is not None and rows.n else 0.0
    ok = -g_val <= rho * (1 + 1e-9) + 1e-15 and resid <= 1e-9 * (1 + cmax)
    return ok, -g_val, (q if ok else None), w
