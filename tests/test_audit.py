"""rdpo_theory.audit: exact robustness profiles against the exact solvers, independent conic
and LP formulations of the inner suprema, closed forms and constructed subpopulations."""

import cvxpy as cp
import numpy as np
import pytest
from scipy.optimize import brentq, linprog

from rdpo_theory import InputError, World
from rdpo_theory import audit as A
from rdpo_theory import exact as E
from rdpo_theory import losses as L
from rdpo_theory.exact.certificates import kl_primal_sup


@pytest.fixture(scope="module")
def sample():
    w = World.random(6, 3, 3, seed=1, theta_norm=3.0)
    return w, w.sample(300, seed=11)


def _chi2_primal(l, p, rho):
    """Independent formulation: the second-order cone program over q (Clarabel)."""
    r = cp.Variable(l.shape[0], nonneg=True)  # the likelihood ratio q / p
    prob = cp.Problem(
        cp.Maximize((p * l) @ r),
        [p @ r == 1, cp.norm(cp.multiply(np.sqrt(p), r - 1)) <= np.sqrt(2 * rho)],
    )
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert prob.status == cp.OPTIMAL
    return float(prob.value)


def _cvar_primal(l, p, alpha):
    """Independent formulation: the LP max q.l, sum q = 1, 0 <= q <= p / alpha (HiGHS)."""
    res = linprog(
        -l,
        A_eq=np.ones((1, l.shape[0])),
        b_eq=[1.0],
        bounds=list(zip(np.zeros_like(p), p / alpha)),
        method="highs",
    )
    assert res.status == 0
    return float(-res.fun)


# ---------------------------------------------------------------------------- exact solvers
@pytest.mark.parametrize("divergence", ["kl", "chi2", "cvar"])
def test_audit_equals_exact_solver_value(sample, divergence):
    """At an exact solution's theta the audit of its per-pair losses is the solver's robust
    value (1e-8), and an independent primal formulation agrees."""
    w, d = sample
    for r in {"kl": (0.02, 0.1, 1.0), "chi2": (0.01, 0.05), "cvar": (0.9, 0.6)}[divergence]:
        if divergence == "kl":
            res = E.kldpo(d, rho=r, beta=w.beta)
        elif divergence == "chi2":
            res = E.chi2dpo(d, rho=r, beta=w.beta)
        else:
            res = E.cvardpo(d, level=r, beta=w.beta)
        l = L.dpo_losses(res.theta, d, beta=w.beta)
        prof = A.profile(l, weights=d.weights, divergence=divergence, rhos=[r])
        assert prof["worst_loss"].iloc[0] == pytest.approx(res.value, abs=1e-8)
        assert prof["nominal_loss"].iloc[0] == pytest.approx(d.weights @ l, abs=1e-14)
        if divergence == "kl":
            indep = kl_primal_sup(l, d.weights, r, method="cvxpy")
            if res.regime == "interior":
                assert prof["ball_size"].iloc[0] == pytest.approx(r, rel=1e-9)
            else:  # rho = 1 collapses to theta_ref, where every loss is log 2
                assert r == 1.0 and res.regime in ("collapse", "max-loss limit")
        elif divergence == "chi2":
            indep = _chi2_primal(l, d.weights, r)
        else:
            indep = _cvar_primal(l, d.weights, r)
        assert prof["worst_loss"].iloc[0] == pytest.approx(indep, abs=1e-7)
        # the robust optimum is no worse than DPO's theta under the same audit
        dpo_theta = E.dpo(d, beta=w.beta).theta
        l_dpo = L.dpo_losses(dpo_theta, d, beta=w.beta)
        other = A.profile(l_dpo, weights=d.weights, divergence=divergence, rhos=[r])
        assert other["worst_loss"].iloc[0] >= res.value - 1e-8


def test_profile_columns_and_monotonicity():
    rng = np.random.default_rng(0)
    l = rng.gamma(2.0, 0.4, size=200)
    p = rng.dirichlet(np.ones(200))
    for div, radii in [
        ("kl", [0, 0.01, 0.1, 1.0, 20.0]),
        ("chi2", [0, 0.01, 0.5, 10.0, 1e4]),
        ("cvar", [1.0, 0.5, 0.1, 0.01, 1e-4]),
    ]:
        prof = A.profile(l, weights=p, divergence=div, rhos=radii)
        assert list(prof.columns) == [
            "divergence",
            "radius",
            "nominal_loss",
            "worst_loss",
            "ess",
            "ess_fraction",
            "max_weight",
            "max_ratio",
            "ball_size",
        ]
        wl = prof["worst_loss"].to_numpy()
        assert wl[0] == pytest.approx(p @ l, abs=1e-12)  # radius 0 / level 1 is the mean
        assert np.all(np.diff(wl) >= -1e-12) and wl[-1] == pytest.approx(l.max(), rel=1e-9)
        assert prof["ess"].iloc[0] == pytest.approx(1 / np.sum(p**2))
        assert np.all(np.diff(prof["ess"]) <= 1e-9)
        # the ball is used up exactly unless the worst case already sits on the argmax
        inner = prof[prof["worst_loss"] < l.max() - 1e-9]
        if div != "cvar":
            np.testing.assert_allclose(inner["ball_size"], inner["radius"], rtol=1e-8, atol=1e-14)


def test_kl_worst_case_is_the_tilt_and_beats_random_points():
    rng = np.random.default_rng(1)
    l, p, rho = rng.normal(size=50), rng.dirichlet(np.ones(50)), 0.3
    q = A.worst_case(l, weights=p, divergence="kl", rho=rho)
    assert L.kl_divergence(q, p) == pytest.approx(rho, rel=1e-9)
    lam = 1 / np.polyfit(l, np.log(q / p), 1)[0]  # log q/p is affine in l with slope 1/lam
    np.testing.assert_allclose(np.log(q / p) - l / lam, np.mean(np.log(q / p) - l / lam), atol=1e-9)
    for _ in range(200):  # feasible random laws never beat it
        z = rng.dirichlet(np.ones(50)) * 0.3 + 0.7 * p
        if L.kl_divergence(z, p) <= rho:
            assert z @ l <= q @ l + 1e-12


@pytest.mark.parametrize("rho", [1e-18, 1e-14])
def test_kl_worst_case_at_a_tiny_radius_matches_decimal_precision(rho):
    """Under the root's float64 resolution the worst case is the centred feasible point: its
    KL (60-digit decimal) is within the radius and its value within 2 rho of the supremum."""
    from decimal import Decimal, localcontext

    from independent import kl_sup_decimal

    rng = np.random.default_rng(2)
    l, p = rng.exponential(size=40), rng.dirichlet(np.ones(40))
    q = A.worst_case(l, weights=p, divergence="kl", rho=rho)
    ref, _ = kl_sup_decimal(l, p, rho)
    assert ref - 2 * rho - 1e-15 <= q @ l <= ref + 1e-15
    with localcontext() as ctx:
        ctx.prec = 60
        Q, P = [Decimal(v) for v in q], [Decimal(v) for v in p]
        zq, zp = sum(Q), sum(P)  # each float64 array sums to 1 up to rounding only
        kl = sum((a / zq) * ((a / zq) / (b / zp)).ln() for a, b in zip(Q, P))
    assert float(kl) <= rho * (1 + 1e-6)


def test_worst_case_error_closed_forms():
    rng = np.random.default_rng(2)
    m = rng.normal(0.5, 1.0, size=400)
    P = np.mean(m < 0)
    for rho in (0.01, 0.1, 0.5):
        assert A.worst_case_error(m, divergence="chi2", rho=rho) == pytest.approx(
            min(1, P + np.sqrt(2 * rho * P * (1 - P))), abs=1e-12
        )

        def bkl(s, rho=rho):
            return s * np.log(s / P) + (1 - s) * np.log((1 - s) / (1 - P)) - rho

        assert A.worst_case_error(m, divergence="kl", rho=rho) == pytest.approx(
            brentq(bkl, P, 1 - 1e-15, xtol=1e-15), abs=1e-9
        )
    assert A.worst_case_error(m, divergence="kl", rho=np.log(1 / P) + 1e-9) == 1.0
    for a in (1.0, 0.5, P, 0.1):
        assert A.worst_case_error(m, divergence="cvar", rho=a) == pytest.approx(min(1, P / a))
    assert A.worst_case_error(np.abs(m) + 0.1, divergence="kl", rho=5.0) == 0.0


def test_top_pairs_and_group_profile():
    l = np.array([0.1, 2.0, 0.5, 3.0, 1.0])
    top = A.top_pairs(l, divergence="kl", rho=0.2, k=2)
    assert top["index"].tolist() == [3, 1] and np.all(top["ratio"] > 1)
    cv = A.top_pairs(l, divergence="cvar", rho=0.4, k=3)  # two pairs at ratio 1 / 0.4
    assert cv["index"].tolist()[:2] == [3, 1]
    np.testing.assert_allclose(cv["ratio"].iloc[:2], 2.5)
    g = A.group_profile(l, ["a", "b", "a", "b", "c"], weights=[0.1, 0.2, 0.3, 0.2, 0.2])
    assert g["group"].tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(g["loss"], [(0.01 + 0.15) / 0.4, 2.5, 1.0])
    np.testing.assert_allclose(g["share"], [0.4, 0.4, 0.2])
    assert g["worst"].tolist() == [False, True, False]
    with pytest.raises(InputError, match="k"):
        A.top_pairs(l, divergence="kl", rho=0.1, k=0)


@pytest.mark.parametrize("divergence", ["kl", "chi2", "cvar"])
def test_radius_for_subpopulation_constructs_the_subpopulation(divergence):
    rng = np.random.default_rng(3)
    n = 300
    p = rng.dirichlet(np.ones(n))
    l = rng.gamma(2.0, 0.5, size=n)
    for target in (0.05, 0.2, 0.5, 0.9):
        order = rng.permutation(n)
        cum = np.cumsum(p[order])
        j = min(int(np.searchsorted(cum, target)), n - 1)
        # p conditioned on a set S of whole atoms: divergence exactly the radius of alpha = p(S)
        S = order[: j + 1]
        alpha = float(p[S].sum())
        q = np.zeros(n)
        q[S] = p[S] / alpha
        r = A.radius_for_subpopulation(alpha, divergence)
        # a subpopulation with a split atom (q <= p / target): inside the ball of target
        split = np.zeros(n)
        split[order[:j]] = p[order[:j]]
        split[order[j]] = target - (cum[j - 1] if j else 0.0)
        split /= target
        r_target = A.radius_for_subpopulation(target, divergence)
        if divergence == "cvar":
            assert r == alpha and A.ball_size(q, p, "cvar") == pytest.approx(alpha, rel=1e-12)
            assert A.ball_size(split, p, "cvar") >= target * (1 - 1e-12)
        else:
            assert A.ball_size(q, p, divergence) == pytest.approx(r, rel=1e-9, abs=1e-15)
            assert A.ball_size(split, p, divergence) <= r_target * (1 + 1e-12) + 1e-15
        # so the audit at that radius bounds the subpopulation's loss
        for sub, rad in ((q, r), (split, r_target)):
            prof = A.profile(l, weights=p, divergence=divergence, rhos=[rad])
            assert prof["worst_loss"].iloc[0] >= sub @ l - 1e-10
    assert A.radius_for_subpopulation(0.25, "kl") == pytest.approx(np.log(4))
    assert A.radius_for_subpopulation(0.25, "chi2") == pytest.approx(1.5)


def test_bad_input_names_the_argument():
    with pytest.raises(InputError, match="divergence"):
        A.profile([1.0, 2.0], divergence="tv", rhos=[0.1])
    with pytest.raises(InputError, match="rho"):
        A.profile([1.0, 2.0], divergence="kl", rhos=[-0.1])
    with pytest.raises(InputError, match="alpha"):
        A.profile([1.0, 2.0], divergence="cvar", rhos=[1.5])
    with pytest.raises(InputError, match="losses"):
        A.profile([1.0, np.nan], divergence="kl", rhos=[0.1])
    with pytest.raises(InputError, match="weights"):
        A.profile([1.0, 2.0], weights=[0.5, 0.6], divergence="kl", rhos=[0.1])
    with pytest.raises(InputError, match="alpha"):
        A.radius_for_subpopulation(0.0, "kl")


def test_radius_keywords_are_deprecated_aliases_of_rho():
    """``radius=`` / ``radii=`` (the old names) warn and give the same answer as ``rho=``."""
    l = np.array([0.2, 0.9, 0.4, 1.3])
    with pytest.warns(DeprecationWarning, match="rho"):
        old = A.worst_case(l, divergence="chi2", radius=0.3)
    np.testing.assert_array_equal(old, A.worst_case(l, divergence="chi2", rho=0.3))
    with pytest.warns(DeprecationWarning, match="rhos"):
        prof = A.profile(l, divergence="kl", radii=[0.1])
    assert (
        prof["worst_loss"].iloc[0]
        == A.profile(l, divergence="kl", rhos=[0.1])["worst_loss"].iloc[0]
    )
    with pytest.raises(InputError, match="both"):
        A.top_pairs(l, divergence="kl", radius=0.1, rho=0.1)
