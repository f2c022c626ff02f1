import numpy as np
import pytest
from scipy.optimize import minimize

from rdpo_theory import InputError, SolverError, World
from rdpo_theory.exact import dpo
from rdpo_theory.losses import dpo_risk, dpo_risk_grad, dpo_risk_hessian


def test_population_dpo_recovers_theta_star():
    w = World.random(8, 4, 3, seed=1)
    res = dpo(w.population.data, beta=w.beta)
    assert res.status == "optimal"
    np.testing.assert_allclose(res.theta, w.theta_star, atol=1e-9)


def test_population_dpo_toy_with_reference():
    w = World.toy(beta=0.5).replace(theta_ref=np.array([0.2, 0.1]), theta_star=[1.0, -0.5])
    res = dpo(w.population.data, beta=w.beta, theta_ref=w.theta_ref)
    np.testing.assert_allclose(res.theta, w.theta_star, atol=1e-9)


def test_empirical_dpo_converges():
    w = World.random(8, 4, 3, seed=3)
    errs = []
    for n in (200, 2000, 20000, 200000):
        e = [
            np.linalg.norm(dpo(w.empirical(n, s), beta=w.beta).theta - w.theta_star)
            for s in range(4)
        ]
        errs.append(np.mean(e))
    assert errs[-1] < errs[0] / 10
    assert errs[-1] < 0.05


def test_matches_scipy_minimisation():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 4))
    y = (rng.random(300) < 0.6).astype(float)
    w = rng.random(300)
    w /= w.sum()
    from rdpo_theory import PreferenceData

    data = PreferenceData(X, y, w)
    tref = np.array([0.1, 0, -0.2, 0.3])
    res = dpo(X, y, beta=0.7, weights=w, theta_ref=tref)
    opt = minimize(
        lambda t: dpo_risk(t, data, beta=0.7, theta_ref=tref),
        np.zeros(4),
        jac=lambda t: dpo_risk_grad(t, data, beta=0.7, theta_ref=tref),
        method="BFGS",
        options={"gtol": 1e-11},
    )
    assert res.value == pytest.approx(opt.fun, rel=1e-6)
    np.testing.assert_allclose(res.theta, opt.x, atol=1e-4)


def test_radius_constraint_active():
    w = World.random(8, 4, 3, seed=1, theta_norm=3.0)
    res = dpo(w.population.data, beta=w.beta, radius=1.0)
    assert np.linalg.norm(res.theta) == pytest.approx(1.0, abs=1e-6)
    assert res.info["on_boundary"]
    # KKT: the gradient points along -theta at the boundary
    g = dpo_risk_grad(res.theta, w.population.data, beta=w.beta)
    cos = -g @ res.theta / (np.linalg.norm(g) * np.linalg.norm(res.theta))
    assert cos == pytest.approx(1.0, abs=1e-5)


def test_gradient_and_hessian_finite_differences():
    w = World.random(5, 3, 3, seed=9)
    data, t = w.population.data, np.array([0.3, -0.2, 0.5])
    eps = 1e-6
    fd = [
        (dpo_risk(t + eps * e, data, beta=2.0) - dpo_risk(t - eps * e, data, beta=2.0)) / (2 * eps)
        for e in np.eye(3)
    ]
    np.testing.assert_allclose(dpo_risk_grad(t, data, beta=2.0), fd, atol=1e-8)
    fdh = [
        (dpo_risk_grad(t + eps * e, data, beta=2.0) - dpo_risk_grad(t - eps * e, data, beta=2.0))
        / (2 * eps)
        for e in np.eye(3)
    ]
    np.testing.assert_allclose(dpo_risk_hessian(t, data, beta=2.0), fdh, atol=1e-7)


def test_separable_data_raise_with_hint():
    X = np.array([[1.0], [2.0]])
    with pytest.raises(SolverError, match="radius") as ei:
        dpo(X, [1, 1], beta=1.0)
    assert ei.value.status != "optimal"
    res = dpo(X, [1, 1], beta=1.0, radius=3.0)
    assert res.theta[0] == pytest.approx(3.0, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=0.0), "beta"),
        (dict(beta=-1.0), "beta"),
        (dict(beta=1.0, radius=-1.0), "radius"),
        (dict(beta=1.0, theta_ref=[0.0, 1.0, 2.0]), "theta_ref"),
        (dict(beta=1.0, weights=[0.2, 0.2]), "weights"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        dpo(np.array([[1.0, 0.0], [0.0, 1.0]]), [1, 0], **kwargs)
