"""One home per ambiguity set (docs/theory.md#ambiguity-sets).

Every layer (the exact solvers and :func:`rdpo_theory.exact.robust_risk`, the audit, the
scalable algorithms in numpy and torch, the studies) reaches a ball through one object with the
interface of :class:`~rdpo_theory.divergences.base.AmbiguitySet`:

* :class:`KL` (``"kl"``), :class:`ChiSquare` (``"chi2"``), :class:`CVaR` (``"cvar"``),
  :class:`CressieRead` (``"cressie-read"``, order ``k``), :class:`Wasserstein`
  (``"w1"``, ``"w2"``, ... for order ``p``);
* :func:`get` builds one from its family id (the vocabulary of :mod:`rdpo_theory.methods`).

Importing this package never imports torch or cvxpy.
"""

from __future__ import annotations

from ..errors import InputError
from .base import AmbiguitySet, Supremum
from .chi2 import ChiSquare
from .cressie_read import CressieRead
from .cvar import CVaR
from .kl import KL
from .wasserstein import Wasserstein

#: Family id -> the class of its set (Wasserstein orders are ``"w<p>"``: ``"w1"``, ``"w2"``).
SETS = {
    "kl": KL,
    "chi2": ChiSquare,
    "cvar": CVaR,
    "cressie-read": CressieRead,
    "w1": Wasserstein,
    "w2": Wasserstein,
}

#: The divergence balls of the audit (reweightings of the pairs), by family id.
DIVERGENCES = ("kl", "chi2", "cvar", "cressie-read")


def get(family: str, **params) -> AmbiguitySet:
    """The ambiguity set of a family id: ``get("kl")``, ``get("w2")`` (order 2),
    ``get("w1", cost=C)``, ``get(family, **params)`` for a set with parameters. Unknown ids
    raise :class:`InputError`."""
    if isinstance(family, AmbiguitySet):
        return family
    order = _wasserstein_order(family)
    if order is not None:  # "w1", "w2", "w1.5": a Wasserstein ball of that order
        return Wasserstein(**({"p": order} | params))
    if family not in SETS:
        raise InputError(
            f"The 'divergence' parameter must be one of {tuple(SETS)}. Got {family!r} instead."
        )
    return SETS[family](**params)


def _wasserstein_order(family) -> float | None:
    """The order p of a family id ``"w<p>"``, else None."""
    if not isinstance(family, str) or not family.startswith("w"):
        return None
    try:
        return float(family[1:])
    except ValueError:
        return None


__all__ = [
    "DIVERGENCES",
    "SETS",
    "AmbiguitySet",
    "CVaR",
    "ChiSquare",
    "CressieRead",
    "KL",
    "Supremum",
    "Wasserstein",
    "get",
]
