"""Per-pair data weights and online group weights in the torch losses: a pair of weight k is k
copies of it (values and gradients), weighted means against numpy, clear errors."""

import numpy as np
import pytest
import torch

from rdpo_theory import InputError
from rdpo_theory import losses as NL
from rdpo_theory.torch import baselines as TB
from rdpo_theory.torch import losses as TL

COUNTS = np.array([2, 1, 3, 1, 1, 2, 1])  # integer weights = repeat counts


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(COUNTS)
    theta = torch.randn(3, generator=g, dtype=torch.float64)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    ref = torch.randn(n, generator=g, dtype=torch.float64)
    return theta, X, ref


def _call(name, kw, theta, X, ref, weights=None, groups=None):
    th = theta.clone().requires_grad_()
    Xg = X.clone().requires_grad_()
    z = torch.zeros(X.shape[0], dtype=torch.float64)
    fn = getattr(TL, f"{name}_loss", None) or getattr(TB, f"{name}_loss")
    kw = dict(kw)
    if name == "wdpo":
        kw["inputs"] = Xg
    if name == "group_dpo":
        kw["groups"] = groups
    if weights is not None:
        kw["weights"] = torch.as_tensor(weights, dtype=torch.float64)
    out = fn(Xg @ th, z, ref, z, beta=0.7, **kw)
    (g,) = torch.autograd.grad(out.loss, th)
    return out, g


CASES = [
    ("dpo", {}),
    ("kldpo", {"tau": 0.4}),
    ("kldpo", {"tau": 0.4, "variant": "clipped", "clip": 2.0}),
    ("wdpo", {"rho0": 0.3}),
    ("wdpo", {"rho0": 0.3, "variant": "per-pair"}),
    ("cdpo", {"eps": 0.1}),
    ("rdpo", {"eps": 0.1}),
    ("ipo", {}),
    ("drdpo", {"beta_prime": 0.5}),
    ("chi2dpo", {"rho": 0.2}),
    ("cvardpo", {"level": 0.3}),
    ("group_dpo", {"group_step": 0.5, "n_groups": 3, "group_weights": [0.2, 0.3, 0.5]}),
]


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_weighted_rows_equal_repeated_rows(name, kw):
    theta, X, ref = _data()
    groups = np.array([0, 1, 2, 0, 1, 2, 0])
    rep = np.repeat(np.arange(len(COUNTS)), COUNTS)
    for scale in (1.0, 0.25):  # only relative weights matter
        w_out, w_grad = _call(name, kw, theta, X, ref, COUNTS * scale, torch.as_tensor(groups))
        r_out, r_grad = _call(name, kw, theta, X[rep], ref[rep], None, torch.as_tensor(groups[rep]))
        assert float(w_out.loss) == pytest.approx(float(r_out.loss), rel=1e-12)
        np.testing.assert_allclose(w_grad.numpy(), r_grad.numpy(), rtol=1e-10, atol=1e-14)
        if name == "group_dpo":
            np.testing.assert_allclose(w_out.group_weights, r_out.group_weights, rtol=1e-12)


def test_weighted_values_against_numpy():
    theta, X, ref = _data(1)
    w = np.array([0.5, 2.0, 0.0, 1.0, 3.0, 0.5, 1.0])
    p = w / w.sum()
    m = 0.7 * (X @ theta - ref).numpy()
    l = NL.dpo_loss(m)
    out, _ = _call("dpo", {}, theta, X, ref, w)
    assert float(out.loss) == pytest.approx(p @ l, rel=1e-12)
    out, _ = _call("kldpo", {"tau": 0.4}, theta, X, ref, w)
    r = NL.kl_weights(l, tau=0.4, base_weights=p)
    assert float(out.loss) == pytest.approx(p @ (r * l), rel=1e-12)
    out, _ = _call("chi2dpo", {"rho": 0.2}, theta, X, ref, w)
    assert float(out.loss) == pytest.approx(NL.chi2_objective(l, rho=0.2, weights=p), rel=1e-12)
    out, _ = _call("cvardpo", {"level": 0.3}, theta, X, ref, w)
    assert float(out.loss) == pytest.approx(NL.cvar_objective(l, level=0.3, weights=p), rel=1e-12)


def test_online_group_weights_follow_exponentiated_gradient():
    theta, X, ref = _data(2)
    groups = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    alpha = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)  # group 2 absent from the batch
    out, _ = _call(
        "group_dpo",
        {"group_step": 2.0, "n_groups": 3, "group_weights": alpha},
        theta,
        X,
        ref,
        groups=groups,
    )
    l = NL.dpo_loss(0.7 * (X @ theta - ref).numpy())
    Lg = np.array([l[groups == 0].mean(), l[groups == 1].mean(), 0.0])
    z = np.log(alpha.numpy()) + 2.0 * Lg
    a = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(out.group_weights.numpy(), a, rtol=1e-12)
    assert float(out.loss) == pytest.approx(a[0] * Lg[0] + a[1] * Lg[1], rel=1e-12)
    assert float(out.stats["worst_group_loss"]) == pytest.approx(Lg[:2].max())


def test_bad_weights_are_named():
    theta, X, ref = _data()
    for bad, msg in (
        ([1, -1, 1, 1, 1, 1, 1], "weights must be finite and >= 0"),
        ([1, np.nan, 1, 1, 1, 1, 1], "weights must be finite"),
        ([0] * 7, "all 0"),
        ([1, 1], "shape"),
    ):
        with pytest.raises(InputError, match=msg):
            _call("dpo", {}, theta, X, ref, bad)
    with pytest.raises(InputError, match="groups must be"):
        _call(
            "group_dpo",
            {"group_step": 0.1, "n_groups": 2, "group_weights": [0.5, 0.5]},
            theta,
            X,
            ref,
            groups=torch.tensor([0, 1, 2, 0, 1, 0, 1]),
        )
