"""Group shift: contexts as groups, evaluation on each group alone (docs/theory.md#coverage,
#subpopulation-radius, #shift-families).

World. A finite log-linear world whose contexts are the groups: context s has share
``mu0[s]`` (Dirichlet(concentration) shares, so some groups are small) and its own
preferences, labelled by Bradley-Terry on ``r_s(a) = beta psi(s, a) . theta_s`` with
``theta_s`` at cosine ``agreement`` to a shared direction. One log-linear policy cannot fit
every group, so the fit trades groups.

Methods. DPO; group-robust DPO (exact, with the group labels); KLDPO (exact), chi-square DPO and
CVaR DPO, each with its robustness parameter chosen three ways:

* ``coverage``: the ball that contains every group of the training sample,
  ``audit.radius_for_subpopulation(alpha_min)`` with ``alpha_min`` the smallest training group
  share (KL ``log(1/alpha_min)``, chi-square ``(1 - alpha_min)/(2 alpha_min)``, CVaR level
  ``alpha_min``) -- needs no group labels at fit time, only the smallest share;
* ``validation``: the smallest pooled preference log-loss on a fresh sample from the training
  law (what a user without group labels does);
* ``oracle``: the smallest worst-group population log-loss (not attainable; a reference).

Evaluation, exact: the population preference log-loss (nats) of each group alone and the
normalised reward score ``(R_s(pi) - R_s(pi_ref)) / (R_s(best) - R_s(pi_ref))`` of each group;
the summary reports the worst group and the share-weighted mean, means and 95% t-intervals over
seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import methods as M
from .. import options as O
from ..audit import radius_for_subpopulation
from ..errors import InputError, RDPOError
from ..rng import make_rng
from ..worlds import World

#: Default grid of each robust method's ball parameter.
GRIDS = {
    "kldpo-exact": (0.01, 0.03, 0.1, 0.3, 1.0),
    "chi2dpo": (0.01, 0.03, 0.1, 0.3, 1.0),
    "cvardpo": (0.9, 0.7, 0.5, 0.3, 0.1),
}
#: Robust methods with a ball parameter (the registry's "group-shift" list): method ->
#: (divergence, parameter name, default grid), the first two from :mod:`rdpo_theory.methods`.
BALLS = {m: (M.ambiguity_family(m), M.parameter(m), GRIDS[m]) for m in M.listed("group-shift")}
SELECTIONS = ("coverage", "validation", "oracle")


@dataclass(frozen=True)
class GroupShiftConfig:
    """Sizes of the group-shift family.

    Attributes
    ----------
    n_contexts, n_actions, dim : world sizes; the groups are the n_contexts contexts.
    theta_norm : norm of every group's reward parameter.
    concentration : the group shares are Dirichlet(concentration) (smaller: more unequal).
    agreement : cosine between each group's reward parameter and the shared direction.
    beta : DPO temperature.
    n, n_val : training and validation pairs.
    seeds : number of seeds.
    grids : method -> grid of its ball parameter (the coverage value is added to it).
    base_seed : root of the random streams.
    """

    n_contexts: int = O.option(5, help="contexts S = groups", constraints=O.POSITIVE_INT)
    n_actions: int = O.option(4, help="actions A per context", constraints=O.POSITIVE_INT)
    dim: int = O.option(4, help="feature dimension d", constraints=O.POSITIVE_INT)
    theta_norm: float = O.option(
        3.0, help="norm of every group's reward parameter", constraints=O.POSITIVE
    )
    concentration: float = O.option(
        2.0, help="group shares ~ Dirichlet(concentration)", constraints=O.POSITIVE
    )
    agreement: float = O.option(
        0.5,
        help="cosine between each group's reward parameter and the shared direction",
        constraints=[O.Interval(float, -1, 1, closed="right")],
    )
    beta: float = O.option(1.0, help="DPO temperature", constraints=O.POSITIVE)
    n: int = O.option(1000, help="training pairs", constraints=O.POSITIVE_INT)
    n_val: int = O.option(1000, help="validation pairs", constraints=O.POSITIVE_INT)
    seeds: int = O.option(5, help="number of seeds", constraints=O.POSITIVE_INT)
    grids: dict = O.option(
        default_factory=lambda: {k: v[2] for k, v in BALLS.items()},
        help="method -> grid of its ball parameter",
        cli=False,
    )
    base_seed: int = O.option(
        2026, help="root of the random streams", constraints=O.NONNEGATIVE_INT
    )

    def __post_init__(self):
        O.validate_fields(self)
        for m in self.grids:
            if m not in BALLS:
                raise InputError(f"unknown method {m!r} in grids; known: {sorted(BALLS)}")


def group_world(cfg: GroupShiftConfig, seed) -> World:
    """The world of one seed: Dirichlet(concentration) context shares, one reward parameter
    per context."""
    rng = make_rng(seed)
    base = World.random(
        cfg.n_contexts,
        cfg.n_actions,
        cfg.dim,
        beta=cfg.beta,
        theta_norm=cfg.theta_norm,
        seed=rng.integers(2**32),
    )
    mu0 = rng.dirichlet(np.full(cfg.n_contexts, float(cfg.concentration)))
    u = rng.standard_normal(cfg.dim)
    u /= np.linalg.norm(u)
    c = float(cfg.agreement)
    thetas = np.empty((cfg.n_contexts, cfg.dim))
    for s in range(cfg.n_contexts):
        v = rng.standard_normal(cfg.dim)
        v -= (v @ u) * u
        v /= np.linalg.norm(v)
        thetas[s] = cfg.theta_norm * (c * u + math.sqrt(max(0.0, 1 - c * c)) * v)
    rewards = cfg.beta * np.einsum("sad,sd->sa", base.psi, thetas)
    return World(base.psi, mu0, base.pi0, cfg.beta, base.B, rewards=rewards, name="group-shift")


def evaluate(world: World, theta) -> pd.DataFrame:
    """Per group (context): ``share``, population ``logloss`` of the group alone (nats) and the
    normalised reward ``score`` under the group's own reward."""
    from .. import losses as L

    pop = world.population
    l = L.dpo_losses(theta, pop.data, beta=world.beta)
    labels, gl = L.group_losses(l, pop.s, weights=pop.data.weights)
    table = world.rewards
    pol = world.policy(theta)
    ref = world.policy(world.theta_ref)
    r, r0, best = (pol * table).sum(1), (ref * table).sum(1), table.max(1)
    span = np.where(best - r0 > 0, best - r0, np.nan)
    return pd.DataFrame(
        {
            "group": labels.astype(int),
            "share": world.mu0[labels.astype(int)],
            "logloss": gl,
            "score": ((r - r0) / span)[labels.astype(int)],
        }
    )


def run_seed(cfg: GroupShiftConfig, seed: int) -> pd.DataFrame:
    """Fit every candidate on one seed's sample and evaluate it on every group. One row per
    (method, param, group), with ``val_loss`` (pooled validation log-loss), ``coverage``
    (True for the coverage-rule parameter) and ``alpha_min`` (the smallest training share)."""
    from ..losses import dpo_risk
    from .shift import draw, fit_method

    ss = np.random.SeedSequence((cfg.base_seed, seed))
    s_world, s_train, s_val = ss.spawn(3)
    world = group_world(cfg, s_world)
    train, groups = draw(world, cfg.n, s_train)
    val, _ = draw(world, cfg.n_val, s_val)
    shares = pd.Series(train.weights).groupby(groups).sum()
    alpha_min = float(shares.min())
    cands = [("dpo", None, False), ("gdpo", None, False)]
    for m, grid in cfg.grids.items():
        cov = radius_for_subpopulation(alpha_min, BALLS[m][0])
        cands += [(m, float(p), False) for p in grid] + [(m, cov, True)]
    rows = []
    for method, param, cov in cands:
        try:
            th = fit_method(
                method, param, train, beta=cfg.beta, radius=world.B, groups=groups, steps=1
            )
        except RDPOError as exc:  # recorded, excluded from the summary
            rows.append(dict(method=method, param=param, coverage=cov, error=str(exc)[:200]))
            continue
        ev = evaluate(world, th)
        ev["method"], ev["param"], ev["coverage"], ev["error"] = method, param, cov, ""
        ev["val_loss"] = dpo_risk(th, val, beta=cfg.beta)
        rows.append(ev)
    out = pd.concat([r if isinstance(r, pd.DataFrame) else pd.DataFrame([r]) for r in rows])
    out["seed"], out["alpha_min"], out["n_groups_seen"] = seed, alpha_min, len(shares)
    return out.reset_index(drop=True)


def run(cfg: GroupShiftConfig | None = None, *, jobs: int = 1) -> pd.DataFrame:
    """All seeds (joblib) -> the tidy runs table."""
    from joblib import Parallel, delayed

    cfg = cfg or GroupShiftConfig()
    parts = Parallel(n_jobs=jobs)(delayed(run_seed)(cfg, s) for s in range(cfg.seeds))
    return pd.concat(parts, ignore_index=True)


def per_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (seed, method, selection): the chosen parameter, the worst group's log-loss
    and score and the share-weighted means."""
    ok = runs[runs["error"].fillna("") == ""].copy()
    key = ok["param"].map(lambda v: "-" if pd.isna(v) else repr(float(v)))
    ok["pkey"] = key + np.where(ok["coverage"].astype(bool), "*", "")
    g = ok.groupby(["seed", "method", "pkey"], sort=False)
    fit = g.apply(
        lambda d: pd.Series(
            {
                "param": d["param"].iloc[0],
                "coverage": bool(d["coverage"].iloc[0]),
                "val_loss": d["val_loss"].iloc[0],
                "worst_logloss": d["logloss"].max(),
                "mean_logloss": float(d["share"] @ d["logloss"] / d["share"].sum()),
                "worst_score": d["score"].min(),
                "mean_score": float(d["share"] @ d["score"] / d["share"].sum()),
                "alpha_min": d["alpha_min"].iloc[0],
            }
        ),
        include_groups=False,
    ).reset_index()
    out = []
    for (_, method), d in fit.groupby(["seed", "method"], sort=False):
        if method not in BALLS:
            out.append(d.assign(selection="-"))
            continue
        picks = {
            "coverage": d[d["coverage"]],
            "validation": d.loc[[d["val_loss"].idxmin()]],
            "oracle": d.loc[[d["worst_logloss"].idxmin()]],
        }
        for sel, row in picks.items():
            out.append(row.assign(selection=sel))
    return pd.concat(out, ignore_index=True).drop(columns="pkey")


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Means and 95% t-intervals over seeds of the worst-group and mean log-loss and score per
    (method, selection), with the chosen parameters."""
    from scipy.stats import t as student

    ps = per_seed(runs)
    rows = []
    for (method, sel), d in ps.groupby(["method", "selection"], sort=False):
        n = len(d)
        q = student.ppf(0.975, n - 1) if n > 1 else float("nan")
        rec = {"method": method, "selection": sel, "n_seeds": n}
        for col in ("worst_logloss", "mean_logloss", "worst_score", "mean_score"):
            x = d[col].to_numpy(float)
            h = float(q * np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
            rec.update({f"{col}_mean": float(x.mean()), f"{col}_ci": h})
        dpo = ps[ps["method"] == "dpo"].set_index("seed")["worst_logloss"]
        diff = d.set_index("seed")["worst_logloss"] - dpo.reindex(d["seed"]).to_numpy()
        rec["worst_vs_dpo_mean"] = float(diff.mean())
        rec["better_than_dpo_seeds"] = int((diff < 0).sum())
        rec["params"] = ";".join(f"{p:.3g}" for p in d["param"].dropna())
        rows.append(rec)
    return pd.DataFrame(rows)


def tables(cfg: GroupShiftConfig | None = None, *, jobs: int = 1) -> dict[str, pd.DataFrame]:
    """Run the family: ``{"shift_groups_runs": runs, "shift_groups_summary": summary}``."""
    runs = run(cfg, jobs=jobs)
    return {"shift_groups_runs": runs, "shift_groups_summary": summarise(runs)}
