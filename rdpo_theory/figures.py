"""Registry of the figures that ``rdpo figures`` regenerates (the command layer).

Studies (:mod:`rdpo_theory.studies`) only compute and return tidy tables. Each command module
registers a figure group with :func:`register`; its ``make`` function runs the study, writes
the tables as CSV under ``out`` (:func:`write_tables`) and draws the PNGs from those files
alone (:mod:`rdpo_theory.plots`), so a figure can be redrawn without recomputing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: Modules imported by :func:`load_all`; each registers its figures at import time.
FIGURE_MODULES: list[str] = [
    "rdpo_theory.commands.rates",
    "rdpo_theory.commands.shift",
    "rdpo_theory.commands.llm",
    "rdpo_theory.commands.compare",
    "rdpo_theory.commands.audit",
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


def write_tables(tables: Mapping, out, *, float_format: str | None = None) -> list[Path]:
    """Write each DataFrame of ``tables`` (name -> table) as ``out/{name}.csv`` (no index) and
    return the paths, in the order of ``tables``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in tables.items():
        path = out / f"{name}.csv"
        table.to_csv(path, index=False, float_format=float_format)
        paths.append(path)
    return paths
