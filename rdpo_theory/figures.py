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
    "rdpo_theory.commands.minibatch",
    "rdpo_theory.commands.audit",
    "rdpo_theory.commands.frontier",
    "rdpo_theory.commands.inference",
]


@dataclass(frozen=True)
class FigureSpec:
    """A registered figure group.

    ``make(out: Path, *, quick: bool, jobs: int) -> list[Path]`` writes tables and PNGs under
    ``out`` and returns the paths it wrote. ``extra`` names the optional dependency group
    (:data:`rdpo_theory.extras.EXTRAS`) the figure needs, or ``None`` for the core install.
    """

    name: str
    make: Callable[..., list[Path]]
    description: str
    extra: str | None = None

    def missing(self) -> list[str]:
        """Modules of :attr:`extra` that are not installed (empty when it can run)."""
        from .extras import missing

        return missing(self.extra) if self.extra else []


REGISTRY: dict[str, FigureSpec] = {}


def register(name: str, *, description: str, extra: str | None = None):
    """Decorator registering ``make`` under ``name`` (``extra``: the pyproject extra it needs)."""

    def deco(make):
        REGISTRY[name] = FigureSpec(name, make, description, extra)
        return make

    return deco


def load_all() -> dict[str, FigureSpec]:
    """Import every figure module and return the registry."""
    for mod in FIGURE_MODULES:
        importlib.import_module(mod)
    return REGISTRY


def write_tables(tables: Mapping, out) -> list[Path]:
    """Write each DataFrame of ``tables`` (name -> table) as ``out/{name}.csv`` and return the
    paths, in the order of ``tables``. Every study CSV goes through
    :func:`rdpo_theory.tables.write_csv` (fixed float format, no wall-clock columns), so
    regenerating a figure with the same seeds gives the same files."""
    from .tables import write_csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [write_csv(table, out / f"{name}.csv") for name, table in tables.items()]
