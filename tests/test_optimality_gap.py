"""The optimality certificate (``ExactResult.optimality_gap``) of exact KLDPO and DPO, and the
KL faults of issue 15 that it exposed. Every reference is computed independently in
``tests/independent.py`` (max-margin SOCP, multi-start SLSQP or a grid on the exact robust
objective), never by the solver under test."""

import functools

import numpy as np
import pytest
from independent import (
    grid_minimax_1d,
    kl_robust,
    kl_sup_decimal,
    losses,
    max_loss_value,
    slsqp_minimax,
)

from rdpo_theory.errors import InputError, SolverError
from rdpo_theory.exact import dpo, fast, kldpo
from rdpo_theory.exact.certificates import (
    certify_optimal,
    dpo_lower_bound,
    kl_into_ball,
    kl_minimax_lower_bound,
)
from rdpo_theory.exact.result import OPTIMALITY_TOL
from rdpo_theory.losses import dpo_risk

SOLVERS = ("cvxpy", "fast")


def assert_certified(res, reference, *, exact: bool, tol=OPTIMALITY_TOL):
    """``res`` is certified optimal and honest against ``reference`` (the exact minimax value
    when ``exact``, else an upper bound of it)."""
    v, g = res.value, res.optimality_gap
    assert res.status == "optimal"
    assert g is not None and -tol * (1 + abs(v)) <= g <= tol * (1 + abs(v))
    assert v - g <= reference + 1e-9 * (1 + abs(reference))  # the lower bound is honest
    assert v <= reference + tol * (1 + abs(v))  # at least as good as the reference
    if exact:
        assert v == pytest.approx(reference, abs=2 * tol * (1 + abs(v)))


# ---------------------------------------------------------------------------- the certificate
def test_certify_optimal_accepts_small_gaps_and_refuses_large_ones():
    assert certify_optimal(1.0, 1.0 - 1e-9, tol=1e-6, what="x") == pytest.approx(1e-9)
    with pytest.raises(SolverError, match="not certified optimal"):
        certify_optimal(1.0, 0.9, tol=1e-6, what="x")
    with pytest.raises(SolverError, match="inconsistent certificates"):
        certify_optimal(1.0, 1.1, tol=1e-6, what="x")
    with pytest.raises(SolverError, match="not finite"):
        certify_optimal(1.0, -np.inf, tol=1e-6, what="x")


@pytest.mark.parametrize("radius", [None, 0.7, 5.0])
def test_dpo_lower_bound_is_below_the_minimum_anywhere_and_tight_at_it(radius):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 3))
    y = (X @ [1.0, -1.0, 0.5] + rng.normal(size=40) > 0).astype(float)
    q = rng.dirichlet(np.ones(40))
    res = dpo(X, y, weights=q, beta=1.0, radius=radius)
    A = (2 * y - 1)[:, None] * X
    tref = np.zeros(3)
    for _ in range(5):  # any theta gives a valid (possibly loose) bound
        th = rng.normal(size=3)
        if radius is not None:
            th *= min(1.0, radius / np.linalg.norm(th))
        assert dpo_lower_bound(A, q, th, theta_ref=tref, radius=radius) <= res.value + 1e-12
    lb = dpo_lower_bound(A, q, res.theta, theta_ref=tref, radius=radius)
    assert res.value - 1e-10 <= lb <= res.value + 1e-12
    assert abs(res.optimality_gap) <= OPTIMALITY_TOL * (1 + res.value)


def test_kl_into_ball_makes_any_law_feasible():
    p = np.full(5, 0.2)
    q = kl_into_ball(np.array([1.0, 0, 0, 0, 0]), p, 0.3)
    assert np.sum(q * np.log(q / p)) <= 0.3


def test_kl_lower_bound_is_below_the_minimax_value_at_any_theta():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(12, 2))
    y = (rng.random(12) < 0.7).astype(float)
    A = (2 * y - 1)[:, None] * X
    p = np.full(12, 1 / 12)
    ref = slsqp_minimax(lambda th: kl_robust(th, X, y, 1.0, 0.2), 2, 1.5)
    for _ in range(5):
        th = rng.normal(size=2)
        th *= min(1.0, 1.5 / np.linalg.norm(th))
        lb = kl_minimax_lower_bound(A, p, 0.2, th, [], theta_ref=np.zeros(2), radius=1.5)
        assert lb <= ref + 1e-9


# ---------------------------------------------------------------------------- issue 15 faults
@pytest.mark.parametrize("solver", SOLVERS)
def test_max_loss_regime_with_a_radius(solver):
    """rho > log n: the KL ball holds every point mass and the objective is the max loss;
    both paths used to return a suboptimal interior answer (0.4124 / 0.4155) 'optimal'."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 10))
    y = (X @ rng.normal(size=10) > 0).astype(float)
    ref = max_loss_value(X, y, 1.0, 2.0)
    assert ref == pytest.approx(0.401581, abs=1e-6)
    res = kldpo(X, y, rho=10, beta=1.0, radius=2.0, solver=solver)
    assert res.regime == "max-loss"
    assert_certified(res, ref, exact=True)


THREE_PAIRS = [
    (
        np.array(
            [[-0.6189, 0.0358, -0.0757], [0.4409, -1.0193, 0.4406], [-2.388, -1.4551, -1.4539]]
        ),
        np.array([1.0, 1.0, 1.0]),
    ),
    (
        np.array([[1.125, 1.5926, 0.5487], [-0.6874, 0.7145, -1.0515], [-0.017, -0.7482, 0.7359]]),
        np.array([0.0, 1.0, 0.0]),
    ),
]


@pytest.mark.parametrize("case", [0, 1])
@pytest.mark.parametrize("solver", SOLVERS)
def test_three_pairs_max_loss_with_a_radius(case, solver):
    """rho = 2 > log 3, radius 0.5: before the fix the paths returned 0.607/0.629 (case 0,
    optimum 0.5939) and 0.528/0.587 (case 1, optimum 0.5225), both 'optimal'."""
    X, y = THREE_PAIRS[case]
    ref = max_loss_value(X, y, 1.0, 0.5)
    res = kldpo(X, y, rho=2.0, beta=1.0, radius=0.5, solver=solver)
    assert_certified(res, ref, exact=True)


X3 = np.array([[0.1257, -0.1321, 0.6404], [0.1049, -0.5357, 0.3616], [1.3040, 0.9471, -0.7037]])
Y3 = np.array([1.0, 1.0, 0.0])


def test_fast_path_three_by_three_reaches_the_optimum_itself():
    """The fast path returned 0.2612 'optimal' with lam 3e-15 after taking a negative Newton
    decrement as convergence; the optimum is 0.2181 (multi-start SLSQP on the exact robust
    objective). It must now get there without falling back to the cvxpy path."""
    ref = slsqp_minimax(lambda th: kl_robust(th, X3, Y3, 1.0, 0.01), 3, 2.0, starts=16)
    assert ref == pytest.approx(0.2181, abs=1e-4)
    res = kldpo(X3, Y3, rho=0.01, beta=1.0, radius=2.0, solver="fast")
    assert "fallback_from" not in res.info
    assert res.dual > 0.1
    assert_certified(res, ref, exact=False)


class _Indefinite:
    """A convex objective f = (x - 1)^2 / 2 whose reported Hessian is indefinite, so the Newton
    direction points uphill (a negative decrement) at x = 0."""

    def state(self, theta, extra, m=None):
        class S:
            pass

        s = S()
        s.x = float(theta[0])
        s.f = 0.5 * (s.x - 1.0) ** 2
        return s

    def derivs(self, s):
        return np.array([s.x - 1.0]), np.array([[-1.0]])

    def gradient(self, s):
        return np.array([s.x - 1.0])

    def direction_margins(self, dth):
        return dth

    def value_along(self, s, dm, theta, extra):
        return self.state(theta, extra)

    def max_step(self, extra, dex, theta=None, dth=None):
        return 1.0

    def grad_noise(self, s):
        return np.array([1e-16])

    def stop(self, extra):
        return False


def test_damped_newton_never_takes_a_non_descent_direction_as_convergence():
    th, _, st, info = fast.damped_newton(_Indefinite(), np.array([0.0]), [], radius=None)
    assert info["diagonal_fallback_steps"] >= 1
    assert th[0] == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("kind", ["beta", "X"])
@pytest.mark.parametrize("s", [1e-12, 1e-8, 1e8, 1e12])
def test_kl_scale_invariance(solver, kind, s):
    """Scaling beta or X by s (and the radius by 1/s) changes nothing; at 1e-12 the cvxpy path
    used to certify a false collapse (Clarabel's absolute tolerance met A^T mu = 0)."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 10))
    y = (X @ rng.normal(size=10) > 0).astype(float)
    Xs, beta = (X * s, 1.0) if kind == "X" else (X, s)
    ref = max_loss_value(X, y, 1.0, 2.0)
    res = kldpo(Xs, y, rho=10, beta=beta, radius=2.0 / s, solver=solver)
    assert_certified(res, ref, exact=True)
    res = kldpo(Xs, y, rho=0.1, beta=beta, radius=2.0 / s, solver=solver)
    base = kldpo(X, y, rho=0.1, beta=1.0, radius=2.0)
    assert not res.info.get("collapsed_to_theta_ref")
    assert res.value == pytest.approx(base.value, abs=1e-8)
    np.testing.assert_allclose(res.theta * s, base.theta, atol=1e-5)
    assert res.optimality_gap <= OPTIMALITY_TOL * (1 + res.value)


X2 = np.array([[1.0, 0.5], [0.3, -1.0]])
Y2 = np.array([1.0, 0.0])


@functools.cache
def two_pair_reference(rho):
    return slsqp_minimax(lambda th: kl_robust(th, X2, Y2, 1.0, rho), 2, 1.0, starts=6)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("rho", [0.001, 0.1, 1.0])
def test_two_pairs_with_a_radius_solve(solver, rho):
    """n = 2 with a radius failed the KL root certificate ('rescale beta'): at the optimum the
    two losses agree to 1e-10, and l / lam lost the digits of their difference."""
    X, y = X2, Y2
    ref = two_pair_reference(rho)
    res = kldpo(X, y, rho=rho, beta=1.0, radius=1.0, solver=solver)
    assert_certified(res, ref, exact=False)
    assert res.value == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("rho", [0.05, 0.5, 3.0])
def test_d1_against_a_grid(solver, rho):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(9, 1))
    y = (rng.random(9) < 0.5).astype(float)
    ref = grid_minimax_1d(lambda th: kl_robust(th, X, y, 1.0, rho), 3.0)
    res = kldpo(X, y, rho=rho, beta=1.0, radius=3.0, solver=solver)
    assert_certified(res, ref, exact=False)
    assert res.value == pytest.approx(ref, abs=1e-7)


@pytest.mark.parametrize("s", [1e-300, 1e-200, 1e-12, 1e12, 1e200, 1e300])
def test_dpo_scale_invariance_to_the_ends_of_float64(s):
    """dpo(X * 1e-300) returned theta = 0: a +1e-300 floor in the noise estimate made every
    gradient look like rounding noise."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    y = (rng.random(20) < 0.6).astype(float)
    base = dpo(X, y, beta=1.0)
    res = dpo(X * s, y, beta=1.0)
    np.testing.assert_allclose(res.theta * s, base.theta, rtol=1e-7)
    assert res.value == pytest.approx(base.value, abs=1e-12)
    res = dpo(X, y, beta=s)
    np.testing.assert_allclose(res.theta * s, base.theta, rtol=1e-7)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("s", [1e-200, 1e-6, 1e6, 1e200])
def test_kldpo_rescaled_path_equals_unit_scale_and_stays_in_the_ball(solver, s):
    """Outside the scale range [1e-2, 1e2] KLDPO solves at unit scale (``problem.Scale``, a
    power-of-two division) and maps theta back: the same margins, so theta * s, the value and
    the worst case equal the unit-scale answer, and a ball constraint holds exactly."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 3))
    y = (rng.random(30) < 0.7).astype(float)
    base = kldpo(X, y, rho=0.3, beta=1.0, radius=0.5, solver=solver)
    res = kldpo(X * s, y, rho=0.3, beta=1.0, radius=0.5 / s, solver=solver)
    top = np.abs(X * s).max()
    assert res.info["rescaled_by"] == 2.0 ** np.round(np.log2(top))  # beta 2^k, 2^k ~ max|x|
    np.testing.assert_allclose(res.theta * s, base.theta, rtol=1e-6, atol=1e-9)
    assert res.value == pytest.approx(base.value, abs=1e-10)
    assert np.linalg.norm(res.theta) <= 0.5 / s


def test_out_of_float64_range_is_refused_with_a_message_saying_so():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    y = (rng.random(20) < 0.6).astype(float)
    with pytest.raises(SolverError, match="outside float64 range"):
        dpo(X * 1e-320, y, beta=1.0)  # theta would be ~1e320
    with pytest.raises(InputError, match="floating-point range"):
        dpo(X * 1e300, y, beta=1e10)  # beta * max|X| overflows


def test_rho_zero_carries_an_optimality_gap():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 2))
    y = (rng.random(30) < 0.7).astype(float)
    res = kldpo(X, y, rho=0.0, beta=1.0)
    ref = slsqp_minimax(lambda th: dpo_risk(th, _data(X, y), beta=1.0), 2, None, scale=3.0)
    assert_certified(res, ref, exact=False)


def _data(X, y):
    from rdpo_theory.data import PreferenceData

    return PreferenceData(X, y)


def test_kldpo_below_the_kl_resolution_is_certified_by_the_small_radius_path():
    """rho = 1e-16 is under float64's resolution of the Newton path: both paths answer through
    the centred small-radius expansion, with an optimality gap certified against weak duality
    and a value no lower than the decimal-precision robust risk at the returned theta."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = (rng.random(40) < 0.7).astype(float)
    for solver in ("fast", "cvxpy"):
        res = kldpo(X, y, rho=1e-16, beta=1.0, solver=solver)
        assert res.status == "optimal" and res.info["path"] == "small radius"
        assert -1e-15 <= res.optimality_gap <= 1e-12  # rounding of values of order one
        robust, _ = kl_sup_decimal(losses(res.theta, X, y, 1.0), np.ones(40), 1e-16)
        assert res.value >= robust - 1e-15
        assert res.value - res.optimality_gap <= robust + 1e-15
