"""Argument checks shared by the ``rdpo`` subcommands. Each raises
:class:`~rdpo_theory.errors.InputError` naming the option (``--out``, ``--jobs``, ...), so a
command refuses bad arguments before it starts any work or writes any file."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import InputError


def output_dir(path, flag: str = "--out") -> Path:
    """A folder to write into: it may not exist yet, but must not be a file (nor lie under
    one)."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                what = "is an existing file" if q == p else f"lies under the file {str(q)!r}"
                raise InputError(f"{flag} {str(p)!r} {what}; give a folder")
            break
    return p


def jobs(n, flag: str = "--jobs") -> int:
    if n == 0:
        raise InputError(f"{flag} must be a non-zero integer (-1 = all cores), got 0")
    return n


def integer(n, flag: str, *, minimum: int) -> int:
    if n < minimum:
        raise InputError(f"{flag} must be >= {minimum}, got {n}")
    return n


def number(x, flag: str, *, minimum: float, strict: bool = False, allow_inf: bool = False):
    """``x`` is a number >= ``minimum`` (> with ``strict``), finite unless ``allow_inf``."""
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise InputError(f"{flag} must be a finite number, got {x}")
    if x < minimum or (strict and x == minimum):
        raise InputError(f"{flag} must be {'>' if strict else '>='} {minimum:g}, got {x:g}")
    return x


def not_applicable(args, options: dict[str, str], reason: str) -> None:
    """Refuse every option in ``options`` (attribute -> flag) that was given (is not None)."""
    given = [flag for attr, flag in options.items() if getattr(args, attr, None) is not None]
    if given:
        raise InputError(
            f"{', '.join(given)} do{'es' if len(given) == 1 else ''} not apply {reason}"
        )


def joblib_backend(name, flag: str = "--backend"):
    """None or a joblib backend name that is registered (or registrable: dask, ray)."""
    if name is None:
        return None
    from joblib.parallel import BACKENDS, EXTERNAL_BACKENDS

    known = sorted(set(BACKENDS) | set(EXTERNAL_BACKENDS))
    if name not in known:
        raise InputError(f"{flag} must be a joblib backend, one of {known}; got {name!r}")
    return name
