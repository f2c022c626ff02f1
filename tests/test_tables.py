"""Study CSVs are written through one function with a fixed float format."""

import numpy as np
import pandas as pd

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
