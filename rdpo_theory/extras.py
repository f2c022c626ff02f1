"""Optional dependency groups (pyproject extras) and how to tell a user they are missing.

The core install (``pip install -e .``) runs the exact solvers, the scalable algorithms and the
log-linear studies. Language-model work needs the ``llm`` extra; the TRL trainer needs ``trl``;
the dask sweep backend needs ``cluster``. Code that needs an extra checks it with
:func:`missing` before starting, so a user gets one line saying what to install instead of a
traceback halfway through a run.
"""

from __future__ import annotations

import importlib.util

from .errors import RDPOError

#: Top-level modules each extra provides (as named in pyproject's optional-dependencies).
EXTRAS: dict[str, tuple[str, ...]] = {
    "llm": ("transformers", "tokenizers", "accelerate"),
    "trl": ("trl",),
    "cluster": ("dask", "distributed"),
}


class MissingExtraError(RDPOError, ImportError):
    """An optional dependency group is not installed; the message says how to install it."""


def missing(extra: str) -> list[str]:
    """Modules of ``extra`` that cannot be imported here (empty when the extra is installed).

    Parameters
    ----------
    extra : str
        A key of :data:`EXTRAS`.

    Returns
    -------
    list of str
        The missing top-level module names, in :data:`EXTRAS` order.
    """
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {sorted(EXTRAS)}")
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def install_hint(extra: str) -> str:
    """The command that installs ``extra`` into an editable checkout."""
    return f'pip install -e ".[{extra}]"'


def extra_of(module: str | None) -> str | None:
    """The extra that provides top-level module ``module`` (e.g. ``"tokenizers"`` -> ``"llm"``)."""
    top = (module or "").split(".")[0]
    for extra, mods in EXTRAS.items():
        if top in mods:
            return extra
    return None


def require(extra: str, *, what: str) -> None:
    """Raise :class:`MissingExtraError` naming ``what`` needs ``extra`` if it is not installed."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(
            f"{what} needs the '{extra}' extra (missing: {', '.join(absent)}); "
            f"install it with: {install_hint(extra)}"
        )
