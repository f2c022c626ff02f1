"""The robust-objective frontier: every method at a grid of its own parameter, scored on one
common, certified evaluation set (docs/frontier.md, docs/theory.md#frontier-study).

Worlds: the shift study's (:mod:`rdpo_theory.studies.shift`): a random log-linear world per
seed, two reward parameters at cosine ``cosine``, labels by Bradley-Terry on the convex mixture
``r_alpha0``; every method is fitted on ``n`` pairs drawn from it. Each fit theta gets

* ``nominal``: its population DPO loss under the training law P0 (nats);
* ``kl@rho``, ``w1@rho``: its certified worst-case loss over the KL ball and the continuous
  W1 ball (labels fixed) of two radii each around P0, by :func:`rdpo_theory.exact.robust_risk`
  (nats);
* ``pref@alpha``, ``behaviour@1``, ``context@1``: its exact population loss under the shift
  families' laws: relabelled by ``r_alpha`` for every alpha of the grid, sampled by the
  adversarial behaviour policy (t = 1), and drawn from the shifted context law (t = 1)
  (nats);
* ``worst_loss``: the maximum over all of the above (the common evaluation set), and
  ``worst_regret``: the maximum over the shift-family laws of ``loss - min_theta' loss``
  (the exact best-in-class loss of that law, by :func:`rdpo_theory.exact.dpo`);
* ``mixed_score``: the shift study's normalised reward ``(R - R_ref) / (R_best - R_ref)``
  under ``r_alpha``, averaged over the alpha grid, with ``nominal_score`` (at alpha0),
  ``worst_score`` (the minimum) and ``worst_score_regret`` (the largest shortfall from the
  KL-regularised target ``pi*_alpha``'s score).

:func:`pareto` marks the fits that no other fit beats on (nominal, worst_loss, mixed_score)
by seed means, and the methods all of whose fits are dominated; :func:`regret_test` compares,
seed by seed, the fit a worst-case-value criterion picks with the one a worst-case-regret
criterion picks (the claim of arXiv 2605.00155 that plain DRO is over-pessimistic).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..data import PreferenceData
from ..errors import InputError, RDPOError
from ..losses import dpo_risk
from ..options import POSITIVE_INT, check
from ..worlds import behaviour_shift, context_shift, mixture_reward, preference_shift
from . import shift as S

#: method -> (parameter name, quick grid, full grid).
METHODS: dict[str, tuple[str, list, list]] = {
    "dpo": ("-", [None], [None]),
    "kldpo-exact": ("rho", [0.01, 0.05, 0.2], [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
    "wdpo-exact": ("rho", [0.02, 0.1, 0.3], [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]),
    "chi2dpo": ("rho", [0.01, 0.05, 0.2], [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
    "cvardpo": ("level", [0.9, 0.7, 0.5], [0.95, 0.9, 0.8, 0.7, 0.5, 0.3]),
    "cdpo": ("eps", [0.05, 0.2], [0.02, 0.05, 0.1, 0.2, 0.3]),
    "rdpo": ("eps", [0.05, 0.2], [0.02, 0.05, 0.1, 0.2, 0.3]),
    "ipo": ("tau", [0.1, 0.5], [0.05, 0.1, 0.25, 0.5, 1.0]),
    "gdpo": ("-", [None], [None]),
    "dpo-pro": ("rho", [0.001, 0.01, 0.05], [0.0005, 0.001, 0.003, 0.01, 0.03, 0.1]),
    "chipo": ("r_max", [0.5, 2.0], [0.25, 0.5, 1.0, 2.0, 5.0]),
    "winsor-dpo": ("rho_f", [0.05, 0.15], [0.02, 0.05, 0.15, 0.3]),
}


@dataclass(frozen=True)
class FrontierConfig:
    """Sizes, grids and the evaluation set. ``FrontierConfig.quick()`` / ``.full()``.

    Attributes
    ----------
    n_contexts, n_actions, dim, theta_norm, beta, n, alpha0 : the shift study's world and
        sample (see :class:`rdpo_theory.studies.shift.ShiftConfig`).
    cosine : cos(theta1, theta2) of the two reward parameters.
    alphas : preference-shift grid (the mixed reward and its laws).
    kl_radii : KL radii of the evaluation balls (nats).
    w1_radii : W1 radii of the evaluation balls (units of x).
    seeds : S.
    methods : method -> parameter grid.
    chipo_starts : local starts of the chi-PO solver.
    base_seed : root of every random stream.
    """

    n_contexts: int = 8
    n_actions: int = 4
    dim: int = 4
    theta_norm: float = 3.0
    beta: float = 1.0
    n: int = 1000
    alpha0: float = 0.1
    cosine: float = 0.0
    alphas: tuple = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
    kl_radii: tuple = (0.01, 0.1)
    w1_radii: tuple = (0.05, 0.2)
    seeds: int = 5
    methods: dict = field(default_factory=lambda: {k: v[1] for k, v in METHODS.items()})
    chipo_starts: int = 4
    base_seed: int = 2026

    def __post_init__(self):
        check("seeds", self.seeds, POSITIVE_INT, owner="FrontierConfig")
        for m, grid in self.methods.items():
            if m not in METHODS:
                raise InputError(f"unknown method {m!r}; known: {sorted(METHODS)}")
            if len(grid) == 0:
                raise InputError(f"methods[{m!r}] is an empty grid")
        if not -1 < float(self.cosine) < 1:
            raise InputError(f"cosine must lie in (-1, 1), got {self.cosine}")

    @classmethod
    def quick(cls, **changes) -> FrontierConfig:
        return cls(**changes)

    @classmethod
    def full(cls, **changes) -> FrontierConfig:
        base = dict(
            n_contexts=12,
            n_actions=5,
            n=2000,
            alphas=tuple(np.round(np.linspace(0, 1, 11), 2)),
            seeds=10,
            methods={k: v[2] for k, v in METHODS.items()},
            chipo_starts=8,
        )
        base.update(changes)
        return cls(**base)


def _shift_config(cfg: FrontierConfig) -> S.ShiftConfig:
    return S.ShiftConfig(
        n_contexts=cfg.n_contexts,
        n_actions=cfg.n_actions,
        dim=cfg.dim,
        theta_norm=cfg.theta_norm,
        beta=cfg.beta,
        n=cfg.n,
    )


# ---------------------------------------------------------------------------- fitting
def fit(method: str, param, train: PreferenceData, law: np.ndarray, world, groups, cfg, seed):
    """One fit: ``(theta, certified optimality gap or NaN, status)``. ``law`` is the sample's
    law over ``world.population`` (chi-PO needs the pairs' actions). Winsorised DPO is the
    fixed point of its update on the full sample of ``n`` pairs as one batch (its flip
    budget ``rho_f`` is the grid parameter; the other settings are the authors')."""
    from .. import exact

    ex = dict(beta=cfg.beta, radius=world.B)
    if method == "dpo-pro":
        r = exact.dpo_pro(train, rho=param, **ex)
    elif method == "chipo":
        r = exact.chipo(world, law, r_max=param, starts=cfg.chipo_starts, seed=seed)
    elif method == "winsor-dpo":  # a batch statistic: the n sampled pairs, equally weighted
        from ..exact.winsor import batch_rows

        r = exact.winsor_dpo(batch_rows(train, cfg.n), rho_f=param, **ex)
    else:  # every other method of the grid has an exact, certified solver
        th, gap = S.fit_method(method, param, train, groups=groups, steps=1, with_gap=True, **ex)
        return th, (float("nan") if gap is None else float(gap)), "optimal"
    gap = r.optimality_gap
    return r.theta, (float("nan") if gap is None else float(gap)), r.status


# ---------------------------------------------------------------------------- one task
def run_task(params: dict, seed: np.random.SeedSequence, shared) -> list[dict]:
    """One seed: the world, every fit, every evaluation. One row per (method, param)."""
    from .. import exact

    cfg: FrontierConfig = shared
    s_world, s_rewards, s_fit, s_shift = seed.spawn(4)
    scfg = _shift_config(cfg)
    world = S.base_world(scfg, s_world.generate_state(4))
    t1, t2 = S.reward_parameters(world, 2, norm=cfg.theta_norm, cosine=cfg.cosine, seed=s_rewards)
    train_world = preference_shift(world, t1, t2, cfg.alpha0, mixture="convex")
    pop = train_world.population
    s_train = np.random.SeedSequence(s_fit.entropy, spawn_key=s_fit.spawn_key).spawn(2)[0]
    idx = train_world.sample_indices(cfg.n, s_train)
    law = np.bincount(idx, minlength=pop.size).astype(float) / cfg.n
    keep = law > 0
    train = PreferenceData(pop.data.X[keep], pop.data.y[keep], law[keep])
    groups = pop.s[keep]

    # the evaluation laws of the shift families (exact populations), with their best losses
    rng = np.random.default_rng(s_shift)
    nu = rng.dirichlet(np.full(world.n_contexts, 0.3))
    adv = -(cfg.alpha0 * t1 + (1 - cfg.alpha0) * t2)
    laws = {f"pref@{a:g}": preference_shift(world, t1, t2, a, mixture="convex") for a in cfg.alphas}
    laws["behaviour@1"] = behaviour_shift(train_world, toward=adv, t=1.0)
    laws["context@1"] = context_shift(train_world, toward=nu, t=1.0)
    best = {
        k: exact.dpo(w.population.data, beta=cfg.beta, radius=world.B).value
        for k, w in laws.items()
    }
    r1, r2 = world.reward_table(t1), world.reward_table(t2)
    rewards = {a: mixture_reward(r1, r2, a, "convex") for a in cfg.alphas}
    refs = {a: S.reference_rewards(world, r) for a, r in rewards.items()}

    rows = []
    for method, grid in cfg.methods.items():
        for param in grid:
            rec = {"method": method, "param_name": METHODS[method][0], "param": param}
            try:
                th, gap, status = fit(method, param, train, law, train_world, groups, cfg, s_fit)
                if not np.all(np.isfinite(th)):
                    raise RDPOError("non-finite theta")
            except RDPOError as exc:  # an uncertified answer raises: recorded, excluded
                rec.update(error=str(exc)[:200], status="error")
                rows.append(rec)
                continue
            rec.update(error="", status=status, optimality_gap=gap)
            rec.update(_evaluate(th, cfg, pop.data, laws, best, world, rewards, refs))
            rows.append(rec)
    return rows


def _evaluate(theta, cfg, p0, laws, best, world, rewards, refs) -> dict:
    """Every metric of one fit (module docstring)."""
    from ..exact import robust_risk

    kw = dict(beta=cfg.beta, theta_ref=world.theta_ref)
    out = {"nominal": dpo_risk(theta, p0, **kw)}
    for r in cfg.kl_radii:
        out[f"kl@{r:g}"] = robust_risk(theta, p0, method="kldpo", rho=r, **kw)
    for r in cfg.w1_radii:
        out[f"w1@{r:g}"] = robust_risk(theta, p0, method="wdpo", rho=r, **kw)
    regrets = []
    for k, w in laws.items():
        out[k] = dpo_risk(theta, w.population.data, **kw)
        regrets.append(out[k] - best[k])
    evals = [v for k, v in out.items() if k != "nominal"]
    out["worst_loss"] = max(evals)
    out["worst_regret"] = max(regrets)
    scores = {a: S.score(world.expected_reward(theta, r), refs[a]) for a, r in rewards.items()}
    star = {a: S.score(refs[a]["pi*"], refs[a]) for a in rewards}
    out["mixed_score"] = float(np.mean(list(scores.values())))
    out["worst_score"] = float(min(scores.values()))
    out["worst_score_regret"] = float(max(star[a] - scores[a] for a in scores))
    a0 = min(scores, key=lambda a: abs(a - cfg.alpha0))
    out["nominal_score"] = float(scores[a0])
    return out


# ---------------------------------------------------------------------------- the study
def run(cfg: FrontierConfig | None = None, *, jobs: int = 1, progress: bool = True):
    """Every seed's fits and evaluations: the tidy ``frontier_runs`` table (one row per
    method, parameter and seed)."""
    from .sweep import Task, fingerprint, run_sweep

    cfg = cfg or FrontierConfig.quick()
    tasks = [Task({"seed": s}, (cfg.base_seed, 7, s)) for s in range(cfg.seeds)]
    res = run_sweep(
        run_task,
        tasks,
        namespace=fingerprint("frontier-v1", dataclasses.asdict(cfg)),
        shared=cfg,
        jobs=jobs,
        progress=progress,
        desc="frontier",
    )
    return res.frame()


METRICS = ("nominal", "worst_loss", "worst_regret", "mixed_score", "nominal_score",
           "worst_score", "worst_score_regret")  # fmt: skip


def param_text(v) -> str:
    """A parameter value as text: ``"-"`` for none, else ``f"{v:g}"``."""
    return "-" if v is None or pd.isna(v) else f"{float(v):g}"


def _ci(x: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (NaN half-width for one seed)."""
    from scipy.stats import t as student

    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    h = student.ppf(0.975, n - 1) * np.std(x, ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    return float(np.mean(x)), float(h)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, param): seed means and 95% half-widths of every metric and evaluation
    column, of ``d_nominal``, ``d_worst_loss``, ``d_mixed_score`` (the fit minus DPO on the
    same seed: paired, so the intervals compare methods), the number of seeds, the largest
    optimality gap, the statuses, and the Pareto marks of :func:`pareto`."""
    ok = runs[runs["status"] != "error"].copy()
    ok["param_key"] = ok["param"].map(param_text)
    cols = [c for c in ok.columns if c in METRICS or "@" in c]
    # paired differences from DPO on the same seed (world-to-world variation cancels)
    base = ok[ok["method"] == "dpo"].set_index("seed")
    for c in ("nominal", "worst_loss", "mixed_score"):
        if not base.empty:
            ok[f"d_{c}"] = ok[c].to_numpy(float) - base[c].reindex(ok["seed"]).to_numpy(float)
            cols.append(f"d_{c}")
    rows = []
    for (m, _), g in ok.groupby(["method", "param_key"], sort=False):
        rec = {"method": m, "param_name": g["param_name"].iloc[0], "param": g["param"].iloc[0]}
        for c in cols:
            rec[f"{c}_mean"], rec[f"{c}_ci"] = _ci(g[c].to_numpy(float))
        rec["n_seeds"] = len(g)
        rec["max_optimality_gap"] = float(np.nanmax(g["optimality_gap"])) if g[
            "optimality_gap"
        ].notna().any() else float("nan")  # fmt: skip
        rec["status"] = ";".join(sorted(set(g["status"])))
        rows.append(rec)
    # rows in the runs' method order, then by parameter (a fit that failed on the first seed
    # would otherwise move to the end)
    order = {m: i for i, m in enumerate(dict.fromkeys(runs["method"]))}
    out = pd.DataFrame(rows)
    key = out["method"].map(order) * 1e6 + pd.to_numeric(out["param"], errors="coerce").fillna(-1)
    return pareto(out.loc[key.sort_values(kind="stable").index].reset_index(drop=True))


def _frontier(v: np.ndarray) -> np.ndarray:
    """Rows of ``v`` (k, c), all criteria to minimise, that no other row dominates (<= in
    every criterion, < in one)."""
    return np.array(
        [
            not (np.all(v <= v[i] + 1e-12, axis=1) & np.any(v < v[i] - 1e-12, axis=1)).any()
            for i in range(len(v))
        ],
        dtype=bool,
    )


def pareto(summary: pd.DataFrame) -> pd.DataFrame:
    """Pareto marks on the seed means: ``on_frontier`` (no other fit has a nominal loss and a
    certified worst-case loss both <=, one <), ``on_reward_frontier`` (the same for
    worst-case loss and mixed-reward score, higher score better), ``on_frontier_3d`` (all
    three), and ``method_dominated`` (no fit of the method is on the loss frontier)."""
    nom, worst = summary["nominal_mean"].to_numpy(float), summary["worst_loss_mean"].to_numpy(float)
    mixed = -summary["mixed_score_mean"].to_numpy(float)
    out = summary.copy()
    out["on_frontier"] = _frontier(np.column_stack([nom, worst]))
    out["on_reward_frontier"] = _frontier(np.column_stack([worst, mixed]))
    out["on_frontier_3d"] = _frontier(np.column_stack([nom, worst, mixed]))
    out["method_dominated"] = ~out.groupby("method")["on_frontier"].transform("any")
    return out


def regret_test(runs: pd.DataFrame) -> pd.DataFrame:
    """The regret paper's claim, seed by seed: among all fits of a seed, the fit a worst-case
    *value* criterion picks against the one a worst-case *regret* criterion picks, in two
    currencies:

    * ``loss``: max over the evaluation set of the loss (value) vs max over the shift-family
      laws of the loss minus the law's best loss (regret);
    * ``reward``: min over the alpha grid of the normalised score (value) vs max over it of
      the shortfall from ``pi*_alpha`` (regret).

    Rows: ``currency``, ``criterion`` (value or regret), and the seed means and 95%
    half-widths of the chosen fits' ``nominal``, ``mixed_score``, ``nominal_score``,
    ``worst_loss``, ``worst_regret``; plus a ``difference`` row (value minus regret choice,
    paired over seeds) and the methods chosen."""
    ok = runs[runs["status"] != "error"]
    crit = {
        "loss": (("value", "worst_loss", "min"), ("regret", "worst_regret", "min")),
        "reward": (("value", "worst_score", "max"), ("regret", "worst_score_regret", "min")),
    }
    shown = ("nominal", "mixed_score", "nominal_score", "worst_loss", "worst_regret")
    rows = []
    for cur, pairs in crit.items():
        picks = {}
        for name, col, how in pairs:
            idx = ok.groupby("seed")[col].idxmin() if how == "min" else ok.groupby("seed")[
                col
            ].idxmax()  # fmt: skip
            picks[name] = ok.loc[idx.to_numpy()].set_index("seed")
        for name, g in picks.items():
            rec = {"currency": cur, "criterion": name}
            for c in shown:
                rec[f"{c}_mean"], rec[f"{c}_ci"] = _ci(g[c].to_numpy(float))
            rec["chosen"] = ";".join(
                f"{m}({param_text(p)})" for m, p in zip(g["method"], g["param"])
            )
            rows.append(rec)
        diff = {"currency": cur, "criterion": "value-regret"}
        va, rg = picks["value"], picks["regret"].loc[picks["value"].index]
        for c in shown:
            diff[f"{c}_mean"], diff[f"{c}_ci"] = _ci((va[c] - rg[c]).to_numpy(float))
        diff["chosen"] = ""
        rows.append(diff)
    return pd.DataFrame(rows)


def tables(cfg: FrontierConfig | None = None, *, quick: bool = True, jobs: int = 1,
           progress: bool = True) -> dict[str, pd.DataFrame]:  # fmt: skip
    """``frontier_runs``, ``frontier_summary`` (with the Pareto marks) and
    ``frontier_regret`` (the regret test)."""
    cfg = cfg or (FrontierConfig.quick() if quick else FrontierConfig.full())
    runs = run(cfg, jobs=jobs, progress=progress)
    runs["param"] = runs["param"].astype(object)
    return {
        "frontier_runs": runs,
        "frontier_summary": summarise(runs),
        "frontier_regret": regret_test(runs),
    }


__all__ = ["FrontierConfig", "METHODS", "pareto", "regret_test", "run", "summarise", "tables"]
