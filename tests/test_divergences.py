"""The ambiguity sets of rdpo_theory.divergences: exact suprema against independent
formulations (cvxpy programs, LPs, closed forms), weak duality, the subpopulation radius, the
numpy/torch weight functions, the method registry, and the import layering."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cvxpy as cp
import numpy as np
import pytest

from rdpo_theory import divergences as D
from rdpo_theory import methods as M
from rdpo_theory.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(24)
L = RNG.normal(size=9) ** 2
P = RNG.dirichlet(np.ones(9))


def _cvxpy_sup(l, p, constraint) -> float:
    """``max q . l`` over the simplex with ``constraint(q)``, Clarabel at tight tolerances."""
    q = cp.Variable(l.shape[0], nonneg=True)
    prob = cp.Problem(cp.Maximize(l @ q), [cp.sum(q) == 1, constraint(q)])
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    assert prob.status == cp.OPTIMAL
    return float(prob.value)


INDEPENDENT = {
    "kl": lambda rho: lambda q: cp.sum(cp.rel_entr(q, P)) <= rho,
    "chi2": lambda rho: lambda q: cp.norm(cp.multiply(1 / np.sqrt(P), q - P)) <= np.sqrt(2 * rho),
    "cvar": lambda level: lambda q: q <= P / level,
}


@pytest.mark.parametrize("family", ["kl", "chi2", "cvar"])
@pytest.mark.parametrize("size", [0.05, 0.4, 3.0])
def test_supremum_matches_an_independent_program_and_its_dual_certifies_it(family, size):
    ball = D.get(family)
    rho = min(size, 1.0) if family == "cvar" else size  # a CVaR level lies in (0, 1]
    sup = ball.supremum(L, P, rho=rho)
    ref = _cvxpy_sup(L, P, INDEPENDENT[family](rho))
    assert sup.value == pytest.approx(ref, abs=1e-7)
    q = sup.worst_case
    assert q.sum() == pytest.approx(1.0) and np.all(q >= 0)
    assert q @ L == pytest.approx(sup.value, abs=1e-12)  # the law attains the value
    assert ball.contains(ball.divergence(q, P), rho)  # inside the ball
    # weak duality: the dual at the returned point equals the value, elsewhere it is above
    assert ball.dual_value(L, P, rho=rho, **sup.dual) == pytest.approx(sup.value, abs=1e-10)
    for k, v in sup.dual.items():
        for other in (v * 0.7 + 0.01, v * 1.3 + 0.01):
            assert ball.dual_value(L, P, rho=rho, **{k: other}) >= sup.value - 1e-12


def test_nominal_and_max_loss_regimes():
    for family in ("kl", "chi2", "cvar"):
        ball = D.get(family)
        nominal = ball.supremum(L, P, rho=ball.nominal)
        assert nominal.value == pytest.approx(P @ L, rel=1e-14) and nominal.regime == "nominal"
    assert D.KL().supremum(L, P, rho=50.0).value == L.max()
    assert D.ChiSquare().supremum(L, P, rho=1e6).regime == "max-loss"


@pytest.mark.parametrize("family", ["kl", "chi2", "cvar"])
def test_radius_for_subpopulation_is_the_subpopulations_ball_size(family):
    ball = D.get(family)
    for alpha in (0.1, 0.37, 1.0):
        sub = np.zeros(10)
        sub[:4] = 1.0
        p = np.full(10, 0.1)
        p[:4] = alpha / 4
        p[4:] = (1 - alpha) / 6
        q = np.where(sub > 0, p, 0.0) / alpha  # p restricted to a set of mass alpha
        assert ball.divergence(q, p) == pytest.approx(ball.radius_for_subpopulation(alpha))
    assert D.KL().radius_for_subpopulation(0.25) == pytest.approx(np.log(4))
    assert D.ChiSquare().radius_for_subpopulation(0.25) == pytest.approx(1.5)
    with pytest.raises(InputError, match="alpha"):
        ball.radius_for_subpopulation(0.0)


def test_pair_weights_in_numpy_and_torch_agree():
    torch = pytest.importorskip("torch")
    lt = torch.tensor(L, dtype=torch.float64)
    pt = torch.tensor(P, dtype=torch.float64)
    for ball, param in ((D.KL(), 0.7), (D.ChiSquare(), 0.3), (D.CVaR(), 0.4)):
        for p, ptorch in ((None, None), (P, pt)):
            q = ball.pair_weights(L, param, weights=p)
            qt = ball.torch_pair_weights(lt, param, weights=ptorch)
            np.testing.assert_allclose(qt.numpy(), q, rtol=1e-12, atol=1e-15)
            assert q.sum() == pytest.approx(1.0)
    # KL's scalable weights are the tilt at the fixed multiplier tau
    tilt = P * np.exp(L / 0.7)
    np.testing.assert_allclose(D.KL().pair_weights(L, 0.7, weights=P), tilt / tilt.sum())
    # and the tilt at the optimal multiplier is the worst case at the radius
    sup = D.KL().supremum(L, P, rho=0.2)
    np.testing.assert_allclose(
        D.KL().pair_weights(L, sup.dual["lam"], weights=P), sup.worst_case, rtol=1e-9
    )
    with pytest.raises(InputError, match="moves pairs"):
        D.Wasserstein(2).pair_weights(L, 0.1)


def test_wasserstein_transport_supremum_its_dual_and_map():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(5, 2))
    Xc = np.vstack([X, rng.normal(size=(4, 2))])  # staying put is allowed
    C = np.linalg.norm(X[:, None] - Xc[None], axis=2)
    Lc = rng.normal(size=9)
    w = rng.dirichlet(np.ones(5))
    for order in (1.0, 2.0):
        ball = D.get(f"w{order:g}", cost=C)
        sup = ball.supremum(Lc, w, rho=0.6)
        plan = sup.dual["plan"]
        np.testing.assert_allclose(plan.sum(1), w, atol=1e-9)  # the transport map moves p
        assert float((plan * C**order).sum()) <= 0.6**order + 1e-9  # within the budget
        assert Lc @ sup.worst_case == pytest.approx(sup.value, abs=1e-9)
        assert ball.dual_value(Lc, w, rho=0.6, eta=sup.dual["eta"]) == pytest.approx(
            sup.value, abs=1e-8
        )
        assert ball.divergence(sup.worst_case, w) <= 0.6 + 1e-7  # W_p of the worst case
    with pytest.raises(InputError, match="transport cost"):
        D.Wasserstein().radius_for_subpopulation(0.5)


def test_robust_risk_through_the_sets():
    from rdpo_theory.data import as_data
    from rdpo_theory.exact import robust_risk
    from rdpo_theory.losses import dpo_losses

    rng = np.random.default_rng(7)
    data = as_data(rng.normal(size=(15, 3)), (rng.random(15) < 0.5).astype(float))
    theta = np.array([0.4, -0.2, 0.9])
    l = dpo_losses(theta, data, beta=1.0)
    for method, fam, rho in (("kldpo", "kl", 0.1), ("chi2dpo", "chi2", 0.2), ("cvar", "cvar", 0.5)):
        got = robust_risk(theta, data, method=method, rho=rho, beta=1.0)
        assert got == pytest.approx(D.get(fam).supremum(l, data.weights, rho=rho).value, rel=1e-12)
    with pytest.raises(InputError, match="Wasserstein"):
        robust_risk(theta, data, method="kl", rho=0.1, beta=1.0, kappa=1.0)


def test_ball_dpo_is_chi2dpo_and_cvardpo():
    from rdpo_theory import exact
    from rdpo_theory.worlds import World

    d = World.random(n_contexts=3, n_actions=3, dim=2, seed=1).empirical(n=300, seed=2)
    for fam, fn, kw in (("chi2", exact.chi2dpo, "rho"), ("cvar", exact.cvardpo, "level")):
        a = exact.ball_dpo(d, divergence=fam, rho=0.5, beta=1.0, radius=3.0)
        b = fn(d, **{kw: 0.5}, beta=1.0, radius=3.0)
        assert a.method == b.method and a.status == "optimal"
        np.testing.assert_allclose(a.theta, b.theta, atol=1e-9)
    with pytest.raises(InputError, match="divergence"):
        exact.ball_dpo(d, divergence="kl", rho=0.1, beta=1.0)


# ---------------------------------------------------------------------------- registry
def test_the_registry_holds_the_family_vocabulary_and_every_method_list():
    for m in M.METHODS.values():
        assert m.family in M.FAMILIES, m.id
        if m.ambiguity is not None:
            ball = D.get(m.ambiguity)
            assert ball.family == m.family, m.id
            assert ball.anchor.startswith("docs/theory.md#")
    for name, ids in M.LISTS.items():
        for i in ids:
            assert i in M.METHODS or (i, None) in M.TRAINED or i in D.SETS, (name, i)
    assert M.ambiguity_family("kldpo") == M.ambiguity_family("kldpo-exact") == "kl"
    assert M.ambiguity_family("wdpo", p=2) == "w2" and M.ambiguity("cdpo") is None
    assert M.family("kldpo") == "kl"  # trainer loss names map to their family (colours)
    assert M.loss_variant("kldpo-clipped") == ("kldpo", "clipped")


def test_every_family_has_a_colour():
    pytest.importorskip("matplotlib")
    from rdpo_theory.plots import METHOD_COLORS, method_color

    assert set(M.FAMILIES) <= set(METHOD_COLORS)
    assert method_color("kldpo") == method_color("kldpo-exact")  # loss names share the colour
    assert method_color("wdpo-exact") == method_color("wdpo-alg1")


LAYERS = (
    "audit.py",
    "exact/risk.py",
    "exact/baselines.py",
    "studies/shift.py",
    "studies/audit.py",
    "studies/group_shift.py",
    "torch/baselines.py",
    "torch/losses.py",
    "torch/score.py",
)


def test_no_divergence_if_chain_is_left_outside_the_sets():
    """The layers name a ball only to look it up: no comparison with a divergence id."""
    chain = re.compile(
        r"""(==|!=|\bin\b)\s*\(?\s*["'](kl|chi2|cvar|chi2dpo|cvardpo|cressie-read)["']"""
    )
    for rel in LAYERS:
        text = (ROOT / "rdpo_theory" / rel).read_text()
        assert not chain.search(text), (rel, chain.search(text).group(0))


# ---------------------------------------------------------------------------- layering
def _fresh(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_divergences_loads_neither_torch_nor_cvxpy():
    code = (
        "import sys, numpy as np\nimport rdpo_theory.divergences as D\n"
        "l = np.arange(3.0)\n"
        "D.KL().supremum(l, rho=0.1); D.ChiSquare().supremum(l, rho=0.1)\n"
        "print('torch' in sys.modules, 'cvxpy' in sys.modules)"
    )
    assert _fresh(code) == "False False"


@pytest.mark.slow  # a fresh interpreter that imports torch: ~10 s
def test_the_torch_backend_does_not_load_cvxpy():
    pytest.importorskip("torch")
    code = (
        "import sys\n"
        "import rdpo_theory.torch.losses, rdpo_theory.torch.train, rdpo_theory.torch.score\n"
        "import rdpo_theory.torch.baselines as TB, torch\n"
        "m = [torch.randn(6, dtype=torch.float64) for _ in range(4)]\n"
        "TB.chi2dpo_loss(*m, beta=0.1, rho=0.3); TB.cvardpo_loss(*m, beta=0.1, level=0.5)\n"
        "from rdpo_theory import audit\n"
        "audit.worst_case(m[0].abs().numpy(), divergence='kl', rho=0.2)\n"
        "print('cvxpy' in sys.modules)"
    )
    assert _fresh(code) == "False"


# ---------------------------------------------------------------------------- Cressie-Read
def _cvxpy_cressie_read(l, p, k, rho) -> float:
    """The primal over an independent formulation: ``sum_i p_i f_k(q_i / p_i) <= rho`` written
    as ``sum_i p_i^(1-k) q_i^k <= 1 + k (k - 1) rho`` (since ``sum q = sum p = 1``)."""
    q = cp.Variable(l.shape[0], nonneg=True)
    power = cp.sum(cp.multiply(p ** (1 - k), cp.power(q, k)))
    prob = cp.Problem(cp.Maximize(l @ q), [cp.sum(q) == 1, power <= 1 + k * (k - 1) * rho])
    prob.solve(solver="CLARABEL")  # a power cone, at Clarabel's default tolerances (1e-8)
    assert prob.status == cp.OPTIMAL
    return float(prob.value)


@pytest.mark.parametrize("rho", [1e-6, 0.05, 0.4, 3.0, 1e4])
def test_cressie_read_of_order_2_is_this_projects_chi_square(rho):
    """f_2(t) = (t - 1)^2 / 2: the project's chi-square (with its 1/2) is CR(2), constant 1."""
    cr, chi = D.CressieRead(2).supremum(L, P, rho=rho), D.ChiSquare().supremum(L, P, rho=rho)
    assert cr.value == pytest.approx(chi.value, rel=1e-12, abs=1e-13)
    np.testing.assert_allclose(cr.worst_case, chi.worst_case, atol=1e-10)
    assert cr.regime == chi.regime
    assert D.CressieRead(2).divergence(chi.worst_case, P) == pytest.approx(
        D.ChiSquare().divergence(chi.worst_case, P), rel=1e-12
    )
    assert D.CressieRead(2).radius_for_subpopulation(0.3) == pytest.approx(
        D.ChiSquare().radius_for_subpopulation(0.3), rel=1e-15
    )


@pytest.mark.parametrize("rho", [1e-6, 0.05, 0.4, 3.0])
def test_cressie_read_tends_to_kl_as_k_tends_to_1(rho):
    kl = D.KL().supremum(L, P, rho=rho).value
    assert D.CressieRead(1).supremum(L, P, rho=rho).value == kl  # k = 1 is the KL ball
    gaps = [abs(D.CressieRead(1 + e).supremum(L, P, rho=rho).value - kl) for e in (1e-2, 1e-3)]
    assert gaps[1] < 0.2 * gaps[0] + 1e-12  # O(k - 1) through the power path
    assert gaps[1] <= 1e-3 * max(1.0, kl)
    assert D.CressieRead(1 + 1e-3).radius_for_subpopulation(0.2) == pytest.approx(
        np.log(5), rel=2e-3
    )


@pytest.mark.parametrize("k", [1.5, 3.0])
@pytest.mark.parametrize("rho", [0.05, 0.4, 3.0])
def test_cressie_read_supremum_against_cvxpy_and_its_dual(k, rho):
    ball = D.CressieRead(k)
    sup = ball.supremum(L, P, rho=rho)
    assert sup.value == pytest.approx(_cvxpy_cressie_read(L, P, k, rho), abs=1e-6)
    q = sup.worst_case
    assert q @ L == pytest.approx(sup.value, abs=1e-12)
    assert ball.divergence(q, P) <= rho * (1 + 1e-9)  # feasible, so a lower bound
    eta = sup.dual["eta"]
    assert ball.dual_value(L, P, rho=rho, eta=eta) == pytest.approx(sup.value, abs=1e-10)
    for other in np.linspace(eta - 2, eta + 0.5, 11):  # weak duality: every eta bounds it
        assert ball.dual_value(L, P, rho=rho, eta=other) >= sup.value - 1e-12
    with pytest.raises(InputError, match="k"):
        D.CressieRead(0.5)


def test_cressie_read_reaches_every_layer_through_the_interface():
    from rdpo_theory import audit, exact
    from rdpo_theory.data import as_data
    from rdpo_theory.losses import dpo_losses
    from rdpo_theory.worlds import World

    # the audit and the registry take it by family id (order 2 by default)
    prof = audit.profile(L, weights=P, divergence="cressie-read", rhos=[0.3])
    chi = audit.profile(L, weights=P, divergence="chi2", rhos=[0.3])
    assert prof["worst_loss"].iloc[0] == pytest.approx(chi["worst_loss"].iloc[0], rel=1e-12)
    assert M.ambiguity("crdpo") == D.CressieRead(2)
    # exact.robust_risk and the exact program over the ball
    w = World.random(n_contexts=4, n_actions=3, dim=2, seed=3)
    d = w.empirical(n=400, seed=2)
    kw = dict(rho=0.05, beta=w.beta, radius=w.B)
    a = exact.ball_dpo(d, divergence=D.CressieRead(2), **kw)
    b = exact.chi2dpo(d, **kw)
    assert a.status == "optimal" and a.method == "crdpo" and a.regime == "interior"
    np.testing.assert_allclose(a.theta, b.theta, atol=1e-6)  # the power cone is the SOC
    c = exact.ball_dpo(d, divergence=D.CressieRead(3), **kw)
    assert c.status == "optimal" and c.regime == "interior" and c.optimality_gap <= 1e-6
    assert np.abs(c.theta - a.theta).max() > 1e-3  # a different ball, a different answer
    data = as_data(d)
    got = exact.robust_risk(c.theta, data, method="cressie-read", rho=0.05, beta=w.beta)
    l = dpo_losses(c.theta, data, beta=w.beta)
    assert got == pytest.approx(D.CressieRead(2).supremum(l, data.weights, rho=0.05).value)
    assert c.value == pytest.approx(D.CressieRead(3).supremum(l, data.weights, rho=0.05).value)
    # the scalable weights, numpy and torch
    torch = pytest.importorskip("torch")
    q = D.CressieRead(3).pair_weights(L, 0.4, weights=P)
    qt = D.CressieRead(3).torch_pair_weights(torch.tensor(L), 0.4, weights=torch.tensor(P))
    np.testing.assert_allclose(qt.numpy(), q, rtol=1e-12)
