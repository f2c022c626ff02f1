"""Argument checks shared by the ``rdpo`` subcommands. Each raises
:class:`~rdpo_theory.errors.InputError` naming the option (``--out``, ``--jobs``, ...), so a
command refuses bad arguments before it starts any work or writes any file."""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path

from ..errors import InputError
from ..options import Interval


def output_dir(path, flag: str = "--out") -> Path:
    """A folder to write into: it may not exist yet, but must not be a file (nor lie under
    one), and the folder that holds it (its nearest existing ancestor) must be writable,
    checked by creating and removing a temporary file there (so read-only file systems count,
    even for root)."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                what = "is an existing file" if q == p else f"lies under the file {str(q)!r}"
                raise InputError(f"{flag} {str(p)!r} {what}; give a folder")
            _probe_write(q, p, flag)
            break
    return p


def _probe_write(folder: Path, target: Path, flag: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".rdpo-write-check-")
    except OSError as exc:
        where = "" if folder == target else f" (in {str(folder)!r})"
        raise InputError(
            f"{flag} {str(target)!r} is not writable{where}: {exc.strerror or exc}"
        ) from None
    os.close(fd)
    os.unlink(tmp)


#: Arguments naming folders a command writes into: (attribute, flag). :func:`output_paths`
#: checks each one a command has, before the command runs (``cli.main`` calls it).
OUTPUT_PATHS = (("out", "--out"), ("cache", "--cache"))


def output_paths(args) -> None:
    """Check every output folder of ``args`` (:data:`OUTPUT_PATHS`, when given) with
    :func:`output_dir`, so a command refuses a file or an unwritable folder before any work.
    A command that only reads one of them sets ``check_paths=False`` on its parser and checks
    what it writes itself (``rdpo cache info``)."""
    if not getattr(args, "check_paths", True):
        return
    for attr, flag in OUTPUT_PATHS:
        value = getattr(args, attr, None)
        if value is not None:
            output_dir(value, flag)


def jobs(n, flag: str = "--jobs") -> int:
    if n == 0:
        raise InputError(f"{flag} must be a non-zero integer (-1 = all cores), got 0")
    return n


def _flag_check(value, flag: str, constraint: Interval):
    """``value`` if it satisfies ``constraint`` (rdpo_theory.options), else the declared
    message shape with the flag as the name: ``--n must be an int >= 1. Got 0 instead.``"""
    if not constraint.holds(value):
        raise InputError(f"{flag} must be {constraint.describe()}. Got {value!r} instead.")
    return value


def integer(n, flag: str, *, minimum: int) -> int:
    """``n`` is an int >= ``minimum``."""
    return _flag_check(n, flag, Interval(int, minimum, None, closed="left"))


def number(x, flag: str, *, minimum: float, strict: bool = False, allow_inf: bool = False):
    """``x`` is a number >= ``minimum`` (> with ``strict``), finite unless ``allow_inf``."""
    closed = "neither" if strict else "left"
    return _flag_check(x, flag, Interval(float, minimum, None, closed=closed, allow_inf=allow_inf))


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


# ---------------------------------------------------------------- flags from study configs
class Preset:
    """The default of a flag generated from a study configuration: "the preset's value". Its
    text (shown by ``--help``) lists the presets' values; :func:`config_changes` skips it."""

    def __init__(self, note: str) -> None:
        self.note = note

    def __str__(self) -> str:
        return self.note


def config_arguments(parser, cls, *, names=None, presets=None) -> list[str]:
    """Add flags generated from the fields of the study configuration dataclass ``cls``
    (:func:`rdpo_theory.options.add_arguments`: ``--field_name``, ``--field-name`` and the
    field's declared aliases, its help and its type) and return the field names added.

    Only the command-line fields in ``names`` (default: all) get a flag. A flag left out means
    the preset's value: ``presets`` maps a label to a factory (``{"": Cls.quick, "--full: ":
    Cls.full}``) and the help lists each preset's value. :func:`config_changes` collects the
    flags that were given."""
    from .. import options as O

    fields = [f.name for f in dataclasses.fields(cls)]
    keep = set(fields if names is None else names)
    built = [(label, make()) for label, make in (presets or {"": cls}).items()]
    defaults = {}
    for name in fields:
        values = [getattr(cfg, name) for _, cfg in built]
        note = "; ".join(f"{label}{v}" for (label, _), v in zip(built, values))
        if all(v == values[0] for v in values):
            note = str(values[0])
        defaults[name] = Preset(note.replace("%", "%%"))
    return O.add_arguments(
        parser, cls, exclude=[f for f in fields if f not in keep], defaults=defaults
    )


def config_changes(args, names) -> dict:
    """The configuration fields in ``names`` given on the command line (not a :class:`Preset`)."""
    out = {}
    for n in names:
        value = getattr(args, n, None)
        if value is not None and not isinstance(value, Preset):
            out[n] = value
    return out


def build_config(factory, **changes):
    """``factory(**changes)``: a study configuration checked before any work. A refused field
    that came from the command line is named by its flag (``--world-seed must be an int >= 0.
    Got -1 instead.``)."""
    try:
        return factory(**changes)
    except InputError as exc:

        def flag(m: re.Match) -> str:
            name = m.group(1)
            return "--" + name.replace("_", "-") if name in changes else m.group(0)

        msg = re.sub(r"The '(\w+)' parameter of \w+", flag, str(exc))
        raise InputError(msg) from None
