import numpy as np
import pytest

from rdpo_theory import InputError, PreferenceData
from rdpo_theory.io import read_preference_data, write_preference_data


def test_defaults_and_views():
    d = PreferenceData([[1.0, 0.0], [0.0, 2.0]], [1, 0])
    np.testing.assert_allclose(d.weights, [0.5, 0.5])
    np.testing.assert_allclose(d.signed_labels, [1, -1])
    np.testing.assert_allclose(d.second_moment(), [[0.5, 0], [0, 2.0]])
    assert (d.n, d.d) == (2, 2)


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_roundtrip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    w = rng.random(7)
    d = PreferenceData(rng.standard_normal((7, 3)), rng.integers(0, 2, 7), w / w.sum())
    path = write_preference_data(d, tmp_path / f"data{suffix}")
    e = read_preference_data(path)
    np.testing.assert_array_equal(e.X, d.X)
    np.testing.assert_array_equal(e.y, d.y)
    np.testing.assert_allclose(e.weights, d.weights, rtol=1e-15)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(X=np.ones(3), y=[1, 0, 1]), "X must have shape"),
        (dict(X=np.ones((3, 2)), y=[1, 0]), "y must have length 3"),
        (dict(X=[[np.nan, 1.0]], y=[1]), "X contains NaN"),
        (dict(X=[[np.inf, 1.0]], y=[1]), "X contains NaN or inf"),
        (dict(X=[[1.0, 1.0]], y=[np.nan]), "y contains NaN"),
        (dict(X=[[1.0], [2.0]], y=[1, 2]), "labels 0 and 1"),
        (dict(X=[[1.0], [2.0]], y=[1, -1]), "labels 0 and 1"),
        (dict(X=[[1.0], [2.0]], y=[1, 0], weights=[1.5, -0.5]), "weights must be non-negative"),
        (dict(X=[[1.0], [2.0]], y=[1, 0], weights=[0.5, 0.6]), "weights must sum to 1"),
        (dict(X=[[1.0], [2.0]], y=[1, 0], weights=[1.0]), "weights must have length 2"),
        (dict(X=[[1.0], [2.0]], y=[1, 0], weights=[np.nan, 1]), "weights contains NaN"),
        (dict(X=np.ones((0, 2)), y=[]), "n = 0"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PreferenceData(**kwargs)


def test_bad_file(tmp_path):
    with pytest.raises(InputError, match="path"):
        read_preference_data(tmp_path / "nope.npz")
    with pytest.raises(InputError, match="must end in"):
        write_preference_data(PreferenceData([[1.0]], [1]), tmp_path / "x.txt")


def test_data_does_not_import_io():
    """Issue 23: data.py and io.py imported each other; io depends on data, never back."""
    import ast
    from pathlib import Path

    import rdpo_theory.data as data_module

    tree = ast.parse(Path(data_module.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not any(m == "io" or m.endswith(".io") for m in imported)


def test_weights_rounded_to_three_decimals_are_accepted_and_renormalised():
    """Issue 26: 0.333 x 3 was refused ("sum to 0.999"); the tolerance is relative."""
    d = PreferenceData([[1.0], [2.0], [3.0]], [1, 0, 1], weights=[0.333, 0.333, 0.333])
    np.testing.assert_allclose(d.weights, [1 / 3] * 3, rtol=1e-15)
    with pytest.raises(InputError, match="must sum to 1"):
        PreferenceData([[1.0], [2.0], [3.0]], [1, 0, 1], weights=[0.33, 0.33, 0.33])


def test_csv_refuses_digit_separators(tmp_path):
    """Issue 23: float() reads '1_000' as 1000; a CSV value never has one."""
    from rdpo_theory.io import read_preference_csv

    path = tmp_path / "d.csv"
    path.write_text("x0,y\n1_000,1\n2,0\n")
    with pytest.raises(InputError, match=r"line 2, column 'x0': expected a number, got '1_000'"):
        read_preference_csv(path)


def test_csv_lines_after_a_quoted_multiline_field(tmp_path):
    """Issue 23: after a quoted field spanning lines, errors named the wrong line. The record
    with the bad value starts on file line 5 (the quoted field covers lines 2-3)."""
    from rdpo_theory.io import csv_records, read_preference_csv

    path = tmp_path / "d.csv"
    text = 'x0,y\n"1\n",1\n\n3,x\n'
    assert [line for line, _ in csv_records(path, text)] == [1, 2, 5]
    path.write_text(text)
    with pytest.raises(InputError, match=r"line 5, column 'y': expected a number, got 'x'"):
        read_preference_csv(path)
