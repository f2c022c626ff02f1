"""How far are the scalable algorithms from the exact minimax solution?
(docs/theory.md#code-variants)

For a finite log-linear world relabelled by a convex reward mixture at ``alpha0`` (the paper's
emotion set-up in kind), an empirical sample of size n, and a grid of radii:

* **KL family.** The exact KLDPO optimum at radius rho (``exact.kldpo``) gives ``theta*`` and
  the multiplier ``lam*``. Normalized KLDPO (Algorithm 2) and the paper's clipped code are
  trained full batch with ``tau = lam*``; normalized KLDPO's fixed point is then exactly
  ``theta*`` and its implied radius ``KL(q || p_n)`` is rho.
* **W family.** The exact continuous W_2 optimum (labels fixed, cost ``||x - x'||^2``;
  ``exact.wdpo(p=2)``) is the reference for Algorithm 1, whose first-order expansion
  ``E l + rho sqrt(E ||grad_x l||^2)`` assumes x can move anywhere. WDPO ``sqrt-mean`` and
  ``per-pair`` are trained with ``rho0 = c * rho`` for c in a grid (``rho0_ratio``).

Every run reports the parameter distance to the exact optimum, the **robust gap** (the exact
robust objective at the approximate theta minus the exact optimum, nats; asserted >= 0 up to
solver tolerance) and the expected mixed reward ``E_{pi_theta} [alpha r1 + (1 - alpha) r2]`` at
a few alphas (``World.expected_reward`` with ``worlds.mixture_reward``). Plain DPO is included
as the non-robust reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .. import options as O
from ..errors import SolverError
from ..exact.risk import robust_risk
from ..methods import trained_id
from ..worlds import World, mixture_reward, preference_shift
from .sweep import fingerprint, grid_tasks, run_sweep

EVAL_ALPHAS = (0.0, 0.5, 1.0)
#: Slack of the robust-gap assertion (nats), relative to max(1, |value|): the exact solvers
#: certify their optima to ~1e-9 and the evaluators agree to ~1e-10.
GAP_TOL = 1e-6


@dataclass(frozen=True)
class ApproxConfig:
    """Sizes of the study.

    ``kl_radii`` are KL radii (nats); ``w_fractions`` are W_2 radii as fractions of the
    collapse radius ``||sum_i p_i sy_i x_i||`` (beyond it the exact W optimum is theta_ref);
    ``rho0_ratios`` map a W radius to WDPO's ``rho0``.
    """

    ns: tuple[int, ...] = O.option((2000,), help="sample sizes n", cli=False)
    seeds: int = O.option(1, help="seeds per n", constraints=O.POSITIVE_INT)
    kl_radii: tuple[float, ...] = O.option(
        (0.003, 0.01, 0.03, 0.1), help="KL radii (nats)", cli=False
    )
    w_fractions: tuple[float, ...] = O.option(
        (0.05, 0.15, 0.35, 0.7), help="W_2 radii as fractions of the collapse radius", cli=False
    )
    rho0_ratios: tuple[float, ...] = O.option(
        (0.5, 1.0, 2.0), help="WDPO's rho0 as multiples of the W radius", cli=False
    )
    world_seed: int = O.option(0, help="seed of the world", constraints=O.NONNEGATIVE_INT)
    n_contexts: int = O.option(8, help="contexts S of the world", constraints=O.POSITIVE_INT)
    n_actions: int = O.option(4, help="actions A per context", constraints=O.POSITIVE_INT)
    dim: int = O.option(3, help="feature dimension d", constraints=O.POSITIVE_INT)
    beta: float = O.option(1.0, help="DPO temperature", constraints=O.POSITIVE)
    theta_norm: float = O.option(2.0, help="norm of the reward parameters", constraints=O.POSITIVE)
    alpha0: float = O.option(0.1, help="training mixture weight", constraints=O.PROBABILITY)
    max_steps: int = O.option(
        1500, help="optimiser steps of Algorithms 1-2", constraints=O.POSITIVE_INT
    )
    learning_rate: float = O.option(
        0.05, help="learning rate of Algorithms 1-2", constraints=O.POSITIVE
    )
    train: dict = O.option(
        default_factory=dict, help="extra keywords of the approximate trainers", cli=False
    )

    def __post_init__(self):
        O.validate_fields(self)

    @classmethod
    def quick(cls, **changes) -> ApproxConfig:
        return cls(**changes)

    @classmethod
    def full(cls, **changes) -> ApproxConfig:
        base = dict(
            ns=(500, 5000, 50000),
            seeds=3,
            kl_radii=(0.001, 0.003, 0.01, 0.03, 0.06, 0.1, 0.14),
            w_fractions=(0.02, 0.05, 0.15, 0.35, 0.55, 0.8),
            rho0_ratios=(0.25, 0.5, 1.0, 2.0, 4.0),
            max_steps=3000,
        )
        return cls(**{**base, **changes})


# ---------------------------------------------------------------------------- the world
def make_world(cfg: ApproxConfig):
    """``(world, r1, r2)``: a random world relabelled by the convex mixture at ``alpha0`` of
    the linear rewards of two parameters, and the two reward tables (S, A)."""
    base = World.random(
        cfg.n_contexts,
        cfg.n_actions,
        cfg.dim,
        beta=cfg.beta,
        theta_norm=cfg.theta_norm,
        seed=cfg.world_seed,
    )
    rng = np.random.default_rng(np.random.SeedSequence([cfg.world_seed, 7]))
    t1, t2 = (cfg.theta_norm * v / np.linalg.norm(v) for v in rng.standard_normal((2, cfg.dim)))
    world = preference_shift(base, t1, t2, cfg.alpha0)
    return world, base.reward_table(t1), base.reward_table(t2)


def evaluate_rewards(world, r1, r2, theta) -> dict:
    return {
        f"reward_alpha={a:g}": world.expected_reward(theta, mixture_reward(r1, r2, a))
        for a in EVAL_ALPHAS
    }


# ---------------------------------------------------------------------------- one task
def _kl_value(theta, data, rho, beta):
    return robust_risk(theta, data, method="kldpo", rho=rho, beta=beta)


def _w_value(theta, data, rho, beta):
    return robust_risk(theta, data, method="wdpo", rho=rho, p=2.0, beta=beta)


def _row(method, variant, theta, exact_theta, value, opt, world, r1, r2, **extra) -> dict:
    gap = value - opt
    if gap < -GAP_TOL * max(1.0, abs(opt)):
        raise SolverError(
            f"robust gap {gap:.3g} < 0 for {method}: the exact optimum is not optimal.",
            status="inaccurate",
            hint="tighten the exact solver's tolerances.",
        )
    row = {
        "method": method,
        "variant": variant,
        "param_dist": float(np.linalg.norm(theta - exact_theta)),
        "robust_value": float(value),
        "robust_gap": float(max(gap, 0.0)),
        "robust_gap_raw": float(gap),
    }
    row.update({f"theta{j}": float(t) for j, t in enumerate(theta)})
    row.update(evaluate_rewards(world, r1, r2, theta))
    row.update(extra)
    return row


def _certified_gap(res) -> float:
    """The exact reference's certified optimality gap (nats; NaN where its solver does not
    compute one). Uncertified exact answers raise SolverError inside the solver."""
    return float("nan") if res.optimality_gap is None else float(res.optimality_gap)


def exact_kl(data, rho, beta):
    """Exact KLDPO: the conic program, with the Newton path as a second chance."""
    from ..exact import kldpo as exact_kldpo

    try:
        return exact_kldpo(data, rho=rho, beta=beta, solver="cvxpy", certificate="root")
    except SolverError:
        return exact_kldpo(data, rho=rho, beta=beta, solver="fast", certificate="root")


def run_task(params: dict, seed, shared) -> list[dict]:
    """One (family, n, seed, radius) cell: the exact optimum, DPO and every approximate variant."""
    from .. import approx
    from ..exact import dpo as exact_dpo
    from ..exact import wdpo as exact_wdpo

    cfg: ApproxConfig = shared["cfg"]
    world, r1, r2 = shared["world"], shared["r1"], shared["r2"]
    data = world.empirical(params["n"], seed)
    beta = world.beta
    train = dict(
        optimizer="adam",
        learning_rate=cfg.learning_rate,
        schedule="cosine",
        max_steps=cfg.max_steps,
        gtol=1e-9,
        **cfg.train,
    )
    theta_dpo = exact_dpo(data, beta=beta).theta
    if params["family"] == "kl":
        rho = params["radius"]
        ex = exact_kl(data, rho, beta)
        lam = float(ex.dual)

        def value(t):
            return _kl_value(t, data, rho, beta)

        exact_id, exact_row, dpo_row = (
            "kldpo-exact",
            {"hyper": lam, "tau": lam, "implied_rho": rho},
            {},
        )
    else:
        g = np.linalg.norm((data.weights * data.signed_labels) @ data.X)
        rho = params["radius"] * g
        ex = exact_wdpo(data, rho=rho, beta=beta, p=2, solver="fast")

        def value(t):
            return _w_value(t, data, rho, beta)

        exact_id, exact_row, dpo_row = "wdpo-exact", {"rho": rho}, {"rho": rho}
    opt = value(ex.theta)

    def row(method, variant, theta, val, **extra):
        return _row(method, variant, theta, ex.theta, val, opt, world, r1, r2, **extra)

    def trained(family, variant, res, **extra):
        return row(
            trained_id(family, variant),
            variant,
            res.theta,
            value(res.theta),
            **extra,
            converged=res.converged,
            steps=res.steps,
            seconds=res.extras["seconds"],
        )

    rows = [
        row(
            exact_id,
            "exact",
            ex.theta,
            opt,
            **exact_row,
            converged=True,
            optimality_gap=_certified_gap(ex),
        ),
        row("dpo", "dpo", theta_dpo, value(theta_dpo), **dpo_row),
    ]
    if params["family"] == "kl":
        if lam > 0:
            for variant in ("normalized", "clipped"):
                res = approx.kldpo(data, tau=lam, beta=beta, variant=variant, **train)
                rows.append(
                    trained("kldpo", variant, res, hyper=lam, tau=lam, implied_rho=res.implied_rho)
                )
    else:
        for ratio in cfg.rho0_ratios:
            for variant in ("sqrt-mean", "per-pair"):
                res = approx.wdpo(data, rho0=ratio * rho, beta=beta, variant=variant, **train)
                rows.append(
                    trained("wdpo", variant, res, rho=rho, hyper=ratio * rho, rho0_ratio=ratio)
                )
    for r in rows:
        r["radius_value"] = rho
    return rows


# ---------------------------------------------------------------------------- the study
def run(
    cfg: ApproxConfig | None = None, *, jobs: int = 1, progress: bool = True, cache_dir=None
) -> pd.DataFrame:
    """The tidy table: one row per (family, n, seed, radius, method[, rho0_ratio]).

    Columns: ``family`` ("kl" or "w2"), ``n``, ``seed``, ``radius`` (KL radius, or W_2 radius as
    a fraction of the collapse radius), ``radius_value`` (the radius itself), ``method``,
    ``variant``, ``hyper`` (tau or rho0), ``rho0_ratio``, ``param_dist``, ``robust_value``,
    ``robust_gap`` (>= 0, nats), ``implied_rho``, ``theta0..``, ``reward_alpha=*``,
    ``converged``, ``steps``, ``seconds``.
    """
    cfg = cfg or ApproxConfig.quick()
    world, r1, r2 = make_world(cfg)
    tasks = grid_tasks(
        {
            "family": ["kl"],
            "n": list(cfg.ns),
            "seed": list(range(cfg.seeds)),
            "radius": list(cfg.kl_radii),
        },
        seed_keys=lambda p: (cfg.world_seed, p["n"], p["seed"]),
    ) + grid_tasks(
        {
            "family": ["w2"],
            "n": list(cfg.ns),
            "seed": list(range(cfg.seeds)),
            "radius": list(cfg.w_fractions),
        },
        seed_keys=lambda p: (cfg.world_seed, p["n"], p["seed"]),
    )
    ns = fingerprint(
        "approx_vs_exact",
        {
            k: v
            for k, v in asdict(cfg).items()
            if k not in ("ns", "seeds", "kl_radii", "w_fractions")
        },
    )
    res = run_sweep(
        run_task,
        tasks,
        namespace=ns,
        cache_dir=cache_dir,
        shared={"cfg": cfg, "world": world, "r1": r1, "r2": r2},
        jobs=jobs,
        progress=progress,
        desc="approx vs exact",
    )
    df = res.frame()
    df["alpha0"] = cfg.alpha0
    return df


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error over seeds of distance, robust gap and implied radius."""
    keys = ["family", "n", "radius", "method"]
    if "rho0_ratio" in runs:
        runs = runs.assign(rho0_ratio=runs["rho0_ratio"].fillna(0.0))
        keys.append("rho0_ratio")
    agg = runs.groupby(keys, dropna=False).agg(
        radius_value=("radius_value", "mean"),
        param_dist=("param_dist", "mean"),
        param_dist_se=("param_dist", "sem"),
        robust_gap=("robust_gap", "mean"),
        robust_gap_se=("robust_gap", "sem"),
        runs=("robust_gap", "size"),
    )
    if "implied_rho" in runs:
        agg["implied_rho"] = runs.groupby(keys, dropna=False)["implied_rho"].mean()
        agg["tau"] = runs.groupby(keys, dropna=False)["tau"].mean()
    return agg.reset_index()


def tables(
    cfg: ApproxConfig | None = None,
    *,
    quick: bool = True,
    jobs: int = -1,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """Run the study and return its tables by file stem: ``approx_runs`` and
    ``approx_summary`` (the command layer writes and draws them)."""
    cfg = cfg or (ApproxConfig.quick() if quick else ApproxConfig.full())
    runs = run(cfg, jobs=jobs, progress=progress)
    return {"approx_runs": runs, "approx_summary": summarise(runs)}
