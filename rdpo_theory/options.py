"""Declared options: parameter constraints, one validator, one message shape, and dataclass
fields that carry their help text and allowed values (the command lines are generated from
them).

Two halves, used everywhere in the package:

* **Constraints** (after scikit-learn's ``_parameter_constraints``). A public function
  declares, next to its signature, a dict ``{parameter name: [constraint, ...]}``; a value is
  valid if it satisfies *any* constraint of its list. :func:`check` tests one value and
  :func:`validate` a whole mapping, raising :class:`~rdpo_theory.errors.InputError` with one
  message shape::

      The 'rho' parameter of kldpo must be >= 0. Got -1 instead.

  The constraints are data, so the invalid-input tests are generated from them
  (:func:`invalid_values`): every declared parameter gets values that must be refused.

* **Options** (after TRL's ``DPOConfig``). :func:`option` is :func:`dataclasses.field` with
  ``help``, ``choices``, ``constraints`` and command-line ``aliases`` stored in the field's
  metadata; :func:`add_arguments` builds ``argparse`` flags from a dataclass (the field name
  is the flag: ``--max_steps``, with ``--max-steps`` accepted too) and :func:`from_arguments`
  builds the dataclass back from the parsed namespace. A configuration dataclass validates its
  fields with :func:`validate_fields` in ``__post_init__``.

Booleans are never numbers here (``True`` is refused where an integer or real is meant), and
strings are never numbers (``rho="0.1"`` is refused: only the command line parses text).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InputError

__all__ = [
    "Interval",
    "Options",
    "Constraint",
    "Instance",
    "Callable_",
    "SeedObject",
    "NONE",
    "check",
    "declare",
    "DECLARED",
    "validate",
    "invalid_values",
    "option",
    "validate_fields",
    "add_arguments",
    "from_arguments",
    "field_help",
]


class Constraint:
    """One admissible kind of value. Subclasses define :meth:`holds`, :meth:`describe` and
    :meth:`invalid` (values that violate this constraint, for generated tests)."""

    def holds(self, value) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def invalid(self) -> list:
        return []


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class Interval(Constraint):
    """A real (``kind=float``) or integer (``kind=int``) in an interval.

    ``Interval(float, 0, None, closed="left")`` is ``[0, inf)``; ``closed`` is one of
    ``"left"``, ``"right"``, ``"both"``, ``"neither"``. Real intervals refuse NaN, and refuse
    infinities unless ``allow_inf=True``. An integer value is accepted by a real interval.
    """

    def __init__(self, kind, left=None, right=None, *, closed="both", allow_inf=False):
        if kind not in (int, float):
            raise ValueError("Interval kind must be int or float")
        if closed not in ("left", "right", "both", "neither"):
            raise ValueError(f"bad closed={closed!r}")
        self.kind, self.left, self.right, self.closed = kind, left, right, closed
        self.allow_inf = allow_inf

    def holds(self, value) -> bool:
        if self.kind is int:
            if not _is_int(value):
                return False
        else:
            if not _is_real(value) or math.isnan(float(value)):
                return False
            if math.isinf(float(value)) and not self.allow_inf:
                return False
        lc = self.closed in ("left", "both")
        rc = self.closed in ("right", "both")
        if self.left is not None and (value < self.left or (not lc and value == self.left)):
            return False
        if self.right is not None and (value > self.right or (not rc and value == self.right)):
            return False
        return True

    def describe(self) -> str:
        what = "an int" if self.kind is int else "a float"
        lo, hi = self.left, self.right
        if lo is not None and hi is None:
            return f"{what} {'>=' if self.closed in ('left', 'both') else '>'} {lo:g}"
        if hi is not None and lo is None:
            return f"{what} {'<=' if self.closed in ('right', 'both') else '<'} {hi:g}"
        if lo is None and hi is None:
            return f"{what}" + ("" if self.kind is int else " (finite)")
        lb = "[" if self.closed in ("left", "both") else "("
        rb = "]" if self.closed in ("right", "both") else ")"
        return f"{what} in the range {lb}{lo:g}, {hi:g}{rb}"

    def invalid(self) -> list:
        out: list = ["1", True]
        if self.kind is int:
            out.append(1.5)
        else:
            out.append(float("nan"))
            if not self.allow_inf:
                out.append(float("inf"))
        if self.left is not None:
            out.append(self.left - 1 if self.closed in ("left", "both") else self.left)
        if self.right is not None:
            out.append(self.right + 1 if self.closed in ("right", "both") else self.right)
        return out


class Options(Constraint):
    """One of a fixed set of values (strings, usually). ``deprecated`` maps old spellings that
    are still accepted (the caller translates them)."""

    def __init__(self, values: Iterable, *, deprecated: Mapping | None = None):
        self.values = tuple(values)
        self.deprecated = dict(deprecated or {})

    def holds(self, value) -> bool:
        try:
            return value in self.values or value in self.deprecated
        except TypeError:
            return False

    def describe(self) -> str:
        return "one of {" + ", ".join(repr(v) for v in self.values) + "}"

    def invalid(self) -> list:
        return ["__not_an_option__", 3.5]


class Instance(Constraint):
    """An instance of one of ``types`` (bool is not an int here)."""

    def __init__(self, *types, name: str | None = None):
        self.types = types
        self.name = name or " or ".join(t.__name__ for t in types)

    def holds(self, value) -> bool:
        if isinstance(value, bool) and bool not in self.types:
            return False
        return isinstance(value, self.types)

    def describe(self) -> str:
        return f"an instance of {self.name}"

    def invalid(self) -> list:
        return [object()]


class Callable_(Constraint):
    """Any callable."""

    def holds(self, value) -> bool:
        return callable(value)

    def describe(self) -> str:
        return "a callable"

    def invalid(self) -> list:
        return [3]


class SeedObject(Constraint):
    """A seed object of :func:`rdpo_theory.rng.make_rng` other than an integer: a
    ``numpy.random.SeedSequence`` or ``Generator``, or a list or tuple of integers >= 0
    (stream keys). Used with an integer :class:`Interval` in :data:`SEED`."""

    def holds(self, value) -> bool:
        import numpy as np

        if isinstance(value, np.random.SeedSequence | np.random.Generator):
            return True
        return isinstance(value, list | tuple) and all(_is_int(k) and k >= 0 for k in value)

    def describe(self) -> str:
        return "a SeedSequence, a Generator or a list of ints >= 0"

    def invalid(self) -> list:
        return [[-1], [1.5]]


class _NoneConstraint(Constraint):
    def holds(self, value) -> bool:
        return value is None

    def describe(self) -> str:
        return "None"


#: The constraint "the value may be None".
NONE = _NoneConstraint()


def _as_constraint(c) -> Constraint:
    if isinstance(c, Constraint):
        return c
    if c is None:
        return NONE
    if c == "boolean":
        return Instance(bool, name="bool")
    if isinstance(c, type):
        return Instance(c)
    raise TypeError(f"not a constraint: {c!r}")


def _join(descs: list[str]) -> str:
    return descs[0] if len(descs) == 1 else ", ".join(descs[:-1]) + " or " + descs[-1]


def check(name: str, value, constraints, *, owner: str | None = None):
    """Return ``value`` if it satisfies any of ``constraints``, else raise
    :class:`InputError`: ``The 'name' parameter of owner must be <description>. Got v
    instead.``"""
    cs = [
        _as_constraint(c) for c in (constraints if isinstance(constraints, list) else [constraints])
    ]
    if any(c.holds(value) for c in cs):
        return value
    where = f" of {owner}" if owner else ""
    shown = f"{value!r}" if isinstance(value, str) else _short(value)
    raise InputError(
        f"The '{name}' parameter{where} must be {_join([c.describe() for c in cs])}. "
        f"Got {shown} instead."
    )


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(params: Mapping[str, Any], constraints: Mapping[str, list], *, owner: str) -> None:
    """Check every declared parameter of ``params`` (undeclared ones are left to the caller)."""
    for name, cs in constraints.items():
        if name in params:
            check(name, params[name], cs, owner=owner)


def invalid_values(constraints: list) -> list:
    """Values that violate every constraint of the list (for generated bad-input tests)."""
    cs = [_as_constraint(c) for c in constraints]
    cands = [v for c in cs for v in c.invalid()] + ["text", object()]
    out = []
    for v in cands:
        try:
            ok = any(c.holds(v) for c in cs)
        except Exception:  # noqa: BLE001 - a candidate that cannot be compared is invalid
            ok = False
        if not ok and not any(v is w for w in out):
            out.append(v)
    return out


#: Every function declared with :func:`declare`, by qualified name: the generated bad-input
#: tests walk this registry, so a newly declared option joins them automatically.
DECLARED: dict[str, Any] = {}


def declare(constraints: Mapping[str, list], *, owner: str | None = None):
    """Decorator declaring a public function's parameter constraints next to its signature
    (scikit-learn's ``_parameter_constraints``). The arguments given to a call are checked
    by :func:`validate` before the body runs; the declaration is kept on the function as
    ``parameter_constraints`` and in :data:`DECLARED`.

    Example::

        @declare({"rho": NONNEGATIVE, "beta": POSITIVE})
        def kldpo(X, y, *, rho, beta): ...
    """

    def deco(fn):
        sig = inspect.signature(fn)
        unknown = set(constraints) - set(sig.parameters)
        if unknown:
            raise TypeError(f"{fn.__qualname__} declares unknown parameters {sorted(unknown)}")
        name = owner or fn.__name__

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                bound = sig.bind_partial(*args, **kwargs)
            except TypeError:
                return fn(*args, **kwargs)  # let Python report the bad call itself
            validate(bound.arguments, constraints, owner=name)
            return fn(*args, **kwargs)

        wrapper.parameter_constraints = dict(constraints)
        DECLARED[f"{fn.__module__}.{fn.__qualname__}"] = wrapper
        return wrapper

    return deco


# --------------------------------------------------------------------------- options


def option(
    default=dataclasses.MISSING,
    *,
    help: str,
    choices: Iterable | None = None,
    constraints: list | None = None,
    aliases: Iterable[str] = (),
    default_factory=dataclasses.MISSING,
    cli: bool = True,
    metavar: str | None = None,
):
    """A dataclass field whose metadata carries ``help``, ``choices``, ``constraints``,
    command-line ``aliases`` (old flag spellings, e.g. ``"--lr"``) and ``cli`` (False: not a
    command-line flag, e.g. a dict or a callable)."""
    meta = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "constraints": list(constraints) if constraints is not None else None,
        "aliases": tuple(aliases),
        "cli": cli,
        "metavar": metavar,
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_help(cls) -> dict[str, str]:
    """Field name -> help text of a dataclass built with :func:`option`."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def validate_fields(obj, *, owner: str | None = None) -> None:
    """Check every field of a dataclass instance against its declared ``constraints`` (and
    ``choices``, which imply an :class:`Options` constraint)."""
    owner = owner or type(obj).__name__
    for f in dataclasses.fields(obj):
        cs = f.metadata.get("constraints")
        ch = f.metadata.get("choices")
        if cs is None and ch is None:
            continue
        cs = list(cs) if cs is not None else [Options(ch)]
        check(f.name, getattr(obj, f.name), cs, owner=owner)


def _parse_type(f: dataclasses.Field):
    cs = f.metadata.get("constraints") or []
    kinds = [c.kind for c in cs if isinstance(c, Interval)]
    allow_none = any(c is NONE or c is None for c in cs)
    if f.metadata.get("choices") is not None:
        base = str
    elif kinds:
        base = int if all(k is int for k in kinds) else float
    else:
        base = str

    def parse(text: str):
        if allow_none and text.lower() == "none":
            return None
        try:
            if base is int:
                if "_" in text:
                    raise ValueError
                return int(text)
            if base is float:
                if "_" in text:
                    raise ValueError
                return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {base.__name__} value: {text!r}") from None
        return text

    parse.__name__ = base.__name__
    return parse


def add_arguments(
    parser: argparse.ArgumentParser,
    cls,
    *,
    exclude: Iterable[str] = (),
    defaults: Mapping | None = None,
) -> list[str]:
    """Add one flag per command-line field of dataclass ``cls`` to ``parser`` and return the
    field names added. The flag is ``--<field name>`` (``--<field-name>`` and the declared
    aliases are accepted too); its help is the field's help and its default the field's
    default (or ``defaults[name]``). Booleans become ``--flag`` / ``--no-flag``."""
    exclude = set(exclude)
    defaults = dict(defaults or {})
    added = []
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.metadata.get("cli", True) or "help" not in f.metadata:
            continue
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        names = [f"--{f.name}"]
        dashed = f"--{f.name.replace('_', '-')}"
        if dashed not in names:
            names.append(dashed)
        names += [a for a in f.metadata.get("aliases", ()) if a not in names]
        help_text = f.metadata["help"]
        if isinstance(default, bool):
            parser.add_argument(
                *names,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
        else:
            kw: dict[str, Any] = {
                "dest": f.name,
                "default": default,
                "help": help_text + " (default: %(default)s)",
            }
            if f.metadata.get("choices") is not None:
                kw["choices"] = list(f.metadata["choices"])
            else:
                kw["type"] = _parse_type(f)
            if f.metadata.get("metavar"):
                kw["metavar"] = f.metadata["metavar"]
            parser.add_argument(*names, **kw)
        added.append(f.name)
    return added


def from_arguments(
    cls, args: argparse.Namespace, *, names: Iterable[str] | None = None, **overrides
):
    """Build ``cls`` from the fields of ``args`` (those named, or every field present in the
    namespace), with ``overrides`` applied last."""
    fields = {f.name for f in dataclasses.fields(cls)}
    names = fields if names is None else set(names)
    kw = {n: getattr(args, n) for n in names if n in fields and hasattr(args, n)}
    kw.update(overrides)
    return cls(**kw)


#: Convenience constraint lists used across the package.
POSITIVE_INT = [Interval(int, 1, None, closed="left")]
NONNEGATIVE_INT = [Interval(int, 0, None, closed="left")]
POSITIVE = [Interval(float, 0, None, closed="neither")]
NONNEGATIVE = [Interval(float, 0, None, closed="left")]
PROBABILITY = [Interval(float, 0, 1, closed="both")]
OPEN_UNIT = [Interval(float, 0, 1, closed="neither")]
SEED = [Interval(int, 0, None, closed="left"), NONE, SeedObject()]
#: A parameter bound ``||theta|| <= radius``: None (no bound), a float > 0, or inf (no bound).
RADIUS = [Interval(float, 0, None, closed="neither", allow_inf=True), NONE]
#: A float > 0 that may be inf (e.g. the label-flip cost kappa).
POSITIVE_OR_INF = [Interval(float, 0, None, closed="neither", allow_inf=True)]
#: The path switch of the exact solvers: "auto" picks a path the problem has.
SOLVER = [Options(("auto", "cvxpy", "fast"))]
#: A name (e.g. a cvxpy backend, checked against the installed ones by the function).
NAME = [Instance(str, name="str")]

__all__ += [
    "POSITIVE_INT",
    "NONNEGATIVE_INT",
    "POSITIVE",
    "NONNEGATIVE",
    "PROBABILITY",
    "OPEN_UNIT",
    "SEED",
    "RADIUS",
    "POSITIVE_OR_INF",
    "SOLVER",
    "NAME",
]
