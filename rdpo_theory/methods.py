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


@dataclass(frozen=True)
class Method:
    """A method id with its display label, colour family and one-line description."""

    id: str
    label: str
    family: str
    description: str


METHODS: dict[str, Method] = {
    m.id: m
    for m in (
        Method("dpo", "DPO", "dpo", "DPO (exact minimiser, or trained by the same loop)"),
        Method("kldpo-exact", "KLDPO (exact)", "kldpo", "exact KLDPO minimax solution"),
        Method("kldpo-alg2", "KLDPO (Alg. 2)", "kldpo", "Algorithm 2: normalized weights"),
        Method("kldpo-clipped", "KLDPO (clipped)", "kldpo", "paper's code: clipped weights"),
        Method("wdpo-exact", "WDPO (exact)", "wdpo", "exact WDPO, continuous x, labels fixed"),
        Method("wdpo-finite", "WDPO (exact, finite Z)", "wdpo", "exact WDPO, adversary on Z"),
        Method("wdpo-alg1", "WDPO (Alg. 1)", "wdpo", "Algorithm 1: sqrt-mean regulariser"),
        Method("wdpo-per-pair", "WDPO (per-pair)", "wdpo", "paper's code: per-pair penalty"),
        Method("cdpo", "cDPO", "cdpo", "conservative DPO (label smoothing eps)"),
        Method("rdpo", "rDPO", "rdpo", "robust DPO for a known flip rate eps"),
        Method("ipo", "IPO", "ipo", "identity preference optimisation"),
        Method("drdpo", "Dr. DPO", "drdpo", "distributionally robustifying DPO (soft-min)"),
        Method("gdpo", "group DPO", "gdpo", "group-robust DPO (worst group)"),
        Method("chi2dpo", "chi2-DPO", "chi2dpo", "chi-square DRO DPO"),
        Method("cvardpo", "CVaR-DPO", "cvardpo", "CVaR DPO"),
        Method("sft", "SFT", "reference", "the supervised starting policy"),
        Method("reference", "reference", "reference", "the reference policy theta_ref"),
        Method("pi*", "pi* (DPO target)", "reference", "population DPO optimum"),
        Method("best-action", "best action", "reference", "best action per context"),
        Method("dpo-pro", "DPO-PRO", "dpo-pro", "label-only chi-square ambiguity (exact)"),
        Method("chipo", "chi-PO", "chipo", "chi-square preference optimisation (local)"),
        Method(
            "winsor-dpo",
            "wDPO (winsorised)",
            "winsor-dpo",
            "winsorised DPO: budgeted flips and loss caps (fixed point, local)",
        ),
        Method("rebel", "REBEL", "rebel", "relative-reward regression (exact)"),
        Method("kl-rebel", "KL-REBEL", "rebel", "DRO-REBEL, KL ball (exact)"),
        Method("chi2-rebel", "chi2-REBEL", "rebel", "DRO-REBEL, chi-square ball (exact)"),
        Method("w2-rebel", "W2-REBEL", "rebel", "DRO-REBEL, type-2 Wasserstein ball (exact)"),
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
    """Colour family of a method id (``"kldpo"`` for every KLDPO estimator); unknown ids are
    their own family."""
    m = METHODS.get(method)
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
    "METHODS",
    "PARAMETER_COLUMNS",
    "Method",
    "TRAINED",
    "check",
    "family",
    "label",
    "series_columns",
    "trained_id",
]
