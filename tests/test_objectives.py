"""The newer robust objectives (DPO-PRO, chi-PO): closed forms, independent formulations
(brute force over a grid in d = 1), certified gaps, torch = numpy, finite differences."""

import importlib

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from rdpo_theory import InputError, SolverError, World
from rdpo_theory import exact as E
from rdpo_theory import losses as L
from rdpo_theory.data import PreferenceData
from rdpo_theory.torch import objectives as TO

# the modules (``rdpo_theory.exact.chipo`` is also the name of the solver function)
CH = importlib.import_module("rdpo_theory.exact.chipo")
PRO = importlib.import_module("rdpo_theory.exact.dpo_pro")

SP = lambda m: np.log1p(np.exp(m))  # noqa: E731  softplus by hand


# ---------------------------------------------------------------------------- DPO-PRO
def test_dpo_pro_loss_is_the_sup_over_the_label_interval():
    """The closed form equals a brute-force sup over a fine grid of label probabilities."""
    rng = np.random.default_rng(0)
    m, q = rng.normal(0, 2, 50), rng.uniform(0, 1, 50)
    for rho in (0.0, 0.05, 0.5, 4.0):
        got = PRO.dpo_pro_loss(m, q, rho=rho)
        for mi, qi, gi in zip(m, q, got):
            pis = np.linspace(0, 1, 20001)
            ok = (pis - qi) ** 2 <= rho * qi * (1 - qi) + 1e-15
            inside = np.r_[pis[ok], qi]  # grid points of the ball, and its centre
            brute = np.max(inside * SP(-mi) + (1 - inside) * SP(mi))
            assert gi == pytest.approx(brute, abs=2e-4 * (1 + abs(mi)))
            assert gi >= brute - 1e-12
    # hard labels: DPO exactly, whatever rho
    np.testing.assert_allclose(PRO.dpo_pro_loss(m, np.ones(50), rho=3.0), SP(-m), rtol=1e-12)


def test_soft_labels_pool_both_orientations():
    X = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    w = np.array([0.3, 0.1, 0.2, 0.3, 0.1])
    q = PRO.soft_labels(PreferenceData(X, y, w))
    # pair {e1, -e1}: rows 0 and 2 prefer +e1 (weight 0.5), row 1 prefers -e1 (weight 0.1)
    np.testing.assert_allclose(q, [0.5 / 0.6, 0.1 / 0.6, 0.5 / 0.6, 1.0, 1.0])


def _data_1d(seed=3, n=40):
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (n, 1))
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-1.5 * X[:, 0]))).astype(float)
    X = np.vstack([X, X[:10]])  # repeated pairs with both labels, so soft labels vary
    y = np.r_[y, 1 - y[:10]]
    return PreferenceData(X, y, np.full(len(y), 1 / len(y)))


@pytest.mark.parametrize("rho", [0.0, 0.02, 0.2])
def test_dpo_pro_exact_matches_brute_force_in_1d(rho):
    data = _data_1d()
    q = PRO.soft_labels(data)
    res = E.dpo_pro(data, rho=rho, beta=0.7, radius=3.0)
    assert res.status == "optimal"
    assert 0 <= res.optimality_gap <= 1e-6 * (1 + res.value) or abs(res.optimality_gap) < 1e-9

    def f(t):
        m = L.margins(np.array([t]), data.X, data.y, beta=0.7)
        return float(data.weights @ PRO.dpo_pro_loss(m, q, rho=rho))

    grid = np.linspace(-3, 3, 2001)
    t0 = grid[np.argmin([f(t) for t in grid])]
    fine = minimize_scalar(f, bounds=(max(-3, t0 - 0.01), min(3, t0 + 0.01)), method="bounded",
                           options={"xatol": 1e-10})  # fmt: skip
    assert res.value == pytest.approx(min(fine.fun, f(t0)), abs=1e-7)
    assert res.value == pytest.approx(f(res.theta[0]), rel=1e-12)


def test_dpo_pro_reduces_to_dpo_at_rho_zero_and_grows_with_rho():
    world = World.random(n_contexts=6, n_actions=3, dim=3, seed=2)
    data = world.empirical(800, seed=1)
    dpo = E.dpo(data, beta=world.beta, radius=world.B)
    r0 = E.dpo_pro(data, rho=0.0, beta=world.beta, radius=world.B)
    assert r0.value == pytest.approx(dpo.value, abs=1e-7)
    vals = [E.dpo_pro(data, rho=r, beta=world.beta, radius=world.B).value for r in (0.005, 0.05)]
    assert r0.value <= vals[0] + 1e-9 <= vals[1] + 2e-9
    assert vals[1] <= np.log(2) + 1e-7  # theta_ref is feasible and gives log 2


def test_dpo_pro_separable_hard_labels_need_a_radius():
    X, y = np.array([[1.0], [2.0], [0.5]]), np.ones(3)
    with pytest.raises(SolverError, match="without a radius") as err:
        E.dpo_pro(X, y, rho=0.1, beta=1.0)
    assert err.value.status == "unbounded"
    res = E.dpo_pro(X, y, rho=0.1, beta=1.0, radius=2.0)  # hard labels: DPO, theta on the ball
    assert res.theta[0] == pytest.approx(2.0, rel=1e-7)
    assert res.value == pytest.approx(np.mean(SP(-res.theta[0] * X[:, 0])), rel=1e-12)
    assert res.value == pytest.approx(np.mean(SP(-2.0 * X[:, 0])), rel=1e-6)  # certified tol


def test_dpo_pro_bad_inputs():
    data = _data_1d()
    with pytest.raises(InputError, match="'rho' parameter of dpo_pro"):
        E.dpo_pro(data, rho=-1.0, beta=1.0)
    with pytest.raises(InputError, match="q must be"):
        E.dpo_pro(data, rho=0.1, beta=1.0, q=np.full(data.n, 1.5))


# ---------------------------------------------------------------------------- chi-PO
def test_chipo_loss_by_hand():
    lw, ll = np.array([0.2, -1.0]), np.array([-0.5, 0.3])
    raw = 0.5 * ((np.exp(lw) + lw) - (np.exp(ll) + ll))
    np.testing.assert_allclose(CH.chipo_loss(lw, ll, beta=0.5, r_max=10.0), SP(-raw), rtol=1e-12)
    # clipping at 2 r_max flattens the loss
    big = CH.chipo_loss(np.array([5.0]), np.array([-5.0]), beta=1.0, r_max=1.0)
    assert big[0] == pytest.approx(SP(-2.0))


def test_chipo_gradient_matches_finite_differences():
    world = World.random(n_contexts=4, n_actions=3, dim=3, seed=1)
    w = world.population.data.weights
    th = np.array([0.3, -0.2, 0.5])
    _, g = CH._risk_and_grad(world, th, w, 1.5)
    h = 1e-6
    fd = [
        (CH.chipo_risk(world, th + h * e, w, r_max=1.5) - CH.chipo_risk(world, th - h * e, w,
                                                                         r_max=1.5)) / (2 * h)
        for e in np.eye(3)
    ]  # fmt: skip
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-9)


def test_chipo_local_solver_finds_the_grid_minimum_in_1d_and_is_labelled_local():
    world = World.random(n_contexts=4, n_actions=3, dim=1, seed=0)
    w = world.population.data.weights
    for r_max in (0.3, 1.0):
        res = E.chipo(world, r_max=r_max, starts=6, seed=0)
        assert res.status == "local" and res.optimality_gap is None
        grid = np.linspace(-world.B, world.B, 4001)
        vals = np.array([CH.chipo_risk(world, np.array([t]), w, r_max=r_max) for t in grid])
        assert res.value <= vals.min() + 1e-7
        assert res.value == pytest.approx(CH.chipo_risk(world, res.theta, w, r_max=r_max))


def test_chipo_objective_is_not_convex():
    """A midpoint-convexity violation on a 1-d world: why the solver is labelled local."""
    world = World.random(n_contexts=4, n_actions=3, dim=1, seed=0)
    w = world.population.data.weights
    grid = np.linspace(-world.B, world.B, 801)
    v = np.array([CH.chipo_risk(world, np.array([t]), w, r_max=5.0) for t in grid])
    assert np.min(v[:-2] + v[2:] - 2 * v[1:-1]) < -1e-9


# ---------------------------------------------------------------------------- torch = numpy
def _logps(B=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, generator=g, dtype=torch.float64) * 0.7 for _ in range(4)]


def test_torch_dpo_pro_matches_numpy_and_finite_differences():
    pc, pr, rc, rr = _logps()
    q = torch.rand(12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = TO.dpo_pro_loss(pc, pr, rc, rr, beta=0.8, rho=0.3, q=q)
    m = (0.8 * ((pc - rc) - (pr - rr))).numpy()
    ref = PRO.dpo_pro_loss(m, q.numpy(), rho=0.3).mean()
    assert float(out.loss) == pytest.approx(ref, rel=1e-12)
    pc.requires_grad_(True)
    torch.autograd.gradcheck(
        lambda a: TO.dpo_pro_loss(a, pr, rc, rr, beta=0.8, rho=0.3, q=q).loss, (pc,)
    )
    hard = TO.dpo_pro_loss(pc, pr, rc, rr, beta=0.8, rho=0.3)
    dpo = torch.nn.functional.softplus(-torch.tensor(m)).mean()
    assert float(hard.loss.detach()) == pytest.approx(float(dpo))


def test_torch_chipo_matches_numpy_and_finite_differences():
    pc, pr, rc, rr = _logps(seed=2)
    for r_max in (0.4, 50.0):
        out = TO.chipo_loss(pc, pr, rc, rr, beta=0.5, r_max=r_max)
        ref = CH.chipo_loss((pc - rc).numpy(), (pr - rr).numpy(), beta=0.5, r_max=r_max).mean()
        assert float(out.loss) == pytest.approx(ref, rel=1e-12)
    pr.requires_grad_(True)
    torch.autograd.gradcheck(
        lambda a: TO.chipo_loss(pc, a, rc, rr, beta=0.5, r_max=50.0).loss, (pr,)
    )
    with pytest.raises(InputError, match="'r_max' parameter of chipo_loss"):
        TO.chipo_loss(pc, pr, rc, rr, beta=0.5, r_max=0.0)


@pytest.mark.slow  # a fresh interpreter importing torch: seconds
def test_torch_objectives_import_no_cvxpy():
    import subprocess
    import sys

    code = "import sys, rdpo_theory.torch.objectives; print('cvxpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_dpo_pro_retries_clarabel_on_a_full_frontier_world():
    """Regression: seed 6 of ``rdpo frontier --full`` ended 'optimal_inaccurate' at rho = 0.001
    before the solver retried Clarabel with its fallback settings."""
    from rdpo_theory.rng import stream_seed
    from rdpo_theory.studies import frontier as F

    cfg = F.FrontierConfig.full(methods={"dpo-pro": [0.001]}, alphas=(0.0,))
    (row,) = F.run_task({"seed": 6}, stream_seed(cfg.base_seed, 7, 6), cfg)
    assert row["status"] == "optimal" and 0 <= row["optimality_gap"] < 1e-6
