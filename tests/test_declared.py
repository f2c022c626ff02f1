"""The generated half of the hostile-input suite (issue 23).

Every function declared with :func:`rdpo_theory.options.declare` is in
``rdpo_theory.options.DECLARED`` once its module is imported. For every declared parameter and
every value :func:`rdpo_theory.options.invalid_values` generates from its constraints, calling
the function with that value alone must raise :class:`~rdpo_theory.errors.InputError` naming the
parameter, before any work (the declaration is checked first). A newly declared option joins
automatically. The hand-written half (what no declaration covers: arrays, files, commands,
torch tensors) is ``tests/test_bad_inputs.py``.

``docs/reliability.md#hostile-input-suite`` reports the size of both halves by area; the table
there is generated from the cases below (``python tests/test_declared.py --write`` rewrites it)
and checked by :func:`test_documented_counts`, so it is never written by hand.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

import rdpo_theory
from rdpo_theory.errors import InputError
from rdpo_theory.options import DECLARED, invalid_values

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- hostile-counts:start -->", "<!-- hostile-counts:end -->"


#: Imported only by the slow test below: the TRL adapter pulls in transformers and trl (about
#: 13 s on 2 busy cores), more than the whole generated suite.
HEAVY = ("rdpo_theory.torch.trl",)


def import_public_modules(*, heavy: bool = False) -> list[str]:
    """Import every public module of the package (no component starting with ``_``; those in
    :data:`HEAVY` only with ``heavy``); a module whose optional extra is missing is skipped.
    Returns the names that failed to import."""
    skipped = []
    for info in pkgutil.walk_packages(rdpo_theory.__path__, "rdpo_theory."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        if not heavy and info.name.startswith(HEAVY):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(info.name)
        except ImportError:
            skipped.append(info.name)
    return skipped


import_public_modules()


def area_of(qualname: str) -> str:
    """The area of a declared function, from its module: ``rdpo_theory.exact.kl.kldpo`` is
    "exact", ``rdpo_theory.worlds.World.random`` is "worlds"."""
    parts = qualname.split(".")
    return parts[1] if len(parts) > 2 else parts[0]


def declared_cases() -> list[tuple[str, str, object]]:
    """``(function, parameter, invalid value)`` for every declared parameter."""
    out = []
    for qualname in sorted(DECLARED):
        fn = DECLARED[qualname]
        for param, cs in fn.parameter_constraints.items():
            out.extend((qualname, param, v) for v in invalid_values(cs))
    return out


CASES = declared_cases()


def refusal_failures(qualname: str) -> list[str]:
    """The generated cases of one declared function that are not refused as they must be:
    the call with the invalid value alone raises InputError, message ``The '<param>'
    parameter of <function> must be ...``."""
    fn = DECLARED[qualname]
    bad = []
    for _, param, value in CASES_BY_FUNCTION.get(qualname, []):
        pattern = rf"^The '{re.escape(param)}' parameter of \w+ must be "
        try:
            fn(**{param: value})
        except InputError as exc:
            if not re.match(pattern, str(exc)):
                bad.append(f"{param}={value!r}: message {str(exc)!r}")
        except Exception as exc:  # noqa: BLE001 - any other outcome is the failure reported
            bad.append(f"{param}={value!r}: {type(exc).__name__}: {exc}")
        else:
            bad.append(f"{param}={value!r}: accepted")
    return bad


CASES_BY_FUNCTION: dict[str, list] = {}
for _case in CASES:
    CASES_BY_FUNCTION.setdefault(_case[0], []).append(_case)


@pytest.mark.parametrize(
    "qualname", [pytest.param(q, id=q.removeprefix("rdpo_theory.")) for q in CASES_BY_FUNCTION]
)
def test_declared_parameters_refuse_invalid_values(qualname):
    """One test per declared function, every generated case inside (one pytest item per case
    cost 15 s of overhead for about 1,000 cases)."""
    assert refusal_failures(qualname) == []


@pytest.mark.slow
def test_heavy_modules_declarations_refuse_invalid_values():
    """The modules left out of the fast import (:data:`HEAVY`) join the generated suite here."""
    before = set(DECLARED)
    import_public_modules(heavy=True)
    new = sorted(set(DECLARED) - before)
    for q in new:
        fn = DECLARED[q]
        for param, cs in fn.parameter_constraints.items():
            CASES_BY_FUNCTION.setdefault(q, []).extend((q, param, v) for v in invalid_values(cs))
    assert {q: refusal_failures(q) for q in new} == {q: [] for q in new}


def test_registry_covers_the_numpy_api():
    """The public numpy API this issue declared: a function that loses its declaration (or a
    module that stops importing) would drop its cases silently."""
    names = {q.removeprefix("rdpo_theory.") for q in DECLARED}
    for expected in (
        "exact.dpo.dpo",
        "exact.kl.kldpo",
        "exact.wasserstein.wdpo",
        "exact.baselines.cdpo",
        "exact.baselines.chi2dpo",
        "exact.baselines.cvardpo",
        "worlds.World.random",
        "worlds.World.empirical",
        "theory.theorem2",
        "losses.kl_weights",
    ):
        assert expected in names
    assert len(CASES) >= 300


# ---------------------------------------------------------------------------- documented counts
def hand_written_counts() -> Counter:
    """Cases of ``tests/test_bad_inputs.py`` by area (the section comment above each test):
    a parametrized test counts its parameter sets, any other test counts 1."""
    path = ROOT / "tests" / "test_bad_inputs.py"
    sys.path.insert(0, str(path.parent))
    try:
        mod = importlib.import_module("test_bad_inputs")
    finally:
        sys.path.pop(0)
    area, areas = "other", {}
    for line in path.read_text().splitlines():
        m = re.match(r"# -{10,} (.+)$", line)
        if m:
            area = m.group(1).strip()
        m = re.match(r"def (test_\w+)\(", line)
        if m:
            areas[m.group(1)] = area
    counts: Counter = Counter()
    for name, area in areas.items():
        n = 1
        for mark in getattr(getattr(mod, name), "pytestmark", []):
            if mark.name == "parametrize":
                n *= len(mark.args[1])
        counts[area] += n
    return counts


def render_table() -> str:
    """The markdown table of ``docs/reliability.md#hostile-input-suite``."""
    gen = Counter(area_of(q) for q, _, _ in CASES)
    funcs = Counter(area_of(q) for q in DECLARED)
    hand = hand_written_counts()
    rows = ["| half | area | cases |", "|---|---|---|"]
    rows += [
        f"| generated (`tests/test_declared.py`) | `{a}` ({funcs[a]} functions) | {gen[a]} |"
        for a in sorted(gen)
    ]
    rows += [f"| hand-written (`tests/test_bad_inputs.py`) | {a} | {hand[a]} |" for a in hand]
    total = sum(gen.values()) + sum(hand.values())
    rows.append(f"| **total** | | **{total}** |")
    return "\n".join(rows)


def _documented() -> str:
    text = DOC.read_text()
    return text[text.index(START) + len(START) : text.index(END)].strip()


def test_documented_counts():
    """The table in docs/reliability.md is the one the collected cases give; after adding
    cases or declarations run ``python tests/test_declared.py --write``."""
    assert _documented() == render_table()


if __name__ == "__main__":
    if "--write" in sys.argv:
        text = DOC.read_text()
        i, j = text.index(START) + len(START), text.index(END)
        DOC.write_text(text[:i] + "\n" + render_table() + "\n" + text[j:])
    print(render_table())


def test_beta_and_tau_are_checked_once_per_call(monkeypatch):
    """Issue 23: beta and tau were validated two or three times per call (a public loss calling
    other public losses). Declared functions call unchecked kernels inside."""
    import numpy as np

    from rdpo_theory import losses, options
    from rdpo_theory.data import PreferenceData

    seen = []
    real = options.validate

    def counting(params, constraints, *, owner):
        seen.extend(name for name in ("beta", "tau") if name in params and name in constraints)
        return real(params, constraints, owner=owner)

    monkeypatch.setattr(options, "validate", counting)
    data = PreferenceData([[1.0, 0.0], [0.0, 1.0]], [1, 0])
    for call, name in (
        (lambda: losses.dpo_risk(np.ones(2), data, beta=1.0), "beta"),
        (lambda: losses.dpo_risk_grad(np.ones(2), data, beta=1.0), "beta"),
        (lambda: losses.dpo_losses(np.ones(2), data, beta=1.0), "beta"),
        (lambda: losses.kl_weights(np.array([0.1, 0.5]), tau=1.0), "tau"),
    ):
        seen.clear()
        call()
        assert seen == [name]
