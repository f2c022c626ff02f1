"""Numbers quoted in README.md and docs/*.md agree with the committed tables they come from.

Every number a study produces that the prose quotes is declared in tests/doc_numbers.csv, one
CSV line each (quote a field that holds a comma):

    file,text,table,rows,columns,fmt[,scale[,agg]]

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
* ``scale`` (optional): a divisor applied first, e.g. ``1073741824`` for bytes quoted in GiB;
* ``agg`` (optional, empty for one row): a number derived from several rows, for each column

  - ``mean``, ``median``, ``min``, ``max``, ``sum``: over every row ``rows`` selects (at least
    one; a mean over seeds is ``rows="method=dpo" agg=mean``); empty cells are skipped;
  - ``count``: how many selected rows have a non-empty cell in the column;
  - ``ratio``, ``difference``: ``rows`` holds two selectors separated by a lone ``/``
    (``"normalizer=mlmc quantity=x / normalizer=running quantity=x"``), each selecting exactly
    one row, and the number is the first row's value over (minus) the second's ("6 times the
    variance", "trades 0.09 nats").

  Without ``agg``, a column written ``a/b`` (``a-b``) is the ratio (difference) of two cells of
  the one row ("its worst case is 3.7 times its mean": ``worst_loss/nominal_loss``).

The test fails when the quoted text is no longer in the page (the prose changed: update the
line) or when the table's value, rounded with ``fmt``, is not the number written (the table
changed: regenerate the prose). A new page joins by appending its lines to tests/doc_numbers.csv.

Closed forms that the prose evaluates (``(1 - 1/B)^2`` at B = 2, 4, ...) are declared in
``CLOSED_FORMS`` below, computed here and checked the same way.

**The guard.** ``test_every_prose_number_is_declared`` scans README.md and docs/*.md (not
``UNGUARDED``: the generated changelog, the API pages under docs/api/, and the pages in
``NOT_YET_GUARDED``) for decimal numbers in prose: a number with a decimal point, an exponent or
a percent sign (``0.507``, ``7e-8``, ``1e5``, ``95%``), outside fenced and inline code, maths
(``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``), link targets, HTML comments and arXiv
identifiers. Each one must lie inside the text of a declared quote (a line of
tests/doc_numbers.csv or of ``CLOSED_FORMS``) or be listed, with its page and a reason, in
tests/doc_numbers_allowed.csv (``file,number,reason``: configuration constants, tolerances,
values quoted from a paper, versions). The failure lists page, line and number. An allowlist
entry that no longer matches anything fails too, so the list cannot go stale.
"""

from __future__ import annotations

import csv
import gzip
import math
import re
import shlex
import statistics
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
    agg: str | None = None  # from several rows: mean, median, min, max, sum, count, ratio, ...


DECLARED = ROOT / "tests" / "doc_numbers.csv"
ALLOWED = ROOT / "tests" / "doc_numbers_allowed.csv"


def load_quotes() -> list[Quote]:
    with open(DECLARED, newline="") as fh:
        return [Quote(**row) for row in csv.DictReader(fh)]


QUOTES = load_quotes()
SHIFT = "figures/shift_tradeoff.csv"
OPPOSED = "setting=opposed mixture=convex"

AGGREGATES = {
    "mean": statistics.fmean,
    "median": statistics.median,
    "min": min,
    "max": max,
    "sum": math.fsum,
}


class ClosedForm(NamedTuple):
    """A page's evaluation of a closed form, or a quantity computed here from a committed table
    (the checker's selectors cannot express it): ``values`` written with ``fmt`` appear in
    ``text`` in that order."""

    file: str
    text: str
    values: tuple[float, ...]
    fmt: str


#: The batch normaliser keeps (1 - 1/B)^2 of a small radius (docs/theory.md#minibatch-objective).
CLOSED_FORMS = [
    ClosedForm(
        "docs/minibatch.md",
        "0.25 at B = 2, 0.56 at 4, 0.77 at 8, 0.94 at 32, 0.98 at 128",
        tuple((1 - 1 / b) ** 2 for b in (2, 4, 8, 32, 128)),
        ".2f",
    ),
]
#: The smallest group keeping 95% of the radius by that rule (checked in the page below).
B_95 = next(b for b in range(1, 1000) if (1 - 1 / b) ** 2 >= 0.95)
CLOSED_FORMS.append(
    ClosedForm(
        "docs/minibatch.md",
        f"((1 - 1/B)^2 >= 0.95 needs B >= {B_95})",
        ((1 - 1 / B_95) ** 2,),
        ".2f",
    )
)


def crossover(table: str, mixture: str, method: dict[str, str]) -> float:
    """The smallest alpha from which ``method``'s mean reward over seeds beats DPO's at every
    larger alpha (train = eval ``mixture``), in an ``rdpo llm --tiny`` table."""
    means: dict[tuple[str, float], list[float]] = {}
    with open(ROOT / table, newline="") as fh:
        for r in csv.DictReader(fh):
            if r["train_mixture"] == r["eval_mixture"] == mixture:
                who = "dpo" if r["method"] == "dpo" else "it"
                if who == "it" and any(r[k] != v for k, v in method.items()):
                    continue
                means.setdefault((who, float(r["alpha"])), []).append(float(r["reward"]))
    alphas = sorted({a for _, a in means})
    beats = [statistics.fmean(means["it", a]) > statistics.fmean(means["dpo", a]) for a in alphas]
    return min(a for i, a in enumerate(alphas) if all(beats[i:]))


LLM = "figures/llm_tiny_full.csv"
WDPO10 = {"method": "wdpo-alg1", "rho0": "10"}
KLDPO05 = {"method": "kldpo-alg2", "tau": "0.5"}
#: Where the robust methods start to beat DPO (docs/language-models.md, "Honest outcome").
CLOSED_FORMS.append(
    ClosedForm(
        "docs/language-models.md",
        "(WDPO for alpha >= 0.8 convex and >= 0.3 geometric; KLDPO tau = 0.5 for alpha >= 0.9 "
        "convex and >= 0.4 geometric)",
        tuple(crossover(LLM, mix, m) for m in (WDPO10, KLDPO05) for mix in ("convex", "geometric")),
        ".1f",
    )
)


def _normalise(text: str) -> str:
    return " ".join(text.split())


@cache
def _page(file: str) -> str:
    return _normalise((ROOT / file).read_text())


@cache
def _table(table: str) -> list[dict[str, str]]:
    with open(ROOT / table, newline="") as fh:
        return list(csv.DictReader(fh))


COVERAGE = "experiments/inference_full/inference_coverage.csv"
_theta1 = [
    (0.95 - float(r["coverage"])) / float(r["binom_se"])
    for r in _table(COVERAGE)
    if r["n"] == "100000" and r["quantity"] == "theta1"
]
_t3_duals: dict[str, list[float]] = {}
for _r in _table("experiments/inference_full/inference_laws_runs.csv"):
    if _r["law"] == "t3" and _r["method"] == "kldpo" and _r["dual"]:
        _t3_duals.setdefault(_r["n"], []).append(float(_r["dual"]))
_t3_medians = [statistics.median(v) for v in _t3_duals.values()]
#: How far below 0.95 the five theta_1 cells at n = 1e5 lie, in binomial SEs; the range over n
#: of the median lambda-hat of KLDPO on t3 features (docs/inference.md).
CLOSED_FORMS += [
    ClosedForm(
        "docs/inference.md",
        "The five $\\theta_1$ cells lie 2.3-2.9 binomial SE below 0.95",
        (min(_theta1), max(_theta1)),
        ".1f",
    ),
    ClosedForm(
        "docs/inference.md",
        "(median 1.36-1.37 for t3)",
        (min(_t3_medians), max(_t3_medians)),
        ".2f",
    ),
]


def _covering_quantiles() -> tuple[float, float]:
    """The 95% quantiles of n KL(P0 || Pn) and sqrt(n) W1(P0, Pn) at n = 1e5 over the samples of
    experiments/inference_full/inference_map_runs.csv.gz (column ``distance``, one per sample)."""
    found: dict[str, dict[str, float]] = {"kl": {}, "w": {}}
    with gzip.open(ROOT / "experiments/inference_full/inference_map_runs.csv.gz", "rt") as fh:
        for r in csv.DictReader(fh):
            if r["n"] == "100000":
                found[r["family"]][r["rep"]] = float(r["distance"])
    kl, w = (statistics.quantiles(v.values(), n=20, method="inclusive")[18] for v in found.values())
    return kl * 1e5, w * 1e5**0.5


_KL_Q, _W1_Q = _covering_quantiles()
CLOSED_FORMS += [
    ClosedForm("docs/inference.md", "has 95% quantile 61.0 at $n = 10^5$", (_KL_Q,), ".1f"),
    ClosedForm("docs/inference.md", "95% quantile 2.6", (_W1_Q,), ".1f"),
]


def frontier_counts(runs: str) -> tuple[int, int, int, int]:
    """From an ``rdpo frontier`` runs table, recomputing each seed's choices: the seeds, those
    whose least-worst-case-loss fit is collapsed (log 2 nominal loss, mixed score 0), those whose
    least-worst-case-regret fit is not, and those whose best-worst-score fit is winsorised DPO."""
    best: dict[str, dict[str, tuple[float, dict]]] = {}
    for r in _table(runs):
        if r["status"] == "error":
            continue
        seed = best.setdefault(r["seed"], {})
        for crit, sign in (("worst_loss", 1), ("worst_regret", 1), ("worst_score", -1)):
            v = sign * float(r[crit])
            if crit not in seed or v < seed[crit][0]:
                seed[crit] = (v, r)

    def collapsed(r: dict) -> bool:
        return abs(float(r["mixed_score"])) < 1e-9 and abs(float(r["nominal"]) - math.log(2)) < 1e-9

    picks = best.values()
    return (
        len(best),
        sum(collapsed(p["worst_loss"][1]) for p in picks),
        sum(not collapsed(p["worst_regret"][1]) for p in picks),
        sum(p["worst_score"][1]["method"] == "winsor-dpo" for p in picks),
    )


_QUICK = frontier_counts("figures/frontier_runs.csv")
_FULL = frontier_counts("experiments/frontier_full/frontier_runs.csv")
#: The frontier's choice counts (docs/frontier.md), recomputed from the runs tables.
CLOSED_FORMS += [
    ClosedForm(
        "docs/frontier.md",
        "chooses a collapsed fit ($\\theta = \\theta_{\\text{ref}}$) in 5 of 5 seeds",
        (_QUICK[1], _QUICK[0]),
        ".0f",
    ),
    ClosedForm(
        "docs/frontier.md",
        "chooses a non-trivial fit in 3 of 5 seeds",
        (_QUICK[2], _QUICK[0]),
        ".0f",
    ),
    ClosedForm(
        "docs/frontier.md", "winsorised DPO in 3 of the 5 seeds", (_QUICK[3], _QUICK[0]), ".0f"
    ),
    ClosedForm(
        "docs/frontier.md",
        "in 10 of 10 seeds (mixed score 0.000); the worst-case-regret choice is a non-trivial fit "
        "in 6 of 10.",
        (_FULL[1], _FULL[0], _FULL[2], _FULL[0]),
        ".0f",
    ),
    ClosedForm(
        "docs/frontier.md",
        "the reward-currency criteria pick it in 3 of 10 seeds",
        (_FULL[3], _FULL[0]),
        ".0f",
    ),
]


def format_number(value: float, fmt: str) -> str:
    """``value`` as the prose writes it: ``format(value, fmt)`` with a bare exponent (7e-8)."""
    text = format(value, fmt)
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m[1] == "-" else "") + m[2], text)


def select_all(table: str, rows: str) -> list[dict[str, str]]:
    """Every row of ``table`` whose cells equal the ``column=value`` pairs of ``rows``."""
    wanted = dict(part.split("=", 1) for part in shlex.split(rows))
    return [r for r in _table(table) if all(r.get(k) == v for k, v in wanted.items())]


def select(table: str, rows: str) -> dict[str, str]:
    rows_found = select_all(table, rows)
    assert len(rows_found) == 1, f"{table}: {rows!r} selects {len(rows_found)} rows, not 1"
    return rows_found[0]


def value(quote: Quote, column: str) -> float:
    """The number ``quote`` declares for ``column``: one row's cell, or its ``agg`` over rows."""
    agg = quote.agg or ""
    if not agg:
        row = select(quote.table, quote.rows)
        if column not in row and "-" in column:
            left, right = column.split("-")
            return float(row[left]) - float(row[right])
        num, _, den = column.partition("/")
        return float(row[num]) / (float(row[den]) if den else 1.0)
    if agg in ("ratio", "difference"):
        parts = shlex.split(quote.rows)
        assert parts.count("/") == 1, f"ratio rows {quote.rows!r} need one lone '/'"
        cut = parts.index("/")
        num, den = (shlex.join(p) for p in (parts[:cut], parts[cut + 1 :]))
        a, b = (float(select(quote.table, sel)[column]) for sel in (num, den))
        return a / b if agg == "ratio" else a - b
    found = select_all(quote.table, quote.rows)
    assert found, f"{quote.table}: {quote.rows!r} selects no row"
    cells = [r[column] for r in found if r[column] not in ("", None)]
    if agg == "count":
        return float(len(cells))
    known = ", ".join(["count", "ratio", "difference", *AGGREGATES])
    assert agg in AGGREGATES, f"unknown agg {agg!r} (one of {known})"
    assert cells, f"{quote.table}: {quote.rows!r} has no value in {column}"
    return float(AGGREGATES[agg]([float(c) for c in cells]))


def _find_in_order(file: str, text: str, written: list[str], what: list[str]) -> None:
    pos = 0
    for w, name in zip(written, what, strict=True):
        found = re.compile(rf"(?<![\d.]){re.escape(w)}(?!\d)").finditer(text, pos)
        m = next((m for m in found if w.startswith("-") or not _negated(text, m.start())), None)
        assert m, f"{file}: {text!r} should quote {name} as {w}"
        pos = m.end()


def _negated(text: str, start: int) -> bool:
    """A minus sign before ``start`` (not a range's hyphen, 0.56-0.95, nor a +-)."""
    before = text[max(start - 2, 0) : start]
    return before[-1:] in ("-", "\u2212") and not (before[:-1].isdigit() or before[:-1] == "+")


def check(quote: Quote) -> None:
    text = _normalise(quote.text)
    assert text in _page(quote.file), f"{quote.file} no longer contains {text!r}"
    columns = quote.columns.split()
    scale = float(quote.scale or 1)
    written = [format_number(value(quote, c) / scale, quote.fmt) for c in columns]
    agg = f" {quote.agg}" if quote.agg else ""
    what = [f"{quote.table} {quote.rows!r}{agg} {c}" for c in columns]
    _find_in_order(quote.file, text, written, what)


@pytest.mark.parametrize("quote", QUOTES, ids=lambda q: f"{q.file}:{q.text[:40]}")
def test_documented_number_matches_its_table(quote):
    check(quote)


@pytest.mark.parametrize("form", CLOSED_FORMS, ids=lambda f: f"{f.file}:{f.text[:40]}")
def test_documented_closed_form(form):
    text = _normalise(form.text)
    assert text in _page(form.file), f"{form.file} no longer contains {text!r}"
    written = [format_number(v, form.fmt) for v in form.values]
    _find_in_order(form.file, text, written, [f"the closed form's {w}" for w in written])


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


def _q(text: str, rows: str, columns: str, fmt: str, agg: str | None = None) -> Quote:
    return Quote("page.md", text, "t.csv", rows, columns, fmt, None, agg)


def _tiny(tmp_path, monkeypatch, page: str) -> None:
    """A page and a table in tmp_path standing in for the repository."""
    (tmp_path / "page.md").write_text(page)
    (tmp_path / "t.csv").write_text(
        "method,seed,x,y\ndpo,0,1.0,4\ndpo,1,2.0,\ndpo,2,4.5,2\nkl,0,10,8\n"
    )
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    _page.cache_clear()
    _table.cache_clear()


@pytest.mark.parametrize(
    ("agg", "right", "wrong"),
    [
        # over the dpo rows (x = 1, 2, 4.5); the wrong numbers are over every row, or the min's
        # the second row
        ("mean", "2.50", "4.38"),
        ("median", "2.00", "3.25"),
        ("min", "1.00", "2.00"),
        ("max", "4.50", "10.00"),
        ("sum", "7.50", "17.50"),
    ],
)
def test_aggregate_over_rows(tmp_path, monkeypatch, agg, right, wrong):
    _tiny(tmp_path, monkeypatch, f"dpo {agg} {right}; wrong {wrong}")
    try:
        check(Quote("page.md", f"dpo {agg} {right}", "t.csv", "method=dpo", "x", ".2f", None, agg))
        with pytest.raises(AssertionError, match="should quote"):
            check(Quote("page.md", f"wrong {wrong}", "t.csv", "method=dpo", "x", ".2f", None, agg))
    finally:
        _page.cache_clear()
        _table.cache_clear()


def test_count_ratio_and_bad_aggregates(tmp_path, monkeypatch):
    # y is empty for seed 1: count 2 and mean 3 (not 3 rows, not 2 = 6 / 3)
    _tiny(tmp_path, monkeypatch, "2 seeds, mean 3.0; 10 times and 2.2 times; 3 seeds")
    try:
        check(_q("2 seeds", "method=dpo", "y", ".0f", "count"))
        check(_q("mean 3.0", "method=dpo", "y", ".1f", "mean"))
        with pytest.raises(AssertionError, match="should quote"):
            check(_q("3 seeds", "method=dpo", "y", ".0f", "count"))
        ratio = "method=kl seed=0 / method=dpo seed=0"
        check(_q("10 times", ratio, "x", ".0f", "ratio"))
        check(_q("2.2 times", "seed=0 method=kl / seed=2", "x", ".1f", "ratio"))
        with pytest.raises(AssertionError, match="should quote"):  # the inverse, 0.1
            check(_q("10 times", "method=dpo seed=0 / method=kl", "x", ".0f", "ratio"))
        with pytest.raises(AssertionError, match="selects 3 rows"):
            check(_q("10 times", "method=kl / method=dpo", "x", ".0f", "ratio"))
        with pytest.raises(AssertionError, match="selects no row"):
            check(_q("2 seeds", "method=ipo", "y", ".0f", "mean"))
        with pytest.raises(AssertionError, match="unknown agg"):
            check(_q("2 seeds", "method=dpo", "y", ".0f", "avg"))
        # difference 10 - 4.5 = 5.5 (not 4.5 - 10); a column ratio in one row, 8 / 10 = 0.8
        _tiny(tmp_path, monkeypatch, "5.5 more; 0.8 of it; -5.5 less; 2.0 apart")
        check(_q("5.5 more", "method=kl / seed=2", "x", ".1f", "difference"))
        check(_q("0.8 of it", "method=kl", "y/x", ".1f"))
        check(_q("2.0 apart", "method=kl", "x-y", ".1f"))  # a column difference, 10 - 8
        with pytest.raises(AssertionError, match="should quote"):  # 8 - 10 = -2.0
            check(_q("2.0 apart", "method=kl", "y-x", ".1f"))
        with pytest.raises(AssertionError, match="should quote"):
            check(_q("-5.5 less", "method=kl / seed=2", "x", ".1f", "difference"))
        with pytest.raises(AssertionError, match="should quote"):  # x / y = 1.25
            check(_q("0.8 of it", "method=kl", "x/y", ".1f"))
    finally:
        _page.cache_clear()
        _table.cache_clear()


# --- the guard: every decimal number in the prose is declared or allowed ---------------------

#: Pages the guard does not read: generated ones (the changelog is CHANGELOG.md). docs/api/*
#: (docstrings) and docs/tutorials/* (the executed notebook) are not under docs/*.md.
UNGUARDED = {"docs/changelog.md"}
#: Pages (and README paragraphs, by their opening words) not yet folded into the guard: their
#: numbers are not declared yet. Remove an entry when its numbers are.
NOT_YET_GUARDED: set[str] = set()
NOT_YET_GUARDED_PARAGRAPHS: set[tuple[str, str]] = set()

#: A decimal number: a decimal point, an exponent or a percent sign (not 1.16.x, not 2.5x's x).
NUMBER = re.compile(r"(?<![\w.])(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+|%)|\d*\.\d+)(?![\d]|\.\w)")
#: What is not prose: code, maths, link targets, HTML comments, arXiv identifiers.
NOT_PROSE = [
    re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M),
    re.compile(r"<!--.*?-->", re.S),
    re.compile(r"\$\$.*?\$\$", re.S),
    re.compile(r"\\\[.*?\\\]", re.S),
    re.compile(r"\\\(.*?\\\)", re.S),
    re.compile(r"`[^`]+`"),
    re.compile(r"(?<![\\$])\$[^$\n]+\$"),
    re.compile(r"\]\([^)]*\)"),
    re.compile(r"arXiv:?\s*\d{4}\.\d{4,5}"),
]


def guarded_pages() -> list[str]:
    pages = ["README.md"] + [f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))]
    return [p for p in pages if p not in UNGUARDED | NOT_YET_GUARDED]


def _blank(m: re.Match) -> str:
    return re.sub(r"[^\n]", " ", m[0])


def _spans(raw: str, text: str) -> list[tuple[int, int]]:
    pattern = r"\s+".join(map(re.escape, text.split()))
    return [m.span() for m in re.finditer(pattern, raw)]


def _prose_numbers(file: str) -> list[tuple[int, str, int]]:
    """(offset, number, line) of each decimal number in the prose of ``file``."""
    raw = (ROOT / file).read_text()
    text = raw
    for pattern in NOT_PROSE:
        text = pattern.sub(_blank, text)
    for page, opening in NOT_YET_GUARDED_PARAGRAPHS:
        if page == file:
            start = raw.index(opening)
            end = raw.find("\n\n", start)
            text = text[:start] + _blank(re.match(r"(?s).*", text[start:end])) + text[end:]
    return [(m.start(), m[0], raw.count("\n", 0, m.start()) + 1) for m in NUMBER.finditer(text)]


def _covered(file: str) -> list[tuple[int, int]]:
    texts = [q.text for q in QUOTES if q.file == file]
    texts += [f.text for f in CLOSED_FORMS if f.file == file]
    raw = (ROOT / file).read_text()
    return [span for t in texts for span in _spans(raw, t)]


def load_allowed() -> list[dict[str, str]]:
    with open(ALLOWED, newline="") as fh:
        return list(csv.DictReader(fh))


def undeclared(pages: list[str], allowed: list[dict[str, str]]) -> tuple[list[str], set]:
    """The ``file:line: number`` of every prose number neither declared nor allowed, and the
    allowlist entries used."""
    allow = {(a["file"], a["number"]) for a in allowed}
    used, missing = set(), []
    for file in pages:
        spans = _covered(file)
        for start, number, line in _prose_numbers(file):
            if any(a <= start and start + len(number) <= b for a, b in spans):
                continue
            if (file, number) in allow:
                used.add((file, number))
                continue
            missing.append(f"{file}:{line}: {number}")
    return missing, used


def test_every_prose_number_is_declared():
    allowed = load_allowed()
    for a in allowed:
        assert a["reason"].strip(), f"allowlist entry {a['file']} {a['number']} has no reason"
    missing, used = undeclared(guarded_pages(), allowed)
    assert not missing, (
        f"{len(missing)} number(s) in the prose are neither declared in tests/doc_numbers.csv "
        "(with the table they come from) nor allowed in tests/doc_numbers_allowed.csv:\n"
        + "\n".join(missing)
    )
    stale = [f"{a['file']} {a['number']}" for a in allowed if (a["file"], a["number"]) not in used]
    assert not stale, f"allowlist entries that match no undeclared number: {stale}"


def test_the_guard_finds_an_undeclared_number(tmp_path, monkeypatch):
    (tmp_path / "page.md").write_text(
        "Declared 0.507 and closed 0.25.\n\n```\nx = 0.123\n```\n"
        "Code `lr=0.02`, maths $\\rho = 0.01$, arXiv 2502.01930, version 1.16.x;\n"
        "but the slope is -0.466 and 95% of runs\nend at 2e-4.\n"
    )
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "QUOTES", [Quote("page.md", "Declared 0.507", "", "", "", "")])
    monkeypatch.setitem(globals(), "CLOSED_FORMS", [ClosedForm("page.md", "closed 0.25", (), "")])
    missing, _ = undeclared(["page.md"], [])
    assert missing == ["page.md:7: 0.466", "page.md:7: 95%", "page.md:8: 2e-4"]
    missing, used = undeclared(["page.md"], [{"file": "page.md", "number": "95%", "reason": "r"}])
    assert missing == ["page.md:7: 0.466", "page.md:8: 2e-4"] and used == {("page.md", "95%")}
