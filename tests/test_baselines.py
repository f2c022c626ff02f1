"""Baseline losses (cDPO, rDPO, IPO, Dr. DPO, group-robust, chi-square, CVaR): hand-computed
values, numpy/torch/cvxpy agreement, exact programs against independent formulations."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import expit

from rdpo_theory import InputError, SolverError, World
from rdpo_theory import exact as E
from rdpo_theory import losses as L
from rdpo_theory.torch import baselines as TB
from rdpo_theory.torch import losses as TL

SP = lambda m: np.log1p(np.exp(m))  # noqa: E731  softplus by hand


# ---------------------------------------------------------------------------- hand values
def test_per_pair_losses_by_hand():
    assert L.cdpo_loss(0.0, eps=0.3) == pytest.approx(np.log(2))
    assert L.cdpo_loss(1.0, eps=0.1) == pytest.approx(0.9 * SP(-1) + 0.1 * SP(1))
    assert L.rdpo_loss(1.0, eps=0.2) == pytest.approx((0.8 * SP(-1) - 0.2 * SP(1)) / 0.6)
    assert L.rdpo_loss(-2.0, eps=0.0) == pytest.approx(SP(2))
    assert L.ipo_loss(0.3, beta=0.5) == pytest.approx((0.6 - 1.0) ** 2)
    # rDPO is unbiased: averaging over a label flip with probability eps gives the DPO loss
    m = np.linspace(-3, 3, 7)
    for eps in (0.1, 0.3, 0.45):
        avg = (1 - eps) * L.rdpo_loss(m, eps=eps) + eps * L.rdpo_loss(-m, eps=eps)
        np.testing.assert_allclose(avg, SP(-m), rtol=1e-12)
    # gradients against central differences
    h = 1e-6
    for f, g, kw in [
        (L.cdpo_loss, L.cdpo_loss_grad, {"eps": 0.2}),
        (L.rdpo_loss, L.rdpo_loss_grad, {"eps": 0.2}),
        (L.ipo_loss, L.ipo_loss_grad, {"beta": 0.7}),
    ]:
        fd = (f(m + h, **kw) - f(m - h, **kw)) / (2 * h)
        np.testing.assert_allclose(g(m, **kw), fd, rtol=1e-6, atol=1e-8)


def test_aggregate_objectives_by_hand():
    l = np.array([1.0, 2.0, 3.0, 4.0])
    assert L.drdpo_objective([1.0, 2.0], beta_prime=1.0) == pytest.approx(
        -np.log(0.5 * np.exp(-1) + 0.5 * np.exp(-2))
    )
    assert L.drdpo_objective(l, beta_prime=1e6) == pytest.approx(2.5, abs=1e-5)
    np.testing.assert_allclose(
        L.drdpo_weights([1.0, 2.0], beta_prime=1.0), [1 / (1 + np.exp(-1)), expit(-1)]
    )
    assert L.group_robust_objective(l, ["a", "a", "b", "b"]) == pytest.approx(3.5)
    w = np.array([0.1, 0.4, 0.25, 0.25])  # group a mean = (0.1 + 0.8) / 0.5
    assert L.group_robust_objective(l, [0, 0, 1, 1], weights=w) == pytest.approx(3.5)
    np.testing.assert_allclose(L.group_robust_weights(l, [1, 0, 1, 0]), [0, 0.5, 0, 0.5])
    assert L.cvar_objective(l, level=0.5) == pytest.approx(3.5)
    assert L.cvar_objective(l, level=0.3) == pytest.approx((4 * 0.25 + 3 * 0.05) / 0.3)
    assert L.cvar_objective(l, level=1.0) == pytest.approx(2.5)
    # chi-square: small rho keeps every q_i > 0, closed form E l + sqrt(2 rho Var l)
    for rho in (0.01, 0.1):
        assert L.chi2_objective(l, rho=rho) == pytest.approx(2.5 + np.sqrt(2 * rho * 1.25))
        q = L.chi2_weights(l, rho=rho)
        assert L.chi2_divergence(q, np.full(4, 0.25)) == pytest.approx(rho)
    # large rho: point mass on the argmax (D = (1/P_max - 1) / 2 = 1.5 <= rho)
    np.testing.assert_allclose(L.chi2_weights(l, rho=1.5), [0, 0, 0, 1])
    assert L.chi2_objective(l, rho=0.0) == pytest.approx(2.5)


def test_chi2_and_cvar_against_cvxpy_primal():
    import cvxpy as cp

    rng = np.random.default_rng(3)
    l = rng.exponential(size=9)
    p = rng.dirichlet(np.ones(9))
    for rho in (0.02, 0.3, 1.0, 5.0):
        q = cp.Variable(9, nonneg=True)
        div = 0.5 * cp.sum(cp.multiply(1 / p, cp.square(q - p)))
        prob = cp.Problem(cp.Maximize(q @ l), [cp.sum(q) == 1, div <= rho])
        prob.solve(solver="CLARABEL")
        assert L.chi2_objective(l, rho=rho, weights=p) == pytest.approx(prob.value, abs=1e-7)
    for level in (0.05, 0.37, 1.0):
        q = cp.Variable(9, nonneg=True)
        prob = cp.Problem(cp.Maximize(q @ l), [cp.sum(q) == 1, q <= p / level])
        prob.solve(solver="CLARABEL")
        assert L.cvar_objective(l, level=level, weights=p) == pytest.approx(prob.value, abs=1e-7)


# ---------------------------------------------------------------------------- numpy vs torch
def _logps(m, beta):
    """Four log-prob tensors whose margin is m: pc = m/beta, others 0."""
    t = torch.tensor(m / beta, dtype=torch.float64, requires_grad=True)
    z = torch.zeros_like(t)
    return t, (t, z, z, z)


def test_torch_matches_numpy():
    rng = np.random.default_rng(0)
    m = rng.normal(scale=2.0, size=12)
    beta = 0.7
    tm = torch.tensor(m, dtype=torch.float64)
    for tf, nf, kw in [
        (TB.cdpo_pair_losses, L.cdpo_loss, {"eps": 0.15}),
        (TB.rdpo_pair_losses, L.rdpo_loss, {"eps": 0.15}),
        (TB.ipo_pair_losses, L.ipo_loss, {"beta": beta}),
    ]:
        np.testing.assert_allclose(tf(tm, **kw).numpy(), nf(m, **kw), rtol=1e-13)
    l = L.dpo_loss(m)
    tl = TL.dpo_pair_losses(tm)
    assert float(TB.drdpo_objective(tl, beta_prime=0.5)) == pytest.approx(
        L.drdpo_objective(l, beta_prime=0.5), rel=1e-13
    )
    groups = np.arange(12) % 3
    assert float(TB.group_robust_objective(tl, groups)) == pytest.approx(
        L.group_robust_objective(l, groups), rel=1e-13
    )
    _, Lg = L.group_losses(l, groups)
    a = np.array([0.2, 0.3, 0.5])
    assert float(TB.group_robust_objective(tl, torch.tensor(groups), group_weights=a)) == (
        pytest.approx(a @ Lg, rel=1e-13)
    )
    assert float(TB.chi2_objective(tl, rho=0.2)[0]) == pytest.approx(L.chi2_objective(l, rho=0.2))
    assert float(TB.cvar_objective(tl, level=0.3)[0]) == pytest.approx(
        L.cvar_objective(l, level=0.3)
    )
    # the four-log-prob entry points: loss values and gradients
    for fn, kw, ref in [
        (TB.cdpo_loss, {"eps": 0.1}, lambda: L.cdpo_loss(m, eps=0.1).mean()),
        (TB.rdpo_loss, {"eps": 0.1}, lambda: L.rdpo_loss(m, eps=0.1).mean()),
        (TB.ipo_loss, {}, lambda: L.ipo_loss(m, beta=beta).mean()),
        (TB.drdpo_loss, {"beta_prime": 2.0}, lambda: L.drdpo_objective(l, beta_prime=2.0)),
        (TB.group_dpo_loss, {"groups": groups}, lambda: L.group_robust_objective(l, groups)),
        (TB.chi2dpo_loss, {"rho": 0.1}, lambda: L.chi2_objective(l, rho=0.1)),
        (TB.cvardpo_loss, {"level": 0.25}, lambda: L.cvar_objective(l, level=0.25)),
    ]:
        t, logps = _logps(m, beta)
        out = fn(*logps, beta=beta, **kw)
        assert float(out.loss.detach()) == pytest.approx(ref(), rel=1e-12), fn.__name__
        out.loss.backward()
        # d loss / d pc_i = beta * d loss / d m_i, checked by central differences in m
        h = 1e-6
        fd = np.empty_like(m)
        for i in range(m.size):
            e = np.zeros_like(m)
            e[i] = h
            lp = _np_value(fn, m + e, beta, kw)
            lm = _np_value(fn, m - e, beta, kw)
            fd[i] = (lp - lm) / (2 * h) * beta
        np.testing.assert_allclose(t.grad.numpy(), fd, rtol=1e-5, atol=1e-7, err_msg=fn.__name__)


def _np_value(fn, m, beta, kw):
    l = L.dpo_loss(m)
    return {
        "cdpo_loss": lambda: L.cdpo_loss(m, eps=kw.get("eps", 0)).mean(),
        "rdpo_loss": lambda: L.rdpo_loss(m, eps=kw.get("eps", 0)).mean(),
        "ipo_loss": lambda: L.ipo_loss(m, beta=beta).mean(),
        "drdpo_loss": lambda: L.drdpo_objective(l, beta_prime=kw.get("beta_prime", 1)),
        "group_dpo_loss": lambda: L.group_robust_objective(l, kw.get("groups")),
        "chi2dpo_loss": lambda: L.chi2_objective(l, rho=kw.get("rho", 0)),
        "cvardpo_loss": lambda: L.cvar_objective(l, level=kw.get("level", 1)),
    }[fn.__name__]()


def test_group_weight_update():
    a = TB.update_group_weights([0.5, 0.5], [1.0, 2.0], step=1.0)
    np.testing.assert_allclose(a.numpy(), [expit(-1), expit(1)], rtol=1e-12)


# ---------------------------------------------------------------------------- exact programs
@pytest.fixture(scope="module")
def sample():
    w = World.random(6, 4, 3, seed=5, theta_norm=2.0)
    return w, w.empirical(400, seed=2)


def _scipy_min(f, d):
    r = minimize(f, np.zeros(d), method="BFGS", options={"gtol": 1e-11})
    return r.x, r.fun


def test_exact_cdpo_rdpo_ipo_match_scipy(sample):
    w, d = sample
    beta = w.beta

    def risk(loss, **kw):
        return lambda th: float(d.weights @ loss(L.margins(th, d.X, d.y, beta=beta), **kw))

    for solve, loss, kw in [
        (E.cdpo, L.cdpo_loss, {"eps": 0.1}),
        (E.rdpo, L.rdpo_loss, {"eps": 0.05}),
        (E.ipo, L.ipo_loss, {"beta": beta}),
    ]:
        skw = {k: v for k, v in kw.items() if k != "beta"}
        res = solve(d, beta=beta, **skw)
        th, val = _scipy_min(risk(loss, **kw), d.d)
        assert res.value == pytest.approx(val, abs=1e-8), res.method
        assert res.info["solver_value"] == pytest.approx(res.value, abs=1e-7)  # cvxpy objective
        np.testing.assert_allclose(res.theta, th, atol=2e-4, err_msg=res.method)
    # IPO is weighted least squares: closed form
    sx = d.signed_labels[:, None] * d.X
    sw = np.sqrt(d.weights)
    th_ls = np.linalg.lstsq(sx * sw[:, None], sw * 0.5 / beta, rcond=None)[0]
    np.testing.assert_allclose(E.ipo(d, beta=beta).theta, th_ls, atol=1e-6)


def test_exact_rdpo_unbounded_needs_radius(sample):
    w, d = sample
    with pytest.raises(SolverError, match="unbounded"):
        E.rdpo(d, eps=0.45, beta=w.beta)
    res = E.rdpo(d, eps=0.45, beta=w.beta, radius=3.0)
    assert np.linalg.norm(res.theta) == pytest.approx(3.0, rel=1e-6)


def test_exact_group_dpo_saddle_point(sample):
    w, _ = sample
    pop = w.population
    res = E.group_dpo(pop.data, groups=pop.s, beta=w.beta)
    alpha = res.info["group_weights"]
    assert alpha.sum() == pytest.approx(1.0)
    assert abs(res.gap) < 1e-6  # value = sum_g alpha_g L_g (complementary slackness)
    # stationarity of the alpha-weighted Lagrangian: sum_i q_i grad l_i = 0
    d = pop.data
    m = L.margins(res.theta, d.X, d.y, beta=w.beta)
    grad = d.X.T @ (res.worst_case * L.dpo_loss_grad(m) * d.signed_labels * w.beta)
    assert np.linalg.norm(grad) < 1e-5
    # the minimax value is below every group's loss at any other theta's worst group
    for th in (np.zeros(d.d), w.theta_star, res.theta + 0.05):
        per = L.dpo_loss(L.margins(th, d.X, d.y, beta=w.beta))
        assert L.group_robust_objective(per, pop.s, weights=d.weights) >= res.value - 1e-8


@pytest.mark.parametrize("kind", ["chi2", "cvar"])
def test_exact_chi2_cvar_certificates(sample, kind):
    w, d = sample
    for par in (0.005, 0.02) if kind == "chi2" else (0.9, 0.7):
        if kind == "chi2":
            res = E.chi2dpo(d, rho=par, beta=w.beta)
            obj = lambda th, par=par: L.chi2_objective(  # noqa: E731
                L.dpo_loss(L.margins(th, d.X, d.y, beta=w.beta)), rho=par, weights=d.weights
            )
        else:
            res = E.cvardpo(d, level=par, beta=w.beta)
            obj = lambda th, par=par: L.cvar_objective(  # noqa: E731
                L.dpo_loss(L.margins(th, d.X, d.y, beta=w.beta)), level=par, weights=d.weights
            )
        assert abs(res.gap) < 1e-6
        assert res.value == pytest.approx(obj(res.theta), abs=1e-12)
        # Danskin stationarity at the worst case and no better point nearby
        m = L.margins(res.theta, d.X, d.y, beta=w.beta)
        G = d.X * (L.dpo_loss_grad(m) * d.signed_labels * w.beta)[:, None]  # grad l_i, (n, d)
        if kind == "chi2":  # unique worst case
            assert np.linalg.norm(G.T @ res.worst_case) < 1e-4
        else:  # the worst case is unique except on losses at the VaR: minimise over that face
            import cvxpy as cp

            per = L.dpo_loss(m)
            at = np.abs(per - res.dual) < 1e-5
            q = cp.Variable(d.n, nonneg=True)
            cons = [cp.sum(q) == 1, q <= d.weights / par, q[per < res.dual - 1e-5] == 0]
            cons.append(q[per > res.dual + 1e-5] == d.weights[per > res.dual + 1e-5] / par)
            prob = cp.Problem(cp.Minimize(cp.norm(G.T @ q)), cons)
            prob.solve(solver="CLARABEL")
            assert at.any() and prob.value < 1e-4
        rng = np.random.default_rng(0)
        for _ in range(20):
            assert obj(res.theta + 1e-3 * rng.normal(size=d.d)) >= res.value - 1e-9
        assert res.value >= E.dpo(d, beta=w.beta).value - 1e-9  # robust >= nominal


def test_chi2_collapse_is_certified():
    w = World.random(8, 4, 3, seed=0)  # weak signal: theta_ref is chi2-optimal at rho = 0.5
    d = w.empirical(500, seed=1)
    size = E.baselines.collapse_certificate(d, kind="chi2", param=0.5, beta=1.0)
    assert size < 0.5
    res = E.chi2dpo(d, rho=0.5, beta=1.0)
    np.testing.assert_allclose(res.theta, 0.0, atol=1e-7)
    assert res.value == pytest.approx(np.log(2), abs=1e-7)


# ---------------------------------------------------------------------------- bad arguments
def test_bad_arguments():
    with pytest.raises(InputError, match="eps"):
        L.rdpo_loss(1.0, eps=0.5)
    with pytest.raises(InputError, match="eps"):
        E.rdpo(np.eye(2), [1, 0], eps=0.7, beta=1.0)
    with pytest.raises(InputError, match="eps"):
        L.cdpo_loss(1.0, eps=0.6)
    with pytest.raises(InputError, match="eps"):
        TB.rdpo_pair_losses(torch.zeros(3), eps=-0.1)
    with pytest.raises(InputError, match="level"):
        L.cvar_weights([1.0, 2.0], level=1.5)
    with pytest.raises(InputError, match="level"):
        E.cvardpo(np.eye(2), [1, 0], level=0.0, beta=1.0)
    with pytest.raises(InputError, match="rho"):
        L.chi2_weights([1.0, 2.0], rho=-1)
    with pytest.raises(InputError, match="losses"):
        L.cvar_objective([], level=0.5)
    with pytest.raises(InputError, match="groups"):
        L.group_losses([1.0, 2.0], [0])
    with pytest.raises(InputError, match="groups"):
        E.group_dpo(np.eye(2), [1, 0], beta=1.0)
    with pytest.raises(InputError, match="beta_prime"):
        L.drdpo_objective([1.0], beta_prime=0)
    with pytest.raises(InputError, match="group_weights"):
        TB.group_robust_objective(torch.ones(4), [0, 0, 1, 1], group_weights=[1.0])


# ---------------------------------------------------------------------------- approximate
def test_reweighting_reaches_exact_chi2_and_drdpo_limits(sample):
    from rdpo_theory import approx_reweight as AR

    w, d = sample
    ex = E.chi2dpo(d, rho=0.02, beta=w.beta)
    ap = AR.chi2dpo(d, rho=0.02, beta=w.beta, max_steps=3000, lr=0.05, gtol=1e-8)
    np.testing.assert_allclose(ap.theta, ex.theta, atol=1e-4)
    # Dr. DPO with a huge beta' is DPO (soft-min -> mean)
    dr = AR.drdpo(d, beta_prime=1e5, beta=w.beta, max_steps=3000, lr=0.05, gtol=1e-8)
    np.testing.assert_allclose(dr.theta, E.dpo(d, beta=w.beta).theta, atol=1e-3)
    cv = AR.cvardpo(d, level=0.95, beta=w.beta, max_steps=1500, lr=0.02)
    exc = E.cvardpo(d, level=0.95, beta=w.beta)
    per = L.dpo_loss(L.margins(cv.theta, d.X, d.y, beta=w.beta))
    assert L.cvar_objective(per, level=0.95, weights=d.weights) == pytest.approx(
        exc.value, abs=2e-3
    )
