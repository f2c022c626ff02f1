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


# ---------------------------------------------------------------- fast start (issue 26 item 4)
HEAVY = ("torch", "cvxpy")


def _imported_after(code: str, modules=HEAVY) -> dict:
    """Which of ``modules`` a fresh interpreter holds in sys.modules after running ``code``."""
    import subprocess
    import sys

    probe = f"\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {modules!r}}}))"
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
    studies = ("rdpo_theory.studies.rates", "rdpo_theory.studies.shift")
    assert _imported_after(code, HEAVY + studies) == dict.fromkeys(HEAVY + studies, False)


def test_default_solve_path_agrees_with_cvxpy(capsys):
    argv = ["solve", "--world", "random", "--n", "200", "--json"]
    assert main(argv) == 0
    fast = json.loads(capsys.readouterr().out)
    assert main([*argv, "--solver", "cvxpy"]) == 0
    conic = json.loads(capsys.readouterr().out)
    assert fast["solver"] == "fast" and conic["solver"] == "cvxpy"
    np.testing.assert_allclose(fast["theta"], conic["theta"], atol=1e-6)
    assert abs(fast["value"] - conic["value"]) < 1e-9


# ------------------------------------------------------ command-line rough edges (issues 23, 26)
def test_mistyped_option_shows_the_subcommand_usage(capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["solve", "--rhoo", "0.1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: rdpo solve") and "--radius" in err
    assert "unrecognized arguments: --rhoo 0.1" in err


def test_separable_hint_uses_the_cli_flag(tmp_path, capsys):
    path = tmp_path / "sep.csv"
    path.write_text("x0,y\n1,1\n2,1\n")
    assert main(["solve", "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert "pass a finite --radius (the parameter bound B)" in err and "radius=" not in err


def test_cli_spelling_rewrites_only_the_commands_own_options():
    from rdpo_theory.cli import build_parser, cli_spelling

    solve = build_parser().parse_args(["solve"]).subcommands["solve"]
    msg = "pass radius=, or try cvxpy_solver='SCS' (solver= path); keep tau= and x=1"
    assert cli_spelling(msg, solve) == (
        "pass --radius, or try --cvxpy-solver 'SCS' (--solver path); keep tau= and x=1"
    )


def test_closed_stdout_is_silent():
    """`rdpo solve --json | head` gave a BrokenPipeError traceback: the reader here closes the
    pipe before the command writes."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "rdpo_theory.cli", "solve", "--world", "toy", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""


def test_oserror_is_one_line(tmp_path, capsys, monkeypatch):
    """An OSError raised while a command runs (a folder made read-only, a full disk)."""
    from rdpo_theory.commands import solve

    def denied(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "figures" / "x.csv"))

    monkeypatch.setattr(solve, "run", denied)
    assert main(["solve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "rdpo solve: error: Permission denied: " in err and "x.csv" in err


def _forbid_work(monkeypatch, module, name):
    def work(*a, **k):
        raise AssertionError(f"{module.__name__}.{name} ran before --out was checked")

    monkeypatch.setattr(module, name, work)


def test_out_and_cache_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    """`rdpo minibatch --out FILE` and `rdpo audit --out FILE` ran the whole study, then died
    with FileExistsError; every command now refuses a file or an unwritable folder first."""
    from rdpo_theory.commands import compare, minibatch, rates, shift
    from rdpo_theory.studies import audit as audit_study

    f = tmp_path / "afile"
    f.write_text("")
    logps = tmp_path / "l.csv"
    logps.write_text("chosen_logps,rejected_logps,ref_chosen_logps,ref_rejected_logps\n1,2,3,4\n")
    for mod, name in ((minibatch, "make"), (compare, "make"), (shift, "make"), (rates, "make")):
        _forbid_work(monkeypatch, mod, name)
    _forbid_work(monkeypatch, audit_study, "audit_table")
    cases = [
        ["minibatch", "--out", str(f)],
        ["audit", "--logps", str(logps), "--out", str(f)],
        ["compare", "--out", str(f / "sub")],
        ["shift", "--quick", "--out", str(f)],
        ["rates", "--quick", "--cache", str(f)],
        ["figures", "--out", str(f)],
        ["llm", "--tiny", "--out", str(f)],
        ["cache", "clear", "--cache", str(f)],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "afile" in err and (
            "is an existing file" in err or "not a directory" in err or "lies under the file" in err
        ), (argv, err)


def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """A folder that cannot be written (sysfs refuses even root; a chmod-ed folder otherwise)."""
    import os

    import pytest

    from rdpo_theory.commands import minibatch

    _forbid_work(monkeypatch, minibatch, "make")
    if os.path.isdir("/sys") and not os.access("/sys", os.W_OK | os.X_OK) or os.geteuid() == 0:
        target = "/sys/rdpo-out"
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = str(ro / "out")
    try:
        os.close(os.open(os.path.join(os.path.dirname(target), ".probe"), os.O_CREAT | os.O_WRONLY))
        pytest.skip("this machine lets the test write everywhere")
    except OSError:
        pass
    assert main(["minibatch", "--out", target]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_every_option_has_help_text():
    """Issue 26: several `audit` options had no help text. (`llm`'s flags are generated from
    TrainConfig's field metadata, issue 23, and checked with it.)"""
    import argparse

    from rdpo_theory.cli import build_parser

    parser = build_parser()
    missing = []
    for name, sub in parser.parse_args(["solve"]).subcommands.items():
        if name == "llm":
            continue
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            if not action.help:
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, missing


def test_figures_list_names_the_extra_of_audit_tiny(capsys):
    assert main(["figures", "--list"]) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("audit-tiny")][0]
    assert "needs the 'llm' extra" in line


def test_compare_prints_a_summary_from_its_table(tmp_path, capsys):
    import pandas as pd

    from rdpo_theory.commands.compare import print_summary

    path = tmp_path / "approx_summary.csv"
    pd.DataFrame(
        {
            "family": ["kl"] * 4,
            "method": ["kldpo-alg2", "kldpo-alg2", "kldpo-exact", "dpo"],
            "param_dist": [1e-8, 3e-8, 0.0, 0.5],
            "robust_gap": [0.0, 2e-9, 0.0, 0.1],
        }
    ).to_csv(path, index=False)
    print_summary(path)
    out = capsys.readouterr().out
    assert "kldpo-alg2" in out and "3e-08" in out and "2e-09" in out and "kldpo-exact" not in out


def test_study_flags_are_generated_from_the_configs(capsys):
    """Issue 23: the study commands' flags come from the configs' field metadata; the old
    dashed spellings stay as aliases, and a refused value names the flag before any work."""
    import dataclasses

    from rdpo_theory.cli import build_parser
    from rdpo_theory.studies.approx_vs_exact import ApproxConfig
    from rdpo_theory.studies.rates import RatesConfig

    parser = build_parser("rates")
    rates = parser.parse_args(["rates"]).subcommands["rates"]
    text = " ".join(rates.format_help().split())
    help_of = {f.name: f.metadata["help"] for f in dataclasses.fields(RatesConfig)}
    for name in ("world_seed", "seeds", "delta", "solver", "n_boot"):
        assert f"--{name}" in text and help_of[name] in text, name
    assert "--world-seed" in text and "(default: 0.05)" in text
    args = parser.parse_args(["rates", "--world-seed", "3", "--full"])
    assert args.world_seed == 3 and str(args.seeds) == "20"  # a Preset: the preset's value
    compare = build_parser("compare").parse_args(["compare"]).subcommands["compare"]
    assert "seeds per n (default: 1; --full: 3)" in " ".join(compare.format_help().split())
    assert ApproxConfig.full(seeds=5).seeds == 5 and ApproxConfig.full().max_steps == 3000
    assert main(["compare", "--max-steps", "0"]) == 2
    assert "--max-steps must be an int >= 1. Got 0 instead." in capsys.readouterr().err
    assert main(["shift", "--groups", "--alpha0", "0.2"]) == 2
    assert "--alpha0 does not apply to --groups" in capsys.readouterr().err
