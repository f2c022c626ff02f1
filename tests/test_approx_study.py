"""The approximate-vs-exact study on a tiny grid: table contents, invariants, figures, CLI."""

import numpy as np
import pandas as pd
import pytest

from rdpo_theory.cli import build_parser
from rdpo_theory.commands.compare import make as study
from rdpo_theory.figures import load_all
from rdpo_theory.studies.approx_vs_exact import ApproxConfig, run_task, summarise


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("approx")
    cfg = ApproxConfig(
        ns=(1000,),
        kl_radii=(0.01,),
        w_fractions=(0.1, 0.5),
        rho0_ratios=(1.0,),
        n_contexts=5,
        n_actions=3,
        max_steps=600,
    )
    paths = study(out, cfg=cfg, jobs=1, progress=False)
    return out, paths, pd.read_csv(out / "approx_runs.csv")


@pytest.mark.slow
def test_table_and_invariants(tiny):
    _, _, runs = tiny
    assert set(runs["method"]) == {
        "kldpo-exact",
        "kldpo-alg2",
        "kldpo-clipped",
        "wdpo-exact",
        "wdpo-alg1",
        "wdpo-per-pair",
        "dpo",
    }
    assert (runs["robust_gap"] >= 0).all()
    assert (runs["robust_gap_raw"] >= -1e-6).all()
    ex = runs[runs["method"].str.endswith("exact")]
    assert (ex["param_dist"] == 0).all() and (ex["robust_gap"] == 0).all()
    # the exact KL reference carries its certified optimality gap
    kl_gap = ex.loc[ex["method"] == "kldpo-exact", "optimality_gap"]
    assert kl_gap.notna().all() and (kl_gap.abs() <= 2e-6).all()
    # Algorithm 2 at tau = lam* lands on the exact KLDPO optimum and its radius
    kn = runs[runs["method"] == "kldpo-alg2"].iloc[0]
    assert kn["param_dist"] < 1e-3 and kn["implied_rho"] == pytest.approx(0.01, rel=0.02)
    # DPO is not robust-optimal: a strictly positive gap in both families
    assert (runs.loc[runs["method"] == "dpo", "robust_gap"] > 1e-6).all()
    # sqrt-mean WDPO (rho0 = rho) is a first-order method: its gap grows with the radius
    sm = runs[runs["method"] == "wdpo-alg1"].sort_values("radius_value")
    assert sm["robust_gap"].iloc[0] < sm["robust_gap"].iloc[-1]
    rewards = [c for c in runs.columns if c.startswith("reward_alpha=")]
    assert len(rewards) == 3 and runs[rewards].notna().all().all()


@pytest.mark.slow
def test_figures_and_summary(tiny):
    out, paths, runs = tiny
    names = {p.name for p in paths}
    assert {"approx_gap.png", "approx_tau_rho.png", "approx_paths.png"} <= names
    assert all(p.stat().st_size > 5000 for p in paths if p.suffix == ".png")
    s = summarise(runs)
    assert {"param_dist", "robust_gap", "implied_rho", "tau"} <= set(s.columns)
    assert "approx" in load_all()


def test_task_is_reproducible():
    cfg = ApproxConfig(n_contexts=4, n_actions=3, rho0_ratios=(1.0,), max_steps=50)
    from rdpo_theory.rng import stream_seed
    from rdpo_theory.studies.approx_vs_exact import make_world

    world, r1, r2 = make_world(cfg)
    shared = {"cfg": cfg, "world": world, "r1": r1, "r2": r2}
    params = {"family": "kl", "n": 300, "seed": 0, "radius": 0.01}
    a = run_task(params, stream_seed(0, 300, 0), shared)
    b = run_task(params, stream_seed(0, 300, 0), shared)
    assert [r["theta0"] for r in a] == [r["theta0"] for r in b]
    assert np.isfinite([r["robust_value"] for r in a]).all()


def test_compare_command_is_registered():
    args = build_parser().parse_args(["compare", "--quick", "--jobs", "1", "--out", "x"])
    assert args.command == "compare" and args.quick and args.jobs == 1
