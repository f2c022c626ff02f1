"""Distribution-shift study: exact reference quantities, DPO's realizable optimum under the
convex mixture, selection logic, the end-to-end pipeline on a tiny configuration, bad input."""

import numpy as np
import pandas as pd
import pytest

from rdpo_theory import InputError, World
from rdpo_theory import exact as E
from rdpo_theory.studies import shift as S
from rdpo_theory.worlds import mixture_reward, preference_shift


@pytest.fixture(scope="module")
def world():
    return World.random(5, 3, 3, seed=11, theta_norm=2.0)


def test_reward_parameters_have_the_requested_cosine(world):
    t = S.reward_parameters(world, 2, norm=3.0, cosine=-0.5, seed=1)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 3.0)
    assert t[0] @ t[1] / 9.0 == pytest.approx(-0.5)


def test_dpo_on_convex_population_is_kl_optimum(world):
    t1, t2 = S.reward_parameters(world, 2, norm=2.0, cosine=0.0, seed=3)
    a0 = 0.1
    tw = preference_shift(world, t1, t2, a0, mixture="convex")
    res = E.dpo(tw.population.data, beta=world.beta)
    np.testing.assert_allclose(res.theta, a0 * t1 + (1 - a0) * t2, atol=1e-6)
    r = mixture_reward(world.reward_table(t1), world.reward_table(t2), a0, "convex")
    np.testing.assert_allclose(world.policy(res.theta), world.kl_optimal_policy(r), atol=1e-6)
    # so its reward equals the pi* reference line at alpha0
    refs = S.reference_rewards(world, r)
    assert world.expected_reward(res.theta, r) == pytest.approx(refs["pi*"], abs=1e-6)


def test_reference_rewards_match_direct_computation(world):
    rng = np.random.default_rng(0)
    r = rng.normal(size=(world.n_contexts, world.n_actions))
    refs = S.reference_rewards(world, r, label_scale=2.0)
    pistar = best = ref = 0.0
    for s in range(world.n_contexts):
        logits = world.psi[s] @ world.theta_ref
        w = np.exp(logits + 2.0 * r[s] / world.beta)
        w0 = np.exp(logits)
        pistar += world.mu0[s] * (w / w.sum()) @ r[s]
        ref += world.mu0[s] * (w0 / w0.sum()) @ r[s]
        best += world.mu0[s] * r[s].max()
    assert refs["pi*"] == pytest.approx(pistar, rel=1e-12)
    assert refs["reference"] == pytest.approx(ref, rel=1e-12)
    assert refs["best-action"] == pytest.approx(best, rel=1e-12)
    assert S.score(refs["best-action"], refs) == pytest.approx(1.0)
    assert S.score(refs["reference"], refs) == pytest.approx(0.0, abs=1e-12)


def test_selection_by_validation_and_oracle():
    rows = []
    # param a: low validation loss, poor shift score; param b: the opposite
    for seed in (0, 1):
        for p, vl, sc in (("a", 0.5, [0.9, 0.1]), ("b", 0.6, [0.6, 0.6])):
            for shift, s in zip((0.0, 1.0), sc):
                rows.append(
                    dict(
                        study="preference",
                        setting="x",
                        mixture="convex",
                        method="kldpo-exact",
                        seed=seed,
                        param=p,
                        val_loss=vl,
                        score=s + 0.01 * seed,
                        value=s,
                        shift=shift,
                        metric="reward",
                    )
                )
    runs = pd.DataFrame(rows)
    sel = S.select(runs)
    assert set(sel.loc[sel["selection"] == "validation", "param"]) == {"a"}
    assert set(sel.loc[sel["selection"] == "oracle", "param"]) == {"b"}
    summ = S.summarise(runs)
    row = summ[(summ["selection"] == "validation") & (summ["shift"] == 0.0)].iloc[0]
    assert row["score_mean"] == pytest.approx(0.905)
    half = 12.706204736 * np.std([0.9, 0.91], ddof=1) / np.sqrt(2)  # t_{0.975, 1}
    assert row["score_hi"] - row["score_mean"] == pytest.approx(half, rel=1e-6)


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    cfg = S.ShiftConfig(
        n_contexts=4,
        n_actions=3,
        dim=3,
        n=300,
        n_val=300,
        alphas=(0.0, 0.1, 1.0),
        ts=(0.0, 1.0),
        K=3,
        pairs=((0, 1),),
        seeds=2,
        steps=200,
        methods={"dpo": [None], "cdpo": [0.05, 0.2], "chi2dpo": [0.01], "kldpo-alg2": [1.0]},
    )
    from rdpo_theory.commands.shift import make

    paths = make(tmp_path, cfg=cfg, jobs=1, progress=False)
    assert all(p.exists() for p in paths)
    assert {p.suffix for p in paths} == {".csv", ".png"}
    runs = pd.read_csv(tmp_path / "shift_runs.csv")
    assert set(runs["study"]) == {"preference", "context", "behaviour", "multi"}
    assert (runs["error"].fillna("") == "").all()
    # exact DPO runs carry their certified optimality gap; approximate ones NaN
    fitted = runs[runs["method"].isin(["dpo", "kldpo-alg2"])]
    dpo_gap = fitted.loc[fitted["method"] == "dpo", "optimality_gap"]
    assert dpo_gap.notna().all() and (dpo_gap.abs() <= 2e-6).all()
    assert fitted.loc[fitted["method"] == "kldpo-alg2", "optimality_gap"].isna().all()
    # reference rows: pi* scores between the reference policy and the ceiling
    pstar = runs[runs["method"] == "pi*"]
    assert ((pstar["score"] <= 1) | pstar["score"].isna()).all()
    summ = pd.read_csv(tmp_path / "shift_summary.csv")
    ok = summ.dropna(subset=["score_lo"])
    assert (ok["score_lo"] <= ok["score_mean"] + 1e-12).all()
    assert set(summ["selection"]) == {"validation", "oracle", "reference"}
    tr = pd.read_csv(tmp_path / "shift_tradeoff.csv")
    assert (tr["worst_mean"] <= tr["nominal_mean"] + 1e-12).all()
    # figures redraw from the CSVs alone
    from rdpo_theory.plots.shift import draw_all

    assert len(draw_all(tmp_path)) == 4


def test_bad_arguments():
    with pytest.raises(InputError, match="alpha0"):
        S.ShiftConfig(alpha0=1.5)
    with pytest.raises(InputError, match="alphas"):
        S.ShiftConfig(alphas=())
    with pytest.raises(InputError, match="alphas"):
        S.ShiftConfig(alphas=(0.0, -0.2))
    with pytest.raises(InputError, match="ts"):
        S.ShiftConfig(ts=())
    with pytest.raises(InputError, match="empty grid"):
        S.ShiftConfig(methods={"dpo": []})
    with pytest.raises(InputError, match="unknown method"):
        S.ShiftConfig(methods={"sft": [None]})
    with pytest.raises(InputError, match="pairs"):
        S.ShiftConfig(K=3, pairs=((0, 3),))
    with pytest.raises(InputError, match="alpha"):
        mixture_reward(np.ones(2), np.ones(2), 1.2)


def test_cli_parser():
    from rdpo_theory.cli import build_parser

    args = build_parser().parse_args(["shift", "--quick", "--jobs", "2", "--out", "x"])
    assert args.command == "shift" and args.jobs == 2 and args.quick
