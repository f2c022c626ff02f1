"""Exact solvers (cvxpy programs and fast exact paths) with certificates."""

from .dpo import dpo
from .result import ExactResult

__all__ = ["ExactResult", "dpo"]
