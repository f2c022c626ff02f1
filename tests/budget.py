"""The test-time budget (issue 26): a scheduled "full" mode and progress for long tests.

The whole suite must stay under about 10 minutes on 2 cores and ``-m "not slow"`` under 3. The
randomized differential suites therefore draw a reduced problem set in an ordinary slow run and
their full problem counts only in the scheduled full mode, ``RDPO_FULL=1`` (``.ci/run`` sets it
when its time budget, ``RDPO_CI_BUDGET``, leaves ``RDPO_FULL_MIN_LEFT`` seconds for the tests).
The reduced set is the first seeds of the full one, so a failure in it reproduces in both
modes.
"""

from __future__ import annotations

import os
import sys

#: True in the scheduled full run (``RDPO_FULL=1``).
FULL = os.environ.get("RDPO_FULL", "").strip() not in ("", "0")


def count(full: int, reduced: int) -> int:
    """``full`` problems in the full mode, ``reduced`` (at most ``full``) otherwise."""
    return full if FULL else min(full, reduced)


def progress(iterable, label: str, total: int | None = None):
    """``iterable`` with a tqdm progress line on stderr (shown under ``pytest -s``), updated at
    most every 10 s, so a test that runs for minutes says how far it is."""
    from tqdm import tqdm

    return tqdm(iterable, desc=label, total=total, file=sys.stderr, mininterval=10, leave=False)


def differential_count(suite: str, quantity: str) -> int:
    """A problem count of the differential suites, from ``tests/differential_counts.csv`` (the
    table that README.md and docs/certificates.md quote, declared in tests/doc_numbers.csv)."""
    import csv
    from pathlib import Path

    with open(Path(__file__).with_name("differential_counts.csv"), newline="") as fh:
        for row in csv.DictReader(fh):
            if (row["suite"], row["quantity"]) == (suite, quantity):
                return int(row["value"])
    raise KeyError((suite, quantity))
