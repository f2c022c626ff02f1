"""Registry of the figures that ``rdpo figures`` regenerates.

A study module registers a figure with :func:`register`. Its ``make`` function computes (or
reuses) the study's tidy table, writes it as CSV under ``out`` and draws the PNG from that
table alone, so a figure can be redrawn without recomputing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Modules imported by :func:`load_all`; each registers its figures at import time.
FIGURE_MODULES: list[str] = [
    "rdpo_theory.studies.rates",
    "rdpo_theory.studies.shift",
    "rdpo_theory.torch.emotion",
    "rdpo_theory.studies.approx_vs_exact",
]


@dataclass(frozen=True)
class FigureSpec:
    """A registered figure group.

    ``make(out: Path, *, quick: bool, jobs: int) -> list[Path]`` writes tables and PNGs under
    ``out`` and returns the paths it wrote.
    """

    name: str
    make: Callable[..., list[Path]]
    description: str


REGISTRY: dict[str, FigureSpec] = {}


def register(name: str, *, description: str):
    """Decorator registering ``make`` under ``name``."""

    def deco(make):
        REGISTRY[name] = FigureSpec(name, make, description)
        return make

    return deco


def load_all() -> dict[str, FigureSpec]:
    """Import every figure module and return the registry."""
    for mod in FIGURE_MODULES:
        importlib.import_module(mod)
    return REGISTRY
