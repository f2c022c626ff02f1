"""Multilevel Monte Carlo (approx.kldpo normalizer="mlmc") against the running normaliser on
the minibatch study's world (KL radius 0.01, tau = lam*, B = 4): fixed-point bias, gradient
variance per pair evaluated at the exact optimum, and cost per SGD step (measured).
Writes ``mlmc.csv``. Run: ``python experiments/minibatch_mlmc/run.py``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from variance import grad_variance_row  # this folder (the script directory is on sys.path)

from rdpo_theory import approx
from rdpo_theory.approx import mlmc_objective, mlmc_sampler
from rdpo_theory.minibatch import Estimator, fixed_point
from rdpo_theory.studies.approx_vs_exact import exact_kl
from rdpo_theory.studies.minibatch import MinibatchConfig, make_data
from rdpo_theory.torch.losses import dpo_pair_losses, kldpo_objective
from rdpo_theory.torch.normalizers import running_kldpo_objective

B, LEVELS, DRAWS, STEPS = 4, 5, 4000, 3000


def main():
    data, world, *_ = make_data(MinibatchConfig())
    beta = world.beta
    ex = exact_kl(data, 0.01, beta)
    tau = float(ex.dual)
    X = torch.tensor(data.X)
    sb = torch.tensor(data.signed_labels * beta)
    rng = np.random.default_rng(0)

    def grad_of(idx, loss_fn):
        th = torch.tensor(ex.theta, requires_grad=True)
        per = dpo_pair_losses(sb[idx] * (X[idx] @ th))
        return torch.autograd.grad(loss_fn(per), th)[0].numpy()

    def kl(per):
        return kldpo_objective(per, tau=tau, check=False)[0]

    cdf = np.cumsum(data.weights)
    from rdpo_theory.losses import dpo_losses

    l = dpo_losses(ex.theta, data, beta=beta)
    logz = float(np.log(data.weights @ np.exp(l / tau)))
    rows = []
    # gradient variance per pair, at the exact optimum
    mlmc = mlmc_sampler(LEVELS)(data.weights, B, rng)
    rows.append(
        grad_variance_row(
            "mlmc",
            mlmc,
            lambda idx: grad_of(idx, lambda p: mlmc_objective(p, kl, B, LEVELS)),
            DRAWS,
        )
    )

    def iid_batches():
        while True:
            yield np.minimum(np.searchsorted(cdf, rng.random(B), side="right"), data.n - 1)

    for name, fn in (
        (
            "running (Z exact)",
            lambda p: running_kldpo_objective(p, tau=tau, log_partition=torch.tensor(logz))[0],
        ),
        ("batch", kl),
    ):
        rows.append(
            grad_variance_row(name, iid_batches(), lambda idx, fn=fn: grad_of(idx, fn), DRAWS)
        )
    # fixed-point bias: mlmc's expected gradient is the batch one at B 2^(LEVELS+1)
    big = B * 2 ** (LEVELS + 1)
    for name, est, size in (
        ("mlmc", Estimator("kldpo", "normalized", tau), big),
        ("running", Estimator("kldpo", "normalized", tau, "running"), B),
        ("batch", Estimator("kldpo", "normalized", tau), B),
    ):
        fp = fixed_point(
            data, est, beta=beta, batch_size=size, batches=200, sets=3, theta0=ex.theta
        )
        rows.append(
            dict(
                normalizer=name,
                quantity="fixed_point_to_exact",
                value=float(np.linalg.norm(fp.theta - ex.theta)),
                se=float(np.linalg.norm(fp.theta_se)),
                group=size,
            )
        )
    # cost per SGD step, measured
    for nz in ("batch", "running", "mlmc"):
        approx.kldpo(
            data,
            tau=tau,
            beta=beta,
            batch_size=B,
            normalizer=nz,
            optimizer="sgd",
            lr=0.02,
            max_steps=50,
            gtol=0.0,
        )
        t = time.perf_counter()
        res = approx.kldpo(
            data,
            tau=tau,
            beta=beta,
            batch_size=B,
            normalizer=nz,
            levels=LEVELS,
            optimizer="sgd",
            lr=0.02,
            max_steps=STEPS,
            gtol=0.0,
            theta0=ex.theta,
        )
        rows.append(
            dict(
                normalizer=nz,
                quantity="cpu_seconds_per_step",
                value=res.extras["cpu_seconds"] / STEPS,
                wall=(time.perf_counter() - t) / STEPS,
                sgd_to_exact=float(np.linalg.norm(res.theta - ex.theta)),
            )
        )
    pd.DataFrame(rows).to_csv(Path(__file__).parent / "mlmc.csv", index=False, float_format="%.5g")
    print(pd.DataFrame(rows).to_string())


if __name__ == "__main__":
    main()
