"""Continuous-feature worlds: quadrature against exact identities and brute-force Monte Carlo
(docs/theory.md#continuous-worlds)."""

import math

import numpy as np
import pytest
from scipy.special import expit, log_expit

from rdpo_theory.continuous import LAWS, ContinuousWorld, de_integral
from rdpo_theory.errors import InputError


def test_de_integral_exact_references():
    assert de_integral(lambda u: np.exp(-u), 0.0, np.inf) == pytest.approx(1.0, abs=1e-14)
    assert de_integral(lambda u: 1 / (1 + u * u), -np.inf, 0.0) == pytest.approx(
        math.pi / 2, abs=1e-13
    )
    assert de_integral(np.cos, 0.0, 1.0) == pytest.approx(math.sin(1.0), abs=1e-15)


@pytest.mark.parametrize("law", LAWS)
def test_moments_and_dpo_optimum_exact(law):
    """g integrates to 1, u has unit variance, and population DPO recovers theta* (exact)."""
    w = ContinuousWorld(law)
    assert w.expect(np.ones_like) == pytest.approx(1.0, abs=1e-13)
    assert w.expect(lambda u: u * u) == pytest.approx(1.0, abs=1e-11)
    assert w.optimum("dpo")["theta"] == pytest.approx(w.theta_star, abs=1e-11)


@pytest.mark.parametrize("law", LAWS)
def test_population_objectives_match_monte_carlo(law):
    w = ContinuousWorld(law)
    data = w.sample(400_000, seed=3)
    u = (2 * data.y - 1) * data.X[:, 0]
    theta, rho, lam = 0.8, 0.05, 2.0

    def close(exact, draws):
        se = draws.std() / math.sqrt(draws.size)
        assert abs(exact - draws.mean()) < 4.5 * se, (exact, draws.mean(), se)

    loss = -log_expit(w.beta * theta * u)
    close(w.risk(theta), loss)
    close(w.w1_value(theta, rho) - rho * w.beta * theta, loss)
    close(w.risk_grad(theta), -w.beta * u * expit(-w.beta * theta * u))
    if law == "gaussian" or law == "laplace":  # the tilt is integrable here (slope 0.4)
        close(math.exp(w.log_tilt(theta, lam)), np.exp(loss / lam))
    else:
        assert w.log_tilt(theta, lam) == math.inf


def test_kl_problem_finite_or_not():
    lap = ContinuousWorld("laplace")
    assert lap.log_tilt(1.0, 0.5) == math.inf  # slope 2 > sqrt 2
    assert math.isfinite(lap.log_tilt(1.0, 1.0))  # slope 1 < sqrt 2
    t3 = ContinuousWorld("t3")
    assert t3.kl_value(0.5, 0.01)[0] == math.inf
    opt = t3.optimum("kldpo", 0.01)
    assert opt["theta"] == 0.0 and not opt["finite"]


@pytest.mark.slow
def test_robust_optima_are_stationary_and_minimal():
    w = ContinuousWorld("gaussian")
    kl = w.optimum("kldpo", 0.02)
    assert abs(w.kl_grad(kl["theta"], 0.02)) < 1e-9
    # the envelope gradient against central differences of the robust value
    h = 1e-5
    fd = (w.kl_value(0.7 + h, 0.02)[0] - w.kl_value(0.7 - h, 0.02)[0]) / (2 * h)
    assert w.kl_grad(0.7, 0.02) == pytest.approx(fd, abs=1e-7)
    for t in (kl["theta"] - 0.01, kl["theta"] + 0.01):
        assert w.kl_value(t, 0.02)[0] > kl["value"]
    wd = w.optimum("wdpo", 0.05)
    assert w.risk_grad(wd["theta"]) + 0.05 * w.beta == pytest.approx(0.0, abs=1e-12)
    assert w.optimum("wdpo", 10.0)["theta"] == 0.0  # collapse


def test_bad_law():
    with pytest.raises(InputError, match="'law' parameter"):
        ContinuousWorld("cauchy")
