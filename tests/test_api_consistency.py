"""One API across the exact solvers: ``solver`` is the path ("cvxpy" or "fast"),
``cvxpy_solver`` the conic backend, both checked before anything runs; ``worst_case`` is a
distribution or None; ``status`` is "optimal" and ``regime`` one of the declared values."""

import inspect
import json

import cvxpy as cp
import numpy as np
import pytest

from rdpo_theory import exact
from rdpo_theory.cli import main
from rdpo_theory.data import PreferenceData
from rdpo_theory.errors import InputError
from rdpo_theory.exact.status import REGIMES, STATUS_OPTIMAL
from rdpo_theory.worlds import World

SOLVERS = {
    "dpo": (exact.dpo, {}),
    "kldpo": (exact.kldpo, {"rho": 0.1}),
    "wdpo": (exact.wdpo, {"rho": 0.1}),
    "cdpo": (exact.cdpo, {"eps": 0.1}),
    "rdpo": (exact.rdpo, {"eps": 0.1, "radius": 2.0}),
    "ipo": (exact.ipo, {}),
    "group_dpo": (exact.group_dpo, {"groups": [0, 0, 1, 1, 0, 1]}),
    "chi2dpo": (exact.chi2dpo, {"rho": 0.1}),
    "cvardpo": (exact.cvardpo, {"level": 0.5}),
}


def _data(n=6, d=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (rng.random(n) < 0.6).astype(float)
    y[:2] = [0.0, 1.0]  # both labels present: not separable in general
    return X, y


@pytest.fixture
def no_solve(monkeypatch):
    """Make any conic solve fail loudly: validation must come first."""

    def boom(*a, **k):  # pragma: no cover - reached only if validation is missing
        raise AssertionError("a conic program ran before the arguments were checked")

    monkeypatch.setattr(cp.Problem, "solve", boom)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solver_and_cvxpy_solver_have_one_meaning(name):
    fn, _ = SOLVERS[name]
    sig = inspect.signature(fn).parameters
    assert sig["solver"].default == "auto"
    assert sig["cvxpy_solver"].default == "CLARABEL"
    assert sig["cvxpy_solver"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_unknown_backend_refused_before_anything_runs(name, no_solve):
    fn, kw = SOLVERS[name]
    X, y = _data()
    with pytest.raises(InputError, match="cvxpy_solver") as ei:
        fn(X, y, beta=1.0, cvxpy_solver="NOT_A_SOLVER", **kw)
    for valid in cp.installed_solvers():
        assert valid in str(ei.value)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_unknown_path_refused_with_valid_names(name, no_solve):
    fn, kw = SOLVERS[name]
    X, y = _data()
    # the old meaning (a backend name passed as solver=) is refused, not silently accepted
    with pytest.raises(InputError, match="'solver' parameter") as ei:
        fn(X, y, beta=1.0, solver="CLARABEL", **kw)
    assert "'cvxpy'" in str(ei.value)


def test_mistyped_backend_never_answers_through_the_newton_fallback():
    X, y = _data()
    with pytest.raises(InputError, match="NOT_A_SOLVER"):
        exact.dpo(X, y, beta=1.0, cvxpy_solver="NOT_A_SOLVER")
    # a backend name is case-insensitive and reaches cvxpy
    res = exact.dpo(X, y, beta=1.0, cvxpy_solver="scs")
    assert res.info["cvxpy_solver"] == "SCS"


@pytest.mark.parametrize("name", ["cdpo", "rdpo", "ipo", "group_dpo", "chi2dpo", "cvardpo"])
def test_baselines_refuse_fast_with_the_valid_choice(name, no_solve):
    fn, kw = SOLVERS[name]
    X, y = _data()
    with pytest.raises(InputError, match=r"must be one of \('auto', 'cvxpy'\).*Got 'fast'"):
        fn(X, y, beta=1.0, solver="fast", **kw)


@pytest.mark.parametrize(
    "kw, valid",
    [
        ({"candidates": "self"}, "('auto', 'cvxpy')"),
        ({"kappa": 1.0}, "('auto', 'cvxpy')"),
        ({"p": 2.0}, "('auto', 'fast')"),
    ],
)
def test_wdpo_paths_per_problem(kw, valid, no_solve):
    X, y = _data()
    if kw.get("candidates") == "self":
        kw = {"candidates": (X, y)}
    wrong = "fast" if valid == "('auto', 'cvxpy')" else "cvxpy"
    with pytest.raises(InputError, match="'solver' parameter of wdpo") as ei:
        exact.wdpo(X, y, rho=0.1, beta=1.0, solver=wrong, **kw)
    assert valid in str(ei.value)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("radius", [None, 0.3])
def test_dpo_fast_path_matches_cvxpy(seed, radius, monkeypatch):
    rng = np.random.default_rng(100 + seed)
    n, d = 30 + 10 * seed, 2 + seed
    X = rng.normal(size=(n, d))
    theta = rng.normal(size=d)
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ theta))).astype(float)
    w = rng.dirichlet(np.ones(n))
    tref = 0.1 * rng.normal(size=d)
    kw = dict(beta=0.7, weights=w, theta_ref=tref, radius=radius)
    a = exact.dpo(X, y, solver="cvxpy", **kw)
    # the fast path is its own Newton solve, not WDPO at rho = 0 and not a conic program
    import rdpo_theory.exact.wasserstein as W

    def boom(*a, **k):
        raise AssertionError("fast DPO must not go through WDPO or cvxpy")

    monkeypatch.setattr(W, "wdpo", boom)
    monkeypatch.setattr(W, "w1_newton", boom)
    monkeypatch.setattr(cp.Problem, "solve", boom)
    b = exact.dpo(X, y, solver="fast", **kw)
    assert b.info["solver"] == "fast" and b.status == "optimal"
    np.testing.assert_allclose(b.theta, a.theta, atol=1e-7)
    assert b.value == pytest.approx(a.value, abs=1e-10)
    if radius is not None:
        assert np.linalg.norm(b.theta) <= radius * (1 + 1e-12)
        assert b.info["on_boundary"] == a.info["on_boundary"]


def _balanced():
    """Rows sy x = +1 and -1: theta_ref = 0 is optimal for every objective (collapse)."""
    return np.array([[1.0], [1.0]]), np.array([1.0, 0.0])


def _cases():
    X, y = _data()
    Xs = np.array([[1.0, 0.2], [0.8, -0.5], [0.6, 0.9], [1.2, 0.1]])  # separable, labels 1
    Xb, yb = _balanced()
    w = World.random(8, 4, 3, seed=1)
    pop = w.population.data
    yield "dpo-cvxpy", lambda: exact.dpo(X, y, beta=1.0)
    yield "dpo-fast", lambda: exact.dpo(X, y, beta=1.0, solver="fast")
    yield "cdpo", lambda: exact.cdpo(X, y, eps=0.1, beta=1.0)
    yield "rdpo", lambda: exact.rdpo(X, y, eps=0.1, beta=1.0, radius=2.0)
    yield "ipo", lambda: exact.ipo(X, y, beta=1.0)
    yield "group", lambda: exact.group_dpo(X, y, [0, 0, 1, 1, 0, 1], beta=1.0)
    yield "chi2", lambda: exact.chi2dpo(X, y, rho=0.1, beta=1.0)
    yield "chi2-collapse", lambda: exact.chi2dpo(Xb, yb, rho=0.1, beta=1.0)
    yield "cvar", lambda: exact.cvardpo(X, y, level=0.5, beta=1.0)
    yield "cvar-collapse", lambda: exact.cvardpo(Xb, yb, level=0.5, beta=1.0)
    for s in ("cvxpy", "fast"):
        yield f"kl-rho0-{s}", lambda s=s: exact.kldpo(X, y, rho=0.0, beta=1.0, solver=s)
        yield f"kl-interior-{s}", lambda s=s: exact.kldpo(X, y, rho=0.1, beta=1.0, solver=s)
        yield f"kl-collapse-{s}", lambda s=s: exact.kldpo(pop, rho=0.5, beta=w.beta, solver=s)
        yield f"w1-{s}", lambda s=s: exact.wdpo(X, y, rho=0.05, beta=1.0, solver=s)
        yield f"w1-rho0-{s}", lambda s=s: exact.wdpo(X, y, rho=0.0, beta=1.0, solver=s)
    yield "kl-max-loss", lambda: exact.kldpo(Xs, np.ones(4), rho=5.0, beta=1.0, radius=2.0)
    yield "w1-kappa", lambda: exact.wdpo(X, y, rho=0.05, kappa=1.0, beta=1.0)
    yield "w1-collapse", lambda: exact.wdpo(Xb, yb, rho=0.5, beta=1.0)
    yield "w-finite", lambda: exact.wdpo(X, y, rho=0.2, beta=1.0, candidates=(X, y))
    yield "w-finite-p2", lambda: exact.wdpo(X, y, rho=0.2, p=2, beta=1.0, candidates=(X, y))
    yield "wp2", lambda: exact.wdpo(X, y, rho=0.1, p=2, beta=1.0, solver="fast")
    yield "wp2-rho0", lambda: exact.wdpo(X, y, rho=0.0, p=2, beta=1.0, solver="fast")
    yield "wp2-collapse", lambda: exact.wdpo(Xb, yb, rho=2.0, p=2, beta=1.0, solver="fast")


CASES = dict(_cases())


@pytest.mark.parametrize("case", sorted(CASES))
def test_status_regime_and_worst_case_are_consistent(case):
    res = CASES[case]()
    assert res.status == STATUS_OPTIMAL
    assert res.regime in REGIMES
    q = res.worst_case
    if q is not None:
        q = np.asarray(q, dtype=float)
        assert q.ndim == 1 and np.all(q >= 0) and q.sum() == pytest.approx(1.0, abs=1e-9)
        if res.transport_plan is not None:  # finite candidates: the support is the candidates
            assert q.shape == (res.transport_plan.shape[1],)
        elif res.margin_shift is not None:  # continuous W_p: the shifted pairs
            assert q.shape == res.margin_shift.shape and np.all(res.margin_shift >= 0)
    if res.margin_shift is not None:
        assert res.method.startswith("wdpo-continuous")
    if case.endswith("collapse") or case.endswith("collapse-cvxpy") or "collapse-" in case:
        assert res.regime == "collapse"


def test_regimes_named_as_documented():
    reg = {case: CASES[case]().regime for case in ("dpo-fast", "cdpo", "wp2", "kl-max-loss")}
    assert reg == {
        "dpo-fast": "nominal",
        "cdpo": "nominal",
        "wp2": "shift",
        "kl-max-loss": "max-loss",
    }
    assert exact.wdpo(*_data(), rho=0.05, beta=1.0).worst_case is None  # W1: not attained


def test_cli_wp_worst_case_is_a_distribution_on_the_support(capsys):
    assert main(["solve", "--method", "wdpo", "--p", "2", "--candidates", "none", "--rho",
                 "0.1", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "optimal" and out["regime"] == "shift"
    assert 1 <= out["worst_case_effective_size"] <= out["n_support"] + 1e-9
    assert out["worst_case_max_margin_shift"] > 0


def test_cli_cvxpy_solver_flag(capsys):
    assert main(["solve", "--json", "--cvxpy-solver", "SCS", "--solver", "cvxpy"]) == 0
    assert json.loads(capsys.readouterr().out)["cvxpy_solver"] == "SCS"
    assert main(["solve", "--cvxpy-solver", "NOT_A_SOLVER"]) == 2
    assert "CLARABEL" in capsys.readouterr().err


def test_problem_data_types_accepted():
    X, y = _data()
    assert exact.dpo(PreferenceData(X, y), beta=1.0, solver="fast").status == "optimal"


def test_wdpo_p2_works_as_written():
    """Issue 23: ``exact.wdpo(X, y, rho=..., beta=..., p=2)`` failed with its default
    ``solver`` (the conic path, which continuous W_p with p > 1 lacks). ``"auto"`` picks the
    fast path there, and gives what naming it gives."""
    X, y = _data()
    res = exact.wdpo(X, y, rho=0.1, beta=1.0, p=2)
    ref = exact.wdpo(X, y, rho=0.1, beta=1.0, p=2, solver="fast")
    assert res.status == "optimal" and res.info["solver"] == ref.info["solver"]
    np.testing.assert_allclose(res.theta, ref.theta)
    assert res.value == ref.value


def test_auto_reads_row_storage_in_place(tmp_path):
    """``"auto"`` takes the fast path for features left in their storage (a memmap here),
    which reads them in place, and the conic path for in-memory arrays."""
    X, y = _data()
    mm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float64, shape=X.shape)
    mm[:] = X
    mm.flush()
    assert exact.kldpo(mm, y, rho=0.1, beta=1.0).info["solver"] == "fast"
    assert exact.kldpo(X, y, rho=0.1, beta=1.0).info["solver"] == "cvxpy"


def test_results_share_the_protocol():
    """Issue 23: exact and approximate results answer ``theta``, ``status``, ``info``,
    ``value`` and ``optimality_gap`` alike (studies no longer probe with getattr)."""
    from rdpo_theory import approx
    from rdpo_theory.exact import Result

    X, y = _data()
    ex = exact.dpo(X, y, beta=1.0, radius=1.0)
    ap = approx.dpo(X, y, beta=1.0, max_steps=3)
    for res in (ex, ap):
        assert isinstance(res, Result)
    assert ex.status == "optimal" and ex.optimality_gap >= 0 and ex.value > 0
    assert ap.status == "max_steps" and ap.optimality_gap is None and ap.value is None
    assert ap.info is ap.extras and "seconds" in ap.info
