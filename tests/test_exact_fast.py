"""Fast exact paths: agreement with the cvxpy path over a seeded sweep, and building blocks."""

import numpy as np
import pytest
from scipy.optimize import minimize

from rdpo_theory import PreferenceData
from rdpo_theory.exact import kldpo, wdpo
from rdpo_theory.exact.fast import KLDual, _trs, gram, kl_collapse_threshold
from rdpo_theory.exact.passes import Rows
from rdpo_theory.rng import make_rng, stream_seed


def _problem(i):
    rng = make_rng(stream_seed(3, i))
    n = int(rng.integers(40, 1500))
    d = int(rng.integers(2, 6))
    X = rng.standard_normal((n, d))
    t = 2.5 * rng.standard_normal(d)
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ t))).astype(float)
    w = rng.random(n) + 0.1
    tref = 0.2 * rng.standard_normal(d)
    radius = None if i % 3 else float(np.linalg.norm(t) * 0.3 + np.linalg.norm(tref))
    beta = float(rng.uniform(0.3, 2.0))
    return PreferenceData(X, y, w / w.sum()), tref, radius, beta, float(rng.uniform(0.002, 0.05))


@pytest.mark.parametrize("i", range(12))
def test_kl_fast_agrees_with_cvxpy(i):
    data, tref, radius, beta, rho = _problem(i)
    a = kldpo(data, rho=rho, beta=beta, theta_ref=tref, radius=radius)
    b = kldpo(data, rho=rho, beta=beta, theta_ref=tref, radius=radius, solver="fast")
    assert a.regime == b.regime
    assert b.value == pytest.approx(a.value, rel=1e-6)
    np.testing.assert_allclose(b.theta, a.theta, atol=1e-4)
    assert abs(b.gap) <= 1e-6 * b.value and abs(a.gap) <= 1e-6 * a.value
    if a.dual > 0:
        assert b.dual == pytest.approx(a.dual, rel=1e-4)


@pytest.mark.parametrize("i", range(12))
def test_w1_fast_agrees_with_cvxpy(i):
    data, tref, radius, beta, rho = _problem(i)
    a = wdpo(data, rho=rho, beta=beta, theta_ref=tref, radius=radius)
    b = wdpo(data, rho=rho, beta=beta, theta_ref=tref, radius=radius, solver="fast")
    assert b.value == pytest.approx(a.value, rel=1e-6)
    np.testing.assert_allclose(b.theta, a.theta, atol=1e-4)
    assert abs(b.gap) <= 1e-12


def test_fast_warm_start_path_on_large_n():
    # n above the subsample size exercises the warm start and the chord steps
    rng = make_rng(11)
    n, d = 120_000, 4
    X = rng.standard_normal((n, d)) / 2
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ np.array([3.0, -2.0, 1.0, 0.5])))).astype(float)
    data = PreferenceData(X, y)
    res = kldpo(data, rho=0.01, beta=1.0, solver="fast")
    assert res.info["warm_start"]["rows"] == 50_000 and res.info["newton"]["converged"]
    # independent check: L-BFGS on the same smooth dual in (theta, log lam)
    obj = KLDual(X, data.signed_labels, data.weights, 0.01, np.zeros(d))

    def f(z):
        st = obj.state(z[:d], [np.exp(z[d])])
        g = obj.gradient(st)
        return st.f, np.concatenate([g[:d], [g[d] * np.exp(z[d])]])

    z0 = np.concatenate([res.theta + 0.05, [np.log(res.dual) + 0.2]])
    opt = minimize(f, z0, jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15})
    assert res.value <= opt.fun + 1e-12
    assert res.value == pytest.approx(opt.fun, rel=1e-8)
    assert abs(res.gap) <= 1e-8
    w = wdpo(data, rho=0.01, beta=1.0, solver="fast")
    assert w.info["newton"]["converged"] and abs(w.gap) <= 1e-12


def test_gram_blocks_and_trust_region_subproblem():
    rng = make_rng(5)
    X = rng.standard_normal((70_000, 5))
    w = rng.random(70_000)
    np.testing.assert_allclose(gram(X, w), (X * w[:, None]).T @ X, rtol=1e-12)
    small = Rows(X, chunk_bytes=4096 * 5 * 8)  # 18 row chunks
    np.testing.assert_allclose(small.gram(w), (X * w[:, None]).T @ X, rtol=1e-12)
    assert small.passes == 1
    M = rng.standard_normal((4, 4))
    H, b, R = M @ M.T + 0.1 * np.eye(4), rng.standard_normal(4) * 10, 0.5
    z = _trs(H, b, R)
    assert np.linalg.norm(z) == pytest.approx(R, rel=1e-9)
    # optimality: no point of a fine random sample of the ball does better
    P = rng.standard_normal((20000, 4))
    P *= (R * rng.random((20000, 1)) ** 0.25) / np.linalg.norm(P, axis=1, keepdims=True)
    q = lambda v: v @ b + 0.5 * np.einsum("ij,jk,ik->i", v, H, v)  # noqa: E731
    assert q(z[None])[0] <= q(P).min() + 1e-12


def test_collapse_threshold_matches_min_kl_program():
    import cvxpy as cp

    rng = make_rng(8)
    X = rng.standard_normal((60, 2))
    c = np.where(rng.random(60) < 0.6, 1.0, -1.0)
    p = np.full(60, 1 / 60)
    ok, bound, q = kl_collapse_threshold(X, c, p, rho=10.0)
    assert ok
    mu = cp.Variable(60, nonneg=True)
    prob = cp.Problem(
        cp.Minimize(cp.sum(cp.rel_entr(mu, p))), [cp.sum(mu) == 1, (c[:, None] * X).T @ mu == 0]
    )
    prob.solve(solver="CLARABEL")
    assert bound == pytest.approx(prob.value, rel=1e-6)
    assert kl_collapse_threshold(X, c, p, rho=0.5 * bound)[0] is False


class _NoisyQuadratic:
    """``f(theta) = theta^2 / 2`` whose evaluations along a step round upwards by 5e-14: the
    float64 floor of f, met with a Newton decrement of 5e-13."""

    class S:
        def __init__(self, th, f):
            self.th, self.f = th, f

    def state(self, theta, extra):
        return self.S(theta, 0.5 * float(theta @ theta))

    def gradient(self, s):
        return s.th.copy()

    def derivs(self, s):
        return s.th.copy(), np.eye(s.th.shape[0])

    def direction_margins(self, dth):
        return dth

    def value_along(self, s, dm, theta, extra):
        return self.S(theta, s.f + 5e-14)

    def max_step(self, extra, dex, theta=None, dth=None):
        return 1.0

    def grad_noise(self, s):
        return np.full(s.th.shape, 1e-300)

    def stop(self, extra):
        return False


def test_newton_decrement_at_the_float64_floor_is_converged():
    # regression: "Newton did not converge in 4 iterations (decrement 6.48e-13)"; a decrement
    # below 1e-12 whose full step f cannot resolve is converged (the certificate decides after)
    from rdpo_theory.exact.fast import damped_newton

    th0 = np.array([np.sqrt(5e-13)])
    _, _, _, info = damped_newton(_NoisyQuadratic(), th0, [], radius=None)
    assert info["converged"], info
    assert info["criterion"] == "decrease below float64 resolution of f"
    assert 1e-13 < info["newton_decrement"] <= 1e-12
    # a decrement well above the floor is still not taken as convergence
    _, _, _, info = damped_newton(_NoisyQuadratic(), np.array([1e-5]), [], radius=None)
    assert not info["converged"]


@pytest.mark.parametrize(
    "which,rho,regime",
    [("kl", 0.05, "interior"), ("w1", 0.01, "penalty"), ("kl", 0.0, "dpo")],
)
def test_hessian_free_path_equals_the_dense_newton_path(monkeypatch, which, rho, regime):
    # above fast.HESSIAN_FREE_D the solve runs Newton-CG (no d x d matrix) and certifies by
    # conjugate-gradient corrected Fenchel points; lowered here to d = 4 on a d = 8 problem
    from rdpo_theory.exact import fast

    rng = make_rng(11)
    n, d = 3000, 8
    X = rng.standard_normal((n, d)) / np.sqrt(d)
    ts = np.linspace(-1.0, 2.0, d)
    ts *= 4.0 / np.linalg.norm(ts)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-X @ ts))).astype(float)
    fn = kldpo if which == "kl" else wdpo
    dense = fn(X, y, rho=rho, beta=1.0, solver="fast")
    monkeypatch.setattr(fast, "HESSIAN_FREE_D", 4)
    free = fn(X, y, rho=rho, beta=1.0, solver="fast")
    assert free.info["newton"]["hessian_free"] and not dense.info["newton"]["hessian_free"]
    assert free.status == dense.status == "optimal"
    assert free.regime == dense.regime == regime
    assert free.optimality_gap <= 1e-9 * (1 + abs(free.value))
    np.testing.assert_allclose(free.theta, dense.theta, rtol=0, atol=1e-8)
    assert abs(free.value - dense.value) <= 1e-12
    # with a parameter ball the dense trust-region model is kept
    bounded = fn(X, y, rho=rho, beta=1.0, solver="fast", radius=1.0)
    assert not bounded.info["newton"]["hessian_free"]
    assert bounded.status == "optimal"


def test_warm_start_subsample_needs_enough_rows_per_dimension():
    """The fast solvers' warm start uses a fixed subsample only when it holds at least
    WARM_START_ROWS_PER_DIM rows per dimension (an ill-conditioned subsample costs more
    passes than it saves), and only when n exceeds it."""
    from rdpo_theory.exact import fast as F

    sub = F.warm_start_subsample(10**6, 32)
    assert sub is not None and sub.size == F.warm_start_rows(32) == 50_000
    assert np.all(np.diff(sub) > 0) and sub[-1] < 10**6
    np.testing.assert_array_equal(sub, F.warm_start_subsample(10**6, 32))  # fixed
    assert F.warm_start_subsample(40_000, 32) is None  # n below the subsample size
    d_max = max(d for d in range(1, 2000) if F.warm_start_rows(d) >= F.WARM_START_ROWS_PER_DIM * d)
    assert F.warm_start_subsample(10**6, d_max) is not None
    assert F.warm_start_subsample(10**6, d_max + 1) is None
    assert F.warm_start_subsample(10**6, 4096) is None
