"""Modules imported on first use.

cvxpy (with the ``scipy.stats`` its atoms pull in) takes one to three seconds to import, while
the fast exact paths, the readers and most ``rdpo`` commands never build a conic program. The
exact solvers therefore bind ``cp`` to :data:`cvxpy`, a stand-in that imports cvxpy the first
time one of its attributes is read (when a program is built or solved), so ``import
rdpo_theory.exact`` and a fast solve leave cvxpy unimported. ``benchmarks/startup.py``
measures what this saves.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    """A stand-in for the module ``name``: the first attribute read imports the module (an
    ordinary import, so ``sys.modules`` and errors are as usual) and every read is forwarded
    to it.

    Parameters
    ----------
    name : str
        The module's import name, e.g. ``"cvxpy"``.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def _load(self) -> ModuleType:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return self._module

    def __getattr__(self, attr: str):
        # only called for attributes the stand-in lacks, i.e. every attribute of the module
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r} ({state})>"


#: cvxpy, imported when a conic program is first built (``from ..lazy import cvxpy as cp``).
cvxpy = LazyModule("cvxpy")
