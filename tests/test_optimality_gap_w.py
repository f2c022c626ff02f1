"""Optimality certificates of the Wasserstein, chi-square, CVaR, group and baseline solvers
(docs/theory.md#optimality-gap), and the scale faults they exposed.

Honesty: ``value - optimality_gap`` is a lower bound of the minimax value, so it never exceeds
the robust objective at any theta, in particular at the best theta an independent search
finds (brute force in d = 1, multi-start minimisation of the exact robust objective in
d = 2, closed forms).
"""

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar

from rdpo_theory import PreferenceData
from rdpo_theory.errors import SolverError
from rdpo_theory.exact import cdpo, chi2dpo, cvardpo, dpo, group_dpo, rdpo, wdpo
from rdpo_theory.exact import certificates as cert
from rdpo_theory.exact.dpo import recession_direction
from rdpo_theory.exact.optimality import logistic_lower_bound
from rdpo_theory.exact.wasserstein_p import robust_value, wdpo_continuous_p
from rdpo_theory.losses import (
    chi2_objective,
    cvar_objective,
    dpo_loss,
    group_robust_objective,
    margins,
    rdpo_loss,
)

LOG2 = np.log(2.0)
TOL = 1e-6  # certify_optimal's default relative tolerance


def _data(n, d, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * scale
    w = rng.normal(size=d)
    y = ((X @ w) / scale + rng.normal(size=n) > 0).astype(float)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    return X, y


def _min_1d(f, lo, hi, points=401):
    """Brute force over [lo, hi] (grid, then a bounded search around the best point);
    ``points=0``: the bounded search alone (enough for a convex f; for costly f)."""
    if points == 0:
        res = minimize_scalar(
            lambda t: f(np.array([t])), bounds=(lo, hi), method="bounded", options={"xatol": 1e-9}
        )
        return float(res.fun)
    grid = np.linspace(lo, hi, points)
    vals = np.array([f(np.array([t])) for t in grid])
    i = int(np.argmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = minimize_scalar(
        lambda t: f(np.array([t])), bounds=(a, b), method="bounded", options={"xatol": 1e-12}
    )
    return min(float(res.fun), float(vals.min()))


def _min_nd(f, d, radius, seed, scale=1.0, starts=6):
    """Multi-start minimisation of a convex robust objective (SLSQP over the ball, or
    Nelder-Mead then Powell without one)."""
    rng = np.random.default_rng(seed)
    best = np.inf
    for _ in range(starts):
        x0 = rng.normal(size=d) * scale
        if radius is not None:
            x0 = x0 * min(1.0, 0.9 * radius / np.linalg.norm(x0))
            cons = [{"type": "ineq", "fun": lambda z: radius**2 - z @ z}]
            res = minimize(f, x0, method="SLSQP", constraints=cons, options={"ftol": 1e-14})
            if np.linalg.norm(res.x) <= radius * (1 + 1e-9):
                best = min(best, float(res.fun))
        else:
            res = minimize(f, x0, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14})
            res = minimize(f, res.x, method="Powell", options={"xtol": 1e-10, "ftol": 1e-14})
            best = min(best, float(res.fun))
    return best


def _honest(res, reference):
    """value - gap <= the best robust value found independently; value close to it."""
    assert res.status == "optimal"
    assert res.optimality_gap is not None and res.optimality_gap <= TOL * (1 + abs(res.value))
    assert res.value - res.optimality_gap <= reference + 1e-12
    assert res.value <= reference + TOL * (1 + abs(reference))


# ---------------------------------------------------------------------------- the kernel
@pytest.mark.parametrize("radius", [None, 0.4, 3.0])
def test_logistic_lower_bound_is_honest_and_tight(radius):
    X, y = _data(25, 3, 0)
    A = (2 * y - 1)[:, None] * X
    w = np.full(25, 1 / 25)
    ref = dpo(X, y, beta=1.0, radius=radius)
    lo, _ = logistic_lower_bound(A, w, ref.theta, theta_ref=np.zeros(3), radius=radius)
    assert lo <= ref.value + 1e-15 and ref.value - lo < 1e-12
    rng = np.random.default_rng(1)
    for _ in range(20):  # at any other theta the bound stays below the optimum
        th = ref.theta + rng.normal(size=3) * 0.3
        if radius is not None and np.linalg.norm(th) > radius:
            th *= radius / np.linalg.norm(th)
        lo, _ = logistic_lower_bound(A, w, th, theta_ref=np.zeros(3), radius=radius)
        assert lo <= ref.value + 1e-15


def test_logistic_lower_bound_refuses_unbounded_directions():
    # separable data without a radius: no finite lower bound exists
    X = np.array([[1.0, 0.0], [2.0, 1.0]])
    lo, _ = logistic_lower_bound(X, np.full(2, 0.5), np.array([1.0, 0.0]), theta_ref=np.zeros(2))
    assert lo == -np.inf


# ---------------------------------------------------------------------------- continuous W1
def _w1_objective(X, y, rho, beta, kappa):
    p = np.full(len(y), 1 / len(y))

    def f(th):
        m = margins(th, X, y, beta=beta)
        lip = beta * float(np.linalg.norm(th))
        return cert.w1_dual_min(dpo_loss(m), dpo_loss(-m), p, lip, rho, kappa)[0]

    return f


@pytest.mark.parametrize("solver", ["cvxpy", "fast"])
@pytest.mark.parametrize("radius", [None, 0.3])
@pytest.mark.parametrize("rho", [0.02, 0.2, 5.0])
def test_w1_penalty_honest_against_brute_force_d1(solver, radius, rho):
    X, y = _data(15, 1, 3)
    res = wdpo(X, y, rho=rho, beta=1.5, radius=radius, solver=solver)
    B = radius if radius is not None else 20.0
    _honest(res, _min_1d(_w1_objective(X, y, rho, 1.5, np.inf), -B, B))


@pytest.mark.parametrize("kappa", [np.inf, 0.5])
@pytest.mark.parametrize("radius", [None, 1.0])
def test_w1_honest_against_multistart_d2(kappa, radius):
    X, y = _data(12, 2, 4)
    res = wdpo(X, y, rho=0.1, beta=1.0, kappa=kappa, radius=radius)
    _honest(res, _min_nd(_w1_objective(X, y, 0.1, 1.0, kappa), 2, radius, 0))


def test_w1_collapse_certificate_is_exact():
    X, y = _data(10, 2, 5)
    thr = np.linalg.norm(X.T @ (2 * y - 1)) / (2 * len(y))
    for solver in ("cvxpy", "fast"):
        res = wdpo(X, y, rho=1.01 * thr, beta=1.0, solver=solver)
        assert res.regime == "collapse" and res.value == pytest.approx(LOG2, abs=1e-15)
        assert 0 <= res.optimality_gap < 1e-12


@pytest.mark.parametrize("scale", [1e-300, 1e-20, 1e-6, 1e20, 1e150, 1e300])
def test_w1_scale_invariance(scale):
    # X * s and rho * s describe the same problem: same value, theta / s
    X, y = _data(20, 3, 6)
    base = wdpo(X, y, rho=0.05, beta=1.0, solver="fast")
    for solver in ("fast", "cvxpy"):
        res = wdpo(X * scale, y, rho=0.05 * scale, beta=1.0, solver=solver)
        assert res.value == pytest.approx(base.value, rel=1e-9)
        np.testing.assert_allclose(res.theta * scale, base.theta, rtol=1e-6)
        assert res.optimality_gap <= TOL * (1 + res.value)


def test_w1_fast_at_1e20_is_not_17397():
    # the fault: X * 1e20 with rho * 1e20 returned 17397 instead of the unit answer
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 10))
    y = (X @ rng.normal(size=10) > 0).astype(float)
    y[:4] = 1 - y[:4]
    ref = wdpo(X, y, rho=0.3, beta=1.0, solver="fast")
    big = wdpo(X * 1e20, y, rho=0.3e20, beta=1.0, solver="fast")
    assert big.value == pytest.approx(ref.value, rel=1e-9)


def test_scale_outside_float64_is_refused_with_a_message_that_says_so():
    X, y = _data(10, 2, 7)
    with pytest.raises(SolverError, match="scale"):
        wdpo(X * 1e300, y, rho=1e299, beta=1e300, radius=1.0)


@pytest.mark.parametrize("scale", [1e-300, 1e-20, 1.0, 1e20, 1e300])
def test_separability_lp_at_every_scale(scale):
    X, y = _data(20, 3, 8)
    A = (2 * y - 1)[:, None] * X
    sep = np.array([[1.0, 0.5], [2.0, -0.1], [0.3, 0.2]])
    assert recession_direction(A * scale) is None
    assert recession_direction(sep * scale) is not None


# ---------------------------------------------------------------------------- W_p, p > 1
def test_wp_tolerances_are_scale_free():
    # the faults: X * 1e-6 returned a value 7e-5 above the optimum as optimal, and
    # beta = 1e-8 raised a false "minimiser is at infinity"
    X, y = _data(12, 2, 1)
    data = PreferenceData(X, y)
    base = wdpo_continuous_p(data, rho=0.15, p=2.0, beta=1.0)
    small = wdpo_continuous_p(PreferenceData(X * 1e-6, y), rho=0.15e-6, p=2.0, beta=1.0)
    tiny_beta = wdpo_continuous_p(data, rho=0.15, p=2.0, beta=1e-8)
    for res in (small, tiny_beta):
        assert res.status == "optimal"
        assert res.value == pytest.approx(base.value, rel=1e-9)
        assert res.optimality_gap <= TOL * (1 + res.value)
    np.testing.assert_allclose(small.theta * 1e-6, base.theta, rtol=1e-6)
    np.testing.assert_allclose(tiny_beta.theta * 1e-8, base.theta, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("radius", [None, 0.4])
def test_wp_honest_against_brute_force_d1(radius):
    X, y = _data(8, 1, 9)
    data = PreferenceData(X, y)
    res = wdpo(X, y, rho=0.1, beta=1.0, p=2, radius=radius, solver="fast")
    B = radius if radius is not None else 6.0

    def f(th):
        return robust_value(th, data, rho=0.1, p=2.0, beta=1.0)[0]

    _honest(res, _min_1d(f, -B, B, points=0))


def test_wp_collapse_is_certified():
    X, y = _data(10, 2, 10)
    g = np.linalg.norm((2 * y - 1) @ X) / len(y)
    res = wdpo(X, y, rho=1.01 * g, beta=1.0, p=2, solver="fast")
    assert res.regime == "collapse" and res.status == "optimal"
    assert 0 <= res.optimality_gap < 1e-12


# ---------------------------------------------------------------------------- finite candidates
@pytest.mark.parametrize("p,rho", [(1, 0.3), (2, 0.3), (1, 0.03), (2, 0.1)])
@pytest.mark.parametrize("radius", [None, 0.8])
def test_finite_candidates_honest_against_brute_force_d1(p, rho, radius):
    X, y = _data(6, 1, 11)
    rng = np.random.default_rng(12)
    Xc = np.vstack([X, rng.normal(size=(6, 1))])
    yc = np.r_[y, rng.random(6) < 0.5].astype(float)
    res = wdpo(X, y, rho=rho, beta=1.0, p=p, kappa=1.0, radius=radius, candidates=(Xc, yc))
    C = np.abs(X - Xc.T) + 1.0 * (y[:, None] != yc[None, :])
    w = np.full(6, 1 / 6)

    def f(th):
        # the dual value at the LP's multiplier: an upper bound of the robust objective at
        # th (weak duality, in closed form), so the reference never dips below min R
        L = dpo_loss(margins(th, Xc, yc, beta=1.0))
        eta = cert.transport_primal_sup(L, w, C**p, rho**p)[2]
        return cert.transport_dual_value(L, w, C**p, rho**p, eta)

    B = radius if radius is not None else 8.0
    _honest(res, _min_1d(f, -B, B, points=101))
    assert (res.regime == "collapse") == (rho == 0.3)


# ---------------------------------------------------------------------------- chi2 / CVaR
def test_cvar_small_level_collapse_is_detected():
    # the fault: level = 1e-9 returned "optimal" with a primal gap of 2e-4, collapse missed
    X, y = _data(30, 3, 0)
    res = cvardpo(X, y, level=1e-9, beta=1.0)
    assert res.regime == "collapse" and res.status == "optimal"
    np.testing.assert_array_equal(res.theta, np.zeros(3))
    assert res.value == pytest.approx(LOG2, abs=1e-15) and res.optimality_gap < 1e-12
    big = chi2dpo(X, y, rho=1e6, beta=1.0)
    assert big.regime == "collapse" and big.optimality_gap < 1e-12


def test_cvar_level_one_and_chi2_rho_zero_are_dpo():
    X, y = _data(20, 2, 13)
    ref = dpo(X, y, beta=1.3)
    for res in (cvardpo(X, y, level=1.0, beta=1.3), chi2dpo(X, y, rho=0.0, beta=1.3)):
        assert res.value == pytest.approx(ref.value, rel=1e-12)
        assert res.optimality_gap <= 1e-12


@pytest.mark.parametrize("radius", [None, 0.5])
@pytest.mark.parametrize(
    "kind,param", [("cvar", 0.3), ("cvar", 0.05), ("chi2", 0.2), ("chi2", 2.0)]
)
def test_chi2_cvar_honest_against_brute_force_d1(kind, param, radius):
    X, y = _data(14, 1, 14)
    if kind == "cvar":
        res = cvardpo(X, y, level=param, beta=1.0, radius=radius)
        obj = cvar_objective
        kw = {"level": param}
    else:
        res = chi2dpo(X, y, rho=param, beta=1.0, radius=radius)
        obj = chi2_objective
        kw = {"rho": param}

    def f(th):
        return obj(dpo_loss(margins(th, X, y, beta=1.0)), **kw)

    B = radius if radius is not None else 15.0
    _honest(res, _min_1d(f, -B, B))


@pytest.mark.parametrize("scale", [1e-12, 1e12, 1e100])
def test_chi2_cvar_scale_invariance(scale):
    X, y = _data(30, 3, 0)
    for fn, kw in ((cvardpo, {"level": 0.3}), (chi2dpo, {"rho": 0.3})):
        base = fn(X, y, beta=1.0, **kw)
        res = fn(X * scale, y, beta=1.0, **kw)
        assert res.value == pytest.approx(base.value, rel=1e-8)
        assert res.optimality_gap <= TOL * (1 + res.value)


# ---------------------------------------------------------------------------- group, rDPO, cDPO
def test_group_dpo_honest_against_multistart_d2():
    X, y = _data(18, 2, 15)
    g = np.arange(18) % 3
    res = group_dpo(X, y, g, beta=1.0)

    def f(th):
        return group_robust_objective(dpo_loss(margins(th, X, y, beta=1.0)), g)

    _honest(res, _min_nd(f, 2, None, 1))


@pytest.mark.parametrize("radius", [None, 0.5])
def test_rdpo_cdpo_honest_against_brute_force_d1(radius):
    X, y = _data(16, 1, 16)
    y[:3] = 1 - y[:3]
    r = rdpo(X, y, eps=0.05, beta=1.0, radius=radius)
    c = cdpo(X, y, eps=0.2, beta=1.0, radius=radius)
    B = radius if radius is not None else 15.0
    _honest(r, _min_1d(lambda t: rdpo_loss(margins(t, X, y, beta=1.0), eps=0.05).mean(), -B, B))
    from rdpo_theory.losses import cdpo_loss

    _honest(c, _min_1d(lambda t: cdpo_loss(margins(t, X, y, beta=1.0), eps=0.2).mean(), -B, B))
