import json

import numpy as np

from rdpo_theory import PreferenceData, World
from rdpo_theory.cli import main


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
    path = d.save(tmp_path / "d.csv")
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


# ---------------------------------------------------------------- fast start (issue 26 item 4)
HEAVY = ("torch", "cvxpy")


def _imported_after(code: str) -> dict:
    """Which of HEAVY a fresh interpreter holds in sys.modules after running ``code``."""
    import subprocess
    import sys

    probe = f"\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run(
        [sys.executable, "-c", code + probe], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.splitlines()[-1])


def test_package_and_exact_import_neither_torch_nor_cvxpy():
    assert _imported_after("import rdpo_theory, rdpo_theory.exact, rdpo_theory.io") == {
        "torch": False,
        "cvxpy": False,
    }


def test_fast_solve_imports_neither_torch_nor_cvxpy():
    """`rdpo solve` defaults to the fast exact path, which builds no conic program; the answer
    is the same as the conic program's (the cvxpy path, which does import cvxpy)."""
    code = (
        "import contextlib, io, json\n"
        "from rdpo_theory.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    assert main(['solve', '--world', 'random', '--n', '200', '--json']) == 0\n"
        "res = json.loads(buf.getvalue())\n"
        "assert res['solver'] == 'fast' and res['status'] == 'optimal', res\n"
    )
    assert _imported_after(code) == {"torch": False, "cvxpy": False}


def test_default_solve_path_agrees_with_cvxpy(capsys):
    argv = ["solve", "--world", "random", "--n", "200", "--json"]
    assert main(argv) == 0
    fast = json.loads(capsys.readouterr().out)
    assert main([*argv, "--solver", "cvxpy"]) == 0
    conic = json.loads(capsys.readouterr().out)
    assert fast["solver"] == "fast" and conic["solver"] == "cvxpy"
    np.testing.assert_allclose(fast["theta"], conic["theta"], atol=1e-6)
    assert abs(fast["value"] - conic["value"]) < 1e-9
