"""Exact WDPO: closed forms, transport LP, label flips, certificates, bad input."""

import numpy as np
import pytest
from scipy.optimize import minimize

from rdpo_theory import InputError, PreferenceData, SolverError, World
from rdpo_theory.exact import dpo, wdpo
from rdpo_theory.exact.certificates import transport_primal_sup, w1_primal_sup
from rdpo_theory.exact.wasserstein import default_cost
from rdpo_theory.losses import dpo_loss, margins


def _data(seed, n=80, d=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (rng.random(n) < 1 / (1 + np.exp(-1.5 * X @ rng.standard_normal(d)))).astype(float)
    w = rng.random(n) + 0.2
    return PreferenceData(X, y, w / w.sum())


def test_continuous_kappa_inf_is_mean_loss_plus_lipschitz_penalty():
    data = _data(0)
    tref = np.array([0.3, -0.1, 0.2])
    rho, beta = 0.05, 0.8
    res = wdpo(data, rho=rho, beta=beta, theta_ref=tref)

    def pen(t):  # docs/theory.md#w1-continuous with the norm of theta - theta_ref
        m = margins(t, data.X, data.y, beta=beta, theta_ref=tref)
        return data.weights @ dpo_loss(m) + rho * beta * np.linalg.norm(t - tref)

    opt = minimize(
        pen, res.theta + 0.2, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-15}
    )
    assert res.value == pytest.approx(opt.fun, rel=1e-7) and res.value <= opt.fun + 1e-12
    np.testing.assert_allclose(res.theta, opt.x, atol=1e-4)
    assert res.dual == pytest.approx(beta * np.linalg.norm(res.theta - tref), rel=1e-12)
    assert abs(res.gap) <= 1e-12 and res.worst_case is None


def test_closed_form_sup_is_approached_by_far_candidates():
    # the transport LP over data + copies pushed a distance D against the margin approaches
    # E l + rho beta ||theta - theta_ref|| from below as D grows (mass escapes to infinity)
    data = _data(1, n=30)
    theta, tref, beta, rho = np.array([0.5, -0.4, 0.3]), np.array([0.1, 0.0, -0.1]), 1.2, 0.1
    u = (theta - tref) / np.linalg.norm(theta - tref)
    sy = data.signed_labels
    closed = data.weights @ dpo_loss(
        margins(theta, data.X, data.y, beta=beta, theta_ref=tref)
    ) + rho * beta * np.linalg.norm(theta - tref)
    vals = []
    for D in (10.0, 100.0, 1000.0):
        Xc = np.vstack([data.X, data.X - D * sy[:, None] * u])
        yc = np.concatenate([data.y, data.y])
        C = default_cost(data.X, data.y, Xc, yc, np.inf)
        Lc = dpo_loss(margins(theta, Xc, yc, beta=beta, theta_ref=tref))
        vals.append(transport_primal_sup(Lc, data.weights, C, rho)[0])
    assert vals[0] < vals[1] < vals[2] <= closed + 1e-12
    assert closed - vals[2] < 0.05 * (closed - vals[0]) + 1e-9


def test_label_flips_kappa_finite_against_primal_knapsack():
    data = _data(2)
    rho, beta, kappa = 0.05, 3.0, 1.0
    res = wdpo(data, rho=rho, beta=beta, kappa=kappa)
    assert abs(res.gap) <= 1e-6 * res.value
    frac = res.info["flip_fraction"]
    assert np.all((frac >= 0) & (frac <= 1)) and (frac > 0).any()

    def primal(t):
        m = margins(t, data.X, data.y, beta=beta)
        return w1_primal_sup(
            dpo_loss(m), dpo_loss(-m), data.weights, beta * np.linalg.norm(t), rho, kappa
        )[0]

    opt = minimize(
        primal,
        res.theta + 0.1,
        method="Nelder-Mead",
        options={"xatol": 1e-9, "fatol": 1e-13, "maxiter": 5000},
    )
    assert res.value <= opt.fun + 1e-7
    assert res.value == pytest.approx(opt.fun, rel=1e-6)
    # flipping is cheaper than moving for no pair when kappa is huge: back to kappa = inf
    big = wdpo(data, rho=rho, beta=beta, kappa=1e6)
    inf = wdpo(data, rho=rho, beta=beta)
    assert big.value == pytest.approx(inf.value, rel=1e-6)


def test_finite_candidates_world_against_direct_minimisation():
    w = World.random(4, 3, 2, seed=3, theta_norm=2.0)
    pop = w.population.data
    rho = 0.05
    res = wdpo(pop, rho=rho, beta=w.beta, candidates=w.candidates(), radius=w.B)
    assert res.status == "optimal" and res.regime == "finite"
    plan = res.transport_plan
    assert plan.shape == (pop.n, pop.n)
    np.testing.assert_allclose(plan.sum(axis=1), pop.weights, atol=1e-9)
    np.testing.assert_allclose(res.worst_case, plan.sum(axis=0))
    assert res.info["transport_cost"] <= rho + 1e-9
    assert abs(res.gap) <= 1e-6 * res.value
    C = default_cost(pop.X, pop.y, *w.candidates(), np.inf)
    Xc, yc = w.candidates()

    def robust(t):
        return transport_primal_sup(dpo_loss(margins(t, Xc, yc, beta=w.beta)), pop.weights, C, rho)[
            0
        ]

    opt = minimize(
        robust, res.theta + 0.05, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14}
    )
    assert res.value <= opt.fun + 1e-7
    assert res.value == pytest.approx(opt.fun, rel=1e-6)
    # the world convenience solves the same program
    conv = w.robust_optimum("wdpo", rho)
    np.testing.assert_allclose(conv.theta, res.theta, atol=1e-6)


def test_finite_cost_power_and_custom_cost():
    w = World.toy(beta=2.0)
    pop = w.population.data
    Xc, yc = w.candidates()
    C = default_cost(pop.X, pop.y, Xc, yc, 0.7)
    a = wdpo(pop, rho=0.3, beta=2.0, p=2, kappa=0.7, candidates=(Xc, yc), radius=2.0)
    b = wdpo(pop, rho=0.3**2, beta=2.0, p=1, candidates=(Xc, yc), cost=C**2, radius=2.0)
    np.testing.assert_allclose(a.theta, b.theta, atol=1e-6)
    assert a.value == pytest.approx(b.value, rel=1e-7)
    assert a.dual == pytest.approx(b.dual, rel=1e-4)


def test_rho_zero_is_dpo_in_every_case():
    w = World.random(4, 3, 2, seed=7)
    pop = w.population.data
    ref = dpo(pop, beta=w.beta)
    for kw in (dict(), dict(kappa=0.5), dict(candidates=w.candidates())):
        res = wdpo(pop, rho=0.0, beta=w.beta, **kw)
        np.testing.assert_allclose(res.theta, ref.theta, atol=1e-6)
        assert res.value == pytest.approx(ref.value, rel=1e-8)


def test_collapse_certified_at_large_rho():
    w = World.random(6, 3, 3, seed=1)
    pop = w.population.data
    for kw in (dict(candidates=w.candidates(), radius=w.B), dict(kappa=0.5), dict()):
        res = wdpo(pop, rho=2.0, beta=w.beta, **kw)
        np.testing.assert_allclose(res.theta, 0.0, atol=1e-12)
        assert res.value == pytest.approx(np.log(2), abs=1e-12)
        assert res.info["collapsed_to_theta_ref"]
        assert abs(res.gap) <= 1e-9


def test_separable_without_radius_finite_raises():
    X = np.array([[1.0, 0.0], [2.0, 1.0]])
    y = np.array([1.0, 1.0])
    with pytest.raises(SolverError, match="radius"):
        wdpo(X, y, rho=0.1, beta=1.0, candidates=(X, y))
    res = wdpo(X, y, rho=0.1, beta=1.0, candidates=(X, y), radius=1.0)
    assert np.linalg.norm(res.theta) == pytest.approx(1.0, abs=1e-6)
    # the continuous penalty keeps separable data bounded
    assert wdpo(X, y, rho=0.1, beta=1.0).status == "optimal"


X2 = np.array([[1.0, 0.0], [0.0, 1.0]])
Y2 = np.array([1.0, 0.0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rho=-0.1), "rho"),
        (dict(rho=0.1, p=0.5), "p"),
        (dict(rho=0.1, kappa=0.0), "kappa"),
        (dict(rho=0.1, kappa=-1.0), "kappa"),
        (dict(rho=0.1, candidates=(np.zeros((0, 2)), np.zeros(0))), "empty"),
        (dict(rho=0.1, candidates=(np.ones((3, 3)), np.ones(3))), "candidates"),
        (dict(rho=0.1, candidates=(X2, Y2), cost=np.ones((2, 3))), "cost"),
        (dict(rho=0.1, candidates=(X2, Y2), cost=-np.ones((2, 2))), "cost"),
        (dict(rho=0.1, candidates=(X2, Y2), cost=np.full((2, 2), np.nan)), "cost"),
        (dict(rho=0.1, candidates=(X2, Y2), cost=np.full((2, 2), np.inf)), "cost"),
        (dict(rho=0.1, candidates=(X2 + 5, Y2)), "rho"),
        (dict(rho=0.1, cost=np.ones((2, 2))), "cost"),
        (dict(rho=0.1, candidates=(X2, Y2), solver="fast"), "fast"),
        (dict(rho=0.1, kappa=1.0, solver="fast"), "fast"),
        (dict(rho=0.1, solver="interior"), "solver"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        wdpo(X2, Y2, beta=1.0, **kwargs)
