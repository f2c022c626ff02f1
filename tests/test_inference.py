"""Inference for the exact estimators: sandwich covariances against the estimator's own
finite-difference influence and against Monte Carlo, the bootstrap, the empirical-likelihood
bound and the non-smooth cases (docs/theory.md#inference)."""

import numpy as np
import pytest
from scipy.stats import norm

from rdpo_theory.data import PreferenceData
from rdpo_theory.errors import InputError
from rdpo_theory.inference import confidence, el_bound, el_radius, fit_exact, influence
from rdpo_theory.options import invalid_values
from rdpo_theory.worlds import World

CASES = [("dpo", 0.0), ("kldpo", 0.02), ("wdpo", 0.03)]

#: confidence()'s declared constraints (``parameter_constraints``; ``_parameter_constraints``
#: before the options module renamed it)
_CONSTRAINTS = getattr(
    confidence, "parameter_constraints", getattr(confidence, "_parameter_constraints", {})
)


@pytest.fixture(scope="module")
def world():
    return World.random(8, 4, 3, theta_norm=2.0, B=8.0, seed=0)


@pytest.mark.parametrize("method,rho", CASES)
def test_influence_is_the_derivative_of_the_estimator(world, method, rho):
    """-H^-1 psi_j is d theta_hat / dt along p -> p + t (e_j - p), and v_j is d value / dt:
    the sandwich's ingredients against central differences of exact refits."""
    data = world.empirical(3000, seed=3)
    kw = dict(method=method, rho=rho, beta=world.beta, radius=world.B)
    res = fit_exact(data, **kw)
    inf = influence(data, res.theta, method=method, rho=rho, beta=world.beta, lam=res.dual)
    d = data.d
    for j in (0, int(np.argmax(data.weights))):
        e = np.zeros(data.n)
        e[j] = 1.0
        t = 1e-4
        fits = [
            fit_exact(PreferenceData(data.X, data.y, data.weights + s * (e - data.weights)), **kw)
            for s in (t, -t)
        ]
        dtheta = (fits[0].theta - fits[1].theta) / (2 * t)
        dvalue = (fits[0].value - fits[1].value) / (2 * t)
        centred = inf["psi"][j] - data.weights @ inf["psi"]
        pred = -np.linalg.solve(inf["H"], centred)[:d]
        np.testing.assert_allclose(dtheta, pred, rtol=2e-3, atol=2e-4)
        vj = inf["v"][j] - data.weights @ inf["v"]
        np.testing.assert_allclose(dvalue, vj, rtol=2e-3, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method,rho", CASES)
def test_sandwich_se_matches_monte_carlo(world, method, rho):
    """Done test of issue 22: at n = 2000 the sandwich SE is within 10% of the Monte Carlo
    standard deviation of the estimate over independent samples (600 replications: the
    Monte Carlo SD itself has a relative error of about 3%)."""
    n, reps = 2000, 600
    thetas, ses, values, vses = [], [], [], []
    for s in range(reps):
        data = world.empirical(n, seed=(11, s))
        r = confidence(
            data,
            method=method,
            rho=rho or None,
            beta=world.beta,
            n_samples=n,
            radius=world.B,
            on_nonsmooth="nan",
        )
        thetas.append(r.theta)
        ses.append(r.se)
        values.append(r.value)
        vses.append(r.value_se)
    mc = np.std(thetas, axis=0, ddof=1)
    ratio = np.nanmean(ses, axis=0) / mc
    assert np.all(np.abs(ratio - 1) < 0.10), ratio
    vratio = np.nanmean(vses) / np.std(values, ddof=1)
    assert abs(vratio - 1) < 0.10, vratio


def test_wald_interval_and_table(world):
    data = world.empirical(2000, seed=1)
    r = confidence(
        data, method="kldpo", rho=0.02, beta=world.beta, n_samples=2000, radius=world.B, level=0.9
    )
    z = norm.ppf(0.95)
    np.testing.assert_allclose(r.ci[:, 1] - r.theta, z * r.se)
    np.testing.assert_allclose(r.value_ci, r.value + np.array([-z, z]) * r.value_se)
    np.testing.assert_allclose(np.sqrt(np.diag(r.cov)), r.se)
    assert r.kind == "sandwich" and r.info["smooth"] and r.info["lam_se"] > 0
    tab = r.table()
    assert list(tab["quantity"]) == ["theta"] * 3 + ["value"]
    assert {"estimate", "se", "ci_lo", "ci_hi", "kind", "method", "rho"} <= set(tab.columns)
    # the delta method: exact for a linear function, central differences for a smooth one
    a = np.array([1.0, -2.0, 0.5])
    lin = r.delta(lambda t: a @ t)
    np.testing.assert_allclose(lin["se"], np.sqrt(a @ r.cov @ a), rtol=1e-6)
    rew = r.delta(world.expected_reward)
    assert rew["se"] > 0 and rew["ci"][0] < rew["estimate"] < rew["ci"][1]


def test_bootstrap_is_deterministic_across_backends(world):
    data = world.empirical(2000, seed=2)
    kw = dict(
        method="wdpo",
        rho=0.03,
        beta=world.beta,
        n_samples=2000,
        radius=world.B,
        kind="bootstrap",
        n_boot=40,
        interval="percentile",
    )
    one = confidence(data, **kw)
    thr = confidence(data, jobs=2, backend="threading", **kw)
    assert one.kind == "bootstrap" and one.draws.shape == (40, 4)
    np.testing.assert_array_equal(thr.draws, one.draws)  # same streams whatever the backend
    sw = confidence(data, **{**kw, "kind": "sandwich"})
    np.testing.assert_allclose(one.se, sw.se, rtol=0.4)


@pytest.mark.slow
def test_bootstrap_bca_agrees_with_sandwich(world):
    data = world.empirical(2000, seed=2)
    kw = dict(method="kldpo", rho=0.02, beta=world.beta, n_samples=2000, radius=world.B)
    sw = confidence(data, **kw)
    bt = confidence(data, kind="bootstrap", n_boot=200, interval="bca", **kw)
    np.testing.assert_allclose(bt.se, sw.se, rtol=0.15)
    np.testing.assert_allclose(bt.value_se, sw.value_se, rtol=0.15)
    assert np.all(bt.ci[:, 0] < bt.theta) and np.all(bt.theta < bt.ci[:, 1])
    np.testing.assert_allclose(bt.ci, sw.ci, atol=sw.se.max())


def test_nonsmooth_cases_refuse_or_fall_back(world):
    data = world.empirical(500, seed=4)
    big = dict(method="kldpo", rho=1.0, beta=world.beta, n_samples=500, radius=world.B)
    with pytest.raises(InputError, match="not smooth \\(collapse to theta_ref\\)"):
        confidence(data, on_nonsmooth="raise", **big)
    r = confidence(data, on_nonsmooth="nan", **big)
    assert np.all(np.isnan(r.se)) and r.info["nonsmooth"] == "collapse to theta_ref"
    fb = confidence(data, n_boot=20, interval="percentile", **big)
    assert fb.kind == "bootstrap" and "sandwich refused" in fb.info["fallback"]
    ball = confidence(
        data, method="dpo", beta=world.beta, n_samples=500, radius=0.5, on_nonsmooth="nan"
    )
    assert ball.info["nonsmooth"] == "active parameter ball"


def test_bad_inputs(world):
    data = world.empirical(200, seed=0)
    with pytest.raises(InputError, match="'method' parameter of confidence"):
        confidence(data, method="ipo", beta=1.0, n_samples=200)
    with pytest.raises(InputError, match="'level' parameter of confidence"):
        confidence(data, method="dpo", beta=1.0, n_samples=200, level=1.5)
    with pytest.raises(InputError, match="n_samples"):
        confidence(data.X, data.y, weights=data.weights, method="dpo", beta=1.0)
    with pytest.raises(InputError, match="'rho' parameter"):
        confidence(data, method="kldpo", beta=1.0, n_samples=200)
    with pytest.raises(InputError, match="'divergence' parameter of el_bound"):
        el_bound(np.zeros(3), data, beta=1.0, n_samples=200, divergence="tv")


def test_el_radius_and_expansion(world):
    assert el_radius(100, 0.95) == pytest.approx(norm.ppf(0.95) ** 2 / 200, rel=1e-9)
    assert el_radius(100, 0.95, sided="two") == pytest.approx(norm.ppf(0.975) ** 2 / 200)
    # the ball's supremum is mean + z sd / sqrt(n) + O(1/n) for both divergences
    n = 10**6
    data = world.empirical(n, seed=5)
    from rdpo_theory.losses import dpo_losses

    lo = dpo_losses(world.theta_star, data, beta=world.beta)
    sd = np.sqrt(data.weights @ (lo - data.weights @ lo) ** 2)
    for div in ("kl", "chi2"):
        b = el_bound(
            world.theta_star, data, beta=world.beta, n_samples=n, divergence=div, sided="two"
        )
        assert b["upper"] - b["mean"] == pytest.approx(norm.ppf(0.975) * sd / np.sqrt(n), rel=2e-3)
        assert b["mean"] - b["lower"] == pytest.approx(norm.ppf(0.975) * sd / np.sqrt(n), rel=2e-3)


@pytest.mark.slow
def test_el_bound_covers_the_population_risk(world):
    """The KL and chi-square robust values at chi2_{1,0.9}/(2n) cover E_P0 l(theta) about 95%
    of the time at n = 2000 (1000 replications: binomial SD 0.7 points)."""
    from rdpo_theory.losses import dpo_risk

    theta = world.theta_star
    risk = dpo_risk(theta, world.population.data, beta=world.beta)
    hits = {"kl": 0, "chi2": 0}
    reps = 1000
    for s in range(reps):
        data = world.empirical(2000, seed=(13, s))
        for div in hits:
            hits[div] += (
                el_bound(theta, data, beta=world.beta, n_samples=2000, divergence=div)["upper"]
                >= risk
            )
    for div, h in hits.items():
        assert abs(h / reps - 0.95) < 0.025, (div, h / reps)


@pytest.mark.parametrize(
    "name,bad",
    [(name, bad) for name, cons in _CONSTRAINTS.items() for bad in invalid_values(cons)],
)
def test_declared_constraints_refuse_generated_values(world, name, bad):
    kw = dict(method="dpo", beta=1.0, n_samples=50)
    kw[name] = bad
    with pytest.raises(InputError, match=f"'{name}' parameter of confidence"):
        confidence(world.empirical(50, seed=0), **kw)


@pytest.mark.slow
def test_bca_acceleration_jackknife_matches_influences(world):
    """The jackknife over rows and the infinitesimal jackknife (sandwich influences) give the
    same BCa acceleration for a smooth estimate."""
    from rdpo_theory.inference.api import _influence_acceleration
    from rdpo_theory.inference.bootstrap import acceleration, run_bootstrap

    n = 2000
    data = world.empirical(n, seed=6)
    kw = dict(
        method="kldpo",
        rho=0.02,
        beta=world.beta,
        theta_ref=None,
        radius=world.B,
        candidates=None,
        solver="fast",
    )
    res = fit_exact(data, **kw)
    boot = run_bootstrap(data, n_samples=n, fit_kwargs=kw, n_boot=0, seed=0, jackknife=True)
    a_jack = acceleration(boot["jack"], boot["jack_mult"])
    a_inf = _influence_acceleration(data, res, "kldpo", 0.02, world.beta, None, n)
    assert np.all(np.abs(a_inf) < 0.05)
    np.testing.assert_allclose(a_jack, a_inf, rtol=0.1, atol=1e-4)
