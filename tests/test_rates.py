import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from rdpo_theory import InputError, World
from rdpo_theory.cli import main
from rdpo_theory.exact import robust_risk
from rdpo_theory.exact.wasserstein import default_cost
from rdpo_theory.losses import dpo_losses
from rdpo_theory.studies import rates as R

TINY = {"world": "toy", "ns": (100, 400, 1600), "seeds": 3, "methods": ("dpo",), "n_boot": 50}


# ---------------------------------------------------------------- configuration errors
@pytest.mark.parametrize(
    "over, match",
    [
        ({"ns": (1, 100)}, "The 'ns' parameter of RatesConfig must be an int >= 2"),
        ({"ns": ()}, "ns is empty"),
        ({"ns": (100,)}, "two distinct"),
        ({"rhos": (-0.1,)}, "The 'rho' parameter of RatesConfig must be a float > 0"),
        ({"rhos": ()}, "rhos is empty"),
        ({"seeds": 1}, "seeds"),
        ({"methods": ()}, "methods is empty"),
        ({"methods": ("nope",)}, "unknown"),
        ({"world": "mars"}, "world"),
        ({"delta": 1.5}, "delta"),
    ],
)
def test_bad_config_raises(over, match):
    with pytest.raises(InputError, match=match):
        R.RatesConfig(**{**TINY, **over})


# ---------------------------------------------------------------- determinism and cache
def test_seeds_deterministic_across_runs_and_backends():
    cfg = R.RatesConfig(**TINY)
    a = R.run_study(cfg, progress=False).runs
    b = R.run_study(cfg, jobs=2, backend="threading", progress=False).runs
    cols = ["n", "seed", "method", "error", "excess_risk", "support"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    # the empirical law of (n, seed) is stream_seed(base_seed, n, seed): reproduce one run
    from rdpo_theory.rng import stream_seed

    w = cfg.make_world()
    d = w.empirical(400, stream_seed(0, 400, 2))
    row = a[(a["n"] == 400) & (a["seed"] == 2)].iloc[0]
    assert row["support"] == d.n
    # a different base seed gives different draws
    c = R.run_study(R.RatesConfig(**TINY, base_seed=1), progress=False).runs
    assert not np.allclose(a["error"], c["error"])


CALLS = []


def _counting_fit(data, ctx, rho):
    CALLS.append(data.n)
    return R._fit_dpo(data, ctx, rho)


def test_cache_is_reused_and_extended(tmp_path):
    R.register_method(R.MethodSpec("dpo-counted", "dpo", _counting_fit, robust=False))
    try:
        CALLS.clear()
        cfg = R.RatesConfig(**{**TINY, "methods": ("dpo-counted",)})
        first = R.run_study(cfg, cache_dir=tmp_path, progress=False)
        n_runs = 3 * 3
        assert len(CALLS) == n_runs and first.n_computed == n_runs
        again = R.run_study(cfg, cache_dir=tmp_path, progress=False)
        assert len(CALLS) == n_runs and again.n_cached == n_runs and again.n_computed == 0
        pd.testing.assert_frame_equal(first.runs, again.runs)
        more = R.run_study(
            R.RatesConfig(**{**TINY, "methods": ("dpo-counted",), "seeds": 4}),
            cache_dir=tmp_path,
            progress=False,
        )
        assert len(CALLS) == n_runs + 3 and more.n_cached == n_runs
    finally:
        R.METHODS.pop("dpo-counted")


# ---------------------------------------------------------------- the DPO rate
@pytest.mark.slow
def test_dpo_slope_interval_contains_minus_half():
    # the 8-context, 4-action, d = 3 world (|Z| = 256)
    cfg = R.RatesConfig(
        world="random",
        ns=(100, 250, 630, 1600, 4000, 10000),
        seeds=30,
        methods=("dpo",),
        n_boot=500,
    )
    res = R.run_study(cfg, progress=False)
    assert res.runs["ok"].all()
    s = res.slopes[(res.slopes["method"] == "dpo") & (res.slopes["metric"] == "error")].iloc[0]
    assert s["ci_lo"] <= -0.5 <= s["ci_hi"]
    assert s["ci_hi"] < -0.25  # and it excludes the n^-1/4 rate
    # the target is the realizing theta* (population DPO is exact)
    np.testing.assert_allclose(
        R.build_context(cfg.make_world(), ("dpo",), (0.1,)).targets[("dpo", 0.0)],
        cfg.make_world().theta_star,
        atol=1e-8,
    )
    # Proposition 1 is not violated, and the table says which norm was compared
    assert not res.bounds["violated"].any()
    assert set(res.bounds["metric"]) == {"err_sigma"}


def test_slopes_on_synthetic_power_laws():
    ns = np.array([100, 1000, 10000, 100000])
    rng = np.random.default_rng(1)
    rows = []
    for s in range(40):
        for n in ns:
            rows.append(
                {"method": "a", "rho": 0.0, "n": n, "seed": s, "ok": True, "error": 3 * n**-0.5}
            )
            rows.append(
                {
                    "method": "b",
                    "rho": 0.1,
                    "n": n,
                    "seed": s,
                    "ok": True,
                    "error": 2 * n**-0.25 * rng.lognormal(0, 0.3),
                }
            )
    sl = R.slopes(pd.DataFrame(rows), n_boot=300).set_index("method")
    assert sl.loc["a", "slope"] == pytest.approx(-0.5, abs=1e-12)
    assert sl.loc["a", "ci_lo"] == pytest.approx(-0.5, abs=1e-12)
    assert sl.loc["b", "ci_lo"] <= -0.25 <= sl.loc["b", "ci_hi"]
    assert not sl.loc["b", "contains_half"]
    with pytest.raises(InputError, match="n_boot"):
        R.slopes(pd.DataFrame(rows), n_boot=0)


def test_bounds_table_flags_violations():
    const = pd.DataFrame(
        [
            {
                "method": "wdpo-exact",
                "rho": 0.1,
                "bound": "thm1",
                "d": 2,
                "beta": 1.0,
                "B": 1.0,
                "lam0_lower": 0.2,
                "lam0_upper": 0.3,
                "lam_lo": np.nan,
                "lam_hi": np.nan,
            }
        ]
    )
    b = R.bound_values(const.iloc[0], 100, 0.05, "certified")
    runs = pd.DataFrame(
        [
            {"method": "wdpo-exact", "rho": 0.1, "n": 100, "seed": s, "ok": True, "error": e}
            for s, e in enumerate([0.5 * b, 0.9 * b, 2 * b])
        ]
    )
    t = R.bounds_table(runs, const, delta=0.05)
    assert t["violated"].iloc[0] and t["runs_above_certified"].iloc[0] == 1
    assert t["bound_attained"].iloc[0] < t["bound_certified"].iloc[0]


# ---------------------------------------------------------------- exact robust risk at a theta
def test_kl_robust_risk_matches_dual_and_solver():
    from rdpo_theory.exact import kldpo

    w = World.random(5, 3, 2, seed=3)
    pop = w.population.data
    theta = np.array([0.4, -0.3])
    rho = 0.01
    val = robust_risk(theta, pop, method="kldpo", rho=rho, beta=w.beta)
    l = dpo_losses(theta, pop, beta=w.beta)
    dual = minimize_scalar(
        lambda t: math.exp(t) * rho + math.exp(t) * logsumexp(l / math.exp(t), b=pop.weights),
        bounds=(-12, 8),
        method="bounded",
        options={"xatol": 1e-12},
    )
    assert val == pytest.approx(dual.fun, rel=1e-8)
    res = kldpo(pop, rho=rho, beta=w.beta, radius=w.B, solver="fast", certificate="root")
    assert robust_risk(res.theta, pop, method="kldpo", rho=rho, beta=w.beta) == pytest.approx(
        res.value, rel=1e-7
    )


def test_w_robust_risks_match_solvers_and_duals():
    from rdpo_theory.exact import wdpo
    from rdpo_theory.exact.certificates import transport_dual_value

    w = World.random(3, 3, 2, seed=5)
    pop = w.population.data
    rho = 0.02
    res = wdpo(pop, rho=rho, beta=w.beta, radius=w.B, solver="fast")
    assert robust_risk(res.theta, pop, method="wdpo", rho=rho, beta=w.beta) == pytest.approx(
        res.value, rel=1e-9
    )
    Xc, yc = w.candidates()
    C = default_cost(pop.X, pop.y, Xc, yc, np.inf)
    theta = np.array([0.3, 0.2])
    from rdpo_theory import PreferenceData

    val = robust_risk(
        theta, pop, method="wdpo", rho=rho, beta=w.beta, cost=C, candidates=PreferenceData(Xc, yc)
    )
    # the default cost is the same ground distance (labels never flip)
    assert robust_risk(
        theta, pop, method="wdpo", rho=rho, beta=w.beta, candidates=PreferenceData(Xc, yc)
    ) == pytest.approx(val, rel=1e-12)
    lc = dpo_losses(theta, PreferenceData(Xc, yc), beta=w.beta)
    # the dual min over eta (independent formulation), by a fine scan plus refinement
    etas = np.linspace(0, 20, 4001)
    dv = [transport_dual_value(lc, pop.weights, C, rho, e) for e in etas]
    e0 = etas[int(np.argmin(dv))]
    ref = minimize_scalar(
        lambda e: transport_dual_value(lc, pop.weights, C, rho, e),
        bounds=(max(0, e0 - 0.01), e0 + 0.01),
        method="bounded",
        options={"xatol": 1e-12},
    ).fun
    assert val == pytest.approx(min(ref, min(dv)), rel=1e-7)
    assert val >= float(pop.weights @ dpo_losses(theta, pop, beta=w.beta)) - 1e-12


# ---------------------------------------------------------------- command line
@pytest.mark.slow
def test_cli_rates_writes_tables_and_figures(tmp_path, capsys):
    out = tmp_path / "o"
    argv = [
        "rates",
        "--world",
        "toy",
        "--methods",
        "dpo",
        "kldpo-exact",
        "--ns",
        "200",
        "2000",
        "--seeds",
        "3",
        "--rho",
        "0.01",
        "--jobs",
        "1",
        "--out",
        str(out),
        "--no-cache",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "slope" in text and "kldpo-exact" in text
    for name in ("runs", "slopes", "constants", "bounds"):
        assert (out / f"rates_{name}.csv").exists()
    for name in ("error", "bounds", "slopes"):
        assert (out / f"rates_{name}.png").stat().st_size > 1000
    runs = pd.read_csv(out / "rates_runs.csv")
    assert set(runs["method"]) == {"dpo", "kldpo-exact"} and len(runs) == 2 * 2 * 3
    # figures are redrawn from the CSVs alone
    from rdpo_theory.plots import rates as P

    for p in P.draw_all(out):
        assert p.exists()


@pytest.mark.parametrize(
    "extra, msg",
    [(["--rho", "-1"], "rho"), (["--ns", "1", "10"], "ns"), (["--methods", "zzz"], "unknown")],
)
def test_cli_rates_bad_arguments(tmp_path, capsys, extra, msg):
    argv = [
        "rates",
        "--world",
        "toy",
        "--seeds",
        "2",
        "--out",
        str(tmp_path),
        "--no-cache",
        "--jobs",
        "1",
    ] + extra
    assert main(argv) == 2
    assert msg in capsys.readouterr().err


def test_rates_figure_registered():
    from rdpo_theory.figures import load_all

    assert "rates" in load_all()


def test_runs_record_the_certified_optimality_gap():
    """Exact runs carry their solver's certified optimality gap; approximate ones NaN."""
    cfg = R.RatesConfig(**{**TINY, "methods": ("dpo", "kldpo-exact", "kldpo-alg2"), "seeds": 2})
    runs = R.run_study(cfg, progress=False).runs
    exact = runs[runs["method"].isin(["dpo", "kldpo-exact"])]
    assert exact["ok"].all()
    gaps = exact["optimality_gap"]
    assert gaps.notna().all() and (gaps.abs() <= 1e-6 * 2).all()
    assert runs.loc[runs["method"] == "kldpo-alg2", "optimality_gap"].isna().all()
