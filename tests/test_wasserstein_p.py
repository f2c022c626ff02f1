"""Exact continuous W_p WDPO (p > 1) against brute force, a transport LP and the finite program."""

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

from rdpo_theory import InputError, PreferenceData
from rdpo_theory.exact.wasserstein_p import _Problem, inner_sup, robust_value, wdpo_continuous_p
from rdpo_theory.losses import dpo_loss, margins


@pytest.mark.parametrize("p", [1.2, 2.0, 3.0])
def test_inner_sup_matches_dense_search(p):
    rng = np.random.default_rng(0)
    m = rng.normal(0, 4, 200)
    log_c = rng.normal(-1, 3, 200)
    phi, delta, cand, _ = inner_sup(m, log_c, p)
    dmax = np.exp(-(log_c + np.log(p)) / (p - 1))  # beyond it the penalty's slope exceeds 1
    u = np.r_[np.linspace(0.0, 1.0, 20_001), np.geomspace(1e-14, 1.0, 20_000)]
    grid = dmax[:, None] * u[None, :]
    vals = dpo_loss(m[:, None] - grid) - np.exp(log_c)[:, None] * grid**p
    best = vals.max(axis=1)
    assert np.all(best <= phi + 1e-12 * np.maximum(1, phi))  # no point beats phi...
    np.testing.assert_allclose(phi, best, rtol=1e-4)  # ...and the grid gets close to it
    # the value at the returned argmax is phi
    at = dpo_loss(m - delta) - np.exp(log_c) * delta**p
    np.testing.assert_allclose(at, phi, rtol=1e-12)
    # the three-root regime occurs (so that branch is exercised)
    m3 = np.repeat([4.0, 6.0, 8.0, 10.0], 80)
    c3 = inner_sup(m3, np.tile(np.linspace(-12, 2, 80), 4), p)[2]
    assert np.any(np.sum(~np.isnan(c3[:, :3]), axis=1) == 3)


def test_inner_sup_frozen_when_theta_is_reference():
    m = np.array([0.0, 0.0])
    phi, delta, _, _ = inner_sup(m, np.inf, 2.0)
    np.testing.assert_allclose(phi, np.log(2.0))
    np.testing.assert_array_equal(delta, 0.0)


def _toy(d, n=6, seed=3, h=0.01):
    rng = np.random.default_rng(seed)
    X = np.round(rng.uniform(-1, 1, (n, d)) / h) * h
    y = (rng.random(n) < 0.7).astype(float)
    return PreferenceData(X, y)


def _grid_sup(theta, data, rho, p, beta, h, L):
    """Transport LP over a dense grid of candidate x' (labels fixed): a lower bound on V."""
    ax = np.arange(-L, L + h / 2, h)
    G = np.array(list(itertools.product(ax, repeat=data.d)))
    n, K = data.n, G.shape[0]
    C = np.linalg.norm(data.X[:, None, :] - G[None], axis=2) ** p
    loss = dpo_loss(
        (data.signed_labels[:, None] * beta) * (G @ theta)[None, :]
    )  # l(x'_k, y_i), (n, K)
    A_eq = np.kron(np.eye(n), np.ones(K))
    res = linprog(
        -loss.ravel(),
        A_ub=C.ravel()[None, :],
        b_ub=[rho**p],
        A_eq=A_eq,
        b_eq=data.weights,
        bounds=(0, None),
        method="highs",
    )
    assert res.status == 0
    return -res.fun


@pytest.mark.parametrize("d, h, L", [(1, 0.005, 3.0), (2, 0.05, 1.6)])
def test_robust_value_matches_transport_lp_on_grid(d, h, L):
    data = _toy(d, h=h)
    beta, rho, p = 1.0, 0.3, 2.0
    theta = np.full(d, 0.8)
    V, eta = robust_value(theta, data, rho=rho, p=p, beta=beta)
    lp = _grid_sup(theta, data, rho, p, beta, h, L)
    # the grid is a subset of R^d: its sup is lower, by an amount that shrinks with h
    assert lp <= V + 1e-9
    assert V - lp <= 2.0 * h**2 * (1 + d)


def test_danskin_gradients_match_finite_differences():
    data = _toy(2, n=10, seed=5)
    prob = _Problem(data, 0.3, 2.0, 1.3, np.array([0.1, -0.2]))
    th, eta = np.array([0.7, -0.4]), 0.8
    G, gt, ge = prob.value_grad(th, eta)
    eps = 1e-6
    for j in range(2):
        e = np.eye(2)[j] * eps
        fd = (prob.value_grad(th + e, eta)[0] - prob.value_grad(th - e, eta)[0]) / (2 * eps)
        assert gt[j] == pytest.approx(fd, rel=1e-6, abs=1e-9)
    fd = (prob.value_grad(th, eta + eps)[0] - prob.value_grad(th, eta - eps)[0]) / (2 * eps)
    assert ge == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_solution_certificates_and_optimality(p):
    data = _toy(2, n=12, seed=1)
    res = wdpo_continuous_p(data, rho=0.15, p=p, beta=1.0)
    assert res.status == "optimal"
    assert -1e-12 <= res.gap < 1e-8
    assert res.info["grad_norm"] < 1e-5
    # complementary slackness: the worst case spends the whole budget rho^p
    assert res.info["transport_budget_used"] == pytest.approx(0.15**p, rel=1e-6)
    # theta* minimises V: no random nearby point does better (V convex)
    rng = np.random.default_rng(0)
    for _ in range(6):
        t = res.theta + 0.05 * rng.normal(size=2)
        assert robust_value(t, data, rho=0.15, p=p, beta=1.0)[0] >= res.value - 1e-10
    # V at the optimum equals the reported value, and exceeds the plain DPO loss there
    V, eta = robust_value(res.theta, data, rho=0.15, p=p, beta=1.0)
    assert V == pytest.approx(res.value, rel=1e-10)
    assert eta == pytest.approx(res.dual, rel=1e-6)
    assert V > dpo_loss(margins(res.theta, data.X, data.y, beta=1.0)).mean()


def test_collapse_to_reference_is_exact():
    data = _toy(2, n=12, seed=1)
    g = np.linalg.norm((data.weights * data.signed_labels) @ data.X)
    tref = np.array([0.2, -0.1])
    res = wdpo_continuous_p(data, rho=1.01 * g, p=2.0, beta=1.0, theta_ref=tref)
    assert res.info["collapse"] and res.value == pytest.approx(np.log(2))
    np.testing.assert_array_equal(res.theta, tref)
    # theta_ref is a minimiser: V >= log 2 around it
    for u in np.eye(2):
        for s in (1e-3, 0.1):
            v = robust_value(tref + s * u, data, rho=1.01 * g, p=2.0, beta=1.0, theta_ref=tref)[0]
            assert v >= np.log(2) - 1e-12
    # just below the threshold the optimum leaves theta_ref
    res2 = wdpo_continuous_p(data, rho=0.9 * g, p=2.0, beta=1.0, theta_ref=tref)
    assert not res2.info["collapse"] and np.linalg.norm(res2.theta - tref) > 1e-3
    assert res2.value < np.log(2)


def test_matches_finite_candidate_program_on_dense_grid_d1():
    from rdpo_theory.exact import wdpo

    h = 0.01
    data = _toy(1, h=h)
    grid = np.arange(-3, 3 + h / 2, h)[:, None]
    cand = (np.vstack([grid, grid]), np.r_[np.zeros(len(grid)), np.ones(len(grid))])
    cont = wdpo(data, rho=0.05, beta=1.0, p=2, solver="fast")  # candidates=None: continuous
    assert cont.method.startswith("wdpo-continuous")
    fin = wdpo(data, rho=0.05, beta=1.0, p=2, candidates=cand)
    # the grid restricts the adversary: its optimum is lower by O(h^2) and theta moves O(h)
    assert fin.value <= cont.value + 1e-7
    assert cont.value - fin.value < 5 * h**2
    np.testing.assert_allclose(fin.theta, cont.theta, atol=h)


def test_matches_finite_candidate_program_on_dense_grid_d2():
    from rdpo_theory.exact import wdpo

    h = 0.1
    data = _toy(2, h=h, seed=0)
    ax = np.arange(-2, 2 + h / 2, h)
    grid = np.array(list(itertools.product(ax, ax)))
    cand = (np.vstack([grid, grid]), np.r_[np.zeros(len(grid)), np.ones(len(grid))])
    cont = wdpo_continuous_p(data, rho=0.2, p=2.0, beta=1.0)
    fin = wdpo(data, rho=0.2, beta=1.0, p=2, candidates=cand)
    assert fin.value <= cont.value + 1e-7
    assert cont.value - fin.value < 0.5 * h**2
    np.testing.assert_allclose(fin.theta, cont.theta, atol=0.3 * h)


def test_rho_zero_is_dpo_and_bad_input():
    from rdpo_theory.exact import dpo

    data = _toy(2, n=12, seed=1)
    r0 = wdpo_continuous_p(data, rho=0.0, p=2.0, beta=1.0)
    np.testing.assert_allclose(r0.theta, dpo(data, beta=1.0).theta, atol=1e-10)
    with pytest.raises(InputError, match="p"):
        wdpo_continuous_p(data, rho=0.1, p=1.0, beta=1.0)
    with pytest.raises(InputError, match="rho"):
        wdpo_continuous_p(data, rho=-0.1, p=2.0, beta=1.0)
    with pytest.raises(InputError, match="beta"):
        wdpo_continuous_p(data, rho=0.1, p=2.0, beta=0.0)


def test_radius_constraint():
    data = _toy(2, n=12, seed=1)
    free = wdpo_continuous_p(data, rho=0.05, p=2.0, beta=1.0)
    R = 0.5 * np.linalg.norm(free.theta)
    res = wdpo_continuous_p(data, rho=0.05, p=2.0, beta=1.0, radius=R)
    assert np.linalg.norm(res.theta) == pytest.approx(R, rel=1e-6)
    assert res.info["on_boundary"] and res.value > free.value
