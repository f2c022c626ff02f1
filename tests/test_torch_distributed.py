"""KLDPO under torch.distributed: 2 gloo workers on CPU give the one-worker weights."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
from ddp_workers import init_gloo, spawn

from rdpo_theory.torch import losses as TL

pytestmark = pytest.mark.slow  # spawns two gloo worker processes

N_PAIRS = (5, 3)  # unequal local batches: the all_gather must handle them


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(N_PAIRS)
    theta = torch.randn(3, generator=g, dtype=torch.float64)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    ref = torch.randn(n, generator=g, dtype=torch.float64)
    return theta, X, ref


def _losses(theta, X, ref, variant):
    z = torch.zeros(X.shape[0], dtype=torch.float64)
    return TL.kldpo_loss(X @ theta, z, ref, z, beta=0.5, tau=0.3, variant=variant, clip=3.0)


def _worker(rank, world, port, path):
    init_gloo(rank, world, port)
    try:
        theta, X, ref = _batch()
        lo = sum(N_PAIRS[:rank])
        sl = slice(lo, lo + N_PAIRS[rank])
        res = {}
        for variant in TL.KL_VARIANTS:
            th = theta.clone().requires_grad_()
            out = _losses(th, X[sl], ref[sl], variant)
            (g,) = torch.autograd.grad(out.loss * N_PAIRS[rank], th)  # sum over local pairs
            dist.all_reduce(g)  # the data-parallel sum of gradients
            res[variant] = dict(
                weights=out.weights.numpy(),
                grad=g.numpy() / sum(N_PAIRS),
                **{k: float(v) for k, v in out.stats.items() if k != "margin_mean"},
            )
        torch.save(res, f"{path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_match_one_worker(tmp_path):
    spawn(_worker, 2, str(tmp_path))
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    theta, X, ref = _batch()
    for variant in TL.KL_VARIANTS:
        th = theta.clone().requires_grad_()
        one = _losses(th, X, ref, variant)
        (g_one,) = torch.autograd.grad(one.loss, th)
        w = np.concatenate([p[variant]["weights"] for p in parts])
        np.testing.assert_allclose(w, one.weights.numpy(), rtol=1e-12)
        for p in parts:  # global statistics are identical on every worker
            np.testing.assert_allclose(p[variant]["grad"], g_one.numpy(), rtol=1e-10)
            for k in ("weight_entropy", "weight_max", "kl_radius"):
                assert p[variant][k] == pytest.approx(float(one.stats[k]), rel=1e-12)
    # the local mean loss alone would NOT match: the weights really are global
    loc = _losses(theta, X[: N_PAIRS[0]], ref[: N_PAIRS[0]], "normalized").weights.numpy()
    assert not np.allclose(loc, parts[0]["normalized"]["weights"])


# ---------------------------------------------------------------------------- data weights
WEIGHTED = [
    ("dpo", {}),
    ("kldpo", {"tau": 0.3}),
    ("kldpo", {"tau": 0.3, "variant": "clipped", "clip": 3.0}),
    ("chi2dpo", {"rho": 0.2}),
    ("cvardpo", {"level": 0.4}),
    ("group_dpo", {"group_step": 0.5, "n_groups": 3, "group_weights": [0.2, 0.3, 0.5]}),
]
WEIGHTS = torch.tensor([1.0, 0.5, 2.0, 0.0, 1.5, 3.0, 1.0, 0.25], dtype=torch.float64)
GROUPS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _weighted(name, kw, th, X, ref, w, g):
    from rdpo_theory.torch import baselines as TB

    z = torch.zeros(X.shape[0], dtype=torch.float64)
    fn = getattr(TL, f"{name}_loss", None) or getattr(TB, f"{name}_loss")
    kw = dict(kw, weights=w)
    if name == "group_dpo":
        kw["groups"] = g
    return fn(X @ th, z, ref, z, beta=0.5, **kw)


def _weighted_worker(rank, world, port, path):
    init_gloo(rank, world, port)
    try:
        theta, X, ref = _batch()
        lo = sum(N_PAIRS[:rank])
        sl = slice(lo, lo + N_PAIRS[rank])
        res = {}
        for i, (name, kw) in enumerate(WEIGHTED):
            th = theta.clone().requires_grad_()
            out = _weighted(name, kw, th, X[sl], ref[sl], WEIGHTS[sl], GROUPS[sl])
            (g,) = torch.autograd.grad(out.loss * N_PAIRS[rank], th)
            dist.all_reduce(g)
            res[i] = dict(
                grad=g.numpy() / sum(N_PAIRS),
                alpha=None if out.group_weights is None else out.group_weights.numpy(),
            )
        torch.save(res, f"{path}/w{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_weighted_losses_two_gloo_workers_match_one_worker(tmp_path):
    """Weighted DPO and KLDPO, chi-square and CVaR (losses gathered across workers) and online
    group-robust DPO (group sums all-reduced): the data-parallel gradient is the one-worker
    gradient and every worker holds the same group weights."""
    spawn(_weighted_worker, 2, str(tmp_path))
    parts = [torch.load(tmp_path / f"w{r}.pt", weights_only=False) for r in range(2)]
    theta, X, ref = _batch()
    for i, (name, kw) in enumerate(WEIGHTED):
        th = theta.clone().requires_grad_()
        one = _weighted(name, kw, th, X, ref, WEIGHTS, GROUPS)
        (g_one,) = torch.autograd.grad(one.loss, th)
        for p in parts:
            np.testing.assert_allclose(p[i]["grad"], g_one.numpy(), rtol=1e-10, err_msg=name)
            if one.group_weights is not None:
                np.testing.assert_allclose(p[i]["alpha"], one.group_weights.numpy(), rtol=1e-12)
