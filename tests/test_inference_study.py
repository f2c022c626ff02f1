"""The inference study: its exact helpers and a tiny end-to-end run (docs/inference.md)."""

import math

import numpy as np
import pandas as pd
import pytest

from rdpo_theory.cli import build_parser
from rdpo_theory.errors import InputError
from rdpo_theory.studies import inference as S


def test_w1_discrete_matches_the_one_dimensional_closed_form():
    rng = np.random.default_rng(0)
    pts = np.sort(rng.normal(size=7))[:, None]
    p, q = rng.dirichlet(np.ones(7)), rng.dirichlet(np.ones(7))
    # on the line W1 = int |F - G| dx
    F, G = np.cumsum(p)[:-1], np.cumsum(q)[:-1]
    exact = float(np.sum(np.abs(F - G) * np.diff(pts[:, 0])))
    assert S.w1_discrete(pts, p, q) == pytest.approx(exact, abs=1e-10)
    assert S.w1_discrete(pts, p, p) == pytest.approx(0.0, abs=1e-12)


def test_kl_and_schedule():
    assert S._kl(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == math.inf
    assert S._kl(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(
        0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    )
    assert S.schedule(2.0, 0.5, 100) == pytest.approx(0.2)


def test_coverage_summary_counts_and_binomial_error():
    runs = pd.DataFrame(
        {
            "regime": ["dpo 0"] * 5,
            "method": ["dpo"] * 5,
            "n": [100] * 5,
            "quantity": ["value"] * 5,
            "covered": [1.0, 1.0, 0.0, 1.0, np.nan],
            "se": [0.1] * 5,
            "estimate": [0.0, 0.1, 0.2, 0.3, 0.4],
        }
    )
    row = S.coverage_summary(runs, 0.95).iloc[0]
    assert row["coverage"] == 0.75 and row["smooth_reps"] == 4
    assert row["nonsmooth_share"] == pytest.approx(0.2)
    assert row["binom_se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert not row["within_goal"]


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    cfg = S.quick_config(
        ns=(300, 600),
        reps=3,
        map_ns=(300, 600),
        map_reps=2,
        exponents=(0.5, 1.0),
        law_ns=(100, 200),
        law_seeds=2,
        laws=("gaussian",),
        n_boot=20,
    )
    res = S.run_study(cfg, progress=False)
    cov = res["inference_coverage"]
    assert set(cov["quantity"]) >= {"theta0", "value", "el_kl", "el_chi2", "el_min_kl"}
    assert cov["coverage"].between(0, 1).all()
    ms = res["inference_map_slopes"]
    assert set(ms["metric"]) == {"err_dpo", "err_robust"} and len(ms) == 2 * 2 * 2 * 2
    mc = res["inference_map_coverage"]
    assert (
        mc[["ball_covers", "value_covers", "collapsed"]]
        .apply(lambda c: c.between(0, 1))
        .all()
        .all()
    )
    ls = res["inference_laws_slopes"]
    assert set(ls["method"]) == {"dpo", "kldpo", "wdpo"}
    from rdpo_theory.commands.inference import write_outputs

    paths = write_outputs(res, tmp_path)
    assert sum(p.suffix == ".png" for p in paths) == 3


def test_config_and_cli():
    with pytest.raises(InputError, match="'reps'"):
        S.quick_config(reps=1)
    with pytest.raises(InputError, match="laws"):
        S.quick_config(laws=("cauchy",))
    args = build_parser().parse_args(["inference", "--quick", "--parts", "map", "--out", "x"])
    assert args.parts == ["map"] and args.quick


def test_rates_study_runs_on_a_continuous_world():
    """The rates study's own run function on a continuous world: the targets are the
    quadrature optima, so every excess population risk is >= 0 and the error is the distance
    to them."""
    from rdpo_theory.continuous import ContinuousWorld

    cw = ContinuousWorld("laplace")
    runs, sl = S.continuous_rates(cw, ns=(200, 800), seeds=3, rhos=(0.05,), n_boot=50)
    assert runs["ok"].all() and len(runs) == 3 * 2 * 3
    assert (runs["excess_risk"] >= -1e-10).all()
    dpo = runs[runs["method"] == "dpo"]
    assert (dpo["theta_norm"] > 0).all()  # theta_hat > 0 here, so |theta_hat| = theta_hat
    np.testing.assert_allclose(dpo["error"], (dpo["theta_norm"] - 1.5).abs(), atol=1e-12)
    assert set(sl["method"]) == {"dpo", "kldpo-exact", "wdpo-exact"}
    with pytest.raises(InputError, match="finite world"):
        S.continuous_rates_context(cw, methods=("kldpo-alg2",))
