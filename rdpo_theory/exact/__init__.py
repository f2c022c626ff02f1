"""Exact solvers (cvxpy programs and fast exact paths) with certificates."""

from .baselines import cdpo, chi2dpo, cvardpo, group_dpo, ipo, rdpo
from .dpo import dpo
from .kl import kldpo
from .result import ExactResult, Result
from .risk import robust_risk
from .wasserstein import wdpo

__all__ = [
    "cdpo",
    "chi2dpo",
    "cvardpo",
    "group_dpo",
    "ipo",
    "rdpo",
    "ExactResult",
    "Result",
    "robust_risk",
    "dpo",
    "kldpo",
    "wdpo",
]
