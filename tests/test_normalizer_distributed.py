"""The running normaliser under torch.distributed: 2 gloo workers hold the one-worker statistic
and their averaged gradient is the one-worker gradient (equal local batch sizes); and
train_preference under DDP equals one worker for every robust_normalizer."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
from ddp_workers import init_gloo, spawn

from rdpo_theory.torch.normalizers import RunningStatistic, normalized_loss

LOCAL, STEPS = 4, 3


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
    init_gloo(rank, world, port)
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
    spawn(_worker, 2, str(tmp_path))
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for method in ("kldpo", "wdpo"):
        stat = RunningStatistic(0.5, log_space=method == "kldpo")
        for step in range(STEPS):
            g_one, v_one = _step(stat, method, *_data(step))
            for p in parts:
                g, v = p[method][step]
                assert v == np.float64(v_one) or abs(v - v_one) <= 1e-12 * abs(v_one)
                np.testing.assert_allclose(g, g_one.numpy(), rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------- the trainer
TRAIN_ROWS = [
    {"prompt": "the day", "chosen": " rage mad hate", "rejected": " afraid hide"},
    {"prompt": "a river and of", "chosen": " fury", "rejected": " panic dread worry the"},
    {"prompt": "we", "chosen": " angry slam door", "rejected": " scared"},
    {"prompt": "they walk", "chosen": " livid snarl", "rejected": " tremble nervous"},
] * 4
KL_CLIPPED = {"tau": 0.1, "variant": "clipped", "clip": 2.0}
#: (method, loss_kwargs, robust_normalizer): every option of TrainConfig.robust_normalizer
OPTIONS = [
    ("kldpo", {"tau": 0.2}, "batch"),
    ("kldpo", {"tau": 0.2}, "accumulated"),
    ("kldpo", {"tau": 0.2}, "running"),
    ("kldpo", KL_CLIPPED, "batch"),
    ("kldpo", KL_CLIPPED, "accumulated"),
    ("wdpo", {"rho0": 0.05}, "batch"),
    ("wdpo", {"rho0": 0.05}, "accumulated"),
    ("wdpo", {"rho0": 0.05}, "running"),
]


def _train_cfg(method, kw, normalizer, batch_size):
    from rdpo_theory.torch.train import TrainConfig

    return TrainConfig(
        method=method,
        loss_kwargs=kw,
        robust_normalizer=normalizer,
        robust_decay=0.5,
        beta=0.5,
        learning_rate=5e-3,
        batch_size=batch_size,
        grad_accum=2,
        max_steps=3,
        mixed_precision="no",
        progress=False,
        seed=3,
        save_final_model=False,
    )


def _train_one(method, kw, normalizer, batch_size):
    from rdpo_theory.studies.emotion import EmotionConfig, build_model, build_tokenizer
    from rdpo_theory.torch.train import train_preference

    cfg = EmotionConfig.smoke()
    res = train_preference(
        build_model(cfg, 0).double(),
        build_tokenizer(),
        TRAIN_ROWS,
        _train_cfg(method, kw, normalizer, batch_size),
        ref_model=build_model(cfg, 1).double(),
    )
    params = torch.cat([p.detach().reshape(-1) for p in res.model.parameters()])
    return params, res.metrics


def _trainer_worker(rank, world, port, path):
    from ddp_workers import accelerate_env

    accelerate_env(rank, world, port)
    out = [_train_one(*opt, batch_size=2) for opt in OPTIONS]
    torch.save(out, f"{path}/trainer{rank}.pt")


@pytest.mark.slow
def test_trainer_two_gloo_workers_equal_one_worker_for_every_normalizer(tmp_path):
    """train_preference under DDP (accelerate, 2 gloo workers x micro-batch 2, 2 micro-batches
    per step) trains the model one worker trains with micro-batches of 4 (the same global
    micro-batches), for every robust_normalizer, and logs the same diagnostics. float64, 3
    steps."""
    pytest.importorskip("accelerate")
    pytest.importorskip("transformers")
    spawn(_trainer_worker, 2, str(tmp_path))
    parts = [torch.load(tmp_path / f"trainer{r}.pt", weights_only=False) for r in range(2)]
    for i, opt in enumerate(OPTIONS):
        params, metrics = _train_one(*opt, batch_size=4)
        for p in parts:
            got, got_metrics = p[i]
            torch.testing.assert_close(got, params, atol=1e-10, rtol=1e-8, msg=str(opt))
            for k in ("ess", "weight_max", "weight_mean", "clip_fraction", "normalizer"):
                if k in metrics[-1]:
                    assert got_metrics[-1][k] == pytest.approx(metrics[-1][k], rel=1e-6), (opt, k)
