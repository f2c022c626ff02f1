"""Winsorised DPO (fixed point of its frozen-weight update) and DRO-REBEL (exact, certified):
kernels by hand, independent formulations (brute force over a grid in d = 1, primal suprema),
the fixed-point property by finite differences, non-convexity, torch = numpy."""

import importlib

import numpy as np
import pytest
import torch
from scipy.special import expit

from rdpo_theory import InputError, World
from rdpo_theory import losses as L
from rdpo_theory import objective_kernels as K
from rdpo_theory.exact.certificates import kl_primal_sup
from rdpo_theory.torch import objectives as TO

W = importlib.import_module("rdpo_theory.exact.winsor")
R = importlib.import_module("rdpo_theory.exact.rebel")

SP = lambda m: np.log1p(np.exp(m))  # noqa: E731  softplus by hand


# ---------------------------------------------------------------------------- wDPO kernels
def test_sparsemax_is_the_simplex_projection():
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.normal(0, 2, 9)
        p = K.sparsemax(v)
        assert p.min() >= 0 and p.sum() == pytest.approx(1.0)
        # KKT of min ||p - v||^2 on the simplex: v - p = tau on the support, v <= tau off it
        tau = (v - p)[p > 0]
        assert np.ptp(tau) < 1e-12 and np.all(v[p == 0] <= tau[0] + 1e-12)


def test_flip_probabilities_by_hand():
    z = np.array([-3.0, -1.0, 0.5, 2.0, -0.2, 1.0, 0.0, 3.0, -2.9, 0.1])
    pi = K.flip_probabilities(z, rho_f=0.2, tau_select=1.0)
    # budget 2; scores (3, 1, 0, 0, 0.2, 0, 0, 0, 2.9, 0): sparsemax = (0.55, 0, .., 0.45 at -2.9)
    want = np.zeros(10)
    want[0], want[8] = 1.0, 0.9  # 2 * 0.55 clipped at 1, its excess 0.1 handed to the other
    want[8] = 1.0
    np.testing.assert_allclose(pi, want, atol=1e-12)
    assert K.flip_probabilities(np.abs(z), rho_f=0.2).sum() == 0  # nothing disagrees


def test_winsor_caps_and_budget_by_hand():
    x = np.arange(10.0)
    r, T = K.winsor_caps(x, rho_w=0.1, base_q=0.7)
    assert T == pytest.approx(6.3)  # linear-interpolation quantile, as torch.quantile
    s = np.maximum(x - 6.3, 0)
    want = np.where(x > 6.3, np.clip(1.0 * s / s[x > 6.3].sum(), 0, 1), 0)
    np.testing.assert_allclose(r, want)
    z = np.array([1.0, -1.0, 2.0])
    want_rho = 0.02 + 0.48 * np.mean(expit(-z / np.mean(np.abs(z))))
    assert K.winsor_budget(z, rho_w_max=0.5) == pytest.approx(want_rho)


# ---------------------------------------------------------------------------- wDPO solver
def _batch(seed=2, n=300, d=3):
    world = World.random(n_contexts=6, n_actions=3, dim=d, seed=seed)
    data = world.empirical(n, seed=1)
    return world, W.batch_rows(data, n)


def test_winsor_fixed_point_zeroes_the_frozen_update():
    """At the returned theta the frozen-weight surrogate's gradient (finite differences, the
    weights held at theta) vanishes: the training update of wDPO is at rest."""
    world, b = _batch()
    res = W.winsor_dpo(b, beta=world.beta, theta_ref=world.theta_ref, radius=world.B)
    assert res.status == "local" and res.regime == "local" and res.optimality_gap is None
    assert res.info["fixed_point_residual"] < 1e-7
    assert abs(res.info["inner_optimality_gap"]) < 1e-6
    pi, r = res.info["pi"], res.info["r"]

    def S(t):
        z = L.margins(t, b.X, b.y, beta=world.beta, theta_ref=world.theta_ref)
        return np.mean((1 - r) * ((1 - pi) * SP(-z) + pi * SP(z)))

    h = 1e-6
    g = [(S(res.theta + h * e) - S(res.theta - h * e)) / (2 * h) for e in np.eye(3)]
    # KKT on the ball ||theta|| <= B: g = -mu theta with mu >= 0 (mu = 0 when interior)
    th = res.theta
    mu = -float(np.dot(g, th)) / float(th @ th)
    assert mu >= -1e-7
    if np.linalg.norm(th) < world.B * (1 - 1e-6):
        assert abs(mu) < 1e-6
    np.testing.assert_allclose(np.asarray(g) + mu * th, 0.0, atol=1e-7)
    assert res.value == pytest.approx(W.composite_objective(res.theta, b, beta=world.beta,
                                                            theta_ref=world.theta_ref))  # fmt: skip


def test_winsor_without_flips_or_caps_is_dpo():
    from rdpo_theory.exact import dpo

    world, b = _batch(seed=4, n=200)
    res = W.winsor_dpo(b, beta=world.beta, rho_f=0.0, rho_w_max=0.0, rho_floor=0.0,
                       theta_ref=world.theta_ref, radius=world.B)  # fmt: skip
    ref = dpo(b, beta=world.beta, theta_ref=world.theta_ref, radius=world.B)
    np.testing.assert_allclose(res.theta, ref.theta, atol=1e-8)
    assert res.value == pytest.approx(ref.value, abs=1e-9)


def test_winsor_composite_objective_is_not_convex():
    """Why no certificate: F(theta) = S(theta; theta) has a negative second difference."""
    world, b = _batch(seed=0, n=200, d=1)
    grid = np.linspace(-world.B, world.B, 401)
    v = np.array([W.composite_objective(np.array([t]), b, beta=world.beta) for t in grid])
    assert np.min(v[:-2] + v[2:] - 2 * v[1:-1]) < -1e-6


def test_winsor_bad_inputs():
    world, b = _batch(n=100)
    with pytest.raises(InputError, match="equally weighted"):
        W.winsor_dpo(world.empirical(100, seed=1), beta=1.0)
    with pytest.raises(InputError, match="'rho_f' parameter of winsor_dpo"):
        W.winsor_dpo(b, beta=1.0, rho_f=1.5)


# ---------------------------------------------------------------------------- DRO-REBEL
def _reg(seed=0, n=40, d=1, noise=0.8):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, X @ np.linspace(1, -0.5, d) + rng.normal(0, noise, n)


def _robust(ball, rho, e2, p, shift=0.0):
    if ball == "kl":
        return kl_primal_sup(e2, p, rho, method="root")  # the primal supremum (tilted law)
    if ball == "chi2":
        return L.chi2_objective(e2, rho=rho, weights=p)
    return K.w2_rebel_value(np.sqrt(e2), p, shift, rho)  # residuals enter squared


@pytest.mark.parametrize("ball,rho", [("none", 0.0), ("kl", 0.2), ("kl", 4.0), ("chi2", 0.3),
                                      ("w2", 0.3)])  # fmt: skip
def test_dro_rebel_matches_brute_force_in_1d(ball, rho):
    X, dr = _reg()
    p = np.full(len(dr), 1 / len(dr))
    res = R.dro_rebel(X, dr, eta=0.5, ball=ball, rho=rho, radius=3.0)
    assert res.status == "optimal" and 0 <= res.optimality_gap < 1e-6 * (1 + res.value) + 1e-12

    def f(t):
        e = X[:, 0] * t / 0.5 - dr
        return float(p @ e**2) if ball == "none" else _robust(ball, rho, e**2, p, abs(t) / 0.5)

    grid = np.linspace(-3, 3, 1201)
    assert res.value <= min(f(t) for t in grid) + 1e-9
    assert res.value == pytest.approx(f(res.theta[0]), rel=1e-7)


def test_w2_rebel_worst_case_is_attained_by_the_feature_shift():
    X, dr = _reg(seed=3, n=30, d=3)
    res = R.dro_rebel(X, dr, eta=0.7, ball="w2", rho=0.25, radius=2.0)
    shift = res.info["feature_shift"]
    assert np.sqrt(np.mean(np.sum(shift**2, axis=1))) == pytest.approx(0.25)  # W2 cost
    e = (X + shift) @ res.theta / 0.7 - dr
    assert np.mean(e**2) == pytest.approx(res.value, rel=1e-10)


def test_dro_rebel_is_rebel_when_the_reward_is_realisable():
    """Every ball's worst case of zero residuals is zero: DRO-REBEL = REBEL (docs)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 3))
    t = np.array([0.4, -0.2, 0.1])
    for ball in ("kl", "chi2", "w2"):
        res = R.dro_rebel(X, X @ t / 0.5, eta=0.5, ball=ball, rho=0.3, radius=5.0)
        if ball != "w2":  # W2 still penalises ||theta|| (the features move)
            np.testing.assert_allclose(res.theta, t, atol=1e-5)
            assert res.value < 1e-8


def test_dro_rebel_bad_inputs():
    X, dr = _reg()
    with pytest.raises(InputError, match="ball must be"):
        R.dro_rebel(X, dr, eta=1.0, ball="tv", rho=0.1)
    with pytest.raises(InputError, match="'eta' parameter of dro_rebel"):
        R.dro_rebel(X, dr, eta=0.0)
    with pytest.raises(InputError, match="radius"):
        R.dro_rebel(X, dr, eta=1.0, ball="w2", rho=0.1)


# ---------------------------------------------------------------------------- torch = numpy
def _logps(B=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, generator=g, dtype=torch.float64) for _ in range(4)]


def test_torch_winsor_matches_numpy_and_the_frozen_gradient():
    pc, pr, rc, rr = _logps()
    pc.requires_grad_(True)
    out = TO.winsor_dpo_loss(pc, pr, rc, rr, beta=0.9, rho_f=0.2)
    z = (0.9 * ((pc - rc) - (pr - rr))).detach().numpy()
    pi, r, T, _ = K.winsor_weights(z, rho_f=0.2, rho_w_max=0.5, base_q=0.7)
    assert float(out.loss.detach()) == pytest.approx(np.mean(K.winsor_pair_losses(z, pi, r, T)))
    assert pi.sum() > 0 and (r > 0).any()  # both stages act on this batch
    out.loss.backward()
    # the gradient holds pi, r, T fixed: finite differences of the frozen surrogate
    h, fd = 1e-6, []
    for i in range(len(z)):
        zp, zm = z.copy(), z.copy()
        zp[i] += 0.9 * h
        zm[i] -= 0.9 * h
        fd.append((np.mean(K.winsor_pair_losses(zp, pi, r, T))
                   - np.mean(K.winsor_pair_losses(zm, pi, r, T))) / (2 * h))  # fmt: skip
    np.testing.assert_allclose(pc.grad.numpy(), fd, rtol=1e-6, atol=1e-10)
    warm = TO.winsor_dpo_loss(pc, pr, rc, rr, beta=0.9, warmup=True)
    assert float(warm.stats["flip_mass"]) == 0.0


@pytest.mark.parametrize("ball", ["none", "chi2", "kl"])
def test_torch_rebel_matches_numpy_and_finite_differences(ball):
    pc, pr, rc, rr = _logps(seed=3)
    dr = torch.randn(16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    pc.requires_grad_(True)
    out = TO.rebel_loss(pc, pr, rc, rr, reward_diff=dr, eta=0.8, ball=ball, rho=0.2, tau=0.5)

    def value(a):  # the numpy objective whose gradient the loss follows
        e2 = (((a - rc.numpy()) - (pr - rr).numpy()) / 0.8 - dr.numpy()) ** 2
        if ball == "none":
            return e2.mean()
        if ball == "chi2":
            return L.chi2_objective(e2, rho=0.2)
        return L.kl_tilted_value(e2, tau=0.5)

    a0 = pc.detach().numpy()
    if ball != "kl":
        assert float(out.loss) == pytest.approx(value(a0), rel=1e-12)
    else:
        assert float(out.stats["kl_value"]) == pytest.approx(value(a0), rel=1e-12)
    out.loss.backward()
    h = 1e-6
    fd = [(value(a0 + h * e) - value(a0 - h * e)) / (2 * h) for e in np.eye(16)]
    np.testing.assert_allclose(pc.grad.numpy(), fd, rtol=1e-5, atol=1e-9)


def test_chi2_dual_needs_the_one_plus_two_rho_factor():
    """docs/theory.md#dro-rebel: the chi-square dual with sqrt(1 + 2 rho) equals the primal
    supremum; the authors' sqrt(2 rho) form, searched over the losses as their code does,
    does not (and is unbounded below as eta -> -inf for 2 rho < 1)."""
    rng = np.random.default_rng(5)
    ell, rho = rng.exponential(1.0, 50), 0.2
    p = np.full(50, 1 / 50)
    sup = L.chi2_objective(ell, rho=rho)

    def dual(eta, c):
        return eta + c * np.sqrt(p @ np.maximum(ell - eta, 0) ** 2)

    etas = np.linspace(ell.min() - 5, ell.max(), 20001)
    assert min(dual(e, np.sqrt(1 + 2 * rho)) for e in etas) == pytest.approx(sup, rel=1e-6)
    cand = np.r_[ell.min() - 1, ell, ell.max() + 1]
    code = min(dual(e, np.sqrt(2 * rho)) for e in cand)
    assert abs(code - sup) > 0.05
    assert dual(-1e6, np.sqrt(2 * rho)) < -1e5


def test_rebel_on_the_bradley_terry_reward_of_the_same_data_is_dpo():
    """docs/theory.md#dro-rebel: with the reward model fitted by Bradley-Terry on the same
    pairs and eta = 1 / beta, REBEL's regression is realisable and returns DPO's minimiser
    (no ball active); its KL variant adds nothing."""
    from rdpo_theory.exact import dpo

    world = World.random(n_contexts=5, n_actions=3, dim=2, seed=3)
    data = world.population.data
    bt = dpo(data, beta=1.0).theta  # the reward model r = bt . psi (MLE)
    ref = dpo(data, beta=2.0).theta
    for ball in ("none", "kl"):
        res = R.dro_rebel(data.X, data.X @ bt, eta=0.5, ball=ball, rho=0.1,
                          weights=data.weights)  # fmt: skip
        np.testing.assert_allclose(res.theta, ref, atol=1e-5)
        assert res.value < 1e-9
