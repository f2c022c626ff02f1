"""Algorithms 1 and 2 on log-linear data against exact solvers, closed forms and mirrors."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from rdpo_theory import InputError, PreferenceData, SolverError, World, approx
from rdpo_theory import losses as NL
from rdpo_theory.exact import dpo as exact_dpo
from rdpo_theory.exact import kldpo as exact_kldpo
from rdpo_theory.torch import losses as TL

PRECISE = dict(optimizer="adam", lr=0.05, max_steps=5000, gtol=1e-10)


@pytest.fixture(scope="module")
def sample():
    w = World.random(8, 4, 3, seed=1)
    return w, w.empirical(800, seed=2)  # aggregated over Z: non-uniform weights


# ---------------------------------------------------------------------------- formulas
def test_dpo_losses_numpy_torch_cvxpy_agree():
    rng = np.random.default_rng(0)
    m = rng.normal(0, 5, 50)
    l_np = NL.dpo_loss(m)
    l_t = TL.dpo_pair_losses(torch.tensor(m, dtype=torch.float64)).numpy()
    l_cp = cp.logistic(-m).value
    np.testing.assert_allclose(l_t, l_np, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(l_cp, l_np, rtol=1e-10, atol=1e-10)


def test_closed_form_penalty_equals_autograd(sample):
    w, data = sample
    rng = np.random.default_rng(1)
    theta, tref = rng.normal(size=3), 0.3 * rng.normal(size=3)
    beta = 0.7
    # torch autograd: ||grad_x l_i||^2 by double backward
    x = torch.tensor(data.X, requires_grad=True)
    th = torch.tensor(theta, requires_grad=True)
    sy = torch.tensor(data.signed_labels)
    per = TL.dpo_pair_losses(sy * beta * (x @ (th - torch.tensor(tref))))
    sq_auto = TL.input_grad_sq_norms(per, x)
    # closed form beta^2 sigmoid(-m)^2 ||theta - theta_ref||^2 (numpy mirror and torch form)
    sq_np = NL.wdpo_input_grad_sq_norms(theta, data.X, data.y, beta=beta, theta_ref=tref)
    d = th - torch.tensor(tref)
    sq_cf = (beta * (-torch.expm1(-per))) ** 2 * (d @ d)
    np.testing.assert_allclose(sq_auto.detach().numpy(), sq_np, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sq_cf.detach().numpy(), sq_np, rtol=1e-10, atol=1e-15)
    p = torch.tensor(data.weights)
    for variant in ("sqrt-mean", "per-pair"):
        la = TL.wdpo_objective(per, x, rho0=0.4, variant=variant, weights=p)[0]
        lc = TL.wdpo_objective(per, None, rho0=0.4, variant=variant, weights=p, sq_norms=sq_cf)[0]
        (ga,) = torch.autograd.grad(la, th, retain_graph=True)
        (gc,) = torch.autograd.grad(lc, th, retain_graph=True)
        assert float(la) == pytest.approx(float(lc), rel=1e-12)
        np.testing.assert_allclose(ga.numpy(), gc.numpy(), rtol=1e-9, atol=1e-14)
        ref = NL.wdpo_objective(
            per.detach().numpy(), sq_np, rho0=0.4, variant=variant, weights=data.weights
        )
        assert float(la) == pytest.approx(ref, rel=1e-12)
    # whole training runs agree too
    kw = dict(rho0=0.05, beta=beta, theta_ref=tref, optimizer="sgd", lr=0.5, max_steps=200)
    ra = approx.wdpo(data, penalty="autograd", **kw)
    rc = approx.wdpo(data, penalty="closed-form", **kw)
    np.testing.assert_allclose(ra.theta, rc.theta, atol=1e-10)


def test_weighted_kl_weights_numpy_torch_and_uniform_limit():
    rng = np.random.default_rng(2)
    l = rng.gamma(2.0, 0.5, 40)
    p = rng.random(40)
    p /= p.sum()
    for variant in ("normalized", "clipped"):
        wn = NL.kl_weights(l, tau=0.3, variant=variant, clip=3.0, weights=p)
        wt = TL.kl_weights(
            torch.tensor(l), tau=0.3, variant=variant, clip=3.0, weights=torch.tensor(p)
        )
        assert wt.dtype == torch.float64
        np.testing.assert_allclose(wt.numpy(), wn, rtol=1e-12)
        u = np.full(40, 1 / 40)
        np.testing.assert_allclose(
            NL.kl_weights(l, tau=0.3, variant=variant, clip=3.0, weights=u),
            NL.kl_weights(l, tau=0.3, variant=variant, clip=3.0),
            rtol=1e-12,
        )
    # normalized: q = p w is the tilted law p exp(l / tau) / Z
    q = p * NL.kl_weights(l, tau=0.3, weights=p)
    ref = p * np.exp(l / 0.3)
    np.testing.assert_allclose(q, ref / ref.sum(), rtol=1e-12)


def test_weighted_rows_equal_repeated_rows():
    """Data weights are honoured: counts as weights == the same rows repeated."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6, 2))
    y = np.array([1, 0, 1, 1, 0, 1.0])
    counts = np.array([1, 3, 2, 1, 4, 1])
    agg = PreferenceData(X, y, counts / counts.sum())
    rep = PreferenceData(np.repeat(X, counts, 0), np.repeat(y, counts))
    for fn, kw in (
        (approx.kldpo, dict(tau=0.5, variant="normalized")),
        (approx.kldpo, dict(tau=0.5, variant="clipped", clip=1.5)),
        (approx.wdpo, dict(rho0=0.2, variant="sqrt-mean")),
        (approx.wdpo, dict(rho0=0.2, variant="per-pair")),
    ):
        a = fn(agg, beta=1.0, max_steps=150, gtol=0.0, **kw)
        b = fn(rep, beta=1.0, max_steps=150, gtol=0.0, **kw)
        np.testing.assert_allclose(a.theta, b.theta, atol=1e-12)


# ---------------------------------------------------------------------------- the theory
def test_normalized_kldpo_reaches_exact_kldpo(sample):
    """Full-batch Algorithm 2 at tau = lam*(rho) is the exact KLDPO optimum at rho."""
    w, data = sample
    for rho in (0.003, 0.01, 0.02):
        ex = exact_kldpo(data, rho=rho, beta=w.beta)
        res = approx.kldpo(data, tau=ex.dual, beta=w.beta, **PRECISE)
        assert res.converged
        np.testing.assert_allclose(res.theta, ex.theta, atol=1e-3)
        assert np.linalg.norm(res.theta - ex.theta) < 1e-6  # in fact far closer
        assert res.implied_rho == pytest.approx(rho, rel=0.02)
        np.testing.assert_allclose(res.weights, ex.worst_case, atol=1e-6)


@pytest.mark.slow
def test_dpo_trainer_reaches_exact_dpo_and_minibatches_get_close(sample):
    w, data = sample
    ex = exact_dpo(data, beta=w.beta)
    full = approx.dpo(data, beta=w.beta, **PRECISE)
    assert full.converged
    np.testing.assert_allclose(full.theta, ex.theta, atol=1e-8)
    mb = approx.dpo(
        data, beta=w.beta, batch_size=64, lr=0.05, schedule="cosine", max_steps=3000, gtol=1e-12
    )
    assert not mb.converged and mb.trace["full_grad_norm"].notna().sum() > 10
    assert np.linalg.norm(mb.theta - ex.theta) < 0.05
    again = approx.dpo(
        data, beta=w.beta, batch_size=64, lr=0.05, schedule="cosine", max_steps=3000, gtol=1e-12
    )
    np.testing.assert_array_equal(again.theta, mb.theta)  # seeded
    other = approx.dpo(data, beta=w.beta, batch_size=64, lr=0.05, max_steps=50, seed=1)
    assert not np.array_equal(other.theta, mb.theta)


def test_weighted_minibatch_sampler_draws_rows_with_probability_p():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    gen = approx.batch_sampler(p, 1000, np.random.default_rng(0))
    idx = np.concatenate([next(gen) for _ in range(200)])
    freq = np.bincount(idx, minlength=4) / idx.size
    np.testing.assert_allclose(freq, p, atol=0.005)
    gen = approx.batch_sampler(np.full(10, 0.1), 5, np.random.default_rng(0))
    epoch = np.concatenate([next(gen), next(gen)])
    assert sorted(epoch) == list(range(10))  # uniform data: epochs without replacement


def test_trace_schedule_and_result_fields(sample):
    w, data = sample
    res = approx.wdpo(
        data, rho0=0.1, beta=w.beta, schedule="linear", max_steps=40, gtol=0.0, record_theta=True
    )
    tr = res.trace
    assert list(tr["step"]) == list(range(41)) and res.steps == 40 and not res.converged
    assert tr["lr"].iloc[0] == pytest.approx(0.05) and tr["lr"].iloc[-1] == pytest.approx(0.0)
    assert {"loss", "grad_norm", "theta0", "theta2"} <= set(tr.columns)
    assert res.hyper["rho0"] == 0.1 and res.variant == "sqrt-mean"
    np.testing.assert_allclose(tr[["theta0", "theta1", "theta2"]].iloc[-1], res.theta)
    cos = approx.kldpo(data, tau=1.0, beta=w.beta, schedule="cosine", max_steps=10, gtol=0.0)
    assert cos.trace["lr"].iloc[5] == pytest.approx(0.05 * 0.5 * (1 + np.cos(np.pi / 2)))
    assert cos.implied_rho > 0 and cos.weights.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(optimizer="lbfgs"), "optimizer"),
        (dict(schedule="step"), "schedule"),
        (dict(lr=0.0), "learning_rate"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(batch_size=0), "batch_size"),
        (dict(max_steps=2.5), "max_steps"),
        (dict(momentum=1.0), "momentum"),
        (dict(theta0=[0.0]), "theta0"),
        (dict(beta=-1.0), "beta"),
    ],
)
def test_bad_training_arguments(sample, kwargs, match):
    _, data = sample
    args = dict(beta=1.0) | kwargs
    with pytest.raises(InputError, match=match):
        approx.dpo(data, **args)


def test_bad_method_arguments_and_divergence(sample):
    _, data = sample
    with pytest.raises(InputError, match="tau"):
        approx.kldpo(data, tau=0.0, beta=1.0)
    with pytest.raises(InputError, match="variant"):
        approx.kldpo(data, tau=1.0, beta=1.0, variant="soft")
    with pytest.raises(InputError, match="rho0"):
        approx.wdpo(data, rho0=-1.0, beta=1.0)
    with pytest.raises(InputError, match="penalty"):
        approx.wdpo(data, rho0=1.0, beta=1.0, penalty="numeric")
    with pytest.raises(SolverError, match="diverged") as ei:
        approx.fit(data, beta=1.0, objective=lambda l, x, w: (w * l).sum() / 0.0, max_steps=3)
    assert ei.value.status == "diverged"


def test_fast_paths_equal_reference_objectives():
    """The front ends' fast paths (uniform batch weights -> mean, checks hoisted out of the
    loop, closed-form penalty rewritten) train exactly like the public weighted objectives."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 3))
    y = (rng.random(300) < 0.7).astype(float)
    kw = dict(beta=0.8, max_steps=60, gtol=0.0, lr=0.05)

    def ref(objective, **extra):
        return approx.fit(X, y, objective=objective, **extra, **kw).theta

    for batch in (None, 32):
        b = dict(batch_size=batch)
        np.testing.assert_allclose(
            approx.dpo(X, y, **b, **kw).theta, ref(lambda l, x, w: (w * l).sum(), **b), atol=1e-12
        )
        for variant in ("normalized", "clipped"):
            fast = approx.kldpo(X, y, tau=0.4, variant=variant, clip=1.5, **b, **kw).theta
            slow = ref(
                lambda l, x, w, v=variant: TL.kldpo_objective(
                    l, tau=0.4, variant=v, clip=1.5, weights=w
                )[0],
                input_grad=False,
                **b,
            )
            np.testing.assert_allclose(fast, slow, atol=1e-12)
        for variant in ("sqrt-mean", "per-pair"):
            slow = ref(
                lambda l, x, w, v=variant: TL.wdpo_objective(l, x, rho0=0.3, variant=v, weights=w)[
                    0
                ],
                **b,
            )
            for penalty in ("autograd", "closed-form"):
                fast = approx.wdpo(X, y, rho0=0.3, variant=variant, penalty=penalty, **b, **kw)
                np.testing.assert_allclose(fast.theta, slow, atol=1e-10)


@pytest.mark.slow  # the reference, torch.optim, imports torch._dynamo (about 7 s)
def test_hand_written_adam_and_sgd_equal_torch_optim():
    """approx.fit steps by hand (no torch._dynamo import); the updates are torch.optim's."""
    import torch

    from rdpo_theory.approx import _SGD, _Adam

    g = torch.Generator().manual_seed(0)
    for mine, ref in (
        (lambda t: _Adam(t, 0.1), lambda t: torch.optim.Adam([t], lr=0.1)),
        (lambda t: _SGD(t, 0.1, 0.9), lambda t: torch.optim.SGD([t], lr=0.1, momentum=0.9)),
    ):
        a = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        oa, ob = mine(a), ref(b)
        for _ in range(5):
            grad = torch.randn(3, generator=g, dtype=torch.float64)
            a.grad, b.grad = grad.clone(), grad.clone()
            oa.step()
            ob.step()
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_mlmc_gradient_is_unbiased_for_the_deepest_group():
    """E[grad of the multilevel surrogate] equals grad G_{B 2^(L+1)}: every ordered tuple of
    every level enumerated, against the minibatch objective of rdpo_theory.minibatch."""
    import itertools

    import torch

    from rdpo_theory.approx import mlmc_objective
    from rdpo_theory.minibatch import batch_law, batch_objective
    from rdpo_theory.torch.losses import dpo_pair_losses, kldpo_objective

    rng = np.random.default_rng(0)
    X, y, p = rng.normal(size=(3, 2)), np.array([1.0, 0.0, 1.0]), np.array([0.5, 0.3, 0.2])
    data = PreferenceData(X, y, p)
    tau, B, levels, th = 0.4, 1, 1, np.array([0.3, -0.7])
    pj = 0.5 ** np.arange(levels + 1) / (0.5 ** np.arange(levels + 1)).sum()
    sb = torch.tensor(data.signed_labels)
    Xt = torch.tensor(X)
    expected = np.zeros(2)
    for j in range(levels + 1):
        for t in itertools.product(range(3), repeat=B * 2 ** (j + 1)):
            theta = torch.tensor(th, requires_grad=True)
            idx = list(t)
            per = dpo_pair_losses(sb[idx] * (Xt[idx] @ theta))
            loss = mlmc_objective(
                per, lambda q: kldpo_objective(q, tau=tau, check=False)[0], B, levels
            )
            (grad,) = torch.autograd.grad(loss, theta)
            expected += pj[j] * np.prod(p[idx]) * grad.numpy()
    dist, rows, prob = batch_law(data, B * 2 ** (levels + 1), replace=True)
    ref = batch_objective(th, dist.X, dist.signed_labels, rows, prob, tau=tau).grad
    np.testing.assert_allclose(expected, ref, atol=1e-12)


def test_normalizer_vocabulary():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(20, 2)), (rng.random(20) < 0.6).astype(float)
    kw = dict(tau=1.0, beta=1.0, batch_size=4, max_steps=20, gtol=0.0)
    with pytest.warns(DeprecationWarning):
        old = approx.kldpo(X, y, normalizer="micro-batch", **kw)
    new = approx.kldpo(X, y, normalizer="batch", **kw)
    acc = approx.kldpo(X, y, normalizer="accumulated", **kw)
    np.testing.assert_array_equal(old.theta, new.theta)
    np.testing.assert_array_equal(acc.theta, new.theta)
    res = approx.kldpo(X, y, normalizer="mlmc", levels=3, **kw)
    assert np.all(np.isfinite(res.theta))
    with pytest.raises(InputError, match="'normalizer' parameter of kldpo"):
        approx.kldpo(X, y, normalizer="global", **kw)
    with pytest.raises(InputError, match="mlmc"):
        approx.kldpo(X, y, variant="clipped", normalizer="mlmc", **kw)
    with pytest.raises(InputError, match="'tau' parameter of kldpo"):
        approx.kldpo(X, y, tau="1", beta=1.0)


# ------------------------------------------------------------- chi-square DPO (issue 25.6)
@pytest.mark.parametrize("rho, weighted", [(0.05, False), (0.02, True)])
def test_chi2dpo_full_batch_is_exact_chi2dpo(rho, weighted):
    """Full batch, the reweighting algorithm's fixed point is the exact conic answer
    (exact.chi2dpo, a second-order-cone program), and its weights are the exact worst case."""
    from rdpo_theory import exact
    from rdpo_theory.losses import chi2_divergence

    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 3))
    y = (rng.random(80) < 1 / (1 + np.exp(-X @ [1.0, -0.5, 0.3]))).astype(float)
    w = rng.uniform(0.5, 2.0, size=80) if weighted else np.ones(80)
    w /= w.sum()
    ex = exact.chi2dpo(X, y, rho=rho, beta=1.0, weights=w)
    ap = approx.chi2dpo(X, y, rho=rho, beta=1.0, weights=w, max_steps=4000, gtol=1e-10)
    assert ap.status == "converged"
    np.testing.assert_allclose(ap.theta, ex.theta, atol=1e-6)
    np.testing.assert_allclose(ap.weights, ex.worst_case, atol=1e-5)
    assert ap.implied_rho == pytest.approx(rho, rel=1e-6)  # the ball binds here
    assert chi2_divergence(ap.weights, w) == pytest.approx(rho, rel=1e-6)


def test_chi2_mlmc_gradient_is_unbiased_for_the_deepest_group():
    """E[grad of the multilevel surrogate] with the chi-square batch loss equals the expected
    batch gradient at groups of B 2^(L+1) i.i.d. pairs, both by enumerating every ordered
    tuple (an independent sum, not the surrogate's own telescoping)."""
    import itertools

    import torch

    from rdpo_theory.approx import mlmc_objective
    from rdpo_theory.torch.baselines import chi2_objective
    from rdpo_theory.torch.losses import dpo_pair_losses

    rng = np.random.default_rng(0)
    X, y, p = rng.normal(size=(3, 2)), np.array([1.0, 0.0, 1.0]), np.array([0.5, 0.3, 0.2])
    sb = torch.tensor(PreferenceData(X, y, p).signed_labels)
    Xt = torch.tensor(X)
    rho, B, levels, th = 0.3, 1, 1, np.array([0.3, -0.7])

    def loss_of(q):
        return chi2_objective(q, rho=rho)[0]

    def grad(idx, fn):
        theta = torch.tensor(th, requires_grad=True)
        per = dpo_pair_losses(sb[idx] * (Xt[idx] @ theta))
        return torch.autograd.grad(fn(per), theta)[0].numpy()

    pj = 0.5 ** np.arange(levels + 1) / (0.5 ** np.arange(levels + 1)).sum()
    expected = np.zeros(2)
    for j in range(levels + 1):
        for t in itertools.product(range(3), repeat=B * 2 ** (j + 1)):
            g = grad(list(t), lambda q: mlmc_objective(q, loss_of, B, levels))
            expected += pj[j] * np.prod(p[list(t)]) * g
    deep = B * 2 ** (levels + 1)
    ref = sum(
        np.prod(p[list(t)]) * grad(list(t), loss_of)
        for t in itertools.product(range(3), repeat=deep)
    )
    np.testing.assert_allclose(expected, ref, atol=1e-12)
    # and the batch gradient at B is another one: the multilevel correction matters here
    shallow = sum(np.prod(p[[i]]) * grad([i], loss_of) for i in range(3))
    assert np.linalg.norm(shallow - ref) > 1e-3


def test_chi2dpo_normalizers():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(20, 2)), (rng.random(20) < 0.6).astype(float)
    kw = dict(rho=0.2, beta=1.0, batch_size=4, max_steps=20, gtol=0.0)
    a = approx.chi2dpo(X, y, normalizer="batch", **kw)
    b = approx.chi2dpo(X, y, normalizer="accumulated", **kw)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert np.all(np.isfinite(approx.chi2dpo(X, y, normalizer="mlmc", levels=2, **kw).theta))
    with pytest.raises(InputError, match="'normalizer' parameter of chi2dpo"):
        approx.chi2dpo(X, y, normalizer="running", **kw)
    with pytest.raises(InputError, match="'rho' parameter of chi2dpo"):
        approx.chi2dpo(X, y, rho=-1.0, beta=1.0)
