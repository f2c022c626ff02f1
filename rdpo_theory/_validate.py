"""Argument checks shared by every public function. Each raises :class:`InputError` naming the
argument and the problem."""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError

#: Relative tolerance of the weights' sum (times sqrt(n)): weights written to three decimals,
#: such as 0.333 x 3 (sum 0.999), are accepted and renormalised; 0.5 + 0.6 is refused.
WEIGHT_SUM_TOL = 1e-3


def _numeric(x, name: str) -> np.ndarray:
    """``x`` as a float64 array, refusing what numpy would accept or turn into another error:
    complex values (the imaginary part would be lost), strings (``"1"`` is not the number 1
    here, even where numpy would parse it) and ragged nested lists (numpy's ValueError would
    not name the argument)."""
    try:
        raw = np.asarray(x)
    except ValueError as exc:  # numpy >= 1.24: an inhomogeneous nested list
        raise InputError(
            f"{name} is ragged: its rows have different lengths ({exc})".replace("\n", " ")
        ) from None
    if np.iscomplexobj(raw):
        raise InputError(
            f"{name} must be real; got complex values (the imaginary part would be lost)"
        )
    if raw.dtype.kind in "USV" or (
        raw.dtype.kind == "O" and any(isinstance(v, str | bytes) for v in raw.ravel())
    ):
        raise InputError(f"{name} must be numeric, got text (strings are never numbers here)")
    try:
        return raw.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric, got {type(x).__name__}: {exc}") from None


def as_matrix(X, name: str = "X", *, allow_empty: bool = False) -> np.ndarray:
    """Return ``X`` as a finite float64 array of shape (n, d), n >= 1 unless ``allow_empty``.
    Complex, text and ragged input is refused (never silently cast)."""
    A = _numeric(X, name)
    if A.ndim != 2:
        raise InputError(f"{name} must have shape (n, d), got shape {A.shape}")
    if A.shape[0] == 0 and not allow_empty:
        raise InputError(f"{name} is empty: n = 0 rows")
    if A.shape[1] == 0:
        raise InputError(f"{name} has d = 0 columns")
    if not np.all(np.isfinite(A)):
        raise InputError(f"{name} contains NaN or inf")
    return A


def row_storage_shape(X, name: str = "X") -> tuple[int, int]:
    """Shape checks of a feature matrix left in its storage (numpy.memmap, torch tensor, dask
    array): 2-D, real numeric dtype, n >= 1, d >= 1; no copy. Returns ``(n, d)``. Finiteness
    is checked by a pass over the rows (:func:`finite_rows`)."""
    shape = tuple(int(s) for s in getattr(X, "shape", ()))
    dtype = str(getattr(X, "dtype", ""))
    if "complex" in dtype:
        raise InputError(
            f"{name} must be real; got dtype {dtype} (the imaginary part would be lost)"
        )
    if not any(k in dtype for k in ("float", "int", "bool")):
        raise InputError(f"{name} must be numeric, got dtype {dtype or type(X).__name__}")
    if len(shape) != 2:
        raise InputError(f"{name} must have shape (n, d), got shape {shape}")
    if shape[0] == 0:
        raise InputError(f"{name} is empty: n = 0 rows")
    if shape[1] == 0:
        raise InputError(f"{name} has d = 0 columns")
    return shape[0], shape[1]


def finite_rows(row_abs_max: np.ndarray, name: str = "X") -> None:
    """Refuse a matrix whose per-row ``max |x_ij|`` (from one pass) is not finite, naming the
    first such row."""
    bad = np.flatnonzero(~np.isfinite(row_abs_max))
    if bad.size:
        raise InputError(f"{name} contains NaN or inf (first in row {int(bad[0])})")


def as_vector(v, name: str, *, length: int | None = None) -> np.ndarray:
    """Return ``v`` as a finite float64 vector, optionally of a given length."""
    a = _numeric(v, name)
    if a.ndim != 1:
        raise InputError(f"{name} must be 1-d, got shape {a.shape}")
    if length is not None and a.shape[0] != length:
        raise InputError(f"{name} must have length {length}, got {a.shape[0]}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} contains NaN or inf")
    return a


def as_labels(y, n: int, name: str = "y") -> np.ndarray:
    """Return labels as a float64 vector of 0/1 of length ``n``."""
    a = as_vector(y, name, length=n)
    if not np.all((a == 0) | (a == 1)):
        bad = a[(a != 0) & (a != 1)][:3]
        raise InputError(f"{name} must contain only labels 0 and 1; found {bad.tolist()}")
    return a


def as_weights(weights, n: int, name: str = "weights") -> np.ndarray:
    """Return probability weights of length ``n`` (non-negative, summing to 1).

    ``None`` gives uniform weights 1/n.
    """
    if weights is None:
        return np.full(n, 1.0 / n)
    w = as_vector(weights, name, length=n)
    if np.any(w < 0):
        raise InputError(f"{name} must be non-negative; min is {w.min():.3g}")
    s = float(w.sum())
    if abs(s - 1.0) > WEIGHT_SUM_TOL * max(1.0, n**0.5):
        raise InputError(f"{name} must sum to 1; they sum to {s:.12g}")
    return w / s


def as_theta(theta, d: int, name: str = "theta_ref") -> np.ndarray:
    """``None`` means the zero vector (uniform reference)."""
    if theta is None:
        return np.zeros(d)
    return as_vector(theta, name, length=d)


# ---------------------------------------------------------------------------- scalar shims
# Scalar parameters are declared next to their function's signature with
# ``rdpo_theory.options.declare`` and checked by ``rdpo_theory.options.check`` (one validator,
# one message shape). The three helpers below only translate the old call shapes into that
# validator for modules not yet declared; they hold no check of their own. Do not use them
# in new code.
def positive(x, name: str, *, allow_zero: bool = False, allow_inf: bool = False) -> float:
    """``options.check`` with a float > 0 (``>= 0`` with ``allow_zero``); returns a float."""
    from .options import Interval, check

    c = Interval(float, 0, None, closed="left" if allow_zero else "neither", allow_inf=allow_inf)
    return float(check(name, x, [c]))


def seed(s, name: str = "seed"):
    """``options.check`` with :data:`rdpo_theory.options.SEED`; integers come back as int."""
    from .options import SEED, check

    s = check(name, s, SEED)
    if isinstance(s, list | tuple):
        return [int(k) for k in s]
    return int(s) if isinstance(s, int | np.integer) else s


def unit_interval(x, name: str, *, open_right: bool = False) -> float:
    """``options.check`` with a float in [0, 1] (``[0, 1)`` with ``open_right``)."""
    from .options import Interval, check

    c = Interval(float, 0, 1, closed="left" if open_right else "both")
    return float(check(name, x, [c]))


#: The solution paths of the exact solvers: conic programs through cvxpy, or the fast exact path.
SOLVER_PATHS = ("cvxpy", "fast")


def solver_path(solver, *, method: str, valid=SOLVER_PATHS, why: str = "", X=None) -> str:
    """Resolve the ``solver`` switch of an exact solver to a path ``method`` has (``valid``).

    ``"auto"`` (the default of every exact solver) picks a path that exists: the fast path
    for features left in their storage (``X`` a memmap, float32 array, torch tensor or dask
    array: it reads them in place), else the conic path when there is one, else the fast
    path. ``why`` says why a path is missing when one is named that does not exist."""
    if isinstance(solver, str) and solver == "auto":
        from .exact.problem import is_row_storage

        if "fast" in valid and (X is not None and is_row_storage(X) or "cvxpy" not in valid):
            return "fast"
        return "cvxpy" if "cvxpy" in valid else valid[0]
    if not isinstance(solver, str) or solver not in SOLVER_PATHS:
        raise InputError(
            f"The 'solver' parameter of {method} must be one of {('auto', *valid)}. Got "
            f"{solver!r} instead. (solver chooses the path; the conic backend is "
            "cvxpy_solver=.)"
        )
    if solver not in valid:
        raise InputError(
            f"The 'solver' parameter of {method} must be one of {('auto', *valid)}{why}. "
            f"Got {solver!r} instead."
        )
    return solver


def cvxpy_solver(name, *, method: str) -> str:
    """Check ``cvxpy_solver``: the name of an installed cvxpy backend (case-insensitive).
    Returns the name as cvxpy spells it. The default, Clarabel (a dependency of cvxpy), is
    accepted without importing cvxpy, so the fast paths never load it."""
    import importlib.util

    if name == "CLARABEL" and importlib.util.find_spec("clarabel") is not None:
        return name
    import cvxpy as cp

    installed = tuple(cp.installed_solvers())
    if isinstance(name, str) and name.upper() in installed:
        return name.upper()
    raise InputError(
        f"The 'cvxpy_solver' parameter of {method} must be an installed cvxpy solver, one of "
        f"{installed}. Got {name!r} instead."
    )


def unknown_keywords(given, valid, what: str) -> None:
    """Refuse keyword names in ``given`` that are not in ``valid``, listing the valid names:
    ``InputError("approx.dpo got unknown keyword 'lr_'; valid keywords: ...")``."""
    bad = [k for k in given if k not in valid]
    if bad:
        names = ", ".join(repr(k) for k in bad)
        s = "s" if len(bad) > 1 else ""
        raise InputError(
            f"{what} got unknown keyword{s} {names}; valid keywords: "
            f"{', '.join(sorted(valid)) or '(none)'}"
        )


def renamed_keyword(old: str, new: str):
    """Decorator keeping ``old`` as a deprecated alias of the keyword argument ``new``: a call
    with ``old=`` warns (``DeprecationWarning``) and is passed on as ``new=``."""
    import functools
    import warnings

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if old in kwargs:
                if new in kwargs:
                    raise InputError(f"{fn.__name__} got both {old!r} and {new!r}; pass {new!r}")
                warnings.warn(
                    f"{fn.__name__}({old}=...) is deprecated; use {new}=...",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return deco


def row_weights_groups(rows, what: str = "dataset") -> tuple[np.ndarray | None, list | None]:
    """The optional ``weight`` (>= 0, finite) and ``group`` (non-empty string) of preference rows.

    A column is either on every row or on none. Returns ``(weights (n,) or None, groups
    (n,) or None)``; the weights are raw (not normalised). Errors name the row.
    """
    rows = list(rows)
    out: list = []
    for key in ("weight", "group"):
        has = [key in r and r[key] is not None for r in rows]
        if not any(has):
            out.append(None)
            continue
        if not all(has):
            i = has.index(False)
            raise InputError(
                f"{what} row {i} has no {key!r} while other rows do: give a {key} on every row "
                "or on none"
            )
        vals = []
        for i, r in enumerate(rows):
            v = r[key]
            if key == "weight":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise InputError(f"{what} row {i}: weight must be a finite number, got {v!r}")
                if v < 0:
                    raise InputError(f"{what} row {i}: weight must be >= 0, got {v!r}")
                vals.append(float(v))
            else:
                if not isinstance(v, str) or not v.strip():
                    raise InputError(f"{what} row {i}: group must be a non-empty string, got {v!r}")
                vals.append(v)
        if key == "weight":
            w = np.asarray(vals, dtype=np.float64)
            if not w.sum() > 0:
                raise InputError(f"{what}: every weight is 0; at least one row needs weight > 0")
            out.append(w)
        else:
            out.append(vals)
    return out[0], out[1]
