"""Exact solvers (cvxpy programs and fast exact paths) with certificates."""

from .baselines import ball_dpo, cdpo, chi2dpo, cvardpo, group_dpo, ipo, rdpo
from .chipo import chipo
from .dpo import dpo
from .dpo_pro import dpo_pro
from .kl import kldpo
from .rebel import dro_rebel
from .result import ExactResult, Result
from .risk import robust_risk
from .wasserstein import wdpo
from .winsor import winsor_dpo

__all__ = [
    "ball_dpo",
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
    "dpo_pro",
    "chipo",
    "winsor_dpo",
    "dro_rebel",
]
