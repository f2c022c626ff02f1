"""The group-shift family: per-group evaluation against the pooled population risk, the
coverage rule's radius, selections."""

import numpy as np
import pytest

from rdpo_theory import audit as A
from rdpo_theory import losses as L
from rdpo_theory.studies import group_shift as G


@pytest.fixture(scope="module")
def runs():
    cfg = G.GroupShiftConfig(seeds=1, n=400, n_val=400, grids={"kldpo-exact": (0.01, 0.1)})
    return cfg, G.run(cfg)


def test_group_losses_average_to_the_population_risk(runs):
    cfg = runs[0]
    world = G.group_world(cfg, np.random.SeedSequence((cfg.base_seed, 0)).spawn(3)[0])
    theta = np.linspace(-1, 1, cfg.dim)
    ev = G.evaluate(world, theta)
    assert ev["share"].sum() == pytest.approx(1.0)
    pooled = L.dpo_risk(theta, world.population.data, beta=world.beta)
    assert ev["share"] @ ev["logloss"] == pytest.approx(pooled, rel=1e-12)
    np.testing.assert_allclose(G.evaluate(world, world.theta_ref)["score"], 0.0, atol=1e-12)


def test_coverage_rule_and_selections(runs):
    _, r = runs
    kl = r[r["method"] == "kldpo-exact"]
    cov = kl[kl["coverage"]]
    a = float(r["alpha_min"].iloc[0])
    assert cov["param"].iloc[0] == pytest.approx(A.radius_for_subpopulation(a, "kl"))
    ps = G.per_seed(r)
    assert set(ps["method"]) == {"dpo", "gdpo", "kldpo-exact"}
    sel = ps[ps["method"] == "kldpo-exact"].set_index("selection")
    fits = kl.groupby("param")["val_loss"].first()
    assert sel.loc["validation", "val_loss"] == pytest.approx(fits.min())
    assert sel.loc["oracle", "worst_logloss"] <= sel.loc["validation", "worst_logloss"] + 1e-12
    s = G.summarise(r)
    assert s.loc[s["method"] == "dpo", "worst_vs_dpo_mean"].iloc[0] == 0.0


def test_figure_registered():
    from rdpo_theory.figures import load_all

    assert "shift-groups" in load_all()
