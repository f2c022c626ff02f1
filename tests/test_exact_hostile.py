"""Valid problems that hostile use found refused, crashing or answered differently by the two
paths (issue 23). Each case failed before its fix; the references are independent: the same
problem at unit scale (``exact.problem.Scale`` is exact), the Lipschitz bound of the robust
value over a tiny ball, and the separability LP."""

import numpy as np
import pytest

from rdpo_theory.errors import SolverError
from rdpo_theory.exact import dpo, kldpo, wdpo
from rdpo_theory.exact.result import certify_optimal
from rdpo_theory.losses import dpo_loss

PATHS = ("cvxpy", "fast")


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    y = (rng.random(20) < 0.5).astype(float)
    return X, y


def _solve(method, X, y, path, **kw):
    if method == "dpo":
        return dpo(X, y, solver=path, **kw)
    if method == "kldpo":
        return kldpo(X, y, rho=0.01, solver=path, **kw)
    return wdpo(X, y, rho=0.1, solver=path, **kw)


@pytest.mark.parametrize("method", ["dpo", "kldpo", "wdpo"])
@pytest.mark.parametrize("beta", [1e20, 1e150, 1e200])
def test_huge_beta_with_a_radius_is_the_unit_beta_unconstrained_answer(pairs, method, beta):
    """The losses see beta theta only: with beta = 1e20..1e200 and radius 2 the ball (radius
    2 beta in the units of beta = 1) never binds, so theta beta is the beta = 1 unconstrained
    minimiser. Refused for dpo/kldpo (a bound B ||w|| of rounding noise times 1e20), and an
    OverflowError in radius**2 at 1e200 (wdpo) before."""
    X, y = pairs
    ref = _solve(method, X, y, "cvxpy", beta=1.0)
    for path in PATHS:
        r = _solve(method, X, y, path, beta=beta, radius=2.0)
        assert r.status == "optimal" and r.optimality_gap >= 0
        assert r.value == pytest.approx(ref.value, rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(r.theta * beta, ref.theta, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("radius", [1e-12, 1e-14, 1e-16])
def test_kldpo_tiny_ball_solves_on_both_paths(radius):
    """kldpo(radius=1e-14) was refused (Newton cannot resolve a multiplier of order 1e-14)
    while 1e-12 and 1e-16 solved on other data. Over a ball of radius r every margin moves by
    at most 2 r beta max|x|, so the robust value is within that of its value at theta = 0."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(30, 3))
    y = (rng.random(30) < 0.7).astype(float)
    at_zero = float(np.log(2.0))  # every loss is log 2 at theta = 0, so is the robust value
    out = []
    for path in PATHS:
        r = kldpo(X, y, rho=0.01, beta=1.0, radius=radius, solver=path)
        assert r.status == "optimal" and np.linalg.norm(r.theta) <= radius * (1 + 1e-12)
        assert abs(r.value - at_zero) <= 2 * radius * np.abs(X).max() + 1e-15
        out.append(r)
    assert out[0].value == pytest.approx(out[1].value, abs=1e-15)


def _separable_with_zero_rows():
    X = np.vstack([np.eye(2), -np.eye(2), np.zeros((2, 2))])
    y = np.array([1, 1, 0, 0, 1, 0.0])
    return X, y


@pytest.mark.parametrize("path", PATHS)
def test_kldpo_separable_plus_zero_rows_refused_on_both_paths(path):
    """Separable informative rows plus rows with x = 0: the robust value decreases strictly
    along the separating ray (the worst case has full support while lam > 0), so the infimum
    is not attained. The cvxpy path refused; the fast path stopped far out (theta = [33, 33])
    and called it optimal."""
    X, y = _separable_with_zero_rows()
    with pytest.raises(SolverError) as exc:
        kldpo(X, y, rho=0.1, beta=1.0, solver=path)
    assert exc.value.status == "unbounded"


def test_kldpo_separable_plus_zero_rows_with_a_radius_agree():
    """With a radius the infimum is attained (a continuous function on a compact ball): both
    paths answer, the same theta and value."""
    X, y = _separable_with_zero_rows()
    a, b = (kldpo(X, y, rho=0.1, beta=1.0, radius=3.0, solver=s) for s in PATHS)
    np.testing.assert_allclose(a.theta, b.theta, atol=1e-6)
    assert a.value == pytest.approx(b.value, abs=1e-9)
    # the minimiser is on the sphere along the separating direction
    np.testing.assert_allclose(a.theta, [3 / np.sqrt(2)] * 2, atol=1e-6)


@pytest.mark.parametrize("rho", [0.0, 0.1])
def test_quasi_separable_refused_by_the_fast_path(rho):
    """Quasi-separable rows (v = e1 separates row 0 and leaves the rest at margin 0): the fast
    DPO/KL path skipped the separability LP when a margin was negative, which proves nothing
    here, and reported a finite theta."""
    X = np.array([[1, 0], [0, 1], [0, 1], [0, 1.0], [0, 0]])
    y = np.array([1, 1, 0, 0, 1.0])
    for path in PATHS:
        with pytest.raises(SolverError) as exc:
            kldpo(X, y, rho=rho, beta=1.0, solver=path)
        assert exc.value.status == "unbounded"


def test_certified_gap_is_clamped_at_zero():
    """A lower bound 1e-12 above the value is rounding (two certified numbers from different
    sums), never a better-than-optimal point: the certified gap is 0, not -1e-12."""
    assert certify_optimal(0.5, 0.5 + 1e-12, what="test") == 0.0
    assert certify_optimal(0.5, 0.5 - 1e-9, what="test") == pytest.approx(1e-9)
    with pytest.raises(SolverError):
        certify_optimal(0.5, 0.6, what="test")  # beyond the tolerance: inconsistent


def test_reported_gaps_are_never_negative(pairs):
    """About 15% of the gaps were slightly negative (down to -1e-12 relative)."""
    X, y = pairs
    gaps = []
    for path in PATHS:
        for rho in (0.0, 0.05, 0.3):
            gaps.append(kldpo(X, y, rho=rho, beta=1.0, solver=path).optimality_gap)
        gaps.append(dpo(X, y, beta=1.0, solver=path).optimality_gap)
    assert min(gaps) >= 0.0


def test_huge_radius_certificate_counts_rounding_as_zero(pairs):
    """The Fenchel bound sum q H(alpha) + w.theta_ref - B ||w|| with w of rounding size and
    B = 2e20 was -3e3; w within its own rounding counts as zero, as without a radius."""
    X, y = pairs
    r = dpo(X, y, beta=1.0, radius=1e20, solver="fast")
    assert r.info["lower_bound"] == pytest.approx(r.value, abs=1e-12)
    loss = float(np.mean(dpo_loss((2 * y - 1) * (X @ r.theta))))
    assert r.value == pytest.approx(loss, rel=1e-14)


@pytest.mark.parametrize("beta", [1e-20, 1e-100])
def test_dpo_tiny_beta_with_a_radius_on_both_paths(pairs, beta):
    """beta = 1e-20 with radius 2: in unit-scale units the ball is tiny (radius 2 beta), the
    loss is linear on it, and the minimiser is on the sphere against the gradient at 0. The
    fast path's Newton ended with a KKT residual of 0.05 (refused); it now starts from the
    linearised minimiser. Both paths agree."""
    X, y = pairs
    a, b = (dpo(X, y, beta=beta, radius=2.0, solver=s) for s in PATHS)
    g = -0.5 * ((2 * y - 1) @ X) / len(y)  # gradient of the mean loss at theta = 0, per beta
    for r in (a, b):
        assert r.status == "optimal"
        np.testing.assert_allclose(r.theta, -2.0 * g / np.linalg.norm(g), rtol=1e-6)
    assert a.value == pytest.approx(b.value, abs=1e-15)
