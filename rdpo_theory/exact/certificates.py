"""Independent inner suprema: the certificates behind ``ExactResult.gap``
(docs/theory.md#certificates).

Every robust solver returns a dual value ``D(theta)`` (an upper bound of the adversary's
supremum at the returned theta). The functions here compute the adversary's *primal* value
``P(theta)`` from scratch, by a different formulation, so ``gap = D - P`` certifies the value
(weak duality gives ``gap >= 0`` up to solver tolerance):

* KL: ``max_q sum_i q_i l_i`` s.t. ``sum_i q_i log(q_i / p_i) <= rho``, ``q`` in the simplex,
  either as a cvxpy program with ``cp.rel_entr`` (Clarabel) or, for large n, through the exact
  tilted distribution ``q ∝ p exp(l / lam)`` whose KL equals rho (a scalar root find): a
  feasible point, hence a lower bound, that is optimal.
* Wasserstein, finite candidates: the optimal-transport LP
  ``max sum_ik pi_ik L_k`` s.t. ``sum_k pi_ik = p_i``, ``sum_ik pi_ik C_ik <= rho^p``,
  ``pi >= 0``, solved by HiGHS (scipy), with ``C_ik = d(z_i, z'_k)^p``.
* Wasserstein-1, continuous x with label flips at cost kappa: the primal is a fractional
  knapsack. Moving x by t raises a loss by at most ``L t`` with ``L = beta ||theta - theta_ref||``
  (rate attained only at infinity, so the supremum is not attained), flipping pair i costs
  ``kappa`` per unit mass and gains ``softplus(m_i) - softplus(-m_i)``; spend the budget rho on
  the best ratios first.

The second certificate, ``ExactResult.optimality_gap``, bounds the distance of ``value`` to the
*minimax* value (``docs/theory.md#optimality-gap``). Its lower end is a weak-duality bound:
for any distribution ``q`` the adversary may pick, ``min_theta max_Q E_Q l >= min_theta E_q l``,
and :func:`dpo_lower_bound` bounds ``min_theta E_q l`` from below by the Fenchel dual of
weighted logistic regression (:func:`certify_optimal` turns the two ends into a status).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog
from scipy.special import expit, xlog1py, xlogy

from ..divergences.kl import (
    KL,
    SMALL_RHO,
    kl_lambda_for_theta,
    kl_root_value,
    kl_small_radius_bounds,
    kl_tilt,
    with_zero_atom,
)
from ..divergences.wasserstein import (  # noqa: F401  (re-exported; one copy, with the set)
    transport_dual_value,
    transport_primal_sup,
)
from ..errors import SolverError
from ..lazy import cvxpy as cp
from ..losses import (
    dpo_loss,
    kl_divergence,  # noqa: F401  (re-exported; one copy, in losses)
)
from . import fast
from .fast import conjugate_gradient, sum_noise
from .passes import Rows, as_rows
from .result import certify_optimal, solve_problem  # noqa: F401 (certify_optimal re-exported)

#: Above this many rows the KL certificate uses the scalar root find instead of cvxpy.
KL_CVXPY_MAX_ROWS = 20_000
#: Clarabel tolerances for certificates (tighter than the defaults, 1e-8).
TIGHT = {"tol_gap_abs": 1e-11, "tol_gap_rel": 1e-11, "tol_feas": 1e-11}


# ---------------------------------------------------------------------------- KL
def kl_primal_sup(l, p, rho: float, *, p0: float = 0.0, method: str = "auto") -> float:
    """``sup { E_q l : KL(q || p) <= rho }`` for losses ``l`` (n,) and weights ``p`` (n,).

    ``p0`` is the mass of an extra atom with loss log 2 (aggregated x = 0 rows). ``method`` is
    ``"cvxpy"`` (the primal program with ``cp.rel_entr``, Clarabel), ``"root"`` (the feasible
    tilted distribution with KL = rho) or ``"auto"`` (see :func:`kl_primal_certificate`).
    Returns the value in nats.
    """
    return kl_primal_certificate(l, p, rho, p0=p0, method=method)[0]


def kl_primal_certificate(
    l, p, rho: float, *, p0: float = 0.0, method: str = "auto", hint: float | None = None
) -> tuple[float, dict]:
    """The KL primal supremum and how it was certified: ``(value, info)``.

    * ``"root"``: the tilted distribution ``q ∝ p exp(l / lam)`` with ``KL(q || p) = rho``
      (Brent root in log lam), which satisfies the KKT conditions of the primal exactly, so
      ``E_q l`` is the supremum; its KL is checked against rho (else SolverError). When
      ``rho >= -log P(argmax l)`` the supremum is ``max l`` (lam = 0).
    * ``"cvxpy"``: ``max sum q l`` s.t. ``sum rel_entr(q, p) <= rho`` by Clarabel at tight
      tolerances; anything but ``optimal`` raises SolverError (never a value from an
      inaccurate solve).
    * ``"auto"``: the conic certificate up to ``KL_CVXPY_MAX_ROWS`` rows, cross-checked by the
      root certificate; when the conic solve fails, is inaccurate, or disagrees with the root
      one by more than 1e-8 (relative), the root certificate is used. Above the row limit:
      root.

    Below ``divergences.kl.SMALL_RHO`` (1e-10) ``"auto"`` and ``"root"`` return the centred
    feasible point of :func:`rdpo_theory.divergences.kl.kl_small_radius_bounds` instead
    (``"small radius (centred tilt)"``, within O(rho) of the supremum;
    docs/theory.md#kl-small-radius): there the root's KL and the conic program's feasibility
    tolerance (1e-11) are both coarser than rho.

    ``hint``: the solver's multiplier, where the root search starts (same root, fewer
    evaluations). ``info["certificate"]`` names the certificate used (``"cvxpy (rel_entr)"``
    or ``"root (tilted distribution)"``); ``info["certificate_note"]`` says why auto fell back.
    """
    l = np.asarray(l, dtype=float)
    p = np.asarray(p, dtype=float)
    pos = p > 0
    ll, pp = with_zero_atom(l[pos], p[pos], p0)
    if method not in ("auto", "cvxpy", "root"):
        raise ValueError(f"unknown method {method!r}")
    if rho == 0:
        return float(pp @ ll), {"certificate": "rho = 0 (E_p l)"}
    if rho < SMALL_RHO and method != "cvxpy":  # within O(rho) of the supremum
        return kl_small_radius_bounds(ll, pp / pp.sum(), rho)["primal"], {"certificate": SMALL}
    if method == "root" or (method == "auto" and ll.shape[0] > KL_CVXPY_MAX_ROWS):
        return kl_root_value(l, p, rho, p0=p0, hint=hint), {"certificate": ROOT}
    try:
        value = _kl_conic_certificate(ll, pp, rho)
    except (SolverError, cp.error.SolverError, ValueError, ArithmeticError) as exc:
        if method == "cvxpy":
            if isinstance(exc, SolverError):
                raise
            raise SolverError(
                f"KL certificate (primal sup over the KL ball): {exc}",
                status="solver_error",
                hint="use certificate='root' (the exact tilted distribution).",
            ) from exc
        status = getattr(exc, "status", type(exc).__name__)
        value = kl_root_value(l, p, rho, p0=p0, hint=hint)
        return value, {"certificate": ROOT, "certificate_note": f"conic certificate {status}"}
    if method == "cvxpy":
        return value, {"certificate": CONIC}
    root = kl_root_value(l, p, rho, p0=p0, hint=hint)
    if abs(value - root) > 1e-8 * max(1.0, abs(root)):
        note = f"conic certificate {value!r} disagrees with the exact tilted one {root!r}"
        return root, {"certificate": ROOT, "certificate_note": note}
    return value, {"certificate": CONIC, "certificate_root_diff": value - root}


CONIC = "cvxpy (rel_entr)"
ROOT = "root (tilted distribution)"
SMALL = "small radius (centred tilt)"


def _kl_conic_certificate(ll, pp, rho) -> float:
    # shift the losses so the program is scaled around 0 (the value shifts by the same amount)
    shift = float(ll.max())
    q = cp.Variable(ll.shape[0], nonneg=True)
    prob = cp.Problem(
        cp.Maximize((ll - shift) @ q), [cp.sum(q) == 1, cp.sum(cp.rel_entr(q, pp)) <= rho]
    )
    last = None
    for opts in (TIGHT, {}):  # tight tolerances first; Clarabel's defaults if it stalls
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                solve_problem(prob, what="KL certificate (primal sup over the KL ball)", **opts)
            break
        except SolverError as exc:
            last = exc
    else:
        raise last
    return float(prob.value) + shift


# ---------------------------------------------------------------------------- optimality
def binary_entropy(a) -> np.ndarray:
    """``H(a) = -a log a - (1 - a) log(1 - a)`` (nats), elementwise on ``[0, 1]``."""
    a = np.asarray(a, dtype=float)
    return -xlogy(a, a) - xlog1py(1.0 - a, -a)


def dpo_dual_value(A, q, alpha, *, theta_ref, radius, linear=None) -> float:
    """The Fenchel dual of weighted DPO at ``alpha``: a lower bound of its minimum.

    ``softplus(-m) = max_{a in [0, 1]} H(a) - a m``, so for every ``alpha`` in ``[0, 1]^n``
    (``docs/theory.md#optimality-gap``)::

        min_{||theta|| <= B} sum_i q_i softplus(-a_i . (theta - theta_ref))
            >= sum_i q_i H(alpha_i) + w . theta_ref - B ||w||,    w = sum_i q_i alpha_i a_i.

    Without a radius (B = inf) the bound is finite only when ``w = 0``; a ``w`` within the
    float64 rounding error of its own sum (:func:`.fast.sum_noise`, per coordinate) is taken as
    0, otherwise ``-inf`` is returned. With a linear term ``b . (theta - theta_ref)`` added to
    the objective (``linear=b``), ``w`` is replaced by ``w - b`` throughout.

    Parameters
    ----------
    A : ndarray (n, d) or :class:`.passes.Rows`
        Rows ``a_i = c_i x_i`` (the margin is ``a_i . (theta - theta_ref)``); a Rows (e.g.
        ``Rows(X, scale=c)``) avoids materialising them and counts the passes.
    q : ndarray (n,)
        Nonnegative weights.
    alpha : ndarray (n,)
        Dual point in ``[0, 1]^n``.
    theta_ref : ndarray (d,)
    radius : float or None

    Returns
    -------
    float
        The lower bound (nats).
    """
    R = as_rows(A)
    alpha = np.clip(np.asarray(alpha, dtype=float), 0.0, 1.0)
    qa = q * alpha
    w = R.rmatvec(qa)
    top_b = 0.0
    if linear is not None:
        b = np.asarray(linear, dtype=float)
        w = w - b
        top_b = float(np.abs(b).max(initial=0.0))
    base = float(q @ binary_entropy(alpha)) + float(w @ theta_ref)
    noise = sum_noise(R.abs_max() * float(qa.sum()) + top_b, R.n)
    if bool(np.all(np.abs(w) <= noise)):
        # w is 0 up to the rounding of its own sum: the bound of the unconstrained minimum,
        # hence of the constrained one too (with a radius of 1e20 in the solvers' units,
        # e.g. beta = 1e20 rescaled, ``B ||w||`` would otherwise turn rounding into -1e3)
        return base
    if radius is not None:
        with np.errstate(over="ignore"):  # B ||w|| beyond float64: the bound is -inf
            return base - radius * float(np.linalg.norm(w))
    return -np.inf


def dpo_lower_bound(A, q, theta, *, theta_ref, radius, margins=None, linear=None) -> float:
    """A certified lower bound of ``min_{||theta|| <= radius} sum_i q_i softplus(-a_i . delta)``,
    ``delta = theta - theta_ref``, from a (near-)minimiser ``theta``.

    Two dual points of :func:`dpo_dual_value` are tried and the larger bound is returned:

    * ``alpha_i = sigmoid(-m_i)`` at ``theta``: the bound is ``f(theta)`` minus the
      Frank-Wolfe gap ``B ||w|| - w . theta`` (zero at a KKT point on the sphere);
    * the same ``alpha`` moved by one Newton correction ``alpha_i (1 - alpha_i) a_i . z``, with
      ``z`` solving ``H z = -w`` (``H`` the Hessian, in the row space of ``A``, rows scaled to
      unit size so that the solve does not underflow), which makes ``w = 0`` (interior
      minimisers, and the only finite bound without a radius).

    ``A`` is an array (n, d) or a :class:`.passes.Rows`; ``margins`` (n,), when given, are
    ``A (theta - theta_ref)`` (saves a pass); ``linear``: a term ``b . (theta - theta_ref)``
    added to the objective (the correction then aims at ``w = b``). In dimension
    ``d >= fast.HESSIAN_FREE_D`` the correction system is solved by conjugate gradients with
    products ``H v`` (two passes each) instead of a Gram matrix. Returns the bound in nats
    (``-inf`` when neither dual point gives a finite bound).
    """
    A = as_rows(A) if isinstance(A, Rows) else as_rows(np.asarray(A, dtype=float))
    q = np.asarray(q, dtype=float)
    theta = np.asarray(theta, dtype=float)
    m = A.matvec(theta - theta_ref) if margins is None else np.asarray(margins, dtype=float)
    alpha = expit(-m)
    best = -np.inf
    b = np.zeros(A.d) if linear is None else np.asarray(linear, dtype=float)
    dual = functools.partial(dpo_dual_value, theta_ref=theta_ref, radius=radius, linear=linear)
    if radius is not None:
        best = dual(A, q, alpha)
    scale = A.abs_max()
    if scale == 0 or not np.isfinite(scale):
        return max(best, dual(A, q, alpha))
    # rows scaled to unit size (so that the solve does not underflow): an array is divided
    # once, a Rows view scales its row factors (its data are O(1) in the solvers' units)
    As = A.scaled(np.full(A.n, 1.0 / scale)) if A.scale is not None else as_rows(A.X / scale)
    As.counter = A.counter
    # The correction is linear in alpha: with the weights s = alpha0 (1 - alpha0) of the first
    # point, alpha + s (A z) moves w by H z exactly (H = A^T diag(q s) A), so one Gram pass
    # serves both rounds; the second removes the round-off of the first.
    s0 = alpha * (1.0 - alpha)
    H = None
    bs = b / scale
    free = A.d >= fast.HESSIAN_FREE_D

    def hv(v):
        return As.rmatvec(q * s0 * As.matvec(v))

    w = As.rmatvec(q * alpha) - bs
    for _ in range(2):
        top = As.abs_max() * float(q @ alpha) + float(np.abs(bs).max(initial=0.0))
        if np.all(np.abs(w) <= 0.5 * sum_noise(top, As.n)):
            break  # well within the rounding of its own sum: a correction cannot help
        if free:
            z = conjugate_gradient(hv, -w, rtol=1e-14, max_iter=4 * A.d)[0]
        else:
            if H is None:
                H = As.gram(q * s0)
            z = np.linalg.lstsq(H, -w, rcond=1e-13)[0]
        cand = alpha + s0 * As.matvec(z)
        if not np.all((cand >= 0) & (cand <= 1)):
            break
        alpha = cand
        w = As.rmatvec(q * alpha) - bs
    return max(best, dual(A, q, alpha))


def kl_into_ball(q, p, rho: float) -> np.ndarray:
    """``q`` mixed with ``p`` so that ``KL(q || p) <= rho`` (convexity of KL in q):
    ``(1 - e) q + e p`` with ``e = 1 - rho / KL(q || p)`` when ``KL(q || p) > rho``
    (:meth:`rdpo_theory.divergences.AmbiguitySet.into_ball` of the KL ball)."""
    return KL().into_ball(q, p, rho)


def kl_minimax_lower_bound(
    A, p, rho, theta, candidates, *, theta_ref, radius, margins=None, enough=np.inf, hint=None
) -> float:
    """Weak-duality lower bound of the KLDPO minimax value (``docs/theory.md#optimality-gap``):
    ``max`` over the candidate worst cases ``q`` (each first mixed into the KL ball by
    :func:`kl_into_ball`, so it is feasible) of :func:`dpo_lower_bound` at ``theta``, plus the
    exact worst case at ``theta`` (the tilted distribution with KL = rho, or the uniform law
    on the argmax set when ``rho`` exceeds its ``-log`` mass). ``A``: an array (n, d) or a
    :class:`.passes.Rows`; ``margins``: ``A (theta - theta_ref)`` when already known.
    ``enough``: stop at the first candidate whose bound reaches it (every candidate's bound is
    valid; the rest would only tighten it), which saves their passes."""
    p = np.asarray(p, dtype=float)
    A = as_rows(A) if isinstance(A, Rows) else as_rows(np.asarray(A, dtype=float))
    if margins is None:
        margins = A.matvec(np.asarray(theta, dtype=float) - theta_ref)
    l = dpo_loss(margins)
    pos = p > 0

    def exact_worst_case():
        lam = kl_lambda_for_theta(l, p, rho, hint=hint)
        if lam > 0:
            qt = np.zeros_like(p)
            qt[pos] = kl_tilt(l[pos], p[pos], lam)[0]
            return qt
        top = pos & (l >= l[pos].max() - 1e-14 * max(1.0, abs(float(l[pos].max()))))
        return np.where(top, p, 0.0)

    def qs():  # the exact worst case (a root find) only when the candidates do not suffice
        yield from (np.asarray(c, dtype=float) for c in candidates if c is not None)
        yield exact_worst_case()

    best = -np.inf
    for q in qs():
        if not (q.shape == p.shape and np.all(np.isfinite(q)) and q.sum() > 0):
            continue
        qb = kl_into_ball(q, p, rho)
        best = max(
            best,
            dpo_lower_bound(A, qb, theta, theta_ref=theta_ref, radius=radius, margins=margins),
        )
        if best >= enough:
            break
    return best


# transport LP: moved to rdpo_theory.divergences.wasserstein (re-exported above)


# ---------------------------------------------------------------------------- Wasserstein-1
def w1_primal_sup(l, l_flip, p, lip: float, rho: float, kappa: float) -> tuple[float, np.ndarray]:
    """Primal supremum for continuous x, p = 1, cost ``||x - x'|| + kappa |y - y'|``.

    A fractional knapsack: flipping pair i gains ``l_flip_i - l_i`` per unit mass at cost kappa;
    moving x gains ``lip`` per unit of cost without limit. Returns ``(value, flip_fraction)``,
    ``flip_fraction`` (n,) the share of each pair's mass the adversary flips.
    """
    l, l_flip, p = (np.asarray(a, dtype=float) for a in (l, l_flip, p))
    value = float(p @ l)
    frac = np.zeros_like(p)
    budget = float(rho)
    if np.isfinite(kappa):
        ratio = (l_flip - l) / kappa
        order = np.argsort(-ratio, kind="stable")
        for i in order:
            if ratio[i] <= lip or budget <= 0:
                break
            if p[i] == 0:
                continue
            take = min(p[i], budget / kappa)
            frac[i] = take / p[i]
            value += take * (l_flip[i] - l[i])
            budget -= take * kappa
    return value + budget * lip, frac


def w1_dual_min(l, l_flip, p, lip: float, rho: float, kappa: float) -> tuple[float, float]:
    """``min_{lam >= lip} lam rho + sum_i p_i max(l_i, l_flip_i - lam kappa)`` exactly.

    The objective is piecewise linear and convex in lam with breakpoints
    ``(l_flip_i - l_i) / kappa``. Returns ``(value, lam*)`` with the smallest minimiser.
    """
    l, l_flip, p = (np.asarray(a, dtype=float) for a in (l, l_flip, p))

    def obj(lam):
        if not np.isfinite(kappa):
            return lam * rho + float(p @ l)
        return lam * rho + float(p @ np.maximum(l, l_flip - lam * kappa))

    if not np.isfinite(kappa):
        return obj(lip), lip
    brk = (l_flip - l) / kappa
    pts = np.unique(np.concatenate([[lip], brk[(brk > lip) & (p > 0)]]))
    # slope right of lam: rho - kappa * P(brk > lam); first point with slope >= 0 is optimal
    order = np.argsort(brk)
    bs, ps = brk[order], p[order]
    tail = np.concatenate([np.cumsum(ps[::-1])[::-1], [0.0]])
    for lam in pts:
        j = np.searchsorted(bs, lam, side="right")
        if rho - kappa * tail[j] >= 0:
            return obj(lam), float(lam)
    lam = float(pts[-1])  # pragma: no cover - the last breakpoint always has slope rho >= 0
    return obj(lam), lam


def collapse_plan(Ac, p, C, budget: float) -> np.ndarray | None:
    """A plan certifying that ``theta = theta_ref`` is optimal for finite-candidate WDPO, or None.

    At theta_ref every candidate loss is log 2, so every feasible plan is a worst case and the
    subdifferential of the robust objective there is ``{-1/2 sum_ik pi_ik A_k}`` over feasible
    plans (``A_k = sy'_k beta x'_k``). theta_ref (inside the ball) is optimal exactly when some
    feasible plan makes this zero: an LP feasibility problem, solved by HiGHS.
    """
    n, K = C.shape
    rows = np.flatnonzero(p > 0)
    ii, kk = np.nonzero(np.isfinite(C[rows]))
    nv = ii.shape[0]
    A_eq = sp.vstack(
        [
            sp.csr_matrix((np.ones(nv), (ii, np.arange(nv))), shape=(rows.shape[0], nv)),
            sp.csr_matrix(Ac[kk].T),
        ]
    )
    b_eq = np.concatenate([p[rows], np.zeros(Ac.shape[1])])
    res = linprog(
        np.zeros(nv),
        A_ub=sp.csr_matrix(C[rows][ii, kk][None, :]),
        b_ub=[budget],
        A_eq=A_eq,
        b_eq=b_eq,
        bounds=(0, None),
        method="highs",
    )
    if res.status != 0:
        return None
    plan = np.zeros((n, K))
    plan[rows[ii], kk] = np.clip(res.x, 0.0, None)
    return plan
