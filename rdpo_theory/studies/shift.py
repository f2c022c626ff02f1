"""Distribution-shift study: the paper's Figure 2 and Figure 3 on exact log-linear worlds,
with seeds, 95% intervals and the baseline zoo (docs/theory.md#baselines,
docs/theory.md#shift-families).

Variants (column ``study`` of the tidy table):

* ``preference``: two reward parameters theta1, theta2; pairs are labelled by Bradley-Terry
  on the mixture ``r_alpha0`` (convex ``alpha r1 + (1 - alpha) r2`` of linear rewards, or
  geometric ``r1^alpha r2^(1 - alpha)`` of positive classifier-like rewards); every learned
  policy's exact expected reward under ``r_alpha`` is evaluated on a grid of alpha. Two
  ``setting`` s differ in the angle between theta1 and theta2 (``orthogonal``: cos = 0;
  ``opposed``: cos = -0.5).
* ``context``: the same fits (convex mixture, first setting), evaluated under context laws
  ``mu_t = (1 - t) mu0 + t nu`` with nu a random (Dirichlet(0.3)) law per seed.
* ``behaviour``: the same fits, scored by the population preference log-loss (nats; lower is
  better) under behaviour policies ``pi0_t = (1 - t) pi0 + t pi_adv`` where pi_adv samples the
  responses the labelling reward ranks lowest (``pi_{-theta_alpha0}``).
* ``multi``: K reward parameters; pairs labelled by the 0.5/0.5 convex mixture of two of them
  (``setting = "i+j"``); policies are scored on every one of the K rewards (``shift = k``).

Rewards are reported as a normalised score ``(R(pi) - R(pi_ref)) / (R_best - R(pi_ref))``:
0 is the reference policy, 1 the unregularised best action. ``reward`` keeps the raw value.
Reference rows (``method`` ``"pi*"``: the KL-regularised optimum ``pi* ∝ pi_ref exp(r/beta)``
that DPO targets, and ``"best-action"``: the ceiling) accompany every evaluation.

Hyperparameters: each method runs over a grid of its robustness parameter. ``summarise``
selects one per seed by the held-out preference log-loss on a fresh alpha0 sample
(``selection = "validation"``, what a user can do) and by the best mean score over the shift
grid (``"oracle"``), then reports means with 95% t-intervals over seeds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import _validate as V
from .. import methods as M
from .. import options as O
from ..data import PreferenceData
from ..errors import InputError, RDPOError
from ..rng import make_rng
from ..worlds import World, behaviour_shift, context_shift, mixture_reward, preference_shift

#: method -> (quick grid, full grid) of its robustness parameter; ``[None]``: no parameter.
GRIDS: dict[str, tuple[list, list]] = {
    "dpo": ([None], [None]),
    "wdpo-exact": ([0.01, 0.05], [0.005, 0.01, 0.02, 0.05, 0.1]),
    "wdpo-alg1": ([0.02, 0.1], [0.01, 0.02, 0.05, 0.1, 0.2]),
    "kldpo-exact": ([0.01, 0.05], [0.005, 0.01, 0.02, 0.05, 0.1]),
    "kldpo-alg2": ([0.5, 1.0], [0.25, 0.5, 0.75, 1.0, 2.0]),
    "cdpo": ([0.05, 0.2], [0.02, 0.05, 0.1, 0.2, 0.3]),
    "rdpo": ([0.05, 0.2], [0.02, 0.05, 0.1, 0.2, 0.3]),
    "ipo": ([0.1, 0.5], [0.05, 0.1, 0.25, 0.5, 1.0]),
    "drdpo": ([3.0, 10.0], [2.0, 3.0, 5.0, 10.0, 30.0]),
    "gdpo": ([None], [None]),
    "chi2dpo": ([0.01, 0.05], [0.005, 0.01, 0.02, 0.05, 0.1]),
    "cvardpo": ([0.9, 0.7], [0.95, 0.9, 0.8, 0.7, 0.5]),
}
#: method -> (parameter name, quick grid, full grid), for the methods of the registry's
#: "shift" list (:func:`rdpo_theory.methods.listed`); the parameter name is the registry's
#: (``"-"`` for none).
METHODS: dict[str, tuple[str, list, list]] = {
    m: (M.parameter(m) or "-", *GRIDS[m]) for m in M.listed("shift")
}
STUDIES = ("preference", "context", "behaviour", "multi")


_AT_LEAST_2 = [O.Interval(int, 2, None)]  # K: two rewards at least


@dataclass(frozen=True)
class ShiftConfig:
    """Sizes and grids of the study. ``ShiftConfig.quick()`` and ``.full()`` are the presets.

    Attributes
    ----------
    n_contexts, n_actions, dim : world sizes (S, A, d); |Z| = 2 S A^2.
    theta_norm : norm of every reward parameter.
    beta : DPO temperature (the world's).
    n, n_val : training and validation sample sizes (pairs).
    alpha0 : training mixture weight (paper: 0.1).
    alphas : evaluation grid of alpha in [0, 1].
    ts : shift grid of the context and behaviour families, in [0, 1].
    cosines : setting name -> cos(theta1, theta2).
    geometric_label_scale : labels follow ``sigmoid(scale (r[a1] - r[a2]))`` for the geometric
        mixture, whose rewards lie in (0, 1).
    K, pairs : multi-objective reward count and training pairs.
    seeds : number of seeds S.
    methods : method -> parameter grid.
    steps : optimiser steps of the gradient methods (Adam, full batch).
    base_seed : root of every random stream.
    """

    n_contexts: int = O.option(8, help="contexts S of the worlds", constraints=O.POSITIVE_INT)
    n_actions: int = O.option(4, help="actions A per context", constraints=O.POSITIVE_INT)
    dim: int = O.option(4, help="feature dimension d", constraints=O.POSITIVE_INT)
    theta_norm: float = O.option(3.0, help="norm of every reward parameter", constraints=O.POSITIVE)
    beta: float = O.option(1.0, help="DPO temperature (the world's)", constraints=O.POSITIVE)
    n: int = O.option(1000, help="training pairs", constraints=O.POSITIVE_INT)
    n_val: int = O.option(1000, help="validation pairs", constraints=O.POSITIVE_INT)
    alpha0: float = O.option(
        0.1, help="training mixture weight (paper: 0.1)", constraints=O.PROBABILITY
    )
    alphas: tuple = O.option(
        tuple(np.round(np.linspace(0, 1, 11), 2)), help="evaluation grid in [0, 1]", cli=False
    )
    ts: tuple = O.option((0.0, 0.25, 0.5, 0.75, 1.0), help="shift grid in [0, 1]", cli=False)
    cosines: dict = O.option(
        default_factory=lambda: {"orthogonal": 0.0, "opposed": -0.5},
        help="setting name -> cos(theta1, theta2), in (-1, 1)",
        cli=False,
    )
    geometric_label_scale: float = O.option(
        4.0, help="label scale of the geometric mixture", constraints=O.POSITIVE
    )
    K: int = O.option(5, help="rewards of the multi-objective family", constraints=_AT_LEAST_2)
    pairs: tuple = O.option(((0, 1), (2, 3)), help="reward pairs trained on", cli=False)
    seeds: int = O.option(5, help="number of seeds S", constraints=O.POSITIVE_INT)
    methods: dict = O.option(
        default_factory=lambda: {k: v[1] for k, v in METHODS.items()},
        help="method -> parameter grid",
        cli=False,
    )
    steps: int = O.option(
        1000, help="optimiser steps of the gradient methods (Adam)", constraints=O.POSITIVE_INT
    )
    base_seed: int = O.option(
        2025, help="root of every random stream", constraints=O.NONNEGATIVE_INT
    )

    def __post_init__(self):
        O.validate_fields(self)
        for name in ("alphas", "ts"):
            grid = getattr(self, name)
            if len(grid) == 0:
                raise InputError(f"{name} is empty: give at least one value in [0, 1]")
            for a in grid:
                V.unit_interval(a, name)
        if not self.cosines:
            raise InputError("cosines is empty: give at least one setting")
        for k, c in self.cosines.items():
            if not -1 < float(c) < 1:
                raise InputError(f"cosines[{k!r}] must lie in (-1, 1), got {c}")
        for pr in self.pairs:
            if len(pr) != 2 or not all(0 <= int(i) < self.K for i in pr) or pr[0] == pr[1]:
                raise InputError(f"pairs must hold two distinct indices in [0, K), got {pr}")
        if not self.methods:
            raise InputError("methods is empty")
        for m, grid in self.methods.items():
            if m not in METHODS:
                raise InputError(f"unknown method {m!r}; known: {sorted(METHODS)}")
            if len(grid) == 0:
                raise InputError(f"methods[{m!r}] is an empty grid")

    @classmethod
    def quick(cls, **changes) -> ShiftConfig:
        return cls(**changes)

    @classmethod
    def full(cls, **changes) -> ShiftConfig:
        base = dict(
            n_contexts=12,
            n_actions=5,
            n=2000,
            n_val=2000,
            alphas=tuple(np.round(np.linspace(0, 1, 21), 2)),
            ts=tuple(np.round(np.linspace(0, 1, 9), 3)),
            K=6,
            pairs=((0, 1), (0, 2), (3, 4)),
            seeds=10,
            methods={k: v[2] for k, v in METHODS.items()},
            steps=3000,
        )
        base.update(changes)
        return cls(**base)


# ---------------------------------------------------------------------------- worlds
def reward_parameters(world: World, k: int, *, norm: float, cosine: float | None, seed):
    """``k`` reward parameters of norm ``norm``; with ``cosine`` (k = 2) the pair has exactly
    that cosine."""
    rng = make_rng(seed)
    G = rng.standard_normal((k, world.dim))
    if cosine is not None:
        u = G[0] / np.linalg.norm(G[0])
        v = G[1] - (G[1] @ u) * u
        v /= np.linalg.norm(v)
        return norm * np.stack([u, cosine * u + math.sqrt(1 - cosine**2) * v])
    return norm * G / np.linalg.norm(G, axis=1, keepdims=True)


def draw(world: World, n: int, seed) -> tuple[PreferenceData, np.ndarray]:
    """The empirical law of ``n`` draws (as :meth:`World.empirical`) and each row's context."""
    idx = world.sample_indices(n, seed)
    pop = world.population
    counts = np.bincount(idx, minlength=pop.size).astype(float)
    keep = counts > 0
    return PreferenceData(pop.data.X[keep], pop.data.y[keep], counts[keep] / n), pop.s[keep]


def _tables(world, t1, t2, alpha, mixture):
    if mixture == "convex":
        return mixture_reward(world.reward_table(t1), world.reward_table(t2), alpha, "convex")
    return mixture_reward(
        world.classifier_reward_table(t1), world.classifier_reward_table(t2), alpha, "geometric"
    )


def reference_rewards(world: World, reward, *, label_scale: float = 1.0) -> dict[str, float]:
    """Expected rewards (under ``reward``, a table (S, A)) of the reference policy, of the
    KL-regularised optimum ``pi* ∝ pi_ref exp(label_scale r / beta)`` (what DPO's population
    optimum targets when labels follow ``sigmoid(label_scale (r[a1] - r[a2]))``), and of the
    best action."""
    pi_ref = world.policy(world.theta_ref)
    pistar = world.kl_optimal_policy(label_scale * np.asarray(reward))
    return {
        "reference": world.policy_reward(pi_ref, reward),
        "pi*": world.policy_reward(pistar, reward),
        "best-action": world.best_action_reward(reward),
    }


def score(value: float, refs: dict[str, float]) -> float:
    """Normalised score ``(R - R_ref) / (R_best - R_ref)``."""
    span = refs["best-action"] - refs["reference"]
    return (value - refs["reference"]) / span if span > 0 else float("nan")


# ---------------------------------------------------------------------------- fitting
def fit_method(
    method: str,
    param,
    data: PreferenceData,
    *,
    beta: float,
    radius: float,
    groups: np.ndarray,
    steps: int,
    with_gap: bool = False,
):
    """Train one method on ``data`` and return theta (d,); with ``with_gap``, ``(theta,
    optimality_gap)`` with the exact solvers' certified optimality gap (nats; None for the
    approximate methods and solvers without one)."""
    res = _fit_result(method, param, data, beta=beta, radius=radius, groups=groups, steps=steps)
    gap = res.optimality_gap  # every result has one (rdpo_theory.exact.Result); None if none
    return (res.theta, gap) if with_gap else res.theta


def _fit_result(method, param, data, *, beta, radius, groups, steps):
    """The fitted method's result object (exact or approximate)."""
    from .. import approx, approx_reweight, exact

    ex = dict(beta=beta, radius=radius)
    gd = dict(beta=beta, max_steps=steps, learning_rate=0.05, gtol=1e-6)
    if method == "dpo":
        return exact.dpo(data, **ex)
    if method == "wdpo-exact":
        return exact.wdpo(data, rho=param, **ex)
    if method == "wdpo-alg1":
        return approx.wdpo(data, rho0=param, penalty="closed-form", **gd)
    if method == "kldpo-exact":
        return exact.kldpo(data, rho=param, **ex)
    if method == "kldpo-alg2":
        return approx.kldpo(data, tau=param, **gd)
    if method == "cdpo":
        return exact.cdpo(data, eps=param, **ex)
    if method == "rdpo":
        return exact.rdpo(data, eps=param, **ex)
    if method == "ipo":
        return exact.ipo(data, beta=param, radius=radius)
    if method == "drdpo":
        return approx_reweight.drdpo(data, beta_prime=param, **gd)
    if method == "gdpo":
        return exact.group_dpo(data, groups=groups, **ex)
    ball = M.ambiguity(method)
    if ball is not None and ball.dpo_method:  # a divergence ball with a joint program
        return exact.ball_dpo(data, divergence=ball, rho=param, **ex)
    raise InputError(f"unknown method {method!r}; known: {sorted(METHODS)}")


def fit_all(cfg: ShiftConfig, world: World, seed) -> list[dict]:
    """Fit every (method, param) on a training sample and score it on a validation sample
    (both from ``world``). Returns dicts with ``theta`` and ``val_loss`` (nats)."""
    from ..losses import dpo_risk

    s_train, s_val = np.random.SeedSequence(seed.entropy, spawn_key=seed.spawn_key).spawn(2)
    train, groups = draw(world, cfg.n, s_train)
    val, _ = draw(world, cfg.n_val, s_val)
    out = []
    for method, grid in cfg.methods.items():
        for param in grid:
            rec = {"method": method, "param_name": METHODS[method][0], "param": param}
            try:
                th, gap = fit_method(
                    method,
                    param,
                    train,
                    beta=cfg.beta,
                    radius=world.B,
                    groups=groups,
                    steps=cfg.steps,
                    with_gap=True,
                )
                if not np.all(np.isfinite(th)):
                    raise RDPOError("non-finite theta")
                rec.update(theta=th, val_loss=dpo_risk(th, val, beta=cfg.beta), error="")
                rec["optimality_gap"] = float("nan") if gap is None else float(gap)
            except RDPOError as exc:  # recorded (an uncertified exact answer raises), excluded
                rec.update(theta=None, val_loss=float("nan"), error=str(exc)[:200])
                rec["optimality_gap"] = float("nan")
            out.append(rec)
    return out


# ---------------------------------------------------------------------------- one task
def base_world(cfg: ShiftConfig, seed_keys) -> World:
    """The random world of ``cfg``'s sizes drawn from the seed words ``seed_keys``."""
    return World.random(
        cfg.n_contexts,
        cfg.n_actions,
        cfg.dim,
        beta=cfg.beta,
        theta_norm=cfg.theta_norm,
        seed=np.random.SeedSequence(seed_keys),
    )


def run_task(params: dict, seed: np.random.SeedSequence, shared) -> list[dict]:
    """One (variant, setting, mixture, seed) run: world, fits, exact evaluations. Rows are
    tidy: one per (method, param, shift) plus reference rows."""
    cfg: ShiftConfig = shared
    kind, setting, mixture = params["kind"], params["setting"], params["mixture"]
    s_world, s_rewards, s_fit, s_shift = seed.spawn(4)
    world = base_world(cfg, s_world.generate_state(4))
    rows: list[dict] = []

    def emit(study, shift, method, param_name, param, value, refs, metric="reward"):
        sc = score(value, refs) if metric == "reward" else float("nan")
        rows.append(
            dict(
                study=study,
                shift=float(shift),
                method=method,
                param_name=param_name,
                param=param,
                metric=metric,
                value=value,
                score=sc,
            )
        )

    if kind == "preference":
        t1, t2 = reward_parameters(
            world, 2, norm=cfg.theta_norm, cosine=cfg.cosines[setting], seed=s_rewards
        )
        scale = cfg.geometric_label_scale if mixture == "geometric" else 1.0
        train_world = preference_shift(
            world, t1, t2, cfg.alpha0, mixture=mixture, label_scale=scale
        )
        fits = fit_all(cfg, train_world, s_fit)
        for a in cfg.alphas:
            r = _tables(world, t1, t2, a, mixture)
            refs = reference_rewards(world, r, label_scale=scale)
            for nm in ("pi*", "best-action", "reference"):
                emit("preference", a, nm, "-", None, refs[nm], refs)
            for f in fits:
                if f["theta"] is not None:
                    emit(
                        "preference",
                        a,
                        f["method"],
                        f["param_name"],
                        f["param"],
                        world.expected_reward(f["theta"], r),
                        refs,
                    )
        if mixture == "convex" and setting == next(iter(cfg.cosines)):
            _context_behaviour(cfg, world, train_world, fits, t1, t2, s_shift, emit)
    else:  # multi-objective
        i, j = (int(v) for v in setting.split("+"))
        thetas = reward_parameters(world, cfg.K, norm=cfg.theta_norm, cosine=None, seed=s_rewards)
        train_world = preference_shift(world, thetas[i], thetas[j], 0.5, mixture="convex")
        fits = fit_all(cfg, train_world, s_fit)
        for k in range(cfg.K):
            r = world.reward_table(thetas[k])
            refs = reference_rewards(world, r)
            for nm in ("pi*", "best-action", "reference"):
                emit("multi", k, nm, "-", None, refs[nm], refs)
            for f in fits:
                if f["theta"] is not None:
                    emit(
                        "multi",
                        k,
                        f["method"],
                        f["param_name"],
                        f["param"],
                        world.expected_reward(f["theta"], r),
                        refs,
                    )
    vals = {
        (f["method"], f["param"]): (f["val_loss"], f["error"], f["optimality_gap"]) for f in fits
    }
    for row in rows:
        row["val_loss"], row["error"], row["optimality_gap"] = vals.get(
            (row["method"], row["param"]), (np.nan, "", np.nan)
        )
    return rows


def _context_behaviour(cfg, world, train_world, fits, t1, t2, seed, emit):
    """The context-shift and behaviour-shift families on the convex alpha0 fits."""
    r0 = _tables(world, t1, t2, cfg.alpha0, "convex")
    nu = make_rng(seed).dirichlet(np.full(world.n_contexts, 0.3))
    adv = -(cfg.alpha0 * t1 + (1 - cfg.alpha0) * t2)
    from ..losses import dpo_risk

    for t in cfg.ts:
        cw = context_shift(train_world, toward=nu, t=t)
        refs = reference_rewards(cw, r0)
        for nm in ("pi*", "best-action", "reference"):
            emit("context", t, nm, "-", None, refs[nm], refs)
        bw = behaviour_shift(train_world, toward=adv, t=t)
        pop = bw.population.data
        pstar = cfg.alpha0 * t1 + (1 - cfg.alpha0) * t2  # realizable: pi* = pi_{theta_alpha0}
        emit(
            "behaviour",
            t,
            "pi*",
            "-",
            None,
            dpo_risk(pstar, pop, beta=cfg.beta),
            refs,
            metric="logloss",
        )
        for f in fits:
            if f["theta"] is None:
                continue
            emit(
                "context",
                t,
                f["method"],
                f["param_name"],
                f["param"],
                cw.expected_reward(f["theta"], r0),
                refs,
            )
            emit(
                "behaviour",
                t,
                f["method"],
                f["param_name"],
                f["param"],
                dpo_risk(f["theta"], pop, beta=cfg.beta),
                refs,
                metric="logloss",
            )


# ---------------------------------------------------------------------------- the study
def tasks(cfg: ShiftConfig):
    """The sweep's tasks: preference (settings x mixtures) and multi (pairs), x seeds."""
    from .sweep import Task

    out = []
    for s in range(cfg.seeds):
        for si, setting in enumerate(cfg.cosines):
            for mi, mixture in enumerate(("convex", "geometric")):
                out.append(
                    Task(
                        {"kind": "preference", "setting": setting, "mixture": mixture, "seed": s},
                        (cfg.base_seed, 1, si, mi, s),
                    )
                )
        for i, j in cfg.pairs:
            out.append(
                Task(
                    {"kind": "multi", "setting": f"{i}+{j}", "mixture": "convex", "seed": s},
                    (cfg.base_seed, 2, i, j, s),
                )
            )
    return out


def run(
    cfg: ShiftConfig | None = None, *, jobs: int = 1, cache_dir=None, progress: bool = True
) -> pd.DataFrame:
    """Run the study and return the tidy table of runs (one row per method, parameter, seed
    and shift value; reference rows have ``method`` in {pi*, best-action, reference})."""
    from .sweep import fingerprint, run_sweep

    cfg = cfg or ShiftConfig.quick()
    ns = fingerprint("shift-v1", dataclasses.asdict(cfg))
    res = run_sweep(
        run_task,
        tasks(cfg),
        namespace=ns,
        cache_dir=cache_dir,
        shared=cfg,
        jobs=jobs,
        progress=progress,
        desc="shift",
    )
    return res.frame().drop(columns=["kind"])


REFERENCE_METHODS = ("pi*", "best-action", "reference")


def select(runs: pd.DataFrame) -> pd.DataFrame:
    """Pick one parameter per (study, setting, mixture, method, seed): by validation loss
    (``"validation"``) and by the best mean outcome over the shift grid (``"oracle"``: highest
    mean score, or lowest mean log-loss for ``behaviour``). Returns the selected rows with a
    ``selection`` column; reference rows appear once with ``selection = "reference"``."""
    keys = ["study", "setting", "mixture", "method", "seed"]
    fitted = runs[~runs["method"].isin(REFERENCE_METHODS)].copy()
    fitted["param_key"] = fitted["param"].astype(str)
    per = (
        fitted.groupby(keys + ["param_key"], dropna=False)
        .agg(val_loss=("val_loss", "first"), score=("score", "mean"), value=("value", "mean"))
        .reset_index()
    )
    per["oracle_crit"] = np.where(per["study"] == "behaviour", per["value"], -per["score"])
    parts = []
    for sel, crit in (("validation", "val_loss"), ("oracle", "oracle_crit")):
        ok = per.dropna(subset=[crit])
        best = ok.loc[ok.groupby(keys)[crit].idxmin(), keys + ["param_key"]]
        chosen = fitted.merge(best, on=keys + ["param_key"])
        chosen["selection"] = sel
        parts.append(chosen)
    refs = runs[runs["method"].isin(REFERENCE_METHODS)].copy()
    refs["selection"] = "reference"
    return pd.concat(parts + [refs], ignore_index=True).drop(columns=["param_key"], errors="ignore")


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Means and 95% t-intervals over seeds of ``value`` and ``score`` for each (study,
    setting, mixture, method, selection, shift); ``params`` lists the chosen parameters."""
    from scipy.stats import t as student

    sel = select(runs)
    keys = ["study", "setting", "mixture", "method", "selection", "shift"]
    rows = []
    for k, g in sel.groupby(keys, dropna=False):
        rec = dict(zip(keys, k))
        n = len(g)
        q = student.ppf(0.975, n - 1) if n > 1 else float("nan")
        for col in ("value", "score"):
            x = g[col].to_numpy(dtype=float)
            m = float(np.mean(x))
            h = float(q * np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
            rec.update({f"{col}_mean": m, f"{col}_lo": m - h, f"{col}_hi": m + h})
        rec["metric"] = g["metric"].iloc[0]
        rec["n_seeds"] = n
        rec["params"] = ";".join(sorted({str(p) for p in g["param"]}))
        rows.append(rec)
    return pd.DataFrame(rows)


def tradeoff(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, mixture, method, param): nominal score at alpha0 and worst-case score over
    the alpha grid, means and 95% intervals over seeds (the robustness-performance trade-off).
    The training alpha0 is read from the ``alpha0`` column."""
    from scipy.stats import t as student

    pref = runs[(runs["study"] == "preference") & (~runs["method"].isin(REFERENCE_METHODS[1:]))]
    pref = pref.assign(param_key=pref["param"].astype(str))
    keys = ["setting", "mixture", "method", "param_key", "seed"]
    a0 = float(runs["alpha0"].iloc[0])
    g = pref.groupby(keys, dropna=False)
    per = pd.DataFrame(
        {
            "nominal": g.apply(
                lambda d: d.loc[np.isclose(d["shift"], a0), "score"].mean(), include_groups=False
            ),
            "worst": g["score"].min(),
        }
    ).reset_index()
    out = []
    for k, d in per.groupby(keys[:-1], dropna=False):
        n = len(d)
        q = student.ppf(0.975, n - 1) if n > 1 else float("nan")
        rec = dict(zip(keys[:-1], k))
        for col in ("nominal", "worst"):
            x = d[col].to_numpy(float)
            h = float(q * np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
            rec.update({f"{col}_mean": float(x.mean()), f"{col}_ci": h})
        rec["n_seeds"] = n
        out.append(rec)
    return pd.DataFrame(out).rename(columns={"param_key": "param"})


def tables(
    cfg: ShiftConfig | None = None,
    *,
    quick: bool = True,
    jobs: int = 1,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """Run the study and return its tables by file stem: ``shift_runs`` (with ``alpha0``),
    ``shift_summary`` and ``shift_tradeoff`` (the command layer writes and draws them)."""
    cfg = cfg or (ShiftConfig.quick() if quick else ShiftConfig.full())
    runs = run(cfg, jobs=jobs, progress=progress)
    runs["alpha0"] = cfg.alpha0
    return {
        "shift_runs": runs,
        "shift_summary": summarise(runs),
        "shift_tradeoff": tradeoff(runs),
    }
