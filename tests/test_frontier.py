"""The frontier study: Pareto marks and the regret test on hand-built tables, the evaluation
metrics against their definitions on a tiny run, the command and the figure registry."""

import numpy as np
import pandas as pd
import pytest

from rdpo_theory import InputError
from rdpo_theory.studies import frontier as F

TINY = dict(
    n_contexts=4,
    n_actions=3,
    dim=3,
    n=300,
    seeds=2,
    alphas=(0.0, 0.1, 1.0),
    methods={
        "dpo": [None],
        "kldpo-exact": [0.05],
        "wdpo-exact": [0.5],
        "dpo-pro": [0.01],
        "chipo": [1.0],
        "winsor-dpo": [0.15],
    },  # fmt: skip
    chipo_starts=2,
)


def test_pareto_marks_by_hand():
    s = pd.DataFrame(
        {
            "method": ["a", "a", "b", "c"],
            "nominal_mean": [0.5, 0.6, 0.55, 0.7],
            "worst_loss_mean": [1.0, 0.8, 1.1, 0.9],
            "mixed_score_mean": [0.5, 0.3, 0.6, 0.2],
        }
    )
    out = F.pareto(s)
    # b is beaten by a's first fit on both losses; c by a's second
    assert out["on_frontier"].tolist() == [True, True, False, False]
    assert out["method_dominated"].tolist() == [False, False, True, True]
    # on (worst loss, mixed score) b has the best score, c is beaten by a's second fit
    assert out["on_reward_frontier"].tolist() == [True, True, True, False]


def test_regret_test_by_hand():
    runs = pd.DataFrame(
        {
            "seed": [0, 0, 1, 1],
            "method": ["x", "y", "x", "y"],
            "param": [0.1, None, 0.1, None],
            "status": ["optimal"] * 4,
            "nominal": [0.69, 0.6, 0.69, 0.62],
            "worst_loss": [0.7, 0.9, 0.7, 0.95],
            "worst_regret": [0.3, 0.2, 0.3, 0.1],
            "mixed_score": [0.0, 0.4, 0.0, 0.5],
            "nominal_score": [0.0, 0.6, 0.0, 0.7],
            "worst_score": [0.0, 0.1, 0.0, 0.2],
            "worst_score_regret": [0.5, 0.3, 0.5, 0.2],
        }
    )
    t = F.regret_test(runs).set_index(["currency", "criterion"])
    assert t.loc[("loss", "value"), "chosen"] == "x(0.1);x(0.1)"
    assert t.loc[("loss", "regret"), "chosen"] == "y(-);y(-)"
    assert t.loc[("loss", "value-regret"), "mixed_score_mean"] == pytest.approx(-0.45)
    assert t.loc[("reward", "value"), "chosen"] == "y(-);y(-)"


@pytest.fixture(scope="module")
def tiny_tables():
    return F.tables(F.FrontierConfig(**TINY), progress=False)


def test_tiny_run_metrics_follow_their_definitions(tiny_tables):
    runs = tiny_tables["frontier_runs"]
    assert (runs["status"] != "error").all()
    evals = [c for c in runs.columns if "@" in c]
    np.testing.assert_allclose(runs["worst_loss"], runs[evals].max(axis=1), rtol=1e-12)
    for r in (0.01, 0.1):  # a KL ball contains P0
        assert (runs[f"kl@{r:g}"] >= runs["nominal"] - 1e-12).all()
    assert (runs["kl@0.1"] >= runs["kl@0.01"] - 1e-12).all()
    # the regret of a law is >= 0 (its best loss is a minimum over the same ball)
    assert (runs["worst_regret"] >= -1e-7).all()
    st = runs.set_index("method")["status"]
    assert set(st.loc["chipo"]) == {"local"} and set(st.loc["dpo-pro"]) == {"optimal"}
    assert set(st.loc["winsor-dpo"]) == {"local"}
    assert runs.loc[runs["method"] != "chipo", "optimality_gap"].abs().max() < 1e-6
    s = tiny_tables["frontier_summary"]
    assert s.loc[s["method"] == "dpo", "d_nominal_mean"].iloc[0] == 0.0
    assert {"on_frontier", "method_dominated", "d_worst_loss_ci"} <= set(s.columns)


def test_command_writes_tables_and_figure(tmp_path, tiny_tables, monkeypatch):
    from rdpo_theory import figures
    from rdpo_theory.cli import COMMANDS
    from rdpo_theory.commands import frontier as C

    assert "frontier" in COMMANDS and "frontier" in figures.load_all()
    monkeypatch.setattr(F, "tables", lambda *a, **k: tiny_tables)
    paths = C.make(tmp_path, cfg=F.FrontierConfig(**TINY))
    names = {p.name for p in paths}
    assert names == {"frontier_runs.csv", "frontier_summary.csv", "frontier_regret.csv",
                     "frontier.png"}  # fmt: skip
    assert (tmp_path / "frontier.png").stat().st_size > 10_000


def test_config_refuses_unknown_methods():
    with pytest.raises(InputError, match="unknown method"):
        F.FrontierConfig(methods={"nope": [1.0]})
