"""Exact solvers (cvxpy programs and fast exact paths) with certificates."""

from .baselines import ball_dpo, cdpo, chi2dpo, cvardpo, group_dpo, ipo, rdpo
from .dpo import dpo
from .kl import kldpo
from .result import ExactResult
from .risk import robust_risk
from .wasserstein import wdpo

__all__ = [
    "ball_dpo",
    "cdpo",
    "chi2dpo",
    "cvardpo",
    "group_dpo",
    "ipo",
    "rdpo",
    "ExactResult",
    "robust_risk",
    "dpo",
    "kldpo",
    "wdpo",
]
