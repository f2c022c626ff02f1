"""Study CSVs are written through one function with a fixed float format."""

import numpy as np
import pandas as pd
import pytest

from rdpo_theory.tables import FLOAT_FORMAT, write_csv


def test_write_csv_rounds_floats_to_10_significant_digits(tmp_path):
    x = 0.1 + 0.2  # 0.30000000000000004
    df = pd.DataFrame({"method": ["dpo", "kldpo"], "n": [10, 20], "v": [x, np.pi * 1e-7]})
    text = write_csv(df, tmp_path / "t.csv").read_text()
    assert text.splitlines() == ["method,n,v", "dpo,10,0.3", "kldpo,20,3.141592654e-07"]
    assert FLOAT_FORMAT == "%.10g"


def test_last_digit_noise_does_not_change_the_file(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=50)
    a = write_csv(pd.DataFrame({"v": v}), tmp_path / "a.csv").read_text()
    b = write_csv(pd.DataFrame({"v": v * (1 + 1e-15)}), tmp_path / "b.csv").read_text()
    assert a == b


def test_timing_columns_are_left_out_unless_asked(tmp_path):
    df = pd.DataFrame({"n": [1, 2], "seconds": [0.123, 4.5], "error": [0.5, 0.25]})
    assert write_csv(df, tmp_path / "a.csv").read_text().splitlines()[0] == "n,error"
    assert list(df.columns) == ["n", "seconds", "error"]  # the caller's table is unchanged
    text = write_csv(df, tmp_path / "b.csv", timings=True).read_text()
    assert text.splitlines()[0] == "n,seconds,error"


@pytest.mark.slow
def test_regenerating_a_study_gives_identical_csvs(tmp_path):
    """Same seeds, different parallelism: byte-identical tables (the committed CSVs don't churn)."""
    from rdpo_theory.cli import main

    args = ["rates", "--ns", "100", "300", "--seeds", "2", "--methods", "dpo", "kldpo-exact"]
    args += ["--no-cache"]
    assert main([*args, "--jobs", "1", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--jobs", "2", "--out", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").glob("*.csv"))
    assert names and names == sorted(p.name for p in (tmp_path / "b").glob("*.csv"))
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
