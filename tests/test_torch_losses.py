"""Torch losses against the numpy mirrors, closed forms and finite differences."""

import numpy as np
import pytest
import torch

from rdpo_theory import InputError
from rdpo_theory import losses as NL
from rdpo_theory.torch import losses as TL


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _loglinear(seed=0, n=12, d=3, beta=0.7):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = rng.integers(0, 2, size=n).astype(float)
    theta = rng.normal(size=d)
    theta_ref = 0.3 * rng.normal(size=d)
    return X, y, theta, theta_ref, beta


def _logps_from_loglinear(X, y, theta, theta_ref, *, requires_grad=False):
    """Four log-prob tensors whose DPO margin is ``sy * beta * (theta - theta_ref) . x``."""
    Xt = torch.tensor(X, requires_grad=requires_grad)
    sy = torch.tensor(2 * y - 1)
    pc = sy * (Xt @ torch.tensor(theta))
    rc = sy * (Xt @ torch.tensor(theta_ref))
    zero = torch.zeros(len(y))
    return Xt, (pc, zero, rc, zero)


def test_dpo_matches_numpy_on_margins():
    X, y, th, th0, beta = _loglinear()
    _, lp = _logps_from_loglinear(X, y, th, th0)
    out = TL.dpo_loss(*lp, beta=beta)
    m = NL.margins(th, X, y, beta=beta, theta_ref=th0)
    np.testing.assert_allclose(out.margins.numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(out.per_pair.numpy(), NL.dpo_loss(m), rtol=1e-12)
    assert float(out.loss) == pytest.approx(NL.dpo_loss(m).mean(), rel=1e-12)
    assert float(out.stats["accuracy"]) == pytest.approx(np.mean(m > 0))


def test_dpo_gradient_matches_numpy_risk_gradient():
    X, y, th, th0, beta = _loglinear(1)
    theta = torch.tensor(th, requires_grad=True)
    sy = torch.tensor(2 * y - 1)
    Xt = torch.tensor(X)
    z = torch.zeros(len(y))
    out = TL.dpo_loss(sy * (Xt @ theta), z, sy * (Xt @ torch.tensor(th0)), z, beta=beta)
    out.loss.backward()
    from rdpo_theory import PreferenceData

    g = NL.dpo_risk_grad(th, PreferenceData(X, y), beta=beta, theta_ref=th0)
    np.testing.assert_allclose(theta.grad.numpy(), g, rtol=1e-10)


@pytest.mark.parametrize("variant", ["normalized", "clipped"])
def test_kldpo_matches_numpy(variant):
    X, y, th, th0, beta = _loglinear(2, n=30)
    _, lp = _logps_from_loglinear(X, y, 3 * th, th0)
    out = TL.kldpo_loss(*lp, beta=beta, tau=0.3, variant=variant, clip=2.0)
    l = NL.dpo_loss(NL.margins(3 * th, X, y, beta=beta, theta_ref=th0))
    w = NL.kl_weights(l, tau=0.3, variant=variant, clip=2.0)
    np.testing.assert_allclose(out.weights.numpy(), w, rtol=1e-6)
    assert float(out.loss) == pytest.approx(np.mean(w * l), rel=1e-6)
    if variant == "clipped":
        assert w.max() == pytest.approx(2.0)  # the clip is active in this example
    q = w / w.sum()
    assert float(out.stats["weight_max"]) == pytest.approx(q.max(), rel=1e-6)
    ent = -(q * np.log(q)).sum()
    assert float(out.stats["weight_entropy"]) == pytest.approx(ent, rel=1e-6)
    assert float(out.stats["kl_radius"]) == pytest.approx(np.log(len(q)) - ent, rel=1e-5)


def test_normalized_kldpo_gradient_is_tilted_risk_gradient():
    X, y, th, th0, beta = _loglinear(3, n=25)
    tau = 0.4
    theta = torch.tensor(2 * th, requires_grad=True)
    sy, Xt, z = torch.tensor(2 * y - 1), torch.tensor(X), torch.zeros(len(y))
    out = TL.kldpo_loss(sy * (Xt @ theta), z, sy * (Xt @ torch.tensor(th0)), z, beta=beta, tau=tau)
    (g,) = torch.autograd.grad(out.loss, theta)
    # reference: autograd of tau * log mean exp(l / tau), computed independently
    theta2 = torch.tensor(2 * th, requires_grad=True)
    m = sy * beta * (Xt @ (theta2 - torch.tensor(th0)))
    l = torch.nn.functional.softplus(-m)
    tilted = tau * (torch.logsumexp(l / tau, 0) - np.log(len(y)))
    (g_ref,) = torch.autograd.grad(tilted, theta2)
    np.testing.assert_allclose(g.numpy(), g_ref.numpy(), rtol=1e-10)
    assert float(tilted) == pytest.approx(NL.kl_tilted_value(l.detach().numpy(), tau=tau))


def test_kldpo_weights_are_detached_and_tau_limits():
    l = torch.tensor([0.1, 0.5, 2.0], requires_grad=True)
    w = TL.kl_weights(l, tau=1.0)
    assert not w.requires_grad and w.mean().item() == pytest.approx(1.0)
    np.testing.assert_allclose(TL.kl_weights(l, tau=1e6).numpy(), 1.0, atol=1e-5)
    w_small = TL.kl_weights(l, tau=1e-3)
    assert w_small[2].item() == pytest.approx(3.0)  # all mass on the worst pair


@pytest.mark.parametrize("variant", ["sqrt-mean", "per-pair"])
def test_wdpo_matches_numpy_loglinear(variant):
    X, y, th, th0, beta = _loglinear(4, n=15)
    Xt, lp = _logps_from_loglinear(X, y, th, th0, requires_grad=True)
    out = TL.wdpo_loss(*lp, beta=beta, rho0=0.8, inputs=Xt, variant=variant)
    sq = NL.wdpo_input_grad_sq_norms(th, X, y, beta=beta, theta_ref=th0)
    np.testing.assert_allclose(out.penalty.detach().numpy(), sq, rtol=1e-10)
    l = NL.dpo_loss(NL.margins(th, X, y, beta=beta, theta_ref=th0))
    ref = NL.wdpo_objective(l, sq, rho0=0.8, variant=variant)
    assert float(out.loss) == pytest.approx(ref, rel=1e-10)
    expect_pen = 0.8 * (np.sqrt(sq.mean()) if variant == "sqrt-mean" else sq.mean())
    assert float(out.stats["penalty"]) == pytest.approx(expect_pen, rel=1e-10)


def _nonlinear_per_pair(params, emb_c, emb_r, beta):
    """A small nonlinear 'model': log-probs from embeddings through tanh layers."""
    W, v = params
    pc = (torch.tanh(emb_c @ W) @ v).sum(dim=1)
    pr = (torch.tanh(emb_r @ W) @ v).sum(dim=1)
    z = torch.zeros_like(pc)
    return pc, pr, z + 0.1, z - 0.2


def test_wdpo_penalty_equals_finite_differences():
    torch.manual_seed(0)
    B, T, H = 4, 3, 5
    W, v = torch.randn(H, H), torch.randn(H)
    emb_c = torch.randn(B, T, H, requires_grad=True)
    emb_r = torch.randn(B, T, H, requires_grad=True)
    out = TL.wdpo_loss(
        *_nonlinear_per_pair((W, v), emb_c, emb_r, 0.5),
        beta=0.5,
        rho0=1.0,
        inputs=(emb_c, emb_r),
    )
    eps = 1e-6
    for i in range(B):
        g2 = 0.0
        for E in (emb_c, emb_r):
            base = E.detach().clone()
            for idx in np.ndindex(T, H):
                Ep, Em = base.clone(), base.clone()
                Ep[(i, *idx)] += eps
                Em[(i, *idx)] -= eps

                def li(Enew, E=E, i=i):
                    ec = Enew if E is emb_c else emb_c.detach()
                    er = Enew if E is emb_r else emb_r.detach()
                    lp = _nonlinear_per_pair((W, v), ec, er, 0.5)
                    return TL.dpo_pair_losses(TL.dpo_margins(*lp, beta=0.5))[i].item()

                g2 += ((li(Ep) - li(Em)) / (2 * eps)) ** 2
        assert out.penalty[i].item() == pytest.approx(g2, rel=1e-6)


def test_wdpo_penalty_gradient_equals_finite_differences():
    """The double backward: d/dW of the WDPO objective matches central differences."""
    torch.manual_seed(1)
    B, T, H = 3, 2, 4
    W0, v = torch.randn(H, H), torch.randn(H)
    emb_c, emb_r = torch.randn(B, T, H), torch.randn(B, T, H)

    def objective(W, variant):
        ec, er = emb_c.clone().requires_grad_(), emb_r.clone().requires_grad_()
        lp = _nonlinear_per_pair((W, v), ec, er, 0.5)
        return TL.wdpo_loss(*lp, beta=0.5, rho0=0.7, inputs=(ec, er), variant=variant).loss

    for variant in ("sqrt-mean", "per-pair"):
        W = W0.clone().requires_grad_()
        (g,) = torch.autograd.grad(objective(W, variant), W)
        eps = 1e-6
        for idx in [(0, 0), (1, 2), (3, 1)]:
            Wp, Wm = W0.clone(), W0.clone()
            Wp[idx] += eps
            Wm[idx] -= eps
            fd = (objective(Wp, variant).item() - objective(Wm, variant).item()) / (2 * eps)
            assert g[idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("variant", ["sqrt-mean", "per-pair"])
def test_wdpo_penalty_coefficients_closed_form_and_chain_rule(variant):
    """c_i = d penalty / d ||g_i||^2: rho0 / B (per-pair), rho0 / (2 B sqrt(S)) (sqrt-mean);
    sum_i c_i grad ||g_i||^2 is the penalty gradient (log-linear data)."""
    X, y, th, th0, beta = _loglinear(seed=3)
    Xt, logps = _logps_from_loglinear(X, y, th, th0, requires_grad=True)
    rho0, B = 0.3, len(y)
    theta = torch.tensor(th, requires_grad=True)
    sy = torch.tensor(2 * y - 1)
    pc = sy * (Xt @ theta)
    per = TL.dpo_pair_losses(TL.dpo_margins(pc, *logps[1:], beta=beta))
    sq = TL.input_grad_sq_norms(per, Xt)
    c = TL.wdpo_penalty_coefficients(sq, rho0=rho0, variant=variant)
    S = float(sq.detach().mean())
    expect = rho0 / B if variant == "per-pair" else rho0 / (2 * B * np.sqrt(S))
    np.testing.assert_allclose(c.numpy(), expect, rtol=1e-12)
    assert not c.requires_grad
    loss, _ = TL.wdpo_objective(per, Xt, rho0=rho0, variant=variant, sq_norms=sq)
    pen = loss - per.mean()
    (g_pen,) = torch.autograd.grad(pen, theta, retain_graph=True)
    (g_chain,) = torch.autograd.grad((c * sq).sum(), theta)
    np.testing.assert_allclose(g_chain.numpy(), g_pen.numpy(), rtol=1e-10, atol=1e-14)
    with pytest.raises(InputError, match="variant"):
        TL.wdpo_penalty_coefficients(sq, rho0=rho0, variant="sum")


def test_rho0_zero_is_dpo():
    X, y, th, th0, beta = _loglinear(5)
    Xt, lp = _logps_from_loglinear(X, y, th, th0, requires_grad=True)
    w = TL.wdpo_loss(*lp, beta=beta, rho0=0.0, inputs=Xt)
    assert w.loss.item() == pytest.approx(TL.dpo_loss(*lp, beta=beta).loss.item(), rel=1e-12)


# ---------------------------------------------------------------------------- bad arguments
def _lp(B=4):
    return [torch.randn(B) for _ in range(4)]


def test_mismatched_shapes():
    lp = _lp()
    lp[2] = torch.randn(5)
    with pytest.raises(InputError, match="reference_chosen_logps"):
        TL.dpo_loss(*lp, beta=0.1)
    with pytest.raises(InputError, match="shape \\(B,\\)"):
        TL.dpo_loss(torch.randn(2, 2), *_lp(2)[1:], beta=0.1)
    with pytest.raises(InputError, match="torch.Tensor"):
        TL.dpo_loss([1.0], *_lp(1)[1:], beta=0.1)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_tau(tau):
    with pytest.raises(InputError, match="tau"):
        TL.kldpo_loss(*_lp(), beta=0.1, tau=tau)


def test_bad_beta_variant_clip():
    with pytest.raises(InputError, match="beta"):
        TL.dpo_loss(*_lp(), beta=0)
    with pytest.raises(InputError, match="variant"):
        TL.kldpo_loss(*_lp(), beta=0.1, tau=1.0, variant="softmax")
    with pytest.raises(InputError, match="clip"):
        TL.kldpo_loss(*_lp(), beta=0.1, tau=1.0, variant="clipped", clip=0)


def test_bad_rho0_and_missing_embeddings():
    x = torch.randn(4, 3, requires_grad=True)
    lp = [x.sum(1), torch.zeros(4), torch.zeros(4), torch.zeros(4)]
    with pytest.raises(InputError, match="rho0"):
        TL.wdpo_loss(*lp, beta=0.1, rho0=-1.0, inputs=x)
    with pytest.raises(InputError, match="inputs"):
        TL.wdpo_loss(*lp, beta=0.1, rho0=1.0, inputs=None)
    with pytest.raises(InputError, match="requires_grad"):
        TL.wdpo_loss(*lp, beta=0.1, rho0=1.0, inputs=torch.randn(4, 3))
    with pytest.raises(InputError, match="leading dimension"):
        TL.wdpo_loss(*lp, beta=0.1, rho0=1.0, inputs=torch.randn(5, 3, requires_grad=True))
    with pytest.raises(InputError, match="does not depend"):
        TL.wdpo_loss(*lp, beta=0.1, rho0=1.0, inputs=torch.randn(4, 3, requires_grad=True))
    with pytest.raises(InputError, match="variant"):
        TL.wdpo_loss(*lp, beta=0.1, rho0=1.0, inputs=x, variant="sqrt")


def test_numpy_mirror_bad_arguments():
    with pytest.raises(InputError, match="tau"):
        NL.kl_weights([1.0, 2.0], tau=0)
    with pytest.raises(InputError, match="rho0"):
        NL.wdpo_objective([1.0], [1.0], rho0=-0.1)
    with pytest.raises(InputError, match="sq_norms"):
        NL.wdpo_objective([1.0, 2.0], [1.0], rho0=0.1)


@pytest.mark.parametrize("variant", ["normalized", "clipped"])
def test_kl_weight_fast_paths_equal_reference_formula(variant):
    """Uniform weights use softmax (no centring) or one pass (not distributed); both equal the
    defining formula and the weighted path at uniform base weights."""
    g = torch.Generator().manual_seed(5)
    per = (3 * torch.rand(257, generator=g, dtype=torch.float64)).requires_grad_(True)
    tau, clip = 0.25, 4.0
    l = per.detach()
    z = (l - l.mean()) / tau
    if variant == "normalized":
        ref = l.numel() * torch.exp(z - torch.logsumexp(z, 0))
    else:
        ref = torch.exp(z).clamp(max=clip)
    w = TL.kl_weights(per, tau=tau, variant=variant, clip=clip)
    u = torch.full_like(l, 1 / l.numel())
    wu = TL.kl_weights(per, tau=tau, variant=variant, clip=clip, weights=u)
    torch.testing.assert_close(w, ref, rtol=1e-13, atol=0)
    torch.testing.assert_close(wu, ref, rtol=1e-13, atol=0)
    loss, w2 = TL.kldpo_objective(per, tau=tau, variant=variant, clip=clip)
    lu, _ = TL.kldpo_objective(per, tau=tau, variant=variant, clip=clip, weights=u)
    (gl,) = torch.autograd.grad(loss, per)
    (gu,) = torch.autograd.grad(lu, per)
    torch.testing.assert_close(loss, (ref * l).mean(), rtol=1e-14, atol=0)
    torch.testing.assert_close(gl, ref / l.numel(), rtol=1e-14, atol=0)  # no grad through w
    torch.testing.assert_close(gu, gl, rtol=1e-13, atol=0)
    out = TL.kldpo_loss(
        per,
        torch.zeros_like(l),
        torch.zeros_like(l),
        torch.zeros_like(l),
        beta=1.0,
        tau=tau,
        variant=variant,
        clip=clip,
    )
    assert out.weights is not None and out.stats["kl_radius"] >= 0
