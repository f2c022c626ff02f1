"""Writing study tables: one place decides how numbers appear in the committed CSV files.

Floats are written with :data:`FLOAT_FORMAT` (10 significant digits). Regenerating a table with
the same seeds then gives the same file: differences below 1e-10 relative (summation order,
BLAS threading) do not reach the text, so committed CSVs do not churn in their last digits,
while every reported quantity keeps far more precision than the studies resolve.

Wall-clock columns (:data:`TIMING_COLUMNS`) differ on every run, so they are left out of the
written file unless asked for; the in-memory tables keep them (the scripts under
``benchmarks/`` read them there).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: printf format of every float written to a study CSV.
FLOAT_FORMAT = "%.10g"

#: Columns holding wall-clock measurements (seconds), not written by default.
TIMING_COLUMNS = ("seconds", "step_seconds", "cpu_seconds", "wall_seconds")


def write_csv(table: pd.DataFrame, path: str | Path, *, timings: bool = False) -> Path:
    """Write ``table`` to ``path`` as CSV without the index, floats as :data:`FLOAT_FORMAT`.

    Parameters
    ----------
    table : pandas.DataFrame
        A tidy study table.
    path : str or Path
        Destination file; its folder must exist.
    timings : bool
        Also write the :data:`TIMING_COLUMNS` (seconds; they change on every run).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    if not timings:
        table = table.drop(columns=[c for c in TIMING_COLUMNS if c in table.columns])
    table.to_csv(path, index=False, float_format=FLOAT_FORMAT)
    return path
