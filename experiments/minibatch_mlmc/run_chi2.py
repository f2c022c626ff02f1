"""Multilevel Monte Carlo for chi-square DPO (approx.chi2dpo normalizer="mlmc") against the
batch estimator on the minibatch study's world (chi-square ball rho = 0.01, B = 4): fixed-point
bias against exact chi-square DPO, gradient variance per pair at the exact optimum, and cost
per SGD step (measured). Writes ``mlmc_chi2.csv`` with the ratios the docs quote. Run:
``python experiments/minibatch_mlmc/run_chi2.py`` (``--ratios``: only recompute the ratio rows
from the measured ones).

Fixed points are sample-average approximations: the minimiser of ``mean_k L_{b_k}(theta)``
over K fixed batches (convex: each L_b is a supremum of convex losses), eight independent
sets for a standard error. The multilevel estimator's expected gradient is the batch gradient
at groups of ``B 2^(levels+1)`` pairs (tested by enumeration in tests/test_approx.py), so its
fixed point is the batch fixed point at that group size."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize
from variance import grad_variance_row  # this folder (the script directory is on sys.path)

from rdpo_theory import approx, exact
from rdpo_theory.approx import mlmc_objective, mlmc_sampler
from rdpo_theory.studies.minibatch import MinibatchConfig, make_data
from rdpo_theory.torch.baselines import chi2_objective
from rdpo_theory.torch.losses import dpo_pair_losses

RHO, B, LEVELS, DRAWS, STEPS = 0.01, 4, 5, 4000, 3000
#: pairs per sample-average set, by group size (the large group's loop is over few batches)
PAIRS_PER_SET = {4: 16384, 256: 262144}
SETS = 8


def main():
    data, world, *_ = make_data(MinibatchConfig())
    beta = world.beta
    ex = exact.chi2dpo(data, rho=RHO, beta=beta)
    X = torch.tensor(data.X)
    sb = torch.tensor(data.signed_labels * beta)
    rng = np.random.default_rng(np.random.SeedSequence(2026))
    cdf = np.cumsum(data.weights)

    def draw(size):
        return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), data.n - 1)

    def batch_loss(per):
        return chi2_objective(per, rho=RHO)[0]

    def grad_of(idx, fn, theta=ex.theta):
        th = torch.tensor(theta, requires_grad=True)
        per = dpo_pair_losses(sb[idx] * (X[idx] @ th))
        return torch.autograd.grad(fn(per), th)[0].numpy()

    rows = []
    # gradient variance per pair evaluated, at the exact optimum
    mlmc = mlmc_sampler(LEVELS)(data.weights, B, rng)
    rows.append(
        grad_variance_row(
            "mlmc",
            mlmc,
            lambda idx: grad_of(idx, lambda p: mlmc_objective(p, batch_loss, B, LEVELS)),
            DRAWS,
        )
    )

    def iid_batches():
        while True:
            yield draw(B)

    rows.append(
        grad_variance_row("batch", iid_batches(), lambda idx: grad_of(idx, batch_loss), DRAWS)
    )

    # fixed points: sample-average minimisers at group B (batch) and B 2^(L+1) (mlmc's target)
    def saa_minimiser(size):
        batches = draw(PAIRS_PER_SET[size]).reshape(-1, size)
        Xb, sbb = X[batches], sb[batches]  # (K, size, d), (K, size)

        def fg(theta):
            th = torch.tensor(theta, requires_grad=True)
            per = dpo_pair_losses(sbb * (Xb @ th))
            total = sum(batch_loss(per[k]) for k in range(per.shape[0])) / per.shape[0]
            (gr,) = torch.autograd.grad(total, th)
            return float(total.detach()), gr.numpy()

        res = minimize(fg, ex.theta, jac=True, method="L-BFGS-B", options={"gtol": 1e-10})
        return res.x

    for name, size in (("mlmc", B * 2 ** (LEVELS + 1)), ("batch", B)):
        thetas = np.asarray([saa_minimiser(size) for _ in range(SETS)])
        dist = np.linalg.norm(thetas.mean(axis=0) - ex.theta)
        se = float(np.linalg.norm(thetas.std(axis=0, ddof=1) / np.sqrt(SETS)))
        rows.append(
            dict(
                normalizer=name,
                quantity="fixed_point_to_exact",
                value=float(dist),
                se=se,
                group=size,
            )
        )
    rows.append(
        dict(
            normalizer="exact",
            quantity="displacement_from_dpo",
            value=float(np.linalg.norm(ex.theta - exact.dpo(data, beta=beta).theta)),
        )
    )
    # cost per SGD step, measured (CPU time of approx.chi2dpo's loop)
    for nz in ("batch", "mlmc"):
        opts = dict(rho=RHO, beta=beta, batch_size=B, normalizer=nz, levels=LEVELS)
        approx.chi2dpo(data, **opts, optimizer="sgd", lr=0.02, max_steps=50, gtol=0.0)
        t = time.perf_counter()
        res = approx.chi2dpo(
            data, **opts, optimizer="sgd", lr=0.02, max_steps=STEPS, gtol=0.0, theta0=ex.theta
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
    write(with_ratios(pd.DataFrame(rows)))


def with_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """``table``'s measured rows plus the ratios the docs quote (quantity ``*_ratio`` and
    ``bias_fraction``, normalizer ``mlmc/batch`` or ``batch``), computed from them."""
    table = table[~table["quantity"].str.endswith(("_ratio", "_fraction"))]

    def value(normalizer, quantity):
        sel = table[(table["normalizer"] == normalizer) & (table["quantity"] == quantity)]
        return float(sel["value"].iloc[0])

    extra = [
        dict(
            normalizer="batch",
            quantity="bias_fraction",
            value=value("batch", "fixed_point_to_exact") / value("exact", "displacement_from_dpo"),
        ),
        dict(
            normalizer="mlmc/batch",
            quantity="grad_var_ratio",
            value=value("mlmc", "grad_var_per_pair") / value("batch", "grad_var_per_pair"),
        ),
        dict(
            normalizer="mlmc/batch",
            quantity="cpu_time_ratio",
            value=value("mlmc", "cpu_seconds_per_step") / value("batch", "cpu_seconds_per_step"),
        ),
    ]
    return pd.concat([table, pd.DataFrame(extra)], ignore_index=True)


def write(table: pd.DataFrame) -> None:
    table.to_csv(OUT, index=False, float_format="%.5g")
    print(table.to_string())


OUT = Path(__file__).parent / "mlmc_chi2.csv"

if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--ratios"]:  # recompute the ratio rows of the committed table only
        write(with_ratios(pd.read_csv(OUT)))
    else:
        main()
