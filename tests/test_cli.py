import json

import numpy as np

from rdpo_theory import PreferenceData, World
from rdpo_theory.cli import main
from rdpo_theory.io import write_preference_data


def test_help(capsys):
    assert main([]) == 0
    assert "solve" in capsys.readouterr().out


def test_solve_world_json(capsys):
    assert main(["solve", "--world", "random", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "optimal"
    assert out["error_to_theta_star"] < 1e-4


def test_solve_data_file(tmp_path, capsys):
    d = World.random(seed=0).sample(400, seed=1)
    path = write_preference_data(d, tmp_path / "d.csv")
    assert main(["solve", "--data", str(path), "--beta", "1.0"]) == 0
    text = capsys.readouterr().out
    assert "optimal" in text and "theta" in text


def test_solve_bad_file_is_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.ones((3, 2)), y=np.array([0, 1, 2]))
    assert main(["solve", "--data", str(bad)]) == 2
    assert "labels 0 and 1" in capsys.readouterr().err


def test_figures_list(tmp_path, capsys):
    assert main(["figures", "--list"]) == 0
    assert PreferenceData is not None
