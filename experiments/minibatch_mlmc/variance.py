"""Gradient variance per pair evaluated, shared by the multilevel Monte Carlo experiments
(``run.py``: KLDPO, ``run_chi2.py``: chi-square DPO)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np


def grad_variance_row(
    normalizer: str, batches: Iterator[np.ndarray], grad: Callable, draws: int
) -> dict:
    """The tidy row ``quantity="grad_var_per_pair"`` of ``draws`` stochastic gradients
    ``grad(idx)`` (d,) on the index arrays ``next(batches)``: ``value = tr Cov(g) * m`` with
    ``m`` the mean number of pairs per step (``pairs_per_step``), i.e. the variance of one
    step's gradient scaled to one pair evaluated
    (docs/minibatch.md#the-multilevel-monte-carlo-peer)."""
    g, pairs = [], []
    for _ in range(draws):
        idx = next(batches)
        g.append(grad(idx))
        pairs.append(len(idx))
    m = float(np.mean(pairs))
    cov = np.cov(np.asarray(g).T)
    return dict(
        normalizer=normalizer,
        quantity="grad_var_per_pair",
        value=float(np.trace(cov) * m),
        pairs_per_step=m,
    )
