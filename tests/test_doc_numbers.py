"""Numbers quoted in README.md and docs/*.md agree with the committed tables they come from.

Every number a study produces that the prose quotes is declared in tests/doc_numbers.csv, one
CSV line each (quote a field that holds a comma):

    file,text,table,rows,columns,fmt[,scale]

* ``file``: the page, relative to the repository root (README.md, docs/studies.md, ...);
* ``text``: a verbatim piece of the page containing the number(s), whitespace-insensitive (a
  line break in the Markdown source is a space);
* ``table``: the committed CSV, relative to the repository root (figures/shift_tradeoff.csv);
* ``rows``: ``"column=value column=value ..."``, compared with the CSV's text as written, which
  must select exactly one row (``param=`` selects an empty cell; quote a value holding spaces,
  shell-style: ``layout='paper: 8 GPUs x 4, gathered, A=4'``);
* ``columns``: one column, or several separated by spaces, whose values appear in ``text`` in
  that order (``"slope ci_lo ci_hi"`` for ``-0.507 [-0.547, -0.466]``);
* ``fmt``: the format spec the page rounds with (``".3f"``, ``".2f"``, ``".0e"``; an exponent is
  written without padding, ``7e-8``);
* ``scale`` (optional): a divisor applied first, e.g. ``1073741824`` for bytes quoted in GiB.

The test fails when the quoted text is no longer in the page (the prose changed: update the
line) or when the table's value, rounded with ``fmt``, is not the number written (the table
changed: regenerate the prose). A new page joins by appending its lines to tests/doc_numbers.csv.
"""

from __future__ import annotations

import csv
import re
import shlex
from functools import cache
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Quote(NamedTuple):
    file: str
    text: str
    table: str
    rows: str
    columns: str
    fmt: str
    scale: str | None = None  # the table's value is divided by it first (e.g. 1073741824: GiB)


DECLARED = ROOT / "tests" / "doc_numbers.csv"


def load_quotes() -> list[Quote]:
    with open(DECLARED, newline="") as fh:
        return [Quote(**row) for row in csv.DictReader(fh)]


QUOTES = load_quotes()
SHIFT = "figures/shift_tradeoff.csv"
OPPOSED = "setting=opposed mixture=convex"


def _normalise(text: str) -> str:
    return " ".join(text.split())


@cache
def _page(file: str) -> str:
    return _normalise((ROOT / file).read_text())


@cache
def _table(table: str) -> list[dict[str, str]]:
    with open(ROOT / table, newline="") as fh:
        return list(csv.DictReader(fh))


def format_number(value: float, fmt: str) -> str:
    """``value`` as the prose writes it: ``format(value, fmt)`` with a bare exponent (7e-8)."""
    text = format(value, fmt)
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m[1] == "-" else "") + m[2], text)


def select(table: str, rows: str) -> dict[str, str]:
    wanted = dict(part.split("=", 1) for part in shlex.split(rows))
    rows_found = [r for r in _table(table) if all(r.get(k) == v for k, v in wanted.items())]
    assert len(rows_found) == 1, f"{table}: {rows!r} selects {len(rows_found)} rows, not 1"
    return rows_found[0]


def check(quote: Quote) -> None:
    text = _normalise(quote.text)
    assert text in _page(quote.file), f"{quote.file} no longer contains {text!r}"
    row = select(quote.table, quote.rows)
    pos = 0
    for column in quote.columns.split():
        written = format_number(float(row[column]) / float(quote.scale or 1), quote.fmt)
        m = re.compile(rf"(?<![\d.]){re.escape(written)}(?![\d])").search(text, pos)
        assert m, (
            f"{quote.file}: {text!r} should quote {quote.table} {quote.rows!r} {column} = "
            f"{row[column]} as {written}"
        )
        pos = m.end()


@pytest.mark.parametrize("quote", QUOTES, ids=lambda q: f"{q.file}:{q.text[:40]}")
def test_documented_number_matches_its_table(quote):
    check(quote)


def test_the_check_catches_a_wrong_number():
    """The numbers the issue found wrong (0.42 and -0.19 for exact KLDPO) fail the check."""
    wrong = Quote("README.md", "KLDPO", SHIFT, f"{OPPOSED} method=kldpo-exact param=0.01", "x", "")
    row = select(SHIFT, wrong.rows)
    assert format_number(float(row["nominal_mean"]), ".2f") == "0.46"  # not 0.42
    assert format_number(float(row["worst_mean"]), ".2f") == "-0.20"  # not -0.19
    assert format_number(6.88113464e-08, ".0e") == "7e-8"
    with pytest.raises(AssertionError, match="should quote"):
        _page.cache_clear()
        check(Quote("README.md", "", SHIFT, wrong.rows, "nominal_mean", ".3f"))
    with pytest.raises(AssertionError, match="selects 2 rows"):
        select(SHIFT, f"{OPPOSED} method=kldpo-exact")
