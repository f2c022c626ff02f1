"""The method ids of every study table and figure, defined once.

Every tidy table (``rates_*.csv``, ``shift_*.csv``, ``approx_*.csv``, ``llm_tiny*.csv``) names
its estimator in a ``method`` column with one of the ids below, and puts the method's
parameters in their own columns (``rho``, ``tau``, ``rho0``, ``eps``, ... or ``param_name`` /
``param``), never inside the id: ``method="kldpo-alg2", tau=0.1``, not ``"kldpo(tau=0.1)"``.

An id is ``<objective>`` when one estimator computes the objective (``dpo`` and the
baselines), and ``<objective>-<how>`` when several do: ``-exact`` for the exact minimax
solution (docs/theory.md#exact-programs), ``-alg1``/``-alg2`` for the paper's Algorithms 1 and
2 (docs/theory.md#algorithm-1-wdpo, docs/theory.md#algorithm-2-kldpo), ``-per-pair`` and
``-clipped`` for the variants of the paper's code (docs/theory.md#code-variants). Figures take
their legend text from :func:`label` and their colour family from :func:`family`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError

#: The family vocabulary: one id per ambiguity set (the ``family`` of
#: :mod:`rdpo_theory.divergences`' sets) or per objective without a ball. Every table column
#: ``family``, every colour (:data:`rdpo_theory.plots.METHOD_COLORS`) and every
#: :attr:`Method.family` uses these ids.
FAMILIES: dict[str, str] = {
    "dpo": "DPO, no ball",
    "kl": "KL ball (KLDPO)",
    "chi2": "chi-square ball",
    "cvar": "CVaR ball",
    "cressie-read": "Cressie-Read (power divergence) ball",
    "w1": "Wasserstein-1 ball (WDPO)",
    "w2": "Wasserstein-2 ball (WDPO's Algorithm 1 and the paper's code)",
    "cdpo": "conservative DPO (label smoothing)",
    "rdpo": "robust DPO for a known flip rate",
    "ipo": "identity preference optimisation",
    "drdpo": "Dr. DPO (soft-min)",
    "gdpo": "group-robust DPO",
    "dpo-pro": "DPO-PRO: label-only chi-square ambiguity",
    "chipo": "chi-PO: chi-square policy regulariser",
    "winsor-dpo": "winsorised DPO: budgeted label flips and loss caps",
    "rebel": "REBEL and DRO-REBEL: relative-reward regression (plain, KL, chi-square, W2)",
    "reference": "reference policies (no training objective)",
}


@dataclass(frozen=True)
class Method:
    """A method id with its display label, family (:data:`FAMILIES`), one-line description,
    the name of its robustness parameter (its table column; None without one) and, where it
    has one, the family id of its ambiguity set in :mod:`rdpo_theory.divergences`."""

    id: str
    label: str
    family: str
    description: str
    parameter: str | None = None
    ambiguity: str | None = None


METHODS: dict[str, Method] = {
    m.id: m
    for m in (
        Method("dpo", "DPO", "dpo", "DPO (exact minimiser, or trained by the same loop)"),
        Method("kldpo-exact", "KLDPO (exact)", "kl", "exact KLDPO minimax solution", "rho", "kl"),
        Method(
            "kldpo-alg2", "KLDPO (Alg. 2)", "kl", "Algorithm 2: normalized weights", "tau", "kl"
        ),
        Method(
            "kldpo-clipped", "KLDPO (clipped)", "kl", "paper's code: clipped weights", "tau", "kl"
        ),
        Method(
            "wdpo-exact",
            "WDPO (exact)",
            "w1",
            "exact WDPO, continuous x, labels fixed",
            "rho",
            "w1",
        ),
        Method(
            "wdpo-finite", "WDPO (exact, finite Z)", "w1", "exact WDPO, adversary on Z", "rho", "w1"
        ),
        Method(
            "wdpo-alg1", "WDPO (Alg. 1)", "w2", "Algorithm 1: sqrt-mean regulariser", "rho0", "w2"
        ),
        Method(
            "wdpo-per-pair", "WDPO (per-pair)", "w2", "paper's code: per-pair penalty", "rho0", "w2"
        ),
        Method("cdpo", "cDPO", "cdpo", "conservative DPO (label smoothing eps)", "eps"),
        Method("rdpo", "rDPO", "rdpo", "robust DPO for a known flip rate eps", "eps"),
        Method("ipo", "IPO", "ipo", "identity preference optimisation", "tau"),
        Method(
            "drdpo",
            "Dr. DPO",
            "drdpo",
            "distributionally robustifying DPO (soft-min)",
            "beta_prime",
        ),
        Method("gdpo", "group DPO", "gdpo", "group-robust DPO (worst group)"),
        Method("chi2dpo", "chi2-DPO", "chi2", "chi-square DRO DPO", "rho", "chi2"),
        Method("cvardpo", "CVaR-DPO", "cvar", "CVaR DPO", "level", "cvar"),
        Method("crdpo", "CR-DPO", "cressie-read", "Cressie-Read DRO DPO", "rho", "cressie-read"),
        Method("sft", "SFT", "reference", "the supervised starting policy"),
        Method("reference", "reference", "reference", "the reference policy theta_ref"),
        Method("pi*", "pi* (DPO target)", "reference", "population DPO optimum"),
        Method("best-action", "best action", "reference", "best action per context"),
        Method("dpo-pro", "DPO-PRO", "dpo-pro", "label-only chi-square ambiguity (exact)", "rho"),
        Method("chipo", "chi-PO", "chipo", "chi-square preference optimisation (local)"),
        Method(
            "winsor-dpo",
            "wDPO (winsorised)",
            "winsor-dpo",
            "winsorised DPO: budgeted flips and loss caps (fixed point, local)",
        ),
        Method("rebel", "REBEL", "rebel", "relative-reward regression (exact)"),
        Method("kl-rebel", "KL-REBEL", "rebel", "DRO-REBEL, KL ball (exact)", "rho"),
        Method("chi2-rebel", "chi2-REBEL", "rebel", "DRO-REBEL, chi-square ball (exact)", "rho"),
        Method(
            "w2-rebel",
            "W2-REBEL",
            "rebel",
            "DRO-REBEL, type-2 Wasserstein ball (exact)",
            "rho",
        ),
    )
}

#: Trainer loss name and variant -> method id (``TrainConfig.method`` and
#: ``approx.*`` front ends; the variant is the loss's ``variant`` keyword, None for default).
TRAINED = {
    ("dpo", None): "dpo",
    ("kldpo", None): "kldpo-alg2",
    ("kldpo", "normalized"): "kldpo-alg2",
    ("kldpo", "clipped"): "kldpo-clipped",
    ("wdpo", None): "wdpo-alg1",
    ("wdpo", "sqrt-mean"): "wdpo-alg1",
    ("wdpo", "per-pair"): "wdpo-per-pair",
}

#: Every list of methods of the studies and commands, by name, in table order: the studies
#: look their methods up here (:func:`listed`) instead of keeping lists of their own.
LISTS: dict[str, tuple[str, ...]] = {
    # studies.rates: the quick and full method sets
    "rates-quick": ("dpo", "kldpo-exact", "wdpo-exact", "kldpo-alg2", "wdpo-alg1"),
    "rates-full": (
        "dpo",
        "kldpo-exact",
        "wdpo-exact",
        "wdpo-finite",
        "wdpo-alg1",
        "wdpo-per-pair",
        "kldpo-alg2",
        "kldpo-clipped",
    ),
    # studies.shift: every fitted method
    "shift": (
        "dpo",
        "wdpo-exact",
        "wdpo-alg1",
        "kldpo-exact",
        "kldpo-alg2",
        "cdpo",
        "rdpo",
        "ipo",
        "drdpo",
        "gdpo",
        "chi2dpo",
        "cvardpo",
    ),
    # studies.group_shift: the robust methods with a ball that covers a share
    "group-shift": ("kldpo-exact", "chi2dpo", "cvardpo"),
    # studies.minibatch: the trained estimators (loss and variant via loss_variant)
    "minibatch": ("kldpo-alg2", "kldpo-clipped", "wdpo-alg1", "wdpo-per-pair"),
    # exact.robust_risk: objectives by trainer loss name
    "risk": ("dpo", "kldpo", "wdpo"),
    # rdpo llm: the default methods (trainer loss names)
    "llm": ("dpo", "kldpo", "wdpo"),
}


def listed(name: str) -> tuple[str, ...]:
    """The method list ``name`` of :data:`LISTS` (a tuple of ids or trainer loss names)."""
    if name not in LISTS:
        raise InputError(f"no method list {name!r}; known: {sorted(LISTS)}")
    return LISTS[name]


def loss_variant(method: str) -> tuple[str, str | None]:
    """The trainer loss and variant of a trained method id (the first entry of
    :data:`TRAINED` giving it with an explicit variant, else with None):
    ``loss_variant("kldpo-clipped") == ("kldpo", "clipped")``."""
    found = [k for k, v in TRAINED.items() if v == method]
    if not found:
        raise InputError(f"method {method!r} is not a trained method; known: {sorted(TRAINED)}")
    with_variant = [k for k in found if k[1] is not None]
    return (with_variant or found)[0]


def parameter(method: str) -> str | None:
    """The robustness parameter (table column) of a method id, None without one."""
    return METHODS[check(method)].parameter


def ambiguity_family(method: str, *, p: float | None = None) -> str | None:
    """The family id of the ambiguity set of a method id, trainer loss name (``"kldpo"``) or
    family id (``"kl"``); None when it has no ball (DPO and the non-ball baselines). A
    Wasserstein order ``p`` picks ``"w<p>"`` (``p=2`` -> ``"w2"``) for the Wasserstein ones."""
    from . import divergences as D

    fam = method if method in D.SETS else None
    if fam is None:
        m = METHODS.get(method) or METHODS.get(TRAINED.get((method, None), ""))
        fam = m.ambiguity if m is not None else None
    if fam is not None and p is not None and fam.startswith("w"):
        fam = f"w{float(p):g}"
    return fam


def ambiguity(method: str, **params):
    """The :class:`~rdpo_theory.divergences.AmbiguitySet` of a method id, loss name or family
    id (``params`` go to its constructor: ``ambiguity("w1", cost=C)``); None without a
    ball."""
    from . import divergences as D

    fam = ambiguity_family(method, p=params.pop("p", None))
    return None if fam is None else D.get(fam, **params)


#: Parameter columns a table may carry next to ``method`` (one per method parameter).
PARAMETER_COLUMNS = ("rho", "tau", "rho0", "clip", "eps", "level", "beta_prime")


def series_columns(table) -> list[str]:
    """The columns that identify one curve of ``table``: ``method`` and the parameter columns
    it has (:data:`PARAMETER_COLUMNS`)."""
    return ["method"] + [c for c in PARAMETER_COLUMNS if c in table.columns]


def check(method: str) -> str:
    """``method`` if it is a known id; :class:`InputError` listing the ids otherwise."""
    if method not in METHODS:
        raise InputError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    return method


def trained_id(loss: str, variant: str | None = None) -> str:
    """The method id of a trained loss: ``trained_id("kldpo", "clipped") == "kldpo-clipped"``;
    baselines keep their name (``"cdpo"``)."""
    if (loss, variant) in TRAINED:
        return TRAINED[(loss, variant)]
    if variant is None and loss in METHODS:
        return loss
    raise InputError(f"no method id for loss {loss!r} with variant {variant!r}")


def family(method: str) -> str:
    """Family (:data:`FAMILIES`) of a method id or trainer loss name (``"kl"`` for every
    KLDPO estimator and for ``"kldpo"``); unknown ids are their own family."""
    m = METHODS.get(method) or METHODS.get(TRAINED.get((method, None), ""))
    return m.family if m is not None else method


def label(method: str, **params) -> str:
    """Display label of ``method`` for legends, with the given parameters appended:
    ``label("kldpo-alg2", tau=0.1) == "KLDPO (Alg. 2), tau=0.1"``. Parameters that are None or
    NaN are left out; an unknown id is shown as is."""
    m = METHODS.get(method)
    text = m.label if m is not None else method
    shown = [
        f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
        for k, v in params.items()
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    ]
    return text + (", " + ", ".join(shown) if shown else "")


__all__ = [
    "FAMILIES",
    "LISTS",
    "METHODS",
    "PARAMETER_COLUMNS",
    "Method",
    "TRAINED",
    "ambiguity",
    "ambiguity_family",
    "check",
    "family",
    "label",
    "listed",
    "loss_variant",
    "parameter",
    "series_columns",
    "trained_id",
]
