"""Regressions from the studies' users: each case below failed before its fix (see the report
in the commit messages). References are independent: KKT conditions, the other solver path,
a second conic solver, the subgradient condition."""

import warnings

import cvxpy as cp
import numpy as np
import pytest

from rdpo_theory.errors import SolverError
from rdpo_theory.exact import dpo, fast, kldpo, wdpo
from rdpo_theory.exact.dpo import kkt_certificate
from rdpo_theory.losses import dpo_loss, dpo_risk
from rdpo_theory.worlds import World


@pytest.fixture(scope="module")
def rates_world():
    """The rates study's built-in "random" world (radius B = 2, theta_ref = 0)."""
    return World.random(8, 4, 3, seed=0)


# ---------------------------------------------------------------------------- item 1: DPO
@pytest.mark.parametrize("n, s", [(110, 7), (530, 13), (2600, 4), (12800, 10)])
def test_dpo_certified_where_clarabel_is_inaccurate(rates_world, n, s):
    """Clarabel ended 'optimal_inaccurate' on these empirical laws; the result must now be
    KKT-certified and agree with a second conic solver (SCS at tight tolerance)."""
    w = rates_world
    data = w.empirical(n, (0, n, s))
    kw = dict(beta=w.beta, theta_ref=w.theta_ref, radius=w.B)
    r = dpo(data, **kw)
    assert r.status == "optimal"
    resid, tol = kkt_certificate(r.theta, data, **kw)
    assert resid <= tol and r.info["kkt_residual"] == resid
    th = cp.Variable(data.d)
    A = data.signed_labels[:, None] * w.beta * data.X
    prob = cp.Problem(cp.Minimize(data.weights @ cp.logistic(-(A @ th))), [cp.norm(th) <= w.B])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob.solve(solver="SCS", eps=1e-10, max_iters=200_000)
    assert r.value <= dpo_risk(th.value, data, beta=w.beta) + 1e-12
    assert r.value == pytest.approx(prob.value, abs=1e-7)
    np.testing.assert_allclose(r.theta, th.value, atol=1e-4)


def test_dpo_fallback_is_used_and_reported(rates_world):
    w = rates_world
    data = w.empirical(110, (0, 110, 7))
    r = dpo(data, beta=w.beta, theta_ref=w.theta_ref, radius=w.B)
    # Clarabel 'optimal_inaccurate' here (cvxpy 1.9.3); the answer comes from the fallback
    assert r.info.get("fallback") == "newton (KKT-certified)"
    assert r.info["conic_status"] == "optimal_inaccurate"


# ---------------------------------------------------------------------------- item 2: fast KL
@pytest.mark.parametrize("n, s", [(500, 1), (500, 3), (2000, 31)])
def test_kl_fast_near_collapse_converges(rates_world, n, s):
    """theta* close to theta_ref: Newton used to slide into the dual's degenerate corner
    (theta_ref, lam = 0) and stop at the lam floor ("did not converge")."""
    w = rates_world
    data = w.empirical(n, s)
    kw = dict(rho=0.03, beta=w.beta, theta_ref=w.theta_ref, radius=w.B)
    a = kldpo(data, solver="cvxpy", **kw)
    b = kldpo(data, solver="fast", certificate="root", **kw)
    assert b.regime == a.regime == "interior" and not b.info["collapsed_to_theta_ref"]
    assert b.value == pytest.approx(a.value, rel=1e-9)
    np.testing.assert_allclose(b.theta, a.theta, atol=1e-6)
    assert b.dual == pytest.approx(a.dual, rel=1e-5)
    assert abs(b.gap) <= 1e-9


class _NoisyQuadratic:
    """``f = sum_j h_j z_j^2 / 2`` whose gradient carries a rounding-like error of size
    ``noise``: the Newton decrement plateaus near ``noise^2 / h`` and never reaches the
    absolute decrement tolerance, although the point is optimal to the gradient's precision."""

    def __init__(self, h, noise, rng):
        self.h, self.noise, self.rng = np.asarray(h), noise, rng

    class S:
        pass

    def state(self, theta, extra):
        s = self.S()
        s.theta, s.f = theta.copy(), 0.5 * float(self.h @ theta**2)
        return s

    def gradient(self, s):
        return self.h * s.theta + self.noise * self.rng.uniform(-1, 1, s.theta.shape)

    def derivs(self, s):
        return self.gradient(s), np.diag(self.h)

    def direction_margins(self, dth):
        return dth

    def value_along(self, s, dm, theta, extra):
        return self.state(theta, extra)

    def max_step(self, extra, dex, theta=None, dth=None):
        return 1.0

    def grad_noise(self, s):
        return np.full(s.theta.shape, 4 * self.noise)

    def stop(self, extra):
        return False


def test_newton_stops_at_the_gradient_noise_floor():
    rng = np.random.default_rng(0)
    obj = _NoisyQuadratic([1e-8, 2e-8], 1e-12, rng)
    th, _, _, info = fast.damped_newton(obj, np.array([1.0, -2.0]), [], radius=None)
    assert info["converged"] and info["criterion"] == "kkt residual at float64 noise floor"
    assert np.abs(th).max() <= 1e-12 / 1e-8 * 10  # |z| <= noise / h up to a small factor
    # and the criterion is honest: far from the optimum it does not fire
    th, _, _, info = fast.damped_newton(obj, np.array([1.0, -2.0]), [], radius=None, max_iter=1)
    assert not info["converged"]


def test_kkt_residual_on_the_sphere():
    theta = np.array([3.0, 4.0])  # ||theta|| = 5 = radius
    g = -0.7 * theta  # pushes outwards: nu = 0.7 makes g + nu theta = 0
    assert np.linalg.norm(fast.kkt_residual(g, theta, 5.0)) == pytest.approx(0, abs=1e-15)
    g2 = 0.7 * theta  # pushes inwards: not stationary (nu would be negative)
    assert np.linalg.norm(fast.kkt_residual(g2, theta, 5.0)) == pytest.approx(3.5)
    assert np.linalg.norm(fast.kkt_residual(g2, theta, None)) == pytest.approx(3.5)


# ---------------------------------------------------------------------------- item 5: fast W1
@pytest.mark.parametrize("n, s", [(1200, 7), (2600, 5), (12800, 6)])
def test_w1_fast_near_collapse_converges(rates_world, n, s):
    """rho = 0.04 just below the collapse radius: Newton used to stall at the kink of
    ||theta - theta_ref||."""
    w = rates_world
    data = w.empirical(n, (0, n, s))
    kw = dict(rho=0.04, beta=w.beta, theta_ref=w.theta_ref, radius=w.B)
    a = wdpo(data, solver="cvxpy", **kw)
    b = wdpo(data, solver="fast", **kw)
    assert b.regime == a.regime == "penalty"
    assert b.info["rho_threshold"] > 0.04
    assert b.value == pytest.approx(a.value, rel=1e-10)
    np.testing.assert_allclose(b.theta, a.theta, atol=1e-6)


def test_w1_collapse_threshold_is_the_subgradient_condition(rates_world):
    """theta_ref is optimal iff rho beta >= ||grad E l(theta_ref)|| = ||sum p sy beta x|| / 2."""
    w = rates_world
    pop = w.population.data
    thr = float(np.linalg.norm(pop.X.T @ (pop.weights * pop.signed_labels))) / 2.0
    kw = dict(beta=w.beta, theta_ref=w.theta_ref, radius=w.B)
    for solver in ("fast", "cvxpy"):
        above = wdpo(pop, rho=thr * 1.001, solver=solver, **kw)
        assert above.regime == "collapse" and above.info["collapse_certified"]
        assert above.info["rho_threshold"] == pytest.approx(thr, rel=1e-12)
        np.testing.assert_array_equal(above.theta, w.theta_ref)
        assert above.value == pytest.approx(np.log(2.0), rel=1e-12) and above.gap == 0.0
        below = wdpo(pop, rho=thr * 0.99, solver=solver, **kw)
        assert below.regime == "penalty" and np.linalg.norm(below.theta) > 0
        assert below.value < np.log(2.0)  # strictly better than theta_ref: no collapse
    a = wdpo(pop, rho=thr * 0.99, solver="cvxpy", **kw)
    np.testing.assert_allclose(below.theta, a.theta, atol=1e-6)


def test_solver_error_still_raised_when_not_certified():
    """Separable data without a radius: no minimiser exists at rho = 0 (at rho > 0 the W1
    penalty makes the objective coercive, so a minimiser exists)."""
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = np.ones(3)
    with pytest.raises(SolverError):
        dpo(X, y, beta=1.0)
    with pytest.raises(SolverError):
        wdpo(X, y, rho=0.0, beta=1.0, solver="fast")
    r = wdpo(X, y, rho=0.01, beta=1.0, solver="fast")
    assert r.value == pytest.approx(wdpo(X, y, rho=0.01, beta=1.0).value, rel=1e-9)


# ---------------------------------------------------------------------------- item 3: KL cert
def test_kl_auto_certificate_falls_back_when_the_conic_solve_is_inaccurate(
    rates_world, monkeypatch
):
    from rdpo_theory.exact import certificates as cert

    w = rates_world
    data = w.empirical(2000, 3)
    kw = dict(rho=0.03, beta=w.beta, theta_ref=w.theta_ref, radius=w.B)
    good = kldpo(data, **kw)
    assert good.info["certificate"] == cert.CONIC and abs(good.gap) <= 1e-9

    def inaccurate(*a, **k):
        raise SolverError("stalled", status="optimal_inaccurate")

    monkeypatch.setattr(cert, "_kl_conic_certificate", inaccurate)
    r = kldpo(data, **kw)
    assert r.info["certificate"] == cert.ROOT
    assert "optimal_inaccurate" in r.info["certificate_note"]
    assert r.gap == pytest.approx(good.gap, abs=1e-9) and abs(r.gap) <= 1e-9
    with pytest.raises(SolverError):  # asked for the conic certificate explicitly: no number
        kldpo(data, certificate="cvxpy", **kw)
    # a conic value that is off is not trusted either
    monkeypatch.setattr(cert, "_kl_conic_certificate", lambda ll, pp, rho: 1e-6 + _root(ll, pp))
    r = kldpo(data, **kw)
    assert r.info["certificate"] == cert.ROOT and "disagrees" in r.info["certificate_note"]
    assert abs(r.gap) <= 1e-9


def _root(ll, pp):
    from rdpo_theory.exact.certificates import kl_primal_sup

    return kl_primal_sup(ll, pp, 0.03, method="root")


def test_kl_root_certificate_matches_the_primal_program():
    """The tilted distribution with KL = rho is the primal optimum (KKT): compare with the
    conic program on random losses, and with max l in the max-loss regime."""
    from rdpo_theory.exact.certificates import kl_primal_certificate

    rng = np.random.default_rng(5)
    for _ in range(5):
        l = rng.uniform(0.1, 2.0, 60)
        p = rng.random(60) + 0.05
        p /= p.sum()
        a, ia = kl_primal_certificate(l, p, 0.05, method="root")
        b, ib = kl_primal_certificate(l, p, 0.05, method="cvxpy")
        assert a == pytest.approx(b, abs=1e-8) and ia["certificate"] != ib["certificate"]
    top = int(np.argmax(l))
    assert kl_primal_certificate(l, p, -np.log(p[top]) + 0.1, method="root")[0] == l[top]


def test_kl_bad_certificate_name():
    from rdpo_theory.errors import InputError

    with pytest.raises(InputError, match="certificate"):
        kldpo(np.eye(2), [1, 0], rho=0.1, beta=1.0, certificate="exact")


# ---------------------------------------------------------------------------- item 4: grids
def _grid_problem(seed):
    rng = np.random.default_rng(seed)
    X = np.round(rng.uniform(-1, 1, (6, 2)) / 0.05) * 0.05
    y = (rng.random(6) < 0.7).astype(float)
    ax = np.linspace(-1.6, 1.6, 40)
    G = np.array(np.meshgrid(ax, ax)).reshape(2, -1).T  # 1600 points
    cand = (np.vstack([G, G]), np.r_[np.zeros(len(G)), np.ones(len(G))])
    return X, y, cand


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("rho, p", [(0.1, 2), (0.3, 1)])
def test_finite_wdpo_on_a_1600_point_grid(seed, rho, p):
    """Clarabel failed or ended inaccurate on these grids (one exponential-cone pair per
    (point, candidate) pair). Check: the transport-LP certificate, and that theta* minimises
    the robust value F(theta) = transport LP value (convex) against nearby points."""
    from rdpo_theory.exact import certificates as cert
    from rdpo_theory.exact.wasserstein import default_cost

    X, y, (Xc, yc) = _grid_problem(seed)
    r = wdpo(X, y, rho=rho, beta=1.0, p=p, candidates=(Xc, yc))
    assert r.status == "optimal" and r.regime == "finite"
    assert abs(r.gap) <= 1e-8 * r.value
    C = default_cost(X, y, Xc, yc, np.inf) ** p
    wts = np.full(6, 1 / 6)

    def F(theta):
        L = dpo_loss((2 * yc - 1) * (Xc @ theta))
        return cert.transport_primal_sup(L, wts, C, rho**p)[0]

    assert F(r.theta) == pytest.approx(r.value, abs=1e-8)
    assert r.transport_plan.sum() == pytest.approx(1.0)
    rng = np.random.default_rng(seed)
    for step in (1e-3, 3e-2):
        for _ in range(4):
            assert F(r.theta + step * rng.standard_normal(2)) >= r.value - 1e-8


# -------------------------------- separability: the subset certificate (benchmarks, 2026-12-08)
def _rows(n, d, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ rng.normal(size=d)))).astype(float)
    return (2 * y - 1)[:, None] * X, rng


def test_subset_certificate_agrees_with_the_full_lp_and_skips_it(monkeypatch):
    """On 20000 noisy rows an evenly spaced subset proves non-separability: the answer is the
    full LP's (None), the full LP is never solved, and only the subset's rows are taken."""
    import importlib

    D = importlib.import_module("rdpo_theory.exact.dpo")
    A, _ = _rows(20000, 6)
    full = D._separability_lp(D._unit_rows(A))
    assert -full.fun <= 1e-9 * np.abs(D._unit_rows(A)).sum()  # the full LP: not separable
    sizes, taken = [], []
    real = D._separability_lp
    monkeypatch.setattr(D, "_separability_lp", lambda B: sizes.append(len(B)) or real(B))

    def take(idx):
        taken.append(len(idx))
        return A[idx]

    assert D.recession_direction(take, n=len(A)) is None
    assert sizes == [D.SUBSET_ROWS] and max(taken) <= D.SUBSET_ROWS


@pytest.mark.parametrize("kind", ["separable", "quasi-separable"])
def test_subset_certificate_never_hides_a_separating_direction(kind):
    """Separable rows make every subset separable, and quasi-separable ones (all rows but one
    in the hyperplane v-perp) leave the subset rank-deficient: both reach the full LP, which
    returns a direction v with A v >= 0 and sum(A v) > 0."""
    import importlib

    D = importlib.import_module("rdpo_theory.exact.dpo")
    A, rng = _rows(5000, 5, seed=1)
    v = rng.normal(size=5)
    if kind == "separable":
        A = A * np.sign(A @ v)[:, None]
    else:
        A = A - np.outer(A @ v, v) / (v @ v)
        A[4321] = v
    w = D.recession_direction(A)
    assert w is not None
    Aw = D._unit_rows(A) @ w
    assert Aw.min() >= -1e-7 and Aw.sum() > 1e-6


def test_kldpo_without_radius_refuses_separable_rows_and_solves_large_noisy_ones():
    """The refusal of separable data is unchanged; noisy data of 20000 rows are solved and
    certified (the subset proves they are not separable)."""
    A, rng = _rows(20000, 4, seed=2)
    X = A  # labels all 1: the rows sy x are the features themselves
    y = np.ones(len(X))
    res = kldpo(X, y, rho=0.05, beta=1.0, solver="fast")
    assert res.status == "optimal" and res.optimality_gap <= 1e-6
    v = rng.normal(size=4)
    Xs = X * np.sign(X @ v)[:, None]
    with pytest.raises(SolverError, match="separable"):
        kldpo(Xs, y, rho=0.05, beta=1.0, solver="fast")
