"""The running normaliser under torch.distributed: 2 gloo workers hold the one-worker statistic
and their averaged gradient is the one-worker gradient (equal local batch sizes)."""

import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rdpo_theory.torch.normalizers import RunningStatistic, normalized_loss

LOCAL, STEPS = 4, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(step):
    g = torch.Generator().manual_seed(100 + step)
    theta = torch.randn(3, generator=g, dtype=torch.float64)
    X = torch.randn(2 * LOCAL, 3, generator=g, dtype=torch.float64)
    ref = torch.randn(2 * LOCAL, generator=g, dtype=torch.float64)
    return theta, X, ref


def _step(stat, method, theta, X, ref):
    th = theta.clone().requires_grad_()
    z = torch.zeros(X.shape[0], dtype=torch.float64)
    if method == "kldpo":
        out = normalized_loss("kldpo", stat, X @ th, z, ref, z, beta=0.5, tau=0.4)
    else:
        x = X.clone().requires_grad_()
        out = normalized_loss("wdpo", stat, x @ th, z, ref, z, beta=0.5, rho0=0.3, inputs=x)
    (g,) = torch.autograd.grad(out.loss, th)
    return g, float(stat.value)


def _worker(rank, world, port, path):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        res = {}
        for method in ("kldpo", "wdpo"):
            stat = RunningStatistic(0.5, log_space=method == "kldpo")
            rows = []
            for step in range(STEPS):
                theta, X, ref = _data(step)
                sl = slice(rank * LOCAL, (rank + 1) * LOCAL)
                g, v = _step(stat, method, theta, X[sl], ref[sl])
                dist.all_reduce(g)
                rows.append((g.numpy() / world, v))
            res[method] = rows
        torch.save(res, f"{path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_hold_the_one_worker_statistic(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for method in ("kldpo", "wdpo"):
        stat = RunningStatistic(0.5, log_space=method == "kldpo")
        for step in range(STEPS):
            g_one, v_one = _step(stat, method, *_data(step))
            for p in parts:
                g, v = p[method][step]
                assert v == np.float64(v_one) or abs(v - v_one) <= 1e-12 * abs(v_one)
                np.testing.assert_allclose(g, g_one.numpy(), rtol=1e-10, atol=1e-14)
