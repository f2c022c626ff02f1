"""The minibatch fixed point (rdpo_theory.minibatch) and the running normalisers."""

import warnings

import numpy as np
import pytest
import torch

from rdpo_theory import approx
from rdpo_theory.data import PreferenceData
from rdpo_theory.errors import InputError
from rdpo_theory.exact import dpo as exact_dpo
from rdpo_theory.exact import kldpo as exact_kldpo
from rdpo_theory.minibatch import (
    LAYOUTS,
    Estimator,
    Layout,
    draw_batches,
    expected_gradient_fn,
    fixed_point,
)
from rdpo_theory.rng import make_rng
from rdpo_theory.torch.losses import kldpo_objective, wdpo_objective
from rdpo_theory.torch.normalizers import (
    RunningStatistic,
    batch_log_partition,
    running_kldpo_objective,
    running_wdpo_objective,
)

warnings.filterwarnings("ignore", message="There is a performance drop")

ESTIMATORS = [
    ("kldpo", "normalized", 0.5),
    ("kldpo", "clipped", 0.5),
    ("wdpo", "sqrt-mean", 0.2),
    ("wdpo", "per-pair", 0.2),
]


@pytest.fixture(scope="module")
def uniform_data():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(24, 3))
    y = (X @ np.array([1.0, -0.5, 0.3]) + rng.normal(size=24) > 0).astype(float)
    return PreferenceData(X, y)


@pytest.mark.parametrize("method,variant,hyper", ESTIMATORS)
def test_batch_n_without_replacement_is_the_full_batch_answer(uniform_data, method, variant, hyper):
    est = Estimator(method, variant, hyper)
    full = fixed_point(uniform_data, est, beta=1.0, batch_size=None)
    n = uniform_data.n
    fp = fixed_point(
        uniform_data, est, beta=1.0, batch_size=n, batches=3, sets=2, control_variate=False
    )
    np.testing.assert_allclose(fp.thetas, np.tile(full.theta, (2, 1)), atol=1e-9)
    # and the full-batch root is a root of the trainer's full-batch objective
    F = expected_gradient_fn(uniform_data, est, None, beta=1.0)
    assert np.linalg.norm(F(full.theta)) < 1e-9


def test_full_batch_normalized_root_is_exact_kldpo_at_lam_star(uniform_data):
    ex = exact_kldpo(uniform_data, rho=0.05, beta=1.0, solver="fast")
    fp = fixed_point(
        uniform_data, Estimator("kldpo", "normalized", ex.dual), beta=1.0, batch_size=None
    )
    np.testing.assert_allclose(fp.theta, ex.theta, atol=1e-6)


def test_per_pair_is_linear_in_the_batch_and_sqrt_mean_is_not(uniform_data):
    """Per-pair WDPO's SAA gradient over batches (M, B) equals the one over the same rows as
    M*B batches of one pair (no dependence on B); sqrt-mean's differs."""
    idx = draw_batches(uniform_data.weights, 4, 50, make_rng(0))
    th = np.array([0.4, -0.2, 0.1])
    for variant, same in (("per-pair", True), ("sqrt-mean", False)):
        est = Estimator("wdpo", variant, 0.3)
        kw = dict(beta=1.0, control_variate=False)
        a = expected_gradient_fn(uniform_data, est, idx, **kw)(th)
        b = expected_gradient_fn(uniform_data, est, idx.reshape(-1, 1), **kw)(th)
        assert np.allclose(a, b, atol=1e-12) is same
    # with the control variate, per-pair's F_B is the full-batch gradient exactly
    est = Estimator("wdpo", "per-pair", 0.3)
    np.testing.assert_allclose(
        expected_gradient_fn(uniform_data, est, idx, beta=1.0)(th),
        expected_gradient_fn(uniform_data, est, None, beta=1.0)(th),
        atol=1e-14,
    )


def test_vmapped_batch_gradient_is_the_trainer_objectives_gradient(uniform_data):
    """F over one batch equals autograd of the public torch objective on that batch."""
    th = np.array([0.3, 0.1, -0.2])
    idx = draw_batches(uniform_data.weights, 6, 1, make_rng(1))
    X = torch.tensor(uniform_data.X[idx[0]])
    sb = torch.tensor(uniform_data.signed_labels[idx[0]])
    for method, variant, hyper in ESTIMATORS:
        t = torch.tensor(th, requires_grad=True)
        per = torch.nn.functional.softplus(-(sb * (X @ t)))
        if method == "kldpo":
            loss = kldpo_objective(per, tau=hyper, variant=variant)[0]
        else:
            sq = torch.expm1(-per).square() * (t @ t)
            loss = wdpo_objective(per, None, rho0=hyper, variant=variant, sq_norms=sq)[0]
        (g,) = torch.autograd.grad(loss, t)
        F = expected_gradient_fn(
            uniform_data, Estimator(method, variant, hyper), idx, beta=1.0, control_variate=False
        )
        np.testing.assert_allclose(F(th), g.numpy(), atol=1e-13)


def test_control_variate_keeps_the_expectation(uniform_data):
    """Over every batch of size 2 without replacement (all n(n-1) ordered pairs), the SAA is
    the exact expectation; with and without the control variate it is the same."""
    n = uniform_data.n
    idx = np.array([(i, j) for i in range(n) for j in range(n) if i != j])
    th = np.array([0.4, -0.2, 0.1])
    for method, variant, hyper in ESTIMATORS:
        est = Estimator(method, variant, hyper)
        a = expected_gradient_fn(uniform_data, est, idx, beta=1.0)(th)
        b = expected_gradient_fn(uniform_data, est, idx, beta=1.0, control_variate=False)(th)
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_normalized_at_batch_one_is_dpo(uniform_data):
    """B = 1: the softmax over one pair is 1, so normalized KLDPO's fixed point is DPO's."""
    fp = fixed_point(
        uniform_data,
        Estimator("kldpo", "normalized", 0.5),
        beta=1.0,
        batch_size=1,
        batches=400,
        sets=3,
    )
    ex = exact_dpo(uniform_data, beta=1.0, solver="fast")
    assert np.all(np.abs(fp.theta - ex.theta) <= 4 * fp.theta_se + 1e-9)


def test_running_normalizer_recovers_the_full_batch_fixed_point():
    from rdpo_theory.studies.minibatch import MinibatchConfig, make_data

    cfg = MinibatchConfig.quick()
    data, world = make_data(cfg)[:2]
    ex = exact_kldpo(data, rho=0.01, beta=1.0, solver="fast")
    kw = dict(beta=1.0, batch_size=4, batches=300, sets=3)
    run = fixed_point(data, Estimator("kldpo", "normalized", ex.dual, "running"), **kw)
    bat = fixed_point(data, Estimator("kldpo", "normalized", ex.dual, "batch"), **kw)
    d_run = np.linalg.norm(run.theta - ex.theta)
    d_bat = np.linalg.norm(bat.theta - ex.theta)
    assert d_bat > 0.05  # the batch normaliser at B = 4 is far off the exact optimum
    assert d_run < 0.01 and d_run < 5 * np.linalg.norm(run.theta_se) + 2e-3


# ---------------------------------------------------------------------------- normalisers
def test_running_objectives_equal_batch_objectives_at_the_batch_statistic():
    rng = np.random.default_rng(0)
    th = torch.tensor(rng.normal(size=3), requires_grad=True)
    X = torch.tensor(rng.normal(size=(7, 3)))
    per = torch.nn.functional.softplus(-(X @ th))
    sq = torch.expm1(-per).square() * (th @ th)
    a = kldpo_objective(per, tau=0.3)[0]
    b = running_kldpo_objective(per, tau=0.3, log_partition=batch_log_partition(per, 0.3))[0]
    ga, gb = (torch.autograd.grad(v, th, retain_graph=True)[0] for v in (a, b))
    assert float(a) == pytest.approx(float(b), rel=1e-13)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-14)
    a = wdpo_objective(per, None, rho0=0.7, sq_norms=sq)[0]
    b = running_wdpo_objective(per, sq, rho0=0.7, mean_sq=sq.detach().mean())
    ga, gb = (torch.autograd.grad(v, th, retain_graph=True)[0] for v in (a, b))
    assert float(a) == pytest.approx(float(b), rel=1e-13)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-14)


def test_running_statistic_ema_and_state_dict():
    s = RunningStatistic(0.25, log_space=True)
    vals = [0.3, -1.0, 2.0, 0.5]
    for v in vals:
        s.update(torch.tensor(v, dtype=torch.float64))
    ref = np.exp(vals[0])
    for v in vals[1:]:
        ref = 0.75 * ref + 0.25 * np.exp(v)
    assert float(s.value) == pytest.approx(np.log(ref), rel=1e-14)
    t = RunningStatistic(0.5, log_space=True)
    t.load_state_dict(s.state_dict())
    for r in (s, t):
        r.update(torch.tensor(1.0, dtype=torch.float64))
    assert float(s.value) == float(t.value) and t.steps == 5 and t.decay == 0.25
    with pytest.raises(InputError, match="decay"):
        RunningStatistic(0.0)
    with pytest.raises(InputError, match="decay"):
        RunningStatistic(1.5)


def test_approx_running_decay_one_is_the_batch_normalizer_and_full_batch_is_unchanged(
    uniform_data,
):
    kw = dict(beta=1.0, max_steps=40, gtol=0.0, lr=0.05)
    for fn, hyper in ((approx.kldpo, dict(tau=0.5)), (approx.wdpo, dict(rho0=0.2))):
        a = fn(uniform_data, batch_size=5, normalizer="batch", **hyper, **kw)
        b = fn(uniform_data, batch_size=5, normalizer="running", decay=1.0, **hyper, **kw)
        np.testing.assert_allclose(a.theta_last, b.theta_last, atol=1e-12)
        c = fn(uniform_data, normalizer="running", **hyper, **kw)
        d = fn(uniform_data, normalizer="batch", **hyper, **kw)
        np.testing.assert_array_equal(c.theta, d.theta)
        np.testing.assert_array_equal(c.theta, c.theta_last)  # full batch: no averaging


def test_minibatch_fit_returns_tail_average_and_last_iterate(uniform_data):
    res = approx.dpo(
        uniform_data,
        beta=1.0,
        batch_size=4,
        max_steps=50,
        gtol=0.0,
        lr=0.1,
        record_theta=True,
        record_every=1,
    )
    T = res.trace[[f"theta{j}" for j in range(3)]].to_numpy()  # row k: iterate before step k+1
    assert res.extras["average_from"] == 25
    np.testing.assert_allclose(res.theta, T[25:].mean(axis=0), atol=1e-14)
    np.testing.assert_array_equal(res.theta_last, T[-1])
    last = approx.dpo(
        uniform_data, beta=1.0, batch_size=4, max_steps=50, gtol=0.0, lr=0.1, average_tail=0.0
    )
    np.testing.assert_array_equal(last.theta, res.theta_last)


def test_normalizer_validation(uniform_data):
    with pytest.raises(InputError, match="normalizer"):
        approx.kldpo(uniform_data, tau=0.5, beta=1.0, normalizer="global")
    with pytest.raises(InputError, match="running"):
        approx.kldpo(uniform_data, tau=0.5, beta=1.0, variant="clipped", normalizer="running")
    with pytest.raises(InputError, match="running"):
        approx.wdpo(uniform_data, rho0=0.5, beta=1.0, variant="per-pair", normalizer="running")
    with pytest.raises(InputError, match="batch_size"):
        fixed_point(uniform_data, Estimator("wdpo", "per-pair", 0.1), beta=1.0, batch_size=0)
    with pytest.raises(InputError, match="replace"):
        draw_batches(np.array([0.5, 0.25, 0.25]), 2, 3, make_rng(0), replace=False)


def test_layout_groups():
    paper = LAYOUTS[0]
    assert (paper.global_batch, paper.group_size) == (128, 32)
    assert [lay.global_batch for lay in LAYOUTS] == [128] * len(LAYOUTS)
    assert Layout("x", 8, 4, 4, gather=False).group_size == 4
    assert Layout("x", 8, 4, 4, normalizer="accumulated").group_size == 128
    assert Layout("x", 2, 3, 5, gather=False, normalizer="accumulated").group_size == 15


@pytest.mark.slow
def test_fixed_point_matches_averaged_sgd():
    """Long SGD runs (from the exact optimum, tail averaging) at B = 4 land on theta_B: for the
    batch normaliser that is ~0.1 away from the exact optimum, for the running one on it."""
    from rdpo_theory.studies.minibatch import MinibatchConfig, make_data

    data = make_data(MinibatchConfig.quick())[0]
    ex = exact_kldpo(data, rho=0.01, beta=1.0, solver="fast")
    for norm in ("batch", "running"):
        est = Estimator("kldpo", "normalized", ex.dual, norm)
        fp = fixed_point(data, est, beta=1.0, batch_size=4, batches=300, sets=2)
        sgd = approx.kldpo(
            data,
            tau=ex.dual,
            beta=1.0,
            batch_size=4,
            normalizer=norm,
            optimizer="sgd",
            lr=0.02,
            max_steps=24000,
            gtol=0.0,
            seed=5,
            theta0=ex.theta,
        )
        to_fp = np.linalg.norm(sgd.theta - fp.theta)
        assert to_fp < 0.05, norm  # the averaged SGD noise of 12000 steps is ~0.025
        if norm == "batch":  # theta_B is 0.11 from the exact optimum: SGD lands on theta_B
            assert np.linalg.norm(fp.theta - ex.theta) > 0.09
            assert to_fp < 0.5 * np.linalg.norm(sgd.theta - ex.theta)


@pytest.mark.slow
def test_minibatch_command_writes_tables_and_figures(tmp_path):
    import pandas as pd

    from rdpo_theory.commands.minibatch import make
    from rdpo_theory.studies.minibatch import MinibatchConfig

    cfg = MinibatchConfig(
        batch_sizes=(1, 4),
        batches=20,
        sets=2,
        kl_path=(0.005, 0.02),
        w1_path=(0.1, 0.2),
        w2_path=(0.1, 0.2),
        decays=(0.1,),
        sgd_steps=20,
    )
    paths = make(tmp_path, cfg=cfg, jobs=1, progress=False)
    assert {p.name for p in paths} >= {
        "minibatch_runs.csv",
        "minibatch_layouts.csv",
        "minibatch_sgd.csv",
        "minibatch_decay.csv",
        "minibatch_radius.png",
        "minibatch_distance.png",
        "minibatch_layouts.png",
    }
    runs = pd.read_csv(tmp_path / "minibatch_runs.csv")
    full = runs[runs["batch"] == "full"]
    assert (full[full["variant"] == "normalized"]["theta_dist"] < 1e-6).all()
    assert (runs["robust_gap"] > -1e-6).all()
    # every exact reference is certified: its optimality gap is recorded and small
    gaps = runs["exact_optimality_gap"]
    assert gaps.notna().all() and (gaps.abs() <= 1e-6 * 2).all()
    # the columns of the study table
    for col in ("variant", "normalizer", "B", "theta_dist", "effective_radius", "off_path"):
        assert col in runs.columns
    for col in (
        "robust_gap",
        "mc_error",
        "effective_radius_w1",
        "implied_rho",
        "path_interp_error",
    ):
        assert col in runs.columns
    # per-pair WDPO is linear in the batch: the same fixed point at every B, no MC error
    pp = runs[runs["variant"] == "per-pair"]
    assert pp[["theta0", "theta1", "theta2", "effective_radius"]].nunique().max() == 1
    assert (pp["mc_error"] == 0).all()
    # in full batch the running normaliser is the batch one
    for v in ("normalized", "sqrt-mean"):
        f = full[full["variant"] == v].set_index("normalizer")
        assert f.loc["running", "theta0"] == f.loc["batch", "theta0"]
    lay = pd.read_csv(tmp_path / "minibatch_layouts.csv")
    assert (lay["B"] == lay["group_size"]).all() and (lay["global_batch"] == 128).all()
    decay = pd.read_csv(tmp_path / "minibatch_decay.csv")
    assert set(decay["family"]) == {"kl", "w2"} and (decay["decay"] == 0.1).all()


def test_quick_study_covers_every_layout_group():
    from rdpo_theory.studies.minibatch import MinibatchConfig

    for cfg in (MinibatchConfig.quick(), MinibatchConfig.full()):
        assert {lay.group_size for lay in LAYOUTS} <= set(cfg.batch_sizes)
        assert 0.01 in cfg.decays  # the recommended decay is in the sweep


# ---------------------------------------------------------------------------- the study
@pytest.fixture(scope="module")
def study_kl_path():
    from rdpo_theory.studies.minibatch import MinibatchConfig, exact_path, make_data

    cfg = MinibatchConfig.quick()
    data = make_data(cfg)[0]
    return data, exact_path("kl", data, cfg.kl_path, 1.0)


def test_nearest_on_path_recovers_an_off_grid_radius(study_kl_path):
    """The exact optimum at a radius between the path's grid points is found on the spline at
    that radius, and a point moved off the path by 0.01 orthogonally is 0.01 from it."""
    from rdpo_theory.studies.minibatch import (
        nearest_on_path,
        path_interpolation_error,
        path_spline,
        project_onto_path,
    )

    data, path = study_kl_path
    grid = path["radius"].to_numpy()
    rho = 0.0087  # between the grid points 0.0071 and 0.0109
    assert not np.isclose(grid, rho, rtol=0.05).any()
    th = exact_kldpo(data, rho=rho, beta=1.0, solver="fast").theta
    rad, dist = nearest_on_path(th, path, "kl")
    assert rad == pytest.approx(rho, rel=2e-3)
    # the spline through the exact optima reproduces an exact optimum off the grid to within
    # the leave-one-out estimate of its interpolation error
    err = path_interpolation_error("kl", path)
    assert dist <= err < 1e-3
    # the polyline is coarser: the spline is at least as close
    assert dist <= project_onto_path(th, path)[1] + 1e-15
    # move off the path orthogonally to its tangent
    spl = path_spline("kl", path)
    tangent = spl(np.sqrt(rho), 1)
    normal = np.cross(tangent, [1.0, 0.0, 0.0])
    normal /= np.linalg.norm(normal)
    rad2, dist2 = nearest_on_path(th + 0.01 * normal, path, "kl")
    assert dist2 == pytest.approx(0.01, rel=0.02)
    assert rad2 == pytest.approx(rho, rel=0.02)
    # DPO is the radius-0 end of the path
    dpo = exact_dpo(data, beta=1.0, solver="fast").theta
    assert nearest_on_path(dpo, path, "kl")[0] < 1e-10


def test_running_normalizer_bias_grows_with_the_decay():
    """The running normaliser's fixed point moves off the full-batch one by O(decay): at
    decay 0.3 it is far off (a small batch average), at 0.01 on it."""
    from rdpo_theory.studies.minibatch import MinibatchConfig, make_data

    data = make_data(MinibatchConfig.quick())[0]
    ex = exact_kldpo(data, rho=0.01, beta=1.0, solver="fast")
    d = {}
    for a in (0.01, 0.3):
        est = Estimator("kldpo", "normalized", ex.dual, "running", decay=a)
        fp = fixed_point(data, est, beta=1.0, batch_size=4, batches=200, sets=2)
        d[a] = np.linalg.norm(fp.theta - ex.theta)
    assert d[0.3] > 0.02 and d[0.01] < 0.004 and d[0.3] > 8 * d[0.01]


# ---------------------------------------------------------------------------- the objective
def _small_world(seed, n=10, d=3, uniform=False):
    """n random pairs, the last d of them copies of the first d with flipped labels (so the
    data are never separable and DPO has a finite optimum)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n - d, d))
    y = (X @ rng.normal(size=d) + rng.normal(size=n - d) > 0).astype(float)
    X, y = np.r_[X, X[:d]], np.r_[y, 1 - y[:d]]
    p = None if uniform else rng.dirichlet(np.ones(n))
    return PreferenceData(X, y, p)


def test_batch_law_is_the_multinomial_and_hypergeometric_law():
    """Every multiset with its probability, against ordered tuples counted one by one."""
    import itertools
    import math

    from rdpo_theory.minibatch import batch_law, multisets

    assert multisets(5, 3).shape == (math.comb(7, 3), 3)
    data = _small_world(0, n=4, d=2)
    distinct, rows, prob = batch_law(data, 3)
    ref = {}
    for t in itertools.product(range(4), repeat=3):
        k = tuple(sorted(t))
        ref[k] = ref.get(k, 0.0) + np.prod(distinct.weights[list(t)])
    np.testing.assert_allclose(prob, [ref[tuple(r)] for r in rows], rtol=1e-12)
    # without replacement from rows with duplicates: the hypergeometric law
    X = np.array([[1.0, 0], [1.0, 0], [0, 1.0], [2.0, 1.0], [1.0, 0]])
    dup = PreferenceData(X, np.array([1.0, 1, 0, 1, 1]))
    distinct, rows, prob = batch_law(dup, 2)
    key = {tuple(r): i for i, r in enumerate(np.column_stack([distinct.X, distinct.y]))}
    ref = {}
    for a, b in itertools.permutations(range(5), 2):
        k = tuple(sorted(key[tuple(np.r_[X[i], dup.y[i]])] for i in (a, b)))
        ref[k] = ref.get(k, 0.0) + 1 / 20
    assert len(rows) == len(ref)
    np.testing.assert_allclose(prob, [ref[tuple(r)] for r in rows], rtol=1e-12)


def test_minibatch_objective_derivatives_symmetry_and_jensen_order():
    """grad and Hessian of G_B by finite differences; the Hessian is symmetric; G_B grows with
    B from the DPO risk (B = 1) towards the full-batch tau log E exp(l / tau)."""
    from rdpo_theory.losses import dpo_losses
    from rdpo_theory.minibatch import batch_law, batch_objective

    data = _small_world(1, n=8)
    th = np.array([0.3, -0.2, 0.5])
    tau = 0.6
    vals = []
    for B in (1, 2, 3, 4):
        dist, rows, prob = batch_law(data, B)
        sb = dist.signed_labels

        def G(t, rows=rows, prob=prob, dist=dist, sb=sb):
            return batch_objective(t, dist.X, sb, rows, prob, tau=tau)

        ob = G(th)
        vals.append(ob.value)
        h = 1e-6
        fd = [(G(th + h * e).value - G(th - h * e).value) / (2 * h) for e in np.eye(3)]
        np.testing.assert_allclose(ob.grad, fd, atol=1e-8)
        fdh = np.array([(G(th + h * e).grad - G(th - h * e).grad) / (2 * h) for e in np.eye(3)])
        np.testing.assert_allclose(ob.hess, fdh, atol=1e-6)
        np.testing.assert_allclose(fdh, fdh.T, atol=1e-6)
    l = dpo_losses(th, data, beta=1.0)
    full = tau * np.log(data.weights @ np.exp(l / tau))
    assert abs(vals[0] - data.weights @ l) < 1e-12
    assert all(a < b for a, b in zip(vals, vals[1:])) and vals[-1] < full


@pytest.mark.parametrize("seed,useed", [(0, 0), (1, 3), (2, 4)])
def test_exact_fixed_point_b1_is_dpo_and_full_batch_is_exact_kldpo(seed, useed):
    from rdpo_theory.minibatch import exact_fixed_point

    data = _small_world(seed)
    fp = exact_fixed_point(data, Estimator("kldpo", "normalized", 0.4), beta=1.0, batch_size=1)
    ex = exact_dpo(data, beta=1.0, solver="fast")
    assert np.abs(fp.theta - ex.theta).max() < 1e-10
    assert fp.info["certificate"] < 1e-10
    uni = _small_world(useed, n=9, uniform=True)  # a world where the KL ball binds
    kl = exact_kldpo(uni, rho=0.05, beta=1.0)
    full = exact_fixed_point(uni, Estimator("kldpo", "normalized", kl.dual), beta=1.0, batch_size=9)
    assert full.info["multisets"] == 1
    assert np.abs(full.theta - kl.theta).max() < 1e-7


def test_certificate_bounds_the_distance_to_the_minimiser():
    from rdpo_theory.minibatch import batch_law, batch_objective, certify, exact_fixed_point

    data = _small_world(4)
    est = Estimator("kldpo", "normalized", 0.5)
    fp = exact_fixed_point(data, est, beta=1.0, batch_size=3)
    dist, rows, prob = batch_law(data, 3)
    for eps in (1e-6, 1e-5, 1e-4, 1e-3, 0.1):
        th = fp.theta + eps * np.array([1.0, -1.0, 0.5])
        ob = batch_objective(th, dist.X, dist.signed_labels, rows, prob, tau=0.5)
        bound = certify(th, ob, dist.X, dist.signed_labels, tau=0.5)
        dist_true = np.linalg.norm(th - fp.theta)
        ev = np.linalg.eigvalsh(ob.hess)  # ||grad|| / mu is at most the condition number
        assert dist_true <= bound  # never below the true distance (inf: nothing certified)
        if eps <= 1e-4:  # near the minimiser (the certificate's use: ||grad|| ~ 1e-12)
            assert bound < 2 * ev[-1] / ev[0] * dist_true  # the condition number times it


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_control_variate_never_worse_than_none_against_enumeration(seed):
    """At B = 1, 2, 4 on three worlds, the sampled theta_B with the control variate is no
    farther from the exact (enumerated) theta_B than without it; at B = 1 it is DPO to
    rounding, within its stated (zero) Monte Carlo error."""
    from rdpo_theory.minibatch import exact_fixed_point

    data = _small_world(seed)
    est = Estimator("kldpo", "normalized", 0.3)
    for B in (1, 2, 4):
        ex = exact_fixed_point(data, est, beta=1.0, batch_size=B)
        kw = dict(beta=1.0, batch_size=B, batches=300, sets=4, seed=seed)
        on = fixed_point(data, est, **kw)
        off = fixed_point(data, est, control_variate=False, **kw)
        err_on = np.sqrt(np.mean(np.sum((on.thetas - ex.theta) ** 2, axis=1)))
        err_off = np.sqrt(np.mean(np.sum((off.thetas - ex.theta) ** 2, axis=1)))
        assert err_on <= err_off
        assert np.all(np.abs(on.theta - ex.theta) <= 4 * on.theta_se + 1e-8)
        if B == 1:
            assert err_on < 1e-7  # least-squares rounding of c = (1, 0)


def test_sampled_root_agrees_with_enumeration_for_clipped_and_sqrt_mean():
    from rdpo_theory.minibatch import exact_fixed_point

    data = _small_world(5, n=8)
    for est in (Estimator("kldpo", "clipped", 0.5), Estimator("wdpo", "sqrt-mean", 0.2)):
        ex = exact_fixed_point(data, est, beta=1.0, batch_size=2)
        s = fixed_point(data, est, beta=1.0, batch_size=2, batches=300, sets=4)
        assert np.all(np.abs(s.theta - ex.theta) <= 4 * s.theta_se + 1e-6)
        # and the exact root is a root of the exact expected gradient
        assert ex.residual < 1e-7


def test_layout_vocabulary():
    with pytest.warns(DeprecationWarning):
        lay = Layout("x", 8, 4, 4, True, "micro-batch")
    assert lay.normalizer == "batch" and lay.group_size == 32
    with pytest.raises(InputError, match="'normalizer' parameter of Layout"):
        Layout("x", normalizer="global")
    with pytest.raises(InputError, match="'workers' parameter of Layout"):
        Layout("x", workers=0)


def test_jacobian_symmetric_for_normalized_and_sqrt_mean_asymmetric_for_clipped():
    """The exact F_B of normalized KLDPO is grad G_B and that of WDPO sqrt-mean is
    grad E_b[L_b]: symmetric Jacobians. The clipped weights' centre gives an asymmetric one,
    so no objective has F_B as its gradient (docs/theory.md#minibatch-objective)."""
    from rdpo_theory.minibatch import batch_law

    data = _small_world(2)
    dist, rows, prob = batch_law(data, 2)
    th = np.array([0.3, -0.4, 0.2])
    asym = {}
    for est in (
        Estimator("kldpo", "normalized", 0.5),
        Estimator("kldpo", "clipped", 0.5),
        Estimator("wdpo", "sqrt-mean", 0.3),
    ):
        F = expected_gradient_fn(dist, est, rows, beta=1.0, control_variate=False, probs=prob)
        h = 1e-6
        J = np.array([(F(th + h * e) - F(th - h * e)) / (2 * h) for e in np.eye(3)]).T
        asym[est.variant] = np.abs(J - J.T).max() / np.abs(J).max()
    assert asym["normalized"] < 1e-8 and asym["sqrt-mean"] < 1e-8
    assert asym["clipped"] > 1e-3


def test_clipped_fixed_point_is_exact_kldpo_at_a_larger_temperature():
    """i.i.d. groups, clip not binding: theta_B of 'clipped' is the full-batch normalised
    answer at tau B / (B - 1), against the enumerated law at B = 2 and 3."""
    from rdpo_theory.minibatch import clipped_closed_form, exact_fixed_point

    data = _small_world(6, n=7)
    est = Estimator("kldpo", "clipped", 0.8, clip=1e6)
    for B in (1, 2, 3):
        cf = clipped_closed_form(data, est, beta=1.0, batch_size=B)
        ex = exact_fixed_point(data, est, beta=1.0, batch_size=B)
        np.testing.assert_allclose(cf.theta, ex.theta, atol=1e-8)
    tight = Estimator("kldpo", "clipped", 0.8, clip=1.0001)  # the clip binds: no closed form
    assert clipped_closed_form(data, tight, beta=1.0, batch_size=3) is None
