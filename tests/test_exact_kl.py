"""Exact KLDPO: independent references, regimes, certificates, bad input."""

import json

import numpy as np
import pytest
from scipy.optimize import minimize

from rdpo_theory import InputError, PreferenceData, SolverError, World
from rdpo_theory.cli import main
from rdpo_theory.exact import dpo, kldpo
from rdpo_theory.exact.certificates import kl_primal_certificate, kl_primal_sup
from rdpo_theory.losses import dpo_losses


def _robust_value(theta, data, rho, beta, tref=None):
    """KL-robust objective at theta from the primal side (scalar root find, independent)."""
    l = dpo_losses(theta, data, beta=beta, theta_ref=tref)
    return kl_primal_sup(l, data.weights, rho, method="root")


def _random_data(seed, n=120, d=3, zeros=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X[:zeros] = 0.0
    t = rng.standard_normal(d)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * X @ t))).astype(float)
    w = rng.random(n) + 0.2
    return PreferenceData(X, y, w / w.sum())


def test_rho_zero_is_dpo():
    data = _random_data(0)
    res = kldpo(data, rho=0.0, beta=0.7)
    ref = dpo(data, beta=0.7)
    np.testing.assert_allclose(res.theta, ref.theta, atol=1e-9)
    assert res.value == pytest.approx(ref.value, rel=1e-12)
    assert res.dual == np.inf and res.regime == "dpo"
    np.testing.assert_allclose(res.worst_case, data.weights)


@pytest.mark.parametrize("seed, rho, zeros", [(1, 0.02, 0), (2, 0.02, 10), (3, 0.01, 0)])
def test_interior_matches_independent_minimisation(seed, rho, zeros):
    data = _random_data(seed, zeros=zeros)
    tref = np.array([0.1, -0.2, 0.05])
    res = kldpo(data, rho=rho, beta=1.3, theta_ref=tref)
    assert res.status == "optimal" and res.regime == "interior" and res.dual > 0
    opt = minimize(
        lambda t: _robust_value(t, data, rho, 1.3, tref),
        res.theta + 0.3,
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 4000},
    )
    assert res.value == pytest.approx(opt.fun, rel=1e-6)
    assert res.value <= opt.fun + 1e-9
    np.testing.assert_allclose(res.theta, opt.x, atol=1e-4)
    # certificate and worst case: q ∝ p exp(l / lam), KL(q || p) = rho
    assert abs(res.gap) <= 1e-6 * abs(res.value)
    q = res.worst_case
    assert q.shape == (data.n,) and q.sum() == pytest.approx(1.0, abs=1e-12)
    l = dpo_losses(res.theta, data, beta=1.3, theta_ref=tref)
    tilt = data.weights * np.exp((l - l.max()) / res.dual)
    np.testing.assert_allclose(q, tilt / tilt.sum(), rtol=1e-9, atol=1e-15)
    assert res.info["kl_worst_case"] == pytest.approx(rho, rel=1e-6)
    assert q @ l == pytest.approx(res.value, rel=1e-7)


def test_collapse_at_large_rho_is_reported_not_an_error():
    w = World.random(8, 4, 3, seed=1)
    pop = w.population.data
    res = kldpo(pop, rho=0.5, beta=w.beta)
    assert res.status == "optimal" and res.regime == "collapse" and res.dual == 0.0
    assert res.info["collapsed_to_theta_ref"] and "collapse" in res.info["note"]
    np.testing.assert_allclose(res.theta, 0.0, atol=1e-12)
    assert res.value == pytest.approx(np.log(2), abs=1e-12)
    assert abs(res.gap) <= 1e-8
    thr = res.info["rho_threshold"]
    assert 0 < thr < 0.5
    # the saddle distribution makes theta_ref stationary and lies in the ball
    q = res.worst_case
    np.testing.assert_allclose(pop.X.T @ (q * pop.signed_labels), 0.0, atol=1e-8)
    assert res.info["kl_worst_case"] <= 0.5
    # just below the threshold the solution is interior, close to theta_ref, continuous value
    below = kldpo(pop, rho=thr * 0.98, beta=w.beta)
    assert below.regime == "interior" and below.dual > 0
    assert below.value < np.log(2) and below.value == pytest.approx(np.log(2), abs=1e-3)
    # above: same collapse from the cvxpy and the fast path
    fast = kldpo(pop, rho=thr * 1.02, beta=w.beta, solver="fast")
    assert fast.regime == "collapse" and np.allclose(fast.theta, 0)


def test_max_loss_limit_without_collapse_is_max_margin():
    # separable 2-d data with a radius: the max-loss limit is the max-margin direction
    X = np.array([[1.0, 0.2], [0.8, -0.5], [0.6, 0.9], [1.2, 0.1]])
    y = np.ones(4)
    R = 2.0
    res = kldpo(X, y, rho=5.0, beta=1.0, radius=R)
    assert res.status == "optimal" and res.regime == "max-loss" and res.dual == 0.0
    ang = np.linspace(-np.pi, np.pi, 200001)
    U = np.stack([np.cos(ang), np.sin(ang)], 1) * R
    best = U[np.argmax((U @ X.T).min(axis=1))]
    np.testing.assert_allclose(res.theta, best, atol=1e-4)
    assert res.value == pytest.approx(np.log1p(np.exp(-(X @ res.theta).min())), rel=1e-9)
    assert abs(res.gap) <= 1e-6 * res.value
    # no better than the independent robust value at the grid optimum (grid step 3e-5)
    grid = _robust_value(best, PreferenceData(X, y), 5.0, 1.0)
    assert res.value <= grid + 1e-12 and res.value == pytest.approx(grid, rel=1e-4)


def test_radius_active_kkt():
    data = _random_data(4, n=200)
    res = kldpo(data, rho=0.05, beta=3.0, radius=0.3)
    assert np.linalg.norm(res.theta) == pytest.approx(0.3, abs=1e-9)
    assert res.info["on_boundary"]
    # along the sphere the independent robust value is minimal at theta
    t = res.theta
    base = _robust_value(t, data, 0.05, 3.0)
    rng = np.random.default_rng(0)
    for _ in range(10):
        v = t + 0.02 * rng.standard_normal(3)
        v *= 0.3 / np.linalg.norm(v)
        assert _robust_value(v, data, 0.05, 3.0) >= base - 1e-10
    assert abs(res.gap) <= 1e-6 * res.value


def test_population_convenience_on_world():
    w = World.random(6, 3, 2, seed=5, theta_norm=2.0)
    res = w.robust_optimum("kldpo", 0.01)
    ref = kldpo(w.population.data, rho=0.01, beta=w.beta, radius=w.B, theta_ref=w.theta_ref)
    np.testing.assert_allclose(res.theta, ref.theta)
    assert res.method == "kldpo"
    with pytest.raises(InputError, match="method"):
        w.robust_optimum("chi2", 0.1)


def test_separable_without_radius_raises_with_hint():
    X = np.array([[1.0, 0.0], [2.0, 1.0]])
    with pytest.raises(SolverError, match="radius") as ei:
        kldpo(X, [1, 1], rho=0.1, beta=1.0)
    assert ei.value.status == "unbounded" and ei.value.hint


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rho=-0.1, beta=1.0), "rho"),
        (dict(rho=float("nan"), beta=1.0), "rho"),
        (dict(rho=0.1, beta=0.0), "beta"),
        (dict(rho=0.1, beta=1.0, radius=-1.0), "radius"),
        (dict(rho=0.1, beta=1.0, theta_ref=[0.0]), "theta_ref"),
        (dict(rho=0.1, beta=1.0, weights=[0.5, 0.6]), "weights"),
        (dict(rho=0.1, beta=1.0, solver="newton"), "solver"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        kldpo(np.array([[1.0, 0.0], [0.0, 1.0]]), [1, 0], **kwargs)


def test_bad_data_rejected():
    with pytest.raises(InputError, match="X"):
        kldpo(np.array([[np.nan, 0.0]]), [1], rho=0.1, beta=1.0)
    with pytest.raises(InputError, match="labels"):
        kldpo(np.array([[1.0, 0.0]]), [2], rho=0.1, beta=1.0)


def test_cli_kldpo_prints_dual_worst_case_and_gap(capsys):
    assert (
        main(["solve", "--world", "random", "--method", "kldpo", "--rho", "0.005", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "kldpo" and out["dual"] > 0
    assert abs(out["gap"]) < 1e-6 and out["worst_case_support"] > 0
    assert main(["solve", "--world", "toy", "--method", "wdpo", "--rho", "0.05"]) == 0
    text = capsys.readouterr().out
    assert "gap" in text and "dual" in text and "transport_cost" in text


# ---------------------------------------------------------------------------- tiny radii
@pytest.mark.parametrize("rho", [1e-20, 1e-16, 1e-13, 1e-11])
def test_small_radius_bounds_bracket_the_decimal_supremum(rho):
    """The centred feasible point and dual bound bracket the supremum computed in 60-digit
    decimal arithmetic, O(rho) apart; the feasible point's KL (in decimal) is within rho."""
    from decimal import Decimal, localcontext

    from independent import kl_sup_decimal

    from rdpo_theory.divergences.kl import kl_small_radius_bounds

    rng = np.random.default_rng(4)
    l = rng.exponential(size=30)
    p = rng.dirichlet(np.ones(30))
    ref, lam_ref = kl_sup_decimal(l, p, rho)
    b = kl_small_radius_bounds(l, p, rho)
    ulps = 4 * np.finfo(float).eps * abs(ref)  # rounding of values of order one
    assert b["primal"] <= ref + ulps and b["dual"] >= ref - ulps
    assert b["dual"] - b["primal"] <= 2 * rho + ulps
    assert b["lam"] == pytest.approx(lam_ref, rel=1e-3)
    with localcontext() as ctx:
        ctx.prec = 60
        P = [Decimal(float(v)) for v in p]
        Q = [Decimal(float(v)) for v in b["q"]]
        zq, zp = sum(Q), sum(P)
        kl = sum((qi / zq) * ((qi / zq) / (pi / zp)).ln() for qi, pi in zip(Q, P))
    assert 0.99 * rho <= float(kl) <= rho * (1 + 1e-6)


@pytest.mark.parametrize("rho", [1e-20, 1e-16])
def test_robust_risk_at_a_tiny_radius_matches_decimal_precision(rho):
    """The root find's value was 6e-9 nats above the supremum at rho = 1e-16 (its KL is a
    difference of numbers of order one); below kl_tilt.SMALL_RHO the centred point is used."""
    from independent import kl_sup_decimal

    from rdpo_theory.exact import robust_risk

    data = _random_data(5, n=40)
    theta = np.array([0.5, -0.3, 0.8])
    got = robust_risk(theta, data, method="kldpo", rho=rho, beta=1.0)
    ref, _ = kl_sup_decimal(dpo_losses(theta, data, beta=1.0), data.weights, rho)
    assert abs(got - ref) <= 2 * rho + 1e-15
    l = dpo_losses(theta, data, beta=1.0)
    value, info = kl_primal_certificate(l, data.weights, rho, method="auto")
    assert info["certificate"] == "small radius (centred tilt)"
    assert abs(value - ref) <= 2 * rho + 1e-15


@pytest.mark.parametrize("solver", ["fast", "cvxpy"])
def test_tiny_radius_with_zero_rows_weights_and_a_ball(solver):
    """The small-radius path (rho < TINY_RHO) on weighted data with x = 0 rows and an active
    ball: certified, its worst case feasible, its value above DPO's by sqrt(2 rho Var_p l) to
    O(rho), and continuous with the Newton path just above the threshold."""
    from independent import kl_sup_decimal

    from rdpo_theory.exact.kl import TINY_RHO

    data = _random_data(6, n=60, zeros=6)
    d0 = dpo(data, beta=1.0, radius=0.3)
    assert np.linalg.norm(d0.theta) == pytest.approx(0.3, rel=1e-6)  # the ball is active
    rho = 1e-15
    res = kldpo(data, rho=rho, beta=1.0, radius=0.3, solver=solver)
    assert res.status == "optimal" and res.regime == "interior"
    assert res.info["path"] == "small radius"
    np.testing.assert_allclose(res.theta, d0.theta, atol=1e-9)
    l = dpo_losses(res.theta, data, beta=1.0)
    var = float(data.weights @ (l - data.weights @ l) ** 2)
    assert res.value - d0.value == pytest.approx(np.sqrt(2 * rho * var), abs=1e-13)
    ref, _ = kl_sup_decimal(l, data.weights, rho)
    assert res.value >= ref - 1e-15 and res.value - res.gap <= ref + 1e-15
    # far below sqrt(2 rho Var) ~ 1e-8, the gap a bound at p instead of q would leave
    assert -1e-15 <= res.optimality_gap <= 1e-10
    assert res.worst_case.sum() == pytest.approx(1.0, abs=1e-15)
    assert np.all(res.worst_case[:6] > 0)  # the x = 0 atom's mass is spread over its rows
    above = kldpo(data, rho=TINY_RHO * 1.01, beta=1.0, radius=0.3, solver=solver)
    below = kldpo(data, rho=TINY_RHO * 0.99, beta=1.0, radius=0.3, solver=solver)
    assert "path" not in above.info and below.info["path"] == "small radius"
    assert below.value == pytest.approx(above.value, abs=1e-8)
