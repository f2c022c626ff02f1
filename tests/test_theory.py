import math

import numpy as np
import pytest
from scipy.optimize import brentq

from rdpo_theory import InputError, World
from rdpo_theory import theory as T


# ---------------------------------------------------------------- constants, hand-computed
def test_gamma_and_K_hand_values():
    # beta = 1, B = 0.5: e^{4 beta B} = e^2
    e2 = math.exp(2.0)
    assert T.gamma(1.0, 0.5) == pytest.approx(e2 / (1 + e2) ** 2, rel=1e-14)
    assert T.gamma(1.0, 0.5) == pytest.approx(0.10499358540350652, rel=1e-12)
    assert T.K(1.0, 0.5) == pytest.approx(math.log(1 + e2), rel=1e-14)
    assert T.K(1.0, 0.5) == pytest.approx(2.1269280110429727, rel=1e-12)
    # beta = 0.1, B = 2: e^{0.8}
    e8 = math.exp(0.8)
    assert T.gamma(0.1, 2.0) == pytest.approx(0.01 * e8 / (1 + e8) ** 2, rel=1e-14)
    # stable where the textbook formula overflows: gamma ~ beta^2 e^{-4 beta B}
    assert T.gamma(1.0, 500.0) == pytest.approx(math.exp(-2000.0), rel=1e-9)
    assert T.K(1.0, 500.0) == pytest.approx(2000.0, rel=1e-14)


def test_bounds_hand_values():
    beta, B, lam0, delta = 1.0, 0.5, 0.1, 0.05
    g = math.exp(2) / (1 + math.exp(2)) ** 2
    K = math.log(1 + math.exp(2))
    n = 100
    p1 = math.sqrt(16 * (3 + math.log(20)) / (g**2 * n) + 8 * lam0 * 0.25)
    assert T.proposition1(n, 3, delta, beta, B, lam0) == pytest.approx(p1, rel=1e-13)
    assert T.proposition1(n, 3, delta, beta, B, lam0, lam=0.2) == pytest.approx(
        math.sqrt(16 * (3 + math.log(20)) / (g**2 * n) + 8 * 0.2 * 0.25), rel=1e-13
    )
    t1sq = 4 * K / (g * lam0) * math.sqrt(math.log(40) / 200)
    assert T.theorem1(n, delta, beta, B, lam0, squared=True) == pytest.approx(t1sq, rel=1e-13)
    assert T.theorem1(n, delta, beta, B, lam0) == pytest.approx(math.sqrt(t1sq), rel=1e-13)
    t2sq = 4 * 3.0 * math.exp(K / 0.5) / (g * lam0) * math.sqrt(math.log(40) / 200)
    assert T.theorem2(n, delta, beta, B, lam0, 0.5, 3.0, squared=True) == pytest.approx(
        t2sq, rel=1e-12
    )
    assert T.theorem2(n, delta, beta, B, lam0, 0.5, 3.0, L=1.0) == pytest.approx(
        math.sqrt(4 * 3.0 * math.exp(2.0) / (g * lam0) * math.sqrt(math.log(40) / 200)),
        rel=1e-12,
    )
    # an overflowing constant is reported as inf, not an exception
    assert T.theorem2(n, delta, beta, B, lam0, 1e-5, 3.0) == math.inf


def test_bound_rates_and_arrays():
    ns = np.array([100.0, 1600.0])
    t1 = T.theorem1(ns, 0.05, 1.0, 1.0, 0.2)
    assert t1[1] / t1[0] == pytest.approx(16**-0.25, rel=1e-12)
    t2 = T.theorem2(ns, 0.05, 1.0, 1.0, 0.2, 0.5, 2.0)
    assert t2[1] / t2[0] == pytest.approx(16**-0.25, rel=1e-12)
    p1 = T.proposition1(ns, 3, 0.05, 1.0, 1.0, 0.2, lam=1e-30)  # no floor: pure n^-1/2
    assert p1[1] / p1[0] == pytest.approx(0.25, rel=1e-9)
    assert T.fitted_rate("dpo") == -0.5 and T.fitted_rate("kldpo") == -0.25


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: T.proposition1(1, 3, 0.05, 1, 1, 0.1), "n must be >= 2"),
        (lambda: T.theorem1([], 0.05, 1, 1, 0.1), "n is empty"),
        (lambda: T.theorem1(100, 1.5, 1, 1, 0.1), "delta"),
        (lambda: T.theorem1(100, 0.05, -1, 1, 0.1), "beta"),
        (lambda: T.theorem1(100, 0.05, 1, 1, 0.0), "lam0"),
        (lambda: T.theorem2(100, 0.05, 1, 1, 0.1, 2.0, 1.0), "lam_lo"),
        (lambda: T.proposition1(100, 0, 0.05, 1, 1, 0.1), "'d' parameter of proposition1 must"),
        (lambda: T.kl_multiplier_upper(-0.1, 1, 1), "rho"),
        (lambda: T.coverage_kl(World.toy(), -0.1), "rho"),
        (
            lambda: T.coverage_wasserstein(World.toy(), 0.1, p=0.5),
            "'p' parameter of coverage_wasserstein must",
        ),
        (lambda: T.fitted_rate("ipo"), "kind"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_kl_multiplier_upper_bounds_exact_duals():
    from rdpo_theory.exact import kldpo

    w = World.random(6, 3, 2, seed=4)
    for rho in (0.002, 0.01):
        res = kldpo(
            w.population.data, rho=rho, beta=w.beta, radius=w.B, solver="fast", certificate="root"
        )
        assert 0 <= res.dual <= T.kl_multiplier_upper(rho, w.beta, w.B)


# ---------------------------------------------------------------- coverage
def _kl_bin(q, p):
    return q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))


def test_coverage_p0_toy_is_quarter():
    assert T.coverage_p0(World.toy()) == pytest.approx(0.25, abs=1e-15)
    assert T.coverage_p0(World.toy().population.data) == pytest.approx(0.25, abs=1e-15)


def test_coverage_kl_toy_is_exact_binary_kl_floor():
    # toy: Sigma_Q = diag(Q(x = ±e1), Q(x = ±e2)); the infimum of the smaller mass over the KL
    # ball is, by data processing, the root of kl_bin(m || 1/4) = rho below 1/4.
    rho = 0.05
    exact = brentq(lambda m: _kl_bin(m, 0.25) - rho, 1e-12, 0.25)
    c = T.coverage_kl(World.toy(), rho)
    assert c.lower <= exact + 1e-12
    assert c.upper == pytest.approx(exact, abs=1e-9)
    assert c.p0 == pytest.approx(0.25)


def test_coverage_kl_bracket_is_valid_on_random_world():
    w = World.random(5, 3, 3, seed=2)
    pop = w.population.data
    rho = 0.05
    c = T.coverage_kl(w, rho, restarts=4)
    assert 0 <= c.lower <= c.upper <= c.p0 + 1e-12
    # upper is attained by an explicit distribution in the ball
    q = c.worst
    kl = float(np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1) / pop.weights), 0)))
    assert kl <= rho + 1e-8
    Sig = (pop.X * q[:, None]).T @ pop.X
    assert np.linalg.eigvalsh(Sig)[0] == pytest.approx(c.upper, abs=1e-9)
    # every random distribution in the ball respects the certified lower bound
    rng = np.random.default_rng(0)
    for _ in range(300):
        f = rng.standard_normal(pop.n) * rng.uniform(0.5, 5)
        for lam in (0.3, 1.0, 3.0):
            qq = pop.weights * np.exp(-f / lam)
            qq /= qq.sum()
            klq = float(np.sum(qq * np.log(qq / pop.weights)))
            if klq <= rho:
                lm = np.linalg.eigvalsh((pop.X * qq[:, None]).T @ pop.X)[0]
                assert lm >= c.lower - 1e-12
    assert T.coverage_kl(w, 0.0).exact


def test_coverage_wasserstein_toy_continuous():
    rho = 0.02
    c = T.coverage_wasserstein(World.toy(), rho)
    assert c.lower == pytest.approx(0.25 - 2 * 1.0 * rho)  # R = 1, a = 1
    # shrinking the e1 pairs by 4 rho along e1 is feasible: the infimum is at most this
    assert c.lower <= c.upper <= 0.25 * (1 - 4 * rho) ** 2 + 1e-12


def test_coverage_wasserstein_finite_bracket():
    w = World.random(3, 3, 2, seed=1)
    c = T.coverage_wasserstein(w, 0.05, candidates=w.candidates(), restarts=2)
    assert 0 <= c.lower <= c.upper <= c.p0 + 1e-12
    # the worst case is a distribution on the candidates whose lambda_min is `upper`
    Xc = w.population.data.X
    Sig = (Xc * c.worst[:, None]).T @ Xc
    assert c.worst.sum() == pytest.approx(1.0)
    assert np.linalg.eigvalsh(Sig)[0] == pytest.approx(c.upper, abs=1e-8)
    assert T.coverage_wasserstein(w, 0.0, candidates=w.candidates()).exact
