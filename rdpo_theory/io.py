"""Every file the package reads, validated in one place.

Each reader raises :class:`~rdpo_theory.errors.FileFormatError` (an ``InputError``, so a
``ValueError``) with one clear message per problem, naming the file, the line (1-based, the
header is line 1) or column, what was expected and what was found:

* the path: missing, a directory, unreadable (permissions), empty;
* the encoding (UTF-8; the line of the first bad byte);
* CSV (:func:`read_preference_csv`): the header must be ``x0, ..., x{d-1}, y`` and optionally
  ``weight``, in any order; missing (``x0,x2`` without ``x1``), unknown (``xfoo``) and duplicate
  columns are refused; every row has as many fields as the header; every value is a finite
  number (digit separators such as ``1_000``, which :func:`float` accepts, are refused); lines
  are file lines, also after a quoted field that spans lines; ``y`` is 0 or 1; ``weight`` is
  >= 0 (weights are normalised by :class:`~rdpo_theory.data.PreferenceData`'s rule: they must
  sum to 1);
* NPZ (:func:`read_preference_npz`): a readable zip of ``.npy`` arrays, no pickled objects,
  arrays ``X`` (n, d) and ``y`` (n,), optional ``weights`` (n,), numeric and finite, no others;
* JSON lines (:func:`read_preference_jsonl`): one JSON object per non-blank line with string
  ``prompt``, ``chosen`` and ``rejected`` (other keys are allowed and kept); a key given twice
  on a line is refused;
* tables of named columns (:func:`read_table`, e.g. ``rdpo audit --logps``), CSV or JSON lines:
  the declared columns only (unknown, duplicate and missing required ones are refused), each
  value of its declared kind.

:func:`json_safe` turns NaN into ``null`` and infinities into the strings ``"inf"`` and
``"-inf"``, so every JSON the package writes is valid JSON.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
import re
from pathlib import Path

import numpy as np

from .data import PreferenceData
from .errors import FileFormatError, InputError

PREFERENCE_KEYS = ("prompt", "chosen", "rejected")
_X_COL = re.compile(r"^x(0|[1-9][0-9]*)$")


def _fail(path: Path, what: str, *, line: int | None = None, column: str | None = None):
    where = str(path)
    if line is not None:
        where += f", line {line}"
    if column is not None:
        where += f", column {column!r}"
    raise FileFormatError(f"{where}: {what}", path=str(path), line=line, column=column) from None


def check_readable_file(path, *, flag: str = "path") -> Path:
    """``path`` as a Path to an existing, readable, non-empty regular file."""
    if not isinstance(path, str | Path):
        raise InputError(f"{flag} must be a file path, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileFormatError(f"{flag} {str(p)!r} does not exist", path=str(p))
    if p.is_dir():
        raise FileFormatError(f"{flag} {str(p)!r} is a directory, not a file", path=str(p))
    try:
        with open(p, "rb") as f:
            first = f.read(1)
    except OSError as exc:
        msg = f"{flag} {str(p)!r} cannot be read: {exc.strerror}"
        raise FileFormatError(msg, path=str(p)) from None
    if not first:
        raise FileFormatError(f"{flag} {str(p)!r} is empty", path=str(p))
    return p


def read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a leading BOM is dropped); the line of a bad byte otherwise."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        _fail(
            path, f"is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start})", line=line
        )


# ---------------------------------------------------------------------------- preference data
def read_preference_data(path, *, flag: str = "path"):
    """A :class:`~rdpo_theory.data.PreferenceData` from a ``.csv`` or ``.npz`` file, by suffix."""
    p = check_readable_file(path, flag=flag)
    if p.suffix == ".csv":
        return read_preference_csv(p)
    if p.suffix == ".npz":
        return read_preference_npz(p)
    raise FileFormatError(f"{flag} must end in .npz or .csv, got {p.name!r}", path=str(p))


def write_preference_data(data: PreferenceData, path) -> Path:
    """Write ``data`` to ``.npz`` (arrays ``X``, ``y``, ``weights``) or ``.csv`` (columns
    ``x0..x{d-1}, y, weight``, 17 significant digits: a lossless round trip), by suffix; the
    readers above read both back. Returns the path."""
    path = Path(path)
    if path.suffix == ".npz":
        np.savez(path, X=data.X, y=data.y, weights=data.weights)
    elif path.suffix == ".csv":
        import pandas as pd

        df = pd.DataFrame(data.X, columns=[f"x{j}" for j in range(data.d)])
        df["y"] = data.y.astype(int)
        df["weight"] = data.weights
        df.to_csv(path, index=False, float_format="%.17g")
    else:
        raise InputError(f"path must end in .npz or .csv, got {path.name!r}")
    return path


def _csv_columns(path: Path, header: list[str]) -> tuple[list[int], int, int | None]:
    """Indices of x0..x{d-1}, of y and of weight (or None) in ``header``."""
    names = [h.strip() for h in header]
    seen: dict[str, int] = {}
    for j, h in enumerate(names):
        if h in seen:
            _fail(path, f"duplicate column {h!r} (columns {seen[h] + 1} and {j + 1})", line=1)
        seen[h] = j
    unknown = [h for h in names if not (_X_COL.match(h) or h in ("y", "weight"))]
    if unknown:
        _fail(
            path,
            f"unknown columns {unknown}; expected x0, x1, ..., x{{d-1}}, y and optionally weight",
            line=1,
        )
    xs = sorted((int(h[1:]), j) for h, j in seen.items() if _X_COL.match(h))
    if not xs:
        _fail(path, "has no feature columns; expected x0, x1, ..., x{d-1}", line=1)
    missing = sorted(set(range(xs[-1][0] + 1)) - {k for k, _ in xs})
    if missing:
        _fail(
            path,
            f"feature columns must be x0..x{xs[-1][0]} without gaps; missing "
            f"{', '.join(f'x{k}' for k in missing)}",
            line=1,
        )
    if "y" not in seen:
        _fail(path, "has no label column 'y'", line=1)
    return [j for _, j in xs], seen["y"], seen.get("weight")


def csv_records(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """``(line, fields)`` of every non-blank record of CSV ``text``, ``line`` being the file
    line (1-based) where the record starts, so a quoted field spanning lines does not shift
    the lines of the records after it."""
    reader = csv.reader(_stdio.StringIO(text))
    out, start = [], 1
    try:
        for rec in reader:
            if rec and any(c.strip() for c in rec):
                out.append((start, rec))
            start = reader.line_num + 1
    except csv.Error as exc:
        _fail(path, f"is not valid CSV: {exc}", line=reader.line_num)
    return out


def parse_number(path: Path, cell: str, *, line: int, column: str, finite: bool = True) -> float:
    """A CSV cell as a float: what :func:`float` reads except digit separators (``1_000`` is
    refused: a CSV writer never emits them, so one is a typo); finite unless ``finite=False``."""
    text = cell.strip()
    try:
        if "_" in text:
            raise ValueError(text)
        v = float(text)
    except ValueError:
        _fail(path, f"expected a number, got {text!r}", line=line, column=column)
    if finite and not math.isfinite(v):
        _fail(path, f"expected a finite number, got {text}", line=line, column=column)
    return v


def read_preference_csv(path):
    """Read a CSV written by :func:`write_preference_data` (header ``x0..x{d-1},y[,weight]``).

    A file without a ``weight`` column is uniform. See the module docstring for every check."""
    p = check_readable_file(path)
    lines = csv_records(p, read_text(p))
    if not lines:
        _fail(p, "has no header: expected x0, x1, ..., y[, weight]")
    (_, header), body = lines[0], lines[1:]
    xcols, ycol, wcol = _csv_columns(p, header)
    names = [h.strip() for h in header]
    if not body:
        _fail(p, "has a header but no data rows")
    n, width = len(body), len(header)
    X = np.empty((n, len(xcols)))
    y = np.empty(n)
    w = np.empty(n) if wcol is not None else None
    for i, (lineno, rec) in enumerate(body):
        if len(rec) != width:
            _fail(p, f"has {len(rec)} fields, expected {width} like the header", line=lineno)
        vals = [parse_number(p, c, line=lineno, column=names[j]) for j, c in enumerate(rec)]
        X[i] = [vals[j] for j in xcols]
        if vals[ycol] not in (0.0, 1.0):
            _fail(p, f"expected a label 0 or 1, got {rec[ycol].strip()}", line=lineno, column="y")
        y[i] = vals[ycol]
        if w is not None:
            if vals[wcol] < 0:
                _fail(p, f"expected a weight >= 0, got {vals[wcol]}", line=lineno, column="weight")
            w[i] = vals[wcol]
    try:
        return PreferenceData(X, y, w)
    except InputError as exc:
        _fail(p, str(exc))


def read_preference_npz(path):
    """Read an ``.npz`` written by :func:`write_preference_data` (arrays ``X``, ``y``,
    optional ``weights``). Pickled (object) arrays are refused, never loaded."""
    import zipfile

    p = check_readable_file(path)
    with open(p, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            _fail(p, "is not an .npz archive (a zip of .npy arrays, as numpy.savez writes)")
    try:
        with np.load(p, allow_pickle=False) as f:
            names = set(f.files)
            missing = {"X", "y"} - names
            if missing:
                _fail(p, f"lacks arrays {sorted(missing)}; has {sorted(names)}")
            extra = names - {"X", "y", "weights"}
            if extra:
                _fail(p, f"has unexpected arrays {sorted(extra)}; expected X, y and weights")
            arrays = {k: f[k] for k in sorted(names)}
    except FileFormatError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        _fail(p, f"is not a readable .npz archive: {exc}")
    except ValueError as exc:  # object arrays need pickle, which is refused
        _fail(p, f"holds an array that cannot be read without pickle (object dtype?): {exc}")
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            _fail(p, f"array {k!r} must be real numbers, got dtype {a.dtype}")
    try:
        return PreferenceData(arrays["X"], arrays["y"], arrays.get("weights"))
    except InputError as exc:
        _fail(p, str(exc))


# ---------------------------------------------------------------------------- tables
#: Kinds of a :func:`read_table` column: a finite number, a finite number >= 0, an integer
#: >= 0, a non-empty string.
COLUMN_KINDS = ("number", "nonnegative", "index", "label")


def _cell(path: Path, value, kind: str, *, line: int, column: str):
    """One table value of ``kind`` (:data:`COLUMN_KINDS`), from a CSV string or a JSON value."""
    if kind == "label":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            _fail(path, f"expected a string, got {json.dumps(value)}", line=line, column=column)
        text = str(value).strip()
        if not text:
            _fail(path, "expected a non-empty string", line=line, column=column)
        return text
    if isinstance(value, str):
        v = parse_number(path, value, line=line, column=column)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        v = float(value)
        if not math.isfinite(v):
            _fail(path, f"expected a finite number, got {value}", line=line, column=column)
    else:
        _fail(path, f"expected a number, got {json.dumps(value)}", line=line, column=column)
    if kind in ("nonnegative", "index") and v < 0:
        _fail(path, f"expected a number >= 0, got {value}", line=line, column=column)
    if kind == "index" and v != int(v):
        _fail(path, f"expected an integer, got {value}", line=line, column=column)
    return int(v) if kind == "index" else v


def read_table(path, columns: dict[str, str], *, required, flag: str = "path") -> dict:
    """A table of named columns from a CSV file (``.csv``, header on its first line) or a
    JSON-lines file (any other suffix, one object per line).

    Parameters
    ----------
    path : str or Path
    columns : dict
        Every allowed column and its kind (:data:`COLUMN_KINDS`): ``"number"`` (finite),
        ``"nonnegative"``, ``"index"`` (integer >= 0) or ``"label"`` (non-empty string).
    required : sequence of str
        The columns every file must have; the others are optional, but a JSON-lines file that
        has one on some line must have it on every line.
    flag : str
        How errors name the path (``"--logps"``).

    Returns
    -------
    dict
        Column name -> list of values (floats, ints or strings), in file order, for the
        columns the file has, plus ``"_line"``: the file line of each row (1-based).

    Raises
    ------
    FileFormatError
        A missing, unreadable or empty path, a directory, a file with a header but no rows,
        duplicate, unknown or missing columns, a row with too many or too few fields, a bad
        value: each names the file, the line and the column.
    """
    p = check_readable_file(path, flag=flag)
    unknown_kinds = {k for k in columns.values() if k not in COLUMN_KINDS}
    if unknown_kinds:
        raise ValueError(f"column kinds must be in {COLUMN_KINDS}, got {sorted(unknown_kinds)}")
    expected = f"expected columns {list(required)} and optionally " + str(
        [c for c in columns if c not in required]
    )

    def check_names(names, line):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            _fail(p, f"duplicate columns {dup}", line=line)
        unknown = [n for n in names if n not in columns]
        if unknown:
            _fail(p, f"unknown columns {unknown}; {expected}", line=line)
        missing = [c for c in required if c not in names]
        if missing:
            _fail(p, f"lacks columns {missing}; {expected}", line=line)

    if p.suffix == ".csv":
        records = csv_records(p, read_text(p))
        if not records:
            _fail(p, f"has no header; {expected}")
        (hline, header), body = records[0], records[1:]
        names = [h.strip() for h in header]
        check_names(names, hline)
        if not body:
            _fail(p, "has a header but no data rows")
        rows = []
        for line, rec in body:
            if len(rec) != len(names):
                _fail(p, f"has {len(rec)} fields, expected {len(names)} like the header", line=line)
            rows.append((line, dict(zip(names, rec))))
    else:
        rows = read_jsonl_objects(p, flag=flag, what=f"with {list(required)}")
        names = list(rows[0][1])
        for line, obj in rows:
            check_names(list(obj), line)
            if set(obj) != set(names):
                diff = sorted(set(obj) ^ set(names))
                _fail(
                    p,
                    f"has columns {sorted(obj)}, the first row {sorted(names)} ({diff})",
                    line=line,
                )
    out: dict = {n: [] for n in names}
    out["_line"] = [line for line, _ in rows]
    for line, row in rows:
        for n in names:
            out[n].append(_cell(p, row[n], columns[n], line=line, column=n))
    return out


# ---------------------------------------------------------------------------- JSON lines
def read_preference_jsonl(path, *, flag: str = "path") -> list[dict]:
    """Preference rows ``{"prompt", "chosen", "rejected"}`` (strings) of a JSON-lines file.

    Blank lines are skipped; every other line must be a JSON object with those three string
    keys. Errors name the file and the line."""
    p, rows = Path(path), []
    for i, obj in read_jsonl_objects(path, flag=flag, what=f"with {list(PREFERENCE_KEYS)}"):
        for k in PREFERENCE_KEYS:
            if k not in obj:
                _fail(p, f"missing key {k!r} (has {sorted(obj)})", line=i)
            if not isinstance(obj[k], str):
                _fail(p, f"key {k!r} must be a string, got {type(obj[k]).__name__}", line=i)
        rows.append(obj)
    return rows


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise _DuplicateKey(k)
        seen[k] = v
    return seen


def read_jsonl_objects(path, *, flag: str = "path", what: str = "") -> list[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line of a JSON-lines file; each line must
    be one JSON object (``what`` describes the expected keys in errors). At least one."""
    p = check_readable_file(path, flag=flag)
    out = []
    for i, line in enumerate(read_text(p).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as exc:
            _fail(p, f"is not JSON: {exc.msg} (column {exc.colno})", line=i)
        except _DuplicateKey as exc:
            _fail(p, f"has the key {exc.args[0]!r} twice", line=i)
        if not isinstance(obj, dict):
            _fail(
                p,
                f"expected a JSON object {what}, got a {type(obj).__name__}".replace("  ", " "),
                line=i,
            )
        out.append((i, obj))
    if not out:
        _fail(p, "has no rows: only blank lines")
    return out


# ---------------------------------------------------------------------------- JSON out
def json_safe(obj):
    """A copy of ``obj`` that :func:`json.dumps` writes as valid JSON: NaN becomes None
    (``null``), +-inf the strings ``"inf"``/``"-inf"``, numpy scalars and arrays Python ones."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def dumps_json(obj, **kw) -> str:
    """:func:`json.dumps` of :func:`json_safe` ``(obj)``, refusing any remaining NaN/inf."""
    return json.dumps(json_safe(obj), allow_nan=False, **kw)


__all__ = [
    "PREFERENCE_KEYS",
    "check_readable_file",
    "dumps_json",
    "json_safe",
    "COLUMN_KINDS",
    "csv_records",
    "parse_number",
    "read_preference_csv",
    "read_table",
    "read_preference_data",
    "read_jsonl_objects",
    "read_preference_jsonl",
    "read_preference_npz",
    "read_text",
]
