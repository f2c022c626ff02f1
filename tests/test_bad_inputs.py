"""Hostile inputs (issue 16): every public solver, every torch loss, TrainConfig, every file
reader and every ``rdpo`` command gets a table of bad inputs; each must raise the project's
error naming the argument (or file, line, column), or be handled as documented. Also property
tests of the exact solvers' invariants (hypothesis) and the issue's numbered failures 4 and 5.
Failures 1 and 2 (training on NaN, resume mixing runs) are in ``test_train_guards.py``,
failure 3 (stale cache) in ``test_cache_keys.py``."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from rdpo_theory import InputError, PreferenceData, SolverError, approx, exact
from rdpo_theory import approx_reweight as AR
from rdpo_theory.cli import main
from rdpo_theory.errors import FileFormatError
from rdpo_theory.io import (
    dumps_json,
    read_preference_csv,
    read_preference_data,
    read_preference_jsonl,
    write_preference_data,
)
from rdpo_theory.rng import make_rng, spawn_seeds

X = np.array([[1.0, 0.5], [-0.3, 1.0], [0.7, -0.2], [0.2, 0.9]])
Y = np.array([1, 0, 1, 0])

# ------------------------------------------------------------------ exact and approx solvers
SOLVERS = {
    "exact.dpo": (exact.dpo, {}),
    "exact.kldpo": (exact.kldpo, {"rho": 0.1}),
    "exact.kldpo[fast]": (exact.kldpo, {"rho": 0.1, "solver": "fast"}),
    "exact.wdpo": (exact.wdpo, {"rho": 0.1}),
    "exact.wdpo[fast]": (exact.wdpo, {"rho": 0.1, "solver": "fast"}),
    "exact.cdpo": (exact.cdpo, {"eps": 0.1}),
    "exact.rdpo": (exact.rdpo, {"eps": 0.1}),
    "exact.ipo": (exact.ipo, {}),
    "exact.group_dpo": (exact.group_dpo, {"groups": np.array([0, 0, 1, 1])}),
    "exact.chi2dpo": (exact.chi2dpo, {"rho": 0.5}),
    "exact.cvardpo": (exact.cvardpo, {"level": 0.5}),
    "approx.dpo": (approx.dpo, {"max_steps": 3}),
    "approx.kldpo": (approx.kldpo, {"tau": 1.0, "max_steps": 3}),
    "approx.wdpo": (approx.wdpo, {"rho0": 0.1, "max_steps": 3}),
    "approx.chi2dpo": (AR.chi2dpo, {"rho": 0.5, "max_steps": 3}),
    "approx.cvardpo": (AR.cvardpo, {"level": 0.5, "max_steps": 3}),
    "approx.drdpo": (AR.drdpo, {"beta_prime": 1.0, "max_steps": 3}),
}

X_NAN = X.copy()
X_NAN[1, 1] = np.nan
BAD_DATA = {  # name -> (change to the arguments, what the error must say)
    "X with NaN": ({"X": X_NAN}, "X contains NaN"),
    "X complex": ({"X": X + 1j}, "X must be real"),  # used to drop the imaginary part
    "X 1-d": ({"X": X[:, 0]}, "X must have shape"),
    "X strings": ({"X": [["a", "b"]] * 4}, "X must be numeric"),
    "X ragged": ({"X": [[1.0, 0.5], [0.3], [0.7, 0.2], [0.2, 0.9]]}, "X is ragged"),  # issue 23
    "y label 2": ({"y": np.array([1, 0, 2, 0])}, "labels 0 and 1"),
    "y strings": ({"y": ["1", "0", "1", "0"]}, "y must be numeric, got text"),  # issue 23
    "y too short": ({"y": Y[:3]}, "y must have length 4"),
    "beta 0": ({"beta": 0.0}, "beta"),
    "beta True": ({"beta": True}, "'beta' parameter.*Got True"),  # used to mean 1
    "beta -1": ({"beta": -1.0}, "beta"),
    "beta NaN": ({"beta": float("nan")}, "beta"),
    "beta 'abc'": ({"beta": "abc"}, "beta"),
    "beta '1'": ({"beta": "1"}, "'beta' parameter.*Got '1'"),  # issue 23: was accepted
    "weights negative": ({"weights": np.array([0.5, 0.5, 0.5, -0.5])}, "non-negative"),
    "weights sum 4": ({"weights": np.ones(4)}, "sum to 1"),
    "weights short": ({"weights": np.ones(3) / 3}, "weights must have length 4"),
    "theta_ref short": ({"theta_ref": np.zeros(3)}, "theta_ref must have length 2"),
}
BAD_RADIUS = {
    "radius -1": ({"radius": -1.0}, "radius"),
    "radius 0": ({"radius": 0.0}, "radius"),
    "radius '2'": ({"radius": "2"}, "'radius' parameter.*Got '2'"),  # issue 23: was accepted
}
BAD_PARAMS = {  # per solver parameter: bad values
    "rho": [-1.0, float("nan"), True, "0.1"],  # "0.1": issue 23, was accepted
    "eps": [-0.1, 1.0],
    "level": [0.0, 1.5],
    "tau": [0.0, -1.0],
    "rho0": [-1.0],
    "beta_prime": [0.0],
    "groups": [np.array([0, 0, 1])],
}


def _call(fn, kw, change):
    args = {"X": X, "y": Y, "beta": 1.0, **kw, **change}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(args.pop("X"), args.pop("y"), **args)


def _solver_cases():
    for sname, (fn, kw) in SOLVERS.items():
        cases = dict(BAD_DATA)
        if sname.startswith("exact"):
            cases.update(BAD_RADIUS)
        for cname, (change, match) in cases.items():
            yield pytest.param(fn, kw, change, match, id=f"{sname}-{cname}")
        for p, vals in BAD_PARAMS.items():
            if p in kw:
                for v in vals:
                    yield pytest.param(fn, kw, {p: v}, p, id=f"{sname}-{p}={v!r}")


@pytest.mark.parametrize("fn,kw,change,match", list(_solver_cases()))
def test_solvers_refuse_bad_input(fn, kw, change, match):
    with pytest.raises(InputError, match=match):
        _call(fn, kw, change)


@pytest.mark.parametrize(
    "seed,match",
    [(-1, "Got -1"), ("abc", "Got 'abc'"), (True, "True"), (1.5, "Got 1.5")],
)
def test_bad_seeds_name_seed(seed, match):
    """Failure 5: seed=-1 or 'abc' used to crash deep inside numpy."""
    with pytest.raises(InputError, match=f"seed.*{match}"):
        make_rng(seed)
    with pytest.raises(InputError, match="seed"):
        spawn_seeds(seed, 2)
    from rdpo_theory import World

    with pytest.raises(InputError, match="seed"):
        World.random(seed=seed)
    with pytest.raises(InputError, match="seed"):
        World.toy().empirical(10, seed)


# ------------------------------------------------------------------ torch losses
torch = pytest.importorskip("torch")
import rdpo_theory.torch as RT  # noqa: E402
from rdpo_theory.torch.losses import kldpo_objective, wdpo_objective  # noqa: E402

LOSS_KW = {
    "dpo_loss": {},
    "kldpo_loss": {"tau": 1.0},
    "wdpo_loss": {"rho0": 0.1},
    "cdpo_loss": {"eps": 0.1},
    "rdpo_loss": {"eps": 0.1},
    "ipo_loss": {},
    "drdpo_loss": {"beta_prime": 1.0},
    "group_dpo_loss": {"groups": torch.tensor([0, 0, 1, 1])},
    "chi2dpo_loss": {"rho": 0.5},
    "cvardpo_loss": {"level": 0.5},
}


def test_every_loss_is_in_the_table():
    assert sorted(LOSS_KW) == sorted(n for n in RT.__all__ if n.endswith("_loss"))


def _loss(name, logps, **over):
    kw = {"beta": 1.0, **LOSS_KW[name], **over}
    if name == "wdpo_loss":
        z = torch.zeros(4, 2, dtype=torch.float64, requires_grad=True)
        logps = (logps[0] + z.sum(1), *logps[1:])
        kw.setdefault("inputs", z)
    return getattr(RT, name)(*logps, **kw)


Z4 = torch.zeros(4, dtype=torch.float64)
NAN4 = torch.tensor([0.0, float("nan"), 0.0, 0.0], dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(LOSS_KW))
def test_losses_refuse_bad_tensors_and_arguments(name):
    with pytest.raises(InputError, match="policy_rejected_logps has shape .3,."):
        _loss(name, (Z4, Z4[:3], Z4, Z4))
    with pytest.raises(InputError, match=r"must have shape \(B,\)"):
        _loss(name, (Z4[None], Z4[None], Z4[None], Z4[None]))
    with pytest.raises(InputError, match="must be a torch.Tensor"):
        extra = {"inputs": torch.zeros(4, 2, requires_grad=True)} if name == "wdpo_loss" else {}
        getattr(RT, name)([0.0] * 4, Z4, Z4, Z4, beta=1.0, **LOSS_KW[name], **extra)
    for beta in (0.0, True, float("nan")):
        with pytest.raises(InputError, match="beta"):
            _loss(name, (Z4, Z4, Z4, Z4), beta=beta)


@pytest.mark.parametrize("name", sorted(LOSS_KW))
def test_losses_nan_logps_propagate_or_raise_in_debug(name):
    """Failure 5: NaN log-probs returned NaN silently. Documented now: they propagate (the
    trainer's guards catch them) unless the debug flag is on, when the loss names them."""
    if name in ("chi2dpo_loss", "cvardpo_loss"):  # weights from numpy, which refuses NaN
        with pytest.raises(InputError, match="NaN"):
            _loss(name, (Z4, Z4, NAN4, Z4))
    else:
        assert not torch.isfinite(_loss(name, (Z4, Z4, NAN4, Z4)).loss)
    RT.set_debug(True)
    try:
        with pytest.raises(InputError, match="reference_chosen_logps .1 of 4"):
            _loss(name, (Z4, Z4, NAN4, Z4))
    finally:
        RT.set_debug(None)


@pytest.mark.parametrize(
    "name,param,value",
    [
        ("kldpo_loss", "tau", 0.0),
        ("kldpo_loss", "tau", -1.0),
        ("kldpo_loss", "variant", "bogus"),
        ("kldpo_loss", "clip", 0.0),
        ("wdpo_loss", "rho0", -1.0),
        ("wdpo_loss", "variant", "bogus"),
        ("cdpo_loss", "eps", -0.1),
        ("rdpo_loss", "eps", 0.5),
        ("chi2dpo_loss", "rho", -1.0),
        ("cvardpo_loss", "level", 0.0),
        ("drdpo_loss", "beta_prime", 0.0),
        ("group_dpo_loss", "groups", torch.tensor([0, 1])),
    ],
)
def test_loss_parameters_are_named(name, param, value):
    kw = {param: value}
    if param == "clip":
        kw["variant"] = "clipped"
    with pytest.raises(InputError, match=param):
        _loss(name, (Z4, Z4, Z4, Z4), **kw)


def test_tiny_tau_is_the_max_loss_limit_not_nan():
    """Failure 5: tau = 1e-300 returned NaN. Documented: tau -> 0 puts all weight on the
    largest loss (docs/theory.md#kl-regimes), computed without overflow."""
    pc = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    out = _loss("kldpo_loss", (pc, Z4, Z4, Z4), tau=1e-300)
    per = torch.nn.functional.softplus(-pc)
    assert torch.isfinite(out.weights).all()
    assert float(out.loss) == pytest.approx(float(per.max()))
    w = RT.kl_weights(per, tau=1e-300)
    assert float(w[0]) == pytest.approx(4.0) and float(w[1:].abs().sum()) == 0.0


@pytest.mark.parametrize(
    "weights,match",
    [
        (torch.tensor([0.5, 0.5, 0.5, -0.5], dtype=torch.float64), "non-negative"),
        (torch.ones(4, dtype=torch.float64), "sum to 1"),
        (torch.ones(3, dtype=torch.float64) / 3, r"shape \(4,\)"),
        ([0.25] * 4, "must be a tensor"),
        (torch.full((4,), float("nan"), dtype=torch.float64), "NaN"),
    ],
)
def test_loss_weights_are_checked(weights, match):
    """Failure 5: negative or unnormalised data weights returned NaN or a raw shape error."""
    per = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    with pytest.raises(InputError, match=f"weights.*{match}"):
        kldpo_objective(per, tau=1.0, weights=weights)
    z = torch.zeros(4, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(InputError, match=f"weights.*{match}"):
        wdpo_objective(per + z.sum(1), z, rho0=0.1, weights=weights)


# ------------------------------------------------------------------ TrainConfig
@pytest.mark.parametrize(
    "kw,match",
    [
        ({"method": "kldpo", "loss_kwargs": {"tau": -1}}, "'tau' parameter"),
        ({"method": "kldpo", "loss_kwargs": {"tau": 1.0, "variant": "x"}}, "variant"),
        ({"method": "wdpo", "loss_kwargs": {"rho0": -1}}, "rho0"),
        ({"method": "cdpo", "loss_kwargs": {"eps": 2.0}}, "eps"),
        ({"method": "dpo", "loss_kwargs": {"tau": 1.0}}, "unknown keyword 'tau'"),
        ({"method": "bogus"}, "method"),
        ({"seed": -1}, "seed"),
        ({"seed": "abc"}, "seed"),
        ({"seed": True}, "seed"),
        ({"output_dir": 123}, "output_dir"),
        ({"max_length": 1}, "max_length"),
        ({"max_length": 2.5}, "max_length"),
        ({"on_nonfinite": "ignore"}, "on_nonfinite"),
        ({"resume": "yes"}, "resume"),
        ({"beta": 0}, "beta"),
        ({"beta": True}, "beta"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"grad_accum": 1.5}, "grad_accum"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"schedule": "cosine"}, "schedule"),
    ],
)
def test_train_config_refuses(kw, match):
    """Failure 5: loss_kwargs={'tau': -1}, seed=-1 and output_dir=123 were accepted."""
    pytest.importorskip("accelerate")
    from rdpo_theory.torch.train import TrainConfig

    with pytest.raises(InputError, match=match):
        TrainConfig(**kw)


# ------------------------------------------------------------------ file readers
CSV_CASES = {  # file bytes -> what the one error says (failure 4)
    "empty": (b"", "is empty"),
    "blank lines": (b"\n\n  \n", "has no header"),
    "header only": (b"x0,x1,y\n", "no data rows"),
    "ragged": (b"x0,x1,y\n1,2,1\n1,2\n", "line 3: has 2 fields, expected 3"),
    "not utf-8": (b"x0,y\n1,1\n\xff\xfe,0\n", "line 3: is not UTF-8"),
    "xfoo": (b"x0,xfoo,y\n1,2,1\n", "unknown columns \\['xfoo'\\]"),
    "x0,x2": (b"x0,x2,y\n1,2,1\n", "missing x1"),  # used to be accepted silently
    "duplicate": (b"x0,x1,x1,y\n1,2,3,1\n", "duplicate column 'x1'"),
    "no y": (b"x0,x1\n1,2\n", "no label column 'y'"),
    "no x": (b"y,weight\n1,1\n", "no feature columns"),
    "text value": (b"x0,x1,y\n1,abc,1\n", "line 2, column 'x1': expected a number, got 'abc'"),
    "NaN value": (b"x0,x1,y\n1,nan,1\n", "line 2, column 'x1': expected a finite number"),
    "inf value": (b"x0,x1,y\n1,inf,1\n", "line 2, column 'x1': expected a finite"),
    "label 2": (b"x0,y\n1,1\n2,2\n", "line 3, column 'y': expected a label 0 or 1"),
    "negative weight": (b"x0,y,weight\n1,1,1.5\n2,0,-0.5\n", "line 3, column 'weight'"),
    "weights sum": (b"x0,y,weight\n1,1,0.5\n2,0,0.6\n", "weights must sum to 1"),
    "x01": (b"x0,x01,y\n1,2,1\n", "unknown columns"),
}


@pytest.mark.parametrize("name", sorted(CSV_CASES))
def test_csv_reader(tmp_path, name):
    content, match = CSV_CASES[name]
    p = tmp_path / "d.csv"
    p.write_bytes(content)
    with pytest.raises(FileFormatError, match=match) as e:
        read_preference_data(p)
    assert "d.csv" in str(e.value)


def test_csv_reader_accepts_any_column_order_and_bom(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b"\xef\xbb\xbfy,x1,x0\n1,2.0,1.0\n0,0.5,-1\n")
    d = read_preference_csv(p)
    np.testing.assert_array_equal(d.X, [[1.0, 2.0], [-1.0, 0.5]])
    np.testing.assert_array_equal(d.y, [1, 0])
    data = PreferenceData(X, Y, np.array([0.1, 0.2, 0.3, 0.4]))
    back = read_preference_data(write_preference_data(data, tmp_path / "r.csv"))
    np.testing.assert_array_equal(back.X, data.X)
    np.testing.assert_allclose(back.weights, data.weights, rtol=1e-15)


def _npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_npz_reader(tmp_path):
    cases = {
        "garbage": (lambda p: p.write_bytes(b"not a zip"), "not an .npz archive"),
        "truncated": (
            lambda p: p.write_bytes(_npz(tmp_path / "ok.npz", X=X, y=Y).read_bytes()[:60]),
            "not a readable .npz",
        ),
        "object dtype": (
            lambda p: _npz(p, X=np.array([[1, "a"]], dtype=object), y=np.array([1])),
            "cannot be read without pickle",
        ),
        "strings": (lambda p: _npz(p, X=np.array([["a"]]), y=np.array([1])), "real numbers"),
        "complex": (lambda p: _npz(p, X=X + 1j, y=Y), "real numbers"),
        "missing y": (lambda p: _npz(p, X=X), r"lacks arrays \['y'\]"),
        "extra": (lambda p: _npz(p, X=X, y=Y, Z=Y), r"unexpected arrays \['Z'\]"),
        "NaN": (lambda p: _npz(p, X=X_NAN, y=Y), "X contains NaN"),
        "shapes": (lambda p: _npz(p, X=X, y=Y[:3]), "y must have length 4"),
    }
    for name, (make, match) in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.npz"
        make(p)
        with pytest.raises(FileFormatError, match=match):
            read_preference_data(p)


def test_paths_directories_and_suffixes(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(FileFormatError, match="is a directory"):
        read_preference_data(tmp_path / "dir.csv")
    with pytest.raises(FileFormatError, match="does not exist"):
        read_preference_data(tmp_path / "nope.npz")
    (tmp_path / "d.txt").write_text("x0,y\n1,1\n")
    with pytest.raises(FileFormatError, match=r"must end in .npz or .csv"):
        read_preference_data(tmp_path / "d.txt")
    with pytest.raises(InputError, match="file path"):
        read_preference_data(123)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("x0,y\n1,1\n")
    p.chmod(0)
    with pytest.raises(FileFormatError, match="cannot be read"):
        read_preference_data(p)


JSONL_CASES = {
    "not utf-8": (
        b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n\xff\n',
        "line 2: is not UTF-8",
    ),
    "array line": (
        b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n[1, 2]\n',
        "line 2: expected a JSON object",
    ),
    "not json": (b'{"prompt": "a"\n', "line 1: is not JSON"),
    "missing key": (b'{"prompt": "a", "chosen": "b"}\n', "line 1: missing key 'rejected'"),
    "non-string": (
        b'{"prompt": "a", "chosen": 1, "rejected": "c"}\n',
        "key 'chosen' must be a string",
    ),
    "blank only": (b"\n \n", "no rows"),
    "empty": (b"", "is empty"),
}


@pytest.mark.parametrize("name", sorted(JSONL_CASES))
def test_jsonl_reader(tmp_path, name):
    content, match = JSONL_CASES[name]
    p = tmp_path / "pairs.jsonl"
    p.write_bytes(content)
    with pytest.raises(FileFormatError, match=match):
        read_preference_jsonl(p)


def test_json_output_is_valid():
    """Failure 4: `rdpo solve --json` printed Infinity, which is not JSON."""
    text = dumps_json({"a": float("inf"), "b": [float("-inf"), float("nan")], "c": np.float64(2)})

    def refuse(c):
        raise AssertionError(f"not JSON: {c}")

    assert json.loads(text, parse_constant=refuse) == {"a": "inf", "b": ["-inf", None], "c": 2.0}


# ------------------------------------------------------------------ commands
def _write_inputs(tmp_path):
    (tmp_path / "gap.csv").write_text("x0,x2,y\n1,2,1\n")
    (tmp_path / "ok.csv").write_text("x0,x1,y\n1,2,1\n-1,0.5,0\n")
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    (tmp_path / "arr.jsonl").write_text("[1, 2]\n")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\n")


LLM = ["llm", "--model", "emptydir", "--dataset", "pairs.jsonl"]
COMMAND_CASES = {  # argv -> what the one-line error says (failure 4)
    "solve gap csv": (["solve", "--data", "gap.csv"], "missing x1"),
    "solve data dir": (["solve", "--data", "adir"], "is a directory"),
    "solve beta 0": (["solve", "--world", "random", "--beta", "0"], "--beta must be a float > 0"),
    "solve beta 0 data": (
        ["solve", "--data", "ok.csv", "--beta", "0"],
        "--beta must be a float > 0",
    ),
    "solve rho with dpo": (["solve", "--rho", "0.1"], "--rho does not apply to --method dpo"),
    "solve n with data": (["solve", "--data", "ok.csv", "--n", "5"], "--n does not apply"),
    "solve seed with data": (["solve", "--data", "ok.csv", "--seed", "1"], "--seed does not"),
    "solve p with kldpo": (["solve", "--method", "kldpo", "--p", "2"], "--p does not apply"),
    "solve rho -1": (["solve", "--method", "kldpo", "--rho", "-1"], "--rho must be a float >= 0"),
    "solve p 0.5": (["solve", "--method", "wdpo", "--p", "0.5"], "--p must be a float >= 1"),
    "solve n 0": (["solve", "--n", "0"], "--n must be an int >= 1"),
    "solve seed -1": (["solve", "--seed", "-1"], "--seed must be an int >= 0"),
    "solve radius 0": (["solve", "--radius", "0"], "--radius must be a float > 0"),
    "rates backend": (["rates", "--backend", "bogus"], "--backend must be a joblib backend"),
    "rates world-seed": (["rates", "--world-seed", "-1"], "--world-seed must be an int >= 0"),
    "rates out file": (["rates", "--out", "afile"], "--out 'afile' is an existing file"),
    "rates out under file": (["rates", "--out", "afile/x"], "lies under the file"),
    "rates cache file": (["rates", "--cache", "afile"], "--cache 'afile' is an existing"),
    "rates jobs 0": (["rates", "--jobs", "0"], "--jobs must be a non-zero"),
    "rates delta": (["rates", "--delta", "1.5"], "--delta must be a float in the range (0, 1)"),
    "rates seeds": (["rates", "--seeds", "1"], "--seeds must be an int >= 2. Got 1"),
    "rates methods": (["rates", "--methods", "bogus"], "unknown"),
    "shift out file": (["shift", "--out", "afile"], "--out 'afile' is an existing file"),
    "shift jobs": (["shift", "--jobs", "0"], "--jobs"),
    "shift seeds": (["shift", "--seeds", "0"], "--seeds must be an int >= 1. Got 0"),
    "compare out": (["compare", "--out", "afile"], "--out"),
    "figures out": (["figures", "--out", "afile"], "--out"),
    "figures only": (["figures", "--only", "bogus"], "unknown figures"),
    "llm bogus method": ([*LLM, "--methods", "dpo", "bogus"], "--methods bogus: method"),
    "llm tau 0": ([*LLM, "--methods", "kldpo", "--tau", "0"], "'tau' parameter"),
    "llm rho0 -1": ([*LLM, "--methods", "wdpo", "--rho0", "-1"], "'rho0' parameter"),
    "llm max-length 1": (
        [*LLM, "--max-length", "1"],
        "'max_length' parameter of TrainConfig must be an int >= 2",
    ),
    "llm steps 0": ([*LLM, "--steps", "0"], "max_steps"),
    "llm seed -1": ([*LLM, "--seed", "-1"], "--seed must be an int >= 0"),
    "llm duplicate": ([*LLM, "--methods", "dpo", "dpo"], "twice"),
    "llm out file": ([*LLM, "--out", "afile"], "--out 'afile' is an existing file"),
    "llm empty model dir": (LLM, "folder without config.json"),  # was a sentencepiece message
    "llm model file": (["llm", "--model", "afile", "--dataset", "pairs.jsonl"], "is a file"),
    "llm model without weights": (
        ["llm", "--model", "noweights", "--dataset", "pairs.jsonl", "--methods", "dpo"],
        "cannot load",
    ),
    "llm array line": (["llm", "--model", "emptydir", "--dataset", "arr.jsonl"], "line 1"),
    "llm not utf-8": (["llm", "--model", "emptydir", "--dataset", "bin.jsonl"], "UTF-8"),
    "llm dataset dir": (["llm", "--model", "emptydir", "--dataset", "adir"], "directory"),
    "llm no dataset": (["llm", "--model", "emptydir"], "--model needs --dataset"),
    "llm tiny dataset": (["llm", "--tiny", "--dataset", "pairs.jsonl"], "does not apply"),
    "llm eval fraction": ([*LLM, "--eval-fraction", "1"], "--eval-fraction"),
    "llm tau with dpo": ([*LLM, "--methods", "dpo", "--tau", "0.5"], "--tau sets kldpo"),
    "llm eps default": ([*LLM, "--eps", "0.2"], "--eps sets cdpo/rdpo"),
    "llm tiny beta": (["llm", "--tiny", "--beta", "0.2"], "--beta does not apply to --tiny"),
    "llm tiny resume": (["llm", "--tiny", "--resume"], "--resume does not apply"),
    "llm model seeds": ([*LLM, "--seeds", "2"], "--seeds does not apply to --model"),
    "llm model smoke": ([*LLM, "--smoke"], "--tiny only"),
    "cache not a dir": (["cache", "clear", "--cache", "afile"], "not a directory"),
}


@pytest.mark.parametrize("name", sorted(COMMAND_CASES))
def test_commands_refuse_before_any_work(tmp_path, monkeypatch, capsys, name):
    argv, match = COMMAND_CASES[name]
    monkeypatch.chdir(tmp_path)
    _write_inputs(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err  # one line
    assert err.startswith(f"rdpo {argv[0]}: error: ")
    assert match in err, err
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before  # nothing was written


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_inputs(tmp_path)
    with pytest.raises(FileFormatError, match="missing x1"):
        main(["solve", "--data", "gap.csv", "--debug"])
    with pytest.raises(InputError, match="--beta"):
        main(["--debug", "solve", "--beta", "0"])


def test_commands_write_into_the_current_directory():
    """Failure 4: `rdpo shift` wrote into the package's folder (site-packages when
    installed). Every command's default output folder is relative to the current directory."""
    from rdpo_theory.cli import build_parser

    parser = build_parser()
    for argv in (["shift"], ["rates"], ["compare"], ["figures"], ["llm", "--tiny"]):
        args = parser.parse_args(argv)
        assert not args.out.is_absolute(), argv


def test_solve_json_is_strict_json(capsys):
    assert main(["solve", "--method", "wdpo", "--rho", "0.05", "--json"]) == 0

    def refuse(c):
        raise AssertionError(f"not JSON: {c}")

    out = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert out["status"].startswith("optimal")


def test_solve_explicit_beta_is_used(tmp_path, capsys):
    """Failure 4: `--beta` was read as `args.beta or default`, so a falsy value was replaced."""
    assert main(["solve", "--world", "random", "--beta", "0.25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["beta"] == 0.25
    write_preference_data(PreferenceData(X, Y), tmp_path / "d.csv")
    assert main(["solve", "--data", str(tmp_path / "d.csv"), "--radius", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["beta"] == 1.0  # documented default with --data


# ------------------------------------------------------------------ solver invariants
hyp = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, reject, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROPS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@st.composite
def problems(draw):
    n = draw(st.integers(3, 7))
    d = draw(st.integers(1, 3))
    coords = st.floats(-2.0, 2.0, allow_nan=False, width=32)
    Xd = np.array(draw(st.lists(st.lists(coords, min_size=d, max_size=d), min_size=n, max_size=n)))
    yd = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    if np.abs(Xd).max() < 1e-3:
        reject()
    beta = draw(st.sampled_from([0.5, 1.0, 2.0]))
    return PreferenceData(Xd, yd), beta


def _solve(fn, *a, **k):
    try:
        return fn(*a, **k)
    except SolverError:
        reject()  # an honest refusal is allowed; a wrong 'optimal' is not


@PROPS
@given(problems(), st.floats(1e-3, 1.0), st.floats(1.5, 3.0))
def test_kl_invariants(problem, rho, factor):
    data, beta = problem
    nominal = _solve(exact.dpo, data, beta=beta, radius=3.0)
    nominal_fast = _solve(exact.dpo, data, beta=beta, radius=3.0, solver="fast")
    assert nominal_fast.value == pytest.approx(nominal.value, rel=1e-6, abs=1e-7)
    r1 = _solve(exact.kldpo, data, rho=rho, beta=beta, radius=3.0)
    r2 = _solve(exact.kldpo, data, rho=rho * factor, beta=beta, radius=3.0)
    tol = 1e-6 * max(1.0, abs(r1.value))
    assert r1.value >= nominal.value - tol  # robust value >= nominal
    assert r2.value >= r1.value - tol  # non-decreasing in rho
    assert abs(r1.gap) <= 1e-5 * max(1.0, abs(r1.value))  # duality gap small
    q = np.asarray(r1.worst_case)
    assert q.min() >= -1e-9 and abs(q.sum() - 1.0) <= 1e-6  # a distribution
    fast = _solve(exact.kldpo, data, rho=rho, beta=beta, radius=3.0, solver="fast")
    assert fast.value == pytest.approx(r1.value, rel=1e-5, abs=1e-6)  # fast agrees with cvxpy


@PROPS
@given(problems(), st.floats(1e-3, 0.5), st.floats(1.5, 3.0))
def test_wasserstein_invariants(problem, rho, factor):
    data, beta = problem
    nominal = _solve(exact.dpo, data, beta=beta, radius=3.0)
    r1 = _solve(exact.wdpo, data, rho=rho, beta=beta, radius=3.0)
    r2 = _solve(exact.wdpo, data, rho=rho * factor, beta=beta, radius=3.0)
    tol = 1e-6 * max(1.0, abs(r1.value))
    assert r1.value >= nominal.value - tol
    assert r2.value >= r1.value - tol
    if r1.gap is not None:
        assert abs(r1.gap) <= 1e-5 * max(1.0, abs(r1.value))
    if r1.worst_case is not None:
        q = np.asarray(r1.worst_case)
        assert q.min() >= -1e-9 and abs(q.sum() - 1.0) <= 1e-6
    fast = _solve(exact.wdpo, data, rho=rho, beta=beta, radius=3.0, solver="fast")
    assert fast.value == pytest.approx(r1.value, rel=1e-5, abs=1e-6)


def test_metrics_log_reader(tmp_path):
    pytest.importorskip("accelerate")
    from rdpo_theory.torch.train import read_metrics

    assert read_metrics(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": null}\n{"step": 2,\n')
    with pytest.raises(FileFormatError, match="metrics.jsonl, line 2: is not JSON"):
        read_metrics(tmp_path)
