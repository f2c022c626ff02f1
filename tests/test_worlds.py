import numpy as np
import pytest
from scipy.special import expit

from rdpo_theory import InputError, World
from rdpo_theory.worlds import (
    behaviour_shift,
    context_shift,
    gaussian_preferences,
    mixture_reward,
    preference_shift,
)


def test_toy_population_by_hand():
    w = World.toy(beta=1.0)
    pop = w.population
    p = pop.data.weights
    assert pop.size == 16
    assert p.sum() == pytest.approx(1.0, abs=1e-15)
    # P(s=0, a1=0, a2=1, y=1) = 1/2 * 1/2 * 1/2 * sigmoid(r00 - r01), r00 = 1, r01 = 0
    k = np.flatnonzero((pop.s == 0) & (pop.a1 == 0) & (pop.a2 == 1) & (pop.data.y == 1))[0]
    assert p[k] == pytest.approx(expit(1.0) / 8, rel=1e-14)
    np.testing.assert_allclose(pop.data.X[k], [1.0, 0.0])
    # context 1: r10 = -0.5, r11 = 0 -> P(y=1 | a1=0, a2=1) = sigmoid(-0.5)
    k = np.flatnonzero((pop.s == 1) & (pop.a1 == 0) & (pop.a2 == 1) & (pop.data.y == 1))[0]
    assert p[k] == pytest.approx(expit(-0.5) / 8, rel=1e-14)
    # ties have probability 1/8 split by y = 1/2 each
    ties = pop.a1 == pop.a2
    assert p[ties].sum() == pytest.approx(0.5)
    np.testing.assert_allclose(w.population.data.second_moment(), np.eye(2) / 4, atol=1e-15)
    assert w.coverage() == pytest.approx(0.25)


def test_random_population_matches_direct_loop():
    w = World.random(3, 3, 2, seed=4, behaviour="dirichlet", contexts="dirichlet")
    pop = w.population
    total = 0.0
    for i in range(pop.size):
        s, a1, a2, y = pop.s[i], pop.a1[i], pop.a2[i], pop.data.y[i]
        r = w.beta * (w.theta_star @ (w.psi[s, a1] - w.psi[s, a2]))
        direct = w.mu0[s] * w.pi0[s, a1] * w.pi0[s, a2] * (expit(r) if y else expit(-r))
        assert pop.data.weights[i] == pytest.approx(direct, rel=1e-12)
        total += direct
    assert total == pytest.approx(1.0, abs=1e-12)


def test_sampling_reproducible_and_consistent():
    w = World.random(seed=2)
    a, b = w.sample(500, seed=7), w.sample(500, seed=7)
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.X, w.sample(500, seed=8).X)
    emp = w.empirical(500, seed=7)
    np.testing.assert_allclose(emp.second_moment(), a.second_moment(), atol=1e-12)
    full = w.empirical(500, seed=7, keep_zeros=True)
    assert full.n == w.population.size


def test_policy_quantities_by_hand():
    w = World.toy()
    theta = np.array([np.log(3.0), 0.0])
    pi = w.policy(theta)
    np.testing.assert_allclose(pi[0], [0.75, 0.25])
    np.testing.assert_allclose(pi[1], [0.5, 0.5])
    # rewards r = theta*.psi: context 0 -> (1, 0); context 1 -> (-0.5, 0)
    assert w.expected_reward(theta) == pytest.approx(0.5 * 0.75 + 0.5 * (-0.25))
    kl0 = 0.75 * np.log(1.5) + 0.25 * np.log(0.5)
    assert w.kl_to_ref(theta) == pytest.approx(0.5 * kl0)
    assert w.kl_to_ref(np.zeros(2)) == pytest.approx(0.0, abs=1e-15)
    # KL-regularised optimum of realizable rewards is pi_{theta*}
    np.testing.assert_allclose(w.kl_optimal_policy(), w.policy(w.theta_star))
    assert w.best_action_reward() == pytest.approx(0.5 * 1.0 + 0.5 * 0.0)


def test_shift_families():
    w = World.random(4, 3, 2, seed=0)
    c = context_shift(w, toward=[1, 0, 0, 0], t=0.5)
    np.testing.assert_allclose(c.mu0, 0.5 * w.mu0 + 0.5 * np.array([1, 0, 0, 0]))
    b = behaviour_shift(w, toward=w.theta_star, t=1.0)
    np.testing.assert_allclose(b.pi0, w.policy(w.theta_star))
    t1, t2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    cv = preference_shift(w, t1, t2, 0.25)
    np.testing.assert_allclose(cv.theta_star, [0.25, 0.75])
    np.testing.assert_allclose(cv.rewards, w.reward_table(cv.theta_star))
    g = preference_shift(w, t1, t2, 0.25, mixture="geometric")
    r1, r2 = w.classifier_reward_table(t1), w.classifier_reward_table(t2)
    np.testing.assert_allclose(g.rewards, r1**0.25 * r2**0.75)
    assert g.theta_star is None
    assert g.population.data.weights.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda w: mixture_reward(np.ones(2), np.ones(2), 1.5), "alpha"),
        (lambda w: mixture_reward(-np.ones(2), np.ones(2), 0.5, "geometric"), "positive"),
        (lambda w: mixture_reward(np.ones(2), np.ones(2), 0.5, "harmonic"), "mixture"),
        (lambda w: context_shift(w, mu0=[0.5, 0.6, 0, 0]), "mu0 must sum to 1"),
        (lambda w: behaviour_shift(w, pi0=np.ones((4, 2))), "pi0 must have shape"),
        (lambda w: w.sample(0), r"The 'n' parameter of sample must be an int >= 1\."),
        (lambda w: w.replace(beta=-1.0), r"The 'beta' parameter of World must be a float > 0"),
        (lambda w: w.replace(psi=2 * w.psi), "psi must have"),
        (lambda w: World.random(2, 1, 2), "n_actions"),
    ],
)
def test_bad_world_arguments(call, match):
    w = World.random(4, 3, 2, seed=0)
    with pytest.raises(InputError, match=match):
        call(w)


def test_gaussian_preferences():
    d = gaussian_preferences(20000, 4, theta_star=[2.0, 0, 0, 0], seed=1, chunk=7000)
    assert d.X.shape == (20000, 4)
    assert np.all(np.linalg.norm(d.X, axis=1) <= 2 + 1e-12)
    # labels follow Bradley-Terry: mean label given x0 > 0.5 is above 1/2
    hi = d.X[:, 0] > 0.5
    assert d.y[hi].mean() > 0.65
    again = gaussian_preferences(20000, 4, theta_star=[2.0, 0, 0, 0], seed=1, chunk=7000)
    np.testing.assert_array_equal(d.y, again.y)
